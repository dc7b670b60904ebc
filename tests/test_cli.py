"""The ``distat`` command: one-line errors with exit 2, metrics printed, work never overwritten."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from distat.cli import main

from helpers import shared_data_dir


def write_config(tmp_path, backbone, **top):
    cfg = {
        "seed": 3,
        "data": {"path": str(shared_data_dir() / "sst2"), "max_train_examples": 24, "max_dev_examples": 16,
                 "max_length": 32},
        "model": {"backbone": str(backbone)},
        "method": {"name": "fgm"},
        "train": {"epochs": 1, "batch_size": 8},
        "output_dir": str(tmp_path / "out"),
        **top,
    }
    path = tmp_path / "trial.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_prints_metrics_and_writes_them(tmp_path, tiny_model_dir, capsys):
    cfg = write_config(tmp_path, tiny_model_dir)
    assert main(["train", str(cfg), "-q", "--set", "method.adv_lr=0.1"]) == 0
    out = capsys.readouterr().out
    assert "clean_acc" in out and "fgm" in out
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["final"]["epoch"] == 1 and 0 <= saved["final"]["clean_acc"] <= 1
    assert saved["history"][0]["adv_loss"] > 0


def test_existing_checkpoints_are_not_overwritten_without_asking(tmp_path, tiny_model_dir, capsys):
    cfg = write_config(tmp_path, tiny_model_dir)
    assert main(["train", str(cfg), "-q"]) == 0
    ckpt = tmp_path / "out" / "checkpoints" / "epoch_001" / "model.safetensors"
    before = ckpt.stat().st_mtime_ns
    capsys.readouterr()
    assert main(["train", str(cfg), "-q"]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and err.count("\n") == 1
    assert ckpt.stat().st_mtime_ns == before
    assert main(["train", str(cfg), "-q", "--resume"]) == 0  # already finished: nothing to redo
    assert ckpt.stat().st_mtime_ns == before


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda c: c.update(methd={"name": "pgd"}), "methd: unknown key"),
        (lambda c: c["method"].update(name="pgdd"), "unknown method 'pgdd'"),
        (lambda c: c["method"].update(adv_steps=0), "method.adv_steps"),
        (lambda c: c["train"].update(epochs="two"), "train.epochs"),
        (lambda c: c["data"].update(path="/nonexistent/data"), "/nonexistent/data"),
        (lambda c: c["model"].update(backbone="/nonexistent/model"), "/nonexistent/model"),
        (lambda c: c["data"].update(train_split="nope"), "nope"),
    ],
)
def test_bad_config_is_one_line_exit_2(tmp_path, tiny_model_dir, capsys, mutate, needle):
    path = write_config(tmp_path, tiny_model_dir)
    cfg = yaml.safe_load(path.read_text())
    mutate(cfg)
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("distat: error: ") and err.count("\n") == 1, err
    assert needle in err
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_malformed_yaml_and_missing_file_through_the_real_entry_point(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: {name: pgd\n")
    for arg, needle in [(bad, "invalid YAML"), (tmp_path / "missing.yaml", "no such file")]:
        proc = subprocess.run([sys.executable, "-m", "distat.cli", "train", str(arg)], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 2
        assert "Traceback" not in proc.stderr and needle in proc.stderr
        assert proc.stderr.strip().count("\n") == 0, proc.stderr
