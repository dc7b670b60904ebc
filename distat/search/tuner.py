"""The search: Ray Tune + Optuna (two objectives) over trials that train on Ray Train and are then
attacked by their own actor pool; MLflow runs; restore after the driver died.

Layout of a search directory ``<storage>/<name>/`` (Tune's experiment folder, shared by all nodes):

* ``distat_search.json``: the validated search config and the tracking URI, so ``distat resume`` needs
  nothing but the folder;
* ``trials/<trial_id>/``: distat's own per-epoch checkpoints (``checkpoints/epoch_NNN``), the training
  result (``train_result.json``) and every attacked example (``attack.csv``). An in-flight trial restarts
  from its newest checkpoint found here, whatever Tune's periodic experiment snapshot recorded;
* ``pareto/``: the front as CSV, PNG and HTML (also on the MLflow parent run).

Each trial is a Tune function trainable holding no CPU (``{"cpu": 0, "memory": 64 MiB}``: Tune needs some
resource, and even 0.01 CPU per trial made 2 trials with 1-CPU workers need 2.02 CPUs on 2 cores, so they ran
one after the other): the CPUs go to its
Ray Train workers and, after training, to its attack actors, so 2 concurrent trials on 2 cores progress.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distat.atomic import write_json as _write_json
from distat.errors import DistatError

log = logging.getLogger(__name__)

STATE_FILE = "distat_search.json"
FINAL_FILE = "final.json"
STARTS_FILE = "train_starts.jsonl"
OBJECTIVES = ("clean_acc", "robust_acc")
_TRIAL_MEMORY = 64 * 1024**2  # bytes: the Tune-level trainable's whole reservation (see the module docstring)


# --------------------------------------------------------------------------------------------------
# inside a Ray Train worker


def _train_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    from distat.config import TrialConfig
    from distat.training import latest_checkpoint, run_trial

    cfg = TrialConfig.model_validate(config["trial"])
    out = Path(config["output_dir"])
    resume = latest_checkpoint(out / "checkpoints")
    rank = ray.train.get_context().get_world_rank()
    workers = _announce_worker(out, rank, resume)

    def on_epoch_end(metrics: dict[str, float], ckpt: Path | None) -> None:
        ray.train.report({**metrics, "checkpoint_dir": str(ckpt or "")})

    augment_fn, per_epoch = None, 0
    if cfg.augment is not None and cfg.augment.iterative_n > 0:
        from distat.attacks import resources
        from distat.augment.ada import iterative_augmenter

        paths = resources.resolve(Path(config["cache_dir"]), config.get("resource_overrides"))
        augment_fn, per_epoch = iterative_augmenter(cfg, paths, out), cfg.augment.iterative_n
    # the search config when rank 0 attacks here (AttackSettings.in_train_worker), textattack imported meanwhile
    search = config.get("attack_in_worker")
    if search is not None and rank == 0:
        _preload_textattack(Path(config["cache_dir"]), config.get("resource_overrides"))
    device = ray.train.torch.get_device()
    t0 = time.perf_counter()
    result = run_trial(cfg, out, resume_from=resume, on_epoch_end=on_epoch_end,
                       device=device, augment_fn=augment_fn, augment_rows_per_epoch=per_epoch)
    if rank == 0:
        summary = {"loop_s": time.perf_counter() - t0, "metrics": result.metrics, "diverged": result.diverged, "history": result.history,
                   "checkpoint": str(result.checkpoint) if result.checkpoint else None,
                   "resumed_from_epoch": workers[0]["resume_epoch"], "workers": workers}
        if search is not None and result.checkpoint and not result.diverged:
            from distat.search.space import SearchConfig

            t1 = time.perf_counter()
            summary["robust"] = _robust_eval(SearchConfig.model_validate(search), config, result.checkpoint, out,
                                             device=device)
            summary["attack_s"] = time.perf_counter() - t1
            summary["attack_where"] = {"pid": os.getpid(), "node_id": workers[0]["node_id"]}
        _write_json(out / "train_result.json", summary)


def _preload_textattack(cache: Path, overrides: dict[str, str] | None) -> None:
    """Import textattack (~6 s on these CPUs) in a background thread, overlapping the training loop."""
    import threading

    from distat.attacks import resources

    def run() -> None:
        try:
            resources.import_textattack(resources.resolve(cache, overrides).wordnet)
        except Exception as e:  # noqa: BLE001 - the evaluation imports it again and reports what fails
            log.debug("textattack preload failed: %s", e)

    threading.Thread(target=run, name="distat-preload-textattack", daemon=True).start()


def _announce_worker(out: Path, rank: int, resume: Path | None) -> list[dict[str, Any]]:
    """Record where this Ray Train worker runs and what it resumes from: one line per worker start appended
    to ``train_starts.jsonl`` (a worker group restarted after a failure adds lines). Returns every rank's
    record of this start, gathered over ``torch.distributed`` when there are several workers."""
    import ray
    import torch.distributed as dist

    from distat.training import CHECKPOINT_PREFIX

    info = {"rank": rank, "pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id(),
            "resume_epoch": int(resume.name.removeprefix(CHECKPOINT_PREFIX)) if resume is not None else 0,
            "time": time.time()}
    with open(out / STARTS_FILE, "a") as f:
        f.write(json.dumps(info) + "\n")
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, info)
        return gathered
    return [info]


# --------------------------------------------------------------------------------------------------
# the Tune trainable: train on Ray Train, then attack with the actor pool


def _trial(config: dict[str, Any], spec: dict[str, Any]) -> None:
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from distat.search.space import SearchConfig, apply_params, param_names

    scfg = SearchConfig.model_validate(spec["search"])
    trial_id = tune.get_context().get_trial_id()
    out = Path(spec["search_dir"]) / "trials" / trial_id
    out.mkdir(parents=True, exist_ok=True)
    if (out / FINAL_FILE).is_file():
        # finished before the driver died, after Tune's last (periodic) snapshot: restored as unfinished, the
        # trial reports its result again instead of training and attacking twice
        tune.report(json.loads((out / FINAL_FILE).read_text())["metrics"])
        return
    params = {k: config[k] for k in param_names(scfg) if k in config}
    tcfg = apply_params(scfg, params, str(out))
    ada: dict[str, Any] = {}
    t_ada = 0.0
    if tcfg.augment is not None and tcfg.augment.ratio > 0:
        from distat.augment.ada import prepare_trial

        t0 = time.perf_counter()
        tcfg, ada = prepare_trial(tcfg, out, _generator(spec, scfg))
        t_ada = time.perf_counter() - t0  # the victim and the pool: built, waited for, or read from the cache
    res = scfg.resources
    per_worker = {"CPU": res.cpus_per_worker}
    if res.use_gpu:
        per_worker["GPU"] = res.gpus_per_worker or 1
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"trial": tcfg.model_dump(mode="json"), "output_dir": str(out),
                           "cache_dir": spec["cache_dir"], "resource_overrides": spec.get("resource_overrides"),
                           "attack_in_worker": spec["search"] if scfg.attack.in_train_worker else None},
        scaling_config=ray.train.ScalingConfig(num_workers=res.num_workers, use_gpu=res.use_gpu,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            name=f"train_{trial_id}", storage_path=str(out / "ray_train"),
            callbacks=[TuneReportCallback()], failure_config=ray.train.FailureConfig(max_failures=2),
        ),
    )
    fit_started = time.time()
    _train_env_defaults()
    trainer.fit()
    fit_ended = time.time()
    t_fit = fit_ended - fit_started
    summary = json.loads((out / "train_result.json").read_text())
    train_metrics = {k: v for k, v in summary["metrics"].items() if isinstance(v, (int, float))}
    # the final report repeats only what the per-epoch reports lack (plus the clean objective itself)
    final: dict[str, Any] = {"clean_acc": float(train_metrics.get("clean_acc", 0.0)),
                             "epoch": float(train_metrics.get("epoch", 0.0)),
                             "diverged": float(train_metrics.get("diverged", 0.0)), "phase": "final",
                             "trial_dir": str(out)}
    if "ada_examples" in ada:
        final["ada_examples"] = ada["ada_examples"]
    # where the trial ran ("where did my trial run?"): its Train workers (every start, restarts included)
    # and its attack actors, by Ray node id
    placement: dict[str, Any] = {"trainable_pid": os.getpid(), "train_workers": summary.get("workers", []),
                                 "train_starts": _starts(out)}
    if summary["diverged"] or not summary["checkpoint"]:
        final.update({"diverged": 1.0, "robust_acc": 0.0, "clean_acc": float(train_metrics.get("clean_acc", 0.0))})
    elif "robust" in summary:  # attacked in the rank-0 Train worker
        final.update(summary["robust"])
        final["time_attack_s"] = float(summary["attack_s"])
        placement["attack_in_train_worker"] = summary["attack_where"]
    else:
        t_eval = time.perf_counter()
        final.update(_robust_eval(scfg, spec, Path(summary["checkpoint"]), out, where=placement))
        final["time_attack_s"] = time.perf_counter() - t_eval
    final["time_train_s"] = t_fit
    if ada:
        final["time_ada_s"] = t_ada
    final["time_train_loop_s"] = float(summary.get("loop_s", 0.0))
    _write_json(out / FINAL_FILE, {"trial_id": trial_id, "params": params, "metrics": final,
                                   "train": train_metrics, "ada_pool": ada.get("ada_pool"),
                                   "train_wall": [fit_started, fit_ended], "placement": placement})
    tune.report(final)


def ray_env_defaults(local: bool) -> None:
    """Environment for the Ray a search runs on, set before ``ray.init`` unless the user set it: Ray Train V2
    (the Train-in-Tune integration the tuner uses). ``local``: a Ray started here, which its workers inherit
    this environment from; one machine, with no node to be drained, so Train's preemption watcher (one more
    actor process per trial, ~1 s of CPU) is off. A cluster's workers do not see this environment, and a
    cluster may gain (spot) nodes later: Train keeps its default there."""
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if local:
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def _train_env_defaults() -> None:
    """Ray Train's controller polls its workers every ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` (2 s): a finished
    training function was noticed, and the worker group shut down, ~3 s after it returned; 0.5 s takes ~1 s.
    Set in the trainable, before ``fit()`` (Train passes it on to its controller), unless the user set it."""
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


def _starts(out: Path) -> list[dict[str, Any]]:
    """Every Train worker start of a trial, oldest first (see :func:`_announce_worker`)."""
    path = out / STARTS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _robust_eval(scfg: Any, spec: dict[str, Any], checkpoint: Path, out: Path,
                 where: dict[str, Any] | None = None, device: Any = None) -> dict[str, float]:
    """Robust metrics of ``checkpoint`` on the search's attacked dev subset; every attacked example goes to
    ``out/attack.csv``. With attack actors, ``out/attack_progress.json`` follows the evaluation (examples
    done, the actors' nodes and pids, actors replaced) and ``where`` receives the same at the end. Without
    actors the model is attacked in this process, on ``device`` (default CPU)."""
    from distat.attacks import resources
    from distat.attacks.evaluate import robust_evaluate, select_examples
    from distat.attacks.metrics import summarize as summarize_records
    from distat.attacks.metrics import write_records_csv
    from distat.attacks.runner import AttackJob
    from distat.config import TrialConfig
    from distat.data import load_dataset
    from distat.models import load_classifier, load_tokenizer

    tcfg = TrialConfig.model_validate(json.loads((checkpoint / "distat_meta.json").read_text())["config"])
    att = scfg.attack
    t0 = time.perf_counter()
    ds_all = None
    if att.static:
        from distat.training import load_splits

        ds_all, _, _ = load_splits(tcfg)  # the train/dev splits: the fingerprint the ADA victim's key uses
    if ds_all is not None and att.split in ds_all.splits:
        ds = ds_all  # read once
    else:
        ds = load_dataset(tcfg.data.path, splits=[att.split], text_fields=tcfg.data.text_fields)
    examples = select_examples(ds.split(att.split), att.n, seed=scfg.seed)
    model = load_classifier(checkpoint, ds.num_labels, tcfg.model.trust_remote_code).eval()
    if device is not None and att.actors == 0:
        model = model.to(device)
    tokenizer = load_tokenizer(checkpoint, tcfg.model.trust_remote_code)
    paths = resources.resolve(Path(spec["cache_dir"]), spec.get("resource_overrides"))
    job = AttackJob(recipe=att.recipe, resources=paths, options=att.options.to_options(),
                    text_fields=ds.text_fields, max_length=tcfg.data.max_length, seed=scfg.seed)
    log.info("robust evaluation set up in %.1f s", time.perf_counter() - t0)
    stats: dict[str, Any] = {}

    def progress(done: int, total: int) -> None:
        _write_json(out / "attack_progress.json", {"done": done, "total": total, **stats})

    metrics, records = robust_evaluate(model, tokenizer, examples, job, actors=att.actors,
                                       cpus_per_actor=att.cpus_per_actor, gpus_per_actor=att.gpus_per_actor,
                                       progress=progress if att.actors > 0 else None, pool_stats=stats)
    if where is not None:
        where.update(stats)
    write_records_csv(records, out / "attack.csv")
    robust = metrics.as_dict()
    if ds_all is not None:
        from distat.augment.ada import static_accuracy

        static = _generator(spec, scfg).static_set(tcfg, ds_all, examples, job)
        robust["static_robust_acc"] = static_accuracy(model, tokenizer, static, max_length=tcfg.data.max_length)
        robust["victim_robust_acc"] = summarize_records(static).robust_acc
    # the attacked subset's own clean accuracy is kept apart: clean_acc stays the full dev accuracy
    robust["attack_clean_acc"] = robust.pop("clean_acc")
    for key in ("clean_acc_lo", "clean_acc_hi"):
        robust[f"attack_{key}"] = robust.pop(key)
    return robust


def _generator(spec: dict[str, Any], scfg: Any) -> Any:
    """ADA generation for a trial: the cache is ``<storage>/ada_cache`` (shared by every search there and
    every node), victims train as a Ray task with one trial worker's resources, attacks use actors."""
    from distat.attacks import resources
    from distat.augment.ada import Generator
    from distat.augment.cache import FolderCache

    paths = resources.resolve(Path(spec["cache_dir"]), spec.get("resource_overrides"))
    cache = FolderCache(Path(spec["search_dir"]).parent / "ada_cache")
    return Generator(cache, paths, train_victim=_victim_on_ray(scfg.resources.model_dump()))


def _victim_task(config: dict[str, Any], out: str) -> str:
    from distat.augment.ada import train_victim_here
    from distat.config import TrialConfig

    return str(train_victim_here(TrialConfig.model_validate(config), Path(out)))


class _victim_on_ray:  # noqa: N801 - a callable standing in for a function
    def __init__(self, res: dict[str, Any]) -> None:
        self.res = res

    def __call__(self, vcfg: Any, out: Path) -> Path:
        import ray

        gpus = (self.res.get("gpus_per_worker") or 1) if self.res.get("use_gpu") else 0
        task = ray.remote(_victim_task).options(num_cpus=self.res["cpus_per_worker"], num_gpus=gpus,
                                                scheduling_strategy="DEFAULT", max_retries=1)
        return Path(ray.get(task.remote(vcfg.model_dump(mode="json"), str(out))))


# --------------------------------------------------------------------------------------------------
# the driver


@dataclass
class SearchPaths:
    storage: Path
    name: str

    @property
    def search_dir(self) -> Path:
        return self.storage / self.name


def _trainable(spec: dict[str, Any]) -> Any:
    from ray import tune

    # per-epoch reports carry clean accuracy only; robust accuracy comes with the final report, which is
    # the one Optuna sees (Tune passes no intermediate results to it)
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"

    return tune.with_resources(tune.with_parameters(_trial, spec=spec), {"cpu": 0, "memory": _TRIAL_MEMORY})


class _Space:
    """A picklable define-by-run space (the searcher's state, this included, is pickled in snapshots)."""

    def __init__(self, scfg: Any) -> None:
        self.data = scfg.model_dump(mode="json", by_alias=True)
        self._fn: Any = None

    def __call__(self, trial: Any) -> Any:
        if self._fn is None:
            from distat.search.space import SearchConfig, define_by_run

            self._fn = define_by_run(SearchConfig.model_validate(self.data))
        return self._fn(trial)

    def __getstate__(self) -> dict[str, Any]:
        return {"data": self.data, "_fn": None}


def _searcher(scfg: Any, points_to_evaluate: list[dict[str, Any]] | None = None) -> Any:
    from distat.search.searcher import build_searcher

    return build_searcher(_Space(scfg), list(OBJECTIVES), seed=scfg.seed, clean_acc_floor=scfg.search.clean_acc_floor,
                          points_to_evaluate=points_to_evaluate)


def _run_config(scfg: Any, paths: SearchPaths, tracking_uri: str, callbacks: list[Any]) -> Any:
    from ray import tune

    from distat.search.leaks import LeakSweeper
    from distat.tracking.mlflow import MLflowTrialCallback

    return tune.RunConfig(
        name=paths.name, storage_path=str(paths.storage.resolve()),
        callbacks=[MLflowTrialCallback(tracking_uri, scfg.name, paths.search_dir, uri_file=paths.search_dir / STATE_FILE),
                   LeakSweeper(), *callbacks],
        failure_config=tune.FailureConfig(max_failures=1), verbose=0,
    )


def start_search(scfg: Any, *, storage: Path, tracking_uri: str, cache_dir: Path,
                 resource_overrides: dict[str, str] | None = None, callbacks: list[Any] = (),
                 points_to_evaluate: list[dict[str, Any]] | None = None) -> Any:
    """Run a new search to completion; returns Tune's ResultGrid. ``points_to_evaluate``: parameter values
    (by search-space name) to try first, e.g. known-good settings or a benchmark's fixed configurations."""
    paths = SearchPaths(storage=storage.resolve(), name=scfg.name)
    check_new_search(paths.search_dir)
    paths.search_dir.mkdir(parents=True, exist_ok=True)
    spec = {"search": scfg.model_dump(mode="json", by_alias=True), "search_dir": str(paths.search_dir),
            "cache_dir": str(cache_dir), "resource_overrides": resource_overrides or {},
            "tracking_uri": tracking_uri}
    _write_json(paths.search_dir / STATE_FILE, spec)
    return _fit_new(scfg, spec, paths, callbacks, points_to_evaluate)


def _fit_new(scfg: Any, spec: dict[str, Any], paths: SearchPaths, callbacks: Any = (),
             points_to_evaluate: list[dict[str, Any]] | None = None) -> Any:
    from ray import tune

    tuner = tune.Tuner(
        _trainable(spec),
        # reuse_actors: the next trial runs in the finished trial's trainable process (~2.5 s per trial less:
        # a fresh process imports Ray Tune/Train first); it holds no CPU, only the trial's bookkeeping
        tune_config=tune.TuneConfig(search_alg=_searcher(scfg, points_to_evaluate), num_samples=scfg.search.num_samples,
                                    max_concurrent_trials=scfg.search.max_concurrent, reuse_actors=True),
        run_config=_run_config(scfg, paths, spec["tracking_uri"], list(callbacks)),
    )
    return tuner.fit()


def check_new_search(search_dir: Path) -> None:
    """Refuse to start a search where one already is (before Ray, MLflow or any folder is touched)."""
    if (search_dir / STATE_FILE).exists():
        raise DistatError(f"{search_dir} already holds a search: `distat resume {search_dir}` "
                          "continues it, or pick another name / --storage")
    if search_dir.exists() and not search_dir.is_dir():
        raise DistatError(f"{search_dir} is a file, not a search folder: pick another name / --storage")


def load_state(search_dir: Path) -> tuple[dict[str, Any], Any]:
    """The spec saved at the start of a search and its validated config."""
    from pydantic import ValidationError

    from distat.search.space import SearchConfig

    state = search_dir / STATE_FILE
    if not state.is_file():
        raise DistatError(f"{search_dir}: not a distat search directory (no {STATE_FILE})")
    try:
        spec = json.loads(state.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DistatError(f"{state}: unreadable search state ({type(e).__name__}: {str(e).splitlines()[0][:200]})") \
            from None
    missing = [k for k in ("search", "tracking_uri", "cache_dir") if not isinstance(spec, dict) or k not in spec]
    if missing:
        raise DistatError(f"{state}: not a distat search state (missing {', '.join(missing)})")
    try:
        return spec, SearchConfig.model_validate(spec["search"])
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<top level>"
        raise DistatError(f"{state}: search: {where}: {first['msg']} (written by another distat version?)") from None


def update_state(search_dir: Path, /, **changes: Any) -> dict[str, Any]:
    """Rewrite keys of the saved spec (``distat resume --tracking-uri/--cache-dir``); returns the new spec."""
    spec, _ = load_state(search_dir)
    changed = {k: v for k, v in changes.items() if v is not None and spec.get(k) != v}
    if changed:
        spec.update(changed)
        _write_json(search_dir / STATE_FILE, spec)
    return spec


def resume_plan(search_dir: Path) -> str:
    """``"restore"`` when Tune saved its experiment state (``Tuner.restore`` continues it), ``"restart"`` when
    the driver died before that: the search then starts afresh in the same folder (:func:`resume_search`)."""
    from ray import tune

    return "restore" if tune.Tuner.can_restore(str(search_dir)) else "restart"


def discard_unfinished_trials(search_dir: Path) -> list[str]:
    """Remove trial folders without a final result (a search restarted from nothing re-runs them anyway);
    returns their names. Finished trials are kept."""
    import shutil

    trials = search_dir / "trials"
    removed = []
    if trials.is_dir():
        for folder in sorted(trials.iterdir()):
            if folder.is_dir() and not (folder / FINAL_FILE).is_file():
                shutil.rmtree(folder)
                removed.append(folder.name)
    return removed


def resume_search(search_dir: Path, callbacks: list[Any] = (),
                  on_restart: Callable[[list[str]], None] | None = None) -> Any:
    """Restore a search from its directory after the driver stopped (even SIGKILL) and run it to the end.

    Completed trials are kept (not re-run); the Optuna searcher's state comes back from Tune's experiment
    snapshot; unfinished and errored trials restart, and their training resumes from the newest distat
    checkpoint in their trial folder; MLflow child runs are found again by tag. The snapshot also holds the
    run config with its callbacks (the MLflow one comes back empty, reads the tracking URI from
    ``distat_search.json`` and finds its runs by tag).

    If the driver died before Tune saved anything (see :func:`resume_plan`), the search starts afresh in
    place with the saved spec, after its unfinished trial folders are removed (``on_restart`` gets their
    names); ``callbacks`` are used then only (a restored run keeps its own).
    """
    from ray import tune

    spec, scfg = load_state(search_dir)
    if resume_plan(search_dir) == "restart":
        gone = discard_unfinished_trials(search_dir)
        if on_restart is not None:
            on_restart(gone)
        spec = update_state(search_dir, search_dir=str(search_dir))
        return _fit_new(scfg, spec, SearchPaths(storage=search_dir.parent, name=search_dir.name), callbacks)
    set_aside_unknown_trials(search_dir)
    tuner = tune.Tuner.restore(str(search_dir), trainable=_trainable(spec), resume_unfinished=True,
                               resume_errored=True)
    return tuner.fit()


def snapshot_trial_ids(search_dir: Path) -> set[str] | None:
    """The trial ids in Tune's newest experiment snapshot (the one ``Tuner.restore`` loads); None if unreadable."""
    snaps = sorted(search_dir.glob("experiment_state-*.json"), key=lambda p: p.name)  # Tune takes the max name
    if not snaps:
        return None
    try:
        ids = set()
        for entry in json.loads(snaps[-1].read_text())["trial_data"]:
            ids.add(json.loads(entry[0] if isinstance(entry, list) else entry)["trial_id"])
        return ids
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def set_aside_unknown_trials(search_dir: Path) -> list[str]:
    """Move trial folders of trials Tune's last snapshot does not hold to ``orphaned_trials/``; returns their ids.

    Tune snapshots its experiment every 10 s or more: a trial started in the seconds before the driver died is
    not in it, so the restored search never runs that trial id again (the searcher suggests a new trial in
    its place). Its folder would be an extra, unfinished trial in ``trials/``; it is kept aside instead.
    """
    import shutil

    known = snapshot_trial_ids(search_dir)
    trials = search_dir / "trials"
    if known is None or not trials.is_dir():
        return []
    moved = []
    for folder in sorted(p for p in trials.iterdir() if p.is_dir() and p.name not in known):
        target = search_dir / "orphaned_trials" / folder.name
        target.parent.mkdir(exist_ok=True)
        shutil.move(str(folder), str(target))
        moved.append(folder.name)
        log.warning("trial %s started after Tune's last snapshot of the search and is not in it: its folder is moved "
                    "to %s%s", folder.name, target,
                    "" if not (target / FINAL_FILE).is_file() else " (it had finished: its result is not counted)")
    return moved


# --------------------------------------------------------------------------------------------------
# what a trial needs from the cluster


def trial_needs(scfg: Any) -> dict[str, tuple[float, str]]:
    """The most of each Ray resource (``CPU``, ``GPU``) one trial holds at once, with the phase that needs it.

    A trial's phases run one after the other (ADA generation, training on Ray Train workers, the attack
    actors), so the need is the largest phase, not their sum.
    """
    res, att = scfg.resources, scfg.attack
    phases = [(f"training: {res.num_workers} worker(s) x {_num(res.cpus_per_worker)} CPU"
               + (f" + {_num(res.gpus)} GPU" if res.gpus else ""),
               {"CPU": res.num_workers * res.cpus_per_worker, "GPU": res.num_workers * res.gpus})]
    if att.actors > 0:
        phases.append((f"attack: {att.actors} actor(s) x {_num(att.cpus_per_actor)} CPU"
                       + (f" + {_num(att.gpus_per_actor)} GPU" if att.gpus_per_actor else ""),
                       {"CPU": att.actors * att.cpus_per_actor, "GPU": att.actors * att.gpus_per_actor}))
    aug = scfg.base_trial().augment
    if aug is not None and aug.actors > 0:
        phases.append((f"ADA generation: {aug.actors} actor(s) x 1 CPU"
                       + (f" + {_num(aug.gpus_per_actor)} GPU" if aug.gpus_per_actor else ""),
                       {"CPU": float(aug.actors), "GPU": aug.actors * aug.gpus_per_actor}))
    needs: dict[str, tuple[float, str]] = {}
    for label, amounts in phases:
        for key, amount in amounts.items():
            if amount > needs.get(key, (0.0, ""))[0]:
                needs[key] = (float(amount), label)
    return needs


def resource_shortfall(needs: dict[str, tuple[float, str]], have: dict[str, float]) -> str | None:
    """The first resource a trial needs more of than the cluster has, as one line; None if it fits."""
    for key in ("GPU", "CPU", *sorted(set(needs) - {"GPU", "CPU"})):
        if key not in needs:
            continue
        amount, phase = needs[key]
        available = float(have.get(key, 0.0))
        if amount > available + 1e-9:
            return (f"a trial needs {_num(amount)} {key} ({phase}) but the Ray cluster has {_num(available)}: "
                    "lower resources/attack in the search YAML or use a bigger cluster")
    return None


def cluster_capacity() -> dict[str, float] | None:
    """What the connected Ray cluster can offer: its current resources, raised to the autoscaler's maximum
    when the autoscaler publishes one; None when an autoscaler of unknown reach runs (nodes may still come)."""
    import ray

    have = {k: float(v) for k, v in ray.cluster_resources().items()}
    try:
        from ray._private.state import state

        upper = state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001 - private API: without it, judge by the current nodes
        upper = None
    if upper:
        return {k: max(have.get(k, 0.0), float(upper.get(k, 0.0))) for k in set(have) | set(upper)}
    if _autoscaler_v1_running():
        return None
    return have


def _autoscaler_v1_running() -> bool:
    try:
        from ray._private import ray_constants
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        return bool(raw) and "autoscaler_report" in json.loads(raw)
    except Exception:  # noqa: BLE001 - cannot tell: assume nodes may come rather than refuse a good search
        return True


def check_cluster_fits(scfg: Any, wait_s: float = 0.0) -> None:
    """Fail with one line when one trial needs more CPUs/GPUs than the Ray cluster has (or can scale to).

    ``wait_s``: on an existing cluster, nodes may still be joining; look again for this long before failing.
    """
    needs = trial_needs(scfg)
    deadline = time.monotonic() + wait_s
    while True:
        have = cluster_capacity()
        problem = None if have is None else resource_shortfall(needs, have)
        if problem is None:
            if have is None:
                log.info("an autoscaler manages this cluster: not checking per-trial resources up front")
            return
        if time.monotonic() >= deadline:
            raise DistatError(problem)
        time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def finished_trials(search_dir: Path) -> dict[str, dict[str, Any]]:
    """trial id -> its ``final.json`` (params, metrics, timings, placement), for every finished trial."""
    return {p.parent.name: json.loads(p.read_text()) for p in sorted((search_dir / "trials").glob(f"*/{FINAL_FILE}"))}


def trial_points(search_dir: Path, clean_acc_floor: float | None = None) -> list[Any]:
    """One :class:`~distat.tracking.pareto.TrialPoint` per finished trial, read from the search directory
    (complete on disk whatever happened to the driver or the tracking server). Trials below
    ``clean_acc_floor`` are marked infeasible (kept in the table, off the front)."""
    from distat.tracking.pareto import TrialPoint

    points = []
    for data in finished_trials(search_dir).values():
        m = data["metrics"]
        extra = {k: float(v) for k, v in m.items()
                 if k.startswith(("attack_", "perturbed", "avg_queries", "robust_acc_", "static_", "victim_", "ada_"))
                 and isinstance(v, (int, float))}
        points.append(TrialPoint(trial_id=data["trial_id"], clean_acc=float(m.get("clean_acc", math.nan)),
                                 robust_acc=float(m.get("robust_acc", math.nan)), params=data["params"],
                                 diverged=bool(m.get("diverged", 0.0)), extra=extra,
                                 infeasible=clean_acc_floor is not None
                                 and not float(m.get("clean_acc", 0.0)) >= clean_acc_floor))
    return points


def finish_search(scfg: Any, search_dir: Path, tracking_uri: str) -> tuple[list[Any], dict[str, Path]]:
    """Pareto artifacts into ``search_dir/pareto`` and onto the MLflow parent run. A tracking server lost by
    now costs the parent run its artifacts (one warning), not the search: the front is on disk."""
    from distat.tracking.mlflow import Tracker, redact
    from distat.tracking.pareto import write_artifacts

    points = trial_points(search_dir, scfg.search.clean_acc_floor)
    files = write_artifacts(points, search_dir / "pareto")
    try:
        tracker = Tracker(tracking_uri, scfg.name, search_dir)
        tracker.close_stray_children({p.trial_id for p in points})
        tracker.log_artifacts(tracker.parent_id, search_dir / "pareto")
        tracker.finish(tracker.parent_id)
    except Exception as e:  # noqa: BLE001 - any tracking failure: the results stay on disk
        log.warning("the Pareto front was not logged to MLflow (%s: %s); it is in %s", type(e).__name__,
                    redact(str(e).splitlines()[0] if str(e) else ""), search_dir / "pareto")
    return points, files
