"""Where the offline resources live: the cache folder and the resolved location of every resource."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ResourcePaths", "cache_dir"]


def cache_dir(override: str | None = None) -> Path:
    """The distat cache: ``override``, else ``$DISTAT_CACHE_DIR``, else ``$XDG_CACHE_HOME/distat``
    (``~/.cache/distat`` when ``XDG_CACHE_HOME`` is unset)."""
    if override:
        return Path(override).expanduser()
    if os.environ.get("DISTAT_CACHE_DIR"):
        return Path(os.environ["DISTAT_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "distat"


@dataclass(frozen=True)
class ResourcePaths:
    """Where each offline attack resource lives (:func:`distat.resources.resolve` fills it from the registry;
    its fields are the registry's names, in the registry's order). A plain value object: it is pickled to
    attack actors and Train workers, which read their resources from these paths."""

    wordnet: Path
    """nltk data root: holds ``corpora/wordnet`` and ``corpora/stopwords``."""
    word_vectors: Path
    """counter-fitted word vectors (``.npz``) or a user's own vector file."""
    sentence_encoder: Path
    """a sentence-transformers model folder (similarity constraint in place of USE)."""
    mlm: Path
    """a masked language model folder (BAE's candidate generator)."""
    pos_model: str
    """a spaCy package name or pipeline folder (part-of-speech constraint)."""
    calibration: Path
    """the sentence-encoder thresholds calibrated for each recipe (:mod:`distat.resources.calibration`)."""
