"""Synthetic vectors: an encoder that only has a size, clustered unit vectors, exact k-NN."""

from __future__ import annotations

import numpy as np

from visualsearch.encoders.base import BaseEncoder

MODEL_ID = "bench:synthetic-{dimensions}"


class SyntheticEncoder(BaseEncoder):
    """Stands in for the real encoder: only its size and ``model_id`` matter to queries."""

    def __init__(self, dimensions: int = 512) -> None:
        self.dimensions = dimensions

    @property
    def model_id(self) -> str:
        return MODEL_ID.format(dimensions=self.dimensions)


def clustered_vectors(n: int, d: int, centres: int, seed: int, chunk: int = 100_000):
    """Yield ``(start, unit vectors)`` chunks: Gaussian clusters, cosine to centre ≈ 0.85."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    sigma = np.sqrt(1 / 0.85**2 - 1)  # |c| = 1, |noise| ≈ sigma: cos = 1 / sqrt(1 + sigma²)
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        owner = rng.integers(0, centres, size)
        noise = rng.standard_normal((size, d)).astype(np.float32) * (sigma / np.sqrt(d))
        x = c[owner] + noise
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        yield start, x


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int, exclude=None, rows=None):
    """Ids (row indices) of the exact ``k`` nearest by cosine, optionally among ``rows``."""
    out = []
    for i, q in enumerate(queries):
        pool = vectors if rows is None else vectors[rows[i]]
        sims = pool @ q
        if exclude is not None:
            own = exclude[i] if rows is None else np.flatnonzero(rows[i] == exclude[i])
            sims[own] = -np.inf
        top = np.argpartition(-sims, min(k, len(sims) - 1))[:k]
        top = top[np.argsort(-sims[top])]
        out.append(top if rows is None else rows[i][top])
    return out
