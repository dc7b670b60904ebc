"""Placement groups Ray leaks when a driver dies while its actors create them (distat/search/cluster.py).

The leak: the GCS removes a job's non-detached placement groups when it marks the job finished, and a group
created by an actor of that job *after* that moment (the race of a SIGKILLed driver whose Ray Train controller
is restarting its worker group) is never removed, not even when its creator dies. The real test builds exactly
that state on purpose on a real cluster, instead of hoping the race happens: an actor owned by a detached actor
survives its job (Ray keeps everything rooted in a detached actor alive), so it can create a group after its
driver was SIGKILLed and its job marked finished; killing that actor then leaves the group leaked. The sweep must
remove exactly those: never a live job's group, nor one a live actor (detached or not) still owns."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from distat.search.cluster import GroupRecord, leaked

from faultkit import LocalCluster, kill_group, wait_for

JOB_A, JOB_B = "01000000", "02000000"
ACTOR_A = "aa" * 16


def _group(gid: str, job: str = JOB_A, actor: str | None = ACTOR_A, state: str = "CREATED",
           detached: bool = False) -> GroupRecord:
    return GroupRecord(group_id=gid, state=state, detached=detached, creator_job=job, creator_actor=actor,
                       resources={"CPU": 1.0})


def test_leaked_needs_a_dead_job_and_a_dead_creator():
    groups = [
        _group("leak-by-dead-actor"),
        _group("leak-by-driver", actor=None),
        _group("leak-pending", state="PENDING"),
        _group("live-job", job=JOB_B),
        _group("detached", detached=True),
        _group("already-removed", state="REMOVED"),
        _group("detached-actor-alive", actor="bb" * 16),
    ]
    found = leaked(groups, dead_jobs={JOB_A}, dead_actors={ACTOR_A})
    assert [g.group_id for g in found] == ["leak-by-dead-actor", "leak-by-driver", "leak-pending"]
    assert leaked(groups, dead_jobs=set(), dead_actors={ACTOR_A}) == []


def test_group_record_reads_the_gcs_proto():
    from ray.core.generated import common_pb2, gcs_pb2

    data = gcs_pb2.PlacementGroupTableData(
        placement_group_id=bytes.fromhex("12" * 18), state=gcs_pb2.PlacementGroupTableData.CREATED,
        creator_job_id=bytes.fromhex(JOB_A), creator_actor_id=b"\xff" * 16, is_detached=False,
        bundles=[common_pb2.Bundle(unit_resources={"CPU": 1.0, "memory": 5.0}),
                 common_pb2.Bundle(unit_resources={"CPU": 0.5})])
    g = GroupRecord.from_proto(data)
    assert (g.group_id, g.state, g.creator_job, g.creator_actor, g.detached) == ("12" * 18, "CREATED", JOB_A,
                                                                                 None, False)
    assert g.resources == {"CPU": 1.5, "memory": 5.0}


_MAKER = """
import json, sys, time, ray
from ray.util.placement_group import placement_group
ray.init(address=sys.argv[1], include_dashboard=False, log_to_driver=False, namespace="leaks")

@ray.remote(num_cpus=0)
class Child:  # not detached, but rooted in a detached actor: it outlives this job
    def make_group(self):
        self.pg = placement_group([{"CPU": 0.01}])
        ray.get(self.pg.ready(), timeout=60)
        return self.pg.id.hex()

@ray.remote(num_cpus=0)
class Holder:  # detached: its own group outlives this job, and is not a leak
    def __init__(self):
        self.pg = placement_group([{"CPU": 0.01}])
        ray.get(self.pg.ready(), timeout=60)
        self.leaker, self.living = Child.remote(), Child.remote()

    def keeper(self):
        return self.pg.id.hex()

    def make_groups(self):  # called after this job is marked finished
        return ray.get([self.leaker.make_group.remote(), self.living.make_group.remote()])

    def kill_leaker(self):  # its group's creator is dead now: nothing will ever remove that group
        ray.kill(self.leaker, no_restart=True)

holder = Holder.options(name="holder-" + sys.argv[2], lifetime="detached").remote()
print(json.dumps({"job": ray.get_runtime_context().get_job_id(), "keeper": ray.get(holder.keeper.remote())}),
      flush=True)
time.sleep(600)
"""

_CHECK = """
import json, sys, time, ray
from ray.util.placement_group import placement_group
from distat.search.cluster import _cluster_view, leaked, release_leaked
ray.init(address=sys.argv[1], include_dashboard=False, log_to_driver=False, namespace="leaks")
mode = sys.argv[2]
out = {}
if mode == "make":
    out["leaker"], out["living"] = ray.get(ray.get_actor("holder-" + sys.argv[3]).make_groups.remote())
elif mode == "kill":
    ray.get(ray.get_actor("holder-" + sys.argv[3]).kill_leaker.remote())
groups, dead_jobs, dead_actors = _cluster_view()
out.update(leaked=[g.group_id for g in leaked(groups, dead_jobs, dead_actors)], dead_jobs=sorted(dead_jobs))
if mode == "sweep":
    own = placement_group([{"CPU": 0.01}])
    ray.get(own.ready())
    cpu_before = ray.available_resources().get("CPU", 0.0)
    removed = release_leaked()
    out["removed"] = [g.group_id for g in removed]
    out["removed_cpu"] = sum(g.resources.get("CPU", 0.0) for g in removed if g.state == "CREATED")
    groups, dead_jobs, dead_actors = _cluster_view()
    out["leaked_after"] = [g.group_id for g in leaked(groups, dead_jobs, dead_actors)]
    out["alive"] = [g.group_id for g in groups if g.state != "REMOVED"]
    out["own"] = own.id.hex()
    deadline = time.monotonic() + 60  # the raylet returns the bundles' CPUs asynchronously
    while True:
        out["cpu_freed"] = ray.available_resources().get("CPU", 0.0) - cpu_before
        if abs(out["cpu_freed"] - out["removed_cpu"]) < 1e-6 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
print(json.dumps(out))
"""


def _run(script: Path, cluster: LocalCluster, *args: str) -> dict:
    out = subprocess.run([sys.executable, str(script), cluster.address, *args], capture_output=True, text=True,
                         timeout=120, env=cluster.env())
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_sweep_releases_groups_leaked_by_killed_drivers_and_nothing_else(tmp_path: Path):
    maker, check = tmp_path / "maker.py", tmp_path / "check.py"
    maker.write_text(_MAKER)
    check.write_text(_CHECK)
    with LocalCluster({"head": 2}) as cluster:
        proc = subprocess.Popen([sys.executable, str(maker), cluster.address, "a"], stdout=subprocess.PIPE,
                                text=True, env=cluster.env(), start_new_session=True)
        try:
            started = json.loads(next(x for x in iter(proc.stdout.readline, "") if x.startswith("{")))
        finally:
            kill_group(proc)  # the driver is lost: SIGKILL
        wait_for(lambda: started["job"] in _run(check, cluster, "count")["dead_jobs"], 60,
                 f"job {started['job']} marked finished")
        made = _run(check, cluster, "make", "a")  # groups of the finished job, created by its surviving actors
        assert made["leaked"] == [], "a group whose creator is alive counted as leaked"
        _run(check, cluster, "kill", "a")
        wait_for(lambda: made["leaker"] in _run(check, cluster, "count")["leaked"], 60, "the leaked group")

        result = _run(check, cluster, "sweep")
        assert result["leaked"] == [made["leaker"]], "the GCS removed the group itself: no leak to sweep"
        assert result["removed"] == [made["leaker"]]
        assert result["leaked_after"] == []
        assert result["own"] in result["alive"], "the sweep removed a live job's group"
        assert started["keeper"] in result["alive"], "the sweep removed a group a detached actor owns"
        assert made["living"] in result["alive"], "the sweep removed a group a live actor of a dead job owns"
        # the CREATED ones among them held CPUs that are free again
        assert result["cpu_freed"] == pytest.approx(result["removed_cpu"], abs=1e-6)
        assert result["removed_cpu"] == pytest.approx(0.01)
