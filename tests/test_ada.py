"""ADA: the shared folder cache (built once under concurrency, stale locks taken over, crashes leave nothing
finished), content keys, nested augmentation subsets, and real generation (a tiny victim trained, PWWS run)
shared by concurrent requests and reused by a later one."""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from pathlib import Path

import pytest

from distat.attacks.metrics import AttackRecord, write_records_csv
from distat.augment.ada import (
    Generator,
    attack_here,
    augmentation,
    pool_key,
    prepare_trial,
    train_victim_here,
    victim_key,
)
from distat.augment.cache import COMPLETE, FolderCache
from distat.config import parse_trial_config
from distat.data import read_rows
from distat.methods import StandardSettings
from distat.training import load_splits

from helpers import shared_data_dir

# --------------------------------------------------------------------------------------------------
# the folder cache


def _build_slowly(root: str, counter: str, barrier_file: str) -> str:
    cache = FolderCache(root, poll=0.05)

    def build(tmp: Path) -> dict:
        with open(counter, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(1.5)
        (tmp / "data.txt").write_text("built")
        return {"by": os.getpid()}

    while not Path(barrier_file).exists():  # start both requests at the same moment
        time.sleep(0.01)
    return str(cache.get_or_build("k1", build))


def test_two_concurrent_processes_build_once(tmp_path):
    counter, barrier = tmp_path / "builds.txt", tmp_path / "go"
    ctx = mp.get_context("fork")
    with ctx.Pool(2) as pool:
        pending = [pool.apply_async(_build_slowly, (str(tmp_path / "c"), str(counter), str(barrier)))
                   for _ in range(2)]
        time.sleep(0.3)
        barrier.touch()
        paths = [p.get(timeout=60) for p in pending]
    assert paths[0] == paths[1]
    assert len(counter.read_text().splitlines()) == 1
    assert (Path(paths[0]) / "data.txt").read_text() == "built"
    assert not list((tmp_path / "c").glob("*.lock")) and not list((tmp_path / "c").glob(".k1.tmp-*"))


def test_stale_lock_of_a_dead_builder_is_taken_over(tmp_path):
    cache = FolderCache(tmp_path, stale_after=2.0, heartbeat=0.5, poll=0.05)
    lock = tmp_path / "k.lock"
    lock.mkdir()
    (lock / "heartbeat").touch()
    old = time.time() - 60
    os.utime(lock / "heartbeat", (old, old))
    path = cache.get_or_build("k", lambda tmp: (tmp / "x").write_text("1") and None, timeout=10)
    assert (path / "x").read_text() == "1" and (path / COMPLETE).is_file()


def test_a_live_builder_is_waited_for_not_raced(tmp_path):
    cache = FolderCache(tmp_path, stale_after=2.0, heartbeat=0.2, poll=0.05)
    calls = []

    def slow(tmp: Path) -> None:
        calls.append(1)
        time.sleep(3.0)  # longer than stale_after: only the heartbeat keeps the lock alive

    t = threading.Thread(target=cache.get_or_build, args=("k", slow))
    t.start()
    time.sleep(0.3)
    cache.get_or_build("k", slow, timeout=30)
    t.join()
    assert len(calls) == 1


def test_failed_build_leaves_nothing_finished_and_releases_the_lock(tmp_path):
    cache = FolderCache(tmp_path, poll=0.05)

    def boom(tmp: Path) -> None:
        (tmp / "half").write_text("x")
        raise RuntimeError("attack crashed")

    with pytest.raises(RuntimeError):
        cache.get_or_build("k", boom)
    assert not cache.complete("k") and not (tmp_path / "k.lock").exists() and not (tmp_path / "k").exists()
    assert cache.complete("k") is False
    cache.get_or_build("k", lambda tmp: None)
    assert cache.complete("k")


# --------------------------------------------------------------------------------------------------
# keys and subsets


def _cfg(tmp_path, backbone, **augment):
    return parse_trial_config({
        "seed": 2,
        "data": {"path": str(shared_data_dir() / "sst2"), "max_train_examples": 300, "max_dev_examples": 20,
                 "max_length": 32},
        "model": {"backbone": str(backbone)},
        "method": {"name": "mixup"},
        "train": {"epochs": 1, "batch_size": 8, "lr": 2e-3},
        # a victim that learned words (a constant classifier cannot be flipped): 4 epochs at a high lr
        "augment": {"recipe": "pwws", "ratio": 0.5, "actors": 0, "victim": {"epochs": 4}, **augment},
        "output_dir": str(tmp_path / "trial"),
    })


def test_keys_follow_victim_recipe_and_pool_not_ratio(tmp_path, tiny_model_dir):
    base = _cfg(tmp_path, tiny_model_dir, pool_ratio=1.0)
    ds, train, _ = load_splits(base)
    n = len(train)

    def key(**aug):
        return pool_key(_cfg(tmp_path, tiny_model_dir, **{"pool_ratio": 1.0, **aug}), ds, n)

    assert key(ratio=0.25) == key(ratio=0.5) == key(ratio=1.0)  # one pool serves every ratio
    assert key(recipe="textfooler") != key()
    assert key(victim={"epochs": 2}) != key()
    assert key(max_modify_rate=0.1) != key()
    assert key(pool_ratio=0.5) != key()
    assert victim_key(_cfg(tmp_path, tiny_model_dir, recipe="textfooler"), ds) == victim_key(base, ds)
    # a given checkpoint: its files are the key
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"a")
    k1 = victim_key(_cfg(tmp_path, tiny_model_dir, victim={"checkpoint": str(ckpt)}), ds)
    (ckpt / "model.safetensors").write_bytes(b"ab")
    assert victim_key(_cfg(tmp_path, tiny_model_dir, victim={"checkpoint": str(ckpt)}), ds) != k1


def _record(i: int, status: str, label: int = 1, other: str | None = None) -> AttackRecord:
    adv = status == "success"
    return AttackRecord(index=i, text=f"text {i}", perturbed_text=f"adv {i}" if adv else None, other_text=other,
                        label=label, original_pred=label if status != "skipped" else 1 - label,
                        perturbed_pred=(1 - label) if adv else None, status=status, num_queries=3,
                        words_perturbed=1 if adv else 0, words_total=2)


def _pool(tmp_path: Path, records, n_pool: int) -> Path:
    import json

    folder = tmp_path / "pool"
    folder.mkdir()
    write_records_csv(records, folder / "records.csv")
    (folder / COMPLETE).write_text(json.dumps({"n_pool": n_pool}))
    return folder


def test_augmentation_is_nested_and_keeps_only_successes(tmp_path):
    statuses = ["success", "failed", "success", "skipped", "success", "success", "failed", "success"]
    pool = _pool(tmp_path, [_record(i, s, label=i % 2) for i, s in enumerate(statuses)], n_pool=8)
    quarter = augmentation(pool, 0.25, 8, pairs=False)
    half = augmentation(pool, 0.5, 8, pairs=False)
    full = augmentation(pool, 1.0, 8, pairs=False)
    assert quarter.text_a == ["adv 0"]
    assert half.text_a == ["adv 0", "adv 2"]
    assert full.text_a == ["adv 0", "adv 2", "adv 4", "adv 5", "adv 7"]
    assert full.labels == [0, 0, 0, 1, 1]  # the source rows' labels
    with pytest.raises(ValueError, match="pool has 8"):
        augmentation(pool, 1.0, 10, pairs=False)


def test_augmentation_of_sentence_pairs_keeps_the_fixed_side(tmp_path):
    pool = _pool(tmp_path, [_record(0, "success", other="premise 0"), _record(1, "failed", other="premise 1")],
                 n_pool=2)
    rows = augmentation(pool, 1.0, 2, pairs=True)
    assert rows.text_a == ["premise 0"] and rows.text_b == ["adv 0"]


# --------------------------------------------------------------------------------------------------
# real generation: a tiny victim, PWWS, shared by concurrent requests and reused


class Counting:
    def __init__(self, fn):
        self.fn, self.calls, self.lock = fn, 0, threading.Lock()

    def __call__(self, *args):
        with self.lock:
            self.calls += 1
        return self.fn(*args)


def test_generation_is_shared_then_reused_and_feeds_training(tmp_path, tiny_model_dir, attack_paths):
    cache = FolderCache(tmp_path / "ada_cache", poll=0.1)
    victim, attack = Counting(train_victim_here), Counting(attack_here)
    gen = Generator(cache, attack_paths, train_victim=victim, attack=attack)
    results: dict[float, tuple] = {}

    def trial(ratio: float) -> None:
        cfg = _cfg(tmp_path, tiny_model_dir, ratio=ratio, pool_ratio=0.2)
        out = tmp_path / f"trial_{ratio}"
        out.mkdir()
        results[ratio] = prepare_trial(cfg, out, gen)

    threads = [threading.Thread(target=trial, args=(r,)) for r in (0.1, 0.2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert victim.calls == 1 and attack.calls == 1  # two concurrent requests, one generation
    (cfg_q, info_q), (cfg_f, info_f) = results[0.1], results[0.2]
    assert info_q["ada_pool"] == info_f["ada_pool"]
    rows_q = read_rows(cfg_q.data.augment_file, "train", 2)
    rows_f = read_rows(cfg_f.data.augment_file, "train", 2)
    assert 0 < len(rows_f) and set(rows_q.text_a) <= set(rows_f.text_a)
    assert info_f["ada_examples"] == len(rows_f)

    # "a second search": a new generator over the same cache generates nothing
    again = Generator(FolderCache(tmp_path / "ada_cache"), attack_paths, train_victim=Counting(train_victim_here),
                      attack=Counting(attack_here))
    cfg2, info2 = prepare_trial(_cfg(tmp_path, tiny_model_dir, ratio=0.15, pool_ratio=0.2), tmp_path, again)
    assert again.train_victim.calls == 0 and again.attack.calls == 0 and info2["ada_pool"] == info_q["ada_pool"]

    # a different recipe is a different pool, same victim
    tf = _cfg(tmp_path, tiny_model_dir, ratio=0.05, pool_ratio=0.05, recipe="textfooler")
    prepare_trial(tf, tmp_path, again)
    assert again.train_victim.calls == 0 and again.attack.calls == 1
    assert len(list((tmp_path / "ada_cache").glob("victim-*"))) == 1
    assert len(list((tmp_path / "ada_cache").glob("ada-*"))) == 2

    # the trial trains on original ∪ adversarial rows
    from distat.training import run_trial

    starts = []
    run_trial(cfg_f, tmp_path / "train_f", on_start=starts.append)
    assert starts[0]["train_examples"] == 300 + len(rows_f)


# --------------------------------------------------------------------------------------------------
# iterative ADA: new adversarial examples of the current model after each epoch, checkpointed


def test_iterative_ada_adds_rows_each_epoch_and_resumes_exactly(tmp_path, tiny_model_dir, attack_paths):
    from safetensors.torch import load_file

    from distat.augment.ada import iterative_augmenter
    from distat.training import latest_checkpoint, run_trial

    def cfg(out: Path):
        base = _cfg(tmp_path, tiny_model_dir, ratio=0.0, iterative_n=30)
        return base.model_copy(update={"output_dir": str(out), "method": StandardSettings(),
                                       "train": base.train.model_copy(update={"epochs": 4, "batch_size": 16, "lr": 5e-3})})

    full_dir = tmp_path / "full"
    c = cfg(full_dir)
    full = run_trial(c, full_dir, augment_fn=iterative_augmenter(c, attack_paths, full_dir), augment_rows_per_epoch=30)
    added = [h["iterative_examples"] for h in full.history[:-1]]
    assert added == sorted(added) and added[-1] > 0  # rows accumulate over epochs
    assert "iterative_examples" not in full.history[-1]  # nothing is generated after the last epoch
    assert sorted(p.name for p in (full_dir / "iterative").iterdir()) == [f"epoch_00{e}.jsonl" for e in (1, 2, 3)]

    # stopped after epoch 3 (the rows added so far are in its checkpoint), then resumed: the same weights
    part_dir = tmp_path / "part"
    c2 = cfg(part_dir)
    run_trial(c2, part_dir, augment_fn=iterative_augmenter(c2, attack_paths, part_dir), augment_rows_per_epoch=30,
              on_epoch_end=lambda metrics, ckpt: metrics["epoch"] >= 3)
    ckpt = latest_checkpoint(part_dir / "checkpoints")
    assert (ckpt / "extra_rows.jsonl").is_file()
    resumed = run_trial(c2, part_dir, resume_from=ckpt, augment_fn=iterative_augmenter(c2, attack_paths, part_dir),
                        augment_rows_per_epoch=30)
    assert [h["iterative_examples"] for h in resumed.history[:-1]] == added
    a, b = load_file(full.checkpoint / "model.safetensors"), load_file(resumed.checkpoint / "model.safetensors")
    assert all(bool((a[k] == b[k]).all()) for k in a)
