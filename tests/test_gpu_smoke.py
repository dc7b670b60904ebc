"""The judging half of benchmarks/gpu_smoke.py, on trial records written by hand: it passes a search whose Train
workers and attack actors all ran on a Ray-assigned GPU at the same time, and names each part that did not.
(The GPU run itself needs a GPU: benchmarks/results/gpu_smoke-2026-11-30.md.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import benchmark_script


@pytest.fixture(scope="module")
def smoke():
    with benchmark_script("gpu_smoke") as module:
        yield module


def _trial(search: Path, tid: str, wall: tuple[float, float], worker: dict, actors: list[dict]) -> None:
    out = search / "trials" / tid
    out.mkdir(parents=True)
    (out / "final.json").write_text(json.dumps({
        "trial_id": tid, "params": {"method": "standard"}, "metrics": {"clean_acc": 0.8, "robust_acc": 0.2},
        "train_wall": list(wall), "placement": {"train_workers": [worker], "attack_actors": actors}}))


GPU = {"device": "cuda:0", "gpu_ids": ["0"]}
CPU = {"device": "cpu", "gpu_ids": []}


def test_a_search_all_on_the_gpu_passes(smoke, tmp_path):
    for tid, wall in (("a", (0.0, 10.0)), ("b", (5.0, 12.0))):
        _trial(tmp_path, tid, wall, GPU, [{"device": "cuda", "gpu_ids": ["0"]}] * 2)
    checks, failed = smoke.search_checks(tmp_path)
    assert failed == [] and checks["trials_overlapped"]
    assert checks["trials"][0]["train_devices"] == ["cuda:0"] and checks["trials"][0]["actor_gpu_ids"] == [["0"]] * 2


def test_each_part_off_the_gpu_is_named(smoke, tmp_path):
    _trial(tmp_path, "a", (0.0, 10.0), CPU, [{"device": "cuda", "gpu_ids": ["0"]}] * 2)  # trained on the CPU
    _trial(tmp_path, "b", (11.0, 20.0), GPU, [{"device": "cuda", "gpu_ids": []}, GPU])  # an actor without a GPU id
    _, failed = smoke.search_checks(tmp_path)
    assert len(failed) == 3, failed
    assert "trial a: a Train worker not on cuda" in failed[0]
    assert "trial b: attack actors not 2 on cuda" in failed[1]
    assert "did not train at the same time" in failed[2]


def test_the_cpu_rehearsal_expects_no_gpu(smoke, tmp_path):
    for tid, wall in (("a", (0.0, 10.0)), ("b", (5.0, 12.0))):
        _trial(tmp_path, tid, wall, CPU, [CPU, CPU])
    assert smoke.search_checks(tmp_path, "cpu")[1] == []
    assert len(smoke.search_checks(tmp_path, "cuda")[1]) == 4  # each trial: its worker and its actors
    _trial(tmp_path, "c", (0.0, 1.0), GPU, [CPU, CPU])  # a GPU where none was asked for
    assert any("trial c" in f for f in smoke.search_checks(tmp_path, "cpu")[1])
