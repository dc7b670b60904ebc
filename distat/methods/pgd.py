"""PGD (Madry et al., 2018) in the embedding space, and the k-step interface adaptive AT wraps.

k ascent steps on the cross-entropy from a random start δ₀ inside ``init_mag``, each of size α along the
normalised input gradient and projected onto the ``max_norm`` ball; the model then descends the loss at the
final point: min_θ L(θ; x + δ_k, y). The ascent uses input gradients only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from distat.methods.base import ATMethod, Batch, StepContext, embeds, forward_logits, token_mask
from distat.methods.perturb import Perturbation, PerturbSettings, from_config, increments
from distat.methods.taylor import taylor_error


class KStepSettings(PerturbSettings):
    """The knobs of every k-step method (PGD, FreeLB, TA-VAT, TRADES, and adaptive AT around the first three)."""

    adv_steps: int = Field(default=3, ge=1, le=100)  # k
    init_mag: float = Field(default=0.05, ge=0)  # radius of the random initial perturbation δ₀
    # log the adaptive-AT paper's Eq. 8 first-order (Taylor) error of the ascent every step (two extra forwards)
    taylor_diagnostic: bool = False


class PGDSettings(KStepSettings):
    name: Literal["pgd"] = "pgd"


@dataclass
class Trajectory:
    """One batch's ascent: the random start δ₀ and the perturbations p_1..p_k after each of the k steps.

    Every p_i is the whole perturbation (δ₀ included). With x₀ = x + δ₀ the adaptive-AT paper writes the
    final point as x₀ + Σᵢ δᵢ with increments δᵢ = p_i − p_{i−1}, p_0 = δ₀ (:meth:`increments`). ``parts`` holds
    method-specific pieces (TA-VAT's token-level part, to remember per token).
    """

    start: torch.Tensor
    points: list[torch.Tensor]
    parts: dict[str, torch.Tensor] = field(default_factory=dict)

    def increments(self) -> list[torch.Tensor]:
        return increments(self.points, start=self.start)


class KStepMethod(ATMethod):
    """A method whose perturbation comes from k ascent steps; adaptive AT wraps these.

    :meth:`trajectory` gives the start and the k points whose increments adaptive AT re-weights;
    :attr:`matching_weights` and :attr:`default_beta` are the w and β for which x₀ + β·Σ wᵢδᵢ reproduces the
    method's own objective (PGD: uniform and k, exactly; FreeLB-style methods: ∝ k−i+1 and (k+1)/2, to first
    order — the adaptive-AT paper's Eq. 10).
    """

    token_level = False
    matching_weights: Literal["uniform", "linear"] = "uniform"
    cfg: KStepSettings

    def __init__(self, cfg: KStepSettings) -> None:
        super().__init__(cfg)
        self.pert: Perturbation = from_config(cfg, token_level=self.token_level, init_mag=cfg.init_mag)

    @property
    def default_beta(self) -> float:
        return float(self.cfg.adv_steps)

    def initial_delta(self, batch: Batch, x0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.pert.init(x0, mask)

    def project(self, delta: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Onto the method's norm ball (around the clean embeddings), real tokens only."""
        return self.pert.project(delta) * token_mask(batch, delta)

    def ascent_objective(self, ctx: StepContext, batch: Batch, x: torch.Tensor):
        """The function of δ that the ascent maximises (cross-entropy at x + δ)."""

        def objective(delta: torch.Tensor) -> torch.Tensor:
            with ctx.autocast():
                logits = forward_logits(ctx.module, ctx.module, batch, x + delta)
            return F.cross_entropy(logits.float(), batch["labels"])

        return objective

    def trajectory(self, ctx: StepContext, batch: Batch, x: torch.Tensor) -> Trajectory:
        """The random start and k ascent steps from it, with input gradients only (``x`` must be detached)."""
        mask = token_mask(batch, x)
        start = self.initial_delta(batch, x, mask)
        return Trajectory(start, self.pert.ascend(start, self.cfg.adv_steps, self.ascent_objective(ctx, batch, x), mask))

    def observe(self, batch: Batch, trajectory: Trajectory) -> None:
        """Called with each batch's trajectory once the model has trained on it (TA-VAT remembers tokens)."""

    def diagnose(self, ctx: StepContext, batch: Batch, x: torch.Tensor, trajectory: Trajectory,
                 logs: dict[str, float]) -> None:
        """Add the Taylor-error diagnostic to ``logs`` when the settings ask for it."""
        if self.cfg.taylor_diagnostic:
            logs["taylor_error"] = taylor_error(ctx, batch, x.detach(), trajectory.start, trajectory.increments(),
                                                self.cfg.adv_lr)

    def loss(self, ctx: StepContext, batch: Batch):
        x = embeds(ctx.module, batch)
        traj = self.trajectory(ctx, batch, x.detach())
        delta = traj.points[-1]
        with ctx.autocast():
            logits = forward_logits(ctx.model, ctx.module, batch, x + delta)
        loss = F.cross_entropy(logits.float(), batch["labels"])
        logs: dict[str, float] = {}
        self.observe(batch, traj)
        self.diagnose(ctx, batch, x, traj, logs)
        return loss, logs, delta


class PGD(KStepMethod):
    name = "pgd"
    settings = PGDSettings
