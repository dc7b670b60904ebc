"""InfoBERT (Wang et al., "InfoBERT: Improving Robustness of Language Models from an Information Theoretic
Perspective", ICLR 2021), as TextDefender (``trainer/infobert.py``) runs it.

InfoBERT is FreeLB-style adversarial training plus two mutual-information regularisers. With x₀ the word
embeddings, δ_t the t-th point of the ascent (t = 0..K−1), T = the embedding-layer output (``hidden_states[0]``
of the forward at x₀ + δ_t, i.e. word + position + segment embeddings after LayerNorm and dropout) and
Z = the [CLS] vector of the last hidden layer, each step back-propagates into the parameters

    ℓ_t = (1/K) · [ CE(f(x₀ + δ_t), y) + β · Î_up(X; T) − α · Î_nce(T_A; Z) ]

and the update descends Σ_t ℓ_t: the paper's objective (task loss + β·Information Bottleneck regulariser −
α·Anchored Feature regulariser), averaged over FreeLB's ascent trajectory as its adversarial-training
algorithm does.

* Information Bottleneck term (an upper bound of I(X; T); the CLUB-style estimate as the reference code's
  "version 3", the one TextDefender keeps, computes it): over the N real-token rows t_1..t_N of T in the
  batch and a random index r(i) drawn uniformly with replacement,

      Î_up = (1/N) Σ_i ½ ‖t_i − t_{r(i)}‖²

  (the reference's positive term is identically 0, so only this negative-sample term remains).
* Anchored Feature term (a lower bound of the mutual information between the local anchored features and
  Z): per example, the gradient g_j = ∂(CE + β·Î_up)/∂δ at token j (the same gradient that drives the
  ascent step) ranks the n real tokens by ‖g_j‖ ascending; the tokens whose rank lies in
  [⌈n·c_l⌉, ⌈n·c_h⌉) are the local anchored features (robust and useful: neither the most
  perturbation-sensitive tokens nor the least informative ones). Each anchored token's T row is paired
  with its example's Z; the pairs are shuffled and split into chunks of the batch size, and each chunk of
  m pairs gives the InfoNCE lower bound (critic g_ω(t, z) = Softplus(W₂ ReLU(W₁ [t; z] + b₁) + b₂),
  W₁: 2H → 300)

      Î_nce = (1/m) Σ_i g_ω(t_i, z_i) − [ (1/m) Σ_i log Σ_j exp g_ω(t_j, z_i) − log m ]

  averaged over the chunks. The critic ω is trained with the model (it maximises Î_nce too).

The ascent is FreeLB's: random start δ₀ (l2: U(−1, 1)·mask·init_mag/√(n·H); linf: U(−init_mag, init_mag)),
then δ_{t+1} = Π(δ_t + adv_lr · g/‖g‖) on the max_norm ball (0 = unbounded), from the gradient above.

Defaults, all from TextDefender's InfoBERT trainer arguments (``trainer/infobert.py``, ``add_args``):
adv_steps 3, adv_lr 0.04, init_mag 0.08, max_norm 0 (unbounded), norm l2, α (``info_alpha``) 5e-3,
β (``info_beta``) 5e-3, c_l 0.5, c_h 0.9. The critic's width 300 is the reference's ``InfoNCE.lower_size``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from distat.methods.base import ATMethod, Batch, StepContext, StepOutput, embeds, forward, token_mask
from distat.methods.perturb import Perturbation, PerturbSettings, from_config

CRITIC_WIDTH = 300  # the reference InfoNCE critic's hidden width (``InfoNCE.lower_size``)


class InfoBERTSettings(PerturbSettings):
    """InfoBERT's knobs: FreeLB's (k, step, random start, ball) plus the two regularisers' weights and the
    anchored-feature quantiles. Defaults: TextDefender's InfoBERT arguments.

    Built on :class:`~distat.methods.perturb.PerturbSettings`, not ``KStepSettings``: the k-step knobs are
    restated here (same names and bounds) so that InfoBERT takes no knob it would ignore (KStepSettings's
    adaptive-AT ``taylor_diagnostic``)."""

    name: Literal["infobert"] = "infobert"
    adv_steps: int = Field(default=3, ge=1, le=100)  # K; TextDefender --adv-steps 3
    adv_lr: float = Field(default=0.04, gt=0)  # ascent step size; TextDefender --adv-learning-rate 4e-2
    init_mag: float = Field(default=0.08, ge=0)  # random start radius; TextDefender --adv-init-mag 8e-2
    # max_norm (default 0 = unbounded, TextDefender --adv-max-norm 0) and norm_type (default l2,
    # TextDefender --adv-norm-type l2) come from PerturbSettings with the same defaults
    info_alpha: float = Field(default=5e-3, ge=0)  # α: anchored-feature InfoNCE weight; TextDefender --alpha
    info_beta: float = Field(default=5e-3, ge=0)  # β: information-bottleneck upper-bound weight; --beta
    info_cl: float = Field(default=0.5, ge=0, le=1)  # c_l: lower rank quantile of anchored features; --cl
    info_ch: float = Field(default=0.9, ge=0, le=1)  # c_h: upper rank quantile of anchored features; --ch

    @model_validator(mode="after")
    def _quantiles_ordered(self) -> InfoBERTSettings:
        if self.info_cl > self.info_ch:
            raise ValueError(f"info_cl ({self.info_cl}) must not exceed info_ch ({self.info_ch})")
        return self


# --------------------------------------------------------------------------------------------------
# the two estimators


def club_upper_bound(rows: torch.Tensor) -> torch.Tensor:
    """The reference's IB upper bound over the (N, H) real-token rows: mean_i ½‖t_i − t_{r(i)}‖², r(i) drawn
    uniformly with replacement (from the global CPU torch RNG, as the reference's ``torch.randint``)."""
    n = rows.shape[0]
    idx = torch.randint(n, (n,)).to(rows.device)
    return ((rows - rows[idx]) ** 2 / 2).sum(dim=-1).mean()


def anchored_positions(grad: torch.Tensor, attention_mask: torch.Tensor, cl: float, ch: float
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The local anchored features: per example, the real tokens whose gradient norm ranks in
    [⌈n·cl⌉, ⌈n·ch⌉) in ascending order over its n real tokens.

    ``grad`` is (B, T, H), ``attention_mask`` (B, T). Returns (example index, token position), each (M,), in
    the reference's order: example by example, ascending gradient norm within an example.
    """
    # real tokens from the attention mask; the reference takes the first n = Σ mask positions, the same
    # tokens under right padding (what distat's collator produces)
    real = attention_mask.bool()
    norms = grad.float().norm(dim=-1).masked_fill(~real, float("inf"))  # padding ranks after every real token
    order = torch.sort(norms, dim=1, stable=True).indices  # (B, T) positions by ascending norm
    n = real.sum(dim=1).double()
    # float64 products and ceil: what the reference's Python math.ceil(n * c) gives
    lower = torch.ceil(n * cl).long().unsqueeze(1)
    upper = torch.ceil(n * ch).long().unsqueeze(1)
    ranks = torch.arange(grad.shape[1], device=grad.device).unsqueeze(0)
    chosen = (ranks >= lower) & (ranks < upper)  # (B, T) over ranks
    rows = torch.arange(grad.shape[0], device=grad.device).unsqueeze(1).expand_as(order)
    return rows[chosen], order[chosen]


def make_critic(hidden: int, generator: torch.Generator) -> nn.Sequential:
    """The InfoNCE critic g_ω([t; z]) = Softplus(Linear(300→1)(ReLU(Linear(2H→300)([t; z])))), initialised
    from ``generator`` with PyTorch's default Linear distribution U(−1/√fan_in, 1/√fan_in)."""
    critic = nn.Sequential(nn.Linear(2 * hidden, CRITIC_WIDTH), nn.ReLU(), nn.Linear(CRITIC_WIDTH, 1), nn.Softplus())
    with torch.no_grad():
        for layer in (critic[0], critic[2]):
            bound = 1.0 / math.sqrt(layer.in_features)
            layer.weight.uniform_(-bound, bound, generator=generator)
            layer.bias.uniform_(-bound, bound, generator=generator)
    return critic


def infonce_lower_bound(critic: nn.Sequential, local: torch.Tensor, glob: torch.Tensor) -> torch.Tensor:
    """InfoNCE lower bounds of chunks of pairs: ``local`` and ``glob`` are (C, m, H) (C chunks of m pairs);
    returns (C,): mean_i g(t_i, z_i) − (mean_i logsumexp_j g(t_j, z_i) − log m).

    The first layer is applied as W₁[t; z] = W_t t + W_z z, so the m×m negative scores need no (m, m, 2H)
    concatenation: the same function as the reference's tiled concatenation, at a fraction of the memory.
    """
    first, last = critic[0], critic[2]
    h = local.shape[-1]
    a = local @ first.weight[:, :h].T  # (C, m, 300): W_t t_j
    b = glob @ first.weight[:, h:].T + first.bias  # (C, m, 300): W_z z_i + b₁
    hidden = torch.relu(b.unsqueeze(2) + a.unsqueeze(1))  # (C, i, j, 300): pair (t_j, z_i)
    scores = F.softplus(last(hidden).squeeze(-1))  # (C, m, m)
    m = local.shape[1]
    positive = scores.diagonal(dim1=1, dim2=2).mean(dim=1)
    return positive - (scores.logsumexp(dim=2).mean(dim=1) - math.log(m))


def chunked_lower_bound(critic: nn.Sequential, local: torch.Tensor, glob: torch.Tensor, chunk: int) -> torch.Tensor:
    """The mean over chunks of ``chunk`` consecutive pairs (the last one possibly smaller) of the InfoNCE
    lower bound, as the reference batches its (M, H) pairs."""
    m, h = local.shape
    full = m // chunk * chunk
    bounds = []
    if full:
        shape = (-1, chunk, h)
        bounds.append(infonce_lower_bound(critic, local[:full].reshape(shape), glob[:full].reshape(shape)))
    if full < m:
        bounds.append(infonce_lower_bound(critic, local[full:].unsqueeze(0), glob[full:].unsqueeze(0)))
    return torch.cat(bounds).mean()


# --------------------------------------------------------------------------------------------------
# the method


class InfoBERT(ATMethod):
    name = "infobert"
    settings = InfoBERTSettings
    cfg: InfoBERTSettings

    def __init__(self, cfg: InfoBERTSettings) -> None:
        super().__init__(cfg)
        self.pert: Perturbation = from_config(cfg, init_mag=cfg.init_mag)
        self.critic: nn.Sequential | None = None

    def setup(self, module: nn.Module) -> None:
        """Create the InfoNCE critic on the model's device, from one draw of the global torch RNG (so the
        trial's seed fixes it, and every DDP worker, seeded alike, builds the same one)."""
        seed = int(torch.randint(0, 2**62, (1,)))
        critic = make_critic(int(module.config.hidden_size), torch.Generator().manual_seed(seed))
        self.critic = critic.to(next(module.parameters()).device)

    def parameters(self) -> list[nn.Parameter]:
        # CHOICE: the critic is trained by the model's AdamW, as in the original InfoBERT (its get_optimizers
        # adds mi_estimator.parameters()) and the paper (ω maximises the lower bound); TextDefender creates
        # the critic but never gives it to an optimiser, so there it stays at its random init.
        return [] if self.critic is None else list(self.critic.parameters())

    def _anchored_term(self, batch: Batch, out: Any, grad: torch.Tensor) -> torch.Tensor | None:
        """Î_nce over this step's anchored features, or None when no example has any."""
        assert self.critic is not None, "call setup(module) first"
        rows, cols = anchored_positions(grad, batch["attention_mask"], self.cfg.info_cl, self.cfg.info_ch)
        if rows.numel() == 0:
            # DEVIATION: a batch with no anchored token at all (every n ≤ 1 at c_l = 0.5, c_h = 0.9) gets no
            # anchored-feature term — the reference fails there (torch.stack of an empty list)
            return None
        local = out.hidden_states[0][rows, cols].float()
        glob = out.hidden_states[-1][:, 0].float()[rows]
        # DEVIATION: the pairs are shuffled by torch.randperm from the global torch RNG, not by sklearn's
        # shuffle with the fixed random_state the reference passes — so the trial's seed governs it and
        # successive steps do not reuse one fixed permutation.
        perm = torch.randperm(rows.numel()).to(rows.device)
        return chunked_lower_bound(self.critic, local[perm], glob[perm], batch["input_ids"].shape[0])

    def train_step(self, ctx: StepContext, batch: Batch) -> StepOutput:
        if self.critic is None:
            self.setup(ctx.module)
        cfg = self.cfg
        k = cfg.adv_steps
        real = batch["attention_mask"].bool()
        x0 = embeds(ctx.module, batch)
        mask = token_mask(batch, x0)
        # DEVIATION (inherited from distat's Perturbation, shared with distat's FreeLB): the linf step moves
        # along sign(g) and the l2 step divides by ‖g‖ + 1e-12, where the reference divides g by its
        # max(‖g‖_∞, 1e-8) / max(‖g‖₂, 1e-8); keeps InfoBERT with α = β = 0 identical to distat's FreeLB.
        delta = self.pert.init(x0.detach(), mask)
        total = x0.new_zeros((), dtype=torch.float32)
        zero = torch.zeros((), device=x0.device)
        task_sum, upper_sum, lower_sum = zero, zero, zero  # summed on the device: no host sync per step
        for t in range(k):
            if t > 0:  # the embedding lookup's graph was freed by the previous backward
                x0 = embeds(ctx.module, batch)
            delta = delta.detach().requires_grad_(True)
            with ctx.autocast():
                out = forward(ctx.model, ctx.module, batch, x0 + delta, output_hidden_states=True)
            task = F.cross_entropy(out.logits.float(), batch["labels"])
            objective = task / k
            if cfg.info_beta > 0:
                upper = club_upper_bound(out.hidden_states[0].float()[real])
                objective = objective + cfg.info_beta * upper / k
                upper_sum = upper_sum + upper.detach()
            loss = objective
            grad: torch.Tensor | None = None
            if cfg.info_alpha > 0:
                # the anchored features come from ∂(CE + β·Î_up)/∂δ (what the reference reads from δ.grad
                # before adding the lower bound); an input-only gradient first, then ONE backward of the
                # whole step loss, so DDP sees one backward per forward (the reference back-propagates
                # twice through a retained graph, which DDP does not allow)
                (grad,) = torch.autograd.grad(objective, delta, retain_graph=True)
                lower = self._anchored_term(batch, out, grad)
                if lower is not None:
                    loss = objective - cfg.info_alpha * lower / k
                    lower_sum = lower_sum + lower.detach()
            ctx.backward(loss, sync=t == k - 1)
            total = total + loss.detach()
            task_sum = task_sum + task.detach()
            if t < k - 1:
                step_grad = grad if grad is not None else delta.grad
                delta = self.pert.step(delta.detach(), step_grad, mask)
        logs = {"task_loss": task_sum.item() / k}
        if cfg.info_beta > 0:
            logs["info_upper_bound"] = upper_sum.item() / k
        if cfg.info_alpha > 0:
            logs["info_lower_bound"] = lower_sum.item() / k
        return StepOutput(loss=total, logs=logs, delta=delta.detach())

    def loss(self, ctx: StepContext, batch: Batch):
        raise NotImplementedError("InfoBERT back-propagates at every ascent step: use train_step")

    def state_dict(self) -> dict[str, Any]:
        if self.critic is None:
            return {}
        return {"critic": {k: v.detach().cpu().clone() for k, v in self.critic.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if self.critic is None:
            raise RuntimeError("InfoBERT.load_state_dict needs setup(module) first (the critic is sized by the model)")
        params = self.critic.state_dict()
        saved = state["critic"]
        if saved.keys() != params.keys():
            raise ValueError(f"InfoBERT critic state: expected keys {sorted(params)}, got {sorted(saved)}")
        with torch.no_grad():
            for key, value in params.items():  # in place: the optimiser holds these very tensors
                value.copy_(saved[key])
