"""Flooding-X: the flooding loss |L − b| + b, the class-level gradient accordance, and how b is chosen.

The method is built directly (FloodingX(FloodingSettings(...))), not through the registry, so the file runs
before the coordinator registers ``flooding``; it covers the common contract too (finite loss and gradients,
seeds, sentence pairs, checkpoint round-trip).
"""

from __future__ import annotations

import copy
import io
import json
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from pydantic import ValidationError
from test_methods import make_batch

import distat.methods.flooding as flooding
from distat.methods.base import ATMethod, StandardSettings, StepContext
from distat.methods.flooding import (
    FloodingSettings,
    FloodingX,
    class_accordance,
    class_gradients,
    mean_pairwise_cosine,
)

from helpers import free_port


def build(**kw) -> FloodingX:
    return FloodingX(FloodingSettings(**kw))


def run(method: ATMethod, model, batch, seed: int = 0):
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    return method.train_step(StepContext.plain(model), batch)


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# --------------------------------------------------------------------------------------------------
# settings


def test_settings_defaults_and_bounds():
    s = FloodingSettings()
    assert (s.name, s.flood_level, s.accordance_every, s.accordance_threshold) == ("flooding", None, 10, 0.0)
    for bad in ({"flood_level": -0.1}, {"accordance_every": 0}, {"accordance_threshold": 1.5},
                {"flood_level": 11.0}, {"adv_lr": 0.1}):
        with pytest.raises(ValidationError):
            FloodingSettings(**bad)
    assert FloodingX.name == "flooding" and FloodingX.settings is FloodingSettings


# --------------------------------------------------------------------------------------------------
# common contract


@pytest.mark.parametrize("kw", [{}, {"flood_level": 0.3}])
def test_finite_loss_and_gradients_reach_parameters(kw, tiny_model, tokenizer):
    out = run(build(**kw), tiny_model, make_batch(tokenizer))
    assert torch.isfinite(out.loss) and out.loss.item() > 0
    emb = tiny_model.get_input_embeddings().weight.grad
    head = tiny_model.classifier.weight.grad
    assert emb is not None and head is not None and emb.abs().sum() > 0 and head.abs().sum() > 0
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in tiny_model.parameters())


@pytest.mark.parametrize("kw", [{}, {"flood_level": 0.3}])
def test_same_seed_same_loss_and_dropout_makes_the_seed_matter(kw, tiny_model, tokenizer):
    """No randomness of its own: the seed matters only through dropout (the model is in train mode)."""
    batch = make_batch(tokenizer)
    assert tiny_model.training
    a = run(build(**kw), copy.deepcopy(tiny_model), batch, seed=7)
    b = run(build(**kw), copy.deepcopy(tiny_model), batch, seed=7)
    c = run(build(**kw), copy.deepcopy(tiny_model), batch, seed=8)
    assert a.loss.item() == b.loss.item()
    assert c.loss.item() != a.loss.item()


@pytest.mark.parametrize("kw", [{}, {"flood_level": 0.3}])
def test_sentence_pairs(kw, tiny_model, tokenizer):
    batch = make_batch(tokenizer, pair=True)
    assert (batch["token_type_ids"] == 1).any()
    out = run(build(**kw), tiny_model, batch)
    assert torch.isfinite(out.loss)
    assert tiny_model.get_input_embeddings().weight.grad.abs().sum() > 0
    assert tiny_model.bert.embeddings.token_type_embeddings.weight.grad[1].abs().sum() > 0  # segment B used
    if "flood_level" not in kw:
        assert -1.0 <= out.logs["grad_accordance"] <= 1.0


def _state_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_state_survives_checkpoint_and_the_run_continues_exactly(tiny_model, tokenizer):
    batch, pair = make_batch(tokenizer), make_batch(tokenizer, pair=True)
    tiny_model.eval()
    method = build(accordance_every=2, accordance_threshold=-1.0)  # measures, never fixes b (C ≤ −1: never)
    for _ in range(3):
        run(method, tiny_model, batch)
    state = method.state_dict()
    assert set(state) == {"steps", "loss_ema", "first_accordance", "last_accordance", "epoch_accordance_sum",
                          "epoch_accordance_count"}
    assert int(state["steps"]) == 3 and int(state["epoch_accordance_count"]) == 2  # steps 0 and 2
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    restored = build(accordance_every=2, accordance_threshold=-1.0)
    restored.load_state_dict(torch.load(buf, weights_only=True))
    _state_equal(method.state_dict(), restored.state_dict())
    # the next steps are the same for both, measurement schedule included (step 4 measures, step 3 does not)
    for _ in range(2):
        out_a = run(method, copy.deepcopy(tiny_model), pair)
        out_b = run(restored, copy.deepcopy(tiny_model), pair)
        assert out_a.loss.item() == out_b.loss.item() and out_a.logs == out_b.logs
    assert "grad_accordance" in out_a.logs
    _state_equal(method.state_dict(), restored.state_dict())


def script_accordance(monkeypatch, values: list[float]) -> None:
    """The measured accordances, in order, instead of the real ones."""
    it = iter(values)
    monkeypatch.setattr(flooding, "class_accordance", lambda ctx, batch: next(it))


def test_state_with_flood_level_found_and_reset(tiny_model, tokenizer, monkeypatch):
    script_accordance(monkeypatch, [0.5, -0.5])
    method = build(accordance_every=1)
    for _ in range(2):
        run(method, tiny_model, make_batch(tokenizer))
    state = method.state_dict()
    assert method.b is not None
    assert "flood_level" in state and float(state["flood_level"]) == method.b
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    restored = build(accordance_every=1)
    restored.load_state_dict(torch.load(buf, weights_only=True))
    assert restored.b == method.b and restored.loss_ema == method.loss_ema
    restored.load_state_dict({})
    assert restored.b is None and restored.loss_ema is None and restored.steps == 0
    assert restored.state_dict().keys() == {"steps", "epoch_accordance_sum", "epoch_accordance_count"}
    with pytest.raises(ValueError, match="unknown state keys"):
        restored.load_state_dict({"w": torch.zeros(2)})


# --------------------------------------------------------------------------------------------------
# the flooding loss


def _standard(model, batch):
    out = run(ATMethod(StandardSettings()), model, batch)
    return out.loss, grads(model)


def test_flood_level_zero_is_standard_fine_tuning(tiny_model, tokenizer):
    """The special case: b = 0 gives |L − 0| + 0 = L, loss and gradients identical to standard training."""
    batch = make_batch(tokenizer)
    tiny_model.eval()
    ref_loss, ref_grads = _standard(tiny_model, batch)
    out = run(build(flood_level=0.0), tiny_model, batch)
    assert out.loss.item() == ref_loss.item()
    got = grads(tiny_model)
    assert got.keys() == ref_grads.keys()
    for name in got:
        assert torch.equal(got[name], ref_grads[name]), name


def test_flood_level_above_the_loss_ascends_below_it_descends(tiny_model, tokenizer):
    batch = make_batch(tokenizer)
    tiny_model.eval()
    ref_loss, ref_grads = _standard(tiny_model, batch)
    L = ref_loss.item()
    above = run(build(flood_level=L + 0.5), tiny_model, batch)
    up = grads(tiny_model)
    torch.testing.assert_close(above.loss, torch.tensor(2 * (L + 0.5) - L))  # |L − b| + b = 2b − L
    for name in ref_grads:
        assert torch.equal(up[name], -ref_grads[name]), name  # gradient ascent
    below = run(build(flood_level=L / 2), tiny_model, batch)
    down = grads(tiny_model)
    assert below.loss.item() == pytest.approx(L)
    for name in ref_grads:
        assert torch.equal(down[name], ref_grads[name]), name
    assert above.logs["flood_level"] == L + 0.5 and above.logs["ce_loss"] == pytest.approx(L)


def test_auto_mode_before_b_is_standard_training_and_draws_no_rng(tiny_model, tokenizer):
    """While b is unknown a step is standard fine-tuning, even in train mode with the measurement on the same
    step: the measurement runs after the backward, with dropout off, and leaves .grad and the RNG alone."""
    batch = make_batch(tokenizer)
    ref_model = copy.deepcopy(tiny_model)
    ref_loss, ref_grads = _standard(ref_model, batch)
    ref_next = torch.rand(3)
    method = build(accordance_threshold=-1.0)
    out = run(method, tiny_model, batch)
    next_draw = torch.rand(3)
    assert "grad_accordance" in out.logs  # step 0 was measured
    assert out.loss.item() == ref_loss.item() and torch.equal(next_draw, ref_next)
    got = grads(tiny_model)
    for name in ref_grads:
        assert torch.equal(got[name], ref_grads[name]), name
    assert tiny_model.training  # mode restored


# --------------------------------------------------------------------------------------------------
# gradient accordance


def test_accordance_of_hand_made_gradients():
    """Softmax regression at W = 0, one example per class: g_y = (softmax − e_y) xᵀ = (½ − e_y) xᵀ."""

    def grad_of(x: torch.Tensor, y: int) -> tuple[torch.Tensor]:
        w = torch.zeros(2, x.numel(), requires_grad=True)
        (g,) = torch.autograd.grad(F.cross_entropy((w @ x).unsqueeze(0), torch.tensor([y])), [w])
        return (g,)

    x, x_orth = torch.tensor([1.0, 2.0, 0.0]), torch.tensor([-2.0, 1.0, 3.0])
    # the same input with the two labels: each class's step undoes the other's (full conflict)
    assert mean_pairwise_cosine([grad_of(x, 0), grad_of(x, 1)]) == pytest.approx(-1.0)
    # orthogonal inputs: the gradients live in orthogonal rows-spaces (no interaction)
    assert mean_pairwise_cosine([grad_of(x, 0), grad_of(x_orth, 1)]) == pytest.approx(0.0, abs=1e-12)
    # same input, same label: full accordance; the mean is over the three pairs
    three = [grad_of(x, 0), grad_of(x, 0), grad_of(x, 1)]
    assert mean_pairwise_cosine(three) == pytest.approx((1.0 - 1.0 - 1.0) / 3)
    # split into several tensors (per-parameter tuples) it is the cosine of the concatenation
    a, b = torch.randn(7), torch.randn(7)
    expected = F.cosine_similarity(a, b, dim=0).item()
    assert mean_pairwise_cosine([(a[:3], a[3:]), (b[:3], b[3:])]) == pytest.approx(expected, rel=1e-6)
    assert mean_pairwise_cosine([(a,)]) is None
    assert mean_pairwise_cosine([(a,), (torch.zeros(7),)]) == 0.0  # a zero gradient: 0, not NaN


def test_accordance_equals_direct_cosine_of_the_class_gradients(tiny_model, tokenizer):
    batch = make_batch(tokenizer)
    tiny_model.eval()
    direct = []
    for c in (0, 1):
        rows = (batch["labels"] == c).nonzero().squeeze(1)
        sub = {k: v[rows] for k, v in batch.items()}
        tiny_model.zero_grad(set_to_none=True)
        F.cross_entropy(tiny_model(**{k: v for k, v in sub.items() if k != "labels"}).logits,
                        sub["labels"]).backward()
        direct.append(torch.cat([p.grad.flatten() for p in tiny_model.parameters()]))
    expected = F.cosine_similarity(direct[0].double(), direct[1].double(), dim=0).item()
    tiny_model.zero_grad(set_to_none=True)
    got = class_accordance(StepContext.plain(tiny_model), batch)
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert all(p.grad is None for p in tiny_model.parameters())  # no .grad pollution
    # per-class gradients are the sub-batch means, one tuple per label present, every parameter covered
    params = [p for p in tiny_model.parameters() if p.requires_grad]
    g = class_gradients(tiny_model, batch, params)
    assert len(g) == 2 and len(g[0]) == len(params)
    torch.testing.assert_close(torch.cat([t.flatten() for t in g[1]]), direct[1], rtol=1e-5, atol=1e-7)


def test_one_class_batch_measures_nothing(tiny_model, tokenizer):
    batch = make_batch(tokenizer)
    batch["labels"] = torch.ones_like(batch["labels"])
    assert class_accordance(StepContext.plain(tiny_model), batch) is None
    method = build()
    out = run(method, tiny_model, batch)
    assert "grad_accordance" not in out.logs and method.first_accordance is None  # skipped, not a measurement
    assert method.loss_ema == pytest.approx(out.logs["ce_loss"])  # the loss EMA still runs


# --------------------------------------------------------------------------------------------------
# choosing b


def test_b_is_loss_ema_at_the_first_crossing(tiny_model, tokenizer, monkeypatch):
    """Accordance −0.4 then 0.3 (a crossing of τ = 0) on steps 0 and 1: b := loss_ema after step 1, which
    is 0.9·L₀ + 0.1·L₁; step 1 itself was standard, flooding from step 2 on, no further measurement."""
    script_accordance(monkeypatch, [-0.4, 0.3])
    batch = make_batch(tokenizer)
    tiny_model.eval()
    method = build(accordance_every=1)
    first = run(method, tiny_model, batch)
    assert method.b is None and method.first_accordance == -0.4  # the first measurement only sets the side
    tiny_model.classifier.bias.data[0] += 0.1  # a different loss on the next step
    second = run(method, tiny_model, batch)
    assert "flood_level" not in second.logs and second.loss.item() == second.logs["ce_loss"]
    assert first.logs["ce_loss"] != second.logs["ce_loss"]
    expected = 0.9 * first.logs["ce_loss"] + 0.1 * second.logs["ce_loss"]
    assert method.b == method.loss_ema == pytest.approx(expected, rel=1e-12)
    assert method.epoch_logs() == {"flood_level": method.b, "grad_accordance": pytest.approx(-0.05)}
    third = run(method, tiny_model, batch)  # the script is exhausted: a measurement would raise
    assert third.logs["flood_level"] == method.b and "grad_accordance" not in third.logs
    L = third.logs["ce_loss"]
    assert third.loss.item() == pytest.approx(abs(L - method.b) + method.b)
    assert method.epoch_logs() == {"flood_level": method.b}  # the epoch accumulator was reset


@pytest.mark.parametrize("script", [[0.6, 0.2, 0.0], [-0.9, 0.0, 0.1]], ids=["falls", "rises"])
def test_b_is_fixed_exactly_when_the_accordance_crosses(script, tiny_model, tokenizer, monkeypatch):
    """Scripted accordances on the measured steps 0, 2, 4, crossing τ = 0 only at step 4 (0.0 is on the
    "≤ τ" side: a crossing after a start above, none after a start below): b = loss_ema after step 4,
    which follows the EMA recursion with decay 0.9 over the losses of steps 0..4; flooding from step 5."""
    script_accordance(monkeypatch, script)
    batch = make_batch(tokenizer)
    tiny_model.eval()
    method = build(accordance_every=2)
    losses, ema = [], None
    for step in range(5):
        out = run(method, tiny_model, batch)
        losses.append(out.logs["ce_loss"])
        ema = losses[-1] if ema is None else 0.9 * ema + 0.1 * losses[-1]
        assert ("grad_accordance" in out.logs) == (step % 2 == 0)
        assert (method.b is None) == (step < 4), step
        tiny_model.classifier.bias.data[0] += 0.1  # move the weights so the losses differ between steps
    assert len(set(losses)) == 5 and method.last_accordance == script[-1]
    assert method.b == pytest.approx(ema, rel=1e-12) and method.b == method.loss_ema
    after = run(method, tiny_model, batch)
    assert after.logs["flood_level"] == method.b
    assert method.loss_ema == pytest.approx(ema, rel=1e-12)  # the EMA stops once b is known
    assert method.epoch_logs()["grad_accordance"] == pytest.approx(sum(script) / 3)


def test_no_crossing_no_flood_level(tiny_model, tokenizer):
    """τ = 1: every cosine is on the "≤ τ" side, so the side never changes and b is never fixed."""
    batch = make_batch(tokenizer)
    method = build(accordance_every=1, accordance_threshold=1.0)
    for _ in range(3):
        out = run(method, tiny_model, batch)
        assert "grad_accordance" in out.logs and "flood_level" not in out.logs
    assert method.b is None and method.epoch_logs().keys() == {"grad_accordance"}


def test_explicit_flood_level_never_measures(tiny_model, tokenizer, monkeypatch):
    monkeypatch.setattr(flooding, "class_accordance", lambda ctx, batch: pytest.fail("measured"))
    method = build(flood_level=0.2, accordance_every=1)
    out = run(method, tiny_model, make_batch(tokenizer))
    assert out.logs["flood_level"] == 0.2 and method.loss_ema is None
    assert method.epoch_logs() == {"flood_level": 0.2}


# --------------------------------------------------------------------------------------------------
# DDP: the same b on every rank


def _ddp_step(rank: int, model_dir: str, batch: dict) -> dict:
    from torch.nn.parallel import DistributedDataParallel
    from transformers import BertForSequenceClassification

    module = BertForSequenceClassification.from_pretrained(model_dir)
    module.eval()
    model = DistributedDataParallel(module)
    ctx = StepContext(model=model, module=module, backward=lambda loss, sync=True: loss.backward())
    method = build(accordance_every=1)
    local = class_accordance(ctx, batch)
    module.zero_grad(set_to_none=True)
    first = method.train_step(ctx, batch)
    # second step: rank-specific scripted accordances on the other side of 0 than the first (mean ±0.4)
    other = -0.4 if method.first_accordance > 0 else 0.4
    flooding.class_accordance = lambda ctx, batch: other + (0.1 if rank == 0 else -0.1)
    second = method.train_step(ctx, batch)
    return {"ce": [first.logs["ce_loss"], second.logs["ce_loss"]], "b": method.b, "ema": method.loss_ema,
            "local": local, "acc": [first.logs.get("grad_accordance"), second.logs["grad_accordance"]],
            "other": other}


def _ddp_worker(rank: int, port: int, model_dir: str, batches: list, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        # the DDP wrapper lives and dies inside _ddp_step: destroyed after the process group, its destructor
        # can hang the worker's exit
        result = _ddp_step(rank, model_dir, batches[rank])
        with open(f"{out}/rank{rank}.json", "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_ranks_agree_on_b(tmp_path, tiny_model_dir, tokenizer):
    """Two gloo workers with different batches. Step 1: rank 1's batch has one label, so only rank 0's
    accordance counts, on both ranks. Step 2: scripted accordances (other side of 0, differing by rank) are
    averaged, both ranks see the crossing and fix the same b: the EMA of the rank-averaged losses."""
    both, pair = make_batch(tokenizer), make_batch(tokenizer, pair=True)
    one_label = {**pair, "labels": torch.zeros_like(pair["labels"])}
    workers = mp.spawn(_ddp_worker, args=(free_port(), str(tiny_model_dir), [both, one_label], str(tmp_path)),
                       nprocs=2, join=False)
    deadline = time.monotonic() + 120
    while not workers.join(timeout=max(0.1, deadline - time.monotonic())):  # True once both have exited
        if time.monotonic() > deadline:
            for p in workers.processes:
                p.kill()
            pytest.fail("DDP workers did not finish within 120 s")
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r1["local"] is None and r0["local"] is not None
    assert r0["acc"][0] == r1["acc"][0] == pytest.approx(r0["local"])
    assert r0["acc"][1] == r1["acc"][1] == pytest.approx(r0["other"])
    assert r0["ce"][0] != r1["ce"][0]
    mean = [(a + b) / 2 for a, b in zip(r0["ce"], r1["ce"], strict=True)]
    assert r0["b"] == r1["b"] == r0["ema"] == r1["ema"] == pytest.approx(0.9 * mean[0] + 0.1 * mean[1])
