"""The victim-independent work of attacking an example, kept for the next victim that attacks it.

Every trial of a search attacks the same examples with the same recipe; the victim differs, but much of the work
does not: the sentence encoder's embedding of a text window and the part-of-speech tags of a context window are
functions of the text alone. A :class:`WorkCache` keeps them per attacked example on the search's shared storage,
under the threat model's spec hash, so a later trial (another actor, another node) starts the example with what the
earlier ones computed.

Keyed so that a hit is never wrong: an entry is keyed by the spec hash (recipe, options, resources' content
fingerprints, library versions) and the exact input (the example's index and texts; the window's text), and
holds what the uncached path computed for that input. Tags are discrete and the same whenever they are computed.
An embedding agrees with a recomputation of it to float rounding (the encoder's matrix products depend on the
batch's shape in their last bits: :class:`distat.attacks.textattack_parts.SentenceSimilarity`), which is the
same freedom an uncached attack already has from one call's batch to the next: an outcome can differ only where
a similarity lies within about 1e-7 of the threshold. ``benchmarks/attack_throughput.py`` compares outcomes with
and without the cache example by example.

Layout: ``<root>/<spec hash>/<example digest>/<writer>.npz``: each attack of an example that computed something
new writes one file of what it computed (atomically: a temporary name, then a rename), so concurrent writers never
touch the same file, and a reader takes the union of the files. A cache that cannot be read or written (a lost
mount, a full disk, a damaged file) costs speed, never a result: the problem is logged once and the attack goes on
uncached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from distat.atomic import atomic_file

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class WorkCacheRef:
    """Where a cache lives and which threat model it serves; travels with an attack job to its actors."""

    root: str
    spec_hash: str


@dataclass
class ExampleWork:
    """What is known for one example: sentence embeddings by text, part-of-speech tags by context window."""

    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    tags: dict[str, list[str]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.embeddings or self.tags)


def example_digest(index: int, text: str, other_text: str | None, label: int) -> str:
    """24 hex digits naming one attacked example (its position in the subset and its content)."""
    payload = json.dumps([index, text, other_text, int(label)], ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode("ascii")).hexdigest()[:24]


class WorkCache:
    """Read and add to the cache of one threat model (see the module docstring)."""

    def __init__(self, ref: WorkCacheRef) -> None:
        self.folder = Path(ref.root) / ref.spec_hash
        self.writer = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.broken: str | None = None

    def _give_up(self, what: str, exc: BaseException) -> None:
        if self.broken is None:
            log.warning("attack work cache %s: %s failed (%s); attacking without it", self.folder, what, exc)
        self.broken = f"{what}: {exc}"

    def load(self, digest: str) -> ExampleWork:
        """The union of every file stored for the example (empty when there is none or the cache is broken)."""
        work = ExampleWork()
        if self.broken is not None:
            return work
        folder = self.folder / digest
        try:
            files = sorted(p for p in folder.glob("*.npz") if not p.name.startswith("."))
        except OSError as exc:
            self._give_up("reading", exc)
            return work
        for path in files:
            try:
                with np.load(path, allow_pickle=False) as data:
                    texts = [str(t) for t in data["texts"]]
                    vectors = np.asarray(data["embeddings"], dtype=np.float32)
                    tags = json.loads(str(data["tags"]))
                if len(texts) != len(vectors):
                    raise ValueError("texts and embeddings differ in length")
                work.embeddings.update(zip(texts, vectors, strict=True))
                work.tags.update({k: list(v) for k, v in tags.items()})
            except (OSError, ValueError, KeyError, TypeError) as exc:  # one damaged file: skip it, keep the rest
                log.warning("attack work cache: skipping %s (%s)", path, exc)
        return work

    def save(self, digest: str, new: ExampleWork) -> None:
        """Store what this attack computed for the example (nothing when it computed nothing)."""
        if not new or self.broken is not None:
            return
        folder = self.folder / digest
        texts = list(new.embeddings)
        width = len(next(iter(new.embeddings.values()))) if texts else 0
        vectors = (np.stack([new.embeddings[t] for t in texts]).astype(np.float32) if texts
                   else np.zeros((0, width), dtype=np.float32))
        try:
            with atomic_file(folder / f"{self.writer}-{uuid.uuid4().hex[:8]}.npz") as part, open(part, "wb") as handle:
                np.savez(handle, texts=np.asarray(texts, dtype=str), embeddings=vectors,
                         tags=np.asarray(json.dumps(new.tags, ensure_ascii=True)))
        except OSError as exc:
            self._give_up("writing", exc)
