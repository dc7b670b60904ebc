"""Faults a search survives, each injected into real searches (`distat search --address`) on a real two-node
Ray cluster owned by the test session (the ``ray_nodes`` fixture): a Ray Train worker SIGKILLed mid-trial, an
attack actor SIGKILLed mid-evaluation, a trial whose loss goes NaN, the MLflow tracking server lost in the
middle of a search. The driver SIGKILLed mid-search is in tests/test_search.py, an MLflow server unreachable
from the start there too; benchmarks/faults.py repeats these many times."""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from faultkit import Gate, MlflowServer, drive, finals, optuna_history, starts
from helpers import free_port, search_yaml, shared_data_dir


def _drive(ray_nodes, cwd: Path, args: list[str], poll=None, timeout: float = 900) -> str:
    """Run ``distat <args>`` on the cluster as its own process group (output in ``cwd/driver.log``), calling
    ``poll()`` every 50 ms until it exits; returns its output, failing the test on a non-zero exit."""
    log = cwd / "driver.log"
    rc, _ = drive(args, cwd, ray_nodes.env(), log, poll, timeout=timeout)
    text = log.read_text()
    assert rc != -1, f"the search took over {timeout} s"
    assert rc == 0, text[-4000:]
    return text


def _search(ray_nodes, tmp: Path, spec: Path, name: str, uri: str | None = None, poll=None) -> tuple[Path, str]:
    storage = tmp / "searches"
    uri = uri or f"sqlite:///{tmp / 'mlflow.db'}"
    out = _drive(ray_nodes, tmp, ["search", str(spec), "--address", ray_nodes.address, "--storage", str(storage),
                                  "--tracking-uri", uri], poll)
    return storage / name, out


# --------------------------------------------------------------------------------------------------
# a Train worker and an attack actor SIGKILLed in one search (two trials)

EPOCHS = 3
ATTACKED = 16


@pytest.fixture(scope="module")
def faulted(tmp_path_factory, tiny_model_dir, attack_paths, ray_nodes):
    """A 2-trial search in which the first trial to write its epoch-1 checkpoint loses its Ray Train worker
    (SIGKILL, pid from the trial's ``train_starts.jsonl``) and the first trial past its first attacked shard
    loses its attack actor (SIGKILL, pid from ``attack_progress.json``)."""
    tmp = tmp_path_factory.mktemp("faulted")
    # epochs of 60 steps (~1.5 s): the kill lands in epoch 2; 16 examples in 4 shards: it lands mid-attack
    spec = search_yaml(tmp, tiny_model_dir, "faulted", num_samples=2,
                       updates={"trial": {"data": {"max_train_examples": 960}, "train": {"epochs": EPOCHS}},
                                "attack": {"n": ATTACKED}})
    search_dir = tmp / "searches" / "faulted"
    killed: dict[str, dict] = {}

    def inject() -> None:
        for trial in sorted(search_dir.glob("trials/*")):
            if "worker" not in killed and (trial / "checkpoints" / "epoch_001").is_dir() and starts(trial):
                pid = starts(trial)[-1]["pid"]
                if ray_nodes.kill(pid):
                    killed["worker"] = {"trial": trial.name, "pid": pid}
            progress = trial / "attack_progress.json"
            if "actor" not in killed and progress.is_file():
                state = json.loads(progress.read_text())
                if 0 < state["done"] < state["total"] and state["attack_actors"]:
                    pid = state["attack_actors"][0]["pid"]
                    if ray_nodes.kill(pid):
                        killed["actor"] = {"trial": trial.name, "pid": pid, "done": state["done"]}

    _, out = _search(ray_nodes, tmp, spec, "faulted", poll=inject)
    return search_dir, killed, out


@pytest.mark.slow
def test_killed_train_worker_resumes_from_its_checkpoint(faulted):
    search_dir, killed, out = faulted
    assert "worker" in killed, out[-3000:]
    trial = search_dir / "trials" / killed["worker"]["trial"]
    first, second = starts(trial)  # Ray Train's FailureConfig restarted the worker group once
    assert first["pid"] == killed["worker"]["pid"] and first["resume_epoch"] == 0
    assert second["pid"] != first["pid"] and second["resume_epoch"] >= 1  # from the newest checkpoint on disk
    result = json.loads((trial / "train_result.json").read_text())
    assert result["resumed_from_epoch"] == second["resume_epoch"]
    assert [h["epoch"] for h in result["history"]] == [1.0, 2.0, 3.0]  # epochs before it came from the checkpoint
    done = finals(search_dir)
    assert len(done) == 2  # the search completed
    final = done[trial.name]
    assert final["metrics"]["epoch"] == EPOCHS and 0 <= final["metrics"]["robust_acc"] <= 1
    assert final["placement"]["train_starts"] == [first, second]


@pytest.mark.slow
def test_killed_attack_actor_redoes_its_shard(faulted, tmp_path):
    from distat.attacks.metrics import read_records_csv
    from distat.search.evaluation import robust_eval
    from distat.search.state import SearchState

    search_dir, killed, out = faulted
    assert "actor" in killed, out[-3000:]
    trial = search_dir / "trials" / killed["actor"]["trial"]
    final = finals(search_dir)[trial.name]
    placement = final["placement"]
    assert placement["actor_restarts"] == 1
    assert killed["actor"]["pid"] not in [a["pid"] for a in placement["attack_actors"]]
    assert sum(placement["attack_nodes"].values()) == ATTACKED  # every example counted once
    records = read_records_csv(trial / "attack.csv")
    assert [r.index for r in records] == list(range(ATTACKED))

    # the same as an undisturbed evaluation of the same checkpoint: sequential, in this process
    state = SearchState.load(search_dir)
    scfg = state.search
    in_process = scfg.model_copy(update={"attack": scfg.attack.model_copy(update={"actors": 0})})
    checkpoint = Path(json.loads((trial / "train_result.json").read_text())["checkpoint"])
    expected = robust_eval(in_process, state.resources, checkpoint, tmp_path)
    assert read_records_csv(tmp_path / "attack.csv") == records
    assert {k: final["metrics"][k] for k in expected} == expected


# --------------------------------------------------------------------------------------------------
# a trial whose loss goes NaN


def test_adaptive_trial_with_nan_loss_diverges_instead_of_crashing(tmp_path, tiny_model_dir):
    """lr 1e3 overflows the tiny BERT's loss in epoch 3; adaptive AT's w-gradient is then NaN, and projecting it
    onto the simplex used to crash the trial (an errored trial, not a diverged one)."""
    from distat.config import parse_trial_config
    from distat.training import run_trial

    cfg = parse_trial_config({
        "seed": 3,
        "data": {"path": str(shared_data_dir() / "sst2"), "max_train_examples": 48, "max_dev_examples": 24,
                 "max_length": 32},
        "model": {"backbone": str(tiny_model_dir)},
        "method": {"name": "adaptive_pgd", "adv_steps": 2, "adv_lr": 1e6},
        "train": {"epochs": 3, "batch_size": 16, "lr": 1e3},
        "output_dir": str(tmp_path / "run"),
    })
    result = run_trial(cfg)
    assert result.diverged and result.metrics["diverged"] == 1.0
    assert result.metrics["epoch"] == len(result.history) >= 1  # the last good epoch's metrics
    w = [result.metrics["w_1"], result.metrics["w_2"]]
    assert min(w) >= 0 and sum(w) == pytest.approx(1.0)  # still on the simplex


@pytest.mark.slow
def test_diverged_trial_is_recorded_and_left_off_the_front(tmp_path, tiny_model_dir, attack_paths, ray_nodes):
    # with search seed 0 Optuna's first two suggestions are lr 1000 (diverges in epoch 3), then lr 0.001
    spec = search_yaml(tmp_path, tiny_model_dir, "nan", num_samples=2,
                       updates={"seed": 0, "trial": {"train": {"epochs": 3}}},
                       params={"train.lr": {"choice": [0.001, 1000.0]}})
    search_dir, out = _search(ray_nodes, tmp_path, spec, "nan")
    done = finals(search_dir)
    by_lr = {f["params"]["train.lr"]: f for f in done.values()}
    assert sorted(by_lr) == [0.001, 1000.0], "the seed no longer gives one trial of each"
    bad, good = by_lr[1000.0], by_lr[0.001]
    trial = search_dir / "trials" / bad["trial_id"]
    history = json.loads((trial / "train_result.json").read_text())["history"]
    assert bad["metrics"]["diverged"] == 1.0 and 1 <= len(history) < 3
    last_good = {k: v for k, v in history[-1].items() if k != "diverged"}
    assert {k: bad["train"][k] for k in last_good} == last_good  # recorded with its last good epoch's metrics
    assert bad["metrics"]["clean_acc"] == last_good["clean_acc"] and bad["metrics"]["epoch"] == len(history)
    assert not (trial / "attack.csv").exists()  # a diverged model is not attacked
    assert good["metrics"]["diverged"] == 0.0 and 0 <= good["metrics"]["robust_acc"] <= 1  # the search went on

    with open(search_dir / "pareto" / "pareto.csv", newline="") as fh:
        rows = {r["trial_id"]: r for r in csv.DictReader(fh)}
    assert rows[bad["trial_id"]]["on_front"] == "False" and rows[bad["trial_id"]]["diverged"] == "True"
    assert rows[good["trial_id"]]["on_front"] == "True"
    assert f"left out, diverged: {bad['trial_id']}" in out
    told = {tuple(sorted(t["params"].items())): t for t in optuna_history(search_dir)}
    assert told[(("train.lr", 1000.0),)]["user_attrs"]["diverged"] == 1.0  # Optuna knows it diverged


# --------------------------------------------------------------------------------------------------
# the MLflow tracking server lost


@pytest.mark.slow
def test_mlflow_server_lost_mid_search_then_back(tmp_path, tiny_model_dir, attack_paths, ray_nodes):
    """The server is SIGKILLed when the first trial has finished, and a server on the same store answers at
    the same address again once the second has finished, the third started and the driver found the server
    unreachable: trials go on, every result is on disk, and the logging queued meanwhile reaches MLflow when
    the server is back.

    Conditions, not durations: the address is a :class:`~faultkit.Gate` in front of the servers, and the
    second server is started (same store) before the search, so it is back the moment the gate opens on it,
    however long an MLflow server takes to start on a busy machine. (Holding the driver with SIGSTOP while a
    server starts does not work: Ray's connections to a stopped process time out, and the search hangs.)"""
    from mlflow.tracking import MlflowClient

    store = tmp_path / "mlflow"
    first = MlflowServer(store).start()
    second = MlflowServer(store).start()  # idle until the gate leads to it
    gate = Gate().open(first.port)
    spec = search_yaml(tmp_path, tiny_model_dir, "lost", num_samples=3)
    search_dir = tmp_path / "searches" / "lost"
    events: dict[str, float] = {}

    def outage() -> None:
        done = finals(search_dir)
        if "lost" not in events and done:
            gate.close()
            first.kill()
            events["lost"] = time.time()
        elif ("lost" in events and "back" not in events and len(done) >= 2
              and (len(done) == 3 or any(starts(t) for t in search_dir.glob("trials/*") if t.name not in done))
              and "is unreachable" in (tmp_path / "driver.log").read_text()):
            gate.open(second.port)
            events["back"] = time.time()

    try:
        _, out = _search(ray_nodes, tmp_path, spec, "lost", uri=gate.uri, poll=outage)
        assert set(events) == {"lost", "back"}, "the search ended before the server was back"
        done = finals(search_dir)
        assert len(done) == 3 and (search_dir / "pareto" / "pareto.csv").is_file()
        assert "is unreachable" in out and "answers again" in out and "not sent" not in out

        client = MlflowClient(tracking_uri=gate.uri)
        runs = client.search_runs([client.get_experiment_by_name("lost").experiment_id])
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert len(runs) == 4 and {c.data.tags["distat.trial_id"] for c in children} == set(done)
        for child in children:
            final = done[child.data.tags["distat.trial_id"]]
            assert child.info.status == "FINISHED" and "method" in child.data.params
            assert child.data.metrics["robust_acc"] == final["metrics"]["robust_acc"]
            assert len(client.get_metric_history(child.info.run_id, "train_loss")) == 2  # one per epoch
        parent = next(r for r in runs if r not in children)
        assert {"pareto.csv", "pareto.html"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    finally:
        gate.close()
        first.stop()
        second.stop()


@pytest.mark.slow
def test_mlflow_callback_queues_while_the_server_is_down(tmp_path, caplog):
    """The Tune callback, driven by hand: calls made while no server answers are queued (in seconds, not the
    client's minutes of retries), sent in order with their original timestamps when a server answers on that
    port, and what is still queued when the search ends is reported as dropped."""
    from mlflow.tracking import MlflowClient

    from distat.tracking.mlflow import MLflowTrialCallback

    port = free_port()
    callback = MLflowTrialCallback(f"http://127.0.0.1:{port}", "queued", tmp_path / "search")
    callback.retry_s = 0.0
    trial = SimpleNamespace(trial_id="t1", config={"method": "pgd", "adv_lr": 0.05})
    t0 = time.time()
    with caplog.at_level(logging.WARNING, logger="distat.tracking.mlflow"):
        callback.on_trial_start(0, [], trial)
        for epoch in (1, 2):
            callback.on_trial_result(0, [], trial, {"epoch": epoch, "train_loss": 1.0 / epoch, "clean_acc": 0.5})
        callback.on_trial_complete(0, [], trial)
    assert callback.pending == 4 and time.time() - t0 < 20
    assert caplog.text.count("is unreachable") == 1  # one warning for the outage, not one per call

    server = MlflowServer(tmp_path / "mlflow", port).start()
    try:
        sent_ms = int(time.time() * 1000)
        callback.on_step_begin(1, [])
        assert callback.pending == 0
        client = MlflowClient(tracking_uri=server.uri)
        run = client.search_runs([client.get_experiment_by_name("queued").experiment_id],
                                 filter_string="tags.`distat.trial_id` = 't1'")[0]
        assert run.info.status == "FINISHED" and run.data.params["adv_lr"] == "0.05"
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5)]
        assert all(m.timestamp < sent_ms for m in history)  # stamped when they happened, not when sent

        server.kill()  # lost again, for good
        other = SimpleNamespace(trial_id="t2", config={"method": "fgm"})
        callback.on_trial_start(0, [], other)
        callback.on_trial_complete(0, [], other)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="distat.tracking.mlflow"):
            callback.on_experiment_end([])
        assert "2 logging call(s) for 1 trial(s) (t2) were not sent" in caplog.text
        assert callback.pending == 0
    finally:
        server.stop()

