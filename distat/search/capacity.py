"""Whether one trial fits the Ray cluster, checked before anything is written (search folder, MLflow runs).

A trial's phases run one after the other (ADA generation, training on Ray Train workers, the attack actors),
so what it needs of each resource is its largest phase, not their sum.
"""

from __future__ import annotations

import logging
import time

from distat.errors import DistatError
from distat.search.cluster import cluster_capacity
from distat.search.space import SearchConfig

log = logging.getLogger(__name__)


def trial_needs(scfg: SearchConfig) -> dict[str, tuple[float, str]]:
    """The most of each Ray resource (``CPU``, ``GPU``) one trial holds at once, with the phase that needs it.

    A trial's phases run one after the other (ADA generation, training on Ray Train workers, the attack
    actors), so the need is the largest phase, not their sum.
    """
    res, att = scfg.resources, scfg.attack
    phases = [(f"training: {res.num_workers} worker(s) x {_num(res.cpus_per_worker)} CPU"
               + (f" + {_num(res.gpus)} GPU" if res.gpus else ""),
               {"CPU": res.num_workers * res.cpus_per_worker, "GPU": res.num_workers * res.gpus})]
    if att.actors > 0:
        phases.append((f"attack: {att.actors} actor(s) x {_num(att.cpus_per_actor)} CPU"
                       + (f" + {_num(att.gpus_per_actor)} GPU" if att.gpus_per_actor else ""),
                       {"CPU": att.actors * att.cpus_per_actor, "GPU": att.actors * att.gpus_per_actor}))
    aug = scfg.base_trial().augment
    if aug is not None and aug.actors > 0:
        phases.append((f"ADA generation: {aug.actors} actor(s) x 1 CPU"
                       + (f" + {_num(aug.gpus_per_actor)} GPU" if aug.gpus_per_actor else ""),
                       {"CPU": float(aug.actors), "GPU": aug.actors * aug.gpus_per_actor}))
    needs: dict[str, tuple[float, str]] = {}
    for label, amounts in phases:
        for key, amount in amounts.items():
            if amount > needs.get(key, (0.0, ""))[0]:
                needs[key] = (float(amount), label)
    return needs


def resource_shortfall(needs: dict[str, tuple[float, str]], have: dict[str, float]) -> str | None:
    """The first resource a trial needs more of than the cluster has, as one line; None if it fits."""
    for key in ("GPU", "CPU", *sorted(set(needs) - {"GPU", "CPU"})):
        if key not in needs:
            continue
        amount, phase = needs[key]
        available = float(have.get(key, 0.0))
        if amount > available + 1e-9:
            return (f"a trial needs {_num(amount)} {key} ({phase}) but the Ray cluster has {_num(available)}: "
                    "lower resources/attack in the search YAML or use a bigger cluster")
    return None


def check_cluster_fits(scfg: SearchConfig, wait_s: float = 0.0) -> None:
    """Fail with one line when one trial needs more CPUs/GPUs than the Ray cluster has (or can scale to).

    ``wait_s``: on an existing cluster, nodes may still be joining; look again for this long before failing.
    """
    needs = trial_needs(scfg)
    deadline = time.monotonic() + wait_s
    while True:
        have = cluster_capacity()
        problem = None if have is None else resource_shortfall(needs, have)
        if problem is None:
            if have is None:
                log.info("an autoscaler manages this cluster: not checking per-trial resources up front")
            return
        if time.monotonic() >= deadline:
            raise DistatError(problem)
        time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
