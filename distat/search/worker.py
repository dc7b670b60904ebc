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

_DECISION_WAIT_S = 120.0  # how long a trial waits at a rung for the scheduler's decision (about a second, as a rule)


def train_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    from distat.training import latest_checkpoint, run_trial

    job = WorkerJob.from_loop_config(config)
    cfg, out = job.trial, Path(job.output_dir)
    resume = latest_checkpoint(out / "checkpoints")
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    workers = _announce(out, rank, resume, device)

    es = job.probe.search.early_stop if job.probe is not None else None
    rungs = set(es.rungs) if es is not None else set()
    stopped: list[int] = []  # the rung early stopping stopped this trial at, if it did

    def on_epoch_end(metrics: dict[str, float], ckpt: Path | None) -> bool:
        epoch = int(metrics.get("epoch", 0))
        report = {**metrics, "checkpoint_dir": str(ckpt or "")}
        probed = rank == 0 and epoch in rungs and ckpt is not None and not metrics.get("diverged")
        if probed:
            from distat.search.probe import run_probe

            t_probe = time.perf_counter()  # the other ranks wait in report() meanwhile
            report.update(run_probe(job.probe, job.resources, ckpt, out, epoch, device=device,
                                    work_cache=_work_cache(out)))
            report["time_probe_s"] = time.perf_counter() - t_probe
        ray.train.report(report)
        if epoch in rungs and _stopped_at_rung(out, epoch, probed):
            stopped.append(epoch)
        return bool(stopped)

    augment_fn, per_epoch = None, 0
    if cfg.augment is not None and cfg.augment.iterative_n > 0:
        from distat.augment.ada import iterative_augmenter

        augment_fn, per_epoch = iterative_augmenter(cfg, job.resources.paths(), out), cfg.augment.iterative_n
    attack_here = job.attack_in_worker is not None and rank == 0
    if attack_here or (es is not None and rank == 0):
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
    # a stopped trial's final result is its rung's (trial.py): the full evaluation would be thrown away
    if attack_here and result.checkpoint and not result.diverged and not stopped:
        from distat.search.evaluation import robust_eval

        t1 = time.perf_counter()
        summary["robust"] = robust_eval(job.attack_in_worker, job.resources, result.checkpoint, out, device=device,
                                        work_cache=_work_cache(out))
        summary["attack_s"] = time.perf_counter() - t1
        summary["attack_where"] = {"pid": os.getpid(), "node_id": workers[0].node_id}
    TrainResult.model_validate(summary).save(out)


def _stopped_at_rung(out: Path, epoch: int, probed: bool) -> bool:
    """Whether early stopping stopped the trial at rung ``epoch``: rank 0 waits for the scheduler's decision on
    the result it just reported (when it probed: else there is none), and every rank gets its answer, so all
    of them end their loop together or go on together."""
    import torch
    import torch.distributed as dist

    stop = False
    if probed:
        from distat.search.probe import wait_for_decision

        stop = bool(wait_for_decision(out, epoch, _DECISION_WAIT_S))
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        flag = torch.tensor([1.0 if stop else 0.0])
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.broadcast(flag, src=0)
        stop = bool(flag.item())
    if stop:
        log.info("early stopping stopped this trial at epoch %d", epoch)
    return stop


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


def _announce(out: Path, rank: int, resume: Path | None, device: Any) -> list[WorkerStart]:
    """Record where this Ray Train worker runs and what it resumes from (a worker group restarted after a
    failure adds records). Returns every rank's record of this start, gathered over ``torch.distributed``
    when there are several workers."""
    import ray
    import torch.distributed as dist

    from distat.training import CHECKPOINT_PREFIX

    info = WorkerStart(rank=rank, pid=os.getpid(), node_id=ray.get_runtime_context().get_node_id(),
                       resume_epoch=int(resume.name.removeprefix(CHECKPOINT_PREFIX)) if resume is not None else 0,
                       time=time.time(), device=str(device), gpu_ids=[str(g) for g in ray.get_gpu_ids()])
    record_start(out, info)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, info.model_dump())
        return [WorkerStart.model_validate(g) for g in gathered]
    return [info]
