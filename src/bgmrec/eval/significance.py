"""Is one model better than another on the same queries? Paired comparisons over queries.

Two models ranked on one split give each query a value of a metric (1 or 0 for Recall@10, see
:func:`~bgmrec.eval.metrics.query_gains`). The difference of their means carries a sampling error
from the finite set of queries. Both models answered the same queries, so the comparison is paired:

- **paired percentile bootstrap** (Efron and Tibshirani, "An Introduction to the Bootstrap", 1993,
  ch. 13): resample the queries with replacement, the same resample for both models, and recompute
  both means; the quantiles of the replicates bound the difference and the relative change
  ``candidate / baseline - 1``;
- **paired randomisation test** (Fisher's sign-flip test; recommended for IR evaluation by Smucker,
  Allan and Carterette, "A comparison of statistical significance tests for information retrieval
  evaluation", CIKM 2007): if the two models were exchangeable, each query's difference would be as
  likely negated. The two-sided p-value is the share of sign vectors whose mean difference is at least
  as far from 0 as the observed one: exact (every sign vector) when there are no more than
  ``resamples`` of them, else by Monte Carlo with the add-one correction (Phipson and Smyth, 2010).

Both are conditional on the two trained models: they say how sure the figure is given these queries,
not how it would vary over training seeds or new worlds (for that, compare over seeds). Both treat the
queries as independent draws of uploads to a fixed catalogue. Queries of one uploader share a taste; on
the small world (seed 0, CMVAE against DecCM's content mode) a cluster-robust standard error by uploader
was within 2% of the independent one on ``test`` and ``test_unbiased``. Clustering by positive track
widens it by a third to a half, but that is the spread over new catalogues, which these comparisons do
not claim. With one query (or one that differs) an interval has width 0: it says nothing, and the
p-value of 1 says so.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

_CHUNK_CELLS = 1 << 22  # resampled query indices held in memory at once


@dataclass(frozen=True)
class PairedComparison:
    """A candidate model against a baseline on the same queries (see the module docstring)."""

    metric: str  # the per-query metric compared, e.g. "recall@10"
    n_queries: int  # queries both models answered
    baseline: float  # the baseline's mean
    candidate: float  # the candidate's mean
    difference: float  # candidate - baseline
    difference_ci: tuple[float, float]  # paired percentile bootstrap interval of the difference
    relative_change: float  # candidate / baseline - 1 (NaN when the baseline's mean is 0)
    relative_change_ci: tuple[float, float]  # its bootstrap interval (NaN when a resample's baseline mean is 0)
    p_value: float  # two-sided paired randomisation test of "no difference"
    level: float  # confidence level of both intervals
    resamples: int  # bootstrap resamples (and at most as many sign vectors)

    def to_json(self) -> dict:
        """The comparison as a JSON object (NaN written as null)."""
        return {k: _nulls(v) for k, v in asdict(self).items()}


def _nulls(v):
    if isinstance(v, tuple | list):
        return [_nulls(x) for x in v]
    return None if isinstance(v, float) and np.isnan(v) else v


def _paired(baseline, candidate) -> np.ndarray:
    """The two models' per-query values as one [n, 2] float64 array, checked."""
    a, b = np.asarray(baseline, np.float64), np.asarray(candidate, np.float64)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise ValueError("a paired comparison needs one value per query from each model, the same queries: "
                         f"got shapes {a.shape} (baseline) and {b.shape} (candidate)")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("a paired comparison needs finite per-query values")
    return np.stack([a, b], axis=1)


MAX_RESAMPLES = 1_000_000  # a p-value's resolution of 1e-6; the bootstrap's means alone hold 8 bytes per resample


def check_settings(resamples: int, level: float | None = 0.95) -> None:
    """ValueError unless 1 <= ``resamples`` <= :data:`MAX_RESAMPLES` and ``level`` is in (0, 1) (checked before any
    ranking: 1e11 resamples failed after the ranking, allocating 1.46 TiB). With a
    ``level`` (an interval is made), each of the interval's two tails must hold at least one resample:
    ``resamples`` >= 2 / (1 - level), 40 at 95%."""
    from bgmrec.data.dataset import FieldError  # a ValueError naming the argument (a command's option: worded)

    if not isinstance(resamples, int | np.integer) or resamples < 1:
        raise FieldError(f"{{resamples}} must be an integer >= 1, got {resamples}", "resamples")
    if resamples > MAX_RESAMPLES:
        raise FieldError(f"{{resamples}} must be at most {MAX_RESAMPLES:,} (the default is 10,000), got {resamples}",
                         "resamples")
    if level is None:
        return
    if not 0 < level < 1:  # False for NaN too
        raise FieldError(f"{{level}} must be in (0, 1), e.g. 0.95, got {level}", "level")
    least = math.ceil(2 / (1 - level) - 1e-9)
    if resamples < least:
        raise FieldError(f"{{resamples}} {resamples} is too few for a {level:.0%} interval: each tail must hold at "
                         f"least one resample, so at least {least} (the default is 10,000)", "resamples")


def bootstrap_means(values: np.ndarray, resamples: int, seed: int = 0) -> np.ndarray:
    """Column means of ``values`` [n, c] over ``resamples`` bootstrap resamples of its rows: [resamples, c].

    Every column sees the same resampled rows (a paired bootstrap). Resamples are drawn in chunks,
    so memory stays bounded whatever ``n``.
    """
    values = np.asarray(values, np.float64)
    if values.ndim != 2 or len(values) == 0:
        raise ValueError(f"values must be [queries, columns] with at least one query, got shape {values.shape}")
    check_settings(resamples, level=None)
    n = len(values)
    rng = np.random.default_rng(seed)
    out = np.empty((resamples, values.shape[1]))
    step = max(1, _CHUNK_CELLS // n)
    columns = np.ascontiguousarray(values.T)  # gathered one column at a time: contiguous, 8x faster than rows
    for s in range(0, resamples, step):
        idx = rng.integers(0, n, size=(min(step, resamples - s), n))
        for j, column in enumerate(columns):
            out[s:s + len(idx), j] = column[idx].mean(axis=1)
    return out


def sign_flip_p_value(differences: np.ndarray, resamples: int = 10_000, seed: int = 0) -> float:
    """Two-sided p-value of the paired randomisation test that the mean of ``differences`` is 0.

    Exact when 2^n sign vectors (n = the non-zero differences; zeros do not move the mean) are no more
    than ``resamples``; otherwise Monte Carlo over ``resamples`` random sign vectors, (1 + hits) / (1 + B).
    Sign vectors are made in chunks either way, so memory stays bounded.
    """
    d = np.asarray(differences, np.float64)
    if d.ndim != 1 or d.size == 0 or not np.isfinite(d).all():
        raise ValueError(f"differences must be a non-empty 1-d array of finite values, got shape {d.shape}")
    check_settings(resamples, level=None)
    nonzero = d[d != 0]
    n = len(nonzero)
    if n == 0:
        return 1.0
    observed = abs(nonzero.sum())
    tol = 1e-9 * float(np.abs(nonzero).sum())  # sign flips of equal sums must tie despite rounding
    step = max(1, _CHUNK_CELLS // n)
    exact = 2**n <= resamples
    total = 2**n if exact else resamples
    rng = np.random.default_rng(seed)
    hits = 0
    for s in range(0, total, step):
        if exact:  # sign vector i: bit j of i set -> the j-th difference negated
            bits = (np.arange(s, min(s + step, total))[:, None] >> np.arange(n)) & 1
            signs = 1.0 - 2.0 * bits
        else:
            signs = rng.choice((1.0, -1.0), size=(min(step, total - s), n))
        hits += int((np.abs(signs @ nonzero) >= observed - tol).sum())
    return hits / total if exact else (1 + hits) / (1 + total)


def paired_comparison(baseline: np.ndarray, candidate: np.ndarray, metric: str = "", resamples: int = 10_000,
                      level: float = 0.95, seed: int = 0) -> PairedComparison:
    """Compare two models' per-query values of one metric on the same queries (row i: the same query)."""
    check_settings(resamples, level)
    values = _paired(baseline, candidate)
    base, cand = values.mean(axis=0)
    reps = bootstrap_means(values, resamples, seed)
    q = [(1 - level) / 2, (1 + level) / 2]
    diff_ci = np.quantile(reps[:, 1] - reps[:, 0], q)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = reps[:, 1] / reps[:, 0] - 1
    rel_ci = np.quantile(rel, q) if (reps[:, 0] > 0).all() else np.full(2, np.nan)
    return PairedComparison(
        metric=metric, n_queries=len(values), baseline=float(base), candidate=float(cand),
        difference=float(cand - base), difference_ci=(float(diff_ci[0]), float(diff_ci[1])),
        relative_change=float(cand / base - 1) if base > 0 else float("nan"),
        relative_change_ci=(float(rel_ci[0]), float(rel_ci[1])),
        p_value=sign_flip_p_value(values[:, 1] - values[:, 0], resamples, seed + 1),
        level=level, resamples=resamples)
