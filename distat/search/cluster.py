"""Every use of Ray's internals and Ray's tuning knobs, in one module: a Ray upgrade has one place to look.

* **Starting Ray** (:func:`ray_session`): one policy for every command that needs a cluster, with the
  environment a search wants set before ``ray.init`` (:func:`ray_env_defaults`).
* **Capacity** (:func:`cluster_capacity`): the cluster's resources, raised to what its autoscaler may add
  (``ray._private.state``, the autoscaler's debug status in the internal KV store).
* **Tune's experiment snapshot** (:func:`snapshot_trial_ids`): which trials ``Tuner.restore`` will bring back,
  read from Tune's private ``experiment_state-*.json``.
* **Leaked placement groups** (:func:`release_leaked`, :class:`LeakSweeper`). Ray removes a job's
  (non-detached) placement groups when the job finishes. When a driver is killed while one of its actors is
  creating a placement group (Ray Train's controller restarting its worker group, say), the GCS can register
  the group a few milliseconds *after* it marked the job finished; that group is then never removed and holds
  its CPUs/GPUs for the cluster's lifetime. On a small cluster the next ``distat resume`` waits forever for
  them (seen in ``benchmarks/faults.py``: 2 such leaks in 12 driver kills, the 11th resume hung). The sweep
  finds and removes exactly those groups: not detached, not already removed, created by a job that is dead,
  and either created by the driver itself or by an actor that is dead too (a group created by a detached
  actor lives as long as that actor, even after its job ended). :class:`LeakSweeper` repeats the sweep during
  a search, for leaks other drivers leave on a shared cluster.

Everything private is best effort: when an internal API moved, the caller gets the conservative answer
(no capacity limit known, no snapshot, nothing swept), never an error.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distat.errors import DistatError, first_line

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# starting Ray


def ray_env_defaults(local: bool) -> None:
    """Environment for the Ray a search runs on, set before ``ray.init`` unless the user set it: Ray Train V2
    (the Train-in-Tune integration the tuner uses). ``local``: a Ray started here, which its workers inherit
    this environment from; one machine, with no node to be drained, so Train's preemption watcher (one more
    actor process per trial, ~1 s of CPU) is off. A cluster's workers do not see this environment, and a
    cluster may gain (spot) nodes later: Train keeps its default there."""
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if local:
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def train_env_defaults() -> None:
    """Ray Train's controller polls its workers every ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` (2 s): a finished
    training function was noticed, and the worker group shut down, ~3 s after it returned; 0.5 s takes ~1 s.
    Set in the trainable, before ``fit()`` (Train passes it on to its controller), unless the user set it."""
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


def start_ray(address: str | None = None, *, num_cpus: int | None = None) -> Any:
    """Connect to the Ray cluster at ``address`` or start a local one (``num_cpus``: at least this many CPUs
    for a local one, e.g. one per attack actor; a cluster has what it has). On an existing cluster, placement
    groups a killed driver leaked are released first: their CPUs/GPUs would stall the work. Returns ``ray``."""
    import ray

    ray_env_defaults(local=address is None)
    extra = {"num_cpus": max(num_cpus, os.cpu_count() or 1)} if num_cpus and address is None else {}
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=True,
                 logging_level=logging.ERROR, **extra)
    except (ConnectionError, ValueError) as e:  # no cluster at that address, or a malformed address
        where = f"at {address}" if address else "(local)"
        raise DistatError(f"cannot start or reach the Ray cluster {where}: {first_line(e, 200, typed=True)}") from None
    if address:
        release_leaked()
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[Any]:
    """:func:`start_ray` for the length of a ``with`` block; Ray is shut down at its end, whatever happened."""
    ray = start_ray(address, num_cpus=num_cpus)
    try:
        yield ray
    finally:
        ray.shutdown()


# --------------------------------------------------------------------------------------------------
# what the cluster can offer


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


# --------------------------------------------------------------------------------------------------
# Tune's experiment snapshot


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


def plan_trials(search_dir: Path, total: int) -> int | None:
    """Make the newest snapshot of Tune's trial generator plan ``total`` trials (what ``Tuner.restore`` reads,
    over the ``num_samples`` the experiment started with); returns the number it planned before, or None when
    there is no snapshot (nothing to change: a search restarted from nothing plans ``total`` from its config).

    ``distat extend`` raises the plan of a finished, stopped or killed search this way: the restored search
    then asks the same searcher (the Optuna study, with every earlier trial) for the new trials. Idempotent,
    and written atomically: an interrupted ``extend`` is finished by ``distat resume``, which plans again.
    """
    import ray.cloudpickle as cloudpickle

    from distat.atomic import atomic_file

    snaps = sorted(search_dir.glob("search_gen_state-*.json"), key=lambda p: p.name)  # Tune takes the max name
    if not snaps:
        return None
    try:
        state = cloudpickle.loads(snaps[-1].read_bytes())
        before = int(state["total_samples"])
        counter = int(state["counter"])
    except Exception as e:  # noqa: BLE001 - any unreadable snapshot is the same for the user
        raise DistatError(f"{snaps[-1]}: Tune's search snapshot is unreadable ({first_line(e, 200, typed=True)})") from None
    if before == total and not (state.get("finished") and counter < total):
        return before
    state["total_samples"] = total
    state["finished"] = counter >= total  # a stopped search's generator may have been told to finish
    with atomic_file(snaps[-1]) as part:
        part.write_bytes(cloudpickle.dumps(state))
    return before


# --------------------------------------------------------------------------------------------------
# placement groups leaked by killed drivers (see the module docstring)


_NIL_ACTOR = "ff" * 16


@dataclass(frozen=True)
class GroupRecord:
    """What the GCS knows of one placement group (from its ``PlacementGroupTableData``)."""

    group_id: str
    state: str
    detached: bool
    creator_job: str
    creator_actor: str | None  # None: created by the driver
    resources: dict[str, float]

    @classmethod
    def from_proto(cls, data: Any) -> GroupRecord:
        from ray.core.generated import gcs_pb2

        actor = data.creator_actor_id.hex()
        res: dict[str, float] = {}
        for bundle in data.bundles:
            for key, value in bundle.unit_resources.items():
                res[key] = res.get(key, 0.0) + float(value)
        return cls(group_id=data.placement_group_id.hex(),
                   state=gcs_pb2.PlacementGroupTableData.PlacementGroupState.Name(data.state),
                   detached=bool(data.is_detached), creator_job=data.creator_job_id.hex(),
                   creator_actor=None if not actor or actor == _NIL_ACTOR else actor, resources=res)


def leaked(groups: list[GroupRecord], dead_jobs: set[str], dead_actors: set[str]) -> list[GroupRecord]:
    """The groups no live owner can ever remove (see the module docstring)."""
    out = []
    for g in groups:
        if g.detached or g.state == "REMOVED" or g.creator_job not in dead_jobs:
            continue
        if g.creator_actor is not None and g.creator_actor not in dead_actors:
            continue  # a (detached) actor of a finished job still owns it
        out.append(g)
    return out


def _cluster_view() -> tuple[list[GroupRecord], set[str], set[str]]:
    from ray._private.state import state
    from ray.core.generated import gcs_pb2

    accessor = state._connect_and_get_accessor()
    groups = [GroupRecord.from_proto(gcs_pb2.PlacementGroupTableData.FromString(raw))
              for raw in accessor.get_placement_group_table()]
    dead_jobs = {j["JobID"] for j in state.job_table() if j.get("IsDead")}
    dead_actors: set[str] = set()
    for g in groups:
        if g.creator_actor is None or g.creator_job not in dead_jobs:
            continue
        info = state.actor_table(g.creator_actor)
        if not info or info.get("State") == "DEAD":
            dead_actors.add(g.creator_actor)
    return groups, dead_jobs, dead_actors


def release_leaked() -> list[GroupRecord]:
    """Remove the connected cluster's leaked placement groups; returns what was removed. Best effort: a Ray
    version whose private GCS accessors differ makes this a no-op (with a debug line), never an error."""
    try:
        import ray
        from ray.util.placement_group import PlacementGroup

        groups, dead_jobs, dead_actors = _cluster_view()
        found = leaked(groups, dead_jobs, dead_actors)
        for g in found:
            ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(g.group_id))))
            log.warning("released placement group %s (%s) leaked by finished job %s", g.group_id,
                        ", ".join(f"{k} {v:g}" for k, v in sorted(g.resources.items()) if v), g.creator_job)
        return found
    except Exception as e:  # noqa: BLE001 - private API; a failed sweep must not stop a search
        log.debug("placement-group leak sweep skipped: %s: %s", type(e).__name__, e)
        return []


class LeakSweeper:
    """A Tune callback that runs :func:`release_leaked` every ``every_s`` seconds of the search loop."""

    def __new__(cls, every_s: float = 30.0) -> Any:
        from ray.tune import Callback

        class _Sweeper(Callback):
            def __init__(self) -> None:
                self.every_s, self.last = every_s, 0.0

            def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
                now = time.monotonic()
                if now - self.last >= self.every_s:
                    self.last = now
                    release_leaked()

            def __reduce__(self) -> Any:  # the experiment snapshot pickles callbacks: rebuild on restore
                return (LeakSweeper, (self.every_s,))

        return _Sweeper()
