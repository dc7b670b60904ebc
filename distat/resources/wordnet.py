"""The nltk data the attacks read: WordNet 3.0 and English stop words, built without ``nltk.download``.

TextAttack's PWWS and the stop-word constraints read them through nltk. nltk's downloader needs the network,
so distat builds the folder itself (:func:`build_nltk_data`): WordNet 3.0 from Debian's ``wordnet-base`` +
``wordnet-sense-index`` (``apt-get download``, nothing installed system-wide) and spaCy's English stop words.
:func:`configure_nltk` points nltk (this process and its children) at the folder.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from distat.atomic import atomic_dir, write_json
from distat.errors import first_line
from distat.resources.base import BUILD_HINT, ResourceError

logger = logging.getLogger(__name__)

__all__ = [
    "LEXNAMES",
    "NLTK_MANIFEST",
    "WORDNET_DEBS",
    "WORDNET_FILES",
    "build_nltk_data",
    "configure_nltk",
    "nltk_data_complete",
    "nltk_provenance",
]

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


def _build_wordnet(target: Path, provenance: dict[str, str]) -> None:
    if target.exists():
        logger.warning("replacing incomplete %s", target)
    with atomic_dir(target) as wordnet, tempfile.TemporaryDirectory() as work:
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
        for path in sorted(source.glob("*")) if source.is_dir() else []:
            if path.is_file():
                shutil.copy2(path, wordnet / path.name)
        names = _lexnames_from_man_page(extracted / "usr/share/man/man5/lexnames.5WN.gz") or list(LEXNAMES)
        (wordnet / "lexnames").write_text(_lexnames_text(names), encoding="utf-8")
        if not _wordnet_complete(wordnet):
            missing = [n for n in WORDNET_FILES if not (wordnet / n).is_file()]
            raise ResourceError(f"the WordNet packages lack {', '.join(missing) or 'a valid lexnames'}")
        provenance["wordnet"] = ", ".join(_deb_version(deb) for deb in debs)


def _build_stopwords(target: Path, provenance: dict[str, str]) -> None:
    words, source = _english_stopwords()
    if target.exists():
        logger.warning("replacing incomplete %s", target)
    with atomic_dir(target) as staged:
        (staged / "english").write_text("\n".join(words) + "\n", encoding="utf-8")
        (staged / "README").write_text(
            f"English stop words for nltk's stopwords reader, written by distat from {source}.\n",
            encoding="utf-8",
        )
        provenance["stopwords"] = source


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
        reason = first_line(exc, 200, whole=True)
        raise ResourceError(f"nltk cannot read the data at {root} ({reason}); {BUILD_HINT}") from exc


def nltk_provenance(root: Path) -> str:
    """Where the nltk data at ``root`` came from (its manifest, one line), or "" when distat did not build it."""
    manifest = Path(root) / NLTK_MANIFEST
    if not manifest.is_file():
        return ""
    with contextlib.suppress(ValueError, OSError, AttributeError):
        items = json.loads(manifest.read_text(encoding="utf-8")).items()
        return "; ".join(f"{k}: {v}" for k, v in sorted(items))
    return ""
