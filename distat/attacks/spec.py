"""The threat model behind a robust-accuracy number: everything that changes it, as one object with a short hash.

A robust accuracy means something only together with the attack that produced it: the recipe, its options
(candidate count, modify rate, query budget, the similarity threshold actually in force, calibrated or given),
which examples were attacked (split, seed, size, and a digest of the examples themselves), the offline
resources the recipe read (word vectors, sentence encoder, MLM, POS model, WordNet) and the library versions
that implement the recipe. :class:`ThreatModel` holds exactly those; :func:`spec_hash` is a 10-hex-digit hash
of its canonical JSON, the same on every machine and in every process for the same settings. Cosmetic things
are left out on purpose: actor count, CPUs, GPUs, where the resources lie on disk.

Resource fingerprints are content hashes, not path or mtime hashes (neither is stable across machines): the
SHA-256 of the bytes of every file the resource consists of, by relative path. Left out are files that are not
the resource's content: hidden files (distat's atomic writers stage under dot-names), ``__pycache__``/``.pyc``,
and a top-level ``report.json`` (the build reports of the vectors and the MLM hold timings and absolute paths);
for WordNet only ``corpora/wordnet*`` and ``corpora/stopwords*`` count (what the recipes read from an nltk data
folder that may hold much more); a spaCy package given by name is hashed from its installed folder. Hashing
every byte costs about 0.3 s for the default resources (~180 MB at ~650 MB/s); a process remembers the result
per (file, size, mtime, inode), so trials evaluated in one process pay it once. The calibration file is not
fingerprinted: what it changes, the similarity threshold, is recorded as the value in force.

Every robust metric carries the hash (``threat_spec_hash`` in a trial's metrics and ``final.json``; the whole
spec in ``<trial>/threat_spec.json``), and :func:`check_same_spec` refuses to put numbers of different specs in
one column.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import math
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from distat.atomic import write_json
from distat.errors import DistatError
from distat.resources import BUILD_HINT, ResourceError
from distat.settings import Strict

if TYPE_CHECKING:
    from distat.attacks.runner import AttackJob, Example

__all__ = ["HASH_KEY", "SPEC_FILE", "StaticSetSpec", "ThreatModel", "ThreatSuite", "check_same_spec", "read_spec",
           "resource_fingerprint", "spec_diff", "spec_file", "spec_hash", "static_set_spec", "threat_model",
           "write_spec"]

SPEC_FILE = "threat_spec.json"
"""The full spec in a trial (or evaluation) folder."""
HASH_KEY = "threat_spec_hash"
"""The metric key (and ``threat_spec.json`` key) of the hash."""
SPEC_VERSION = 1
"""Bumped when what the spec holds, or how it is hashed, changes meaning: old hashes then differ, as they should."""
HASH_CHARS = 10

#: The library that implements each resource's part of a recipe: its version changes the numbers too.
_LIBRARY_OF = {"wordnet": "nltk", "sentence_encoder": "sentence-transformers", "mlm": "transformers",
               "pos_model": "spacy"}
_SKIP_DIRS = frozenset({"__pycache__"})
_BUILD_REPORTS = frozenset({"report.json"})  # timings and absolute paths written beside a built resource
_WORDNET_PARTS = ("wordnet", "stopwords")  # what the recipes read under <nltk_data>/corpora
_CHUNK = 1 << 20


class _Spec(Strict):
    """A spec: hashed from its canonical JSON."""

    #: fields added after SPEC_VERSION 1, left out of the canonical JSON while they hold their default: a spec
    #: that does not use them hashes as it did before they existed
    _LATER_FIELDS: ClassVar[tuple[str, ...]] = ()

    def canonical_json(self) -> str:
        """The spec as compact JSON with sorted keys and floats rounded to 12 significant digits (a threshold
        read back from a JSON file or computed as ``0.1 + 0.2`` hashes like the number it stands for)."""
        data = self.model_dump(mode="json")
        for name in self._LATER_FIELDS:
            if data.get(name) == type(self).model_fields[name].default:
                data.pop(name, None)
        return json.dumps(_stable(data), sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                          allow_nan=False)

    @property
    def hash(self) -> str:
        return spec_hash(self)


class ThreatModel(_Spec):
    """Everything that changes a robust-accuracy number, and nothing else (see the module docstring)."""

    spec_version: int = SPEC_VERSION
    recipe: str
    # AttackOptions as given (null = the recipe's own value, fixed by the distat version below)
    max_candidates: int | None
    max_modify_rate: float | None
    query_budget: int | None
    sim_threshold: float | None
    """the sentence-encoder threshold in force (option, else calibrated, else default); null for a recipe
    without the similarity constraint."""
    stopwords_ignore_case: bool = False
    """stopwords compared lower-cased (False: TextAttack's case-sensitive comparison)."""
    split: str
    """the attacked split, by the name it has in the dataset."""
    n: int | None
    """examples asked for (null = the whole split)."""
    subset_seed: int
    attack_seed: int
    """the per-example RNG seed of the attack (:func:`distat.attacks.runner.example_seed`)."""
    examples: int
    """examples actually attacked."""
    subset_digest: str
    """hash of the attacked examples (texts, labels, order): the same subset whatever the dataset's path."""
    resources: dict[str, str]
    """content fingerprint of each resource the recipe reads (:func:`resource_fingerprint`)."""
    versions: dict[str, str]
    """distat, TextAttack and the library of each resource the recipe reads."""

    _LATER_FIELDS: ClassVar[tuple[str, ...]] = ("stopwords_ignore_case",)


class StaticSetSpec(_Spec):
    """A static adversarial set's accuracy (AdvGLUE, an exported set): what changes it is the set's content and
    how long a text may be; where the file lies and what the user called it do not."""

    spec_version: int = SPEC_VERSION
    kind: str = "static"
    examples: int
    subset_digest: str
    """hash of the set's texts and labels, in order."""
    max_length: int
    versions: dict[str, str]


class ThreatSuite(_Spec):
    """The robust objective over several attacks: which attacks (by their specs' hashes) and how they combine
    (``min``: the worst case; else the one attack named)."""

    spec_version: int = SPEC_VERSION
    objective: str
    attacks: dict[str, str]
    """attack name -> the hash of its :class:`ThreatModel` or :class:`StaticSetSpec`."""


AnySpec = ThreatModel | StaticSetSpec | ThreatSuite


def spec_hash(spec: _Spec) -> str:
    """The first 10 hex digits of the SHA-256 of ``spec``'s canonical JSON."""
    return hashlib.sha256(spec.canonical_json().encode("ascii")).hexdigest()[:HASH_CHARS]


def _stable(value: Any) -> Any:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"a threat-model spec holds finite numbers only, not {value}")
        rounded = float(f"{value:.12g}")
        return int(rounded) if rounded.is_integer() else rounded  # 1 and 1.0 are one number
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_stable(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------------
# building a spec


def threat_model(job: AttackJob, examples: Sequence[Example], *, split: str, n: int | None,
                 subset_seed: int) -> ThreatModel:
    """The spec of attacking ``examples`` (drawn from ``split`` with ``n`` and ``subset_seed``) with ``job``:
    what a robust evaluation already has, the attack job with its resolved resource paths and the subset."""
    from distat.attacks.recipes import NEEDS, RECIPES, sim_threshold

    if job.recipe not in RECIPES:
        raise DistatError(f"unknown attack recipe {job.recipe!r} (choose from {', '.join(RECIPES)})")
    needs = NEEDS[job.recipe]
    options = job.options
    threshold = sim_threshold(job.resources, options, job.recipe) if "sentence_encoder" in needs else None
    versions = {"distat": _distat_version(), "textattack": _version("textattack")}
    versions.update({_LIBRARY_OF[name]: _version(_LIBRARY_OF[name]) for name in needs if name in _LIBRARY_OF})
    return ThreatModel(
        recipe=job.recipe, max_candidates=options.max_candidates, max_modify_rate=options.max_modify_rate,
        query_budget=options.query_budget, sim_threshold=threshold,
        stopwords_ignore_case=options.stopwords_ignore_case, split=split, n=n, subset_seed=subset_seed,
        attack_seed=job.seed, examples=len(examples), subset_digest=subset_digest(examples),
        resources={name: resource_fingerprint(name, getattr(job.resources, name)) for name in needs},
        versions=versions,
    )


def static_set_spec(texts: Sequence[tuple[str | None, str]], labels: Sequence[int], *, max_length: int
                    ) -> StaticSetSpec:
    """The spec of a static set's accuracy: ``texts`` as (other side of a pair or None, perturbed side)."""
    rows = [[a, b, int(y)] for (a, b), y in zip(texts, labels, strict=True)]
    return StaticSetSpec(examples=len(rows), subset_digest=_rows_digest(rows), max_length=max_length,
                         versions={"distat": _distat_version()})


def subset_digest(examples: Sequence[Example]) -> str:
    """16 hex digits of the SHA-256 of the examples' texts and labels, in order (the index is their position)."""
    return _rows_digest([[e.text, e.other_text, int(e.label)] for e in examples])


def _rows_digest(rows: list[list[Any]]) -> str:
    """16 hex digits of the SHA-256 of rows of texts and a label (as JSON, in order)."""
    payload = json.dumps(rows, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode("ascii")).hexdigest()[:16]


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _distat_version() -> str:
    # the running package's own version, also when distat runs from a checkout that is not installed; read
    # from the loaded root module because nothing below the app layer imports the root package
    return str(getattr(sys.modules.get("distat"), "__version__", None) or _version("distat"))


# --------------------------------------------------------------------------------------------------
# resource fingerprints

_memo: dict[tuple[Any, ...], str] = {}
_memo_lock = threading.Lock()


def resource_fingerprint(name: str, location: Path | str) -> str:
    """``sha256:`` and 16 hex digits: the content hash of resource ``name`` at ``location`` (module docstring:
    which files count). The same bytes anywhere give the same fingerprint; a resource with nothing to hash is
    a one-line :class:`ResourceError`."""
    root = _content_root(name, location)
    files = _content_files(name, root)
    if not files:
        raise ResourceError(f"resource {name} at {location}: nothing there to fingerprint; {BUILD_HINT}")
    stats = tuple((rel, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
                  for rel, st in ((rel, path.stat()) for rel, path in files))
    key = (name, str(root.resolve()), stats)
    with _memo_lock:
        known = _memo.get(key)
    if known is not None:
        return known
    total = hashlib.sha256()
    for rel, path in files:
        total.update(f"{rel}\0{_file_digest(path)}\n".encode())
    fingerprint = "sha256:" + total.hexdigest()[:16]
    with _memo_lock:
        _memo[key] = fingerprint
    return fingerprint


def _content_root(name: str, location: Path | str) -> Path:
    path = Path(location).expanduser()
    if name == "pos_model" and not path.exists():  # a spaCy package name: its installed folder
        try:
            spec = importlib.util.find_spec(str(location))
        except (ImportError, ValueError):
            spec = None
        folders = list(spec.submodule_search_locations or []) if spec is not None else []
        if not folders:
            raise ResourceError(f"resource pos_model {location!r}: no such folder or installed spaCy package")
        return Path(folders[0])
    return path


def _content_files(name: str, root: Path) -> list[tuple[str, Path]]:
    """(relative POSIX path, file) of every file that is ``root``'s content, sorted; a single file is ``""``."""
    if root.is_file():
        return [("", root)]
    if not root.is_dir():
        return []
    out = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        for file in files:
            path = Path(folder) / file
            rel = path.relative_to(root).as_posix()
            if file.startswith(".") or file.endswith(".pyc") or rel in _BUILD_REPORTS or not path.is_file():
                continue
            if name == "wordnet" and not _wordnet_part(rel):
                continue
            out.append((rel, path))
    return sorted(out)


def _wordnet_part(rel: str) -> bool:
    parts = rel.split("/")
    return len(parts) >= 2 and parts[0] == "corpora" and parts[1].startswith(_WORDNET_PARTS)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# files


def spec_file(name: str | None = None) -> str:
    """``threat_spec.json`` (the spec behind an evaluation's robust objective), or ``threat_spec.<name>.json``
    (one attack's of several)."""
    return SPEC_FILE if name is None else f"threat_spec.{name}.json"


def write_spec(spec: _Spec, folder: Path, name: str | None = None) -> str:
    """Write ``folder/`` :func:`spec_file` ``(name)`` (the hash and the spec) atomically; return the hash."""
    digest = spec.hash
    write_json(Path(folder) / spec_file(name), {HASH_KEY: digest, "spec": spec.model_dump(mode="json")},
               sort_keys=True)
    return digest


def read_spec(folder: Path, name: str | None = None) -> AnySpec | None:
    """The spec written by :func:`write_spec` in ``folder``; None when there is none (evaluated by an older
    distat); a one-line :class:`DistatError` for a file that is not one."""
    path = Path(folder) / spec_file(name)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["spec"]
        if "attacks" in data:
            return ThreatSuite.model_validate(data)
        if data.get("kind") == "static":
            return StaticSetSpec.model_validate(data)
        return ThreatModel.model_validate(data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DistatError(f"{path}: not a threat-model spec ({type(exc).__name__})") from None


# --------------------------------------------------------------------------------------------------
# one column, one spec


def spec_diff(a: _Spec, b: _Spec) -> list[tuple[str, Any, Any]]:
    """(field, value in ``a``, value in ``b``) for every field that differs, nested ones as ``resources.mlm``."""
    from distat.dicts import flatten

    left, right = flatten(_stable(a.model_dump(mode="json"))), flatten(_stable(b.model_dump(mode="json")))
    return [(key, left.get(key), right.get(key)) for key in sorted(set(left) | set(right))
            if left.get(key) != right.get(key)]


def check_same_spec(hashes_by_source: Mapping[str, str | _Spec | None], *, allow_missing: bool = False,
                    what: str = "robust accuracies") -> None:
    """Refuse to put ``what`` measured under different threat models in one column.

    ``hashes_by_source`` maps a label the user recognises (``trial 3f2a_00001``, ``search demo``) to the hash
    its numbers carry, or to its whole :class:`ThreatModel` (then the error also says what differs). The first
    source is the reference; the first one that differs from it raises one line naming both sources and both
    hashes. A source without a hash (None: evaluated before distat recorded specs) is an error too, unless
    ``allow_missing``.
    """
    reference: tuple[str, str, _Spec | None] | None = None
    for source, given in hashes_by_source.items():
        if given is None:
            if allow_missing:
                continue
            raise DistatError(f"{what}: {source} carries no threat-model spec hash (evaluated by an older distat?), "
                              "so it cannot share a column with the others; evaluate it again")
        spec = given if isinstance(given, _Spec) else None
        digest = spec.hash if spec is not None else str(given)
        if reference is None:
            reference = (source, digest, spec)
            continue
        ref_source, ref_digest, ref_spec = reference
        if digest == ref_digest:
            continue
        if ref_spec is not None and spec is not None:
            diff = "; ".join(f"{key} {_show(x)} vs {_show(y)}" for key, x, y in spec_diff(ref_spec, spec))
            detail = f"they differ in {diff}"
        else:
            detail = f"compare their {SPEC_FILE}"
        raise DistatError(f"{what} of different threat models would share a column: {ref_source} has spec "
                          f"{ref_digest}, {source} has spec {digest} ({detail})")


def _show(value: Any) -> str:
    return "null" if value is None else str(value)
