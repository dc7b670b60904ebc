"""The AT method interface.

An AT method turns one batch into parameter gradients. The training loop owns the model, the optimiser
and the schedule; a method owns only what happens between "here is a batch" and "the gradients are in
``.grad``". Its lifecycle:

1. ``__init__(cfg)`` with the method's settings: an instance of its :attr:`ATMethod.settings` class, which
   lives in the method's own module and holds only the knobs the method reads (the trial config's
   ``method`` section is the union of these classes, see :mod:`distat.methods`).
2. ``setup(module)`` once the backbone exists (methods with state sized by the model allocate it here).
3. ``train_step(ctx, batch)`` for each batch: compute the loss, call ``ctx.backward(loss)`` (possibly
   several times, as FreeLB does: every call but the last with ``sync=False``), return a
   :class:`StepOutput`. The loop then clips, steps the optimiser and zeroes the gradients.
4. ``epoch_logs()`` at the end of each epoch: method state worth logging (adaptive weights, say).
5. ``state_dict()`` / ``load_state_dict()`` so that training resumed from a checkpoint continues exactly.

A method with trainable parts of its own (InfoBERT's mutual-information estimator) returns them from
:meth:`ATMethod.parameters`: the loop adds them to the optimiser, clips them with the model's, averages
their gradients across DDP ranks, and the method keeps their values in its ``state_dict``.

Perturbations live in the input-embedding space (the output of ``module.get_input_embeddings()``),
masked to real tokens (``attention_mask``). Inside an ascent loop only input gradients are needed, so
methods use :func:`torch.autograd.grad` with ``inputs=[delta]``: autograd then skips every weight-gradient
product, which is what makes a k-step method cost ~k·(forward + half a backward) + one full step.

Methods know nothing of Ray, MLflow or TextAttack.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from distat.settings import Strict

Batch = dict[str, torch.Tensor]


@dataclass
class StepContext:
    """What a method may use during one training step.

    ``model`` is what the final, parameter-updating forward goes through (a DDP wrapper under
    distributed training); ``module`` is the bare model, used for the ascent forwards that need input
    gradients only (they must not touch DDP's gradient-sync machinery). ``backward(loss, sync)`` runs the
    backward pass; ``sync=False`` accumulates locally without the DDP all-reduce.
    """

    model: nn.Module
    module: nn.Module
    backward: Callable[..., None]
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
    step: int = 0  # optimiser steps taken before this one (the loop sets it)
    total_steps: int = 0  # the trial's planned optimiser steps; 0 when unknown (a step outside the loop)

    @property
    def progress(self) -> float:
        """The fraction of training done before this step, in [0, 1] (0 when the total is unknown)."""
        return min(1.0, self.step / self.total_steps) if self.total_steps > 0 else 0.0

    @staticmethod
    def plain(model: nn.Module) -> StepContext:
        """A context for a single process: ``loss.backward()``, no autocast."""

        def backward(loss: torch.Tensor, sync: bool = True) -> None:
            loss.backward()

        return StepContext(model=model, module=model, backward=backward)


@dataclass
class StepOutput:
    """The detached training objective of one step and anything worth logging."""

    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)
    delta: torch.Tensor | None = None  # the final perturbation, for tests and diagnostics


class Settings(Strict):
    """What the settings of every method have: ``name``, the method's registry key."""

    name: str

    @property
    def label(self) -> str:
        """A human name: ``pgd``, ``adaptive_freelb``..."""
        return self.name


class StandardSettings(Settings):
    """Standard fine-tuning has no knobs."""

    name: Literal["standard"] = "standard"


class ATMethod:
    """Base class: standard fine-tuning. Subclasses override :meth:`loss` or :meth:`train_step`.

    ``settings`` is the pydantic class of the method's knobs; the registry assembles the union of these
    classes that the trial config's ``method`` section validates against.
    """

    name: ClassVar[str] = "standard"
    settings: ClassVar[type[Settings]] = StandardSettings

    def __init__(self, cfg: Settings) -> None:
        self.cfg = cfg

    def setup(self, module: nn.Module) -> None:
        """Called once with the bare model before the first step."""

    def parameters(self) -> list[nn.Parameter]:
        """The method's own trainable parameters (none by default), trained by the loop's optimiser."""
        return []

    def loss(self, ctx: StepContext, batch: Batch) -> tuple[torch.Tensor, dict[str, float], torch.Tensor | None]:
        """The differentiable objective of the batch, its logs and the final perturbation (if any)."""
        with ctx.autocast():
            logits = forward_logits(ctx.model, ctx.module, batch, embeds(ctx.module, batch))
            loss = F.cross_entropy(logits.float(), batch["labels"])
        return loss, {}, None

    def train_step(self, ctx: StepContext, batch: Batch) -> StepOutput:
        loss, logs, delta = self.loss(ctx, batch)
        ctx.backward(loss)
        return StepOutput(loss=loss.detach(), logs=logs, delta=delta)

    def epoch_logs(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"method {self.name!r} has no state, got keys {sorted(state)}")


# --------------------------------------------------------------------------------------------------
# helpers shared by the methods


def embeds(module: nn.Module, batch: Batch) -> torch.Tensor:
    """Word embeddings x₀ of the batch (before position / segment embeddings are added)."""
    return module.get_input_embeddings()(batch["input_ids"])


def forward(model: nn.Module, module: nn.Module, batch: Batch, inputs_embeds: torch.Tensor, **options: Any) -> Any:
    """The model's output for the batch with its word embeddings replaced by ``inputs_embeds``; ``options`` go
    to the model (``output_hidden_states=True``, say)."""
    kwargs: dict[str, Any] = {"inputs_embeds": inputs_embeds, "attention_mask": batch["attention_mask"], **options}
    if "token_type_ids" in batch and getattr(module.config, "type_vocab_size", 0) > 1:
        kwargs["token_type_ids"] = batch["token_type_ids"]
    return model(**kwargs)


def forward_logits(model: nn.Module, module: nn.Module, batch: Batch, inputs_embeds: torch.Tensor) -> torch.Tensor:
    """Logits for the batch with its word embeddings replaced by ``inputs_embeds``."""
    return forward(model, module, batch, inputs_embeds).logits


def world_size() -> int:
    """Ranks of the torch.distributed job this process is in (1 outside one): methods with state of their own
    (adaptive w, TA-VAT's table, Flooding-X's b) keep it equal across DDP ranks by their own collectives."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@contextlib.contextmanager
def eval_mode(module: nn.Module):
    """Dropout off inside the block (``module.eval()``), the module's previous mode restored after."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def doubled(batch: Batch) -> Batch:
    """The batch twice over (B → 2B), for one forward of a clean and a perturbed copy (DDP: one forward per
    backward)."""
    return {k: torch.cat([v, v]) for k, v in batch.items()}


def token_mask(batch: Batch, like: torch.Tensor) -> torch.Tensor:
    """(B, T, 1) mask of real tokens in the dtype of ``like``."""
    return batch["attention_mask"].to(like.dtype).unsqueeze(-1)


def kl_div(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) between the softmax distributions of two logit batches, averaged over the batch."""
    return F.kl_div(
        F.log_softmax(q_logits.float(), dim=-1), F.log_softmax(p_logits.float(), dim=-1),
        reduction="batchmean", log_target=True,
    )

