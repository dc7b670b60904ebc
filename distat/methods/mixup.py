"""Hidden-state mixup as a training method (the mixup half of AMDA, Si et al., Findings of ACL 2021).

Each step draws, from the method's own seeded generator: one encoder layer L uniformly from the layer set
(``mix_layers``; default: the paper's {7, 9, 12} scaled to the backbone's depth), one λ ~ Beta(α, α)
(``mix_alpha``) and one random permutation of the batch. Example i is mixed with example perm[i] after
layer L (TMix: every token, SMix: position 0 only; ``mix_type``), its target is λ·y_i + (1 − λ)·y_perm[i],
and the loss is

    CE(f(x), y) + mix_weight · KL(t ‖ f_mix(x)),   t = the mixed targets,

KL with the target distribution first (Σ t·(log t − log p), batch mean), which for one-hot targets equals
the cross-entropy. The clean and the mixed branch are one forward of the doubled batch through
``ctx.model`` (see :func:`distat.methods.mixing.mixing`), so there is one forward per backward as DDP
requires. The ADA half of AMDA (adversarial examples in the training data) is a data-side augmentation
and combines with this method unchanged.

The generator is seeded from the global torch RNG on the first step (so a trial's seed fixes it) and its
state is part of :meth:`state_dict`, so a resumed run draws the same λ / permutation / layer as an
uninterrupted one. Under DDP every worker starts from the same global seed, hence the same draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from distat.methods.base import ATMethod, Batch, Settings, StepContext, doubled, embeds, forward_logits
from distat.methods.mixing import (
    check_layers,
    default_layers,
    encoder_layers,
    mix_targets,
    mixing,
    num_encoder_layers,
    sample_lambda,
    soft_kl,
)


class MixupSettings(Settings):
    name: Literal["mixup"] = "mixup"
    mix_type: Literal["tmix", "smix"] = "tmix"  # tmix: every token's hidden state; smix: position 0 only
    # λ ~ Beta(α, α). The AMDA authors' scripts (MixADA) run TMix with α = 2.0 (a few runs use 0.4); 2.0
    # puts λ mostly near 0.5 (E|λ − ½| ≈ 0.19), i.e. real mixing rather than near-copies of one example.
    mix_alpha: float = Field(default=2.0, gt=0)
    # encoder layers (1-based: L = mix the output of layer L) to draw from; None = the paper's {7, 9, 12}
    # of 12 scaled to the backbone's depth (distat.methods.mixing.default_layers); checked against the depth
    # when the model is built
    mix_layers: Annotated[tuple[Annotated[int, Field(ge=1)], ...], Field(min_length=1)] | None = None
    mix_weight: float = Field(default=1.0, ge=0)  # weight of KL(mixed targets ‖ mixed prediction)

    @field_validator("mix_layers", mode="before")
    @classmethod
    def _layer_string(cls, v: Any) -> Any:
        # "4,5,6" (how a search space's categorical choice names a layer set) → (4, 5, 6)
        if isinstance(v, str):
            try:
                return tuple(int(part) for part in v.replace(" ", "").split(",") if part)
            except ValueError:
                raise ValueError(f"{v!r}: expected layer numbers separated by commas, e.g. '4,5,6'") from None
        return v

    @field_validator("mix_layers")
    @classmethod
    def _sorted_layers(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        return None if v is None else tuple(sorted(set(v)))


@dataclass(frozen=True)
class MixDraw:
    """The random choices of one step."""

    layer: int
    lam: float
    perm: torch.Tensor  # (B,) long, on the CPU



class Mixup(ATMethod):
    name = "mixup"
    settings = MixupSettings
    cfg: MixupSettings

    def __init__(self, cfg: MixupSettings) -> None:
        super().__init__(cfg)
        self.layers: tuple[int, ...] | None = None
        self.generator: torch.Generator | None = None  # created on the first draw (or by load_state_dict)

    def setup(self, module: nn.Module) -> None:
        encoder_layers(module)  # a clear error now for a backbone without an encoder-layer list
        depth = num_encoder_layers(module)
        layers = self.cfg.mix_layers
        self.layers = check_layers(layers, depth) if layers is not None else default_layers(depth)

    def _rng(self) -> torch.Generator:
        if self.generator is None:
            seed = int(torch.randint(0, 2**62, (1,)))
            self.generator = torch.Generator().manual_seed(seed)
        return self.generator

    def draw(self, batch_size: int) -> MixDraw:
        """This step's layer, λ and permutation (advances the generator)."""
        assert self.layers is not None, "call setup(module) first"
        g = self._rng()
        layer = self.layers[int(torch.randint(len(self.layers), (1,), generator=g))]
        lam = sample_lambda(self.cfg.mix_alpha, g)
        perm = torch.randperm(batch_size, generator=g)
        return MixDraw(layer=layer, lam=lam, perm=perm)

    def loss(self, ctx: StepContext, batch: Batch):
        if self.layers is None:
            self.setup(ctx.module)
        labels = batch["labels"]
        d = self.draw(labels.shape[0])
        twice = doubled(batch)
        with mixing(ctx.module, layer=d.layer, lam=d.lam, perm=d.perm, mix_type=self.cfg.mix_type), ctx.autocast():
            both = forward_logits(ctx.model, ctx.module, twice, embeds(ctx.module, twice))
        clean_logits, mixed_logits = both.chunk(2)
        natural = F.cross_entropy(clean_logits.float(), labels)
        targets = mix_targets(labels, d.perm, d.lam, mixed_logits.shape[-1])
        kl = soft_kl(targets, mixed_logits)
        loss = natural + self.cfg.mix_weight * kl
        logs = {"natural_loss": natural.item(), "mix_kl": kl.item(), "mix_lambda": d.lam, "mix_layer": float(d.layer)}
        return loss, logs, None

    def state_dict(self) -> dict[str, Any]:
        if self.generator is None:
            return {}
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            self.generator = None
            return
        self.generator = torch.Generator()
        self.generator.set_state(state["generator"])
