"""Top-k search over music embeddings: exact (the reference) and approximate (FAISS).

As in implicit's ``ann/faiss.py`` and Cornac's ``models/ann``, an index wraps a trained model's
music embeddings; exact search is the reference that approximate search is tested against.
"""

from __future__ import annotations

import numpy as np
import torch


def _exclusion_mask(n_queries: int, n_items: int, exclude) -> np.ndarray | None:
    """[n_queries, n_items] bool, True where excluded: ``exclude`` is one list of item positions for
    every query, or one list per query (a sequence of sequences, or a 2-d array with a row per query)."""
    if exclude is None:
        return None
    per_query = (isinstance(exclude, np.ndarray) and exclude.ndim == 2) or (
        isinstance(exclude, list | tuple) and len(exclude) > 0 and not np.isscalar(exclude[0]))
    lists = list(exclude) if per_query else [exclude]
    if per_query and len(lists) != n_queries:
        raise ValueError(f"exclude has {len(lists)} lists for {n_queries} queries")
    mask = np.zeros((n_queries, n_items), bool)
    for i, ex in enumerate(lists):
        ids = np.asarray(ex)
        if ids.size and (not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 or ids.max() >= n_items):
            raise ValueError(f"exclude: item positions must be integers in [0, {n_items}), got {ids.ravel()[:5]}")
        mask[i if per_query else slice(None), ids.astype(np.int64).ravel()] = True
    return mask


def _check_k(k: int) -> None:
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")


class NaNScoreError(ValueError):
    """A query with a NaN score for an item it does not exclude: no order of the items is defined, so neither
    index answers it (``query``: its row in the batch, ``item``: the first such item's position)."""

    def __init__(self, query: int, item: int) -> None:
        super().__init__(f"query {query}: its score for item {item} is NaN, so the items have no order (a NaN or "
                         "infinite value in the query, or inner products past float32's range)")
        self.query, self.item = query, item


def non_finite_rows(embeddings: np.ndarray) -> np.ndarray:
    """The positions of the rows of ``embeddings`` [n, ...] holding NaN or inf (each such row scores NaN or inf)."""
    return np.flatnonzero(~np.isfinite(embeddings).all(axis=tuple(range(1, embeddings.ndim))))


def _finite_items(item_embeddings: np.ndarray) -> np.ndarray:
    """The item embeddings as float32 [n, d], refused (ValueError naming the first such item) where a value is NaN
    or infinite: such an item's scores would be NaN or infinite for every query."""
    items = np.ascontiguousarray(item_embeddings, np.float32)
    bad = non_finite_rows(items)
    if bad.size:
        raise ValueError(f"item embeddings: item {int(bad[0])} holds NaN or inf ({len(bad)} item(s) in all)")
    return items


MAX_BLOCK = 2**24  # most scores (float32: 64 MB) one chunk of exact search holds at once


class ExactIndex:
    """Exact maximum-inner-product search: one matrix product per chunk of queries, then top-k (equal
    finite scores in increasing item position, so results are reproducible). Item embeddings must be finite;
    a query with a NaN score for an item it does not exclude is refused with :class:`NaNScoreError`.

    A chunk holds at most ``chunk`` queries and :data:`MAX_BLOCK` scores (one query's at least), so the
    memory a search takes does not grow with the batch (a batch of 1,024 clips on a million tracks would
    be 4 GB at once).
    """

    def __init__(self, item_embeddings: np.ndarray, chunk: int = 4096) -> None:
        self.items = torch.from_numpy(_finite_items(item_embeddings))
        self.chunk = max(1, min(chunk, MAX_BLOCK // max(len(self.items), 1)))

    def __len__(self) -> int:
        return len(self.items)

    def search(self, queries: np.ndarray, k: int, exclude=None) -> tuple[np.ndarray, np.ndarray]:
        """Item positions [n, k] and scores [n, k], best first, ``k`` at most the number of items.

        Excluded items are never returned: a query that excludes all but j < k items gets those j and
        then -1 (each query as if searched alone, whatever the others exclude).
        """
        _check_k(k)
        q = np.ascontiguousarray(queries, np.float32)
        return self.search_masked(q, k, _exclusion_mask(len(q), len(self.items), exclude))

    def search_masked(self, q: np.ndarray, k: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` with the exclusions as a [n, items] bool mask (None: nothing excluded)."""
        _check_k(k)
        k = min(k, len(self.items))
        ids = np.empty((len(q), k), np.int64)
        scores = np.empty((len(q), k), np.float32)
        for s in range(0, len(q), self.chunk):
            sc = torch.from_numpy(q[s:s + self.chunk]) @ self.items.T
            if mask is not None:
                sc[torch.from_numpy(mask[s:s + self.chunk])] = -torch.inf
            nan = torch.nonzero(torch.isnan(sc))  # topk would rank NaN first
            if len(nan):
                raise NaNScoreError(s + int(nan[0, 0]), int(nan[0, 1]))
            values, indices = _top_k_lowest_position_first(sc, k)
            ids[s:s + self.chunk] = indices.numpy()
            scores[s:s + self.chunk] = values.numpy()
        if mask is not None:  # past a query's own allowance: excluded items, given as -1
            ids[np.take_along_axis(mask, ids, 1)] = -1
        return ids, scores


def _top_k_lowest_position_first(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's ``k`` best scores and their positions, best first, equal scores in increasing position.

    ``torch.topk`` orders ties arbitrarily; a row whose k + 1 best scores hold a tie (within its top k, or
    its k-th score shared with an item left out) is sorted whole with a stable sort instead: rare for
    continuous scores, every row for a popularity model."""
    values, indices = torch.topk(scores, min(k + 1, scores.shape[1]), dim=1)  # one more: a tie across the k-th
    tied = (values[:, 1:] == values[:, :-1]).any(1)
    values, indices = values[:, :k], indices[:, :k]
    rows = torch.nonzero(tied).flatten()
    if len(rows):
        order = torch.sort(scores[rows], dim=1, descending=True, stable=True).indices[:, :k]
        indices[rows] = order
        values[rows] = torch.gather(scores[rows], 1, order)
    return values, indices


class FaissIndex:
    """Approximate inner-product search with FAISS HNSW, for catalogues too large for exact search.

    With exclusions, each query fetches ``k`` plus the number of ids it excludes (plus ``oversample``)
    and filters the excluded ones out afterwards, so every query still gets ``k`` results (as with
    :class:`ExactIndex`, a query that excludes all but j < k items gets those j, then -1); queries of a
    batch are grouped by how many they fetch, so one query's long exclusion list does not slow the
    others. The graph is searched with ``ef_search`` at least the number fetched (a per-call parameter,
    so threads can share the index). A query that would fetch more than ``max(ef_search, n / 2m)``
    items (beyond that the graph search costs more than a scan of the catalogue), and one for which
    the graph still finds too few, is searched exactly, and so is one whose scores may not be finite (a NaN or
    infinite value, or a norm that times the largest item norm passes float32's range): such queries get
    :class:`ExactIndex`'s answer, or its :class:`NaNScoreError`. HNSW
    graphs are built with several threads, so approximate results may differ between builds;
    :class:`ExactIndex` is the deterministic reference.

    The graph is built for Euclidean distance on items extended by one coordinate,
    sqrt(max_j |x_j|^2 - |x_i|^2), with queries extended by 0: then |q - x_i|^2 = |q|^2 + max^2 - 2 q.x_i,
    so the nearest item is the one with the largest inner product (Bachrach et al., RecSys 2014). An
    HNSW graph built directly on inner products is poor when one coordinate dominates the item norms,
    as a bias column such as the track prior's log Q(m) does.

    ``m`` (links per node), ``ef_construction`` and ``ef_search`` (candidates kept while building and while
    searching) trade speed for recall. FAISS's default ef_construction of 40 with ef_search 128 found
    only 86% of the exact top 10 on a 100,000-track catalogue of near-duplicates (20 noisy versions of
    each track, as remixes and re-uploads make) and 77-81% on 10,000 such tracks; the defaults here
    (100 and 256) found 98.6% and 95-98%, for about twice the build time.
    """

    def __init__(self, item_embeddings: np.ndarray, m: int = 32, ef_search: int = 256,
                 oversample: int = 32, ef_construction: int = 100) -> None:
        import faiss

        self.items = _finite_items(item_embeddings)
        items = self.items.astype(np.float64)
        norms = (items * items).sum(1)
        self.max_norm = float(np.sqrt(norms.max(initial=0.0)))
        lift = np.sqrt(np.maximum(norms.max(initial=0.0) - norms, 0.0))[:, None]
        self.index = faiss.IndexHNSWFlat(items.shape[1] + 1, m, faiss.METRIC_L2)
        self.index.hnsw.efConstruction = ef_construction
        self.ef_search = ef_search
        self.index.add(np.ascontiguousarray(np.hstack([items, lift]), np.float32))
        self.n_items = len(items)
        self.m = m
        self.oversample = oversample

    def __len__(self) -> int:
        return self.n_items

    def search(self, queries: np.ndarray, k: int, exclude=None) -> tuple[np.ndarray, np.ndarray]:
        _check_k(k)
        q = np.asarray(queries, np.float64)
        mask = _exclusion_mask(len(q), self.n_items, exclude)
        k = min(k, self.n_items)
        if k == 0:
            return np.zeros((len(q), 0), np.int64), np.zeros((len(q), 0), np.float32)
        excluded = np.zeros(len(q), np.int64) if mask is None else mask.sum(axis=1)
        # each query fetches k plus what it excludes (plus a margin): at least k of those survive its filter
        need = np.minimum(self.n_items, k + excluded + np.where(excluded > 0, self.oversample, 0))
        # past max(ef_search, n / 2m) candidates the graph search (about 2m distances per candidate on its
        # bottom layer) costs more than scanning the catalogue: such queries are searched exactly
        scan = need > max(self.ef_search, self.n_items // (2 * self.m))
        with np.errstate(invalid="ignore", over="ignore"):  # a query whose scores may be NaN or inf, too
            scan |= ~(np.linalg.norm(q, axis=1) * self.max_norm <= np.finfo(np.float32).max)
        out_ids = np.full((len(q), k), -1, np.int64)
        out_sc = np.full((len(q), k), -np.inf, np.float32)
        for fetch in np.unique(need[~scan]):  # queries fetching the same number searched together
            rows = np.flatnonzero(~scan & (need == fetch))
            out_ids[rows], out_sc[rows] = self._graph_search(q[rows], k, int(fetch),
                                                             None if mask is None else mask[rows])
        short = np.flatnonzero(scan | ((out_ids >= 0).sum(axis=1) < np.minimum(k, self.n_items - excluded)))
        if short.size:  # too many exclusions, or the graph came back with too few: searched exactly
            try:
                exact = ExactIndex(self.items).search_masked(q[short].astype(np.float32), k,
                                                             None if mask is None else mask[short])
            except NaNScoreError as e:  # named by its row in this batch
                raise NaNScoreError(int(short[e.query]), e.item) from None
            out_ids[short], out_sc[short] = exact
        return out_ids, out_sc

    def _graph_search(self, q: np.ndarray, k: int, fetch: int,
                      mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` of the ``fetch`` nearest items the graph finds for each query, those ``mask`` excludes
        left out; -1 (score -inf) where fewer than ``k`` remain."""
        import faiss

        params = faiss.SearchParametersHNSW(efSearch=max(self.ef_search, fetch))  # HNSW returns <= efSearch
        _, ids = self.index.search(np.ascontiguousarray(np.hstack([q, np.zeros((len(q), 1))]), np.float32), fetch,
                                   params=params)
        # the candidates' exact inner products, best first (a missing candidate, id -1, scores -inf)
        scores = np.einsum("nd,nkd->nk", q.astype(np.float32), self.items[np.maximum(ids, 0)])
        scores[ids < 0] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")
        ids, scores = np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1)
        out_ids = np.full((len(q), k), -1, np.int64)
        out_sc = np.full((len(q), k), -np.inf, np.float32)
        for i in range(len(q)):  # filtering a few dozen candidates per query
            keep = (ids[i] >= 0) & (True if mask is None else ~mask[i, np.maximum(ids[i], 0)])
            kept_ids, kept_sc = ids[i][keep][:k], scores[i][keep][:k]
            out_ids[i, : len(kept_ids)] = kept_ids
            out_sc[i, : len(kept_sc)] = kept_sc
        return out_ids, out_sc
