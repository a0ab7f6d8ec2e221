"""Ranking and bias metrics against values worked out by hand, an independent DCG, and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bgmrec.eval import metrics as M

# Four queries whose positives landed at ranks 1, 3, 11 and 2.
RANKS = np.array([1, 3, 11, 2])


# ---- hand-computed values ------------------------------------------------------------------------

def test_recall_by_hand():
    # hits within k: k=1 -> {1}; k=2 -> {1,2}; k=3 -> {1,3,2}; k=10 -> same 3; k=11 -> all 4
    assert M.recall_at_k(RANKS, 1) == pytest.approx(1 / 4)
    assert M.recall_at_k(RANKS, 2) == pytest.approx(2 / 4)
    assert M.recall_at_k(RANKS, 3) == pytest.approx(3 / 4)
    assert M.recall_at_k(RANKS, 10) == pytest.approx(3 / 4)
    assert M.recall_at_k(RANKS, 11) == pytest.approx(1.0)


def test_every_query_a_hit_is_exactly_one():
    """1/n added n times is 1 + 2e-16 for many n (173: a tiny world's test split); the unweighted mean is exact."""
    ranks = np.ones(173, np.int64)
    assert M.recall_at_k(ranks, 100) == 1.0 and M.ndcg_at_k(ranks, 10) == 1.0 and M.mrr(ranks) == 1.0


def test_ndcg_by_hand():
    # gain 1/log2(rank+1): rank1 -> 1, rank3 -> 1/2, rank2 -> 1/log2(3) = 0.6309297535714575,
    # rank 11 -> 0 at k=10 and 1/log2(12) = 0.2789429456511298 at k=11; ideal DCG is 1.
    assert M.ndcg_at_k(RANKS, 10) == pytest.approx((1 + 0.5 + 0.6309297535714575) / 4)
    assert M.ndcg_at_k(RANKS, 11) == pytest.approx((1 + 0.5 + 0.6309297535714575 + 0.2789429456511298) / 4)
    assert M.ndcg_at_k(RANKS, 1) == pytest.approx(1 / 4)
    assert M.ndcg_at_k(np.array([1, 1]), 5) == 1.0


def test_mrr_and_median_by_hand():
    # (1 + 1/3 + 1/11 + 1/2) / 4 = (66 + 22 + 6 + 33) / 66 / 4 = 127 / 264
    assert M.mrr(RANKS) == pytest.approx(127 / 264)
    # sorted 1, 2, 3, 11 -> median (2 + 3) / 2
    assert M.median_rank(RANKS) == 2.5
    assert M.median_rank(np.array([7])) == 7.0


def test_weighted_by_hand():
    # weights 1,1,2,0 normalise to 1/4, 1/4, 1/2, 0 (rank 11 gets half of the weight)
    w = np.array([1.0, 1.0, 2.0, 0.0])
    assert M.recall_at_k(RANKS, 1, w) == pytest.approx(0.25)
    assert M.recall_at_k(RANKS, 3, w) == pytest.approx(0.5)  # ranks 1 and 3
    assert M.recall_at_k(RANKS, 11, w) == pytest.approx(1.0)
    assert M.ndcg_at_k(RANKS, 10, w) == pytest.approx(0.25 * 1 + 0.25 * 0.5)
    assert M.mrr(RANKS, w) == pytest.approx(0.25 + 0.25 / 3 + 0.5 / 11)


def test_weights_are_normalised_and_equal_weights_are_unweighted():
    w = np.array([1.0, 1.0, 2.0, 0.5])
    for k in (1, 3, 10):
        assert M.recall_at_k(RANKS, k, w) == pytest.approx(M.recall_at_k(RANKS, k, 37 * w))
        assert M.ndcg_at_k(RANKS, k, w) == pytest.approx(M.ndcg_at_k(RANKS, k, 0.01 * w))
        assert M.recall_at_k(RANKS, k, np.full(4, 3.0)) == pytest.approx(M.recall_at_k(RANKS, k))
        assert M.ndcg_at_k(RANKS, k, np.full(4, 0.2)) == pytest.approx(M.ndcg_at_k(RANKS, k))
    assert M.mrr(RANKS, np.ones(4)) == pytest.approx(M.mrr(RANKS))


def test_figures_are_the_means_of_the_metric_table_s_gains_by_hand():
    # RANKS 1, 3, 11, 2: Recall@3 3/4, NDCG@10 (1 + 1/2 + 1/log2(3)) / 4, MRR 127/264 (as above); weighted 1, 1,
    # 2, 0 -> 1/4, 1/4, 1/2, 0: Recall@3 1/2, MRR 1/4 + 1/12 + 1/22
    got = M.figures(RANKS, ["recall@3", "NDCG@10", "mrr"])
    assert list(got) == ["recall@3", "NDCG@10", "mrr"]
    assert got["recall@3"] == 0.75 and got["mrr"] == pytest.approx(127 / 264)
    assert got["NDCG@10"] == pytest.approx((1 + 0.5 + 0.6309297535714575) / 4)
    weighted = M.figures(RANKS, ["recall@3", "mrr"], np.array([1.0, 1.0, 2.0, 0.0]))
    assert weighted == {"recall@3": pytest.approx(0.5), "mrr": pytest.approx(0.25 + 0.25 / 3 + 0.5 / 11)}
    assert M.figures(RANKS, []) == {}
    with pytest.raises(ValueError, match="unknown metric 'map@10'; expected recall@K, ndcg@K \\(K >= 1\\) or mrr"):
        M.figures(RANKS, ["map@10"])


def test_the_metric_table_gives_the_forms_the_parser_reads():
    assert M.metric_forms() == ["recall@K", "ndcg@K", "mrr"]
    assert M.expected_metrics() == "recall@K, ndcg@K (K >= 1) or mrr"
    for name, metric in M.RANK_METRICS.items():  # each metric read in its form, and refused in the other
        written, other = (f"{name}@7", name) if metric.at_k else (name, f"{name}@7")
        assert M.parse_metric(written.upper()) == (name, 7 if metric.at_k else None)
        with pytest.raises(ValueError, match=f"unknown metric '{other}'"):
            M.parse_metric(other)
        want = metric.gains(RANKS, 7) if metric.at_k else metric.gains(RANKS)
        np.testing.assert_array_equal(M.query_gains(RANKS, written), want)


def test_ranks_from_scores_by_hand():
    scores = np.array([
        [0.1, 0.5, 0.3, 0.5],  # positive col 2 (0.3): two greater, no tie -> rank 3 whatever u
        [0.1, 0.5, 0.3, 0.5],  # positive col 1 (0.5): none greater, one tie -> 1 + floor(2u)
        [0.1, 0.5, 0.3, 0.5],
        [0.2, 0.2, 0.2, 0.2],  # all tied: 1 + floor(4u)
        [0.2, 0.2, 0.2, 0.2],
    ])
    pos = np.array([2, 1, 1, 0, 3])
    u = np.array([0.99, 0.49, 0.5, 0.0, 0.76])
    np.testing.assert_array_equal(M.ranks_from_scores(scores, pos, u), [3, 1, 2, 1, 4])
    # tie_break 0: rank = 1 + #greater
    np.testing.assert_array_equal(M.ranks_from_scores(scores, pos, np.zeros(5)), [3, 1, 1, 1, 1])


def test_all_equal_scores_spread_ranks_uniformly():
    n, m = 400, 8
    scores = np.zeros((n, m))
    pos = np.arange(n) % m
    u = (np.arange(n) + 0.5) / n  # evenly spread tie-breakers
    ranks = M.ranks_from_scores(scores, pos, u)
    # 1 + floor(8u) takes each value 1..8 exactly n/8 = 50 times
    np.testing.assert_array_equal(np.bincount(ranks, minlength=m + 1)[1:], np.full(m, n // m))
    # with random tie-breakers the mean rank is near (m + 1) / 2, far from 1 (optimistic) and m (pessimistic)
    rng = np.random.default_rng(0)
    r = M.ranks_from_scores(np.zeros((20_000, m)), np.zeros(20_000, np.int64), rng.random(20_000))
    assert r.min() == 1 and r.max() == m
    assert abs(r.mean() - (m + 1) / 2) < 0.05


def test_rank_and_top_by_hand():
    scores = np.array([
        [0.9, 0.5, 0.5, 0.5, 0.1],  # positive col 3, tied with cols 1 and 2 across the boundary of k = 2
        [0.9, 0.5, 0.5, 0.5, 0.1],
        [0.1, 0.2, 0.9, 0.8, 0.3],  # no tie: the order of the scores, keys never asked for
    ])
    keys = np.array([[0.0, 0.7, 0.2, 0.1, 0.0],  # ties ordered by key: col 3 (0.1), col 2 (0.2), col 1 (0.7)
                     [0.0, 0.1, 0.2, 0.7, 0.0]])  # col 1, col 2, col 3
    asked = []

    def tie_keys(which):
        asked.append(which.tolist())
        return keys[which]

    ranks, top = M.rank_and_top(scores, np.array([3, 3, 4]), 2, tie_keys)
    np.testing.assert_array_equal(ranks, [2, 4, 3])
    np.testing.assert_array_equal(top, [[0, 3], [0, 1], [2, 3]])
    assert asked == [[0, 1]]
    # k = 0: no lists, ranks as before; k beyond the columns is refused
    ranks0, top0 = M.rank_and_top(scores, np.array([3, 3, 4]), 0, tie_keys)
    np.testing.assert_array_equal(ranks0, ranks)
    assert top0.shape == (3, 0)
    with pytest.raises(ValueError, match="k must be"):
        M.rank_and_top(scores, np.array([3, 3, 4]), 6, tie_keys)


def lexsorted_rank_and_top(scores, pos, k, keys):
    """The reference: each row's whole order by score, then key, then column (a stable lexsort), read off."""
    order = np.lexsort((keys, -scores), axis=-1)
    return 1 + np.argmax(order == pos[:, None], axis=1), order[:, :k]


# few distinct scores (many ties, infinities and both zeros among them); keys of few values tie too
TIED_SCORES = st.sampled_from([-np.inf, -1.0, -0.0, 0.0, 0.5, 2.0, np.inf])


@settings(max_examples=150, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40),
                  elements=TIED_SCORES), st.data())
def test_rank_and_top_is_the_lexsorted_order(scores, data):
    """Ranks and top lists are those of one order, the lexsort of score, key and column, read without sorting
    (many ties; keys random, or of three values, or constant, so that they tie as well)."""
    n, m = scores.shape
    k = data.draw(st.integers(0, m))
    pos = np.array(data.draw(st.lists(st.integers(0, m - 1), min_size=n, max_size=n)))
    rng = np.random.default_rng(n * 100 + m)
    keys = data.draw(st.sampled_from([rng.random((n, m)), rng.integers(0, 3, (n, m)).astype(float),
                                      np.zeros((n, m))]))
    ranks, top = M.rank_and_top(scores, pos, k, lambda which: keys[which])
    want_ranks, want_top = lexsorted_rank_and_top(scores, pos, k, keys)
    np.testing.assert_array_equal(ranks, want_ranks)
    np.testing.assert_array_equal(top, want_top)
    np.testing.assert_array_equal((ranks <= k), (top == pos[:, None]).any(axis=1))
    # without ties at the positive, the rank is the tie-free one of ranks_from_scores
    untied = (scores == scores[np.arange(n), pos][:, None]).sum(1) == 1
    np.testing.assert_array_equal(ranks[untied], M.ranks_from_scores(scores, pos, np.zeros(n))[untied])


def test_rank_and_top_of_rows_of_one_score_is_the_order_of_their_keys():
    """Every column ties (popularity's new music: every count 0): the keys alone order the row; equal keys at
    the list's last place (a row sorted whole) go by column."""
    rng = np.random.default_rng(5)
    scores = np.zeros((64, 500))
    keys = rng.random((64, 500))
    keys[0, [3, 7, 9]] = -1.0  # three equal smallest keys: columns 3, 7, 9 in that order, for a list of 2
    pos = rng.integers(0, 500, 64)
    ranks, top = M.rank_and_top(scores, pos, 2, lambda which: keys[which])
    np.testing.assert_array_equal(top[0], [3, 7])
    np.testing.assert_array_equal(top[1:], np.argsort(keys[1:], axis=1)[:, :2])
    np.testing.assert_array_equal(ranks[1:], 1 + (keys[1:] < keys[np.arange(1, 64), pos[1:]][:, None]).sum(1))
    want_ranks, want_top = lexsorted_rank_and_top(scores, pos, 2, keys)
    np.testing.assert_array_equal(ranks, want_ranks)
    np.testing.assert_array_equal(top, want_top)


def test_rank_and_top_breaks_ties_among_infinities_by_key():
    scores = np.array([[1.0, -np.inf, -np.inf, -np.inf]])
    keys = np.array([[0.0, 0.9, 0.5, 0.1]])
    ranks, top = M.rank_and_top(scores, np.array([2]), 3, lambda which: keys[which])
    np.testing.assert_array_equal(top, [[0, 3, 2]])
    np.testing.assert_array_equal(ranks, [3])


def test_rank_and_top_refuses_infinite_keys_and_orders_unsigned_scores_best_first():
    # an infinite key passed for the mask of other scores (a column listed twice); unsigned scores, negated to
    # order best first, wrapped round (a review)
    keys = np.array([[0.0, np.inf, np.inf]])
    with pytest.raises(ValueError, match="tie keys must be finite"):
        M.rank_and_top(np.array([[1.0, 0.0, 0.0]]), np.array([0]), 3, lambda which: keys[which])
    scores = np.array([[0, 1, 3, 3]], np.uint32)
    ties = np.array([[0.4, 0.3, 0.2, 0.1]])
    ranks, top = M.rank_and_top(scores, np.array([1]), 3, lambda which: ties[which])
    np.testing.assert_array_equal(top, [[3, 2, 1]])
    np.testing.assert_array_equal(ranks, [3])
    low = np.iinfo(np.int64).min  # negated, it wrapped round to itself: the list and the rank disagreed
    scores = np.array([[5, low, low, low, 7]])
    ranks, top = M.rank_and_top(scores, np.array([1]), 3, lambda which: ties[which][:, :1].repeat(5, 1) * 0
                                + np.array([[0.5, 0.1, 0.2, 0.3, 0.4]]))
    np.testing.assert_array_equal(top, [[4, 0, 1]])
    np.testing.assert_array_equal(ranks, [3])


def test_rank_functions_refuse_columns_and_tie_breaks_out_of_range():
    scores = np.array([[0.3, 0.1, 0.2]])
    for bad in ([-1], [3], [0.5]):
        with pytest.raises(ValueError, match="positive column"):
            M.ranks_from_scores(scores, np.array(bad), np.zeros(1))
        with pytest.raises(ValueError, match="positive column"):
            M.rank_and_top(scores, np.array(bad), 1, lambda which: np.zeros((len(which), 3)))
    for u in (1.0, -0.5, np.nan):
        with pytest.raises(ValueError, match="tie_break"):
            M.ranks_from_scores(scores, np.array([0]), np.array([u]))


def test_non_finite_weights_or_ranks_are_refused_not_turned_into_nan():
    for w in ([np.nan, 1.0], [np.inf, 1.0], [0.0, 0.0]):
        with pytest.raises(ValueError, match="weights"):
            M.recall_at_k(np.array([1, 2]), 1, np.array(w))
    with pytest.raises(ValueError, match="finite"):
        M.recall_at_k(np.array([np.nan, 2.0]), 1)


def test_total_variation_by_hand():
    assert M.total_variation(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)
    assert M.total_variation(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.0
    # [2,1,1] normalises to [.5,.25,.25]; 0.5 * (|.5-.25| + 0 + |.25-.5|) = 0.25
    assert M.total_variation(np.array([2.0, 1.0, 1.0]), np.array([0.25, 0.25, 0.5])) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        M.total_variation(np.array([1.0, 0.0]), np.array([1.0, 0.0, 0.0]))
    with pytest.raises(ValueError):
        M.total_variation(np.zeros(3), np.ones(3))
    for bad in ([np.nan, 1.0], [np.inf, 1.0], [-0.5, 1.0]):  # a NaN distance would be reported as a figure
        with pytest.raises(ValueError, match="finite, non-negative"):
            M.total_variation(np.array(bad), np.array([0.5, 0.5]))


def test_genre_shares_by_hand():
    track_genre = np.array([0, 1, 1, 2])
    # top lists name tracks 0,1 / 2,0 -> genres 0,1,1,0 -> shares [.5, .5, 0]
    np.testing.assert_allclose(M.genre_shares(np.array([[0, 1], [2, 0]]), track_genre, 3), [0.5, 0.5, 0.0])
    np.testing.assert_allclose(M.genre_shares(np.array([3, 3, 1]), track_genre, 4), [0, 1 / 3, 2 / 3, 0])
    np.testing.assert_array_equal(M.genre_shares(np.zeros(0, np.int64), track_genre, 3), np.zeros(3))
    with pytest.raises(ValueError, match=r"track genre must be an integer in \[0, 2\)"):
        M.genre_shares(np.array([3]), track_genre, 2)  # genre 2 beyond n_genres: not a longer share vector


def test_coverage_by_hand():
    # tracks 0, 1, 2 appear among 10 candidates
    assert M.coverage(np.array([[0, 1], [1, 2]]), 10) == pytest.approx(0.3)
    assert M.coverage(np.array([[4]]), 1) == 1.0
    with pytest.raises(ValueError, match="at least one candidate"):
        M.coverage(np.array([[0]]), 0)


def test_per_group_recall_by_hand():
    ranks = np.array([1, 6, 20, 2])
    groups = np.array([0, 0, 1, 0])
    out = M.per_group_recall_at_k(ranks, groups, 3, 5)
    # group 0: ranks 1, 6, 2 -> 2 of 3 within 5; group 1: rank 20 -> 0; group 2: no queries -> NaN
    assert out[0] == pytest.approx(2 / 3)
    assert out[1] == 0.0
    assert np.isnan(out[2])


@pytest.mark.parametrize(("ranks", "groups", "match"), [
    ([1, 20], [0, 5], r"group must be an integer in \[0, 3\)"),  # would give 6 groups' recalls, not 3
    ([1, 20], [0, -1], r"group must be an integer in \[0, 3\)"),
    ([1, 20], [0.0, 1.0], r"group must be an integer"),
    ([1, 20], [0], "one entry per rank"),
    ([0, 20], [0, 1], "1-based and finite"),
    ([np.nan, 20], [0, 1], "1-based and finite"),  # NaN was counted as a miss
])
def test_per_group_recall_refuses_bad_input(ranks, groups, match):
    with pytest.raises(ValueError, match=match):
        M.per_group_recall_at_k(np.array(ranks), np.array(groups), 3, 5)


# ---- an independent implementation ----------------------------------------------------------------

def _ndcg_from_scores(scores: np.ndarray, pos: np.ndarray, k: int) -> float:
    """Textbook NDCG@k from a score matrix: sort, sum rel_i / log2(i + 1) over the top k, divide by IDCG."""
    out = []
    for row, p in zip(scores, pos, strict=True):
        order = sorted(range(len(row)), key=lambda j: -row[j])
        rel = [1.0 if j == p else 0.0 for j in order]
        dcg = sum(r / math.log2(i + 2) for i, r in enumerate(rel[:k]))
        idcg = sum(r / math.log2(i + 2) for i, r in enumerate(sorted(rel, reverse=True)[:k]))
        out.append(dcg / idcg)
    return float(np.mean(out))


def test_ndcg_matches_textbook_formula_on_scores():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(50, 30))  # continuous scores: no ties
    pos = rng.integers(0, 30, 50)
    ranks = M.ranks_from_scores(scores, pos, np.zeros(50))
    for k in (1, 5, 10, 30):
        assert M.ndcg_at_k(ranks, k) == pytest.approx(_ndcg_from_scores(scores, pos, k), abs=1e-12)
    # recall is the share of positives among the top k of the sorted scores
    top10 = np.argsort(-scores, axis=1)[:, :10]
    hits = [p in t for p, t in zip(pos, top10, strict=True)]
    assert M.recall_at_k(ranks, 10) == pytest.approx(np.mean(hits))


def test_median_rank_matches_scipy():
    from scipy import stats

    rng = np.random.default_rng(1)
    r = rng.integers(1, 100, 31)
    assert M.median_rank(r) == stats.scoreatpercentile(r, 50)


# ---- bad input --------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn", [lambda r: M.recall_at_k(r, 10), lambda r: M.ndcg_at_k(r, 10), M.mrr,
                                M.median_rank], ids=["recall", "ndcg", "mrr", "median_rank"])
@pytest.mark.parametrize("ranks", [np.zeros(0, np.int64), np.array([1, 0, 3]), np.array([[1, 2]])],
                         ids=["empty", "rank0", "2d"])
def test_bad_ranks_raise(fn, ranks):
    with pytest.raises(ValueError, match="ranks must be a non-empty 1-d array|ranks are 1-based"):
        fn(ranks)


@pytest.mark.parametrize("w", [np.array([1.0, -0.5, 1.0, 1.0]), np.zeros(4), np.ones(3)],
                         ids=["negative", "all-zero", "wrong-length"])
def test_bad_weights_raise(w):
    for compute in (lambda: M.recall_at_k(RANKS, 10, w), lambda: M.ndcg_at_k(RANKS, 10, w), lambda: M.mrr(RANKS, w)):
        with pytest.raises(ValueError, match="weights must be finite and non-negative, one per rank"):
            compute()


# ---- properties -----------------------------------------------------------------------------------

ranks_st = hnp.arrays(np.int64, st.integers(1, 60), elements=st.integers(1, 500))


@settings(deadline=None)  # no per-example deadline: the suite runs beside other jobs
@given(ranks_st, st.integers(1, 600), st.integers(0, 100))
def test_recall_monotone_in_k(ranks, k, extra):
    assert M.recall_at_k(ranks, k) <= M.recall_at_k(ranks, k + extra) + 1e-12


@settings(deadline=None)
@given(ranks_st, st.integers(1, 600))
def test_ndcg_in_unit_interval_and_below_recall(ranks, k):
    v = M.ndcg_at_k(ranks, k)
    assert 0.0 <= v <= 1.0 + 1e-12
    assert v <= M.recall_at_k(ranks, k) + 1e-12  # each hit's gain is at most 1
    assert 0.0 < M.mrr(ranks) <= 1.0 + 1e-12


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(2, 25), st.integers(1, 9), st.integers(0, 2**31 - 1))
def test_chunked_ranks_and_metrics_equal_full(n, m, chunk, seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, (n, m)).astype(np.float64)  # few distinct values: many ties
    pos = rng.integers(0, m, n)
    u = rng.random(n)
    full = M.ranks_from_scores(scores, pos, u)
    parts = np.concatenate([M.ranks_from_scores(scores[s:s + chunk], pos[s:s + chunk], u[s:s + chunk])
                            for s in range(0, n, chunk)])
    np.testing.assert_array_equal(parts, full)
    assert ((full >= 1) & (full <= m)).all()
    # a size-weighted mean of chunk metrics is the full metric
    sizes = [len(full[s:s + chunk]) for s in range(0, n, chunk)]
    chunked = sum(M.recall_at_k(full[s:s + chunk], 3) * sz for s, sz in zip(range(0, n, chunk), sizes,
                                                                           strict=True)) / n
    assert chunked == pytest.approx(M.recall_at_k(full, 3))


@settings(deadline=None)
@given(ranks_st.flatmap(lambda r: st.tuples(st.just(r), hnp.arrays(np.float64, len(r),
                                                                  elements=st.floats(0.01, 100)))),
       st.integers(1, 600))
def test_weighted_recall_is_a_convex_combination(rw, k):
    ranks, w = rw
    v = M.recall_at_k(ranks, k, w)
    assert 0.0 <= v <= 1.0 + 1e-12
    assert v == pytest.approx(np.sum(w * (ranks <= k)) / np.sum(w))


def test_nan_scores_raise_instead_of_ranking_first():
    # NaN compares false with everything: without a check a NaN model would get rank 1 everywhere
    scores = np.array([[0.3, 0.1, 0.2], [np.nan, 0.5, 0.1]])
    with pytest.raises(ValueError, match="NaN"):
        M.ranks_from_scores(scores, np.array([0, 0]), np.zeros(2))
    with pytest.raises(ValueError, match="NaN"):
        M.ranks_from_scores(np.full((2, 4), np.nan), np.array([1, 2]), np.full(2, 0.5))
    # infinities are ordered values, not errors
    inf = np.array([[np.inf, 0.0, -np.inf]])
    np.testing.assert_array_equal(M.ranks_from_scores(inf, np.array([1]), np.zeros(1)), [2])


def test_rank_and_top_orders_a_tie_across_the_end_of_the_list_by_key():
    """Columns 0 and 1 tie for the one place of a top-1 list, the positive (column 2) is not tied: the
    key decides which of the two is listed, whichever way round the keys are."""
    scores = np.array([[3.0, 3.0, 0.0, 1.0], [3.0, 3.0, 0.0, 1.0], [0.5, 2.0, 2.0, 2.0]])
    keys = np.array([[0.9, 0.1, 0.5, 0.5],  # column 1 first
                     [0.1, 0.9, 0.5, 0.5],  # column 0 first
                     [0.0, 0.6, 0.2, 0.4]])  # three-way tie for two places: columns 2 then 3
    ranks, top = M.rank_and_top(scores, np.array([2, 2, 0]), 1, lambda which: keys[which])
    np.testing.assert_array_equal(top, [[1], [0], [2]])
    np.testing.assert_array_equal(ranks, [4, 4, 4])
    ranks, top = M.rank_and_top(scores, np.array([3, 3, 0]), 2, lambda which: keys[which])
    np.testing.assert_array_equal(top, [[1, 0], [0, 1], [2, 3]])
    np.testing.assert_array_equal(ranks, [3, 3, 4])
