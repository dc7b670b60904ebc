"""InfoBERT: the method contract, its reductions to FreeLB and to standard training, and its estimators."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from test_methods import make_batch

from distat.methods.base import ATMethod, StandardSettings, StepContext
from distat.methods.freelb import FreeLB, FreeLBSettings
from distat.methods.infobert import (
    InfoBERT,
    InfoBERTSettings,
    anchored_positions,
    chunked_lower_bound,
    club_upper_bound,
    infonce_lower_bound,
    make_critic,
)
from distat.methods.perturb import Perturbation

# the regularisers' weights are raised above the defaults (5e-3) so that their effects are far above rounding
KNOBS = {"adv_steps": 3, "adv_lr": 0.05, "init_mag": 0.05, "info_alpha": 0.5, "info_beta": 0.5}


def build(**kw) -> InfoBERT:
    return InfoBERT(InfoBERTSettings(**{**KNOBS, **kw}))


def step(model, batch, seed: int = 0, ctx: StepContext | None = None, **kw):
    method = build(**kw)
    torch.manual_seed(1234)  # the critic's init: the same for every call
    method.setup(model)
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    return method, method.train_step(ctx or StepContext.plain(model), batch)


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# ------------------------------------------------------------------------------------------------
# settings


def test_defaults_are_textdefenders():
    s = InfoBERTSettings()
    assert s.name == "infobert"
    assert (s.adv_steps, s.adv_lr, s.init_mag, s.max_norm, s.norm_type) == (3, 0.04, 0.08, 0.0, "l2")
    assert (s.info_alpha, s.info_beta, s.info_cl, s.info_ch) == (5e-3, 5e-3, 0.5, 0.9)
    assert "taylor_diagnostic" not in InfoBERTSettings.model_fields  # no knob that InfoBERT would ignore


def test_bad_settings():
    with pytest.raises(ValueError, match="info_cl"):
        InfoBERTSettings(info_cl=0.9, info_ch=0.5)
    with pytest.raises(ValueError, match="info_alpha"):
        InfoBERTSettings(info_alpha=-1.0)
    with pytest.raises(ValueError, match="info_ch"):
        InfoBERTSettings(info_ch=1.5)


# ------------------------------------------------------------------------------------------------
# contract


def test_finite_loss_and_gradients_reach_parameters(tiny_model, tokenizer):
    method, out = step(tiny_model, make_batch(tokenizer))
    assert torch.isfinite(out.loss) and out.loss.item() > 0
    emb = tiny_model.get_input_embeddings().weight.grad
    head = tiny_model.classifier.weight.grad
    assert emb is not None and head is not None
    assert emb.abs().sum() > 0 and head.abs().sum() > 0
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in tiny_model.parameters())
    assert set(out.logs) == {"task_loss", "info_upper_bound", "info_lower_bound"}
    assert all(math.isfinite(v) for v in out.logs.values())


def test_critic_receives_gradient_only_when_alpha_positive(tiny_model, tokenizer):
    batch = make_batch(tokenizer)
    method, _ = step(tiny_model, batch)
    params = method.parameters()
    assert len(params) == 4  # W₁, b₁, W₂, b₂
    assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in params)
    method0, out0 = step(tiny_model, batch, info_alpha=0.0)
    assert all(p.grad is None for p in method0.parameters())
    assert "info_lower_bound" not in out0.logs


def test_loss_is_task_plus_regularisers(tiny_model, tokenizer):
    """The step's objective Σ_t ℓ_t = mean_t CE + β·mean_t Î_up − α·mean_t Î_nce, as logged."""
    _, out = step(tiny_model, make_batch(tokenizer), info_alpha=0.3, info_beta=0.2)
    logs = out.logs
    expected = logs["task_loss"] + 0.2 * logs["info_upper_bound"] - 0.3 * logs["info_lower_bound"]
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert logs["info_upper_bound"] > 0


def test_same_seed_same_loss(tiny_model, tokenizer):
    batch = make_batch(tokenizer)
    model_b = copy.deepcopy(tiny_model)
    _, a = step(tiny_model, batch, seed=7)
    _, b = step(model_b, batch, seed=7)
    assert a.loss.item() == b.loss.item()
    assert torch.equal(a.delta, b.delta)
    _, c = step(copy.deepcopy(model_b), batch, seed=8)
    assert c.loss.item() != a.loss.item()  # random start, dropout, CLUB index, pair shuffle


def test_sentence_pairs(tiny_model, tokenizer):
    batch = make_batch(tokenizer, pair=True)
    assert (batch["token_type_ids"] == 1).any()
    method, out = step(tiny_model, batch)
    assert torch.isfinite(out.loss)
    assert tiny_model.get_input_embeddings().weight.grad.abs().sum() > 0
    assert tiny_model.bert.embeddings.token_type_embeddings.weight.grad[1].abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.parameters())


def test_one_forward_per_backward_last_one_syncs(tiny_model, tokenizer):
    """DDP's rule: K backward calls, one per forward of ctx.model, only the last with sync."""
    forwards, syncs = [], []
    tiny_model.register_forward_hook(lambda *_: forwards.append(1))

    def backward(loss: torch.Tensor, sync: bool = True) -> None:
        syncs.append(sync)
        loss.backward()

    ctx = StepContext(model=tiny_model, module=tiny_model, backward=backward)
    step(tiny_model, make_batch(tokenizer), ctx=ctx, adv_steps=4)
    assert syncs == [False, False, False, True]
    assert len(forwards) == 4


@pytest.mark.parametrize("norm_type", ["l2", "linf"])
def test_max_norm_bounds_delta(norm_type, tiny_model, tokenizer):
    batch = make_batch(tokenizer)
    bound = 0.02
    _, out = step(tiny_model, batch, norm_type=norm_type, max_norm=bound, adv_lr=0.5, init_mag=0.01)
    assert torch.isfinite(out.loss)
    delta = out.delta
    assert delta is not None and delta.abs().sum() > 0
    norms = Perturbation(norm_type=norm_type).norm(delta)
    assert (norms <= bound * (1 + 1e-5)).all()
    assert (norms >= bound * (1 - 1e-4)).any()  # the ball was reached: the projection did the bounding
    pad = batch["attention_mask"] == 0
    assert pad.any() and delta[pad].abs().max() == 0


def test_state_survives_checkpoint_restore(tiny_model, tokenizer):
    method, _ = step(tiny_model, make_batch(tokenizer))
    with torch.no_grad():  # an optimiser step: the critic is no longer at its init
        for p in method.parameters():
            p.add_(0.01 * p.grad.sign())
    buf = io.BytesIO()
    torch.save(method.state_dict(), buf)
    buf.seek(0)
    restored = build()
    torch.manual_seed(99)
    restored.setup(tiny_model)
    params = restored.parameters()
    a, b = method.state_dict()["critic"], restored.state_dict()["critic"]
    assert a.keys() == b.keys() and not torch.equal(a["0.weight"], b["0.weight"])
    restored.load_state_dict(torch.load(buf, weights_only=True))
    b = restored.state_dict()["critic"]
    for key in a:
        assert a[key].device.type == "cpu"
        assert torch.equal(a[key], b[key]), key
    assert all(p is q for p, q in zip(params, restored.parameters(), strict=True))  # copied in place
    with pytest.raises(ValueError, match="keys"):
        restored.load_state_dict({"critic": {"0.weight": a["0.weight"]}})


def test_critic_init_follows_the_torch_seed(tiny_model):
    def critic_after(seed: int) -> torch.Tensor:
        method = build()
        assert method.parameters() == []
        torch.manual_seed(seed)
        method.setup(tiny_model)
        params = method.parameters()
        assert params[0].shape == (300, 2 * tiny_model.config.hidden_size)
        assert params[0].device == tiny_model.classifier.weight.device
        return params[0].detach().clone()

    assert torch.equal(critic_after(3), critic_after(3))
    assert not torch.equal(critic_after(3), critic_after(4))


# ------------------------------------------------------------------------------------------------
# special cases


@pytest.mark.parametrize("kw", [{}, {"norm_type": "linf"}, {"max_norm": 0.05, "adv_steps": 4}])
def test_no_regularisers_equals_freelb(kw, tiny_model, tokenizer):
    """α = β = 0: InfoBERT is FreeLB with the same knobs (same seed, dropout off)."""
    batch = make_batch(tokenizer)
    tiny_model.eval()
    knobs = {"adv_steps": 3, "adv_lr": 0.04, "init_mag": 0.08, **kw}
    _, info = step(tiny_model, batch, seed=5, info_alpha=0.0, info_beta=0.0, **knobs)
    info_grads = grads(tiny_model)
    free = FreeLB(FreeLBSettings(**knobs))
    free.setup(tiny_model)
    torch.manual_seed(5)
    tiny_model.zero_grad(set_to_none=True)
    ref = free.train_step(StepContext.plain(tiny_model), batch)
    ref_grads = grads(tiny_model)
    torch.testing.assert_close(info.loss, ref.loss, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(info.delta, ref.delta, rtol=1e-6, atol=1e-8)
    assert info_grads.keys() == ref_grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(info_grads[name], ref_grads[name], rtol=1e-5, atol=1e-8)
    # and the regularisers do change the update
    step(tiny_model, batch, seed=5, **knobs)
    assert not torch.allclose(grads(tiny_model)["classifier.weight"], ref_grads["classifier.weight"])


def test_ascent_ignores_the_anchored_term(tiny_model, tokenizer):
    """The ascent direction is ∂(CE + β·Î_up)/∂δ, read before the lower bound is added (as the reference reads
    δ.grad): with β = 0 the perturbation path is the same with or without α (dropout off)."""
    batch = make_batch(tokenizer)
    tiny_model.eval()
    _, with_alpha = step(tiny_model, batch, seed=2, info_beta=0.0, info_alpha=5.0)
    _, without = step(tiny_model, batch, seed=2, info_beta=0.0, info_alpha=0.0)
    torch.testing.assert_close(with_alpha.delta, without.delta, rtol=1e-6, atol=1e-8)
    assert with_alpha.loss.item() != without.loss.item()


def test_one_step_no_start_no_regularisers_is_standard_training(tiny_model, tokenizer):
    batch = make_batch(tokenizer)
    tiny_model.eval()
    _, info = step(tiny_model, batch, adv_steps=1, init_mag=0.0, info_alpha=0.0, info_beta=0.0)
    info_grads = grads(tiny_model)
    tiny_model.zero_grad(set_to_none=True)
    ref = ATMethod(StandardSettings()).train_step(StepContext.plain(tiny_model), batch)
    ref_grads = grads(tiny_model)
    torch.testing.assert_close(info.loss, ref.loss, rtol=1e-6, atol=1e-7)
    assert info_grads.keys() == ref_grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(info_grads[name], ref_grads[name], rtol=1e-5, atol=1e-8)


# ------------------------------------------------------------------------------------------------
# the estimators


def test_anchored_positions_on_a_hand_made_gradient():
    # example 0: 10 real tokens (positions 0..9) + 2 padding with huge gradients; example 1: 4 real tokens
    norms0 = torch.tensor([5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 10.0, 4.0, 8.0, 6.0, 100.0, 200.0])
    norms1 = torch.tensor([3.0, 1.0, 4.0, 2.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 99.0, 98.0])
    direction = torch.tensor([0.6, 0.8, 0.0])  # unit vector: ‖g_j‖ = the norm above
    grad = torch.stack([norms0, norms1]).unsqueeze(-1) * direction
    mask = torch.zeros(2, 12, dtype=torch.long)
    mask[0, :10] = 1
    mask[1, :4] = 1
    rows, cols = anchored_positions(grad, mask, 0.5, 0.9)
    # example 0: ranks ⌈5⌉..⌈9⌉−1 = 5..8 of ascending norms 1..10 → norms 6, 7, 8, 9 → positions 9, 4, 8, 2
    # example 1: ranks ⌈2⌉..⌈3.6⌉−1 = 2..3 of norms 1..4 → norms 3, 4 → positions 0, 2
    assert rows.tolist() == [0, 0, 0, 0, 1, 1]
    assert cols.tolist() == [9, 4, 8, 2, 0, 2]
    rows, cols = anchored_positions(grad, mask, 0.0, 1.0)  # the whole real sentence, padding never
    assert sorted(cols[rows == 0].tolist()) == list(range(10)) and sorted(cols[rows == 1].tolist()) == [0, 1, 2, 3]
    rows, _ = anchored_positions(grad[:, :1], mask[:, :1], 0.5, 0.9)  # one token: ⌈0.5⌉..⌈0.9⌉−1 is empty
    assert rows.numel() == 0


def test_club_upper_bound_on_tiny_rows():
    rows = torch.tensor([[0.0, 0.0], [1.0, 2.0], [3.0, -1.0]])
    torch.manual_seed(0)
    idx = torch.randint(3, (3,))
    expected = sum(0.5 * float(((rows[i] - rows[j]) ** 2).sum()) for i, j in enumerate(idx.tolist())) / 3
    torch.manual_seed(0)
    assert club_upper_bound(rows).item() == pytest.approx(expected)
    assert club_upper_bound(torch.ones(5, 4)).item() == 0.0  # identical rows: no information
    # pairwise mean over all index draws: E = (1/N²) Σ_ij ½‖t_i − t_j‖²
    torch.manual_seed(1)
    draws = torch.stack([club_upper_bound(rows) for _ in range(4000)]).mean()
    full = sum(0.5 * float(((a - b) ** 2).sum()) for a in rows for b in rows) / 9
    assert draws.item() == pytest.approx(full, rel=0.05)


def _naive_infonce(critic, x, y):
    """The reference's formula with explicit tiling and concatenation: T1[i, j] = g(x_j, y_i)."""
    m = x.shape[0]
    t0 = critic(torch.cat([x, y], dim=-1))
    t1 = critic(torch.cat([x.unsqueeze(0).expand(m, m, -1), y.unsqueeze(1).expand(m, m, -1)], dim=-1))
    return t0.mean() - (t1.logsumexp(dim=1).mean() - math.log(m))


def test_infonce_lower_bound_matches_the_tiled_formula():
    critic = make_critic(3, torch.Generator().manual_seed(0)).double()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 5, 3, generator=g, dtype=torch.float64), torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    got = infonce_lower_bound(critic, x, y)
    assert got.shape == (2,)
    for c in range(2):
        torch.testing.assert_close(got[c], _naive_infonce(critic, x[c], y[c]))
    # one pair: the bound is exactly 0 (positive − (positive − log 1))
    assert infonce_lower_bound(critic, x[:1, :1], y[:1, :1]).abs().item() < 1e-12
    # InfoNCE can never exceed log m
    assert (got <= math.log(5) + 1e-12).all()


def test_chunked_lower_bound_is_the_mean_over_chunks():
    critic = make_critic(3, torch.Generator().manual_seed(0)).double()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 3, generator=g, dtype=torch.float64), torch.randn(8, 3, generator=g, dtype=torch.float64)
    chunks = [(0, 3), (3, 6), (6, 8)]
    expected = torch.stack([_naive_infonce(critic, x[a:b], y[a:b]) for a, b in chunks]).mean()
    torch.testing.assert_close(chunked_lower_bound(critic, x, y, 3), expected)
    torch.testing.assert_close(chunked_lower_bound(critic, x, y, 8), _naive_infonce(critic, x, y))


def test_make_critic_shape_and_init():
    critic = make_critic(4, torch.Generator().manual_seed(0))
    assert [type(m).__name__ for m in critic] == ["Linear", "ReLU", "Linear", "Softplus"]
    assert critic[0].weight.shape == (300, 8) and critic[2].weight.shape == (1, 300)
    assert critic[0].weight.abs().max() <= 1 / math.sqrt(8) and critic[2].weight.abs().max() <= 1 / math.sqrt(300)
    out = critic(torch.randn(6, 8))
    assert out.shape == (6, 1) and (out > 0).all()
    assert torch.equal(make_critic(4, torch.Generator().manual_seed(0))[0].weight, critic[0].weight)
