"""FreeLB (Zhu et al., ICLR 2020): "free" large-batch adversarial training.

K ascent steps from a random start δ₀; at every point p_0 = δ₀, p_1, ..., p_{K−1} the model's loss
L(θ; x + p_t, y) / K is back-propagated into the *parameters* too (the FreeLB paper's Algorithm 1), so the
update descends the average loss over the trajectory: min_θ (1/K) Σ_{t=0}^{K−1} L(θ; x + p_t, y). That
costs K full backward passes; the adaptive variant (see adaptive.py) replaces them with input-only ones plus
one full pass.

Relation to adaptive AT: with x₀ = x + δ₀ and increments δᵢ = p_i − p_{i−1}, FreeLB's average is, to first
order, L(x₀) + Σ_{i=1}^{K−1} ((K−i)/K)·∇Lᵀδᵢ — adaptive AT with K−1 increments, w ∝ (K−i) and β = (K−1)/2.
The adaptive-AT paper's Eq. 10 writes FreeLB over the k points after each step, (1/k) Σ_{t=1}^{k} L(x₀ + p_t),
whose first-order weights are (k−i+1)/k: w ∝ k−i+1, β = (k+1)/2, adaptive FreeLB's defaults for k steps.
Both identities are tested (tests/test_methods.py).
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F

from distat.methods.base import Batch, StepContext, StepOutput, embeds, forward_logits, token_mask
from distat.methods.pgd import KStepMethod, KStepSettings, Trajectory


class FreeLBSettings(KStepSettings):
    name: Literal["freelb"] = "freelb"


class FreeLB(KStepMethod):
    name = "freelb"
    settings = FreeLBSettings
    matching_weights = "linear"

    @property
    def default_beta(self) -> float:
        # Σ_i (k−i+1)/k = (k+1)/2: w ∝ k−i+1 scaled by β reproduces the paper's Eq. 10 to first order
        return (self.cfg.adv_steps + 1) / 2

    def train_step(self, ctx: StepContext, batch: Batch) -> StepOutput:
        k = self.cfg.adv_steps
        x = embeds(ctx.module, batch)
        mask = token_mask(batch, x)
        start = self.initial_delta(batch, x.detach(), mask)
        delta, points = start, []
        total = x.new_zeros((), dtype=delta.dtype)
        for t in range(k):
            if t > 0:  # the embedding lookup's graph was freed by the previous backward
                x = embeds(ctx.module, batch)
            delta = delta.detach().requires_grad_(True)
            with ctx.autocast():
                logits = forward_logits(ctx.model, ctx.module, batch, x + delta)
            loss = F.cross_entropy(logits.float(), batch["labels"]) / k
            ctx.backward(loss, sync=t == k - 1)
            total = total + loss.detach()
            if t < k - 1:
                delta = self.pert.step(delta.detach(), delta.grad, mask)
                points.append(delta)
        logs: dict[str, float] = {}
        if points:
            self.diagnose(ctx, batch, x, Trajectory(start, points), logs)
        return StepOutput(loss=total, logs=logs, delta=delta.detach())

    def loss(self, ctx: StepContext, batch: Batch):
        raise NotImplementedError("FreeLB back-propagates at every ascent step: use train_step")
