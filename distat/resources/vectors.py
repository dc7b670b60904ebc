"""Word-vector files: the counter-fitted ``.npz`` distat writes, TextAttack's layout, word2vec text, and the
nearest-neighbour matrix the embedding swaps need, cached beside the vector file.

Public API: :func:`save_vectors`, :func:`load_vectors`, :func:`npz_complete`, :func:`cached_nearest_neighbours`.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distat.atomic import atomic_file, save_numpy
from distat.errors import DistatError

__all__ = ["cached_nearest_neighbours", "load_vectors", "npz_complete", "save_vectors"]

logger = logging.getLogger(__name__)


def save_vectors(path: str | Path, words: Sequence[str], vectors: Any) -> Path:
    """Write ``words`` and their float32 matrix (numpy array or CPU tensor) to a ``.npz`` file (keys ``words``
    and ``vectors``), atomically: readers see no file or the whole file (:func:`npz_complete`)."""
    path = Path(path)
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[0] != len(words):
        raise ValueError(f"expected a ({len(words)}, dim) matrix, got {tuple(matrix.shape)}")
    with atomic_file(path) as part, part.open("wb") as handle:  # a handle: numpy adds no second ".npz"
        np.savez(handle, words=np.asarray(list(words), dtype=str), vectors=matrix)
    return path


def npz_complete(path: str | Path) -> bool:
    """Whether ``path`` is a whole vectors ``.npz`` (a zip whose directory, written last, names ``words`` and
    ``vectors``): a file cut short by a writer outside distat, or an empty one, is not."""
    try:
        with zipfile.ZipFile(path) as archive:
            return {"words.npy", "vectors.npy"} <= set(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def load_vectors(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Word vectors from a file distat or TextAttack wrote, or a word2vec text file.

    Accepted: a ``.npz`` from :func:`save_vectors`; TextAttack's layout (a folder holding ``wordlist.pickle``,
    a pickled ``{word: row}`` dict, and the matrix ``paragram.npy`` or a single other ``.npy`` besides
    ``nn.npy``; or the path of that ``.npy``); word2vec text (``word v1 v2 ...`` per line, optionally a first
    ``count dim`` line). The pickle is the user's own file and is trusted. Returns ``(words, float32 matrix)``.
    """
    path = Path(path)
    if not path.exists():
        raise DistatError(f"word vector file not found: {path}")
    try:
        if path.is_dir() or (path.suffix == ".npy" and (path.parent / "wordlist.pickle").is_file()):
            words, matrix = _load_textattack(path)
        elif path.suffix == ".npz":
            words, matrix = _load_npz(path)
        else:
            words, matrix = _load_word2vec_text(path)
    except DistatError:
        raise
    except (OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError, UnicodeDecodeError) as exc:
        raise DistatError(f"cannot read word vectors from {path}: {exc}") from exc
    return _checked(path, words, matrix)


def _checked(path: Path, words: list[str], matrix: np.ndarray) -> tuple[list[str], np.ndarray]:
    if matrix.ndim != 2 or matrix.shape[0] != len(words) or not len(words):
        raise DistatError(f"{path}: {len(words)} words for a matrix of shape {matrix.shape}")
    if len(set(words)) != len(words):
        raise DistatError(f"{path}: repeated words in the vocabulary")
    matrix = np.asarray(matrix, dtype=np.float32)
    if not np.isfinite(matrix).all():
        raise DistatError(f"{path}: non-finite values in the vectors")
    return words, matrix


def _load_npz(path: Path) -> tuple[list[str], np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        if "words" not in data or "vectors" not in data:
            raise DistatError(f"{path}: expected arrays 'words' and 'vectors', found {sorted(data.files)}")
        return [str(w) for w in data["words"]], np.asarray(data["vectors"])


def _load_textattack(path: Path) -> tuple[list[str], np.ndarray]:
    folder = path if path.is_dir() else path.parent
    wordlist = folder / "wordlist.pickle"
    if not wordlist.is_file():
        raise DistatError(f"{path}: no wordlist.pickle (TextAttack word-embedding folder expected)")
    if path.is_dir():
        candidates = [folder / "paragram.npy"] if (folder / "paragram.npy").is_file() else \
            [p for p in sorted(folder.glob("*.npy")) if p.name != "nn.npy"]
        if len(candidates) != 1:
            raise DistatError(f"{path}: expected paragram.npy or exactly one embedding .npy besides nn.npy")
        matrix_path = candidates[0]
    else:
        matrix_path = path
    with wordlist.open("rb") as handle:
        mapping = pickle.load(handle)
    if isinstance(mapping, dict):
        words_by_row = sorted(mapping.items(), key=lambda item: int(item[1]))
        if [int(i) for _, i in words_by_row] != list(range(len(words_by_row))):
            raise DistatError(f"{wordlist}: word indices are not 0..n-1")
        words = [str(w) for w, _ in words_by_row]
    elif isinstance(mapping, list | tuple):
        words = [str(w) for w in mapping]
    else:
        raise DistatError(f"{wordlist}: expected a dict word -> index, got {type(mapping).__name__}")
    return words, np.load(matrix_path, allow_pickle=False)


def _load_word2vec_text(path: Path) -> tuple[list[str], np.ndarray]:
    words: list[str] = []
    rows: list[np.ndarray] = []
    expected: int | None = None
    dim: int | None = None
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = [f for f in line.rstrip().split(" ") if f]
            if not fields:
                continue
            if number == 1 and len(fields) == 2 and all(f.isdigit() for f in fields):
                expected, dim = int(fields[0]), int(fields[1])
                continue
            if len(fields) < 2:
                raise DistatError(f"{path}:{number}: expected a word followed by its vector")
            try:
                row = np.asarray(fields[1:], dtype=np.float32)
            except ValueError as exc:
                raise DistatError(f"{path}:{number}: non-numeric vector value") from exc
            if dim is None:
                dim = len(row)
            elif len(row) != dim:
                raise DistatError(f"{path}:{number}: {len(row)} values, expected {dim}")
            words.append(fields[0])
            rows.append(row)
    if not rows:
        raise DistatError(f"{path}: no word vectors found")
    if expected is not None and expected != len(rows):
        raise DistatError(f"{path}: header announces {expected} vectors, file has {len(rows)}")
    return words, np.stack(rows)


def cached_nearest_neighbours(path: str | Path, vectors: np.ndarray, neighbours: int = 50) -> np.ndarray:
    """Each row's index followed by its ``neighbours`` nearest rows (cosine), shape ``(n, neighbours + 1)``, as
    TextAttack's ``WordEmbedding(nn_matrix=...)`` wants: computed once and cached beside the vector file at
    ``path`` (``<name>.nn<k>.npy``).

    Attack actors on one node share the cache and may compute it at the same moment: each writes its own
    temporary file and renames it over the cache (:func:`distat.atomic.save_numpy`), so a reader never loads
    half a matrix; one that does not fit (another vocabulary, unreadable) is recomputed.
    """
    from distat.resources.neighbours import nearest_neighbours

    path = Path(path)
    cache = path.parent / f"{path.name}.nn{neighbours}.npy"
    shape = (len(vectors), neighbours + 1)
    if cache.is_file():
        try:
            matrix = np.load(cache, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            logger.warning("recomputing the unreadable nearest-neighbour cache %s (%s)", cache, exc)
        else:
            if matrix.shape == shape:
                return matrix
    matrix = np.hstack([np.arange(len(vectors))[:, None], nearest_neighbours(vectors, neighbours)])
    save_numpy(cache, matrix)
    return matrix
