"""PGD (Madry et al., 2018) in the embedding space.

k ascent steps on the cross-entropy from a random start inside ``init_mag``, each of size α along the
normalised input gradient and projected onto the ``max_norm`` ball; the model then descends the loss at
the final point: min_θ L(θ; x₀ + δ_k, y). The ascent uses input gradients only.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from distat.methods.base import ATMethod, Batch, StepContext, embeds, forward_logits, token_mask
from distat.methods.perturb import Perturbation, PerturbSettings, from_config


class KStepSettings(PerturbSettings):
    """The knobs of every k-step method (PGD, FreeLB, TA-VAT, TRADES, and adaptive AT around the first three)."""

    adv_steps: int = Field(default=3, ge=1, le=100)  # k
    init_mag: float = Field(default=0.05, ge=0)  # radius of the random initial perturbation


class PGDSettings(KStepSettings):
    name: Literal["pgd"] = "pgd"


class KStepMethod(ATMethod):
    """A method whose perturbation comes from k ascent steps; adaptive AT wraps these.

    Subclasses define :meth:`perturbation_points`, the sequence p_1..p_k whose increments adaptive AT
    re-weights, and :attr:`default_beta`, the β for which β·Σ wᵢδᵢ with uniform (PGD, TA-VAT) or linear
    (FreeLB) w reproduces the method's own objective.
    """

    token_level = False
    cfg: KStepSettings

    def __init__(self, cfg: KStepSettings) -> None:
        super().__init__(cfg)
        self.pert: Perturbation = from_config(cfg, token_level=self.token_level, init_mag=cfg.init_mag)

    @property
    def default_beta(self) -> float:
        return float(self.cfg.adv_steps)

    def initial_delta(self, batch: Batch, x0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.pert.init(x0, mask)

    def ascent_objective(self, ctx: StepContext, batch: Batch, x0: torch.Tensor):
        """The function of δ that the ascent maximises (cross-entropy at x₀ + δ)."""

        def objective(delta: torch.Tensor) -> torch.Tensor:
            with ctx.autocast():
                logits = forward_logits(ctx.module, ctx.module, batch, x0 + delta)
            return F.cross_entropy(logits.float(), batch["labels"])

        return objective

    def perturbation_points(self, ctx: StepContext, batch: Batch, x0: torch.Tensor) -> list[torch.Tensor]:
        """p_1..p_k: the perturbation after each ascent step (x0 must be detached)."""
        mask = token_mask(batch, x0)
        delta = self.initial_delta(batch, x0, mask)
        return self.pert.ascend(delta, self.cfg.adv_steps, self.ascent_objective(ctx, batch, x0), mask)

    def observe(self, batch: Batch, delta: torch.Tensor) -> None:
        """Called with the final perturbation of each batch (TA-VAT remembers it per token)."""

    def loss(self, ctx: StepContext, batch: Batch):
        x0 = embeds(ctx.module, batch)
        delta = self.perturbation_points(ctx, batch, x0.detach())[-1]
        self.observe(batch, delta)
        with ctx.autocast():
            logits = forward_logits(ctx.model, ctx.module, batch, x0 + delta)
        return F.cross_entropy(logits.float(), batch["labels"]), {}, delta


class PGD(KStepMethod):
    name = "pgd"
    settings = PGDSettings
