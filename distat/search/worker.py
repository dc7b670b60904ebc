"""The training function of a trial's Ray Train workers (one process per worker, DDP across them).

Each worker records where it runs (:class:`~distat.search.state.WorkerStart`), resumes from the newest distat
checkpoint in the trial folder, trains with :func:`distat.training.run_trial` and reports every epoch to Tune.
Rank 0 writes the trial's :class:`~distat.search.state.TrainResult`; without attack actors it also attacks
its own model right after training, on the CPUs/GPU the trial already holds (textattack is imported in a
background thread meanwhile).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from distat.search.state import (
    TRIALS_DIR,
    WORK_CACHE_DIR,
    ResourceRefs,
    TrainResult,
    WorkerJob,
    WorkerStart,
    record_start,
)

log = logging.getLogger(__name__)


def train_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    from distat.training import latest_checkpoint, run_trial

    job = WorkerJob.from_loop_config(config)
    cfg, out = job.trial, Path(job.output_dir)
    resume = latest_checkpoint(out / "checkpoints")
    rank = ray.train.get_context().get_world_rank()
    workers = _announce(out, rank, resume)

    probe = job.probe if rank == 0 else None
    rungs = set(probe.search.early_stop.rungs) if probe is not None and probe.search.early_stop else set()

    def on_epoch_end(metrics: dict[str, float], ckpt: Path | None) -> None:
        report = {**metrics, "checkpoint_dir": str(ckpt or "")}
        if probe is not None and ckpt is not None and int(metrics.get("epoch", 0)) in rungs \
                and not metrics.get("diverged"):
            from distat.search.probe import run_probe

            t_probe = time.perf_counter()  # the other ranks wait in report() meanwhile
            report.update(run_probe(probe, job.resources, ckpt, out, int(metrics["epoch"]), device=device,
                                    work_cache=_work_cache(out)))
            report["time_probe_s"] = time.perf_counter() - t_probe
        ray.train.report(report)

    augment_fn, per_epoch = None, 0
    if cfg.augment is not None and cfg.augment.iterative_n > 0:
        from distat.augment.ada import iterative_augmenter

        augment_fn, per_epoch = iterative_augmenter(cfg, job.resources.paths(), out), cfg.augment.iterative_n
    attack_here = job.attack_in_worker is not None and rank == 0
    device = ray.train.torch.get_device()
    if attack_here or probe is not None:
        _preload_textattack(job.resources)
    t0 = time.perf_counter()
    result = run_trial(cfg, out, resume_from=resume, on_epoch_end=on_epoch_end,
                       device=device, augment_fn=augment_fn, augment_rows_per_epoch=per_epoch)
    if rank != 0:
        return
    summary: dict[str, Any] = {
        "loop_s": time.perf_counter() - t0, "metrics": result.metrics, "diverged": result.diverged,
        "history": result.history, "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "resumed_from_epoch": workers[0].resume_epoch, "workers": workers}
    if attack_here and result.checkpoint and not result.diverged:
        from distat.search.evaluation import robust_eval

        t1 = time.perf_counter()
        summary["robust"] = robust_eval(job.attack_in_worker, job.resources, result.checkpoint, out, device=device,
                                        work_cache=_work_cache(out))
        summary["attack_s"] = time.perf_counter() - t1
        summary["attack_where"] = {"pid": os.getpid(), "node_id": workers[0].node_id}
    TrainResult.model_validate(summary).save(out)


def _work_cache(out: Path) -> Path | None:
    """The search's attack work cache: the trial folder is <search>/trials/<id>, the cache beside trials/."""
    return out.parent.parent / WORK_CACHE_DIR if out.parent.name == TRIALS_DIR else None


def _preload_textattack(refs: ResourceRefs) -> None:
    """Import textattack (~6 s on these CPUs) in a background thread, overlapping the training loop."""
    from distat import resources

    def run() -> None:
        try:
            resources.import_textattack(refs.paths().wordnet)
        except Exception as e:  # noqa: BLE001 - the evaluation imports it again and reports what fails
            log.debug("textattack preload failed: %s", e)

    threading.Thread(target=run, name="distat-preload-textattack", daemon=True).start()


def _announce(out: Path, rank: int, resume: Path | None) -> list[WorkerStart]:
    """Record where this Ray Train worker runs and what it resumes from (a worker group restarted after a
    failure adds records). Returns every rank's record of this start, gathered over ``torch.distributed``
    when there are several workers."""
    import ray
    import torch.distributed as dist

    from distat.training import CHECKPOINT_PREFIX

    info = WorkerStart(rank=rank, pid=os.getpid(), node_id=ray.get_runtime_context().get_node_id(),
                       resume_epoch=int(resume.name.removeprefix(CHECKPOINT_PREFIX)) if resume is not None else 0,
                       time=time.time())
    record_start(out, info)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, info.model_dump())
        return [WorkerStart.model_validate(g) for g in gathered]
    return [info]
