"""MLflow bookkeeping of a search: one parent run per search, one child run per trial.

The default store is embedded: a SQLite file and an artifact folder in the working directory (absolute
URIs, because Tune trials change directory). ``--tracking-uri`` points at a server instead; it is
checked before any training, so an unreachable server is one clear error up front.

Runs are found again by tags rather than remembered in memory, so a resumed search (even after the driver
was SIGKILLed) reuses its parent run and every trial's child run instead of duplicating them.

The parent run's metric ``hypervolume`` (:data:`HYPERVOLUME_METRIC`) is the hypervolume of the Pareto front after
each finished trial, at step = the number of finished trials (:func:`distat.tracking.pareto.hypervolume_history`,
reference point (0, 0)); steps already on the run are never logged again (:meth:`Tracker.log_missing_steps`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ray.tune import Callback

from distat.dicts import flatten
from distat.errors import DistatError, first_line

log = logging.getLogger(__name__)

TAG_SEARCH = "distat.search_dir"
TAG_TRIAL = "distat.trial_id"
TAG_PARENT = "mlflow.parentRunId"
TAG_SPEC = "distat.threat_spec_hash"  # the hash of the attack settings behind a run's robust metrics
_SPEC_KEY = TAG_SPEC.removeprefix("distat.")
_SKIP_PARAMS = {"__distat__"}
_PARAMS_PER_BATCH = 100  # MLflow's limit of params in one log_batch call
_METRICS_PER_BATCH = 1000  # and of metrics
HYPERVOLUME_METRIC = "hypervolume"  # on the parent run, one step per finished trial
# the packages whose versions shape a trained model or a robust-accuracy number
_PACKAGES = ("distat", "torch", "transformers", "textattack", "ray", "optuna", "mlflow", "numpy")
# Tune's own bookkeeping fields in every result: not metrics of the trial
_TUNE_BOOKKEEPING = {"timestamp", "training_iteration", "time_this_iter_s", "time_total_s", "pid",
                     "time_since_restore", "iterations_since_restore", "done", "date", "hostname", "node_ip"}
# Params whose name says they hold a secret (matched per dotted/underscored word of the key) are masked; so are
# values that look like one: credentials in a URI (user:pass@), key=value query arguments, well-known token
# formats, and the value of any environment variable whose name says it is a secret.
_SECRET_WORDS = frozenset({"token", "secret", "password", "passwd", "pwd", "credential", "credentials", "apikey",
                           "auth", "authorization", "key", "cookie", "signature"})
_SECRET_PARTS = ("secret", "password", "passwd", "credential")  # inside a word: hfsecret, dbpassword
_SECRET_ENDINGS = ("token", "apikey", "accesskey", "privatekey", "secretkey")  # accesstoken (accessToken)
_WORD_SPLIT = re.compile(r"[^a-z0-9]+")
_URI_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")
_ARG = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_.-]*)(?P<sep>=)(?P<value>[^&;,\s]+)")
_TOKEN_FORMATS = re.compile(
    r"\b(?:hf_[A-Za-z0-9]{16,}|gh[pousr]_[A-Za-z0-9]{16,}|github_pat_[A-Za-z0-9_]{16,}|sk-[A-Za-z0-9_-]{16,}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{30,}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})")
MASK = "***"
# environment variables whose names look secret but hold none: the shell's working directories ("pwd" is also
# short for password); masking their values hid every path below the current folder
_NOT_SECRET_ENV = frozenset({"PWD", "OLDPWD"})


def is_secret_name(name: str) -> bool:
    """Whether a setting called ``name`` (dotted, snake, kebab or camel case) names a secret."""
    words = [w for w in _WORD_SPLIT.split(name.lower()) if w]
    return any(w in _SECRET_WORDS or any(p in w for p in _SECRET_PARTS) or w.endswith(_SECRET_ENDINGS)
               for w in words)


def result_tags(result: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """The tags of a result's string values: ``distat.threat_spec_hash`` (the objective's spec),
    ``distat.threat_spec_hash.<attack>`` per attack and ``distat.robust_attack`` (the attack behind a worst-case
    objective); ``prefix`` is a stage's metric prefix (``test_``)."""
    out = {}
    for key, value in result.items():
        bare = key.removeprefix(prefix) if prefix and key.startswith(prefix) else (None if prefix else key)
        if isinstance(value, str) and bare is not None and (bare.startswith(_SPEC_KEY) or bare == "robust_attack"):
            out[f"distat.{key}"] = value
    return out


def redact(text: str) -> str:
    """``text`` with credentials masked: ``user:pass@`` in URIs, ``token=...``-style arguments, known token
    formats and the values of secret-named environment variables."""
    text = _URI_USERINFO.sub(lambda m: f"{m['scheme']}{_mask_userinfo(m['userinfo'])}@", text)
    text = _ARG.sub(lambda m: f"{m['name']}{m['sep']}{MASK}" if is_secret_name(m["name"]) else m[0], text)
    text = _TOKEN_FORMATS.sub(MASK, text)
    for name, value in os.environ.items():
        if len(value) >= 8 and name not in _NOT_SECRET_ENV and is_secret_name(name) and value in text:
            text = text.replace(value, MASK)
    return text


def _mask_userinfo(userinfo: str) -> str:
    user, sep, _ = userinfo.partition(":")
    return f"{user}:{MASK}" if sep else MASK  # a lone userinfo (token@host) is the secret itself


def safe_params(params: dict[str, Any], limit: int = 500) -> dict[str, str]:
    """Flattened params ready for MLflow: secret-named keys masked, secrets inside values masked."""
    out: dict[str, str] = {}
    for key, value in flatten(params, skip=_SKIP_PARAMS).items():
        text = str(value)
        out[key] = MASK if is_secret_name(key) and value not in (None, "") else redact(text)[:limit]
    return out


def package_versions() -> dict[str, str]:
    """``{package: version}`` of :data:`_PACKAGES` as installed (``-`` for one that is not)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in _PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "-"
    return out


def default_tracking_uri(workdir: Path | None = None) -> str:
    return f"sqlite:///{(workdir or Path.cwd()).resolve() / 'mlflow.db'}"


class Tracker:
    """The MLflow side of one search: experiment, parent run, child runs by trial id."""

    def __init__(self, tracking_uri: str, experiment: str, search_dir: Path) -> None:
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri
        self.search_dir = str(search_dir.resolve())
        check_reachable(tracking_uri)
        self.client = MlflowClient(tracking_uri=tracking_uri)
        try:
            exp = self.client.get_experiment_by_name(experiment)
        except Exception as e:  # noqa: BLE001 - any transport failure is the same for the user
            detail = redact(first_line(e, 200, typed=True))
            raise DistatError(f"MLflow tracking server {redact(tracking_uri)} is unreachable: {detail} "
                              "(start it, or omit --tracking-uri for the embedded store)") from None
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
        safe = [Param(k, v) for k, v in sorted(safe_params(params).items()) if k not in existing]
        for start in range(0, len(safe), _PARAMS_PER_BATCH):  # MLflow refuses larger batches
            self.client.log_batch(run_id, params=safe[start:start + _PARAMS_PER_BATCH])

    def describe_search(self, config: dict[str, Any]) -> None:
        """The parent run's record of the whole search: the validated config (flattened params under ``search.``
        and ``search_config.yaml``), the versions of the packages that shape a result, as params."""
        import yaml

        self.log_params(self.parent_id, {"search": config, "package": package_versions()})
        self.client.log_text(self.parent_id, yaml.safe_dump(config, sort_keys=False), "search_config.yaml")

    def describe_trial(self, run_id: str, config: dict[str, Any], name: str) -> None:
        """A child run's record of its trial: the whole trial config (params under ``trial.``, beside the
        searched ones) and a readable run name (``<method> <trial id>``)."""
        self.log_params(run_id, {"trial": config})
        self.client.set_tag(run_id, "mlflow.runName", name)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int, timestamp_ms: int | None = None) -> None:
        """Log numeric, finite ``metrics`` at ``step``, stamped ``timestamp_ms`` (default: now)."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def log_missing_steps(self, run_id: str, key: str, values: Sequence[float],
                          timestamp_ms: int | None = None) -> int:
        """Log ``values[i]`` as ``key`` at step ``i + 1`` for each step at which the run has no value of ``key``
        yet (finite values only), stamped ``timestamp_ms`` (default: now): a resumed or finished search adds what
        is missing and never duplicates a step. Returns how many values were logged."""
        import time

        from mlflow.entities import Metric

        have = {m.step for m in self.client.get_metric_history(run_id, key)}
        now = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        batch = [Metric(key, float(v), now, step) for step, v in enumerate(values, start=1)
                 if step not in have and math.isfinite(float(v))]
        for start in range(0, len(batch), _METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=batch[start:start + _METRICS_PER_BATCH])
        return len(batch)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def close_stray_children(self, finished: set[str]) -> list[str]:
        """End the child runs still RUNNING whose trial did not finish (KILLED, tagged ``distat.stray``): trials
        started after Tune's last snapshot before the driver died, which the resumed search ran under new ids.
        Returns their trial ids."""
        query = f"tags.`{TAG_PARENT}` = '{self.parent_id}' and attributes.status = 'RUNNING'"
        stray = []
        for run in self.client.search_runs([self.experiment_id], filter_string=query, max_results=1000):
            trial_id = run.data.tags.get(TAG_TRIAL)
            if trial_id is not None and trial_id not in finished:
                self.client.set_tag(run.info.run_id, "distat.stray", "not in Tune's snapshot when the driver died; "
                                    "the resumed search ran another trial in its place")
                self.client.set_terminated(run.info.run_id, status="KILLED")
                stray.append(trial_id)
        return stray

    def log_artifacts(self, run_id: str, folder: Path) -> None:
        self.client.log_artifacts(run_id, str(folder))


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """A quick health probe of a tracking server (MLflow's own client retries for minutes); for a SQLite
    store, that its folder exists. Credentials in the URI go in a header, never into the error message."""
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir():
            raise DistatError(f"tracking URI {redact(uri)}: folder {folder} does not exist")
        return
    if not uri.startswith(("http://", "https://")):
        return
    import base64
    import http.client
    import urllib.error
    import urllib.parse
    import urllib.request

    try:
        parts = urllib.parse.urlsplit(uri)
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            netloc += f":{parts.port}"
        request = urllib.request.Request(urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/")
                                                                  + "/health", "", "")))
        if parts.username is not None:
            pair = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            request.add_header("Authorization", "Basic " + base64.b64encode(pair.encode()).decode())
        with urllib.request.urlopen(request, timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # it answered: a server is there (health may be routed elsewhere behind a proxy)
    except OSError as e:
        reason = getattr(e, "reason", e)
        raise DistatError(f"MLflow tracking server {redact(uri)} is unreachable ({redact(str(reason))}): start it, "
                          "or omit --tracking-uri for the embedded store") from None
    except (ValueError, http.client.HTTPException) as e:
        raise DistatError(f"tracking URI {redact(uri)} is not a valid URL ({redact(str(e))})") from None


class MLflowTrialCallback(Callback):
    """A Tune callback logging each trial to its (found or created) child run of the search's parent run.

    A tracking server that stops answering never stops the search: logging calls are queued, in order, and
    sent once it answers again (tried at the next trial event, and every ``retry_s`` seconds in between).
    Whatever is still queued when the search ends is dropped with one warning saying how much, for which
    trials; the results on disk are complete either way. A call the server answers but refuses is skipped
    with a warning, as before. The queue lives in the driver: a driver killed while it holds calls loses them.

    ``hypervolume_history``, a picklable callable, gives ``[(trial id, hypervolume), ...]`` after each finished
    trial in finish order (read from disk); after every trial completion the parent run gets the steps of its
    ``hypervolume`` metric it lacks. A history that cannot be read is skipped with a warning, like a refused call.
    """

    retry_s = 10.0

    def __init__(self, tracking_uri: str, experiment: str, search_dir: Path,
                 uri_source: Callable[[], str | None] | None = None, search_config: dict[str, Any] | None = None,
                 trial_config: Callable[[dict[str, Any], str], tuple[str, dict[str, Any]]] | None = None,
                 hypervolume_history: Callable[[], Sequence[tuple[str, float]]] | None = None) -> None:
        self._args = (tracking_uri, experiment, search_dir)
        # the parent run records the whole search; trial_config(params, trial_id) gives a trial's method label and
        # whole config (picklable: Tune's snapshot pickles this callback)
        self._search_config = search_config
        self._trial_config = trial_config
        self._hypervolume = hypervolume_history  # picklable, like trial_config
        # a picklable callable whose answer wins: the URI saved now (distat resume --tracking-uri)
        self._uri_source = uri_source
        self._tracker: Tracker | None = None
        self._runs: dict[str, str] = {}
        self._backlog: list[tuple[str, Any]] = []  # (trial id, call) not sent yet, oldest first
        self._down = False  # the server did not answer the last attempt
        self._retry_at = 0.0

    @property
    def tracking_uri(self) -> str:
        """The URI to log to: the one ``uri_source`` gives when it gives one (the callback comes back from
        Tune's snapshot with the URI of the search's start), else the one given."""
        saved = self._uri_source() if self._uri_source is not None else None
        return saved if isinstance(saved, str) and saved else self._args[0]

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            tracker = Tracker(self.tracking_uri, *self._args[1:])
            if self._search_config is not None:
                tracker.describe_search(self._search_config)
            self._tracker = tracker
        return self._tracker

    def _run(self, trial: Any) -> str:
        if trial.trial_id not in self._runs:
            self._runs[trial.trial_id] = self.tracker.child_run(trial.trial_id)
        return self._runs[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        config = dict(trial.config)
        whole = None
        if self._trial_config is not None:
            try:
                whole = self._trial_config(config, trial.trial_id)
            except Exception as e:  # noqa: BLE001 - the trial itself reports a bad config; the record is best effort
                log.warning("no whole trial config for MLflow run of trial %s: %s", trial.trial_id, first_line(e, 200))

        def record() -> None:
            run = self._run(trial)
            self.tracker.log_params(run, config)
            if whole is not None:
                label, trial_cfg = whole
                self.tracker.describe_trial(run, trial_cfg, f"{label} {trial.trial_id}")

        self._submit(trial.trial_id, record)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        import time

        step = int(result.get("epoch") or result.get("training_iteration") or 0)
        metrics = {k: v for k, v in result.items() if k not in _TUNE_BOOKKEEPING}
        stamp = int(time.time() * 1000)  # when it happened, even if sent later
        self._submit(trial.trial_id, lambda: self.tracker.log_metrics(self._run(trial), metrics, step, stamp))
        tags = result_tags(result)
        if tags:  # the threat models the robust numbers were measured under (strings: tags)
            self._submit(trial.trial_id, lambda: self.tracker.set_tags(self._run(trial), tags))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        import time

        self._submit(trial.trial_id, lambda: self.tracker.finish(self._run(trial), "FINISHED"))
        history = self._hypervolume
        if history is not None:
            stamp = int(time.time() * 1000)
            self._submit(trial.trial_id, lambda: self._log_hypervolume(history, stamp))

    def _log_hypervolume(self, history: Callable[[], Sequence[tuple[str, float]]], stamp: int) -> None:
        """The parent run's ``hypervolume`` steps it lacks, from the history on disk now."""
        values = [hv for _, hv in history()]
        self.tracker.log_missing_steps(self.tracker.parent_id, HYPERVOLUME_METRIC, values, stamp)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._submit(trial.trial_id, lambda: self.tracker.finish(self._run(trial), "FAILED"))

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        import time

        if self._backlog and time.monotonic() >= self._retry_at:
            self._flush()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        backlog = self._backlog
        if backlog:
            self._flush()
        if backlog:
            ids = sorted({trial_id for trial_id, _ in backlog})
            log.warning("MLflow tracking server %s did not come back: %d logging call(s) for %d trial(s) (%s) were "
                        "not sent and are dropped; every result is on disk in %s", redact(self.tracking_uri),
                        len(backlog), len(ids), ", ".join(ids), self._args[2])
            backlog.clear()

    @property
    def pending(self) -> int:
        """Logging calls queued while the server did not answer."""
        return len(self._backlog)

    def _submit(self, trial_id: str, fn: Any) -> None:
        # a tracking hiccup must never stop the search: results on disk stay complete
        self._backlog.append((trial_id, fn))
        if not self._down:
            self._flush()

    def _flush(self) -> None:
        """Send queued calls in order; stop at the first one the server does not answer (kept for later)."""
        import time

        backlog = self._backlog
        uri = self.tracking_uri
        if self._down and not _answers(uri):
            self._retry_at = time.monotonic() + self.retry_s
            return
        while backlog:
            try:
                with _quick_http():
                    backlog[0][1]()
            except Exception as e:  # noqa: BLE001
                if not _answers(uri):
                    if not self._down:
                        log.warning("MLflow tracking server %s is unreachable (%s); logging is queued until it "
                                    "answers again, the search goes on", redact(uri), type(e).__name__)
                    self._down, self._retry_at = True, time.monotonic() + self.retry_s
                    return
                log.warning("MLflow logging failed (%s: %s); the search goes on", type(e).__name__, redact(str(e)))
            backlog.pop(0)
        if self._down:
            log.warning("MLflow tracking server %s answers again: the queued logging was sent", redact(uri))
            self._down = False

    def __getstate__(self) -> dict[str, Any]:  # the experiment snapshot pickles callbacks
        # what a resumed search needs (the search's and each trial's whole config, the hypervolume history), not
        # the connection, the runs of this driver or its queue
        keep = ("_args", "_uri_source", "_search_config", "_trial_config", "_hypervolume")
        return {k: getattr(self, k) for k in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # a fresh driver's connection, runs and queue; a snapshot pickled by an older distat lacks the attributes
        # added since (uri_source, search_config, trial_config, hypervolume_history, the queue): None / empty
        self.__dict__.update({"_uri_source": None, "_search_config": None, "_trial_config": None,
                              "_hypervolume": None, **state, "_tracker": None, "_runs": {}, "_backlog": [],
                              "_down": False, "_retry_at": 0.0})


def _answers(uri: str) -> bool:
    """Whether the tracking store answers now (a quick probe of a server; a local store always does)."""
    try:
        check_reachable(uri, timeout=2.0)
    except DistatError:
        return False
    return True


@contextlib.contextmanager
def _quick_http() -> Iterator[None]:
    """MLflow's client retries an unreachable server for about 4 minutes, and the Tune callbacks run in the
    driver's event loop: give up after a few seconds instead (the callback queues the call), unless the user
    tuned these variables."""
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
             "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}
    added = {k: v for k, v in quick.items() if k not in os.environ}
    os.environ.update(added)
    pool_log = logging.getLogger("urllib3.connectionpool")  # one "Retrying ..." warning per attempt: the
    level = pool_log.level  # callback's own warning says it once
    pool_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        pool_log.setLevel(level)
        for key in added:
            os.environ.pop(key, None)
