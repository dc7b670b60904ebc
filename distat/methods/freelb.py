"""FreeLB (Zhu et al., ICLR 2020): "free" large-batch adversarial training.

K ascent steps from a random start; at every step the model's loss L(θ; x₀ + p_t, y) / K is
back-propagated into the *parameters* too, so the update descends the average loss over the ascent
trajectory p_0..p_{K-1}: min_θ (1/K) Σ_t L(θ; x₀ + p_t, y). That costs K full backward passes; the
adaptive variant (see adaptive.py) replaces them with K−1 input-only ones plus one full pass.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F

from distat.methods.base import Batch, StepContext, StepOutput, embeds, forward_logits, token_mask
from distat.methods.pgd import KStepMethod, KStepSettings


class FreeLBSettings(KStepSettings):
    name: Literal["freelb"] = "freelb"


class FreeLB(KStepMethod):
    name = "freelb"
    settings = FreeLBSettings

    @property
    def default_beta(self) -> float:
        # Σ_t p_t = Σ_i (K−i+1) δ_i, so β = (K+1)/2 with w_i ∝ K−i+1 reproduces the average (Eq. 10)
        return (self.cfg.adv_steps + 1) / 2

    def perturbation_points(self, ctx: StepContext, batch: Batch, x0):
        """p_0 (the random start) .. p_{K-1}: the K points FreeLB evaluates its loss at."""
        mask = token_mask(batch, x0)
        start = self.initial_delta(batch, x0, mask)
        steps = self.cfg.adv_steps - 1
        return [start, *self.pert.ascend(start, steps, self.ascent_objective(ctx, batch, x0), mask)]

    def train_step(self, ctx: StepContext, batch: Batch) -> StepOutput:
        k = self.cfg.adv_steps
        x0 = embeds(ctx.module, batch)
        mask = token_mask(batch, x0)
        delta = self.initial_delta(batch, x0.detach(), mask)
        total = x0.new_zeros((), dtype=delta.dtype)
        for t in range(k):
            if t > 0:  # the embedding lookup's graph was freed by the previous backward
                x0 = embeds(ctx.module, batch)
            delta = delta.detach().requires_grad_(True)
            with ctx.autocast():
                logits = forward_logits(ctx.model, ctx.module, batch, x0 + delta)
            loss = F.cross_entropy(logits.float(), batch["labels"]) / k
            ctx.backward(loss, sync=t == k - 1)
            total = total + loss.detach()
            if t < k - 1:
                delta = self.pert.step(delta.detach(), delta.grad, mask)
        return StepOutput(loss=total, delta=delta.detach())

    def loss(self, ctx: StepContext, batch: Batch):
        raise NotImplementedError("FreeLB back-propagates at every ascent step: use train_step")
