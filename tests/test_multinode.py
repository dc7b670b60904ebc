"""A search on a real two-node Ray cluster (head and worker node on this machine, 1 CPU each): the trials'
Ray Train workers and their attack actors ran on both nodes, as recorded in each trial's final.json."""

from __future__ import annotations

import subprocess

import pytest

from faultkit import distat_cmd, finals
from helpers import search_yaml


@pytest.mark.slow
def test_search_runs_on_both_nodes(tmp_path, tiny_model_dir, attack_paths, ray_nodes):
    spec = search_yaml(tmp_path, tiny_model_dir, "twonodes", num_samples=2)
    storage = tmp_path / "searches"
    run = subprocess.run(distat_cmd("search", str(spec), "--address", ray_nodes.address, "--storage", str(storage),
                                    "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"),
                         cwd=tmp_path, env=ray_nodes.env(), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Pareto front" in run.stdout

    done = finals(storage / "twonodes")
    assert len(done) == 2
    nodes = set(ray_nodes.node_ids.values())
    assert len(nodes) == 2
    train_nodes, attack_nodes = set(), set()
    for final in done.values():
        where = final["placement"]
        workers = where["train_workers"]
        assert [w["rank"] for w in workers] == [0] and workers[0]["node_id"] in nodes
        assert where["train_starts"] == workers  # one start: nothing failed
        assert sum(where["attack_nodes"].values()) == 3 and set(where["attack_nodes"]) <= nodes
        assert {a["node_id"] for a in where["attack_actors"]} <= set(where["attack_nodes"])
        train_nodes |= {w["node_id"] for w in workers}
        attack_nodes |= set(where["attack_nodes"])
    # 2 concurrent trials each need the 1 CPU of a node for their worker, then for their attack actor
    assert train_nodes == nodes, done
    assert attack_nodes == nodes, done
