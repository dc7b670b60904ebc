"""A real search: 4 tiny trials, 2 at a time, on a local Ray; MLflow runs checked on a real server;
a driver SIGKILLed mid-search and resumed."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from distat.cli import main

from faultkit import (
    MlflowServer,
    distat_cmd,
    finals,
    kill_group,
    optuna_history,
    pid_alive,
    start_driver,
    starts,
    trial_pids,
    wait_for,
)
from helpers import free_port, search_yaml

REPO = Path(__file__).resolve().parents[1]




@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` process on 127.0.0.1 with its own SQLite store."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    yield server.uri
    server.stop()


def test_search_runs_trials_and_logs_parent_and_children(tmp_path, tiny_model_dir, attack_paths, mlflow_server,
                                                        capsys):
    from mlflow.tracking import MlflowClient

    spec = search_yaml(tmp_path, tiny_model_dir, "tiny4")
    storage = tmp_path / "searches"
    assert main(["search", str(spec), "--storage", str(storage), "--tracking-uri", mlflow_server]) == 0
    out = capsys.readouterr().out
    assert "Pareto front" in out and "mlflow ui" in out
    assert "hypervolume (reference 0, 0) after each trial: " in out

    search_dir = storage / "tiny4"
    finals = [json.loads(p.read_text()) for p in search_dir.glob("trials/*/final.json")]
    assert len(finals) == 4
    for f in finals:
        assert 0 <= f["metrics"]["clean_acc"] <= 1 and 0 <= f["metrics"]["robust_acc"] <= 1
        assert f["params"]["method"] in ("pgd", "adaptive_pgd")
        assert ("w_lr" in f["params"]) == (f["params"]["method"] == "adaptive_pgd")
        # where it ran, on this GPU-less machine: the CPU, no GPU assigned by Ray (benchmarks/gpu_smoke.py
        # checks the same records on a GPU)
        assert [(w["device"], w["gpu_ids"]) for w in f["placement"]["train_workers"]] == [("cpu", [])]
        assert f["placement"]["attack_actors"] and all((a["device"], a["gpu_ids"]) == ("cpu", [])
                                                       for a in f["placement"]["attack_actors"])
    assert {p.name for p in (search_dir / "pareto").iterdir()} >= {"pareto.csv", "pareto.png", "pareto.html",
                                                                   "hypervolume_history.csv", "hypervolume_history.png",
                                                                   "hypervolume_history.html"}
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
    finals_by_id = {f["trial_id"]: f for f in finals}
    for c in children:
        assert "robust_acc" in c.data.metrics and "clean_acc" in c.data.metrics
        assert "method" in c.data.params and c.info.status == "FINISHED"
        history = client.get_metric_history(c.info.run_id, "train_loss")
        assert len(history) == 2  # one point per epoch
        # the whole trial config, not only the searched params, and a name that reads without a lookup table
        trial_id = c.data.tags["distat.trial_id"]
        label = finals_by_id[trial_id]["params"]["method"]
        assert c.info.run_name == f"{label} {trial_id}"
        assert c.data.params["trial.method.name"] == ("adaptive" if label.startswith("adaptive") else label)
        assert c.data.params["trial.train.epochs"] == "2" and c.data.params["trial.seed"]
        assert c.data.params["trial.output_dir"].endswith(trial_id)
        assert c.data.tags["distat.threat_spec_hash"] == finals_by_id[trial_id]["metrics"]["threat_spec_hash"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"pareto.csv", "pareto.png", "pareto.html", "search_config.yaml", "hypervolume_history.csv",
            "hypervolume_history.html"} <= artifacts
    # the hypervolume after each finished trial, one step each (logged as trials finished, completed at the end),
    # never decreasing, and the history of the front on disk
    from distat.search.driver import trial_points
    from distat.search.space import clean_floor, load_search_config
    from distat.tracking.pareto import hypervolume_history

    scfg = load_search_config(spec)
    metric = sorted(client.get_metric_history(parent.info.run_id, "hypervolume"), key=lambda m: m.step)
    expected = hypervolume_history(trial_points(search_dir, clean_floor(scfg), scfg))
    assert [m.step for m in metric] == [1, 2, 3, 4]
    assert [m.value for m in metric] == pytest.approx(expected)
    assert all(a <= b for a, b in zip(expected, expected[1:], strict=False))
    assert metric[0].timestamp < 1000 * max(f["finished_at"] for f in finals)  # live: before the last trial ended
    # the parent run: the validated search config (flattened and as YAML) and the package versions
    assert parent.data.params["search.name"] == "tiny4" and parent.data.params["search.search.num_samples"] == "4"
    assert parent.data.params["package.torch"].startswith("2.") and parent.data.params["package.distat"] != "-"
    saved = yaml.safe_load(client.download_artifacts(parent.info.run_id, "search_config.yaml", str(tmp_path)) and
                           (tmp_path / "search_config.yaml").read_text())
    assert saved["name"] == "tiny4" and saved["params"]["method"]["choice"] == ["pgd", "adaptive_pgd"]

    # the front can be printed again from the results on disk
    assert main(["pareto", str(search_dir)]) == 0
    assert "Pareto front" in capsys.readouterr().out

    # `distat extend` on the finished search: one more trial in the same study, every earlier one kept once
    before = {p.parent.name: p.stat().st_mtime_ns for p in search_dir.glob("trials/*/final.json")}
    assert main(["extend", str(search_dir), "--trials", "1", "--tracking-uri", mlflow_server]) == 0
    out = capsys.readouterr().out
    assert "Pareto front" in out and "of 5 trials" in out
    after = {p.parent.name: p.stat().st_mtime_ns for p in search_dir.glob("trials/*/final.json")}
    assert len(after) == 5 and {k: after[k] for k in before} == before  # the earlier trials were not re-run
    history = optuna_history(search_dir)  # the same study, grown by one complete trial
    assert [t["state"] for t in history] == ["COMPLETE"] * 5
    assert json.loads((search_dir / "distat_search.json").read_text())["search"]["search"]["num_samples"] == 5
    runs = client.search_runs([exp.experiment_id])
    assert len([r for r in runs if "mlflow.parentRunId" not in r.data.tags]) == 1  # the same parent run
    assert sorted(r.data.tags["distat.trial_id"] for r in runs if "mlflow.parentRunId" in r.data.tags) == sorted(after)
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    front = (search_dir / "pareto" / "pareto.csv").read_text()
    assert all(trial_id in front for trial_id in after)  # the front's table was rewritten with every trial

    # a new search warm-started from this one: every finished trial fits its space and its threat model (the
    # spec hash it plans equals the one the trials recorded), so the new study starts with all 5 of them
    warm = search_yaml(tmp_path, tiny_model_dir, "tiny4w", num_samples=1,
                       updates={"search": {"warm_start": str(search_dir)}})
    assert main(["search", str(warm), "--storage", str(storage), "--tracking-uri", mlflow_server]) == 0
    err = capsys.readouterr().err
    assert f"warm start from {search_dir}: 5 of 5 finished trial(s) used" in err, err
    history = optuna_history(storage / "tiny4w")
    assert [t["state"] for t in history] == ["COMPLETE"] * 6
    assert sorted(t["user_attrs"]["warm_start"] for t in history[:5]) == sorted(str(search_dir / "trials" / t)
                                                                                for t in after)
    assert "warm_start" not in history[5]["user_attrs"]  # the new search's own trial
    new_parent = [r for r in client.search_runs([client.get_experiment_by_name("tiny4w").experiment_id])
                  if "mlflow.parentRunId" not in r.data.tags][0]
    assert new_parent.data.tags["distat.warm_start.source"] == str(search_dir)


def test_without_actors_each_trial_attacks_in_its_train_worker(tmp_path, tiny_model_dir, attack_paths, capsys):
    """attack.actors 0: the rank-0 Train worker attacks its own model right after training, and the result is
    the evaluation an ordinary in-process attack of the trial's checkpoint gives."""
    from distat import resources
    from distat.search.evaluation import robust_eval
    from distat.search.space import load_search_config
    from distat.search.state import ResourceRefs

    spec = search_yaml(tmp_path, tiny_model_dir, "noactors", num_samples=2,
                       updates={"attack": {"actors": 0, "n": 4}, "search": {"max_concurrent": 1}})
    storage = tmp_path / "searches"
    assert main(["search", str(spec), "--storage", str(storage), "--tracking-uri",
                 f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 0
    assert "rank-0 Train worker" in capsys.readouterr().err
    search_dir = storage / "noactors"
    done = finals(search_dir)
    assert len(done) == 2
    # one trial at a time: the second ran in the first one's Tune trainable process (reuse_actors)
    assert len({f["placement"]["trainable_pid"] for f in done.values()}) == 1
    scfg = load_search_config(spec)
    for trial_id, final in done.items():
        trial_dir = search_dir / "trials" / trial_id
        where = final["placement"]["attack_in_train_worker"]
        assert where["pid"] == starts(trial_dir)[-1]["pid"]  # the worker that trained attacked
        assert final["metrics"]["time_attack_s"] > 0
        checkpoint = Path(json.loads((trial_dir / "train_result.json").read_text())["checkpoint"])
        (tmp_path / trial_id).mkdir()
        again = robust_eval(scfg, ResourceRefs(cache_dir=str(resources.cache_dir())), checkpoint, tmp_path / trial_id)
        for key in ("robust_acc", "attack_success_rate", "attack_clean_acc", "avg_queries"):
            assert final["metrics"][key] == pytest.approx(again[key]), key
        # the threat-model spec came back from the worker with the metrics (train_result.json), the same spec
        spec_file = json.loads((trial_dir / "threat_spec.json").read_text())
        assert final["metrics"]["threat_spec_hash"] == again["threat_spec_hash"] == spec_file["threat_spec_hash"]
        assert (trial_dir / "attack.csv").read_text() == (tmp_path / trial_id / "attack.csv").read_text()


def amda_yaml(tmp_path: Path, backbone: Path, name: str, num_samples: int) -> Path:
    return search_yaml(tmp_path, backbone, name, num_samples, updates={
        "seed": 4,
        "trial": {"seed": 4, "data": {"max_train_examples": 300},
                  "train": {"epochs": 1}, "augment": {"recipe": "pwws", "actors": 1, "max_modify_rate": 0.3}},
        "attack": {"n": 4, "static": True},
    }, params={"aug_ratio": {"choice": [0.1, 0.2]}, "mix_type": {"choice": ["tmix", "smix"]}},
        method={"name": "mixup", "mix_alpha": 2.0})


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

    # the test stage of an AMDA search scores each model on the victim's attack of the test subset too
    assert main(["evaluate", str(storage / "amda1"), "--n", "4", "-q"]) == 0
    tested = [json.loads(p.read_text())["metrics"] for p in (storage / "amda1").glob("trials/*/test/metrics.json")]
    assert tested and all(0 <= m["test_static_robust_acc"] <= 1 and 0 <= m["test_robust_acc"] <= 1 for m in tested)
    assert len([p for p in cache.glob("static-*") if p.suffix != ".lock"]) == 2  # the test subset's static set


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


def _newest_epoch(trial_dir: Path) -> int:
    epochs = [int(p.name.removeprefix("epoch_")) for p in (trial_dir / "checkpoints").glob("epoch_*")]
    return max(epochs, default=0)


@pytest.mark.slow
def test_driver_sigkill_then_extend_keeps_finished_trials_and_grows_the_study(tmp_path, tiny_model_dir, attack_paths,
                                                                            ray_nodes):
    """The driver of a search on a running cluster is SIGKILLed at a random moment after the first trial
    finished; `distat extend --trials 1` on the same cluster continues it as `distat resume` would and adds a
    trial: finished trials kept as they were, none run twice, in-flight trials resumed from their newest distat
    checkpoint, Optuna's history whole and one longer. (`distat resume` itself: the Ctrl-C test.)"""
    import random

    from mlflow.tracking import MlflowClient

    spec = search_yaml(tmp_path, tiny_model_dir, "killed")
    storage = tmp_path / "searches"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    search_dir = storage / "killed"
    log = tmp_path / "driver.log"
    driver = start_driver(["search", str(spec), "--address", ray_nodes.address, "--storage", str(storage),
                           "--tracking-uri", uri], tmp_path, ray_nodes.env(), log)
    wait_for(lambda: finals(search_dir), 600, "the first finished trial", alive=driver)
    time.sleep(random.uniform(0, 5))  # a random moment after the first trial finished
    kill_group(driver)
    # the cluster lives on; Ray ends the dead driver's job, its trials' workers and actors with it
    wait_for(lambda: not any(pid_alive(p) for p in trial_pids(search_dir)), 120, "the killed job's processes to end")

    finished = {p.parent.name: p.stat().st_mtime_ns for p in search_dir.glob("trials/*/final.json")}
    in_flight = {t.name: _newest_epoch(t) for t in search_dir.glob("trials/*") if t.name not in finished}
    in_flight_ckpts = {p: p.stat().st_mtime_ns for p in search_dir.glob("trials/*/checkpoints/epoch_*")
                       if p.parent.parent.name in in_flight}
    assert finished and len(finished) < 4, log.read_text()[-3000:]

    extended = subprocess.run(distat_cmd("extend", str(search_dir), "--trials", "1", "--address", ray_nodes.address),
                              cwd=tmp_path, env=ray_nodes.env(), capture_output=True, text=True, timeout=900)
    assert extended.returncode == 0, extended.stderr[-3000:]
    assert "Pareto front" in extended.stdout and "5 planned" in extended.stderr + extended.stdout

    done = finals(search_dir)
    assert len(done) == 5  # the trial budget, grown by one, is respected: no extra, none lost
    assert len([p for p in (search_dir / "trials").iterdir() if p.is_dir()]) == 5  # no duplicate trial ids
    for trial_id, mtime in finished.items():
        assert (search_dir / "trials" / trial_id / "final.json").stat().st_mtime_ns == mtime  # not re-run
    # trials started after Tune's last snapshot are unknown to the restored search: their folders are set
    # aside (and new trials run in their place); none of them had finished
    orphans = {p.name for p in (search_dir / "orphaned_trials").glob("*")}
    assert orphans <= set(in_flight) and not any((search_dir / "orphaned_trials" / o / "final.json").exists()
                                                 for o in orphans)
    for trial_id, epoch in in_flight.items():
        if trial_id not in orphans and epoch:
            # its training went on from the newest checkpoint on disk, whatever Tune's snapshot recorded
            assert starts(search_dir / "trials" / trial_id)[-1]["resume_epoch"] == epoch
    for ckpt, mtime in in_flight_ckpts.items():
        if ckpt.parent.parent.name not in orphans:
            assert ckpt.stat().st_mtime_ns == mtime  # nothing before the newest checkpoint was trained again

    # Optuna's history (Tune's searcher snapshot): exactly the 5 finished trials, with their results
    history = optuna_history(search_dir)
    assert [t["state"] for t in history] == ["COMPLETE"] * 5, history
    told = sorted((json.dumps(t["params"], sort_keys=True), tuple(t["values"])) for t in history)
    on_disk = sorted((json.dumps(f["params"], sort_keys=True), (f["metrics"]["clean_acc"], f["metrics"]["robust_acc"]))
                     for f in done.values())
    assert told == on_disk

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("killed").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(runs) - len(children) == 1  # the parent run reused, not duplicated
    kept = [c for c in children if c.info.status == "FINISHED"]
    assert sorted(c.data.tags["distat.trial_id"] for c in kept) == sorted(done)  # one finished run per trial
    stray = {c.data.tags["distat.trial_id"]: c for c in children if c not in kept}
    # a stray run belongs to a trial that never finished: set aside, or started by Tune (its MLflow run
    # opened) before its trial folder existed when the driver died
    assert not set(stray) & set(done) and all(c.info.status == "KILLED" and "distat.stray" in c.data.tags
                                          for c in stray.values())


@pytest.mark.slow
def test_ctrl_c_stops_the_search_with_exit_130_and_a_resume_hint(tmp_path, tiny_model_dir, attack_paths, ray_nodes):
    """Tune catches SIGINT itself, saves its state and returns as if the search were over: distat must still
    say it was interrupted (exit 130, the resume command), not print a front of a half-done search."""
    import signal

    spec = search_yaml(tmp_path, tiny_model_dir, "stopped", num_samples=2)
    search_dir = tmp_path / "searches" / "stopped"
    log = tmp_path / "driver.log"
    driver = start_driver(["search", str(spec), "--address", ray_nodes.address, "--storage", str(search_dir.parent),
                           "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"], tmp_path, ray_nodes.env(), log)
    try:
        wait_for(lambda: list(search_dir.glob("trials/*/train_starts.jsonl")), 300, "a trial's training",
                 alive=driver)
        driver.send_signal(signal.SIGINT)
        rc = driver.wait(timeout=180)
    finally:
        kill_group(driver)
    text = log.read_text()
    assert rc == 130, text[-3000:]
    assert f"distat resume {search_dir}" in text
    assert "Pareto front" not in text and len(finals(search_dir)) < 2

    # `distat resume` after the stop finishes the search: the trials that finished on the way are kept as they were
    stopped = {t: (search_dir / "trials" / t / "final.json").stat().st_mtime_ns for t in finals(search_dir)}
    resumed = subprocess.run(distat_cmd("resume", str(search_dir), "--address", ray_nodes.address), cwd=tmp_path,
                             env=ray_nodes.env(), capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Pareto front" in resumed.stdout and "of 2 trials" in resumed.stdout
    done = finals(search_dir)
    assert len(done) == 2 and all((search_dir / "trials" / t / "final.json").stat().st_mtime_ns == m
                                  for t, m in stopped.items())
    assert [t["state"] for t in optuna_history(search_dir)] == ["COMPLETE"] * 2


@pytest.mark.parametrize(("local", "watcher"), [(True, "0"), (False, None)])
def test_ray_settings_for_short_trials_keep_what_the_user_set(monkeypatch, local, watcher):
    """A local Ray runs no preemption watcher (a cluster keeps Train's default), the trainable shortens Train's
    poll, and every variable the user set is left alone."""
    from distat.search.cluster import ray_env_defaults, train_env_defaults

    names = ("RAY_TRAIN_V2_ENABLED", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER")
    for var in names:
        monkeypatch.delenv(var, raising=False)
    ray_env_defaults(local=local)
    train_env_defaults()
    assert os.environ["RAY_TRAIN_V2_ENABLED"] == "1"
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.5"
    assert os.environ.get("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER") == watcher

    for var, value in zip(names, ("0", "3", "1"), strict=True):
        monkeypatch.setenv(var, value)
    ray_env_defaults(local=local)
    train_env_defaults()
    assert [os.environ[var] for var in names] == ["0", "3", "1"]
