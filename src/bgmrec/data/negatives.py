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
    def keys_of(rows: slice, cands: np.ndarray) -> np.ndarray:  # uniform in [0, 1), below the two marks
        return rng.random((rows.stop - rows.start, len(cands)))

    return _k_lowest(positives, candidates, k, exclude, chunk, keys_of, 2.0, np.inf)


def _k_lowest(positives, candidates, k: int, exclude, chunk: int, keys_of, second, last) -> np.ndarray:
    """[n, k] the candidates of each row whose keys are lowest, block by block: ``keys_of(rows, candidates)`` the
    keys [rows, candidates] of a block of rows (a slice), below ``second``; the row's positive is given ``last``
    (never taken) and the tracks ``exclude`` pairs with the row ``second`` (after every other candidate)."""
    positives = np.asarray(positives, np.int64)
    candidates = np.unique(np.asarray(candidates, np.int64))
    if k > len(candidates) - 1:
        raise ValueError(f"cannot draw {k} negatives from {len(candidates)} candidates")
    out = np.empty((len(positives), k), np.int64)
    if exclude is not None:
        excluded_row, excluded_track = (np.asarray(a, np.int64) for a in exclude)
    chunk = block_rows(chunk, len(candidates))
    for start in range(0, len(positives), chunk):
        pos = positives[start:start + chunk]
        keys = keys_of(slice(start, start + len(pos)), candidates)
        row, col = _candidate_columns(candidates, np.arange(len(pos)), pos)
        keys[row, col] = last  # the positive is never among the k smallest
        if exclude is not None:
            here = (excluded_row >= start) & (excluded_row < start + len(pos))
            row, col = _candidate_columns(candidates, excluded_row[here] - start, excluded_track[here])
            keys[row, col] = second  # after every other candidate, before the positive
        pick = np.argpartition(keys, k - 1, axis=1)[:, :k] if k < len(candidates) else np.argsort(keys, 1)
        out[start:start + chunk] = candidates[pick[:, :k]]
    return out


def id_keys(ids: list[str], salt: str = "") -> np.ndarray:
    """uint64 [len(ids)]: a hash of each id (with ``salt``), the same in every process and on every machine."""
    import hashlib

    return np.array([int.from_bytes(hashlib.blake2b(f"{salt}\0{i}".encode(), digest_size=8).digest(), "little")
                     for i in ids], np.uint64)


def _mixed(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: uint64 values whose bits depend on every bit of ``x`` (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def negatives_by_id(positives: np.ndarray, query_keys: np.ndarray, candidates: np.ndarray, track_keys: np.ndarray,
                    k: int, exclude: tuple[np.ndarray, np.ndarray] | None = None, chunk: int = 4096) -> np.ndarray:
    """As :func:`sample_negatives`, each row's ``k`` negatives the candidates whose keys mixed with the row's (its
    ``query_keys``, uint64 [n]; ``track_keys``, uint64 [M] by track id, :func:`id_keys`) are lowest: a row's
    negatives depend on its own key and the candidates alone, not on the other rows or their order, so a query
    kept from one build of a dataset to the next keeps its negatives while the candidates stay (a catalogue grown
    since changes only those a new track displaces)."""
    track_keys = np.asarray(track_keys, np.uint64)
    query_keys = np.asarray(query_keys, np.uint64)

    def keys_of(rows: slice, candidates: np.ndarray) -> np.ndarray:  # below the two marks
        return np.minimum(_mixed(query_keys[rows][:, None] ^ track_keys[candidates][None, :]), np.uint64(2**64 - 3))

    return _k_lowest(positives, candidates, k, exclude, chunk, keys_of, np.uint64(2**64 - 2), np.uint64(2**64 - 1))


def _candidate_columns(candidates: np.ndarray, rows: np.ndarray, tracks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of the ``tracks`` found among the sorted ``candidates`` (a track that is none is dropped)."""
    at = np.minimum(np.searchsorted(candidates, tracks), len(candidates) - 1)
    hit = candidates[at] == tracks
    return rows[hit], at[hit]


def other_positives(rows: np.ndarray, among: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(row, track) int64 pairs: for each row of ``rows`` (video, track, uploader), the other tracks its video has
    in ``among`` (the rows of its whole split; ``rows`` themselves by default), which its ranking leaves out:
    the filtered setting (Bordes et al., NeurIPS 2013), where a query has exactly one relevant track and a
    video with several (an app's upload log may pair one clip with two tracks) would otherwise count its other
    true tracks as wrong answers ranked above it. Empty when every video has one track, as in the simulated
    worlds: their figures are as before. Vectorised; its size is the sum over ``rows`` of their videos' other
    tracks (so give a chunk of rows at a time: a video with thousands of tracks has thousands per row)."""
    rows = np.asarray(rows, np.int64).reshape(-1, 3)
    among = rows if among is None else np.asarray(among, np.int64).reshape(-1, 3)
    pairs = np.unique(among[:, :2], axis=0)  # (video, track) sorted by video, each once
    lo = np.searchsorted(pairs[:, 0], rows[:, 0], "left")
    size = np.searchsorted(pairs[:, 0], rows[:, 0], "right") - lo
    several = np.flatnonzero(size > 1)
    counts = size[several]
    row = np.repeat(several, counts)
    within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    track = pairs[np.repeat(lo[several], counts) + within, 1]
    keep = track != rows[row, 1]
    return row[keep].astype(np.int64), track[keep].astype(np.int64)
