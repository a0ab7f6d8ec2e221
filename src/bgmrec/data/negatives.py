"""Frozen negatives for the papers' sampled protocol (1 positive + K negatives per query)."""

from __future__ import annotations

import numpy as np

MAX_BLOCK = 2**24  # most values (float64: 128 MB) a block of random keys or logits holds at once


def block_rows(chunk: int, width: int) -> int:
    """Rows per block of a ``width``-wide array: at most ``chunk`` and :data:`MAX_BLOCK` values, one row at least,
    so that a block's memory does not grow with the catalogue (4,096 rows of 20,000 float64 are 655 MB)."""
    return max(1, min(chunk, MAX_BLOCK // max(width, 1)))


def sample_negatives(positives: np.ndarray, candidates: np.ndarray, k: int, rng: np.random.Generator,
                     chunk: int = 4096) -> np.ndarray:
    """Draw ``k`` distinct negatives per row from ``candidates``, never the row's positive.

    Parameters
    ----------
    positives : int array [n]
        The positive track of each row.
    candidates : int array [C]
        Track ids negatives are drawn from (the split's candidate set).
    k : int
        Negatives per row; must be at most the number of candidates other than the positive.
    chunk : int
        Most rows drawn at once; a block also holds at most :data:`MAX_BLOCK` keys (:func:`block_rows`).
        The draws do not depend on it: ``rng`` gives the keys row after row whatever the blocks.

    Returns
    -------
    int64 array [n, k], uniformly random k-subsets, drawn in blocks (vectorised, no per-row loop).
    """
    positives = np.asarray(positives, np.int64)
    candidates = np.unique(np.asarray(candidates, np.int64))
    if k > len(candidates) - 1:
        raise ValueError(f"cannot draw {k} negatives from {len(candidates)} candidates")
    out = np.empty((len(positives), k), np.int64)
    chunk = block_rows(chunk, len(candidates))
    for start in range(0, len(positives), chunk):
        pos = positives[start:start + chunk]
        keys = rng.random((len(pos), len(candidates)))
        at = np.minimum(np.searchsorted(candidates, pos), len(candidates) - 1)  # the positive's column, if a candidate
        hit = candidates[at] == pos
        keys[np.flatnonzero(hit), at[hit]] = np.inf  # the positive is never among the k smallest
        pick = np.argpartition(keys, k - 1, axis=1)[:, :k] if k < len(candidates) else np.argsort(keys, 1)
        out[start:start + chunk] = candidates[pick[:, :k]]
    return out
