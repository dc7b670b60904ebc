"""The training loop: resume equals uninterrupted, divergence is reported, checkpoints are checked."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from distat.config import parse_trial_config
from distat.errors import ModelError
from distat.training import epoch_order, latest_checkpoint, list_checkpoints, run_trial

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
