"""Ranking metrics as pure functions.

Every query has exactly one relevant track (the upload's chosen music; a video with several is a query per
track, each ranked without the others: :func:`bgmrec.data.negatives.other_positives`), so each metric is a
function of the 1-based rank of that track among the query's candidates. Weighted variants take a
weight per query; weights are normalised to sum to 1 (DecCM's inverse-popularity protocol).
:data:`RANK_METRICS` is the table of the per-query metrics: what evaluate reports, compare pairs and the
commands accept all come from it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

import numpy as np


def _check_ranks(ranks: np.ndarray) -> np.ndarray:
    """``ranks`` as an array; ValueError unless they are a non-empty 1-d array of finite 1-based ranks."""
    ranks = np.asarray(ranks)
    if ranks.ndim != 1 or ranks.size == 0:
        raise ValueError(f"ranks must be a non-empty 1-d array, got shape {ranks.shape}")
    if not np.isfinite(ranks).all() or (ranks < 1).any():
        raise ValueError("ranks are 1-based and finite")
    return ranks


def _weights(ranks: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """Each query's weight, summing to 1: uniform, or ``weights`` normalised (checked with the ranks)."""
    ranks = _check_ranks(ranks)
    if weights is None:
        return np.full(len(ranks), 1.0 / len(ranks))
    w = np.asarray(weights, np.float64)
    if w.shape != ranks.shape or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError("weights must be finite and non-negative, one per rank, not all zero")
    return w / w.sum()


def recall_gains(ranks: np.ndarray, k: int) -> np.ndarray:
    """Each query's Recall@k: 1.0 if its relevant item is within the top ``k``, else 0.0 (with one relevant item,
    the hit rate HR@k)."""
    return (np.asarray(ranks) <= k).astype(np.float64)


def ndcg_gains(ranks: np.ndarray, k: int) -> np.ndarray:
    """Each query's NDCG@k with one relevant item: 1 / log2(rank + 1) if rank <= k else 0 (ideal DCG 1; DCG with
    the log2 discount of Jarvelin and Kekalainen, ACM TOIS 2002)."""
    r = np.asarray(ranks, np.float64)
    return np.where(r <= k, 1.0 / np.log2(r + 1.0), 0.0)


def reciprocal_ranks(ranks: np.ndarray) -> np.ndarray:
    """Each query's reciprocal rank 1 / rank (its mean is the MRR of Voorhees, TREC-8 question answering, 1999)."""
    return 1.0 / np.asarray(ranks, np.float64)


class RankMetric(NamedTuple):
    """A per-query metric of the positive's rank: ``gains(ranks, k)`` (``gains(ranks)`` without ``at_k``) gives
    each query's value, and the metric is their (weighted) mean."""

    gains: Callable[..., np.ndarray]
    at_k: bool  # written name@K, with a cut-off K >= 1; else the name alone


RANK_METRICS: dict[str, RankMetric] = {  # name -> its per-query gains; docs/contributing.md: adding a metric
    "recall": RankMetric(recall_gains, at_k=True),
    "ndcg": RankMetric(ndcg_gains, at_k=True),
    "mrr": RankMetric(reciprocal_ranks, at_k=False),
}


def metric_forms() -> list[str]:
    """How each metric of :data:`RANK_METRICS` is written: ["recall@K", "ndcg@K", "mrr"]."""
    return [f"{name}@K" if metric.at_k else name for name, metric in RANK_METRICS.items()]


def expected_metrics() -> str:
    """The metrics :func:`parse_metric` reads, as its error and the commands' help list them: "recall@K, ndcg@K
    (K >= 1) or mrr"."""
    forms = metric_forms()
    at_k = [i for i, metric in enumerate(RANK_METRICS.values()) if metric.at_k]
    if at_k:
        forms[at_k[-1]] += " (K >= 1)"
    return forms[0] if len(forms) == 1 else f"{', '.join(forms[:-1])} or {forms[-1]}"


def parse_metric(metric: str) -> tuple[str, int | None]:
    """(name, K) of a metric written "name@K" (a metric of :data:`RANK_METRICS` taking a cut-off, K >= 1), or
    (name, None) of one written by its name alone ("mrr"), case-insensitive; ValueError naming the forms
    otherwise."""
    name, _, k = metric.lower().partition("@")
    known = RANK_METRICS.get(name)
    if known is not None and (k.isdecimal() and int(k) >= 1 if known.at_k else not k):
        return name, int(k) if known.at_k else None
    raise ValueError(f"unknown metric {metric!r}; expected {expected_metrics()}")


def query_gains(ranks: np.ndarray, metric: str) -> np.ndarray:
    """Each query's value of ``metric`` (:func:`parse_metric`; its gains in :data:`RANK_METRICS`): the metric is
    their mean."""
    name, k = parse_metric(metric)
    _check_ranks(ranks)  # first: rank 0 would divide by zero
    gains = RANK_METRICS[name].gains
    return gains(ranks, k) if k is not None else gains(ranks)


def figures(ranks: np.ndarray, metrics: Iterable[str], weights: np.ndarray | None = None) -> dict[str, float]:
    """Each of ``metrics`` (as :func:`parse_metric` reads them) over the queries: the mean of its
    :func:`query_gains`, weighted by ``weights`` (normalised to sum to 1) when given."""
    return {metric: _average(ranks, weights, lambda r, metric=metric: query_gains(r, metric)) for metric in metrics}


def _average(ranks: np.ndarray, weights: np.ndarray | None, gains_of) -> float:
    """The (weighted) mean of ``gains_of(ranks)``, the ranks and weights checked first (rank 0 would divide
    by zero in NDCG and MRR); unweighted, the plain mean (every query 1 gives exactly 1, not 1 + 2e-16)."""
    w = _weights(ranks, weights)
    gains = gains_of(ranks)
    return float(gains.mean() if weights is None else np.dot(w, gains))


def recall_at_k(ranks: np.ndarray, k: int, weights: np.ndarray | None = None) -> float:
    """Share of queries whose relevant item is within the top ``k`` (HR@k with one positive)."""
    return _average(ranks, weights, lambda r: recall_gains(r, k))


def ndcg_at_k(ranks: np.ndarray, k: int, weights: np.ndarray | None = None) -> float:
    """NDCG@k with one relevant item: 1 / log2(rank + 1) if rank <= k else 0 (the ideal DCG is 1)."""
    return _average(ranks, weights, lambda r: ndcg_gains(r, k))


def mrr(ranks: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Mean reciprocal rank."""
    return _average(ranks, weights, reciprocal_ranks)


def median_rank(ranks: np.ndarray) -> float:
    """Median 1-based rank of the relevant item."""
    _check_ranks(ranks)
    return float(np.median(ranks))


def ranks_from_scores(scores: np.ndarray, positive_col: np.ndarray, tie_break: np.ndarray) -> np.ndarray:
    """1-based rank of each row's positive column with ties broken uniformly at random.

    ``rank = 1 + #(scores > s_pos) + floor(u * (#ties + 1))`` with ``u`` in [0, 1) given per row
    (``tie_break``), which is exactly the rank under a random order of the tied items. A model
    that scores everything equal therefore gets chance-level ranks, not the best or worst ones.
    """
    scores = _finite_scores(scores)
    rows = np.arange(len(scores))
    positive_col = _columns(positive_col, *scores.shape)
    u = np.asarray(tie_break, np.float64)
    if u.shape != rows.shape or not ((u >= 0) & (u < 1)).all():
        raise ValueError(f"tie_break must be {len(rows)} values in [0, 1), one per row")
    pos = scores[rows, positive_col][:, None]
    greater = (scores > pos).sum(axis=1)
    ties = (scores == pos).sum(axis=1) - 1
    return 1 + greater + np.floor(u * (ties + 1)).astype(np.int64)


def rank_and_top(scores: np.ndarray, positive_col: np.ndarray, k: int, tie_keys) -> tuple[np.ndarray, np.ndarray]:
    """(1-based rank of each row's positive column [n], the row's best ``k`` columns [n, k]) in one order.

    The order is by score, best first, exact ties broken by ascending ``tie_keys(rows)`` ([r, M]
    keys for those rows of ``scores``; random in the protocol, so ties fall in a random order per
    row, as in :func:`ranks_from_scores`), then by column (equal keys: never, with random ones). Ranks and
    top lists come from that one order, so a positive is in its row's top list exactly when its rank is at
    most ``k``: the rank is 1 + #(higher scores) + #(equal scores ordered before it, :func:`_ties_ahead`), the
    top list the ``k`` first columns of the order (:func:`_top_by_key`), neither sorting a row. Keys are asked
    for only for the rows where the order of ties matters: a tie among the best ``k + 1`` or at the positive.
    """
    scores = _finite_scores(scores)
    n, m = scores.shape
    if not 0 <= k <= m:
        raise ValueError(f"k must be in [0, {m}] (the number of columns), got {k}")
    positive_col = _columns(positive_col, n, m)
    import torch  # here: the metric table is read by the command line, which does not load torch to start

    pos = scores[np.arange(n), positive_col][:, None]
    ranks = 1 + (scores > pos).sum(axis=1)
    tied_pos = (scores == pos).sum(axis=1) > 1
    tied_top = np.zeros(n, bool)
    top = np.zeros((n, 0), np.int64)
    if k:
        kk = min(k + 1, m)  # one more than the list: a tie across its boundary shows
        # torch.topk: the kk best per row, best first (several times faster than argpartition + argsort)
        ordered, best = torch.topk(torch.from_numpy(np.require(scores, requirements=["C", "W"])), kk, dim=1)
        ordered, top = ordered.numpy(), best.numpy()[:, :k].astype(np.int64)
        tied_top = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)  # equality, not a difference: inf ties too
    which = np.flatnonzero(tied_pos | tied_top)
    if which.size:
        keys = np.asarray(tie_keys(which))
        if not np.isfinite(keys).all():  # an infinite key would pass for _top_by_key's mask of other scores
            raise ValueError("tie keys must be finite")
        at_pos, at_top = tied_pos[which], tied_top[which]
        if at_pos.any():
            ranks[which[at_pos]] += _ties_ahead(scores[which[at_pos]], positive_col[which[at_pos]], keys[at_pos])
        if at_top.any():
            rows = which[at_top]
            top[rows] = _top_by_key(scores[rows], keys[at_top], top[rows], ordered[rows, k - 1])
    return ranks.astype(np.int64), top.astype(np.int64)


def _ties_ahead(scores: np.ndarray, positive_col: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """How many columns of each row score exactly as its positive column and come before it in the order of
    :func:`rank_and_top`: a smaller key, or an equal key and a smaller column. Linear in the row."""
    rows = np.arange(len(scores))
    pos, key = scores[rows, positive_col][:, None], keys[rows, positive_col][:, None]
    before = (keys < key) | ((keys == key) & (np.arange(scores.shape[1]) < positive_col[:, None]))
    return ((scores == pos) & before).sum(axis=1)


def _top_by_key(scores: np.ndarray, keys: np.ndarray, best: np.ndarray, kth: np.ndarray) -> np.ndarray:
    """The first ``k`` columns of each row in the order of :func:`rank_and_top` (by score, then key, then column),
    given ``best``, the row's ``k`` best columns in any order of ties, and ``kth``, its k-th best score: the
    columns scoring above ``kth`` (all in ``best``), then as many columns scoring ``kth`` as the list has room
    for, those of the smallest keys. Only these at most 2k columns are sorted (a row of one score throughout, as
    popularity gives new music, would otherwise be sorted whole); a row whose last place falls between equal
    keys (never, with random ones) is sorted whole among the columns scoring at least ``kth``."""
    import torch

    r, k = best.shape
    rows = np.arange(r)[:, None]
    kth = kth[:, None]
    above = scores[rows, best] > kth
    room = k - above.sum(axis=1)  # at least 1: fewer than k columns score above the k-th best
    masked = torch.from_numpy(np.where(scores == kth, keys, np.inf).astype(np.float64))
    q = min(k + 1, scores.shape[1])  # one more: equal keys across the last place show
    smallest, at_kth = (a.numpy() for a in torch.topk(masked, q, dim=1, largest=False))
    cols = np.hstack([best, at_kth[:, :k]])
    valid = np.hstack([above, np.arange(k) < room[:, None]])
    order = np.lexsort((cols, keys[rows, cols], _descending(scores[rows, cols]), ~valid), axis=-1)
    top = np.take_along_axis(cols, order[:, :k], axis=1)
    last = smallest[rows[:, 0], room - 1]
    following = np.where(room < q, smallest[rows[:, 0], np.minimum(room, q - 1)], np.inf)
    for i in np.flatnonzero((last == following) & np.isfinite(following)):
        c = np.flatnonzero(scores[i] >= kth[i])
        top[i] = c[np.lexsort((keys[i, c], _descending(scores[i, c])))][:k]
    return top


def _descending(scores: np.ndarray) -> np.ndarray:
    """Keys that sort ``scores`` best first: ``-scores``, or ``~scores`` for integers (the negated minimum wraps
    round to itself)."""
    return ~scores if np.issubdtype(scores.dtype, np.integer) else -scores


def _finite_scores(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [queries, candidates], got shape {scores.shape}")
    bad = np.flatnonzero(np.isnan(scores).any(axis=1)) if scores.size else np.zeros(0, np.int64)
    if bad.size:  # NaN compares false with everything: it would rank the positive first
        raise ValueError(f"scores contain NaN (row {int(bad[0])}): non-finite embeddings, or finite ones whose "
                         "inner product overflows")
    if scores.dtype.kind == "u":  # negated to order best first, unsigned scores wrapped round: as signed ones
        if scores.size and scores.max() > np.iinfo(np.int64).max:
            raise ValueError("unsigned scores beyond the int64 range: give them as floats")
        scores = scores.astype(np.int64)
    return scores


def _columns(cols: np.ndarray, n: int, m: int) -> np.ndarray:
    cols = np.asarray(cols)
    if cols.shape != (n,) or not np.issubdtype(cols.dtype, np.integer):
        raise ValueError(f"positive columns must be {n} integers (one per row), got shape {cols.shape}")
    if n and (cols.min() < 0 or cols.max() >= m):
        raise ValueError(f"a positive column is outside [0, {m})")
    return cols


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """Total variation distance 0.5 * sum |p - q| between two distributions (each normalised)."""
    p = np.asarray(p, np.float64)
    q = np.asarray(q, np.float64)
    if p.shape != q.shape or not (np.isfinite(p).all() and np.isfinite(q).all()) or (p < 0).any() or (q < 0).any() \
            or p.sum() <= 0 or q.sum() <= 0:
        raise ValueError("p and q must be distributions of the same shape: finite, non-negative, not all zero")
    return float(0.5 * np.abs(p / p.sum() - q / q.sum()).sum())


def genre_shares(track_ids: np.ndarray, track_genre: np.ndarray, n_genres: int) -> np.ndarray:
    """Share of each genre among the given track ids (any shape, e.g. all top-10 lists); the genres of
    ``track_genre`` must lie in [0, ``n_genres``)."""
    genres = np.asarray(track_genre)[np.asarray(track_ids).ravel()]
    _check_groups(genres, n_genres, "track genre")
    counts = np.bincount(genres, minlength=n_genres).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def coverage(top_lists: np.ndarray, n_candidates: int) -> float:
    """Share of the candidate catalogue that appears in at least one top list."""
    if n_candidates < 1:
        raise ValueError(f"coverage needs at least one candidate, got n_candidates={n_candidates}")
    return float(len(np.unique(np.asarray(top_lists))) / n_candidates)


def per_group_recall_at_k(ranks: np.ndarray, groups: np.ndarray, n_groups: int, k: int) -> np.ndarray:
    """Recall@k within each group of queries (NaN for a group without queries); ``groups`` are one integer in
    [0, ``n_groups``) per rank, the ranks 1-based and finite."""
    ranks = np.asarray(ranks)
    groups = np.asarray(groups)
    _check_ranks(ranks)
    if groups.shape != ranks.shape:
        raise ValueError(f"groups must have one entry per rank ({ranks.shape}), got shape {groups.shape}")
    _check_groups(groups, n_groups, "group")
    hits = np.bincount(groups, weights=recall_gains(ranks, k), minlength=n_groups)
    counts = np.bincount(groups, minlength=n_groups).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)


def _check_groups(groups: np.ndarray, n_groups: int, what: str) -> None:
    """ValueError unless ``groups`` are integers in [0, ``n_groups``)."""
    if groups.size and (not np.issubdtype(groups.dtype, np.integer) or groups.min() < 0 or groups.max() >= n_groups):
        raise ValueError(f"every {what} must be an integer in [0, {n_groups}), got values from "
                         f"{groups.min()} to {groups.max()} ({groups.dtype})")


def compared_protocol(metric: str) -> tuple[str, str]:
    """(protocol, rank metric) of a compared metric: "recall@10" ("full"), "sampled_recall@10" (the papers'
    1+K protocol on the frozen negatives), "ipw_recall@10" (the same, weighted by
    :meth:`~bgmrec.data.dataset.Dataset.ipw_weights`), each prefix before a metric of :data:`RANK_METRICS`;
    ValueError naming the forms otherwise."""
    lowered = metric.lower()
    prefix = next((p for p in ("sampled_", "ipw_") if lowered.startswith(p)), "")
    try:
        parse_metric(metric[len(prefix):])
    except ValueError:
        raise ValueError(f"unknown metric {metric!r}; expected {expected_metrics()} (full-catalogue), or one of "
                         "them after sampled_ or ipw_ (the sampled 1+K protocol, unweighted or IPW-weighted)") from None
    return prefix.rstrip("_") or "full", metric[len(prefix):]
