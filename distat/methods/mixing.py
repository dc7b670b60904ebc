"""Hidden-state mixup, the "MDA" half of AMDA (Si et al., Findings of ACL 2021).

A mixed example interpolates the hidden states of two training examples after encoder layer L and their
labels with the same λ ~ Beta(α, α):

- **TMix** (Chen et al., 2020) mixes every token: h_t ← λ·h_t + (1 − λ)·h'_t for all positions t;
- **SMix** mixes only the sentence vector at position 0 ([CLS] / <s>): the other tokens stay the
  example's own.

Layers are numbered from 1: layer L means "the output of encoder layer L", so with BERT-base's 12
layers, L = 12 mixes the final hidden states right before the pooler. The paper draws L from {7, 9, 12};
:func:`default_layers` scales that set to other depths.

**One forward per backward.** Under DDP the parameter-updating forward must run once per backward, so
the clean and the mixed branch share one forward of a doubled batch ``[x; x]``. :func:`mixing` installs
temporary hooks on the encoder layers of the bare model: a forward hook on layer L replaces the second
half of its output by the mix of that half with itself permuted (row i with row perm[i]); the first half
(the clean branch) is never touched. The hooks live on the bare model's submodules, so the forward may
go through a DDP wrapper of it.

**Attention mask after layer L.** A TMix row holds the mixture of two sequences of possibly different
lengths, so from layer L + 1 on it attends to the *union* of their real tokens: position t takes part
when it is a real token of either example (a forward pre-hook swaps the mask of the later layers). With
the example's own mask the partner's tokens beyond the example's length would be silently dropped (what
MixText's code effectively does). The union is the element-wise maximum of the two extended masks,
which is right for every mask encoding transformers uses: 0/1 and boolean masks (1/True = attend) and
additive masks (0 = attend, a large negative number = masked). SMix keeps each row's own tokens, so its
masks are left alone. A consequence: with λ = 1, TMix reproduces the unmixed prediction exactly when the
example's partner is no longer than itself (it then attends to nothing new); otherwise it also attends
to its own padding positions from layer L + 1 on.

Limitation: the hooks are removed when :func:`mixing` exits, before the backward, so a model with
activation (gradient) checkpointing enabled would recompute layer L *unmixed* in the backward pass;
distat never enables it.

It lives with the methods (not in :mod:`distat.augment`) because it changes the model's forward pass, not
the training data: :class:`distat.methods.mixup.Mixup` is its user. This module is pure torch: no Ray,
MLflow or TextAttack.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

MixType = Literal["tmix", "smix"]

PAPER_LAYERS = (7, 9, 12)  # the layer set of TMix / AMDA, for BERT-base
PAPER_DEPTH = 12

# where encoder layers live below ``model.base_model``: BERT, RoBERTa, ELECTRA, DeBERTa(-v2), XLM-R...
# keep theirs at ``encoder.layer``; DistilBERT at ``transformer.layer``
_LAYER_PATHS = (("encoder", "layer"), ("transformer", "layer"))


# --------------------------------------------------------------------------------------------------
# sampling


def _uniform(generator: torch.Generator) -> float:
    return float(torch.rand((), generator=generator, dtype=torch.float64))


def _normal(generator: torch.Generator) -> float:
    return float(torch.randn((), generator=generator, dtype=torch.float64))


def _log_gamma_sample(shape: float, generator: torch.Generator) -> float:
    """log of a Gamma(shape, 1) draw (Marsaglia & Tsang 2000), from ``generator`` only.

    For shape < 1 it uses Gamma(k) = Gamma(k + 1) · U^(1/k), kept in log space so that tiny shapes do not
    underflow to 0.
    """
    boost = 0.0
    if shape < 1:
        u = _uniform(generator)
        boost = math.log(u) / shape if u > 0 else -math.inf
        shape += 1.0
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        z = _normal(generator)
        v = 1.0 + c * z
        if v <= 0:
            continue
        v = v**3
        u = _uniform(generator)
        log_u = math.log(u) if u > 0 else -math.inf
        if log_u < 0.5 * z * z + d - d * v + d * math.log(v):
            return math.log(d * v) + boost


def sample_lambda(alpha: float, generator: torch.Generator) -> float:
    """λ ~ Beta(α, α) as X / (X + Y) with X, Y ~ Gamma(α, 1), drawn from ``generator`` alone (the global
    RNG is never touched, so a generator's state fixes the draw)."""
    if not alpha > 0:
        raise ValueError(f"mixup alpha must be > 0, got {alpha}")
    log_x = _log_gamma_sample(alpha, generator)
    log_y = _log_gamma_sample(alpha, generator)
    if log_x == log_y:  # includes both -inf (possible only for absurdly small α)
        return 0.5
    diff = log_y - log_x  # λ = 1 / (1 + Y/X)
    if diff > 700:
        return 0.0
    return 1.0 / (1.0 + math.exp(diff))


# --------------------------------------------------------------------------------------------------
# layers


def default_layers(num_layers: int) -> tuple[int, ...]:
    """The paper's {7, 9, 12} of 12 scaled to a backbone with ``num_layers`` encoder layers.

    Rule: each paper layer L maps to ⌈L · n / 12⌉, the shallowest layer whose relative depth l / n is at
    least the paper's L / 12 (so mixing never happens relatively earlier than in the paper); then
    duplicates are dropped and the result clamped to 1..n. 12 → (7, 9, 12); 6 → (4, 5, 6); 24 → (14, 18,
    24); 4 → (3, 4); 2 → (2,).
    """
    if num_layers < 1:
        raise ValueError(f"a backbone needs at least one encoder layer, got {num_layers}")
    scaled = {-(-layer * num_layers // PAPER_DEPTH) for layer in PAPER_LAYERS}
    return tuple(sorted({min(max(layer, 1), num_layers) for layer in scaled}))


def check_layers(layers: Sequence[int], num_layers: int) -> tuple[int, ...]:
    """The configured layer set, sorted and de-duplicated; ValueError naming the first layer out of range."""
    if not layers:
        raise ValueError("the mixup layer set is empty")
    for layer in layers:
        if not 1 <= layer <= num_layers:
            raise ValueError(
                f"mix layer {layer} is out of range: the backbone has {num_layers} encoder layers (1..{num_layers})"
            )
    return tuple(sorted(set(layers)))


def encoder_layers(module: nn.Module) -> nn.ModuleList:
    """The list of encoder layers of a (bare, not DDP-wrapped) sequence-classification model."""
    base = getattr(module, "base_model", module)
    for path in _LAYER_PATHS:
        node: Any = base
        for attr in path:
            node = getattr(node, attr, None)
        if isinstance(node, nn.ModuleList) and len(node) > 0:
            return node
    raise ValueError(
        f"hidden-state mixup needs the encoder layers at base_model.encoder.layer (BERT, RoBERTa, ELECTRA, "
        f"DeBERTa, ...) or base_model.transformer.layer (DistilBERT); {type(module).__name__} has neither"
    )


def num_encoder_layers(module: nn.Module) -> int:
    """The depth of the backbone: ``config.num_hidden_layers``, else the length of its layer list."""
    depth = getattr(getattr(module, "config", None), "num_hidden_layers", None)
    return int(depth) if depth else len(encoder_layers(module))


# --------------------------------------------------------------------------------------------------
# mixing


def mix_targets(labels: torch.Tensor, perm: torch.Tensor, lam: float, num_labels: int) -> torch.Tensor:
    """Soft labels λ·onehot(y) + (1 − λ)·onehot(y[perm]), shape (B, num_labels), float32."""
    onehot = F.one_hot(labels, num_labels).to(torch.float32)
    return lam * onehot + (1.0 - lam) * onehot[perm.to(labels.device)]


def soft_kl(targets: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(t ‖ softmax(logits)) = Σ t·(log t − log p), averaged over the batch; 0·log 0 counts as 0."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    return (torch.xlogy(targets, targets) - targets * log_p).sum() / logits.shape[0]


def mix_hidden(hidden: torch.Tensor, perm: torch.Tensor, lam: float, mix_type: MixType) -> torch.Tensor:
    """Mix each row of (B, T, H) hidden states with row ``perm[i]``: all tokens (TMix) or position 0 (SMix)."""
    if mix_type == "tmix":
        return lam * hidden + (1.0 - lam) * hidden[perm]
    if mix_type == "smix":
        first = lam * hidden[:, :1] + (1.0 - lam) * hidden[perm, :1]
        return torch.cat([first, hidden[:, 1:]], dim=1)
    raise ValueError(f"unknown mix type {mix_type!r} (choose tmix or smix)")


def union_mask(mask: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Attend where row i or row perm[i] attends: the element-wise maximum (see the module docstring)."""
    return torch.maximum(mask, mask[perm])


def _replace_hidden(output: Any, hidden: torch.Tensor) -> Any:
    if isinstance(output, torch.Tensor):
        return hidden
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return (hidden, *output[1:])
    if isinstance(output, list) and output and isinstance(output[0], torch.Tensor):
        return [hidden, *output[1:]]
    raise TypeError(f"cannot mix an encoder layer output of type {type(output).__name__}")


@contextlib.contextmanager
def mixing(module: nn.Module, *, layer: int, lam: float, perm: torch.Tensor, mix_type: MixType) -> Iterator[None]:
    """While active, forwards of ``module`` (or of a wrapper around it) must see a doubled batch of
    2·B rows, B = ``len(perm)``: rows B.. are mixed after encoder layer ``layer`` (1-based), rows ..B are
    left alone. The hooks are removed on exit, also after an error."""
    layers = encoder_layers(module)
    check_layers([layer], len(layers))
    if mix_type not in ("tmix", "smix"):
        raise ValueError(f"unknown mix type {mix_type!r} (choose tmix or smix)")
    half = int(perm.numel())

    def mix_output(_mod: nn.Module, _args: Any, output: Any) -> Any:
        hidden = output if isinstance(output, torch.Tensor) else output[0]
        if hidden.shape[0] != 2 * half:
            raise RuntimeError(f"mixing expects a doubled batch of {2 * half} rows, got {hidden.shape[0]}")
        p = perm.to(hidden.device)
        mixed = mix_hidden(hidden[half:], p, lam, mix_type)
        return _replace_hidden(output, torch.cat([hidden[:half], mixed]))

    def widen_mask(_mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        in_kwargs = "attention_mask" in kwargs
        mask = kwargs["attention_mask"] if in_kwargs else (args[1] if len(args) > 1 else None)
        if mask is None:  # no padding anywhere (SDPA drops an all-ones mask): the union is all-ones too
            return None
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"TMix cannot widen an attention mask of type {type(mask).__name__}")
        if mask.dim() == 0 or mask.shape[0] != 2 * half:  # broadcast over the batch: nothing to widen
            return None
        wide = torch.cat([mask[:half], union_mask(mask[half:], perm.to(mask.device))])
        if in_kwargs:
            return args, {**kwargs, "attention_mask": wide}
        return (args[0], wide, *args[2:]), kwargs

    handles = [layers[layer - 1].register_forward_hook(mix_output)]
    try:
        if mix_type == "tmix":
            for later in layers[layer:]:
                handles.append(later.register_forward_pre_hook(widen_mask, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()
