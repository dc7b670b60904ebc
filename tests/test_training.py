"""The training loop: resume equals uninterrupted, divergence is reported, checkpoints are checked."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from distat.config import parse_trial_config
from distat.errors import ModelError
from distat.training import (
    epoch_order,
    grouped_order,
    latest_checkpoint,
    list_checkpoints,
    make_scheduler,
    run_trial,
)

from helpers import shared_data_dir


def trial(tmp_path, backbone, method=None, **train):
    data = {"path": str(shared_data_dir() / "sst2"), "max_train_examples": 40, "max_dev_examples": 24,
            "max_length": 32}
    cfg = {
        "seed": 5, "data": data, "model": {"backbone": str(backbone)},
        "method": method or {"name": "adaptive_tavat", "adv_steps": 2, "w_lr": 20.0},
        "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, **train},
        "output_dir": str(tmp_path),
    }
    return parse_trial_config(cfg)


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
    assert epoch_order(50, 1, 2) == epoch_order(50, 1, 2)
    assert epoch_order(50, 1, 2) != epoch_order(50, 1, 3)
    assert sorted(epoch_order(50, 1, 2)) == list(range(50))


def _padded(order, lengths, unit):
    return sum(max(lengths[i] for i in order[k : k + unit]) * len(order[k : k + unit])
               for k in range(0, len(order), unit))


def test_grouped_order_is_a_seeded_permutation_with_less_padding():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 60, (1000,), generator=g).tolist()
    order = epoch_order(1000, 1, 1)
    grouped = grouped_order(order, lengths, 32, 1, 1)
    assert sorted(grouped) == list(range(1000))
    assert grouped == grouped_order(order, lengths, 32, 1, 1)  # a pure function: a resumed epoch matches
    assert grouped != grouped_order(order, lengths, 32, 1, 2)
    assert _padded(grouped, lengths, 32) < 0.7 * _padded(order, lengths, 32)
    # the short last batch stays last, so every batch before it is a full, length-sorted unit
    assert grouped[-(1000 % 32):] == sorted(grouped[-(1000 % 32):], key=lambda i: -lengths[i])
    firsts = [lengths[grouped[k]] for k in range(0, 960, 32)]
    assert firsts != sorted(firsts, reverse=True)  # the batches are shuffled, not longest-first
    with pytest.raises(ValueError, match="unit"):
        grouped_order(order, lengths, 0, 1, 1)



def _learning_rates(sched, steps):
    rates = []
    for _ in range(steps):
        rates.append(sched.get_last_lr()[0])
        sched.optimizer.step()
        sched.step()
    return rates


@pytest.mark.parametrize(("total", "ratio"), [(10, 0.0), (10, 0.1), (37, 0.25), (7, 1.0), (1, 0.5)])
def test_schedule_is_transformers_linear_warmup_one_step_ahead(total, ratio):
    """The warm-up/decay numbers, pinned against transformers' schedule; its own starts at 0 instead."""
    from transformers import get_linear_schedule_with_warmup

    def optimizer():
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=3e-5)

    ours = _learning_rates(make_scheduler(optimizer(), total, ratio), total + 2)
    warmup = int(round(total * ratio))
    theirs = _learning_rates(get_linear_schedule_with_warmup(optimizer(), warmup + 1, total + 1), total + 3)
    assert ours == theirs[1:]
    assert ours[0] == pytest.approx(3e-5 / (warmup + 1), rel=1e-12) and ours[total:] == [0.0, 0.0]
    if warmup:
        assert get_linear_schedule_with_warmup(optimizer(), warmup, total).get_last_lr()[0] == 0.0


def test_resume_continues_bit_for_bit(tmp_path, tiny_model_dir):
    full = run_trial(trial(tmp_path / "full", tiny_model_dir))
    assert len(full.history) == 2 and not full.diverged

    part_dir = tmp_path / "part"
    first = run_trial(trial(part_dir, tiny_model_dir), on_epoch_end=lambda m, c: True)  # "killed" after epoch 1
    assert first.stopped_early and len(first.history) == 1
    ckpt = latest_checkpoint(part_dir / "checkpoints")
    assert ckpt is not None and ckpt.name == "epoch_001"
    resumed = run_trial(trial(part_dir, tiny_model_dir), resume_from=ckpt)

    # train loss, dev accuracy and w of both epochs, exactly (wall time aside)
    assert _untimed(resumed.history) == _untimed(full.history)
    assert full.metrics["w_1"] != pytest.approx(0.5)  # w moved, so its restoring mattered
    a = load_file(full.checkpoint / "model.safetensors")
    b = load_file(resumed.checkpoint / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa = torch.load(full.checkpoint / "train_state.pt", weights_only=True)
    sb = torch.load(resumed.checkpoint / "train_state.pt", weights_only=True)
    assert torch.equal(sa["method"]["base"]["table"], sb["method"]["base"]["table"])
    assert torch.equal(sa["rng"]["torch"], sb["rng"]["torch"])


def test_grouped_batches_train_and_resume_bit_for_bit(tmp_path, tiny_model_dir):
    method = {"name": "pgd", "adv_steps": 2}
    full = run_trial(trial(tmp_path / "full", tiny_model_dir, method, group_by_length=True))
    plain = run_trial(trial(tmp_path / "plain", tiny_model_dir, method))
    assert _untimed(full.history) != _untimed(plain.history)  # other batches, so another run
    part_dir = tmp_path / "part"
    run_trial(trial(part_dir, tiny_model_dir, method, group_by_length=True), on_epoch_end=lambda m, c: True)
    resumed = run_trial(trial(part_dir, tiny_model_dir, method, group_by_length=True),
                        resume_from=latest_checkpoint(part_dir / "checkpoints"))
    assert _untimed(resumed.history) == _untimed(full.history)


@pytest.mark.parametrize("method", [
    {"name": "infobert", "adv_steps": 2},  # its critic: trained by the loop's optimiser, in the method's state
    {"name": "smart"},  # its momentum anchor, updated at the start of each step
    {"name": "flooding", "accordance_every": 1},  # auto b: its loss EMA and accordance readings
], ids=lambda m: m["name"])
def test_method_state_resumes_bit_for_bit(tmp_path, tiny_model_dir, method):
    full = run_trial(trial(tmp_path / "full", tiny_model_dir, method))
    part_dir = tmp_path / "part"
    run_trial(trial(part_dir, tiny_model_dir, method), on_epoch_end=lambda m, c: True)
    resumed = run_trial(trial(part_dir, tiny_model_dir, method), resume_from=latest_checkpoint(part_dir / "checkpoints"))
    assert _untimed(resumed.history) == _untimed(full.history)
    a = load_file(full.checkpoint / "model.safetensors")
    b = load_file(resumed.checkpoint / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa = torch.load(full.checkpoint / "train_state.pt", weights_only=True)["method"]
    sb = torch.load(resumed.checkpoint / "train_state.pt", weights_only=True)["method"]
    flat_a, flat_b = _flat(sa), _flat(sb)
    assert flat_a and flat_a.keys() == flat_b.keys()
    assert all(torch.equal(flat_a[k], flat_b[k]) if isinstance(flat_a[k], torch.Tensor) else flat_a[k] == flat_b[k]
               for k in flat_a)
    if method["name"] == "flooding":  # the auto-b bookkeeping was carried across the resume
        assert {"loss_ema", "first_accordance", "last_accordance"} <= flat_a.keys()


def _flat(state, prefix=""):
    out = {}
    for k, v in state.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _untimed(history):
    return [{k: v for k, v in m.items() if k != "epoch_time_s"} for m in history]


def test_checkpoint_is_a_loadable_hf_model_and_old_ones_are_pruned(tmp_path, tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    result = run_trial(trial(tmp_path, tiny_model_dir, epochs=3, keep_checkpoints=2))
    names = [p.name for p in list_checkpoints(tmp_path / "checkpoints")]
    assert names == ["epoch_002", "epoch_003"]
    model = AutoModelForSequenceClassification.from_pretrained(result.checkpoint)
    weights = load_file(result.checkpoint / "model.safetensors")
    assert torch.equal(model.classifier.weight, weights["classifier.weight"])
    meta = json.loads((result.checkpoint / "distat_meta.json").read_text())
    assert meta["method"] == "adaptive_tavat" and meta["epoch"] == 3
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "checkpoints").iterdir())


def test_nan_loss_is_reported_as_diverged_not_raised(tmp_path, tiny_model_dir):
    cfg = trial(tmp_path, tiny_model_dir, method={"name": "pgd", "adv_lr": 1e38, "adv_steps": 2})
    result = run_trial(cfg)
    assert result.diverged
    assert result.metrics["diverged"] == 1.0
    assert result.history == []


def test_divergence_keeps_last_good_epoch(tmp_path, tiny_model_dir):
    calls = []
    models = []

    def poison_after_first_epoch(metrics, ckpt):
        calls.append(metrics)
        for p in models[0].parameters():  # the next step's loss is NaN
            p.data.fill_(float("nan"))

    result = run_trial(trial(tmp_path, tiny_model_dir, method={"name": "standard"}),
                       on_start=lambda info: models.append(info["model"]), on_epoch_end=poison_after_first_epoch)
    assert result.diverged and len(calls) == 1
    assert result.metrics["epoch"] == 1.0 and result.metrics["diverged"] == 1.0
    assert 0.0 <= result.metrics["clean_acc"] <= 1.0


def test_resume_with_another_backbone_is_refused(tmp_path, tiny_model_dir):
    run_trial(trial(tmp_path, tiny_model_dir, epochs=1))
    ckpt = latest_checkpoint(tmp_path / "checkpoints")
    other = parse_trial_config({**trial(tmp_path, tiny_model_dir).model_dump(), "model": {"backbone": "default"}})
    with pytest.raises(ModelError, match="backbone"):
        run_trial(other, resume_from=ckpt)


@pytest.mark.slow
def test_minilm_on_300_sst2_rows_beats_majority_class(tmp_path):
    cfg = parse_trial_config({
        "seed": 13,
        "data": {"path": str(shared_data_dir() / "sst2"), "max_train_examples": 300, "max_length": 64},
        "model": {"backbone": "default"},
        "method": {"name": "pgd", "adv_steps": 2, "adv_lr": 0.03},
        "train": {"epochs": 1, "batch_size": 16, "lr": 3e-4},
        "output_dir": str(tmp_path),
    })
    result = run_trial(cfg)
    labels = [int(line.rsplit("\t", 1)[1]) for line in
              (shared_data_dir() / "sst2" / "dev.tsv").read_text().splitlines()[1:]]
    majority = max(labels.count(0), labels.count(1)) / len(labels)
    assert result.metrics["clean_acc"] > majority + 0.05, (result.metrics, majority)


def _write_meta(folder, config) -> None:
    folder.mkdir(parents=True)
    (folder / "distat_meta.json").write_text(json.dumps({"epoch": 1, "config": config}))


@pytest.mark.parametrize(("method", "label"), [("pgd", "pgd"), ("adaptive", "adaptive_freelb")])
def test_checkpoint_config_reads_a_flat_method_section_of_older_distat(tmp_path, method, label):
    """Checkpoints written before per-method settings hold every method's knobs in ``method`` (unused ones at
    their defaults): they are read back with the knobs the method has, and nothing else is lost."""
    from distat.training import checkpoint_config

    flat = {"name": method, "base": "freelb" if method == "adaptive" else None, "adv_steps": 4, "adv_lr": 0.07,
            "init_mag": 0.05, "max_norm": 0.0, "norm_type": "l2", "trades_beta": 6.0, "beta": None, "w_lr": 1.0,
            "w_init": "uniform", "mix_type": "tmix", "mix_alpha": 2.0, "mix_layers": None, "mix_weight": 1.0}
    _write_meta(tmp_path / "old", {"seed": 5, "method": flat, "output_dir": str(tmp_path)})
    cfg = checkpoint_config(tmp_path / "old")
    assert cfg.method.label == label and cfg.seed == 5
    assert (cfg.method.adv_steps, cfg.method.adv_lr) == (4, 0.07)
    assert not hasattr(cfg.method, "mix_alpha")


def test_checkpoint_config_with_a_bad_saved_config_is_one_line(tmp_path):
    from distat.training import checkpoint_config

    _write_meta(tmp_path / "bad", {"method": {"name": "pgd", "adv_steps": 0}})
    with pytest.raises(ModelError, match=r"distat_meta.json: method.adv_steps: ") as err:
        checkpoint_config(tmp_path / "bad")
    assert "\n" not in str(err.value)
    _write_meta(tmp_path / "none", {"method": {"name": "no_such_method"}})
    with pytest.raises(ModelError, match="unknown method 'no_such_method'"):
        checkpoint_config(tmp_path / "none")
