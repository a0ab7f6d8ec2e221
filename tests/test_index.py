"""Exact top-k against a brute-force numpy argsort; FAISS against exact; exclusions in both."""

from __future__ import annotations

import numpy as np
import pytest

from bgmrec.index import ExactIndex, FaissIndex, NaNScoreError


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    items = rng.normal(size=(2000, 32)).astype(np.float32)
    queries = rng.normal(size=(100, 32)).astype(np.float32)
    return items, queries


def _brute(items, queries, k, exclude_mask=None):
    s = queries.astype(np.float64) @ items.T.astype(np.float64)
    if exclude_mask is not None:
        s[exclude_mask] = -np.inf
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(s, ids, 1)


def test_exact_matches_brute_force(data):
    items, queries = data
    ids, scores = ExactIndex(items, chunk=17).search(queries, 10)
    want_ids, want_scores = _brute(items, queries, 10)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-4)
    assert len(ExactIndex(items)) == 2000


def test_exact_search_orders_equal_scores_by_item_position():
    """Ties (a popularity model's, duplicate tracks, zero rows) come in increasing item position, in every
    chunk and with exclusions: small integer features, whose scores are exact in float32."""
    rng = np.random.default_rng(1)
    items = rng.integers(0, 3, size=(300, 4)).astype(np.float32)
    queries = rng.integers(-1, 3, size=(40, 4)).astype(np.float32)
    queries[0] = 0.0  # every item ties
    for k in (1, 5, 25):
        ids, scores = ExactIndex(items, chunk=7).search(queries, k)
        want_ids, want_scores = _brute(items, queries, k)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_array_equal(scores, want_scores)
    np.testing.assert_array_equal(ids[0], np.arange(25))
    mask = rng.random((40, 300)) < 0.3
    ids, _ = ExactIndex(items, chunk=7).search_masked(queries, 10, mask)
    np.testing.assert_array_equal(ids, _brute(items, queries, 10, mask)[0])


def test_exact_k_larger_than_catalogue():
    items = np.eye(3, dtype=np.float32)
    ids, scores = ExactIndex(items).search(np.array([[0.1, 0.3, 0.2]], np.float32), 10)
    np.testing.assert_array_equal(ids, [[1, 2, 0]])
    np.testing.assert_allclose(scores, [[0.3, 0.2, 0.1]])


def test_exact_exclusions(data):
    items, queries = data
    top, _ = _brute(items, queries, 5)
    glob = np.unique(top[:, 0])
    ids, _ = ExactIndex(items).search(queries, 10, exclude=glob)
    mask = np.zeros((len(queries), len(items)), bool)
    mask[:, glob] = True
    np.testing.assert_array_equal(ids, _brute(items, queries, 10, mask)[0])
    per = [row[:3] for row in top]
    ids, _ = ExactIndex(items).search(queries, 10, exclude=per)
    mask = np.zeros((len(queries), len(items)), bool)
    for i, ex in enumerate(per):
        mask[i, ex] = True
    np.testing.assert_array_equal(ids, _brute(items, queries, 10, mask)[0])
    # python lists per query, of different lengths
    per_lists = [list(map(int, row[: 1 + i % 3])) for i, row in enumerate(top)]
    ids, _ = ExactIndex(items).search(queries, 10, exclude=per_lists)
    for row, ex in zip(ids, per_lists, strict=True):
        assert not np.isin(row, ex).any()
        assert len(set(row.tolist())) == 10


def test_exclusion_list_length_must_match():
    with pytest.raises(ValueError, match="2 lists for 3 queries"):
        ExactIndex(np.eye(4, dtype=np.float32)).search(np.ones((3, 4), np.float32), 2,
                                                     exclude=[np.array([0]), np.array([1])])


def test_faiss_recall_of_exact_top10(data):
    items, queries = data
    exact, _ = ExactIndex(items).search(queries, 10)
    ids, scores = FaissIndex(items).search(queries, 10)
    assert ids.shape == scores.shape == (100, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids.tolist(), exact.tolist(), strict=True)])
    assert recall >= 0.9
    assert (np.diff(scores, axis=1) <= 1e-5).all()
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ items.T, ids, 1), rtol=1e-4, atol=1e-4)


def test_faiss_exclusions(data):
    items, queries = data
    exact, _ = ExactIndex(items).search(queries, 5)
    glob = np.unique(exact[:, 0])
    ids, _ = FaissIndex(items).search(queries, 10, exclude=glob)
    assert (ids >= 0).all()
    assert not np.isin(ids, glob).any()
    per = [row[:3] for row in exact]
    ids, _ = FaissIndex(items).search(queries, 10, exclude=per)
    assert (ids >= 0).all()
    for row, ex in zip(ids, per, strict=True):
        assert not np.isin(row, ex).any()
    ex_ids, _ = ExactIndex(items).search(queries, 10, exclude=per)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids.tolist(), ex_ids.tolist(), strict=True)])
    assert recall >= 0.9


def test_faiss_many_exclusions_still_fill_k(data):
    """Excluding more ids than the oversampling margin must not leave holes (-1 ids) in the results."""
    items, queries = data
    top, _ = ExactIndex(items).search(queries, 60)
    per = [row for row in top]  # each query's 60 best items are all excluded
    ids, scores = FaissIndex(items, oversample=8).search(queries, 10, exclude=per)
    assert ids.shape == (100, 10)
    assert (ids >= 0).all() and np.isfinite(scores).all()
    for row, ex in zip(ids, per, strict=True):
        assert not np.isin(row, ex).any()
    exact, _ = ExactIndex(items).search(queries, 10, exclude=per)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids.tolist(), exact.tolist(), strict=True)])
    assert recall >= 0.9


def test_faiss_k_larger_than_catalogue():
    items = np.eye(3, dtype=np.float32)
    q = np.array([[0.1, 0.3, 0.2]], np.float32)
    ids, scores = FaissIndex(items).search(q, 10)
    np.testing.assert_array_equal(ids, [[1, 2, 0]])
    np.testing.assert_allclose(scores, [[0.3, 0.2, 0.1]], rtol=1e-6)
    ids, _ = FaissIndex(items).search(q, 10, exclude=np.array([2]))
    np.testing.assert_array_equal(ids, [[1, 0, -1]])  # the excluded item's place is -1


def test_faiss_with_a_bias_column_as_the_track_prior_adds(data):
    """A last coordinate that dominates item norms (query side constant, item side log Q in [-13, -5]):
    inner-product HNSW finds almost none of the exact top 10 on such items; the L2 reduction does."""
    items, queries = data
    rng = np.random.default_rng(1)
    unit = items / np.linalg.norm(items, axis=1, keepdims=True)
    log_q = rng.uniform(-13.0, -5.0, size=(len(items), 1))
    biased = np.hstack([unit, log_q]).astype(np.float32)
    q = np.hstack([queries / np.linalg.norm(queries, axis=1, keepdims=True), np.full((len(queries), 1), 0.1)])
    q = q.astype(np.float32)
    exact, _ = ExactIndex(biased).search(q, 10)
    ids, _ = FaissIndex(biased).search(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids.tolist(), exact.tolist(), strict=True)])
    assert recall >= 0.95


def test_a_2d_exclude_array_is_one_row_per_query():
    items = np.diag([4.0, 3.0, 2.0, 1.0]).astype(np.float32)
    queries = np.ones((2, 4), np.float32)
    for index in (ExactIndex(items), FaissIndex(items)):
        ids, _ = index.search(queries, 2, exclude=np.array([[0], [1]]))
        np.testing.assert_array_equal(ids, [[1, 2], [0, 2]])


@pytest.mark.parametrize("bad", [[-1], [4], [0.5]])
def test_exclude_positions_out_of_range_are_refused(bad):
    items = np.eye(4, dtype=np.float32)
    for index in (ExactIndex(items), FaissIndex(items)):
        with pytest.raises(ValueError, match=r"item positions must be integers in \[0, 4\)"):
            index.search(np.ones((1, 4), np.float32), 2, exclude=bad)


def test_k_zero_gives_empty_results_and_negative_k_is_refused():
    items, q = np.eye(4, dtype=np.float32), np.ones((3, 4), np.float32)
    for index in (ExactIndex(items), FaissIndex(items)):
        ids, scores = index.search(q, 0)
        assert ids.shape == scores.shape == (3, 0)
        with pytest.raises(ValueError, match="k must be >= 0"):
            index.search(q, -1)


def test_faiss_fills_k_when_k_is_most_of_the_catalogue():
    """A large k on a graph searched with a small ef_search: every query still gets k distinct items."""
    rng = np.random.default_rng(1)
    items = rng.normal(size=(500, 16)).astype(np.float32)
    items[:, 0] *= 5  # one dominant coordinate, as a bias column
    queries = rng.normal(size=(40, 16)).astype(np.float32)
    for k in (400, 500):
        ids, scores = FaissIndex(items, ef_search=16).search(queries, k)
        assert ids.shape == (40, k) and (ids >= 0).all() and np.isfinite(scores).all()
        assert all(len(set(row)) == k for row in ids.tolist())


def test_each_query_of_a_batch_gets_its_own_top_k_whatever_the_others_exclude(data):
    items, queries = data
    q = queries[:2]
    heavy = [np.arange(len(items) - 3), np.array([], np.int64)]  # query 0 leaves 3 items, query 1 all
    for index in (ExactIndex(items), FaissIndex(items)):
        ids, scores = index.search(q, 10, exclude=heavy)
        alone, _ = index.search(q[1:], 10)
        np.testing.assert_array_equal(ids[1], alone[0])  # query 1 as if searched alone
        assert sorted(ids[0, :3].tolist()) == list(range(len(items) - 3, len(items)))
        assert (ids[0, 3:] == -1).all()


def test_faiss_searches_exactly_the_queries_the_graph_leaves_short(data, monkeypatch):
    items, queries = data
    index = FaissIndex(items)
    real = index.index.search

    def short_for_even_queries(x, k, params=None):
        dist, ids = real(x, k, params=params)
        ids[::2, k // 2:] = -1  # as if the graph had found only half of what was asked, for some queries
        return dist, ids

    monkeypatch.setattr(index.index, "search", short_for_even_queries)
    ids, scores = index.search(queries[:10], 10)
    exact, exact_scores = ExactIndex(items).search(queries[:10], 10)
    np.testing.assert_array_equal(ids[::2], exact[::2])
    np.testing.assert_allclose(scores[::2], exact_scores[::2], rtol=1e-5)
    assert (ids >= 0).all()


def test_faiss_one_query_s_long_exclusion_list_does_not_widen_the_others_search(data, monkeypatch):
    """A batch in which one clip excludes many tracks: the others fetch k from the graph, as when alone
    (they fetched k plus the longest list of the batch, with ef_search as large: a batch of 64 clips, one
    excluding 5,000 of 100,000 tracks, took 25 times as long), and a query that would fetch more than
    max(ef_search, n / 2m) candidates is searched exactly, not through the graph."""
    items, queries = data
    index = FaissIndex(items, ef_search=128)
    real, calls = index.index.search, []

    def spy(x, k, params=None):
        calls.append((len(x), k, params.efSearch))
        return real(x, k, params=params)

    monkeypatch.setattr(index.index, "search", spy)
    top, _ = ExactIndex(items).search(queries[:4], 100)
    exclude = [top[0, :40], top[1, :100], [], []]  # 40 + 10 + 32 fetched; 100 + 10 + 32 > 128 (and 2000 / 64)
    ids, scores = index.search(queries[:4], 10, exclude=exclude)
    assert sorted(calls) == [(1, 82, 128), (2, 10, 128)]  # query 1 is scanned, queries 2 and 3 fetch 10
    exact, exact_scores = ExactIndex(items).search(queries[:4], 10, exclude=exclude)
    np.testing.assert_array_equal(ids[1], exact[1])
    np.testing.assert_allclose(scores[1], exact_scores[1], rtol=1e-5)
    calls.clear()
    alone, _ = index.search(queries[2:4], 10)
    np.testing.assert_array_equal(ids[2:], alone)
    for row, ex in zip(ids, exclude, strict=True):
        assert (row >= 0).all() and not np.isin(row, ex).any()


def test_faiss_defaults_find_the_exact_top10_among_near_duplicates():
    """A catalogue where each track has near-duplicates (versions, re-uploads) and a dominant bias column:
    FAISS's own graph defaults (ef_construction 40, ef_search 128) found about 80% of the exact top 10."""
    rng = np.random.default_rng(0)
    source = rng.integers(0, 250, 10000)
    centres, log_q = rng.normal(size=(250, 32)), rng.normal(-9.0, 1.5, size=(250, 1))
    items = np.hstack([centres[source] + 0.3 * rng.normal(size=(10000, 32)), log_q[source]]).astype(np.float32)
    queries = np.hstack([rng.normal(size=(100, 32)), np.full((100, 1), 0.5)]).astype(np.float32)
    exact, _ = ExactIndex(items).search(queries, 10)
    ids, _ = FaissIndex(items).search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids.tolist(), exact.tolist(), strict=True)])
    assert recall >= 0.93


def test_exact_search_scores_a_bounded_block_at_a_time(monkeypatch):
    """1,024 queries on 20,000 items: chunks of at most 2**24 scores (64 MB), not all 20.5 million at once,
    and the same answer as brute force."""
    import torch

    rng = np.random.default_rng(0)
    items = rng.normal(size=(20000, 4)).astype(np.float32)
    queries = rng.normal(size=(1024, 4)).astype(np.float32)
    real, sizes = torch.topk, []

    def spy(x, k, dim=-1):
        sizes.append(x.numel())
        return real(x, k, dim=dim)

    monkeypatch.setattr(torch, "topk", spy)
    ids, _ = ExactIndex(items).search(queries, 5)
    assert max(sizes) <= 2**24 and sum(sizes) == 1024 * 20000
    np.testing.assert_array_equal(ids[::97], _brute(items, queries[::97], 5)[0])


def test_exact_exclusions_follow_their_query_across_chunks(data):
    """Chunks of 3 queries, each query excluding its own best items: every chunk reads its own rows of the mask."""
    items, queries = data
    top, _ = _brute(items, queries[:10], 4)
    per = [row[: 1 + i % 4] for i, row in enumerate(top)]  # query i excludes its best 1 + i % 4 items
    mask = np.zeros((10, len(items)), bool)
    for i, ex in enumerate(per):
        mask[i, ex] = True
    ids, scores = ExactIndex(items, chunk=3).search(queries[:10], 5, exclude=per)
    want_ids, want_scores = _brute(items, queries[:10], 5, mask)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-4)
    # by hand: query 3 excluded its best 4, so its first result is its fifth best overall
    assert ids[3, 0] == _brute(items, queries[3:4], 5)[0][0, 4]


def test_both_indexes_refuse_a_nan_score_naming_the_query_and_agree_otherwise(data):
    """torch.topk ranked a NaN score first: a query with a NaN value got arbitrary items, best first."""
    items, queries = data
    exact, approx = ExactIndex(items, chunk=7), FaissIndex(items)
    for bad in (np.nan, np.inf):  # inf - inf is NaN too
        q = queries[:12].copy()
        q[9, 3], q[9, 4] = bad, -bad
        for index in (exact, approx):
            with pytest.raises(NaNScoreError, match=r"^query 9: its score for item \d+ is NaN, so the items have "
                                                    r"no order") as e:
                index.search(q, 5)
            assert e.value.query == 9
    # inner products past float32's range: the graph leaves such a query to exact search, and both refuse it
    huge = np.zeros((2, items.shape[1]), np.float32)
    huge[1] = 3e38
    for index in (exact, approx):
        with pytest.raises(NaNScoreError, match=r"^query 1: "):
            index.search(huge, 5)
    # a NaN score of an excluded item orders nothing: both answer, alike (the all-zero query: positions 0, 1, ...)
    q = np.zeros((1, 4), np.float32)
    q[0, 0] = np.inf
    small = np.eye(4, dtype=np.float32)
    want = ExactIndex(small).search(q, 2, exclude=[1, 2, 3])
    assert want[0].tolist() == [[0, -1]] and want[1][0, 0] == np.inf
    got = FaissIndex(small).search(q, 2, exclude=[1, 2, 3])
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1][:, :1], want[1][:, :1])


@pytest.mark.parametrize("index", [ExactIndex, FaissIndex])
def test_item_embeddings_that_are_not_finite_are_refused(index):
    items = np.eye(4, dtype=np.float32)
    items[2, 1] = np.nan
    items[3, 0] = -np.inf
    with pytest.raises(ValueError, match=r"^item embeddings: item 2 holds NaN or inf \(2 item\(s\) in all\)"):
        index(items)
