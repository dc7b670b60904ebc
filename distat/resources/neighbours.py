"""Nearest neighbours of word vectors by cosine similarity (the counter-fitting constraints and TextAttack's
``nn_matrix`` both need them), computed a block of rows at a time so that 400k × 400k never exists."""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["chunked_topk", "nearest_neighbours", "unit_rows"]


def unit_rows(matrix: torch.Tensor) -> torch.Tensor:
    """Every row scaled to unit length (a zero row stays zero)."""
    return matrix / matrix.norm(dim=1, keepdim=True).clamp_min(1e-12)


def chunked_topk(unit: torch.Tensor, k: int, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` most cosine-similar other rows of every row of a unit-norm matrix, ``chunk_size`` rows at a time."""
    n = unit.shape[0]
    k = min(k, n - 1)
    sims = torch.empty(n, max(k, 0))
    idx = torch.empty(n, max(k, 0), dtype=torch.long)
    if k <= 0:
        return sims, idx
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        block = unit[start:stop] @ unit.T
        block[torch.arange(stop - start), torch.arange(start, stop)] = -math.inf  # not its own neighbour
        top = block.topk(k, dim=1)
        sims[start:stop], idx[start:stop] = top.values, top.indices
    return sims, idx


@torch.no_grad()
def nearest_neighbours(vectors: np.ndarray | torch.Tensor, k: int, *, chunk_size: int = 2048) -> np.ndarray:
    """Indices of each row's ``k`` nearest rows by cosine similarity (itself excluded), shape ``(n, k)``.

    TextAttack's ``WordEmbedding(..., nn_matrix=...)`` wants each row's own index first: prepend it with
    ``np.hstack([np.arange(n)[:, None], nearest_neighbours(v, k)])``.
    """
    matrix = torch.as_tensor(np.asarray(vectors, dtype=np.float32))
    return chunked_topk(unit_rows(matrix), k, chunk_size)[1].numpy()
