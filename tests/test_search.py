"""A real search: 4 tiny trials, 2 at a time, on a local Ray; MLflow runs checked on a real server;
a driver SIGKILLed mid-search and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from distat.cli import main

from helpers import free_port, shared_data_dir

REPO = Path(__file__).resolve().parents[1]




@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` process on 127.0.0.1 with its own SQLite store."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'server.db'}", "--artifacts-destination", str(root / "art"),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not start")
    yield uri
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def search_yaml(tmp_path: Path, backbone: Path, name: str, num_samples: int = 4) -> Path:
    cfg = {
        "name": name,
        "seed": 3,
        "trial": {
            "seed": 3,
            "data": {"path": str(shared_data_dir() / "sst2"), "max_train_examples": 48, "max_dev_examples": 24,
                     "max_length": 32},
            "model": {"backbone": str(backbone)},
            "method": {"name": "pgd", "adv_steps": 1},
            "train": {"epochs": 2, "batch_size": 16, "lr": 1e-3},
        },
        "attack": {"recipe": "pwws", "n": 3, "split": "dev", "actors": 1},
        "search": {"num_samples": num_samples, "max_concurrent": 2},
        "resources": {"num_workers": 1, "cpus_per_worker": 1},
        "params": {
            "method": {"choice": ["pgd", "adaptive_pgd"]},
            "adv_lr": {"loguniform": [0.01, 0.1]},
            "w_lr": {"choice": [0.1, 1.0], "when": {"method": ["adaptive_pgd"]}},
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_search_runs_trials_and_logs_parent_and_children(tmp_path, tiny_model_dir, attack_paths, mlflow_server,
                                                        capsys):
    from mlflow.tracking import MlflowClient

    spec = search_yaml(tmp_path, tiny_model_dir, "tiny4")
    storage = tmp_path / "searches"
    assert main(["search", str(spec), "--storage", str(storage), "--tracking-uri", mlflow_server]) == 0
    out = capsys.readouterr().out
    assert "Pareto front" in out and "mlflow ui" in out

    search_dir = storage / "tiny4"
    finals = [json.loads(p.read_text()) for p in search_dir.glob("trials/*/final.json")]
    assert len(finals) == 4
    for f in finals:
        assert 0 <= f["metrics"]["clean_acc"] <= 1 and 0 <= f["metrics"]["robust_acc"] <= 1
        assert f["params"]["method"] in ("pgd", "adaptive_pgd")
        assert ("w_lr" in f["params"]) == (f["params"]["method"] == "adaptive_pgd")
    assert {p.name for p in (search_dir / "pareto").iterdir()} >= {"pareto.csv", "pareto.png", "pareto.html"}
    # 2 concurrent trials on 2 cores really train at the same time (the Tune trainable holds no CPU)
    walls = sorted(f["train_wall"] for f in finals)
    assert any(b[0] < a[1] for a, b in zip(walls, walls[1:], strict=False)), walls

    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("tiny4")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert {c.data.tags["distat.trial_id"] for c in children} == {f["trial_id"] for f in finals}
    for c in children:
        assert "robust_acc" in c.data.metrics and "clean_acc" in c.data.metrics
        assert "method" in c.data.params and c.info.status == "FINISHED"
        history = client.get_metric_history(c.info.run_id, "train_loss")
        assert len(history) == 2  # one point per epoch
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"pareto.csv", "pareto.png", "pareto.html"} <= artifacts

    # the front can be printed again from the results on disk
    assert main(["pareto", str(search_dir)]) == 0
    assert "Pareto front" in capsys.readouterr().out


def amda_yaml(tmp_path: Path, backbone: Path, name: str, num_samples: int) -> Path:
    cfg = {
        "name": name,
        "seed": 4,
        "trial": {
            "seed": 4,
            "data": {"path": str(shared_data_dir() / "sst2"), "max_train_examples": 300, "max_dev_examples": 24,
                     "max_length": 32},
            "model": {"backbone": str(backbone)},
            "method": {"name": "mixup", "mix_alpha": 2.0},
            "train": {"epochs": 1, "batch_size": 16, "lr": 1e-3},
            "augment": {"recipe": "pwws", "actors": 1, "max_modify_rate": 0.3},
        },
        "attack": {"recipe": "pwws", "n": 4, "split": "dev", "actors": 1, "static": True},
        "search": {"num_samples": num_samples, "max_concurrent": 2},
        "resources": {"num_workers": 1, "cpus_per_worker": 1},
        "params": {"aug_ratio": {"choice": [0.1, 0.2]}, "mix_type": {"choice": ["tmix", "smix"]}},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_amda_trials_share_one_pool_and_a_later_search_reuses_it(tmp_path, tiny_model_dir, attack_paths):
    storage = tmp_path / "searches"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = amda_yaml(tmp_path, tiny_model_dir, "amda1", num_samples=2)
    assert main(["search", str(spec), "--storage", str(storage), "--tracking-uri", uri]) == 0
    cache = storage / "ada_cache"
    victims, pools, statics = (sorted(p for p in cache.glob(f"{kind}-*") if p.suffix != ".lock")
                               for kind in ("victim", "ada", "static"))
    assert len(victims) == 1 and len(pools) == 1 and len(statics) == 1  # generated once for both trials
    finals = [json.loads(p.read_text()) for p in (storage / "amda1").glob("trials/*/final.json")]
    assert len(finals) == 2
    for f in finals:
        m = f["metrics"]
        assert f["ada_pool"] == pools[0].name and m["ada_examples"] >= 0
        assert 0 <= m["static_robust_acc"] <= 1 and 0 <= m["victim_robust_acc"] <= 1 and 0 <= m["robust_acc"] <= 1
        trial_dir = Path(m["trial_dir"])
        rows = (trial_dir / "augment.jsonl").read_text().splitlines()
        assert len(rows) == m["ada_examples"]
    stamps = {p: (p / "COMPLETE").stat().st_mtime_ns for p in (*victims, *pools, *statics)}

    # a second search in the same storage: nothing generated again
    spec2 = amda_yaml(tmp_path, tiny_model_dir, "amda2", num_samples=1)
    assert main(["search", str(spec2), "--storage", str(storage), "--tracking-uri", uri]) == 0
    assert sorted(p for p in cache.iterdir() if not p.name.startswith(".")) == sorted(stamps)
    assert {p: (p / "COMPLETE").stat().st_mtime_ns for p in stamps} == stamps
    final2 = next((storage / "amda2").glob("trials/*/final.json"))
    assert json.loads(final2.read_text())["ada_pool"] == pools[0].name


def test_unreachable_tracking_server_fails_before_any_training(tmp_path, tiny_model_dir, attack_paths, capsys):
    spec = search_yaml(tmp_path, tiny_model_dir, "nowhere")
    port = free_port()
    code = main(["search", str(spec), "--storage", str(tmp_path / "s"), "--tracking-uri", f"http://127.0.0.1:{port}"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "unreachable" in err[-1] and not (tmp_path / "s" / "nowhere" / "trials").exists()


def test_bad_search_yaml_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nparams: {adv_lr: {loguniform: [0, 1]}}\n")
    assert main(["search", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "params.adv_lr" in err


def _stop_stray_ray() -> None:
    """A SIGKILLed driver leaves the local Ray it started running; stop it as a user would."""
    subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"], capture_output=True, timeout=120)


@pytest.mark.slow
def test_driver_sigkill_then_resume_keeps_finished_trials(tmp_path, tiny_model_dir, attack_paths):
    import random

    from mlflow.tracking import MlflowClient

    spec = search_yaml(tmp_path, tiny_model_dir, "killed")
    storage = tmp_path / "searches"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cli = [sys.executable, "-m", "distat.cli"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    driver = subprocess.Popen([*cli, "search", str(spec), "--storage", str(storage), "--tracking-uri", uri],
                              cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    search_dir = storage / "killed"
    deadline = time.time() + 600
    while time.time() < deadline and not list(search_dir.glob("trials/*/final.json")):
        assert driver.poll() is None, "the search ended before it could be killed"
        time.sleep(0.5)
    time.sleep(random.uniform(0, 5))  # a random moment after the first trial finished
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    _stop_stray_ray()

    finished = {p.parent.name: p.stat().st_mtime_ns for p in search_dir.glob("trials/*/final.json")}
    in_flight_ckpts = {p: p.stat().st_mtime_ns for p in search_dir.glob("trials/*/checkpoints/epoch_001")
                       if p.parent.parent.name not in finished}
    assert finished and len(finished) < 4

    resumed = subprocess.run([*cli, "resume", str(search_dir)], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Pareto front" in resumed.stdout

    finals = {p.parent.name: p for p in search_dir.glob("trials/*/final.json")}
    assert len(finals) == 4  # the trial budget is respected: no extra, none lost
    assert len([p for p in (search_dir / "trials").iterdir() if p.is_dir()]) == 4  # no duplicate trial ids
    for trial_id, mtime in finished.items():
        assert finals[trial_id].stat().st_mtime_ns == mtime  # finished trials were not re-run
    for ckpt, mtime in in_flight_ckpts.items():
        assert ckpt.stat().st_mtime_ns == mtime  # in-flight trials resumed after their last checkpoint

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("killed").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(runs) - len(children) == 1 and len(children) == 4  # runs reused, not duplicated
