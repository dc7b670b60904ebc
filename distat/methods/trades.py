"""TRADES (Zhang et al., ICML 2019) in the embedding space.

The perturbation maximises KL(f(x₀) ‖ f(x₀ + δ)) by k ascent steps from a small random start, with dropout
off (the TRADES reference puts the model in eval mode to craft the perturbation, then back in train mode);
the model minimises CE(f(x₀), y) + β_T · KL(f(x₀) ‖ f(x₀ + δ)) with β_T = ``trades_beta``.

β_T defaults to 0.5, the setting of the adaptive-AT paper's TRADES baseline (§5.3: "The weighting factor α in
TRADES is set to 0.5"), whose tables distat reproduces; the TRADES paper's image experiments use 6 (1/λ).
The clean and adversarial inputs go through the model in one forward of the doubled batch, so there is
exactly one forward per backward (what DDP requires).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from distat.methods.base import (
    ATMethod,
    Batch,
    StepContext,
    doubled,
    embeds,
    eval_mode,
    forward_logits,
    kl_div,
    token_mask,
)
from distat.methods.perturb import Perturbation, from_config
from distat.methods.pgd import KStepSettings

# At δ = 0 the KL is at its minimum and its gradient vanishes, so the ascent needs a non-zero start; the
# TRADES reference code uses 0.001·N(0, 1). We use that scale when init_mag is 0.
_MIN_INIT = 1e-3



class TRADESSettings(KStepSettings):
    name: Literal["trades"] = "trades"
    trades_beta: float = Field(default=0.5, ge=0)  # β_T: weight of the KL term (adaptive-AT paper §5.3: 0.5)


class TRADES(ATMethod):
    name = "trades"
    settings = TRADESSettings
    cfg: TRADESSettings

    def __init__(self, cfg: TRADESSettings) -> None:
        super().__init__(cfg)
        self.pert: Perturbation = from_config(cfg, init_mag=cfg.init_mag)

    def _start(self, x0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pert.init_mag > 0:
            return self.pert.init(x0, mask)
        return _MIN_INIT * torch.randn(x0.shape, device=x0.device, dtype=torch.float32) * mask

    def loss(self, ctx: StepContext, batch: Batch):
        x0 = embeds(ctx.module, batch)
        mask = token_mask(batch, x0)
        x0d = x0.detach()
        with eval_mode(ctx.module):  # the ascent sees the deterministic network, as in the TRADES reference
            with torch.no_grad(), ctx.autocast():
                target = forward_logits(ctx.module, ctx.module, batch, x0d)

            def objective(delta: torch.Tensor) -> torch.Tensor:
                with ctx.autocast():
                    logits = forward_logits(ctx.module, ctx.module, batch, x0d + delta)
                return kl_div(target, logits)

            delta = self.pert.ascend(self._start(x0d, mask), self.cfg.adv_steps, objective, mask)[-1]
        with ctx.autocast():
            both = forward_logits(ctx.model, ctx.module, doubled(batch), torch.cat([x0, x0 + delta]))
        clean_logits, adv_logits = both.chunk(2)
        natural = F.cross_entropy(clean_logits.float(), batch["labels"])
        robust = kl_div(clean_logits, adv_logits)
        loss = natural + self.cfg.trades_beta * robust
        return loss, {"natural_loss": natural.item(), "robust_kl": robust.item()}, delta
