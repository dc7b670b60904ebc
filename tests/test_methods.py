"""The AT method contract, run over every method, and adaptive AT's identities."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F

from distat import methods
from distat.config import parse_trial_config
from distat.errors import ConfigError
from distat.methods.adaptive import initial_weights, project_simplex
from distat.methods.base import StepContext, embeds, forward_logits
from distat.methods.perturb import Perturbation, increments
from distat.methods.taylor import taylor_error

ALL = ["standard", "fgm", "pgd", "freelb", "tavat", "trades", "infobert", "smart", "flooding", "adaptive_pgd",
       "adaptive_freelb", "adaptive_tavat", "mixup"]
# mixup perturbs hidden states, Flooding-X nothing
PERTURBING = [m for m in ALL if m not in ("standard", "mixup", "flooding")]

SENTENCES = [
    "a stirring , funny and finally transporting re-imagining of beauty and the beast",
    "apparently reassembled from the cutting-room floor of any given daytime soap .",
    "they presume their audience wo n't sit still for a sociology lesson",
    "this is a film well worth seeing , talking and singing heads and all .",
]
QUESTIONS = ["what is the film about ?", "who made it ?", "is it good ?", "when was it released ?"]


def make_batch(tokenizer, pair: bool = False) -> dict[str, torch.Tensor]:
    enc = tokenizer(QUESTIONS if pair else SENTENCES, SENTENCES if pair else None, padding=True,
                    return_tensors="pt")
    batch = {k: v for k, v in enc.items()}
    batch["labels"] = torch.tensor([1, 0, 0, 1])
    return batch


KNOBS = {k for cls in methods.REGISTRY.values() for k in cls.settings.model_fields}


def cfg_for(name: str, **kw) -> methods.Settings:
    """The settings of method ``name``: k = 3, α = 0.05, init_mag = 0.05, then ``kw``, each where the method
    has that knob (FGM takes one step from x₀: no k, no random start), as a search's base knobs apply to the
    methods that have them; a key of no method at all is still an error."""
    knobs = {"adv_steps": 3, "adv_lr": 0.05, "init_mag": 0.05, **kw}
    fields = methods.settings_class(name).model_fields
    return methods.parse_settings({"name": name, **{k: v for k, v in knobs.items() if k in fields or k not in KNOBS}})


def step(method_name: str, model, batch, seed: int = 0, **kw):
    """One training step of a fresh method; the seed governs setup too (as a trial's does: the loop seeds before
    building the method, whose setup may draw its own parameters, InfoBERT's critic say)."""
    method = methods.build(cfg_for(method_name, **kw))
    torch.manual_seed(seed)
    method.setup(model)
    model.zero_grad(set_to_none=True)
    return method, method.train_step(StepContext.plain(model), batch)


def test_registry_lists_every_method():
    assert set(methods.available()) == {"standard", "fgm", "pgd", "freelb", "tavat", "trades", "infobert", "smart",
                                        "flooding", "adaptive", "mixup"}


@pytest.mark.parametrize("name", ALL)
def test_finite_loss_and_gradients_reach_parameters(name, tiny_model, tokenizer):
    _, out = step(name, tiny_model, make_batch(tokenizer))
    assert torch.isfinite(out.loss) and out.loss.item() > 0
    emb = tiny_model.get_input_embeddings().weight.grad
    head = tiny_model.classifier.weight.grad
    assert emb is not None and head is not None
    assert emb.abs().sum() > 0 and head.abs().sum() > 0
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in tiny_model.parameters())


@pytest.mark.parametrize("name", PERTURBING)
@pytest.mark.parametrize("norm_type", ["l2", "linf"])
def test_perturbation_within_bound_and_masked(name, norm_type, tiny_model, tokenizer):
    batch = make_batch(tokenizer)
    bound = 0.02
    method, out = step(name, tiny_model, batch, norm_type=norm_type, max_norm=bound, adv_lr=0.5, init_mag=0.01)
    delta = out.delta
    assert delta is not None and delta.abs().sum() > 0
    pert = Perturbation(norm_type=norm_type)  # every bound is per example (TA-VAT's too: its total is bounded)
    assert (pert.norm(delta) <= bound * (1 + 1e-5)).all()
    pad = batch["attention_mask"] == 0
    assert pad.any() and delta[pad].abs().max() == 0


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_loss(name, tiny_model, tokenizer):
    batch = make_batch(tokenizer)
    model_b = copy.deepcopy(tiny_model)
    _, a = step(name, tiny_model, batch, seed=7)
    _, b = step(name, model_b, batch, seed=7)
    assert a.loss.item() == b.loss.item()
    if name != "standard":
        _, c = step(name, copy.deepcopy(model_b), batch, seed=8)
        assert c.loss.item() != a.loss.item()  # the seed matters: random init / dropout


@pytest.mark.parametrize("name", ALL)
def test_sentence_pairs(name, tiny_model, tokenizer):
    batch = make_batch(tokenizer, pair=True)
    assert (batch["token_type_ids"] == 1).any()
    _, out = step(name, tiny_model, batch)
    assert torch.isfinite(out.loss)
    assert tiny_model.get_input_embeddings().weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ALL)
def test_state_survives_checkpoint_restore(name, tiny_model, tokenizer):
    method, _ = step(name, tiny_model, make_batch(tokenizer))
    buf = io.BytesIO()
    torch.save(method.state_dict(), buf)
    buf.seek(0)
    restored = methods.build(cfg_for(name))
    restored.setup(tiny_model)
    restored.load_state_dict(torch.load(buf, weights_only=True))
    a, b = method.state_dict(), restored.state_dict()
    assert a.keys() == b.keys()
    flat_a, flat_b = _flatten(a), _flatten(b)
    assert flat_a.keys() == flat_b.keys()
    for key in flat_a:
        assert torch.equal(flat_a[key], flat_b[key]), key
    if name.startswith("adaptive"):
        assert not torch.allclose(a["w"], initial_weights(3, "uniform"))  # w moved, and came back
    if name.endswith("tavat"):
        table = flat_a[next(k for k in flat_a if k.endswith("table"))]
        fresh, _ = step(name, copy.deepcopy(tiny_model), {**make_batch(tokenizer), "input_ids": torch.full((4, 3), 100),
                                                           "attention_mask": torch.ones(4, 3, dtype=torch.long),
                                                           "token_type_ids": torch.zeros(4, 3, dtype=torch.long)})
        fresh_table = _flatten(fresh.state_dict())[next(k for k in flat_a if k.endswith("table"))]
        ids = make_batch(tokenizer)["input_ids"].unique()
        # the same seed draws the same table; only the rows of the batch's tokens moved
        assert not torch.equal(table[ids], fresh_table[ids]) and torch.equal(table[200:300], fresh_table[200:300])


def _flatten(state, prefix=""):
    out = {}
    for k, v in state.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# ------------------------------------------------------------------------------------------------
# adaptive AT


def test_project_simplex():
    w = project_simplex(torch.tensor([0.5, 0.9, -0.3]))
    assert torch.allclose(w.sum(), torch.tensor(1.0)) and (w >= 0).all()
    torch.testing.assert_close(w, torch.tensor([0.3, 0.7, 0.0]))
    inside = torch.tensor([0.2, 0.3, 0.5])
    torch.testing.assert_close(project_simplex(inside), inside)


def test_w_ascends_and_stays_on_simplex(tiny_model, tokenizer):
    method = methods.build(cfg_for("adaptive_pgd", w_lr=50.0))
    method.setup(tiny_model)
    batch = make_batch(tokenizer)
    tiny_model.eval()
    for _ in range(3):
        torch.manual_seed(0)
        tiny_model.zero_grad(set_to_none=True)
        method.train_step(StepContext.plain(tiny_model), batch)
        assert torch.isclose(method.w.sum(), torch.tensor(1.0)) and (method.w >= 0).all()
    assert not torch.allclose(method.w, initial_weights(3, "uniform"))
    logs = method.epoch_logs()
    assert list(logs) == ["w_1", "w_2", "w_3"] and abs(sum(logs.values()) - 1) < 1e-6


def test_adaptive_default_beta():
    assert methods.build(cfg_for("adaptive_pgd", adv_steps=5)).beta == 5
    assert methods.build(cfg_for("adaptive_tavat", adv_steps=5)).beta == 3  # FreeLB-based
    assert methods.build(cfg_for("adaptive_freelb", adv_steps=5)).beta == 3
    assert methods.build(cfg_for("adaptive_pgd", adv_steps=5, beta=2.5)).beta == 2.5


def test_uniform_w_and_beta_k_equals_pgd(tiny_model, tokenizer):
    batch = make_batch(tokenizer)
    tiny_model.eval()  # dropout off: both runs see the same network
    for k in (1, 3, 5):
        _, pgd = step("pgd", tiny_model, batch, seed=3, adv_steps=k)
        _, ada = step("adaptive_pgd", tiny_model, batch, seed=3, adv_steps=k, w_lr=0.0)
        torch.testing.assert_close(ada.loss, pgd.loss, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(ada.delta, pgd.delta, rtol=1e-5, atol=1e-7)


def test_the_random_start_stays_outside_the_weighted_sum(tiny_model, tokenizer):
    """Eq. 12: the trained point is x₀ + β·Σ wᵢδᵢ with x₀ = x + δ₀, whatever β and w are."""
    batch = make_batch(tokenizer)
    tiny_model.eval()
    for base in ("pgd", "freelb", "tavat"):
        for beta in (0.5, 2.0):
            kw = {"adv_steps": 3, "init_mag": 0.5, "beta": beta, "w_lr": 0.0, "max_norm": 0.0}
            method, out = step(f"adaptive_{base}", tiny_model, batch, seed=5, **kw)
            again = methods.build(cfg_for(f"adaptive_{base}", **kw))
            again.setup(tiny_model)
            torch.manual_seed(5)
            traj = again.base.trajectory(StepContext.plain(tiny_model), batch, embeds(tiny_model, batch).detach())
            assert traj.start.abs().sum() > 0
            weighted = sum(w * d for w, d in zip(method.w, traj.increments(), strict=True))
            torch.testing.assert_close(out.delta, traj.start + beta * weighted, rtol=1e-5, atol=1e-7)


def _freelb_paper_form(model, batch, traj) -> float:
    """The adaptive-AT paper's Eq. 10 form of FreeLB: (1/k)·Σ_{t=1}^{k} L(x₀ + Σ_{i≤t} δᵢ)."""
    x = embeds(model, batch).detach()
    with torch.no_grad():
        losses = [F.cross_entropy(forward_logits(model, model, batch, x + p), batch["labels"]) for p in traj.points]
    return float(sum(losses) / len(losses))


def test_linear_w_is_the_papers_first_order_freelb(tiny_model, tokenizer):
    """Eq. 10: with wᵢ ∝ k−i+1 and β = (k+1)/2 (adaptive FreeLB's defaults), Ĵ equals the paper's FreeLB form to
    first order in α: the gap falls like α², the random start kept in x₀."""
    batch = make_batch(tokenizer)
    tiny_model.eval()
    ctx = StepContext.plain(tiny_model)
    gaps = []
    for alpha in (0.1, 0.03, 0.01):
        kw = {"adv_steps": 4, "adv_lr": alpha, "init_mag": 0.2, "w_lr": 0.0}
        method, ada = step("adaptive_freelb", tiny_model, batch, seed=2, **kw)
        assert method.beta == 2.5 and torch.allclose(method.w, torch.tensor([4.0, 3.0, 2.0, 1.0]) / 10)
        torch.manual_seed(2)
        traj = method.base.trajectory(ctx, batch, embeds(tiny_model, batch).detach())
        gaps.append(abs(ada.loss.item() - _freelb_paper_form(tiny_model, batch, traj)))
    assert all(a > b for a, b in zip(gaps, gaps[1:], strict=False)), gaps
    assert gaps[-1] < gaps[0] / 30, gaps  # 10× smaller α: a second-order gap drops ~100×


def test_linear_w_approaches_distat_freelb_with_one_more_step(tiny_model, tokenizer):
    """FreeLB with K = k+1 steps averages over p_0..p_k: to first order adaptive FreeLB with k steps, the same
    w ∝ k−i+1 and β = k/2 (freelb.py)."""
    batch = make_batch(tokenizer)
    tiny_model.eval()
    gaps = []
    for alpha in (0.3, 0.1, 0.03, 0.01):
        kw = {"adv_lr": alpha, "init_mag": 0.2, "w_lr": 0.0}
        _, free = step("freelb", tiny_model, batch, seed=4, adv_steps=4, **kw)
        _, ada = step("adaptive_freelb", tiny_model, batch, seed=4, adv_steps=3, beta=1.5, w_init="linear", **kw)
        gaps.append(abs(ada.loss.item() - free.loss.item()))
    assert all(a > b for a, b in zip(gaps, gaps[1:], strict=False)), gaps
    assert gaps[-1] < gaps[0] / 100, gaps


def test_w_init_base_starts_each_method_at_its_matching_weights():
    assert torch.allclose(methods.build(cfg_for("adaptive_pgd")).w, initial_weights(3, "uniform"))
    assert torch.allclose(methods.build(cfg_for("adaptive_freelb")).w, initial_weights(3, "linear"))
    assert torch.allclose(methods.build(cfg_for("adaptive_tavat")).w, initial_weights(3, "linear"))
    assert torch.allclose(methods.build(cfg_for("adaptive_freelb", w_init="uniform")).w, initial_weights(3, "uniform"))


def test_first_order_taylor_error_shrinks_with_step(tiny_model, tokenizer):
    """Eq. 8: L(x₀ + β Σ wᵢδᵢ) − [L(x₀) + ∇L·β Σ wᵢδᵢ] vanishes faster than the perturbation."""
    batch = make_batch(tokenizer)
    tiny_model.eval()
    ctx = StepContext.plain(tiny_model)
    x0 = embeds(tiny_model, batch).detach().requires_grad_(True)
    loss0 = F.cross_entropy(forward_logits(tiny_model, tiny_model, batch, x0), batch["labels"])
    (g,) = torch.autograd.grad(loss0, x0)
    errors = []
    for alpha in (0.2, 0.05, 0.0125):
        method = methods.build(cfg_for("adaptive_pgd", adv_steps=3, adv_lr=alpha, init_mag=0.0))
        torch.manual_seed(0)
        traj = method.base.trajectory(ctx, batch, x0.detach())
        d = method.beta * torch.einsum("k,kbth->bth", method.w, torch.stack(traj.increments()))
        with torch.no_grad():
            exact = F.cross_entropy(forward_logits(tiny_model, tiny_model, batch, x0 + d), batch["labels"])
        linear = loss0 + (g * d).sum()
        errors.append(abs(exact.item() - linear.item()))
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < errors[0] / 50, errors  # 16× smaller α → ~256× smaller error


def test_taylor_diagnostic_is_the_papers_eq8(tiny_model, tokenizer):
    """For a plain gradient step δ = α∇L(x₀) the paper's approximation L(x₀) + ‖δ‖²/α is first order: its relative
    error falls like α; and every k-step method logs the metric when asked (and only then)."""
    batch = make_batch(tokenizer)
    tiny_model.eval()
    ctx = StepContext.plain(tiny_model)
    x = embeds(tiny_model, batch).detach()
    start = torch.zeros_like(x)
    probe = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(forward_logits(tiny_model, tiny_model, batch, probe),
                                               batch["labels"], reduction="sum"), probe)
    errors = [taylor_error(ctx, batch, x, start, [a * g], a) for a in (0.4, 0.1, 0.025)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < errors[0] / 8, errors
    for name in ("pgd", "freelb", "tavat", "adaptive_pgd", "adaptive_freelb", "adaptive_tavat"):
        _, out = step(name, tiny_model, batch, taylor_diagnostic=True)
        assert math.isfinite(out.logs["taylor_error"]) and out.logs["taylor_error"] >= 0, name
        _, quiet = step(name, tiny_model, batch)
        assert "taylor_error" not in quiet.logs, name


def test_trades_ascends_with_dropout_off(tiny_model, tokenizer):
    """The TRADES perturbation is crafted on the deterministic network (the reference's model.eval()), and the
    model is back in train mode for the update; the KL weight defaults to the adaptive-AT paper's 0.5."""
    batch = make_batch(tokenizer)
    assert methods.parse_settings({"name": "trades"}).trades_beta == 0.5
    tiny_model.train()
    _, in_train = step("trades", tiny_model, batch, seed=3)
    assert tiny_model.training
    tiny_model.eval()
    _, in_eval = step("trades", tiny_model, batch, seed=3)
    torch.testing.assert_close(in_train.delta, in_eval.delta)
    assert in_train.loss.item() != in_eval.loss.item()  # the update itself does see dropout


def test_increments_sum_to_last_point():
    pts = [torch.randn(2, 3, 4) for _ in range(4)]
    pts = [sum(pts[: i + 1]) for i in range(4)]
    torch.testing.assert_close(sum(increments(pts)), pts[-1])
    start = torch.randn(2, 3, 4)
    torch.testing.assert_close(start + sum(increments(pts, start=start)), pts[-1])


def test_bad_method_configs():
    with pytest.raises(ValueError, match="unknown method"):
        methods.parse_settings({"name": "pgdd"})
    with pytest.raises(ValueError, match="needs base"):
        methods.parse_settings({"name": "adaptive"})
    with pytest.raises(ValueError, match="only for method"):
        methods.parse_settings({"name": "pgd", "base": "pgd"})
    assert methods.parse_settings({"name": "adaptive_freelb"}).base == "freelb"


@pytest.mark.parametrize(("name", "key"), [("pgd", "mix_alpha"), ("fgm", "adv_steps"), ("fgm", "init_mag"),
                                           ("standard", "adv_lr"), ("freelb", "w_lr"), ("mixup", "adv_lr"),
                                           ("adaptive_pgd", "trades_beta"), ("trades", "beta")])
def test_a_key_of_another_method_is_an_error(name, key):
    """Each method's settings hold only its own knobs: a key of another method is not silently ignored."""
    with pytest.raises(ValueError, match=key):
        methods.parse_settings({"name": name, key: 1.0})
    with pytest.raises(ConfigError) as info:
        parse_trial_config({"method": {"name": name, key: 1.0}}, "configs/x.yaml")
    tag = "adaptive" if name.startswith("adaptive") else name
    message = str(info.value)
    assert message.startswith(f"configs/x.yaml: method.{key}: unknown key for method '{tag}' (allowed: name"), message
    assert "\n" not in message and f"{key}," not in message.split("allowed")[1], message


def test_settings_live_beside_their_methods():
    """Every registered method declares its settings class in its own module, and the union holds them all."""
    for name, cls in methods.REGISTRY.items():
        assert cls.settings.__module__ == cls.__module__, name
        assert cls.settings.model_fields["name"].default == name
    assert methods.parse_settings({}) == methods.StandardSettings()
    # defaults and bounds of the shared knobs are the same for every method that has them
    for name in ("pgd", "freelb", "trades", "adaptive_pgd", "adaptive_freelb"):
        s = methods.parse_settings({"name": name})
        assert (s.adv_steps, s.adv_lr, s.init_mag, s.max_norm, s.norm_type) == (3, 0.03, 0.05, 0.0, "l2"), name
    # TA-VAT keeps TextDefender's defaults, and adaptive TA-VAT takes them from it
    for name in ("tavat", "adaptive_tavat"):
        s = methods.parse_settings({"name": name})
        assert (s.adv_steps, s.adv_lr, s.init_mag, s.max_norm, s.norm_type) == (2, 0.05, 0.2, 0.5, "l2"), name
    defaults = methods.parse_settings({"name": "adaptive_tavat"})
    assert (defaults.beta, defaults.w_lr, defaults.w_init) == (None, 1.0, "base")
    assert methods.parse_settings({"name": "trades"}).trades_beta == 0.5
    assert methods.parse_settings({"name": "fgm"}).adv_lr == 0.03
    with pytest.raises(ValueError, match="adv_steps"):
        methods.parse_settings({"name": "pgd", "adv_steps": 101})


def test_adaptive_shorthand_and_long_form_are_the_same():
    short = parse_trial_config({"method": {"name": "adaptive_pgd", "adv_steps": 2}})
    long = parse_trial_config({"method": {"name": "adaptive", "base": "pgd", "adv_steps": 2}})
    assert short == long and short.method.name == "adaptive" and short.method.label == "adaptive_pgd"
    assert parse_trial_config(short.model_dump(mode="json")) == short  # what trials and checkpoints ship
    base = methods.build(short.method).base
    assert type(base.cfg) is methods.PGDSettings and base.cfg.adv_steps == 2
    with pytest.raises(ConfigError, match="contradicts base"):
        parse_trial_config({"method": {"name": "adaptive_pgd", "base": "freelb"}})
    assert parse_trial_config({}).method.label == "standard"
