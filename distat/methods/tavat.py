"""TA-VAT: token-aware virtual adversarial training (Li & Qiu, AAAI 2021), as TextDefender runs it.

The perturbation has two parts, both in the word-embedding space:

- a sentence-level part δ_s, started at random in the ``init_mag`` ball (per example, as FreeLB) and moved by
  normalised ascent steps α·g/‖g‖ per example;
- a token-level part δ_t, started from a global (vocabulary × hidden) table of perturbations accumulated over
  all earlier batches: the rows of the batch's token ids, normalised by their joint l2 norm. It moves by
  normalised ascent steps per token, α·g_j/‖g_j‖, and is then re-weighted token-aware: each token's
  perturbation is scaled by its norm over the largest norm in its sentence, so the tokens the loss is most
  sensitive to keep the largest perturbations.

After each step the total δ_s + δ_t is projected onto the ``max_norm`` ball (per example, l2, by scaling both
parts). As in FreeLB, the model's loss at every point p_0 .. p_{K−1} back-propagates into the parameters (1/K
each); after the last point the batch's final δ_t is *added* to its tokens' rows of the table (a token seen
several times in the batch gets the sum).

Defaults are TextDefender's TA-VAT arguments: K = 2, α = 0.05, ``init_mag`` = 0.2, ``max_norm`` = 0.5 (l2). The
table starts uniform in [−1, 1]·init_mag/√H for every row, as there.

Adaptive AT wraps TA-VAT through :meth:`TAVAT.trajectory`: the start is δ_s⁰ + δ_t⁰, the k points are the
totals after each step (input gradients only), and the table takes the final token-level part. TA-VAT being
FreeLB-based, it is matched by ∝ k−i+1 weights and β = (k+1)/2.

Under DDP every rank gathers every rank's (token id, δ_t) pairs before adding them, so the table stays the
same on all ranks.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from distat.methods.base import Batch, StepContext, StepOutput, embeds, forward_logits, token_mask, world_size
from distat.methods.pgd import KStepMethod, KStepSettings, Trajectory

_EPS = 1e-8  # the reference's clamp on gradient norms


class TAVATSettings(KStepSettings):
    name: Literal["tavat"] = "tavat"
    adv_steps: int = Field(default=2, ge=1, le=100)  # K (TextDefender: 2)
    adv_lr: float = Field(default=0.05, gt=0)  # α (TextDefender: 0.05)
    init_mag: float = Field(default=0.2, ge=0)  # radius of the random sentence-level start (TextDefender: 0.2)
    max_norm: float = Field(default=0.5, ge=0)  # l2 bound of δ_s + δ_t per example; 0 = none (TextDefender: 0.5)


class TAVAT(KStepMethod):
    name = "tavat"
    settings = TAVATSettings
    matching_weights = "linear"
    cfg: TAVATSettings

    def __init__(self, cfg: TAVATSettings) -> None:
        super().__init__(cfg)
        self.table: torch.Tensor | None = None  # (vocab, hidden): accumulated token-level perturbations
        self.device: torch.device | None = None

    @property
    def default_beta(self) -> float:
        return (self.cfg.adv_steps + 1) / 2  # FreeLB-based: see freelb.py

    def setup(self, module: nn.Module) -> None:
        self.device = module.get_input_embeddings().weight.device
        if self.table is not None:
            self.table = self.table.to(self.device)

    def _ensure_table(self, module: nn.Module) -> torch.Tensor:
        """The table, drawn at the first step (from the step RNG stream, so the trial's seed fixes it)."""
        if self.table is None:
            vocab, hidden = module.get_input_embeddings().weight.shape
            table = torch.rand(vocab, hidden, dtype=torch.float32) * 2 - 1  # on the CPU: the same on every device
            self.table = (table * (self.cfg.init_mag / hidden**0.5)).to(self.device or module.device)
        return self.table

    # ----------------------------------------------------------------------------------------------
    # the two-part perturbation

    def _start(self, ctx: StepContext, batch: Batch, x: torch.Tensor, mask: torch.Tensor):
        table = self._ensure_table(ctx.module)
        sentence = self.pert.init(x, mask)  # per example: uniform · init_mag / √(len · H)
        token = table[batch["input_ids"]] * mask
        # DEVIATION: the joint norm is over real tokens only — TextDefender gathers (and normalises over) the
        # padding positions' rows too; distat never perturbs padding, which attention ignores anyway.
        token = token / token.norm().clamp_min(_EPS)
        return sentence, token

    def _step(self, sentence: torch.Tensor, token: torch.Tensor, grad: torch.Tensor, mask: torch.Tensor):
        """One ascent step of both parts, the token-aware re-weighting and the projection of their sum."""
        grad = grad.float()
        if self.cfg.norm_type == "linf":
            # DEVIATION: TextDefender's TA-VAT is l2 only; distat's linf variant steps along sign(g) for both
            # parts and bounds the total's largest coordinate, so a search over norm types can include TA-VAT.
            sentence = sentence + self.cfg.adv_lr * grad.sign()
            token = token + self.cfg.adv_lr * grad.sign()
        else:
            per_example = grad.flatten(1).norm(dim=1).clamp_min(_EPS).view(-1, 1, 1)
            per_token = grad.norm(dim=-1, keepdim=True).clamp_min(_EPS)
            sentence = sentence + self.cfg.adv_lr * grad / per_example
            token = token + self.cfg.adv_lr * grad / per_token
        sentence, token = sentence * mask, token * mask
        norms = token.norm(dim=-1, keepdim=True)  # (B, T, 1)
        token = token * (norms / norms.amax(dim=1, keepdim=True).clamp_min(_EPS))  # token-aware re-weighting
        if self.cfg.max_norm > 0:
            total = sentence + token
            if self.cfg.norm_type == "linf":
                size = total.flatten(1).abs().amax(dim=1)
            else:
                size = total.flatten(1).norm(dim=1)
            scale = torch.clamp(self.cfg.max_norm / size.clamp_min(1e-12), max=1.0).view(-1, 1, 1)
            sentence, token = sentence * scale, token * scale
        return sentence, token

    def trajectory(self, ctx: StepContext, batch: Batch, x: torch.Tensor) -> Trajectory:
        """For adaptive AT: k steps with input gradients only, the totals after each step."""
        mask = token_mask(batch, x)
        sentence, token = self._start(ctx, batch, x, mask)
        objective = self.ascent_objective(ctx, batch, x)
        start, points = sentence + token, []
        for _ in range(self.cfg.adv_steps):
            d = (sentence + token).detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(objective(d), d)
            sentence, token = self._step(sentence, token, grad, mask)
            points.append(sentence + token)
        return Trajectory(start, points, parts={"token": token})

    def train_step(self, ctx: StepContext, batch: Batch) -> StepOutput:
        k = self.cfg.adv_steps
        x = embeds(ctx.module, batch)
        mask = token_mask(batch, x)
        sentence, token = self._start(ctx, batch, x.detach(), mask)
        start, points = sentence + token, []
        total = x.new_zeros((), dtype=torch.float32)
        for t in range(k):
            if t > 0:  # the embedding lookup's graph was freed by the previous backward
                x = embeds(ctx.module, batch)
            d = (sentence + token).detach().requires_grad_(True)
            with ctx.autocast():
                logits = forward_logits(ctx.model, ctx.module, batch, x + d)
            # DEVIATION: each point's loss is divided by K, as in FreeLB (which TA-VAT builds on) — TextDefender's
            # TA-VAT accumulates the undivided losses, a K times larger step for the same learning rate.
            loss = F.cross_entropy(logits.float(), batch["labels"]) / k
            ctx.backward(loss, sync=t == k - 1)
            total = total + loss.detach()
            if t < k - 1:
                sentence, token = self._step(sentence, token, d.grad, mask)
                points.append(sentence + token)
        traj = Trajectory(start, points, parts={"token": token})
        self.observe(batch, traj)
        logs: dict[str, float] = {}
        if points:
            self.diagnose(ctx, batch, x, traj, logs)
        return StepOutput(loss=total, logs=logs, delta=(sentence + token).detach())

    def loss(self, ctx: StepContext, batch: Batch):
        raise NotImplementedError("TA-VAT back-propagates at every ascent step: use train_step")

    # ----------------------------------------------------------------------------------------------
    # the global table

    @torch.no_grad()
    def observe(self, batch: Batch, trajectory: Trajectory) -> None:
        """Add the batch's final token-level perturbation to its tokens' rows (every rank's, under DDP)."""
        assert self.table is not None
        real = batch["attention_mask"].bool()
        ids = batch["input_ids"][real]
        vecs = trajectory.parts["token"].detach().float()[real]
        ids, vecs = _gather_rows(ids, vecs)
        self.table.index_put_((ids,), vecs, accumulate=True)

    def state_dict(self) -> dict[str, Any]:
        return {} if self.table is None else {"table": self.table.detach().cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            self.table = None
            return
        table = state["table"]
        if self.table is not None and self.table.shape == table.shape:
            self.table.copy_(table)
        else:
            self.table = table.to(self.device or "cpu", copy=True)


def _gather_rows(ids: torch.Tensor, vecs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's (ids, vecs) concatenated in rank order; the inputs themselves outside DDP."""
    world = world_size()
    if world == 1:
        return ids, vecs
    count = torch.tensor([ids.numel()], device=ids.device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    longest = int(max(int(c) for c in counts))
    pad = longest - ids.numel()
    ids_p = F.pad(ids, (0, pad))
    vecs_p = F.pad(vecs, (0, 0, 0, pad))
    all_ids = [torch.zeros_like(ids_p) for _ in range(world)]
    all_vecs = [torch.zeros_like(vecs_p) for _ in range(world)]
    dist.all_gather(all_ids, ids_p)
    dist.all_gather(all_vecs, vecs_p)
    n = [int(c) for c in counts]
    return (torch.cat([a[:m] for a, m in zip(all_ids, n, strict=True)]),
            torch.cat([v[:m] for v, m in zip(all_vecs, n, strict=True)]))
