"""The Tune trainable: one trial = ADA (when asked) → training on Ray Train workers → robust evaluation.

Each trial is a Tune function trainable holding no CPU (``{"cpu": 0, "memory": 64 MiB}``: Tune needs some
resource, and even 0.01 CPU per trial made 2 trials with 1-CPU workers need 2.02 CPUs on 2 cores, so they ran
one after the other): the CPUs go to its Ray Train workers and, after training, to its attack actors, so 2
concurrent trials on 2 cores progress. Per-epoch reports carry clean accuracy only; robust accuracy comes
with the final report, the one Optuna sees (Tune passes no intermediate results to it).
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from distat.search.state import (
    SearchState,
    TrainResult,
    TrialResult,
    WorkerJob,
    is_finished,
    worker_starts,
)

log = logging.getLogger(__name__)

_TRIAL_MEMORY = 64 * 1024**2  # bytes: the Tune-level trainable's whole reservation (see the module docstring)


def trainable(state: SearchState) -> Any:
    """The trainable Tune runs for every trial of the search ``state`` describes."""
    from ray import tune

    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"  # robust_acc arrives with the final report only
    return tune.with_resources(tune.with_parameters(run_trial, state=state), {"cpu": 0, "memory": _TRIAL_MEMORY})


def run_trial(config: dict[str, Any], state: SearchState) -> None:
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from distat.search.cluster import train_env_defaults
    from distat.search.space import apply_params, sampled_params
    from distat.search.worker import train_worker

    scfg = state.search
    trial_id = tune.get_context().get_trial_id()
    out = state.trial_dir(trial_id)
    out.mkdir(parents=True, exist_ok=True)
    if is_finished(out):
        # finished before the driver died, after Tune's last (periodic) snapshot: restored as unfinished, the
        # trial reports its result again instead of training and attacking twice
        tune.report(TrialResult.load(out).metrics)
        return
    params = sampled_params(scfg, config)
    tcfg = apply_params(scfg, params, str(out))
    ada: dict[str, Any] = {}
    t_ada = 0.0
    # ADA's victim, pool and static set come from one generator of the search's shared cache
    gen = None
    if (tcfg.augment is not None and tcfg.augment.ratio > 0) or scfg.attack.static:
        from distat.search.ada import generator

        gen = generator(state)
    if tcfg.augment is not None and tcfg.augment.ratio > 0:
        from distat.augment.ada import prepare_trial

        t0 = time.perf_counter()
        tcfg, ada = prepare_trial(tcfg, out, gen)
        t_ada = time.perf_counter() - t0  # the victim and the pool: built, waited for, or read from the cache
    res = scfg.resources
    job = WorkerJob(trial=tcfg, output_dir=str(out), resources=state.resources,
                    attack_in_worker=scfg if scfg.attack.in_train_worker else None,
                    probe=scfg if scfg.search.early_stop is not None else None)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=job.as_loop_config(),
        scaling_config=ray.train.ScalingConfig(num_workers=res.num_workers, use_gpu=res.use_gpu,
                                               resources_per_worker=res.resources_per_worker),
        run_config=ray.train.RunConfig(
            name=f"train_{trial_id}", storage_path=str(out / "ray_train"),
            callbacks=[TuneReportCallback()], failure_config=ray.train.FailureConfig(max_failures=2),
        ),
    )
    fit_started = time.time()
    train_env_defaults()
    trainer.fit()
    fit_ended = time.time()
    if scfg.search.early_stop is not None:
        from distat.search.probe import stopped_at

        rung = stopped_at(out)
        if rung is not None:  # stopped at a rung: its rung result is its final one (early_stop.py)
            tune.report(_stopped_result(state, trial_id, config, out, rung))
            return
    summary = TrainResult.load(out)
    train_metrics = {k: v for k, v in summary.metrics.items() if isinstance(v, (int, float))}
    # the final report repeats only what the per-epoch reports lack (plus the clean objective itself)
    final: dict[str, Any] = {"clean_acc": float(train_metrics.get("clean_acc", 0.0)),
                             "epoch": float(train_metrics.get("epoch", 0.0)),
                             "diverged": float(train_metrics.get("diverged", 0.0)), "phase": "final",
                             "trial_dir": str(out)}
    for key in ("macro_f1", "balanced_acc", "majority_rate"):  # the clean scores of imbalanced data
        if key in train_metrics:
            final[key] = float(train_metrics[key])
    if "ada_examples" in ada:
        final["ada_examples"] = ada["ada_examples"]
    # where the trial ran ("where did my trial run?"): its Train workers (every start, restarts included)
    # and its attack actors, by Ray node id
    placement: dict[str, Any] = {"trainable_pid": os.getpid(),
                                 "train_workers": [w.model_dump() for w in summary.workers],
                                 "train_starts": [s.model_dump() for s in worker_starts(out)]}
    if summary.diverged or not summary.checkpoint:
        final.update({"diverged": 1.0, "robust_acc": 0.0})
    elif summary.robust is not None:  # attacked in the rank-0 Train worker
        final.update(summary.robust)
        final["time_attack_s"] = float(summary.attack_s or 0.0)
        placement["attack_in_train_worker"] = summary.attack_where
    else:
        from distat.search.evaluation import robust_eval

        t_eval = time.perf_counter()
        final.update(robust_eval(scfg, state.resources, Path(summary.checkpoint), out, where=placement, generator=gen,
                                 work_cache=state.work_cache))
        final["time_attack_s"] = time.perf_counter() - t_eval
    final["time_train_s"] = fit_ended - fit_started
    if ada:
        final["time_ada_s"] = t_ada
    final["time_train_loop_s"] = float(summary.loop_s)
    TrialResult(trial_id=trial_id, params=params, metrics=final, train=train_metrics, ada_pool=ada.get("ada_pool"),
                train_wall=(fit_started, fit_ended), placement=placement, finished_at=time.time()).save(out)
    tune.report(final)


def _stopped_result(state: SearchState, trial_id: str, config: dict[str, Any], out: Path, rung: int) -> dict[str, Any]:
    """The final result of a trial early stopping stopped at epoch ``rung``: the rung's clean scores (its training
    history) and probe, written as its ``final.json``."""
    from distat.search.probe import read_probe

    history = TrainResult.load(out).history
    last = {**next((h for h in history if int(h.get("epoch", 0)) == rung), history[-1]), **read_probe(out, rung)}
    return record_stopped(state, trial_id, config, last, rung)


def record_stopped(state: SearchState, trial_id: str, config: dict[str, Any], last: dict[str, Any],
                   rung: int) -> dict[str, Any]:
    """Write the final result of trial ``trial_id`` (Tune config ``config``) stopped at epoch ``rung``
    (``last``: its rung result) and return its metrics: the rung's clean scores and probe, ``early_stopped_epoch``,
    no ``robust_acc`` (the full evaluation never ran: the trial is listed apart from the front, never on it)."""
    from distat.search.space import sampled_params

    out = state.trial_dir(trial_id)
    if is_finished(out):
        return TrialResult.load(out).metrics
    numbers = {k: float(v) for k, v in last.items()
               if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))}
    keep = ("clean_acc", "macro_f1", "balanced_acc", "majority_rate", "epoch", "diverged")
    metrics: dict[str, Any] = {k: numbers[k] for k in keep if k in numbers}
    metrics.update({k: v for k, v in last.items() if str(k).startswith("probe_")})
    metrics.update({"early_stopped_epoch": float(rung), "phase": "stopped", "trial_dir": str(out)})
    starts = worker_starts(out)
    started, now = (starts[0].time if starts else time.time()), time.time()
    TrialResult(trial_id=trial_id, params=sampled_params(state.search, config), metrics=metrics,
                train={k: v for k, v in numbers.items() if not k.startswith(("time_", "probe_"))},
                train_wall=(started, now), placement={"stopped_at_rung": rung}, finished_at=now).save(out)
    log.info("early stop: trial %s stopped after epoch %d; its rung result is its final result", trial_id, rung)
    return metrics
