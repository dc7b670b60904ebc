"""SMART (Jiang et al., ACL 2020): the method contract, its special case, ℓ_s, the ε-ball ascent and the momentum
anchor θ̃ ← (1 − β)θ + βθ̃."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from test_methods import make_batch

from distat.methods.base import ATMethod, StandardSettings, StepContext, embeds, forward_logits, token_mask
from distat.methods.smart import SMART, SMARTSettings, ascent_step, sym_kl


def build(model, **kw) -> SMART:
    method = SMART(SMARTSettings(**kw))
    method.setup(model)
    return method


def run(method: ATMethod, model, batch, seed: int = 0, step: int = 0, total: int = 0):
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    ctx = StepContext.plain(model)
    ctx.step, ctx.total_steps = step, total
    return method.train_step(ctx, batch)


@torch.no_grad()
def sgd(model, lr: float = 0.5) -> None:
    """A stand-in for the optimiser step: moves every parameter that has a gradient."""
    for p in model.parameters():
        if p.grad is not None:
            p.sub_(lr * p.grad)


def _flatten(state, prefix=""):
    out = {}
    for k, v in state.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


# ------------------------------------------------------------------------------------------------
# the contract


def test_settings_defaults_are_the_papers():
    cfg = SMARTSettings()
    assert cfg.name == "smart"
    assert (cfg.smart_lambda, cfg.smart_mu) == (1.0, 1.0)
    assert (cfg.smart_sigma, cfg.smart_eps, cfg.smart_eta, cfg.smart_steps) == (1e-5, 1e-5, 1e-3, 1)
    assert (cfg.smart_beta_early, cfg.smart_beta, cfg.smart_beta_switch) == (0.99, 0.999, 0.1)
    with pytest.raises(ValueError):
        SMARTSettings(smart_steps=0)
    with pytest.raises(ValueError):
        SMARTSettings(adv_lr=0.1)  # another method's knob is an unknown key here


def test_finite_loss_and_gradients_reach_embeddings_and_head(tiny_model, tokenizer):
    method = build(tiny_model)
    out = run(method, tiny_model, make_batch(tokenizer))
    assert torch.isfinite(out.loss) and out.loss.item() > 0
    assert set(out.logs) >= {"smart_adv_reg", "smart_breg"}
    assert all(v >= 0 for v in (out.logs["smart_adv_reg"], out.logs["smart_breg"]))
    emb = tiny_model.get_input_embeddings().weight.grad
    head = tiny_model.classifier.weight.grad
    assert emb is not None and head is not None and emb.abs().sum() > 0 and head.abs().sum() > 0
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in tiny_model.parameters())
    assert method.anchor is not None
    assert all(not p.requires_grad and p.grad is None for p in method.anchor.parameters())


def test_same_seed_same_loss_other_seed_other_loss(tiny_model, tokenizer):
    batch = make_batch(tokenizer)
    twin = copy.deepcopy(tiny_model)
    a = run(build(tiny_model), tiny_model, batch, seed=7)
    b = run(build(twin), twin, batch, seed=7)
    assert a.loss.item() == b.loss.item() and torch.equal(a.delta, b.delta)
    third = copy.deepcopy(twin)
    c = run(build(third), third, batch, seed=8)
    assert c.loss.item() != a.loss.item()  # the random start ν and dropout
    assert not torch.equal(c.delta, a.delta)


def test_sentence_pairs(tiny_model, tokenizer):
    batch = make_batch(tokenizer, pair=True)
    assert (batch["token_type_ids"] == 1).any()
    out = run(build(tiny_model), tiny_model, batch)
    assert torch.isfinite(out.loss)
    assert tiny_model.get_input_embeddings().weight.grad.abs().sum() > 0


def test_state_survives_checkpoint_restore(tiny_model, tokenizer):
    batch = make_batch(tokenizer)
    method = build(tiny_model)
    run(method, tiny_model, batch, seed=1)
    sgd(tiny_model)
    run(method, tiny_model, batch, seed=2)  # an EMA update: the anchor now differs from the model
    buf = io.BytesIO()
    torch.save(method.state_dict(), buf)
    buf.seek(0)
    restored = build(tiny_model)  # its anchor starts as a copy of the current model
    anchor_param = next(restored.anchor.parameters())
    restored.load_state_dict(torch.load(buf, weights_only=True))
    assert next(restored.anchor.parameters()) is anchor_param  # copied in place
    a, b = _flatten(method.state_dict()), _flatten(restored.state_dict())
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert bool(a["initialised"]) and int(a["updates"]) == 1
    moved = [k for k in a if k.startswith("anchor.")
             and not torch.equal(a[k], dict(tiny_model.named_parameters())[k.removeprefix("anchor.")].detach())]
    assert moved  # the saved anchor is θ̃, not a copy of θ


def test_resumed_run_continues_exactly(tiny_model, tokenizer):
    batch = make_batch(tokenizer)
    twin = copy.deepcopy(tiny_model)
    # uninterrupted: three steps
    method = build(tiny_model)
    for seed in (1, 2):
        run(method, tiny_model, batch, seed=seed, step=seed - 1, total=10)
        sgd(tiny_model)
    last = run(method, tiny_model, batch, seed=3, step=2, total=10)
    # interrupted after two steps: checkpoint, fresh method, restore, third step
    first = build(twin)
    for seed in (1, 2):
        run(first, twin, batch, seed=seed, step=seed - 1, total=10)
        sgd(twin)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = build(twin)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    again = run(resumed, twin, batch, seed=3, step=2, total=10)
    assert again.loss.item() == last.loss.item()
    for (name, p), q in zip(method.anchor.named_parameters(), resumed.anchor.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_empty_state_resets_and_load_needs_setup(tiny_model):
    method = SMART(SMARTSettings())
    assert method.state_dict() == {}
    with pytest.raises(RuntimeError, match="setup"):
        method.load_state_dict({"anchor": {}, "initialised": torch.tensor(True), "updates": torch.tensor(0)})
    method.setup(tiny_model)
    method.initialised = True
    method.load_state_dict({})
    assert not method.initialised and method.updates == 0


# ------------------------------------------------------------------------------------------------
# the paper's special case: λ_s = μ = 0 is standard fine-tuning


def test_no_regularisers_is_standard_fine_tuning(tiny_model, tokenizer):
    batch = make_batch(tokenizer)
    tiny_model.eval()  # dropout off: the clean half of the doubled forward is then the standard forward
    twin = copy.deepcopy(tiny_model)
    smart = run(build(tiny_model, smart_lambda=0.0, smart_mu=0.0), tiny_model, batch)
    standard = run(ATMethod(StandardSettings()), twin, batch)
    torch.testing.assert_close(smart.loss, standard.loss)
    assert smart.logs["smart_adv_reg"] > 0  # the terms exist; only their weights are zero
    grads = dict(twin.named_parameters())
    for name, p in tiny_model.named_parameters():
        q = grads[name]
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    # and the weights matter: with λ_s = μ = 1 the loss is larger by exactly the logged terms
    full = run(build(copy.deepcopy(twin), smart_eps=1e-2, smart_eta=1e-1), twin, batch)
    assert full.loss.item() == pytest.approx(
        standard.loss.item() + full.logs["smart_adv_reg"] + full.logs["smart_breg"], rel=1e-5)
    assert full.logs["smart_adv_reg"] > 0


def test_loss_is_the_objective_with_gradients_through_both_sides(tiny_model, tokenizer):
    """CE(f(x)) + λ_s·ℓ_s(f(x̃), f(x)) + μ·ℓ_s(f(x), f(x; θ̃)), recomputed by hand at the method's x̃ (dropout off),
    gives the same loss and the same parameter gradients: ℓ_s is differentiated through f(x̃) and f(x) alike."""
    batch = make_batch(tokenizer)
    tiny_model.eval()
    twin = copy.deepcopy(tiny_model)
    with torch.no_grad():
        twin.classifier.weight[0].add_(0.5)  # θ̃ ≠ θ, so the Bregman term has a gradient too
    method = build(twin, smart_lambda=3.0, smart_mu=2.0, smart_eps=1e-2, smart_eta=1e-1)
    ctx = StepContext.plain(twin)
    method.update_anchor(ctx)  # θ̃ = the shifted weights
    with torch.no_grad():
        twin.load_state_dict(tiny_model.state_dict())
    twin.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    out = method.train_step(ctx, batch)  # the anchor moves by (1 − β)(θ − θ̃) first
    x = embeds(tiny_model, batch)
    both = forward_logits(tiny_model, tiny_model, {k: torch.cat([v, v]) for k, v in batch.items()},
                          torch.cat([x, x + out.delta]))
    clean, adv = both.chunk(2)
    with torch.no_grad():
        anchor = forward_logits(method.anchor, method.anchor, batch, embeds(method.anchor, batch))
    loss = (torch.nn.functional.cross_entropy(clean, batch["labels"]) + 3.0 * sym_kl(adv, clean)
            + 2.0 * sym_kl(clean, anchor))
    loss.backward()
    torch.testing.assert_close(out.loss, loss.detach())
    assert out.logs["smart_breg"] > 1e-4
    grads = dict(twin.named_parameters())
    for name, p in tiny_model.named_parameters():
        torch.testing.assert_close(grads[name].grad, p.grad, rtol=1e-4, atol=1e-7, msg=name)


# ------------------------------------------------------------------------------------------------
# ℓ_s


def test_sym_kl_is_symmetric_zero_on_equal_and_matches_formula():
    p = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.3, -0.2]])
    q = torch.tensor([[0.1, 0.4, -1.0], [1.0, -2.0, 0.0]])
    torch.testing.assert_close(sym_kl(p, q), sym_kl(q, p))
    assert sym_kl(p, p).item() == pytest.approx(0.0, abs=1e-7)
    P, Q = p.softmax(-1), q.softmax(-1)
    by_hand = ((P * (P / Q).log()).sum(-1) + (Q * (Q / P).log()).sum(-1)).mean()
    torch.testing.assert_close(sym_kl(p, q), by_hand)
    assert sym_kl(p, q).item() > 0


def test_sym_kl_gradient_reaches_both_arguments():
    p = torch.tensor([[2.0, -1.0, 0.5]], requires_grad=True)
    q = torch.tensor([[0.1, 0.4, -1.0]], requires_grad=True)
    sym_kl(p, q).backward()
    assert p.grad.abs().sum() > 0 and q.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------
# the inner maximisation


def test_ascent_step_normalises_per_example_and_projects():
    # two examples of 2 tokens × 2 units; the second token of example 0 is padding
    delta = torch.tensor([[[0.0, 1e-3], [5e-3, 5e-3]], [[-4e-3, 0.0], [0.0, 0.0]]])
    grad = torch.tensor([[[2.0, -1.0], [9.0, 9.0]], [[0.1, 0.05], [-0.2, 0.0]]])
    mask = torch.tensor([[[1.0], [0.0]], [[1.0], [1.0]]])
    out = ascent_step(delta, grad, mask, eta=0.01, eps=0.006)
    # example 0: ‖g‖_∞ = 2 over its real token (padding ignored); example 1: ‖g‖_∞ = 0.2
    expected = torch.tensor([[[0.006, 1e-3 - 0.005], [0.0, 0.0]], [[-4e-3 + 0.005, 0.0025], [-0.006, 0.0]]])
    torch.testing.assert_close(out, expected)
    assert torch.equal(ascent_step(delta, torch.zeros_like(grad), mask, 0.01, 1.0), delta * mask)  # g = 0: no move


@pytest.mark.parametrize(("eps", "eta"), [(1e-5, 1e-3), (1e-2, 1e-1)])
def test_perturbation_within_linf_ball_and_zero_on_padding(eps, eta, tiny_model, tokenizer):
    batch = make_batch(tokenizer)
    out = run(build(tiny_model, smart_eps=eps, smart_eta=eta, smart_steps=2), tiny_model, batch)
    delta = out.delta
    assert delta is not None and delta.abs().sum() > 0
    assert delta.abs().max() <= eps * (1 + 1e-6)
    pad = batch["attention_mask"] == 0
    assert pad.any() and delta[pad].abs().max() == 0
    # η ≫ ε: the entry of largest gradient moves by η, overshoots the ball and is projected onto its face
    torch.testing.assert_close(delta.abs().amax(dim=(1, 2)), torch.full((4,), eps))


def test_ascent_increases_sym_kl_over_random_corners(tiny_model, tokenizer):
    """With dropout off the ascent point is worse for ℓ_s(f(x), f(x + δ)) than random corners of the same ball."""
    batch = make_batch(tokenizer)
    tiny_model.eval()
    eps = 0.05
    method = build(tiny_model, smart_eps=eps, smart_eta=0.05, smart_sigma=1e-3, smart_steps=5)
    torch.manual_seed(0)
    x = embeds(tiny_model, batch).detach()
    delta = method.perturb(StepContext.plain(tiny_model), batch, x)
    mask = token_mask(batch, x)
    with torch.no_grad():
        clean = forward_logits(tiny_model, tiny_model, batch, x)

        def score(d: torch.Tensor) -> float:
            return sym_kl(clean, forward_logits(tiny_model, tiny_model, batch, x + d)).item()

        found = score(delta)
        randoms = [score(eps * torch.randn_like(x).sign() * mask) for _ in range(5)]
    assert found > max(randoms)


# ------------------------------------------------------------------------------------------------
# the momentum anchor


def test_anchor_starts_at_the_model_and_follows_the_momentum_rule(tiny_model, tokenizer):
    batch = make_batch(tokenizer)
    method = build(tiny_model)
    name = "classifier.weight"
    with torch.no_grad():
        tiny_model.classifier.weight.add_(0.3)  # the weights at the first step differ from those at setup
    theta0 = tiny_model.classifier.weight.detach().clone()
    run(method, tiny_model, batch, step=0, total=100)
    anchor = dict(method.anchor.named_parameters())
    assert torch.equal(anchor[name], theta0)  # θ̃_1 = θ_0
    assert method.updates == 0
    sgd(tiny_model)
    theta1 = tiny_model.classifier.weight.detach().clone()
    assert not torch.equal(theta1, theta0)
    run(method, tiny_model, batch, step=1, total=100)  # progress 0.01: β = β_early = 0.99
    expected = (1 - 0.99) * theta1 + 0.99 * theta0
    torch.testing.assert_close(anchor[name], expected, rtol=0, atol=1e-7)
    assert method.updates == 1
    # after the switch: β = 0.999
    sgd(tiny_model)
    theta2 = tiny_model.classifier.weight.detach().clone()
    before = anchor[name].detach().clone()
    run(method, tiny_model, batch, step=50, total=100)
    torch.testing.assert_close(anchor[name], (1 - 0.999) * theta2 + 0.999 * before, rtol=0, atol=1e-7)
    # buffers follow the model, integer ones included
    for (n, a), b in zip(method.anchor.named_buffers(), tiny_model.buffers(), strict=True):
        assert torch.equal(a, b), n


def test_beta_schedule(tiny_model):
    method = build(tiny_model, smart_beta_early=0.9, smart_beta=0.5, smart_beta_switch=0.2)
    ctx = StepContext.plain(tiny_model)
    for step, total, beta in [(0, 100, 0.9), (20, 100, 0.9), (21, 100, 0.5), (99, 100, 0.5), (7, 0, 0.9)]:
        ctx.step, ctx.total_steps = step, total
        assert method.beta(ctx) == beta, (step, total)


def test_bregman_term_measures_distance_to_the_anchor(tiny_model, tokenizer):
    batch = make_batch(tokenizer)
    tiny_model.eval()
    method = build(tiny_model, smart_beta_early=1.0, smart_beta=1.0)  # β = 1 freezes θ̃ at θ_0
    first = run(method, tiny_model, batch, step=0, total=10)
    assert first.logs["smart_breg"] == pytest.approx(0.0, abs=1e-7)  # θ = θ̃ and both without dropout
    sgd(tiny_model, lr=5.0)
    second = run(method, tiny_model, batch, step=1, total=10)
    assert second.logs["smart_breg"] > 1e-4
    with torch.no_grad():
        now = forward_logits(tiny_model, tiny_model, batch, embeds(tiny_model, batch))
        then = forward_logits(method.anchor, method.anchor, batch, embeds(method.anchor, batch))
    assert second.logs["smart_breg"] == pytest.approx(sym_kl(now, then).item(), rel=1e-4)
    assert not method.anchor.training  # the anchor's forward has dropout off
