"""The adaptive-AT paper's diagnostic: how far the ascent is from its first-order (Taylor) picture.

The paper (Eq. 8) approximates the loss at the end of a k-step ascent from x₀ = x + δ₀ by its first-order
expansion, in which each gradient step δᵢ = α·∇L contributes ∇Lᵀδᵢ = ‖δᵢ‖²/α:

    L(x₀ + Σᵢ δᵢ) ≈ L(x₀) + (1/α) Σᵢ ‖δᵢ‖²,

and its Figure 4 plots the error of that approximation relative to the loss. distat logs

    taylor_error = |L(x₀ + Σᵢ δᵢ) − L(x₀) − (1/α)·mean_b Σᵢ ‖δᵢ,b‖²| / L(x₀ + Σᵢ δᵢ)

per step (the loop averages it over the epoch), with L the batch-mean cross-entropy and ‖·‖ the l2 norm of
each example's increment. Both losses are measured with dropout off, so the number reflects the loss surface
and not dropout noise. distat's steps are normalised (‖δᵢ‖ = α before any projection), so the paper's
‖δᵢ‖²/α is α per unprojected step: the metric measures what the paper's derivation assumes, as the paper does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from distat.methods.base import Batch, StepContext, eval_mode, forward_logits


@torch.no_grad()
def taylor_error(ctx: StepContext, batch: Batch, x: torch.Tensor, start: torch.Tensor,
                 increments: Sequence[torch.Tensor], alpha: float) -> float:
    """Eq. 8's relative first-order error for one batch (``x``: clean embeddings, detached; ``start``: δ₀)."""
    x0 = x + start
    total = torch.stack(list(increments)).sum(dim=0)
    with eval_mode(ctx.module), ctx.autocast():
        at_start = forward_logits(ctx.module, ctx.module, batch, x0)
        at_end = forward_logits(ctx.module, ctx.module, batch, x0 + total)
    loss_start = F.cross_entropy(at_start.float(), batch["labels"])
    loss_end = F.cross_entropy(at_end.float(), batch["labels"])
    squares = sum(d.float().pow(2).flatten(1).sum(dim=1) for d in increments)  # (B,) Σᵢ ‖δᵢ,b‖²
    linear = loss_start + squares.mean() / alpha
    return float((loss_end - linear).abs() / loss_end.clamp_min(1e-12))
