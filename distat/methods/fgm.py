"""FGM (Miyato et al., ICLR 2017): one normalised gradient step in the embedding space.

r = α · g / ‖g‖ (l2, per example) or α · sign(g) (linf), g the input gradient of the clean loss;
the model descends L(x₀, y) + L(x₀ + r, y). The clean backward yields the parameter gradients and g in
one pass (accumulated locally, without a DDP all-reduce), then the adversarial backward syncs: two
forwards and two full backwards, as in the usual FGM recipe.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from distat.methods.base import ATMethod, Batch, StepContext, StepOutput, embeds, forward_logits, token_mask
from distat.methods.perturb import PerturbSettings, from_config


class FGMSettings(PerturbSettings):
    """One step from x₀ itself: no step count and no random start."""

    name: Literal["fgm"] = "fgm"


class FGM(ATMethod):
    name = "fgm"
    settings = FGMSettings

    def __init__(self, cfg: FGMSettings) -> None:
        super().__init__(cfg)
        self.pert = from_config(cfg)

    def train_step(self, ctx: StepContext, batch: Batch) -> StepOutput:
        x0 = embeds(ctx.module, batch)
        mask = token_mask(batch, x0)
        probe = torch.zeros_like(x0, dtype=torch.float32, requires_grad=True)
        with ctx.autocast():
            clean = F.cross_entropy(forward_logits(ctx.model, ctx.module, batch, x0 + probe).float(), batch["labels"])
        ctx.backward(clean, sync=False)
        r = self.pert.step(torch.zeros_like(probe), probe.grad, mask)
        x0 = embeds(ctx.module, batch)  # the first backward freed the lookup's graph
        with ctx.autocast():
            adv = F.cross_entropy(forward_logits(ctx.model, ctx.module, batch, x0 + r).float(), batch["labels"])
        ctx.backward(adv, sync=True)
        logs = {"clean_loss": clean.item(), "adv_loss": adv.item()}
        return StepOutput(loss=(clean + adv).detach(), logs=logs, delta=r)

    def loss(self, ctx: StepContext, batch: Batch):
        raise NotImplementedError("FGM back-propagates twice: use train_step")
