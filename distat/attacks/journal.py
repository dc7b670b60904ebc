"""Resumable attacks: every attacked example is kept as soon as it is done, so a killed evaluation goes on where
it stopped instead of attacking its examples again.

A journal is an append-only JSON-lines file. Its first line says what the records are of: the threat-model
spec's hash (recipe, options, resources, the attacked subset...) and the attacked checkpoint's digest (its
weights' bytes). Each further line is one :class:`~distat.attacks.metrics.AttackRecord`. A journal whose first
line names another spec or checkpoint is of another evaluation: it is set aside (renamed ``*.stale``) and the
examples are attacked afresh. A line cut short by a kill is ignored (its example is attacked again), as is a
record whose text is not the example's at its index (a subset that changed under the same name).

Records are flushed and fsynced per batch (one shard of an actor pool, one example in process): a driver killed
at any point loses at most the shards in flight.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from distat.attacks.metrics import AttackRecord
from distat.attacks.runner import AttackJob, Example

log = logging.getLogger(__name__)

__all__ = ["AttackJournal", "JournalRun", "attack_resumably", "checkpoint_digest"]

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
_CHUNK = 1 << 20


def checkpoint_digest(checkpoint: str | os.PathLike[str]) -> str:
    """16 hex digits of the SHA-256 of a checkpoint folder's weight files (by name, in order): the same
    weights give the same digest wherever the folder lies."""
    folder = Path(checkpoint)
    digest = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES
                   and not p.name.startswith(".")) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f"{folder}: no model weights (*.safetensors, *.bin) to attack")
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()[:16]


class AttackJournal:
    """The records of one (checkpoint, spec) evaluation in ``path`` (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str], *, spec: str, checkpoint: str) -> None:
        self.path = Path(path)
        self.header = {"journal": 1, "spec": spec, "checkpoint": checkpoint}

    def load(self, examples: Sequence[Example]) -> dict[int, AttackRecord]:
        """The records already attacked of ``examples``, by index; a journal of another evaluation is set aside."""
        if not self.path.is_file():
            return {}
        by_index = {ex.index: ex for ex in examples}
        done: dict[int, AttackRecord] = {}
        with self.path.open(encoding="utf-8") as fh:
            lines = fh.read().split("\n")
        try:
            header = json.loads(lines[0])
        except ValueError:
            header = None
        if header != self.header:
            stale = self.path.with_name(self.path.name + ".stale")
            os.replace(self.path, stale)
            log.warning("%s holds the attacks of another evaluation (%s); set aside as %s", self.path,
                        header if isinstance(header, dict) else "unreadable", stale.name)
            return {}
        for line in lines[1:]:
            if not line.strip():
                continue
            try:
                record = AttackRecord.from_dict(json.loads(line))
            except (ValueError, TypeError, KeyError):
                continue  # cut short by a kill mid-write: attacked again
            ex = by_index.get(record.index)
            if ex is None or ex.text != record.text or ex.label != record.label or ex.other_text != record.other_text:
                continue
            done[record.index] = record
        return done

    def append(self, records: Sequence[AttackRecord]) -> None:
        """Add ``records`` durably (the header first, for a new journal)."""
        if not records:
            return
        new = not self.path.is_file()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps(self.header)] if new else []
        lines += [json.dumps(r.to_dict(), ensure_ascii=False) for r in records]
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


@dataclass(frozen=True)
class JournalRun:
    """The records of every example, in order, and how many came from the journal rather than an attack."""

    records: list[AttackRecord]
    reused: int
    attacked: int


def attack_resumably(model: nn.Module, tokenizer: Any, examples: Sequence[Example], job: AttackJob,
                     journal: AttackJournal | None, *, actors: int = 0, cpus_per_actor: float = 1.0,
                     gpus_per_actor: float = 0.0, progress: Callable[[int, int], None] | None = None,
                     pool_stats: dict[str, Any] | None = None) -> JournalRun:
    """Attack the ``examples`` the journal does not hold yet (in this process, or with ``actors`` Ray actors),
    keeping each record in the journal as it comes; all records in the examples' order. Without a journal every
    example is attacked and nothing is kept on disk."""
    done = journal.load(examples) if journal is not None else {}
    todo = [ex for ex in examples if ex.index not in done]
    total = len(examples)
    if done and journal is not None:
        log.info("%s: %d of %d examples already attacked; attacking the other %d", journal.path.name, len(done),
                 total, len(todo))

    def keep(records: list[AttackRecord]) -> None:
        if journal is not None:
            journal.append(records)
        for r in records:
            done[r.index] = r

    if todo and actors <= 0:
        from distat.attacks.runner import AttackRunner

        runner = AttackRunner(job, model, tokenizer)

        def step(record: AttackRecord) -> None:
            keep([record])
            if progress is not None:
                progress(len(done), total)

        runner.run(todo, progress=step)
    elif todo:
        from distat.attacks.pool import AttackPool

        with AttackPool(job, model, tokenizer, actors=actors, cpus_per_actor=cpus_per_actor,
                        gpus_per_actor=gpus_per_actor) as pool:

            def pool_step(_: int, __: int) -> None:
                if pool_stats is not None:
                    pool_stats.update(pool.stats())
                if progress is not None:
                    progress(len(done), total)

            pool.run(todo, progress=pool_step, on_records=keep)
            if pool_stats is not None:
                pool_stats.update(pool.stats())
    elif progress is not None:
        progress(total, total)
    return JournalRun(records=[done[ex.index] for ex in examples], reused=total - len(todo), attacked=len(todo))
