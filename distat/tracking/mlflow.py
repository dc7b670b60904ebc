"""MLflow bookkeeping of a search: one parent run per search, one child run per trial.

The default store is embedded: a SQLite file and an artifact folder in the working directory (absolute
URIs, because Tune trials change directory). ``--tracking-uri`` points at a server instead; it is
checked before any training, so an unreachable server is one clear error up front.

Runs are found again by tags rather than remembered in memory, so a resumed search (even after the driver
was SIGKILLed) reuses its parent run and every trial's child run instead of duplicating them.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

from ray.tune import Callback

from distat.errors import DistatError

log = logging.getLogger(__name__)

TAG_SEARCH = "distat.search_dir"
TAG_TRIAL = "distat.trial_id"
TAG_PARENT = "mlflow.parentRunId"
_SKIP_PARAMS = {"__distat__"}
# Tune's own bookkeeping fields in every result: not metrics of the trial
_TUNE_BOOKKEEPING = {"timestamp", "training_iteration", "time_this_iter_s", "time_total_s", "pid",
                     "time_since_restore", "iterations_since_restore", "done", "date", "hostname", "node_ip"}
_SECRET_HINTS = ("token", "secret", "password", "key", "credential")


def default_tracking_uri(workdir: Path | None = None) -> str:
    return f"sqlite:///{(workdir or Path.cwd()).resolve() / 'mlflow.db'}"


class Tracker:
    """The MLflow side of one search: experiment, parent run, child runs by trial id."""

    def __init__(self, tracking_uri: str, experiment: str, search_dir: Path) -> None:
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri
        self.search_dir = str(search_dir.resolve())
        _check_reachable(tracking_uri)
        self.client = MlflowClient(tracking_uri=tracking_uri)
        try:
            exp = self.client.get_experiment_by_name(experiment)
        except Exception as e:  # noqa: BLE001 - any transport failure is the same for the user
            raise DistatError(f"MLflow tracking server {tracking_uri} is unreachable: {type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]} (start it, or omit --tracking-uri for the "
                              "embedded store)") from None
        if exp is None:
            artifacts = None
            if tracking_uri.startswith("sqlite:///"):
                artifacts = (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=artifacts)
        else:
            self.experiment_id = exp.experiment_id
        self.parent_id = self._find_or_create(f"tags.`{TAG_SEARCH}` = '{self.search_dir}' and "
                                              f"attributes.run_name = '{Path(self.search_dir).name}'",
                                              run_name=Path(self.search_dir).name,
                                              tags={TAG_SEARCH: self.search_dir})

    def _find_or_create(self, query: str, run_name: str, tags: dict[str, str]) -> str:
        found = self.client.search_runs([self.experiment_id], filter_string=query, max_results=1)
        if found:
            run_id = found[0].info.run_id
            if found[0].info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
            return run_id
        return self.client.create_run(self.experiment_id, run_name=run_name, tags=tags).info.run_id

    def child_run(self, trial_id: str) -> str:
        query = f"tags.`{TAG_TRIAL}` = '{trial_id}' and tags.`{TAG_PARENT}` = '{self.parent_id}'"
        return self._find_or_create(query, run_name=trial_id,
                                    tags={TAG_TRIAL: trial_id, TAG_PARENT: self.parent_id,
                                          TAG_SEARCH: self.search_dir})

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        existing = set(self.client.get_run(run_id).data.params)
        safe = [Param(k, str(v)[:500]) for k, v in sorted(flatten(params).items())
                if k not in existing and not any(h in k.lower() for h in _SECRET_HINTS)]
        if safe:
            self.client.log_batch(run_id, params=safe)

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def log_artifacts(self, run_id: str, folder: Path) -> None:
        self.client.log_artifacts(run_id, str(folder))


def _check_reachable(uri: str, timeout: float = 5.0) -> None:
    """A quick health probe of a tracking server (MLflow's own client retries for minutes)."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # it answered: a server is there (health may be routed elsewhere behind a proxy)
    except OSError as e:
        reason = getattr(e, "reason", e)
        raise DistatError(f"MLflow tracking server {uri} is unreachable ({reason}): start it, or omit "
                          "--tracking-uri for the embedded store") from None


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if k in _SKIP_PARAMS:
            continue
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


class MLflowTrialCallback(Callback):
    """A Tune callback logging each trial to its (found or created) child run of the search's parent run."""

    def __init__(self, tracking_uri: str, experiment: str, search_dir: Path) -> None:
        self._args = (tracking_uri, experiment, search_dir)
        self._tracker: Tracker | None = None
        self._runs: dict[str, str] = {}

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._tracker = Tracker(*self._args)
        return self._tracker

    def _run(self, trial: Any) -> str:
        if trial.trial_id not in self._runs:
            self._runs[trial.trial_id] = self.tracker.child_run(trial.trial_id)
        return self._runs[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._safely(lambda: self.tracker.log_params(self._run(trial), trial.config))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        step = int(result.get("epoch") or result.get("training_iteration") or 0)
        metrics = {k: v for k, v in result.items() if k not in _TUNE_BOOKKEEPING}
        self._safely(lambda: self.tracker.log_metrics(self._run(trial), metrics, step))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._safely(lambda: self.tracker.finish(self._run(trial), "FINISHED"))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._safely(lambda: self.tracker.finish(self._run(trial), "FAILED"))

    def _safely(self, fn: Any) -> None:
        # a tracking hiccup must never stop the search: results on disk stay complete
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            log.warning("MLflow logging failed (%s: %s); the search goes on", type(e).__name__, e)

    def __getstate__(self) -> dict[str, Any]:  # the experiment snapshot pickles callbacks
        return {"_args": self._args, "_tracker": None, "_runs": {}}
