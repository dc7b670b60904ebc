"""Embedding-space perturbations: random init, normalised ascent steps, norm-ball projection.

Norms are taken per example over all (real) tokens and hidden units, as in FreeLB and TextDefender, or
per token when ``token_level`` is set (TA-VAT). ``max_norm == 0`` means no ball (TextDefender's
convention). Every result is multiplied by the real-token mask, so padding is never perturbed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field

from distat.methods.base import Settings

_EPS = 1e-12


class PerturbSettings(Settings):
    """The knobs of a normalised ascent step in the embedding space: FGM's one step, and each of the k steps
    of the k-step methods (:class:`distat.methods.pgd.KStepSettings` adds k and the random start)."""

    adv_lr: float = Field(default=0.03, gt=0)  # α: step size of each ascent step
    max_norm: float = Field(default=0.0, ge=0)  # radius of the norm ball; 0 = unbounded
    norm_type: Literal["l2", "linf"] = "l2"


@dataclass(frozen=True)
class Perturbation:
    norm_type: str = "l2"  # "l2" | "linf"
    init_mag: float = 0.0
    step_size: float = 0.03
    max_norm: float = 0.0
    token_level: bool = False

    def _reduce_dims(self, x: torch.Tensor) -> tuple[int, ...]:
        return (-1,) if self.token_level else tuple(range(1, x.dim()))

    def norm(self, delta: torch.Tensor) -> torch.Tensor:
        """l2 or linf norm per example (B,) or per token (B, T)."""
        dims = self._reduce_dims(delta)
        if self.norm_type == "linf":
            return delta.abs().amax(dim=dims)
        return delta.norm(p=2, dim=dims)

    def init(self, like: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Random start inside the ``init_mag`` ball (zeros when ``init_mag == 0``)."""
        if self.init_mag <= 0:
            return torch.zeros_like(like, dtype=torch.float32)
        u = (torch.rand(like.shape, device=like.device, dtype=torch.float32) * 2 - 1) * mask
        if self.norm_type == "linf":
            return u * self.init_mag
        # l2: uniform in [-1, 1] scaled by init_mag / sqrt(#dims), FreeLB's recipe
        hidden = like.shape[-1]
        if self.token_level:
            return u * (self.init_mag / hidden**0.5)
        dims = (mask.sum(dim=(1, 2)) * hidden).clamp_min(1)
        return u * (self.init_mag / dims.sqrt()).view(-1, 1, 1)

    def step(self, delta: torch.Tensor, grad: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One normalised ascent step of size ``step_size``, then projection and masking."""
        grad = grad.float()
        if self.norm_type == "linf":
            # DEVIATION: the linf step is Madry et al.'s α·sign(g) for every k-step method; FreeLB's and
            # TextDefender's code divide g by its per-example max |g| instead (the l2 step is theirs). One
            # linf step for all methods keeps "the same α" comparable across a search's methods.
            direction = grad.sign()
        else:
            gnorm = grad.norm(p=2, dim=self._reduce_dims(grad), keepdim=True)
            direction = grad / (gnorm + _EPS)
        return self.project(delta + self.step_size * direction) * mask

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        if self.max_norm <= 0:
            return delta
        if self.norm_type == "linf":
            return delta.clamp(-self.max_norm, self.max_norm)
        n = delta.norm(p=2, dim=self._reduce_dims(delta), keepdim=True)
        return delta * torch.clamp(self.max_norm / (n + _EPS), max=1.0)

    def ascend(
        self,
        delta: torch.Tensor,
        steps: int,
        objective: Callable[[torch.Tensor], torch.Tensor],
        mask: torch.Tensor,
    ) -> list[torch.Tensor]:
        """``steps`` ascent steps on ``objective(delta)``; returns the points after each step.

        Only the gradient with respect to ``delta`` is computed (``torch.autograd.grad``): autograd
        prunes every weight-gradient product, so one step costs a forward and about half a backward.
        """
        points: list[torch.Tensor] = []
        for _ in range(steps):
            d = delta.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(objective(d), d)
            delta = self.step(d.detach(), grad, mask)
            points.append(delta)
        return points


def increments(points: Sequence[torch.Tensor], start: torch.Tensor | None = None) -> list[torch.Tensor]:
    """δ_i = p_i − p_{i−1} with p_0 = ``start`` (zero when None), so that ``start`` + Σ δ_i = p_last exactly in
    exact arithmetic."""
    out: list[torch.Tensor] = []
    prev = start
    for p in points:
        out.append(p if prev is None else p - prev)
        prev = p
    return out


def from_config(cfg: PerturbSettings, token_level: bool = False, init_mag: float = 0.0) -> Perturbation:
    """The perturbation a method's settings describe (``init_mag``: the random start's radius, if any)."""
    return Perturbation(
        norm_type=cfg.norm_type, init_mag=init_mag, step_size=cfg.adv_lr,
        max_norm=cfg.max_norm, token_level=token_level,
    )
