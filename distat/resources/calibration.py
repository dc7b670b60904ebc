"""Calibrating the sentence-encoder thresholds that replace the Universal Sentence Encoder's.

TextFooler, TextBugger and BAE filter candidate swaps by the similarity of a window of ~15 words around
the swap, before vs after, under USE (thresholds 0.84 angular, 0.8 and 0.936 cosine). MiniLM's cosine
similarities live on another scale, so USE's numbers cannot be reused, and USE itself is not available
offline to match quantiles against. distat therefore calibrates against what the threshold is *for*:
keeping meaning-preserving swaps and rejecting meaning-changing ones.

From real sentences (the shared SST-2 dev split by default) we make single-word swaps of two kinds,
using the counter-fitting paper's linguistic constraints (``../shared/data/lexical``): synonym swaps
(PPDB synonyms: meaning kept) and antonym swaps (WordNet + PPDB antonyms: meaning changed). MiniLM's
cosine similarity of the 15-word windows gives two score distributions, and per recipe:

* ``textfooler``: the threshold maximising Youden's J (true-synonym rate − false-antonym rate), the best
  single separator — TextFooler's USE threshold plays that role;
* ``textbugger``: the 5th percentile of synonym-swap similarity (keeps 95% of meaning-preserving swaps),
  looser, as TextBugger's USE threshold (0.8) is looser than TextFooler's;
* ``bae``: the 95th percentile of antonym-swap similarity (rejects 95% of meaning-changing swaps),
  stricter, as BAE's (0.936) is the strictest of the three.

The thresholds are written to ``calibration.json`` with the rates they imply, and read by the recipes.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from distat.atomic import write_json
from distat.resources.base import BuildOptions, ResourceError

if TYPE_CHECKING:
    from distat.resources.paths import ResourcePaths

__all__ = ["build_calibration", "calibrate", "calibration_present", "make_swaps", "read_thresholds", "similarities",
           "write_calibration", "youden_threshold"]

WINDOW = 15


def _pairs(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] != parts[1] and parts[0].isalpha() and parts[1].isalpha():
            out.setdefault(parts[0], []).append(parts[1])
    return out


def _window(words: list[str], i: int) -> str:
    lo = max(0, i - WINDOW // 2)
    return " ".join(words[lo : lo + WINDOW])


def make_swaps(sentences: Sequence[str], synonyms: dict[str, list[str]], antonyms: dict[str, list[str]],
               *, per_kind: int = 600, seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """(original window, swapped window) pairs for synonym, antonym and random-word swaps, balanced."""
    rng = random.Random(seed)
    found: dict[str, list[tuple[str, str]]] = {"synonym": [], "antonym": [], "random": []}
    vocabulary = sorted(synonyms)
    for sentence in sentences:
        words = sentence.split()
        for i, w in enumerate(words):
            if w not in synonyms:
                continue
            for kind, table in (("synonym", synonyms), ("antonym", antonyms)):
                if w in table:
                    swapped = [*words[:i], rng.choice(table[w]), *words[i + 1 :]]
                    found[kind].append((_window(words, i), _window(swapped, i)))
            swapped = [*words[:i], rng.choice(vocabulary), *words[i + 1 :]]
            found["random"].append((_window(words, i), _window(swapped, i)))
    n = min(per_kind, *(len(v) for v in found.values()))
    return {kind: rng.sample(pairs, n) for kind, pairs in found.items()}


def similarities(encoder: Any, pairs: Sequence[tuple[str, str]], batch_size: int = 64) -> np.ndarray:
    a = encoder.encode([p[0] for p in pairs], batch_size=batch_size, normalize_embeddings=True,
                       show_progress_bar=False)
    b = encoder.encode([p[1] for p in pairs], batch_size=batch_size, normalize_embeddings=True,
                       show_progress_bar=False)
    return np.sum(np.asarray(a) * np.asarray(b), axis=1)


def youden_threshold(positive: np.ndarray, negative: np.ndarray) -> float:
    """The cut t maximising P(pos ≥ t) − P(neg ≥ t)."""
    candidates = np.unique(np.concatenate([positive, negative]))
    best_t, best_j = float(candidates[0]), -1.0
    for t in candidates:
        j = float(np.mean(positive >= t) - np.mean(negative >= t))
        if j > best_j:
            best_t, best_j = float(t), j
    return best_t


def calibrate(encoder: Any, sentences: Sequence[str], lexical_dir: Path, *, per_kind: int = 600,
              seed: int = 0) -> dict[str, Any]:
    synonyms = _pairs(lexical_dir / "ppdb_synonyms.txt")
    antonyms = _pairs(lexical_dir / "wordnet_antonyms.txt")
    for k, v in _pairs(lexical_dir / "ppdb_antonyms.txt").items():
        antonyms.setdefault(k, []).extend(v)
    swaps = make_swaps(sentences, synonyms, antonyms, per_kind=per_kind, seed=seed)
    syn = similarities(encoder, swaps["synonym"])
    ant = similarities(encoder, swaps["antonym"])
    rnd = similarities(encoder, swaps["random"])
    thresholds = {
        "textfooler": youden_threshold(syn, rnd),
        "textbugger": float(np.quantile(syn, 0.05)),
        "bae": youden_threshold(syn, ant),
    }
    # keep the original recipes' order of strictness: TextBugger ≤ TextFooler ≤ BAE
    thresholds["textbugger"] = min(thresholds["textbugger"], thresholds["textfooler"])
    thresholds["bae"] = max(thresholds["bae"], thresholds["textfooler"])
    rates = {name: {"synonym_accept": float(np.mean(syn >= t)), "antonym_accept": float(np.mean(ant >= t)),
                    "random_accept": float(np.mean(rnd >= t))} for name, t in thresholds.items()}
    return {"thresholds": {k: round(v, 4) for k, v in thresholds.items()}, "rates": rates,
            "swaps_per_kind": len(syn), "synonym_mean": float(syn.mean()), "antonym_mean": float(ant.mean()),
            "random_mean": float(rnd.mean()), "window": WINDOW}


def write_calibration(report: dict[str, Any], path: Path) -> Path:
    """Write the calibration report atomically (a reader finds the old file, the new one or none)."""
    return write_json(path, report)


def read_thresholds(path: Path) -> dict[str, float] | None:
    """The calibrated threshold per recipe, or None when ``path`` holds no calibration."""
    if not path.is_file():
        return None
    return {k: float(v) for k, v in json.loads(path.read_text())["thresholds"].items()}


def calibration_present(path: Path) -> bool:
    """Whether ``path`` holds a readable calibration (a file a writer outside distat cut short does not)."""
    try:
        return read_thresholds(path) is not None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _calibration_sentences(options: BuildOptions) -> list[str]:
    from distat.data import load_dataset

    if options.shared_data is not None and (options.shared_data / "sst2").is_dir():
        return load_dataset(options.shared_data / "sst2", splits=["dev"]).split("dev").text_a
    return load_dataset("builtin:rotten_tomatoes", splits=["dev"]).split("dev").text_a


def build_calibration(paths: ResourcePaths, options: BuildOptions) -> Path:
    """Calibrate the sentence encoder of ``paths`` on SST-2 dev (the shared data's, else the built-in Rotten
    Tomatoes dev split) and the lexical pair files, and write ``paths.calibration``."""
    if options.lexical_dir is None:
        raise ResourceError("similarity calibration needs the lexical pair files: pass --lexical DIR "
                            "(e.g. ../shared/data/lexical)")
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(str(paths.sentence_encoder), device="cpu")
    report = calibrate(encoder, _calibration_sentences(options), options.lexical_dir)
    report["encoder"] = str(paths.sentence_encoder)
    return write_calibration(report, paths.calibration)
