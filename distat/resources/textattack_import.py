"""Importing TextAttack offline and without side effects on this process's environment.

A plain ``import textattack`` calls ``nltk.download`` (network) and, when ``TA_CACHE_DIR`` is set, rewrites
``HF_HOME``/``XDG_CACHE_HOME`` for the whole process; :func:`import_textattack` is the only way distat imports it.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

from distat.errors import first_line
from distat.resources.base import BUILD_HINT, ResourceError
from distat.resources.paths import cache_dir
from distat.resources.wordnet import configure_nltk

logger = logging.getLogger(__name__)

__all__ = ["TA_POST_INSTALL_MARKER", "import_textattack"]

#: Marker file textattack 0.3.11 writes after its post-install ``nltk.download`` calls.
TA_POST_INSTALL_MARKER = "post_install_check_3"

#: Environment variables textattack's import writes (``TA_CACHE_DIR`` is read, then copied into the others).
_TEXTATTACK_ENV = ("TA_CACHE_DIR", "TFHUB_CACHE_DIR", "PYTORCH_TRANSFORMERS_CACHE", "HF_HOME",
                   "XDG_CACHE_HOME", "TOKENIZERS_PARALLELISM")
#: Libraries imported by textattack that freeze cache paths from the environment when they are imported.
_CACHE_FREEZING_MODULES = ("huggingface_hub", "transformers", "datasets")


def _nltk_resource_present(resource_id: str) -> bool:
    import nltk

    for category in ("corpora", "taggers", "tokenizers", "chunkers", "models", "misc", "sentiment"):
        for suffix in ("", ".zip"):
            try:
                nltk.data.find(f"{category}/{resource_id}{suffix}")
            except LookupError:
                continue
            return True
    return False


def _offline_nltk_download(info_or_id: Any = None, *args: Any, **kwargs: Any) -> bool:
    """Stands in for ``nltk.download`` once textattack is imported: never touches the network.

    textattack calls ``nltk.download`` at its first import and in ``WordSwapWordNet()`` ("omw-1.4", which the
    English WordNet does not need). Returns whether the resource is already present locally, as nltk would.
    """
    present = isinstance(info_or_id, str) and _nltk_resource_present(info_or_id)
    logger.debug("nltk.download(%r) skipped (distat is offline); present locally: %s", info_or_id, present)
    return present


def _install_offline_nltk_download() -> None:
    import nltk

    if nltk.download is not _offline_nltk_download:
        nltk.download = _offline_nltk_download


def _touch_marker(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / TA_POST_INSTALL_MARKER).touch()
    except OSError:
        return False
    return True


def import_textattack(nltk_root: Path, ta_cache: Path | None = None) -> ModuleType:
    """Import textattack offline and without side effects on this process's environment.

    At import, textattack 0.3.11 (``textattack/shared/utils/install.py``) sets ``TOKENIZERS_PARALLELISM``;
    reads ``TA_CACHE_DIR`` (default ``~/.cache/textattack``) and, if it is set, overwrites ``TFHUB_CACHE_DIR``,
    ``PYTORCH_TRANSFORMERS_CACHE``, ``HF_HOME`` and ``XDG_CACHE_HOME`` with it *before* importing transformers,
    datasets and huggingface_hub, which freeze their cache paths at import (so restoring the variables
    afterwards is not enough); calls ``nltk.download`` six times unless ``<cache>/post_install_check_3`` exists;
    rewrites the ``disabled`` flag of every existing logger (textattack's ``logging.config.dictConfig`` disables
    them, flair's, run later in the same import, re-enables them all, including ones the user had disabled);
    and builds a module-level ``StopwordModification()`` that needs nltk's English stop words.

    Here: nltk reads ``nltk_root`` (:func:`configure_nltk`); ``TA_CACHE_DIR`` is hidden during the import and
    the post-install marker is pre-created in textattack's default cache folder, so nothing is downloaded and
    no cache variable is touched; afterwards textattack's cache is pointed at ``ta_cache`` (default: the user's
    ``$TA_CACHE_DIR`` or ``<distat cache>/textattack``); environment variables and logger states are restored;
    ``nltk.download`` is replaced by an offline stand-in (``WordSwapWordNet()`` calls it on construction).
    If the default folder is not writable, the marker goes into ``ta_cache`` and the libraries that freeze
    cache paths are imported first, then the variables are restored.
    """
    with _IMPORT_LOCK:  # a background preload (distat.search.tuner) and the attack may both ask
        return _import_textattack(nltk_root, ta_cache)


_IMPORT_LOCK = threading.Lock()


def _import_textattack(nltk_root: Path, ta_cache: Path | None) -> ModuleType:
    configure_nltk(nltk_root)
    _install_offline_nltk_download()
    if "textattack" in sys.modules:
        return sys.modules["textattack"]
    saved_env = {name: os.environ.get(name) for name in _TEXTATTACK_ENV}
    if ta_cache is None:
        ta_cache = Path(saved_env["TA_CACHE_DIR"] or cache_dir() / "textattack")
    ta_cache = Path(ta_cache).expanduser()
    os.environ.pop("TA_CACHE_DIR", None)
    if not _touch_marker(Path(os.path.expanduser("~/.cache/textattack"))):
        logger.warning("~/.cache/textattack is not writable; importing textattack with TA_CACHE_DIR=%s", ta_cache)
        if not _touch_marker(ta_cache):
            raise ResourceError(f"cannot write textattack's cache folder {ta_cache}; give a writable cache dir")
        for name in _CACHE_FREEZING_MODULES:
            with contextlib.suppress(ImportError):
                importlib.import_module(name)
        os.environ["TA_CACHE_DIR"] = str(ta_cache)
    manager = logging.Logger.manager
    saved_disabled = {name: lg.disabled for name, lg in manager.loggerDict.items()
                      if isinstance(lg, logging.Logger)}
    try:
        module = importlib.import_module("textattack")
    except LookupError as exc:  # an nltk resource beyond WordNet/stopwords
        reason = first_line(exc, 200, whole=True)
        raise ResourceError(f"textattack needs nltk data missing from {nltk_root} ({reason}); {BUILD_HINT}") from exc
    finally:
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        for name, disabled in saved_disabled.items():
            lg = manager.loggerDict.get(name)
            if isinstance(lg, logging.Logger):
                lg.disabled = disabled
    install = importlib.import_module("textattack.shared.utils.install")
    install.TEXTATTACK_CACHE_DIR = str(ta_cache)  # read by path_in_cache() at call time
    return module

