"""Frozen negatives for the papers' sampled protocol (1 positive + K negatives per query)."""

from __future__ import annotations

import numpy as np

MAX_BLOCK = 2**24  # most values (float64: 128 MB) a block of random keys or logits holds at once


def block_rows(chunk: int, width: int) -> int:
    """Rows per block of a ``width``-wide array: at most ``chunk`` and :data:`MAX_BLOCK` values, one row at least,
    so that a block's memory does not grow with the catalogue (4,096 rows of 20,000 float64 are 655 MB)."""
    return max(1, min(chunk, MAX_BLOCK // max(width, 1)))


def sample_negatives(positives: np.ndarray, candidates: np.ndarray, k: int, rng: np.random.Generator,
                     chunk: int = 4096, exclude: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Draw ``k`` distinct negatives per row from ``candidates``, never the row's positive (nor a track
    ``exclude`` pairs with the row, unless too few other candidates remain).

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
    exclude : (int array [p], int array [p]), optional
        (row, track) pairs kept out of the rows' negatives as their positives are: the other positives of a
        row's video (:func:`other_positives`). The keys drawn are the same, so a row
        without such a pair gets the negatives it would get without ``exclude``.

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
        if exclude is not None:
            here = (exclude[0] >= start) & (exclude[0] < start + len(pos))
            row, track = np.asarray(exclude[0])[here] - start, np.asarray(exclude[1])[here]
            at = np.minimum(np.searchsorted(candidates, track), len(candidates) - 1)
            hit = candidates[at] == track
            keys[row[hit], at[hit]] = 2.0  # after every other candidate (keys are below 1), before the positive
        pick = np.argpartition(keys, k - 1, axis=1)[:, :k] if k < len(candidates) else np.argsort(keys, 1)
        out[start:start + chunk] = candidates[pick[:, :k]]
    return out


def other_positives(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, track) int64 pairs: for each row of ``rows`` (video, track, uploader), the tracks of the other rows of
    its video (but its own track), which its ranking leaves out: the filtered setting (Bordes et al., NeurIPS
    2013), where a query has exactly one relevant track and a video with several (an app's upload log may pair
    one clip with two tracks) would otherwise count its other true tracks as wrong answers ranked above it.
    Empty when every video has one row, as in the simulated worlds: their figures are as before."""
    rows = np.asarray(rows)
    order = np.argsort(rows[:, 0], kind="stable")
    videos = rows[order, 0]
    starts = np.flatnonzero(np.r_[True, videos[1:] != videos[:-1]]) if len(rows) else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, len(rows)])
    pairs_row, pairs_track = [], []
    for start, size in zip(starts[sizes > 1].tolist(), sizes[sizes > 1].tolist(), strict=True):
        group = order[start:start + size]
        each, other = np.repeat(group, size), np.tile(group, size)
        keep = rows[each, 1] != rows[other, 1]
        pairs_row.append(each[keep])
        pairs_track.append(rows[other[keep], 1])
    if not pairs_row:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(pairs_row).astype(np.int64), np.concatenate(pairs_track).astype(np.int64)
