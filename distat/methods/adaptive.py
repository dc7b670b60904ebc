"""Adaptive adversarial training (seed paper: "Adaptive Adversarial Training for Balancing Model
Robustness and Standard Performance").

A k-step method (PGD, FreeLB, TA-VAT) produces perturbation points p_1..p_k; with increments
δ_i = p_i − p_{i−1} (p_0 = 0) its objective is rewritten as

    Ĵ(θ, w) = L(θ; x₀ + β · Σᵢ wᵢ δᵢ, y),   w ∈ simplex (Σ wᵢ = 1, wᵢ ≥ 0).

θ descends Ĵ; w *ascends* Ĵ with its own learning rate (``w_lr``), followed by a Euclidean projection
back onto the simplex. w starts uniform (or ∝ k−i+1 with ``w_init: linear``), persists across batches
and epochs, and is checkpointed. When ``max_norm`` > 0 the re-weighted perturbation is projected onto the same
ball as the base method's. Identities (tested): uniform w with β = k gives PGD's loss exactly;
w ∝ k−i+1 with β = (k+1)/2 gives FreeLB's average loss to first order in α (the paper's Eq. 10).

Cost: the base method's ascent with input gradients only, then one full forward/backward — so adaptive
FreeLB is cheaper than FreeLB, whose every step back-propagates into the parameters. Under DDP the
gradient of w is all-reduced (averaged) like a parameter's, so every worker keeps the same w.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from distat.methods.base import ATMethod, Batch, StepContext, StepOutput, embeds, forward_logits
from distat.methods.freelb import FreeLB
from distat.methods.perturb import increments
from distat.methods.pgd import PGD, KStepMethod, KStepSettings
from distat.methods.tavat import TAVAT

BASES: dict[str, type[KStepMethod]] = {"pgd": PGD, "freelb": FreeLB, "tavat": TAVAT}


class AdaptiveSettings(KStepSettings):
    """The base method's knobs (every base is a k-step method with exactly :class:`KStepSettings`'s knobs)
    plus adaptive AT's own. YAML may say ``name: adaptive_pgd`` for ``name: adaptive, base: pgd``."""

    name: Literal["adaptive"] = "adaptive"
    base: Literal["pgd", "freelb", "tavat"]
    beta: float | None = Field(default=None, gt=0)  # None = auto: k for PGD/TA-VAT, (k+1)/2 for FreeLB
    w_lr: float = Field(default=1.0, ge=0)  # learning rate of the gradient ascent on w; 0 freezes w
    w_init: Literal["uniform", "linear"] = "uniform"  # linear: w_i ∝ k-i+1 (FreeLB's implicit weights)

    @property
    def label(self) -> str:
        return f"adaptive_{self.base}"

    def base_settings(self) -> KStepSettings:
        """The settings of the wrapped method: this config's share of the base method's knobs."""
        cls = BASES[self.base].settings
        return cls.model_validate({k: getattr(self, k) for k in cls.model_fields if k != "name"})


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of a vector onto the probability simplex (sort-based, Duchi et al. 2008)."""
    u, _ = torch.sort(v, descending=True)
    css = torch.cumsum(u, dim=0) - 1
    ks = torch.arange(1, v.numel() + 1, device=v.device, dtype=v.dtype)
    rho = int(torch.nonzero(u - css / ks > 0).max())
    tau = css[rho] / (rho + 1)
    return torch.clamp(v - tau, min=0)


def initial_weights(k: int, kind: str) -> torch.Tensor:
    if kind == "linear":
        w = torch.arange(k, 0, -1, dtype=torch.float32)
    else:
        w = torch.ones(k, dtype=torch.float32)
    return w / w.sum()


class AdaptiveAT(ATMethod):
    name = "adaptive"
    settings = AdaptiveSettings
    cfg: AdaptiveSettings

    def __init__(self, cfg: AdaptiveSettings) -> None:
        super().__init__(cfg)
        self.base: KStepMethod = BASES[cfg.base](cfg.base_settings())
        self.w = initial_weights(cfg.adv_steps, cfg.w_init)
        self.beta = float(cfg.beta) if cfg.beta is not None else self.base.default_beta

    def setup(self, module: nn.Module) -> None:
        self.base.setup(module)
        self.w = self.w.to(module.get_input_embeddings().weight.device)

    def train_step(self, ctx: StepContext, batch: Batch) -> StepOutput:
        x0 = embeds(ctx.module, batch)
        points = self.base.perturbation_points(ctx, batch, x0.detach())
        incs = torch.stack(increments(points))  # (k, B, T, H), detached
        w = self.w.detach().clone().requires_grad_(True)
        delta = self.beta * torch.einsum("k,kbth->bth", w, incs)
        # the re-weighted perturbation stays inside the base method's ball (a no-op when max_norm is 0)
        delta = self.base.pert.project(delta)
        with ctx.autocast():
            logits = forward_logits(ctx.model, ctx.module, batch, x0 + delta)
        loss = F.cross_entropy(logits.float(), batch["labels"])
        ctx.backward(loss)
        grad = w.grad if w.grad is not None else torch.zeros_like(w)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(grad)
            grad /= dist.get_world_size()
        # a non-finite gradient (the loss overflowed: the loop stops the trial as diverged) leaves w as it was,
        # on the simplex; projecting NaNs would crash the trial instead
        if self.cfg.w_lr > 0 and bool(torch.isfinite(grad).all()):
            self.w = project_simplex(self.w + self.cfg.w_lr * grad)
        self.base.observe(batch, points[-1])
        return StepOutput(loss=loss.detach(), delta=delta.detach(), logs={"w_grad_norm": float(grad.norm())})

    def loss(self, ctx: StepContext, batch: Batch):
        raise NotImplementedError("adaptive AT updates w after the backward: use train_step")

    def epoch_logs(self) -> dict[str, float]:
        return {f"w_{i + 1}": float(v) for i, v in enumerate(self.w.tolist())}

    def state_dict(self) -> dict[str, Any]:
        return {"w": self.w.detach().cpu(), "base": self.base.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        w = state["w"]
        if w.shape != self.w.shape:
            raise ValueError(f"checkpoint has {w.numel()} adaptive weights, config asks for {self.w.numel()}")
        self.w = w.to(self.w.device)
        self.base.load_state_dict(state.get("base", {}))
