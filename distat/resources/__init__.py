"""Offline attack resources: one cache folder, one class per resource, every location overridable.

TextAttack's recipes download their parts (nltk data, counter-fitted word vectors, the Universal Sentence
Encoder, BERT masked LMs) on first use. distat builds or points at local equivalents instead; the registry
(:mod:`distat.resources.registry`, its table lists them) says for each where it lives, how it is built (or that
it comes packaged with distat) and how its presence is checked. "Present" means "completely written": builds
write into a staging file or folder and rename it into place (:mod:`distat.atomic`).

The cache is ``--cache-dir``, else ``$DISTAT_CACHE_DIR``, else ``$XDG_CACHE_HOME/distat`` (``~/.cache/distat``);
``--resource NAME=PATH`` overrides one location. ``distat resources build`` builds what is missing (:func:`build`),
``distat resources show`` reports what is there (:func:`show`), and each attack recipe declares the resources
it needs (:data:`distat.attacks.recipes.NEEDS`, checked by :func:`require`).

TextAttack itself must be imported through :func:`import_textattack` (a plain ``import textattack`` downloads
and rewrites cache variables of the whole process). This package imports nothing heavy at import time
(torch, transformers, nltk, spaCy load when a resource is built or used).
"""

from __future__ import annotations

from distat.resources.base import BUILD_HINT, BuildOptions, Resource, ResourceError
from distat.resources.paths import ResourcePaths, cache_dir
from distat.resources.pos import load_pos_tagger
from distat.resources.registry import PARTS, REGISTRY, build, missing, require, resolve, show
from distat.resources.textattack_import import import_textattack
from distat.resources.wordnet import configure_nltk

__all__ = [
    "BUILD_HINT",
    "PARTS",
    "REGISTRY",
    "BuildOptions",
    "Resource",
    "ResourceError",
    "ResourcePaths",
    "build",
    "cache_dir",
    "configure_nltk",
    "import_textattack",
    "load_pos_tagger",
    "missing",
    "require",
    "resolve",
    "show",
]
