"""Paired comparisons over queries: hand-worked p-values, the bootstrap's variance, coverage, bad input."""

from __future__ import annotations

import itertools
import json
import math
from fractions import Fraction

import numpy as np
import pytest

from bgmrec.eval import metrics as M
from bgmrec.eval.significance import bootstrap_means, paired_comparison, sign_flip_p_value

# ---- per-query gains -------------------------------------------------------------------------------


def test_query_gains_by_hand_and_their_means_are_the_metrics():
    ranks = np.array([1, 3, 11, 2])
    assert M.query_gains(ranks, "recall@10").tolist() == [1.0, 1.0, 0.0, 1.0]
    assert M.query_gains(ranks, "ndcg@10") == pytest.approx([1.0, 0.5, 0.0, 1 / math.log2(3)])
    assert M.query_gains(ranks, "MRR") == pytest.approx([1.0, 1 / 3, 1 / 11, 0.5])
    for metric, agg in (("recall@3", M.recall_at_k(ranks, 3)), ("ndcg@11", M.ndcg_at_k(ranks, 11)),
                        ("mrr", M.mrr(ranks))):
        assert M.query_gains(ranks, metric).mean() == pytest.approx(agg)


@pytest.mark.parametrize("metric", ["recall", "recall@0", "recall@x", "recall@²", "ndcg@", "mrr@10", "map@10", ""])
def test_unknown_metrics_are_named(metric):
    with pytest.raises(ValueError, match="unknown metric"):
        M.parse_metric(metric)


# ---- the randomisation test, worked out by hand ------------------------------------------------------


def test_sign_flip_p_value_by_hand():
    # d = (1, 1, 1): of the 8 sign vectors only (+,+,+) and (-,-,-) reach |sum| = 3 -> p = 2/8
    assert sign_flip_p_value(np.array([1.0, 1.0, 1.0])) == 0.25
    # one non-zero difference: every sign vector reaches |sum| = 1 -> p = 1
    assert sign_flip_p_value(np.array([0.0, 1.0, 0.0, 0.0])) == 1.0
    # d = (1, 1, 1, -1, 0): observed |sum| = 2; four signs of +-1 sum to 4, 2, 0, -2, -4 in 1, 4, 6, 4, 1
    # of 16 ways, so |sum| >= 2 in 10 of them (the zero doubles both counts) -> p = 10/16
    assert sign_flip_p_value(np.array([1.0, 1.0, 1.0, -1.0, 0.0])) == 0.625
    # no difference at all: p = 1
    assert sign_flip_p_value(np.zeros(7)) == 1.0


def test_sign_flip_ties_on_sums_of_equal_values_are_exact():
    # 0.1 + 0.2 + 0.3 and its sign flips: float rounding must not drop the observed vector itself
    assert sign_flip_p_value(np.array([0.1, 0.2, 0.3])) == 0.25  # (+,+,+) and (-,-,-) only
    assert sign_flip_p_value(np.array([0.1, 0.2, -0.3])) == 1.0  # every |sum| >= 0
    # NDCG-like differences whose flipped sums equal the observed one in exact arithmetic but not in floats:
    # the count is checked against exact rational arithmetic on the same floats
    d = [0.27023815442731974, 0.053655912951249635, -0.25, 0.026400050467840885, 1 / 3]
    exact = [Fraction(x) for x in d]
    observed = abs(sum(exact))
    sums = [abs(sum(s * x for s, x in zip(signs, exact, strict=True)))
            for signs in itertools.product((1, -1), repeat=len(d))]
    expected = np.mean([t >= observed - Fraction(1, 10**12) for t in sums])
    assert expected == 0.3125  # 10 of 32, where float sums without a tolerance count 8
    assert sign_flip_p_value(np.array(d)) == expected


def test_monte_carlo_p_value_is_close_to_the_exact_one():
    rng = np.random.default_rng(3)
    d = rng.choice([-1.0, 0.0, 1.0], size=16, p=[0.2, 0.3, 0.5])
    nz = d[d != 0]
    exact = np.mean([abs(np.dot(s, nz)) >= abs(nz.sum()) for s in itertools.product((1, -1), repeat=len(nz))])
    assert 2 ** len(nz) > 2000  # the Monte Carlo branch runs
    assert sign_flip_p_value(d, resamples=2000, seed=1) == pytest.approx(exact, abs=0.03)
    assert sign_flip_p_value(d, resamples=2 ** len(nz)) == pytest.approx(exact)  # the exact branch agrees


def test_monte_carlo_p_value_is_never_zero():
    d = np.ones(200)  # every query better: no random sign vector reaches the observed sum
    assert sign_flip_p_value(d, resamples=999) == pytest.approx(1 / 1000)


# ---- the bootstrap -------------------------------------------------------------------------------------


def test_bootstrap_replicates_have_the_variance_of_a_mean():
    # the bootstrap variance of a mean of n values is their population variance / n
    d = np.array([1, 0, 0, -1, 1, 1, 0, 0, 1, -1, 0, 1], np.float64)
    reps = bootstrap_means(d[:, None], resamples=40_000, seed=0)[:, 0]
    assert reps.mean() == pytest.approx(d.mean(), abs=0.005)
    assert reps.std() == pytest.approx(math.sqrt(d.var() / len(d)), rel=0.03)


def test_bootstrap_is_paired_and_seeded():
    a = np.arange(50, dtype=np.float64)
    reps = bootstrap_means(np.stack([a, a + 1], axis=1), resamples=100, seed=7)
    assert np.allclose(reps[:, 1] - reps[:, 0], 1.0)  # the same rows for both columns
    assert np.array_equal(reps, bootstrap_means(np.stack([a, a + 1], axis=1), resamples=100, seed=7))


def test_chunks_change_nothing(monkeypatch):
    import bgmrec.eval.significance as S

    values = np.random.default_rng(0).random((10, 2))
    d = np.random.default_rng(1).choice([-1.0, 0.0, 0.5, 1.0], size=30)
    whole = (S.bootstrap_means(values, 8, seed=3), S.sign_flip_p_value(d, 500, seed=4),
             S.sign_flip_p_value(d[:9], 600))
    assert whole[2] == S.sign_flip_p_value(d[:9], 2 ** 9)  # the exact branch (2^#nonzero <= 600)
    monkeypatch.setattr(S, "_CHUNK_CELLS", 30)  # 3 resamples of 10 rows, or a few sign vectors, per chunk
    chunked = (S.bootstrap_means(values, 8, seed=3), S.sign_flip_p_value(d, 500, seed=4),
               S.sign_flip_p_value(d[:9], 600))
    assert np.array_equal(whole[0], chunked[0]) and whole[1:] == chunked[1:]


# ---- paired_comparison -----------------------------------------------------------------------------------


def test_identical_models_differ_by_nothing():
    g = np.array([1.0, 0.5, 1.0, 1.0, 0.25])  # NDCG-like: no resample has a mean of 0
    c = paired_comparison(g, g.copy(), "recall@10", resamples=500)
    assert (c.difference, c.difference_ci, c.relative_change, c.relative_change_ci) == (0.0, (0.0, 0.0), 0.0,
                                                                                          (0.0, 0.0))
    assert c.p_value == 1.0 and c.n_queries == 5


def test_comparison_by_hand():
    base = np.array([1.0, 0.0, 1.0, 0.0])
    cand = np.array([1.0, 1.0, 1.0, 0.0])
    c = paired_comparison(base, cand, "recall@10", resamples=2000, seed=0)
    assert (c.baseline, c.candidate, c.difference) == (0.5, 0.75, 0.25)
    assert c.relative_change == pytest.approx(0.5)
    assert c.p_value == 1.0  # one query differs: its sign flip is as likely
    lo, hi = c.difference_ci  # resampled differences are (#copies of query 2) / 4: 0, 0.25, ..., 1
    assert lo == 0.0 and 0.5 <= hi <= 0.75
    # a resample of queries 2 and 4 alone (chance 1/16 each time) has a baseline mean of 0: no ratio interval
    assert all(math.isnan(x) for x in c.relative_change_ci)


def test_relative_change_is_undefined_against_a_baseline_of_zero():
    c = paired_comparison(np.zeros(3), np.ones(3), resamples=100)
    assert math.isnan(c.relative_change) and all(math.isnan(x) for x in c.relative_change_ci)
    assert c.difference_ci == (1.0, 1.0) and c.p_value == 0.25
    j = c.to_json()
    assert j["relative_change"] is None and j["relative_change_ci"] == [None, None]
    json.dumps(j, allow_nan=False)  # strict JSON: NaN written as null


def test_intervals_cover_the_true_difference_about_as_often_as_they_say():
    rng = np.random.default_rng(0)
    covered = 0
    trials = 400
    for t in range(trials):  # paired queries: the candidate's hit rate is 0.05 higher
        u = rng.random(300)
        base, cand = (u < 0.6).astype(float), (u < 0.65).astype(float)
        c = paired_comparison(base, cand, resamples=1000, seed=t)
        covered += c.difference_ci[0] <= 0.05 <= c.difference_ci[1]
    assert 0.925 <= covered / trials <= 0.975  # 95% intervals (90% ones cover about 0.90 here)


@pytest.mark.parametrize("base,cand,words", [
    (np.ones(3), np.ones(4), "shapes (3,) (baseline) and (4,) (candidate)"),
    (np.ones((2, 2)), np.ones((2, 2)), "one value per query"),
    (np.ones(0), np.ones(0), "one value per query"),
    (np.array([1.0, np.nan]), np.ones(2), "finite"),
])
def test_bad_input_is_named(base, cand, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        paired_comparison(base, cand)


@pytest.mark.parametrize("kwargs,words", [({"level": 1.0}, "level"), ({"level": 0.0}, "level"),
                                          ({"level": float("nan")}, "level"), ({"resamples": 0}, "resamples"),
                                          ({"resamples": 2.5}, "resamples"),
                                          ({"resamples": 39}, "resamples 39 is too few for a 95% interval: each "
                                                              "tail must hold at least one resample, so at least 40"),
                                          ({"resamples": 199, "level": 0.99}, "at least 200")])
def test_bad_settings_are_named(kwargs, words):
    with pytest.raises(ValueError, match=words):
        paired_comparison(np.ones(3), np.ones(3), **kwargs)


def test_the_fewest_resamples_of_an_interval_give_one_resample_in_each_tail():
    c = paired_comparison(np.zeros(5), np.arange(5.0), resamples=40)  # 2 / (1 - 0.95) = 40: accepted
    assert c.difference_ci[0] <= c.difference <= c.difference_ci[1]


def test_interval_ends_are_the_lower_and_upper_quantiles_at_the_asked_level():
    # two queries, the candidate better on the first by 1 (baseline 1, 1; candidate 2, 1): a resample holds
    # c ~ Binomial(2, 1/2) copies of the first, so the difference and the relative change are both c / 2:
    # 0, 0.5, 1 with chances 1/4, 1/2, 1/4. At 60% the ends are the 20% and 80% quantiles, 0 and 1
    # (the 40% and 60% ones would both be 0.5), about 200 of 4,000 resamples away from either boundary.
    c = paired_comparison(np.array([1.0, 1.0]), np.array([2.0, 1.0]), resamples=4000, level=0.6, seed=2)
    assert c.difference_ci == (0.0, 1.0)
    assert c.relative_change_ci == (0.0, 1.0)
    assert (c.difference, c.relative_change, c.level) == (0.5, 0.5, 0.6)


def test_p_value_is_the_randomisation_test_with_the_asked_resamples():
    # 12 queries all better by 1: exactly 2 of the 4,096 sign vectors reach the observed sum, but 400 random
    # ones (fewer than 4,096: Monte Carlo) most likely reach it none, (1 + 0) / (1 + 400); never below that
    c = paired_comparison(np.zeros(12), np.ones(12), resamples=400, seed=0)
    assert c.p_value == sign_flip_p_value(np.ones(12), 400, seed=1)
    assert c.p_value >= 1 / 401
    exact = paired_comparison(np.zeros(12), np.ones(12), resamples=4096)
    assert exact.p_value == 2 / 4096


def test_relative_change_interval_is_undefined_once_a_resample_s_baseline_is_zero():
    # baseline 1, 0 and candidate 1, 1: a resample of the second query twice (chance 1/4) has a baseline
    # mean of 0 and a candidate mean of 1, a ratio of +inf (not NaN, which would hide a wrong rule); the
    # observed relative change, 1 / 0.5 - 1, is defined
    c = paired_comparison(np.array([1.0, 0.0]), np.array([1.0, 1.0]), resamples=1000)
    assert c.relative_change == 1.0
    assert all(math.isnan(x) for x in c.relative_change_ci)
    assert c.difference_ci == (0.0, 1.0)
