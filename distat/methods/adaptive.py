"""Adaptive adversarial training (seed paper: Zhu et al., "Adaptive Adversarial Training for Balancing Model
Robustness and Standard Performance").

A k-step method (PGD, FreeLB, TA-VAT) starts from x₀ = x + δ₀ (its random start) and takes k ascent steps;
with the increments δᵢ = p_i − p_{i−1} (p_0 = δ₀) its objective is rewritten as (Eqs. 5–6, 12)

    Ĵ(θ, w) = L(θ; x₀ + β · Σᵢ wᵢ δᵢ, y),   w ∈ simplex (Σ wᵢ = 1, wᵢ ≥ 0),

the start staying outside the weighted sum. θ descends Ĵ; w *ascends* Ĵ with its own learning rate (``w_lr``),
followed by a Euclidean projection back onto the simplex. w persists across batches and epochs and is
checkpointed. When ``max_norm`` > 0 the re-weighted perturbation δ₀ + β·Σ wᵢδᵢ is projected onto the same ball
as the base method's.

Which start reproduces which base method (tested):

- ``w_init: uniform`` with β = k: PGD's loss exactly (x₀ + k·(1/k)·Σδᵢ = x + p_k).
- ``w_init: linear`` (wᵢ ∝ k−i+1) with β = (k+1)/2: the paper's Eq. 10 form of FreeLB,
  (1/k)·Σ_{t=1}^{k} L(x₀ + Σ_{i≤t} δᵢ), to first order in α. distat's FreeLB with K = k+1 steps averages over
  the K points p_0..p_k instead (the FreeLB paper's Algorithm 1), which to first order is the same w with
  β = k/2 (see freelb.py).
- TA-VAT is FreeLB-based (gradients at every ascent point), so it matches like FreeLB: linear w, β = (k+1)/2.

``w_init: base`` (the default) starts from the base method's matching weights, and ``beta: null`` takes its
matching β, so adaptive AT starts as its base method and moves away from it only as far as w's ascent takes it.

Cost: the base method's ascent with input gradients only, then one full forward/backward — so adaptive
FreeLB is cheaper than FreeLB, whose every step back-propagates into the parameters. Under DDP the
gradient of w is all-reduced (averaged) like a parameter's, so every worker keeps the same w.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from distat.methods.base import ATMethod, Batch, StepContext, StepOutput, embeds, forward_logits, world_size
from distat.methods.freelb import FreeLB
from distat.methods.pgd import PGD, KStepMethod, KStepSettings
from distat.methods.tavat import TAVAT

BASES: dict[str, type[KStepMethod]] = {"pgd": PGD, "freelb": FreeLB, "tavat": TAVAT}


class AdaptiveSettings(KStepSettings):
    """The base method's knobs (every base is a k-step method with exactly :class:`KStepSettings`'s knobs)
    plus adaptive AT's own. YAML may say ``name: adaptive_pgd`` for ``name: adaptive, base: pgd``."""

    name: Literal["adaptive"] = "adaptive"
    base: Literal["pgd", "freelb", "tavat"]
    beta: float | None = Field(default=None, gt=0)  # None = the base's matching β: k for PGD, (k+1)/2 for FreeLB/TA-VAT
    w_lr: float = Field(default=1.0, ge=0)  # learning rate of the gradient ascent on w; 0 freezes w
    # the start of w: the base method's matching weights (uniform for PGD, ∝ k−i+1 for FreeLB and TA-VAT), or either
    w_init: Literal["base", "uniform", "linear"] = "base"

    @model_validator(mode="before")
    @classmethod
    def _base_defaults(cls, data: Any) -> Any:
        """A knob left out takes the base method's default (TA-VAT's differ from PGD's), not the k-step one."""
        if not isinstance(data, dict) or data.get("base") not in BASES:
            return data
        base = BASES[data["base"]].settings.model_fields
        return {**{k: f.default for k, f in base.items() if k != "name" and k in cls.model_fields}, **data}

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
        kind = self.base.matching_weights if cfg.w_init == "base" else cfg.w_init
        self.w = initial_weights(cfg.adv_steps, kind)
        self.beta = float(cfg.beta) if cfg.beta is not None else self.base.default_beta

    def setup(self, module: nn.Module) -> None:
        self.base.setup(module)
        self.w = self.w.to(module.get_input_embeddings().weight.device)

    def train_step(self, ctx: StepContext, batch: Batch) -> StepOutput:
        x = embeds(ctx.module, batch)
        traj = self.base.trajectory(ctx, batch, x.detach())
        incs = torch.stack(traj.increments())  # (k, B, T, H), detached
        w = self.w.detach().clone().requires_grad_(True)
        # x₀ = x + δ₀ stays outside the weighted sum (Eq. 12); the result stays inside the base's ball
        delta = self.base.project(traj.start + self.beta * torch.einsum("k,kbth->bth", w, incs), batch)
        with ctx.autocast():
            logits = forward_logits(ctx.model, ctx.module, batch, x + delta)
        loss = F.cross_entropy(logits.float(), batch["labels"])
        ctx.backward(loss)
        grad = w.grad if w.grad is not None else torch.zeros_like(w)
        world = world_size()
        if world > 1:
            dist.all_reduce(grad)
            grad /= world
        # a non-finite gradient (the loss overflowed: the loop stops the trial as diverged) leaves w as it was,
        # on the simplex; projecting NaNs would crash the trial instead
        if self.cfg.w_lr > 0 and bool(torch.isfinite(grad).all()):
            self.w = project_simplex(self.w + self.cfg.w_lr * grad)
        self.base.observe(batch, traj)
        logs = {"w_grad_norm": float(grad.norm())}
        self.base.diagnose(ctx, batch, x, traj, logs)
        return StepOutput(loss=loss.detach(), delta=delta.detach(), logs=logs)

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
