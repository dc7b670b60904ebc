"""``distat train``: one trial from a validated config, in this process (ADA attacks on a local Ray when
``augment.actors`` > 0); the metrics go to ``<output_dir>/metrics.json`` and come back as a result."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distat.app.resources import AttackResources, Notify, _quiet
from distat.atomic import write_json
from distat.errors import DistatError

if TYPE_CHECKING:  # the trial config imports torch and every method: loaded by the caller, not by `distat.app`
    from distat.config import TrialConfig

METRICS_FILE = "metrics.json"


@dataclass
class TrainHooks:
    """Progress of a training run: ``on_start(info)`` (train/dev sizes, device, steps per epoch),
    ``on_step(step, loss)``, ``on_epoch_end(metrics, checkpoint)``."""

    on_start: Callable[[dict[str, Any]], None] | None = None
    on_step: Callable[[int, float], None] | None = None
    on_epoch_end: Callable[[dict[str, float], Path | None], None] | None = None


@dataclass
class TrainOutcome:
    summary: dict[str, Any]  # method, final metrics, diverged, checkpoint
    history: list[dict[str, Any]] = field(default_factory=list)
    config: TrialConfig | None = None  # the config trained (with ADA's rows when augmented)

    @property
    def diverged(self) -> bool:
        return bool(self.summary["diverged"])


def train(cfg: TrialConfig, *, resume: bool = False, overwrite: bool = False,
          where: AttackResources | None = None, hooks: TrainHooks | None = None,
          notify: Notify = _quiet) -> TrainOutcome:
    """Train ``cfg`` into ``cfg.output_dir``. ``resume``: continue from its newest checkpoint; an output folder
    holding checkpoints is refused unless ``resume`` or ``overwrite``. ``where``: the attack resources ADA uses."""
    from distat.config import resolve_data
    from distat.training import check_resumable, latest_checkpoint, list_checkpoints, run_trial

    hooks = hooks or TrainHooks()
    cfg = cfg.model_copy(update={"data": resolve_data(cfg.data)})  # split names checked before anything starts
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise DistatError(f"output_dir {out}: is a file, not a folder")
    ckpt_root = out / "checkpoints"
    resume_from = None
    if resume:
        resume_from = latest_checkpoint(ckpt_root)
        if resume_from is None:
            notify(f"no checkpoint in {ckpt_root}: starting from scratch")
        else:
            check_resumable(resume_from, cfg)  # another backbone or method: refused before anything loads
    elif list_checkpoints(ckpt_root) and not overwrite:
        raise DistatError(f"{out} already holds checkpoints: pass --resume to continue or --overwrite to start over")

    where = where or AttackResources.at()
    if cfg.augment is not None and cfg.augment.ratio > 0:
        cfg = _prepare_ada(cfg, out, where, notify)
    augment_fn, per_epoch = None, 0
    if cfg.augment is not None and cfg.augment.iterative_n > 0:
        from distat.augment.ada import iterative_augmenter

        augment_fn, per_epoch = iterative_augmenter(cfg, where.require(cfg.augment.recipe), out), cfg.augment.iterative_n
    result = run_trial(cfg, resume_from=resume_from, on_epoch_end=hooks.on_epoch_end, on_step=hooks.on_step,
                       on_start=hooks.on_start, augment_fn=augment_fn, augment_rows_per_epoch=per_epoch)
    summary = {"method": cfg.method.label, **result.metrics, "diverged": result.diverged,
               "checkpoint": str(result.checkpoint) if result.checkpoint else None}
    write_json(out / METRICS_FILE, {"final": summary, "history": result.history})
    return TrainOutcome(summary=summary, history=result.history, config=cfg)


def _prepare_ada(cfg: TrialConfig, out: Path, where: AttackResources, notify: Notify) -> TrialConfig:
    """ADA for one trial: victim and pool in the resource cache (``ada/``), attacks in this process or on a
    local Ray when ``augment.actors > 0``."""
    from distat.augment.ada import Generator, prepare_trial
    from distat.augment.cache import FolderCache
    from distat.search.cluster import ray_session

    paths = where.require(cfg.augment.recipe)
    out.mkdir(parents=True, exist_ok=True)
    notify(f"ADA: {cfg.augment.recipe} examples of {cfg.augment.ratio:.0%} of the training set "
           f"(pool cache {where.cache / 'ada'})")
    with ray_session() if cfg.augment.actors > 0 else contextlib.nullcontext():
        cfg, info = prepare_trial(cfg, out, Generator(FolderCache(where.cache / "ada"), paths))
    notify(f"ADA: {int(info['ada_examples'])} adversarial examples added from pool {info['ada_pool']}")
    return cfg
