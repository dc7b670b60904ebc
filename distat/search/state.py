"""What a search keeps on disk, as typed models, each read and written here and nowhere else.

A search directory ``<storage>/<name>/`` (Tune's experiment folder, shared by every node) holds:

* ``distat_search.json`` (:class:`SearchState`): the validated search config, where its attack resources
  and its tracking server are, so ``distat resume`` needs nothing but the folder;
* ``trials/<trial_id>/train_result.json`` (:class:`TrainResult`): what the rank-0 Ray Train worker hands the
  trial (metrics, checkpoint, worker starts, and the robust metrics when it attacked itself);
* ``trials/<trial_id>/final.json`` (:class:`TrialResult`): the trial's final result (params, metrics,
  timings, placement, when it finished); its presence means "finished";
* ``trials/<trial_id>/train_starts.jsonl`` (:class:`WorkerStart`, one line per Ray Train worker start).

The processes of a search (driver, Tune trainable, Train workers) hand each other these models, never raw
dicts with agreed keys. Every file is written atomically (:mod:`distat.atomic`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from distat.atomic import write_json
from distat.config import TrialConfig
from distat.errors import DistatError, first_line, format_validation_error
from distat.search.space import SearchConfig

STATE_FILE = "distat_search.json"
TRAIN_RESULT_FILE = "train_result.json"
FINAL_FILE = "final.json"
STARTS_FILE = "train_starts.jsonl"
TRIALS_DIR = "trials"
WORK_CACHE_DIR = "attack_cache"


class _Record(BaseModel):
    """A file's schema: unknown keys are kept out of the model but do not fail a read (a newer distat may add
    keys); the files are written from these models only."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class ResourceRefs(_Record):
    """Where a search's attack resources are: the cache folder and ``--resource NAME=PATH`` overrides."""

    cache_dir: str
    overrides: dict[str, str] = {}

    def paths(self) -> Any:
        """The resolved :class:`distat.resources.ResourcePaths`."""
        from distat import resources

        return resources.resolve(Path(self.cache_dir), self.overrides or None)


class SearchState(_Record):
    """``distat_search.json``: everything a trial, the MLflow callback and ``distat resume`` need."""

    search: SearchConfig
    search_dir: str
    cache_dir: str
    resource_overrides: dict[str, str] = {}
    tracking_uri: str

    @property
    def dir(self) -> Path:
        return Path(self.search_dir)

    @property
    def resources(self) -> ResourceRefs:
        return ResourceRefs(cache_dir=self.cache_dir, overrides=self.resource_overrides)

    def trial_dir(self, trial_id: str) -> Path:
        return self.dir / TRIALS_DIR / trial_id

    @property
    def work_cache(self) -> Path:
        """The attack work cache every trial's attacks share (:mod:`distat.attacks.work_cache`)."""
        return self.dir / WORK_CACHE_DIR

    def save(self) -> Path:
        return write_json(self.dir / STATE_FILE, self.model_dump(mode="json", by_alias=True))

    @classmethod
    def load(cls, search_dir: Path) -> SearchState:
        """The state saved at the start of a search, validated; one-line errors for anything else."""
        path = search_dir / STATE_FILE
        if not path.is_file():
            raise DistatError(f"{search_dir}: not a distat search directory (no {STATE_FILE})")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise DistatError(f"{path}: unreadable search state ({first_line(e, 200, typed=True)})") from None
        missing = [k for k in ("search", "tracking_uri", "cache_dir") if not isinstance(data, dict) or k not in data]
        if missing:
            raise DistatError(f"{path}: not a distat search state (missing {', '.join(missing)})")
        data.setdefault("search_dir", str(search_dir))
        try:
            search = SearchConfig.model_validate(data["search"])
        except ValidationError as e:
            problem = format_validation_error(e, f"{path}: search", root=SearchConfig)
            raise DistatError(f"{problem} (written by another distat version?)") from None
        try:
            return cls.model_validate({**data, "search": search})
        except ValidationError as e:
            problem = format_validation_error(e, str(path), root=cls)
            raise DistatError(f"{problem} (written by another distat version?)") from None

    def updated(self, **changes: Any) -> SearchState:
        """This state with ``changes`` applied (``None`` values ignored) and saved when anything changed."""
        changed = {k: v for k, v in changes.items() if v is not None and getattr(self, k) != v}
        if not changed:
            return self
        new = self.model_copy(update=changed)
        new.save()
        return new


class SavedTrackingUri:
    """The tracking URI saved in a search folder right now, or None (a picklable callable): the MLflow callback
    comes back from Tune's snapshot with the URI of the search's start, and ``distat resume --tracking-uri``
    may have saved another since. Reads that one key, so a search config that no longer validates (a moved
    data folder) does not hide it."""

    def __init__(self, search_dir: Path) -> None:
        self.search_dir = str(search_dir)

    def __call__(self) -> str | None:
        try:
            saved = json.loads((Path(self.search_dir) / STATE_FILE).read_text(encoding="utf-8")).get("tracking_uri")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            return None
        return saved if isinstance(saved, str) and saved else None


class WorkerStart(_Record):
    """One Ray Train worker start of a trial (a worker group restarted after a failure adds records)."""

    rank: int
    pid: int
    node_id: str
    resume_epoch: int
    time: float
    device: str = ""  # the torch device it trains on ("cuda:0", "cpu"); "" in records written before it was kept
    gpu_ids: list[str] = []  # the GPUs Ray assigned it (ray.get_gpu_ids()); [] without use_gpu


class TrainResult(_Record):
    """``train_result.json``: the rank-0 Train worker's account of a trial's training (and of its attack, when
    it attacked in the worker: ``robust``, ``attack_s``, ``attack_where``)."""

    loop_s: float
    metrics: dict[str, Any]
    diverged: bool
    history: list[dict[str, Any]]
    checkpoint: str | None
    resumed_from_epoch: int
    workers: list[WorkerStart]
    robust: dict[str, float | str] | None = None  # robust metrics and their threat_spec_hash
    attack_s: float | None = None
    attack_where: dict[str, Any] | None = None

    def save(self, trial_dir: Path) -> Path:
        return write_json(trial_dir / TRAIN_RESULT_FILE, self.model_dump(mode="json"))

    @classmethod
    def load(cls, trial_dir: Path) -> TrainResult:
        return cls.model_validate_json((trial_dir / TRAIN_RESULT_FILE).read_text(encoding="utf-8"))


class TrialResult(_Record):
    """``final.json``: a finished trial (its presence is what "finished" means)."""

    trial_id: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    train: dict[str, Any]
    ada_pool: str | None = None
    train_wall: tuple[float, float]
    placement: dict[str, Any]
    finished_at: float | None = None  # unix time the result was written; files from before it was recorded lack it

    @property
    def finish_time(self) -> float:
        """When the trial finished (unix time): ``finished_at``, else, in older files, the end of its training
        fit (before its attack); NaN when neither is a finite time."""
        for value in (self.finished_at, self.train_wall[1]):
            if value is not None and math.isfinite(value):
                return float(value)
        return math.nan

    def save(self, trial_dir: Path) -> Path:
        return write_json(trial_dir / FINAL_FILE, self.model_dump(mode="json"))

    @classmethod
    def load(cls, trial_dir: Path) -> TrialResult:
        return cls.model_validate_json((trial_dir / FINAL_FILE).read_text(encoding="utf-8"))


def is_finished(trial_dir: Path) -> bool:
    return (trial_dir / FINAL_FILE).is_file()


def finished_trials(search_dir: Path) -> dict[str, TrialResult]:
    """trial id -> its :class:`TrialResult`, for every finished trial of the search."""
    return {p.parent.name: TrialResult.load(p.parent)
            for p in sorted((search_dir / TRIALS_DIR).glob(f"*/{FINAL_FILE}"))}


def finish_order(results: dict[str, TrialResult]) -> list[str]:
    """The trial ids of ``results`` in the order the trials finished (:attr:`TrialResult.finish_time`); ties,
    and trials without a finish time (last), keep the mapping's order."""
    position = {trial_id: i for i, trial_id in enumerate(results)}

    def key(trial_id: str) -> tuple[bool, float, int]:
        when = results[trial_id].finish_time
        return math.isnan(when), 0.0 if math.isnan(when) else when, position[trial_id]

    return sorted(results, key=key)


def record_start(trial_dir: Path, start: WorkerStart) -> None:
    """Append one worker start to ``train_starts.jsonl`` (appends of one short line do not interleave)."""
    with open(trial_dir / STARTS_FILE, "a") as f:
        f.write(start.model_dump_json() + "\n")


def worker_starts(trial_dir: Path) -> list[WorkerStart]:
    """Every Train worker start of a trial, oldest first."""
    path = trial_dir / STARTS_FILE
    if not path.is_file():
        return []
    return [WorkerStart.model_validate_json(line) for line in path.read_text().splitlines() if line.strip()]


class WorkerJob(_Record):
    """What the Tune trainable gives each of its Ray Train workers (``train_loop_config={"job": ...}``)."""

    trial: TrialConfig
    output_dir: str
    resources: ResourceRefs
    # the search config when the rank-0 worker attacks its own model (AttackSettings.in_train_worker)
    attack_in_worker: SearchConfig | None = None
    # the search config when the rank-0 worker probes its model at the rung epochs (search.early_stop)
    probe: SearchConfig | None = None

    def as_loop_config(self) -> dict[str, Any]:
        return {"job": self.model_dump(mode="json", by_alias=True)}

    @classmethod
    def from_loop_config(cls, config: dict[str, Any]) -> WorkerJob:
        return cls.model_validate(config["job"])
