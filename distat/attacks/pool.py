"""A pool of Ray actors attacking shards of a fixed example subset.

The victim's weights go through the object store once (``ray.put``); each actor rebuilds the model and
the recipe once, then attacks whole shards. An actor that dies (node lost, process killed) is replaced
and its shard is redone, so no example is lost or counted twice; results come back in input order and
equal a sequential :class:`~distat.attacks.runner.AttackRunner` run, because each example's RNG is
seeded from its index.

:meth:`AttackPool.stats` says where the work ran: examples attacked per Ray node, the live actors' node ids
and process ids, and how many actors were replaced.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from distat.attacks.metrics import AttackRecord
from distat.attacks.runner import AttackJob, AttackRunner, Example, rebuild_model, state_of

log = logging.getLogger(__name__)


class _Actor:
    """The body of one Ray actor (wrapped with ``ray.remote`` at pool start)."""

    def __init__(self, job: AttackJob, config: Any, state: dict, tokenizer: Any, use_gpu: bool) -> None:
        import torch

        device = torch.device("cuda") if use_gpu and torch.cuda.is_available() else torch.device("cpu")
        torch.set_num_threads(1)
        self.device = str(device)
        self.runner = AttackRunner(job, rebuild_model(config, state, device), tokenizer)

    def pid(self) -> int:
        return os.getpid()

    def where(self) -> dict[str, Any]:
        """This actor's Ray node id, process id, torch device and the GPUs Ray assigned it (a fraction of one
        GPU shows as that GPU's id)."""
        import ray

        return {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(), "device": self.device,
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}

    def attack(self, shard: list[Example]) -> list[AttackRecord]:
        return self.runner.run(shard)


class AttackPool:
    """``with AttackPool(job, model, tokenizer, actors=2) as pool: records = pool.run(examples)``."""

    def __init__(self, job: AttackJob, model: nn.Module, tokenizer: Any, *, actors: int = 2,
                 cpus_per_actor: float = 1.0, gpus_per_actor: float = 0.0, max_restarts: int = 3) -> None:
        import ray

        if not ray.is_initialized():
            raise RuntimeError("AttackPool needs a running Ray (ray.init)")
        self._ray = ray
        self.job = job
        self.n_actors = max(1, actors)
        self.max_restarts = max_restarts
        # "DEFAULT" scheduling: actors started from inside a Tune trial must not be captured by the trial's
        # tiny placement group; they take their own CPUs / GPU fractions from the cluster
        self._remote = ray.remote(num_cpus=cpus_per_actor, num_gpus=gpus_per_actor,
                                  scheduling_strategy="DEFAULT")(_Actor)
        # the weights enter the object store once; every actor (and replacement) reads the same copy
        self._args = (job, model.config, ray.put(state_of(model)), tokenizer, gpus_per_actor > 0)
        self.actors = [self._spawn() for _ in range(self.n_actors)]
        self._where = [a.where.remote() for a in self.actors]  # per slot: where its current actor runs
        self._known: dict[int, dict[str, Any]] = {}  # per slot, once its actor finished a shard
        self.examples_per_node: dict[str, int] = {}
        self.restarts = 0

    def _spawn(self) -> Any:
        return self._remote.remote(*self._args)

    def stats(self) -> dict[str, Any]:
        """Where the work ran so far: ``attack_nodes`` (examples attacked per Ray node id), ``attack_actors``
        (node id, pid, device and GPU ids of each live actor that finished a shard) and ``actor_restarts``."""
        return {"attack_nodes": dict(self.examples_per_node),
                "attack_actors": [self._known[s] for s in sorted(self._known)],
                "actor_restarts": self.restarts}

    def actor_pids(self) -> list[int]:
        return self._ray.get([a.pid.remote() for a in self.actors])

    def run(self, examples: Sequence[Example], progress: Callable[[int, int], None] | None = None,
            shard_size: int | None = None,
            on_records: Callable[[list[AttackRecord]], None] | None = None) -> list[AttackRecord]:
        """Attack ``examples`` in shards over the actors; ``on_records`` gets each shard's records as it comes back
        (before ``progress``), so a caller can keep them should this process die before the end."""
        ray = self._ray
        if not examples:
            return []
        size = shard_size or max(1, math.ceil(len(examples) / (self.n_actors * 4)))
        pending = [list(examples[i : i + size]) for i in range(0, len(examples), size)]
        done: dict[int, AttackRecord] = {}
        in_flight: dict[Any, tuple[int, list[Example]]] = {}  # ref -> (actor slot, shard)
        idle = list(range(self.n_actors))
        while pending or in_flight:
            while pending and idle:
                slot, shard = idle.pop(), pending.pop(0)
                in_flight[self.actors[slot].attack.remote(shard)] = (slot, shard)  # after `where`: in order
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            ref = ready[0]
            slot, shard = in_flight.pop(ref)
            try:
                records = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorDiedError,
                    ray.exceptions.ActorUnavailableError) as e:
                self.restarts += 1
                if self.restarts > self.max_restarts * self.n_actors:
                    raise RuntimeError(f"attack actors died {self.restarts} times; giving up") from e
                log.warning("attack actor %d died (%s); replacing it and redoing its shard", slot,
                            type(e).__name__)
                self.actors[slot] = self._spawn()
                self._where[slot] = self.actors[slot].where.remote()
                self._known.pop(slot, None)
                pending.insert(0, shard)
                idle.append(slot)
                continue
            for r in records:
                if r.index in done:
                    raise RuntimeError(f"example {r.index} attacked twice")
                done[r.index] = r
            if on_records is not None:
                on_records(records)
            where = ray.get(self._where[slot])  # already resolved: the actor ran `where` before the shard
            self._known[slot] = where
            self.examples_per_node[where["node_id"]] = self.examples_per_node.get(where["node_id"], 0) + len(records)
            idle.append(slot)
            if progress is not None:
                progress(len(done), len(examples))
        return [done[ex.index] for ex in examples]

    def close(self) -> None:
        for a in self.actors:
            self._ray.kill(a)
        self.actors = []
        self._known = {}

    def __enter__(self) -> AttackPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
