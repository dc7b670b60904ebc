"""Placement groups that Ray leaked when a driver died.

Ray removes a job's (non-detached) placement groups when the job finishes. When a driver is killed while one of its
actors is creating a placement group (Ray Train's controller restarting its worker group, say), the GCS can register
the group a few milliseconds *after* it marked the job finished; that group is then never removed and holds its
CPUs/GPUs for the cluster's lifetime. On a small cluster the next ``distat resume`` waits forever for them (seen in
``benchmarks/faults.py``: 2 such leaks in 12 driver kills, the 11th resume hung).

:func:`release_leaked` finds and removes exactly those groups: not detached, not already removed, created by a job
that is dead, and either created by the driver itself or by an actor that is dead too (a group created by a
detached actor lives as long as that actor, even after its job ended). :class:`LeakSweeper` repeats the sweep during
a search, for leaks other drivers leave on a shared cluster.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

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
