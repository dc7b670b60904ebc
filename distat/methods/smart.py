"""SMART (Jiang et al., ACL 2020): smoothness-inducing adversarial regularisation + momentum Bregman proximal point.

Objective of step t (the paper's §3.1 objective plus the §3.2 proximal term around the momentum anchor θ̃_t):

    min_θ  L(θ) + λ_s · R_s(θ) + μ · D_Breg(θ, θ̃_t)
    L(θ)          = (1/n) Σ_i CE(f(x_i; θ), y_i)
    R_s(θ)        = (1/n) Σ_i max_{‖x̃_i − x_i‖_∞ ≤ ε} ℓ_s(f(x̃_i; θ), f(x_i; θ))
    D_Breg(θ, θ̃) = (1/n) Σ_i ℓ_s(f(x_i; θ), f(x_i; θ̃))
    ℓ_s(P, Q)     = KL(P ‖ Q) + KL(Q ‖ P)          (symmetric KL of the predicted class distributions)

x_i is the word-embedding input (the output of ``get_input_embeddings()``), masked to real tokens.

Inner maximisation (Algorithm 1, lines 6–10): x̃ ← x + ν with ν ~ N(0, σ²I) on real tokens, then T̄_x times

    g̃ ← ∇_x̃ ℓ_s(f(x; θ), f(x̃; θ)) / ‖∇_x̃ ℓ_s(...)‖_∞        (f(x; θ) held fixed; ‖·‖_∞ per example)
    x̃ ← Π_{‖x̃ − x‖_∞ ≤ ε}(x̃ + η · g̃)                      (an elementwise clamp of x̃ − x to [−ε, ε])

Momentum anchor (Algorithm 1, lines 1 and 14): θ̃_1 = θ_0, and after each update θ̃_{t+1} = (1 − β)θ_t + β θ̃_t,
β = β_early while t ≤ 0.1·T and β afterwards. With β = 0 this is the paper's vanilla Bregman proximal point
(the anchor is the previous iterate θ_t).

Defaults (paper §5, "Implementation details"): ε = 1e-5, σ = 1e-5, η = 1e-3, T̄_x = 1, S = 1 (one Adam step per
proximal subproblem, i.e. one optimiser step per batch, which is the loop's own), μ = 1, β = 0.99 for the first
10% of the updates and 0.999 after, λ_s searched in {1, 3, 5}: distat defaults to 1 (also mt-dnn's ``adv_alpha``).

Where mt-dnn's reference (``mt_dnn/perturbation.py``, ``mt_dnn/loss.py``) differs from the paper, distat follows
the paper; the differences are noted beside the code. mt-dnn has no Bregman proximal point term at all, so the
anchor follows the paper alone.

One training forward: the clean and adversarial inputs go through ``ctx.model`` as one doubled batch (DDP sees
one forward per backward); the ascent forwards use ``ctx.module`` and input gradients only; the anchor's forward
runs under ``torch.no_grad()``.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from distat.methods.base import (
    ATMethod,
    Batch,
    Settings,
    StepContext,
    StepOutput,
    doubled,
    embeds,
    forward_logits,
    kl_div,
    token_mask,
)

_TINY = 1e-30  # guards g / ‖g‖_∞ against an all-zero gradient (the direction is then zero)


class SMARTSettings(Settings):
    """SMART's knobs. It has none of the k-step methods' α / k / init_mag: its step (η), ball (ε), steps (T̄_x) and
    random start (σ) are its own, with the paper's defaults."""

    name: Literal["smart"] = "smart"
    # λ_s: weight of the adversarial smoothness regulariser R_s. Paper §5 searches {1, 3, 5}; mt-dnn adv_alpha = 1.
    smart_lambda: float = Field(default=1.0, ge=0)
    # μ: weight of the Bregman proximal term D_Breg(θ, θ̃). Paper §5: μ = 1.
    smart_mu: float = Field(default=1.0, ge=0)
    # σ: standard deviation of the random start ν ~ N(0, σ²I). Paper §5: σ = 1e-5 (mt-dnn adv_noise_var = 1e-5).
    smart_sigma: float = Field(default=1e-5, ge=0)
    # ε: radius of the ℓ∞ ball around x. Paper §5: ε = 1e-5.
    smart_eps: float = Field(default=1e-5, gt=0)
    # η: step size of the ascent on x̃. Paper §5: η = 1e-3 (mt-dnn's adv_step_size defaults to 1e-5; its
    # adv_epsilon = 1e-6 is a normalisation constant, not the ball's radius, since it does not project).
    smart_eta: float = Field(default=1e-3, gt=0)
    # T̄_x: ascent steps per batch. Paper §5: T̄_x = 1 (mt-dnn adv_k = 1).
    smart_steps: int = Field(default=1, ge=1, le=100)
    # β while t ≤ smart_beta_switch · T. Paper §5: 0.99 for the first 10% of the updates.
    smart_beta_early: float = Field(default=0.99, ge=0, le=1)
    # β afterwards. Paper §5: 0.999.
    smart_beta: float = Field(default=0.999, ge=0, le=1)
    # the fraction of training after which β replaces β_early. Paper §5: 10%.
    smart_beta_switch: float = Field(default=0.1, ge=0, le=1)


def sym_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """ℓ_s(P, Q) = KL(P ‖ Q) + KL(Q ‖ P) of the softmax distributions, averaged over the batch (float32).

    The gradient flows through both arguments (the objective's gradient). mt-dnn's ``SymKlCriterion`` instead
    detaches the first distribution of each KL half; distat follows the paper's objective.
    """
    return kl_div(p_logits, q_logits) + kl_div(q_logits, p_logits)


def ascent_step(delta: torch.Tensor, grad: torch.Tensor, mask: torch.Tensor, eta: float, eps: float) -> torch.Tensor:
    """One step of Algorithm 1 on δ = x̃ − x: Π_{‖δ‖_∞ ≤ ε}(δ + η · g / ‖g‖_∞), masked to real tokens.

    ‖g‖_∞ is taken per example over all its tokens and hidden units (the paper's x̃_i is a whole input). The
    projection onto the ℓ∞ ball is an elementwise clamp of δ to [−ε, ε]. mt-dnn's default instead normalises g
    per token and then divides (ν + η·g) by its own per-token max (plus a small constant) rather than projecting;
    distat follows the paper's Algorithm 1.
    """
    g = grad.float() * mask
    g_inf = g.abs().amax(dim=tuple(range(1, g.dim())), keepdim=True).clamp_min(_TINY)
    return (delta.float() + eta * g / g_inf).clamp(-eps, eps) * mask



class SMART(ATMethod):
    """SMART: λ_s·ℓ_s(f(x̃), f(x)) at an ℓ∞ ascent point plus μ·ℓ_s(f(x; θ), f(x; θ̃)) to a momentum anchor."""

    name = "smart"
    settings = SMARTSettings
    cfg: SMARTSettings

    def __init__(self, cfg: SMARTSettings) -> None:
        super().__init__(cfg)
        self.anchor: nn.Module | None = None  # θ̃: a frozen copy of the model, made in setup()
        self.initialised = False  # whether θ̃ has been set to the model's weights (at the first step)
        self.updates = 0  # momentum updates θ̃ ← (1 − β)θ + βθ̃ applied so far

    # ------------------------------------------------------------------------------------------------
    # the momentum anchor θ̃

    def setup(self, module: nn.Module) -> None:
        """Make the anchor: a deep copy of the bare model on its device, frozen and in eval mode."""
        anchor = copy.deepcopy(module)
        for p in anchor.parameters():
            p.requires_grad_(False)
            p.grad = None  # a copy made after a step would otherwise carry the model's gradients
        # The anchor's forward runs with dropout off: θ̃ is a fixed reference point of the proximal term, and
        # f(x; θ̃) is its prediction, not a sample of it. The paper does not say, and mt-dnn has no BPP code.
        anchor.eval()
        self.anchor = anchor

    def _pairs(self, module: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        assert self.anchor is not None
        mine = dict(self.anchor.named_parameters())
        return [(mine[name], p) for name, p in module.named_parameters() if p.is_floating_point()]

    def beta(self, ctx: StepContext) -> float:
        """β of the update made at this step: β_early while t ≤ switch·T (paper §5: "t ≤ 0.1T"), β after.

        The update made at the start of the step with ``ctx.step == t`` is the one Algorithm 1 makes after its
        t-th parameter update, so the paper's t is ``ctx.step`` and t ≤ 0.1T is ``ctx.progress <= switch``.
        """
        return self.cfg.smart_beta_early if ctx.progress <= self.cfg.smart_beta_switch else self.cfg.smart_beta

    @torch.no_grad()
    def update_anchor(self, ctx: StepContext) -> None:
        """θ̃ ← θ on the first step, θ̃ ← (1 − β)θ + βθ̃ on every later one; buffers are copied.

        Algorithm 1 updates θ̃ right after each optimiser step; a method has no after-step hook, so the update
        is made at the start of the next step instead, from the model's weights at that moment, which are
        exactly the θ_{t+1} the paper uses. The anchor a step sees is therefore the paper's. A checkpoint
        holds θ̃ before this update and the model after the optimiser step, so a resumed run makes the same one.
        """
        if self.anchor is None:
            self.setup(ctx.module)
        pairs = self._pairs(ctx.module)
        if not self.initialised:
            for a, p in pairs:
                a.copy_(p)
            self.initialised = True
        else:
            b = self.beta(ctx)
            for a, p in pairs:
                a.mul_(b).add_(p.detach().to(a.dtype), alpha=1.0 - b)
            self.updates += 1
        assert self.anchor is not None
        mine = dict(self.anchor.named_buffers())
        for name, buf in ctx.module.named_buffers():
            if name in mine:
                mine[name].copy_(buf)

    # ------------------------------------------------------------------------------------------------
    # the inner maximisation

    def perturb(self, ctx: StepContext, batch: Batch, x: torch.Tensor) -> torch.Tensor:
        """δ = x̃ − x after T̄_x projected ℓ∞ ascent steps on ℓ_s(f(x), f(x̃)) (``x`` detached).

        Forwards use ``ctx.module`` in its current mode (dropout on while training), as mt-dnn's ascent does;
        only input gradients are computed. x is the word embeddings, as the paper says; mt-dnn perturbs the
        output of BERT's whole embedding block (word + position + segment, after its LayerNorm).
        """
        mask = token_mask(batch, x).float()
        eps, eta = self.cfg.smart_eps, self.cfg.smart_eta
        with torch.no_grad(), ctx.autocast():
            clean = forward_logits(ctx.module, ctx.module, batch, x)  # f(x; θ), held fixed in the ascent
        # ν ~ N(0, σ²I) on real tokens only (mt-dnn draws it on padding too, where attention ignores it)
        delta = self.cfg.smart_sigma * torch.randn(x.shape, device=x.device, dtype=torch.float32) * mask
        for _ in range(self.cfg.smart_steps):
            d = delta.detach().requires_grad_(True)
            with ctx.autocast():
                adv = forward_logits(ctx.module, ctx.module, batch, x + d)
            # Algorithm 1 ascends ℓ_s itself; mt-dnn ascends a one-sided KL of f(x̃) from f(x) (its stable_kl)
            (g,) = torch.autograd.grad(sym_kl(clean, adv), d)
            delta = ascent_step(d.detach(), g, mask, eta, eps)
        return delta.detach()

    # ------------------------------------------------------------------------------------------------
    # the step

    def loss(self, ctx: StepContext, batch: Batch):
        x = embeds(ctx.module, batch)
        delta = self.perturb(ctx, batch, x.detach())
        with ctx.autocast():
            both = forward_logits(ctx.model, ctx.module, doubled(batch), torch.cat([x, x + delta]))
        clean_logits, adv_logits = both.chunk(2)
        assert self.anchor is not None
        with torch.no_grad(), ctx.autocast():
            anchor_logits = forward_logits(self.anchor, self.anchor, batch, embeds(self.anchor, batch))  # f(x; θ̃)
        natural = F.cross_entropy(clean_logits.float(), batch["labels"])
        adv_reg = sym_kl(adv_logits, clean_logits)  # ℓ_s(f(x̃; θ), f(x; θ)), gradient through both sides
        breg = sym_kl(clean_logits, anchor_logits.float())  # ℓ_s(f(x; θ), f(x; θ̃)), θ̃ fixed
        loss = natural + self.cfg.smart_lambda * adv_reg + self.cfg.smart_mu * breg
        logs = {"natural_loss": natural.item(), "smart_adv_reg": adv_reg.item(), "smart_breg": breg.item()}
        return loss, logs, delta

    def train_step(self, ctx: StepContext, batch: Batch) -> StepOutput:
        self.update_anchor(ctx)  # θ̃_t from θ_t: the update Algorithm 1 makes after the previous step
        return super().train_step(ctx, batch)

    # ------------------------------------------------------------------------------------------------
    # checkpointing

    def state_dict(self) -> dict[str, Any]:
        if self.anchor is None:
            return {}
        anchor = {name: p.detach().cpu().clone() for name, p in self.anchor.named_parameters()}
        return {"anchor": anchor, "initialised": torch.tensor(self.initialised),
                "updates": torch.tensor(self.updates, dtype=torch.int64)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            self.initialised, self.updates = False, 0
            return
        if self.anchor is None:
            raise RuntimeError("SMART.load_state_dict: call setup(module) first (the anchor copies the model)")
        mine = dict(self.anchor.named_parameters())
        saved = state["anchor"]
        if set(saved) != set(mine):
            missing, extra = sorted(set(mine) - set(saved))[:3], sorted(set(saved) - set(mine))[:3]
            raise ValueError(f"SMART anchor does not match the model (missing {missing}, unexpected {extra})")
        with torch.no_grad():
            for name, p in mine.items():
                p.copy_(saved[name])
        self.initialised = bool(state["initialised"])
        self.updates = int(state["updates"])
