"""The Ray actor pool: same results as a sequential run, in input order; a killed actor loses nothing."""

from __future__ import annotations

import os
import signal

import pytest

from distat.attacks.evaluate import robust_evaluate, select_examples
from distat.attacks.pool import AttackPool
from distat.attacks.runner import AttackJob, AttackRunner
from distat.data import load_dataset

from helpers import shared_data_dir


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             namespace="distat-tests")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def examples():
    split = load_dataset(shared_data_dir() / "sst2", splits=["test"]).split("test")
    return select_examples(split, 10, seed=7)


@pytest.fixture(scope="module")
def sequential(attack_paths, sst2_victim, examples):
    model, tokenizer = sst2_victim
    job = AttackJob(recipe="textbugger", resources=attack_paths, max_length=48, seed=5)
    return job, AttackRunner(job, model, tokenizer).run(examples)


def test_pool_equals_sequential_in_input_order(ray_cluster, sst2_victim, examples, sequential):
    model, tokenizer = sst2_victim
    job, expected = sequential
    assert {r.status for r in expected} >= {"success"}  # randomised transformations were exercised
    with AttackPool(job, model, tokenizer, actors=2) as pool:
        got = pool.run(examples, shard_size=2)
        assert len(set(pool.actor_pids())) == 2
    assert [r.index for r in got] == list(range(len(examples)))
    assert got == expected


def test_killed_actor_loses_no_example(ray_cluster, sst2_victim, examples, sequential):
    model, tokenizer = sst2_victim
    job, expected = sequential
    with AttackPool(job, model, tokenizer, actors=2) as pool:
        victim_pid = pool.actor_pids()[0]
        killed = []

        def kill_once(done, total):
            if not killed:
                os.kill(victim_pid, signal.SIGKILL)
                killed.append(done)

        got = pool.run(examples, progress=kill_once, shard_size=1)
        assert killed and pool.restarts >= 1
        assert victim_pid not in pool.actor_pids()
    assert got == expected  # nothing lost, nothing counted twice, same outcomes


def test_robust_evaluate_sequential_and_pooled_agree(ray_cluster, attack_paths, sst2_victim, examples):
    model, tokenizer = sst2_victim
    job = AttackJob(recipe="pwws", resources=attack_paths, max_length=48)
    seen = []
    m1, r1 = robust_evaluate(model, tokenizer, examples[:4], job, progress=lambda d, t: seen.append((d, t)))
    m2, r2 = robust_evaluate(model, tokenizer, examples[:4], job, actors=2)
    assert r1 == r2 and m1 == m2
    assert seen[-1] == (4, 4)
