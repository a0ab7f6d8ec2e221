"""The evaluation protocol: full-catalogue ranking (main), the papers' sampled 1 + K protocol on frozen
negatives, inverse-popularity weighting, and bias diagnostics. One code path for every model."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bgmrec.data.dataset import Dataset, load_dataset
from bgmrec.data.negatives import other_positives
from bgmrec.eval import metrics as M
from bgmrec.eval.metrics import compared_protocol
from bgmrec.eval.significance import PairedComparison, check_settings, paired_comparison
from bgmrec.models.base import MusicCatalog, Recommender, VideoQuery, check_embedding_widths, load_model

FULL_KS = (1, 5, 10, 20)
SAMPLED_KS = (10, 15, 20, 25)
# the figures evaluate reports, each a metric of metrics.RANK_METRICS (the full ones followed by median_rank)
FULL_METRICS = (*(f"recall@{k}" for k in FULL_KS), "ndcg@10", "ndcg@20", "mrr")
SAMPLED_METRICS = (*(f"recall@{k}" for k in SAMPLED_KS), *(f"ndcg@{k}" for k in SAMPLED_KS))  # sampled and IPW
CURVE_KS = (1, 2, 3, 5, 10, 15, 20, 30, 50, 100)
RANK_KEYS = ("full_ranks", "sampled_ranks")  # what evaluate(keep_ranks=True) adds: per-query arrays, not JSON
PAPERS_NEGATIVES = 100  # the papers' sampled protocol: each positive against 100 negatives (fewer if the split has)

EVAL_SPLITS = ("test", "test_new_music", "test_unbiased")  # the test splits every report ranks on


class EvaluationWarning(UserWarning):
    """Figures that measure less than their label says (personalised mode for queries of unknown uploaders,
    Recall@K of a split with at most K candidate tracks, a score file ranking below chance). The commands print it
    as one ``warning: ...`` line, as their own warnings."""


def warn_if_recall_is_trivial(split: str, n_candidates: int, ks: tuple[int, ...], top_k: int | None = None) -> None:
    """An :class:`EvaluationWarning` when some full-catalogue Recall@K of ``ks`` is 1 for every model,
    because ``split`` has at most K candidate tracks (e.g. a dataset built on a 10-track catalogue); it also
    names the exposure figures of top-``top_k`` lists (when given), which then hold every candidate."""
    trivial = [k for k in ks if k >= n_candidates]
    if trivial:
        exposure = (f"; exposure_tvd@{top_k} and coverage@{top_k} describe the whole candidate set, the same "
                    "for every model" if top_k is not None and top_k >= n_candidates else "")
        warnings.warn(f"split {split!r} has only {n_candidates} candidate track(s): full Recall@"
                      f"{', @'.join(map(str, trivial))} is 1 for every model{exposure}; compare at a smaller K or "
                      "on a larger catalogue", EvaluationWarning, stacklevel=3)


@dataclass
class FullRanking:
    """Ranks of each query's positive among the split's candidates, and each query's top list."""

    ranks: np.ndarray  # int64 [n], 1-based
    top: np.ndarray  # int64 [n, k] dataset track indices, best first
    n_candidates: int


def _check_dataset(model, ds: Dataset) -> None:
    """The model's refusal of ``ds`` (:meth:`~bgmrec.models.base.Recommender.check_dataset`), for a recommender; a
    scorer that only encodes (a teacher mixture, a fitted per-track term) has none."""
    check = getattr(model, "check_dataset", None)
    if check is not None:
        check(ds)


def _tie_break(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(n)


def _tie_keys(videos: np.ndarray, m: int, seed: int) -> np.ndarray:
    """The keys [len(videos), m] ordering each query's tied candidates (:func:`~bgmrec.eval.metrics.rank_and_top`):
    ``m`` uniform draws of a generator seeded with ``seed`` and the query's video, so a query's order is the same
    whatever the chunking or the subset. Each row drawn into place (``out=``: the draws of ``random(m)``)."""
    keys = np.empty((len(videos), m))
    for row, video in zip(keys, videos.tolist(), strict=True):
        np.random.default_rng([seed, video]).random(out=row)
    return keys


def full_ranks(model: Recommender, ds: Dataset, split: str, rows: np.ndarray | None = None,
               top_k: int = 10, chunk: int = 2048, seed: int = 0) -> FullRanking:
    """Score every query of ``split`` against all of the split's candidate tracks, chunk by chunk.

    Ranks and top lists come from one order per query (:func:`~bgmrec.eval.metrics.rank_and_top`):
    by score, exact ties in a seeded random order, so a positive is in its top list exactly when
    its rank is at most ``top_k``. The order of ties is drawn from ``seed`` and the query's video, and the
    video's other tracks in the whole split are left out (:func:`~bgmrec.data.negatives.other_positives`), so
    a query ranks alike whatever other queries ``rows`` holds (a validation subset, the whole split).
    A model that refuses ``ds`` (:meth:`~bgmrec.models.base.Recommender.check_dataset`: an oracle of another
    simulated world) raises ValueError.
    """
    _check_dataset(model, ds)
    rows = np.asarray(ds.splits[split] if rows is None else rows)
    cand = ds.candidate_tracks(split)
    col = np.full(ds.n_tracks, -1, np.int64)
    col[cand] = np.arange(len(cand))
    pos_col = col[rows[:, 1]]
    if (pos_col < 0).any():
        raise ValueError(f"split {split!r}: a positive track is outside the split's candidate set")
    score = _scorer(model, ds, split)
    ranks = np.empty(len(rows), np.int64)
    k = min(top_k, len(cand))
    top = np.empty((len(rows), k), np.int64)
    whole = np.asarray(ds.splits[split])  # a video's tracks in the whole split, for a subset of rows too
    for s in range(0, len(rows), chunk):
        part = rows[s:s + chunk]
        scores = score(part, cand)
        other_row, other_track = other_positives(part, whole)
        other_col = col[other_track]
        if (other_col >= 0).any():  # the filtered setting: the video's other positives are not among its candidates
            scores = _below_every_score(scores, other_row[other_col >= 0], other_col[other_col >= 0])

        def tie_keys(which: np.ndarray, videos: np.ndarray = part[:, 0]) -> np.ndarray:
            return _tie_keys(videos[which], len(cand), seed)

        ranks[s:s + chunk], cols = M.rank_and_top(scores, pos_col[s:s + chunk], k, tie_keys)
        top[s:s + chunk] = cand[cols]
    return FullRanking(ranks, top, len(cand))


def _below_every_score(scores: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """A copy of ``scores`` with the lowest value of its type at (``rows``, ``cols``): -inf for floats, the
    int64 minimum for integers (unsigned and bool scores as int64, whole), so those candidates rank below every
    other (a positive scored as low ties with them: a model's own -inf or minimum)."""
    scores = np.asarray(scores)
    out = np.array(scores, dtype=scores.dtype if scores.dtype.kind in "fi" else np.int64)
    out[rows, cols] = -np.inf if out.dtype.kind == "f" else np.iinfo(out.dtype).min
    return out


def sampled_ranks(model: Recommender, ds: Dataset, split: str, chunk: int = 4096, seed: int = 0) -> np.ndarray:
    """Rank of each positive among itself and the split's frozen negatives (the papers' protocol): 1 plus the
    number of listed negatives that outscore it (ties broken at random), a negative listed twice counting twice.
    A model that refuses ``ds`` raises ValueError, as in :func:`full_ranks`."""
    _check_dataset(model, ds)
    rows = np.asarray(ds.splits[split])
    cands = np.hstack([rows[:, 1:2], np.asarray(ds.negatives[split])])
    score = _scorer(model, ds, split)
    tie = _tie_break(len(rows), seed + 1)
    ranks = np.empty(len(rows), np.int64)
    for s in range(0, len(rows), chunk):
        part = rows[s:s + chunk]
        scores = score(part, cands[s:s + chunk])
        other_row, other_track = other_positives(part, rows)
        if other_row.size:  # a frozen negative that is another positive of the query's video does not count
            pair, column = np.nonzero(cands[s + other_row, 1:] == other_track[:, None])
            if pair.size:
                scores = _below_every_score(scores, other_row[pair], column + 1)
        ranks[s:s + chunk] = M.ranks_from_scores(scores, np.zeros(len(part), np.int64), tie[s:s + chunk])
    return ranks


def _scorer(model, ds: Dataset, split: str):
    """``score(rows, tracks)``: the scores [n, K] of the queries ``rows`` (int [n, 3] of ``split``) against the
    dataset tracks ``tracks``, int [K] (the same for every query) or [n, K] (each query's own): the inner
    products of the model's video and music embeddings (the music encoded once, after the first queries: their
    errors, such as features of another width, come first), or read from a scorer
    given its scores, ``video_scores(videos, tracks)`` (a model of another codebase:
    :class:`~bgmrec.eval.scores.PrecomputedScores`)."""
    given = getattr(model, "video_scores", None)
    if given is not None:
        return lambda rows, tracks: given(rows[:, 0], tracks)
    encoded: dict[str, np.ndarray] = {}  # the music, encoded once, after the first queries (their errors first)

    def score(rows: np.ndarray, tracks: np.ndarray) -> np.ndarray:
        queries = model.encode_videos(VideoQuery.from_dataset(ds, rows[:, 0], rows[:, 2], split))
        if not encoded:
            encoded["music"] = model.encode_music(MusicCatalog.from_dataset(ds))
        music = encoded["music"]
        check_embedding_widths(model, queries, music)
        items = torch.from_numpy(music)
        if tracks.ndim == 1:
            return (torch.from_numpy(queries) @ items[torch.from_numpy(tracks)].T).numpy()
        return torch.einsum("nd,nkd->nk", torch.from_numpy(queries), items[torch.from_numpy(tracks)]).numpy()

    return score


def evaluation_modes(model) -> list[str | None]:
    """The inference modes a model is evaluated in (:meth:`~bgmrec.models.base.Recommender.modes_to_evaluate`),
    or [None]: once, as it is."""
    return list(model.modes_to_evaluate()) or [None]


def evaluate_run(run: Path, ds: Dataset, splits=EVAL_SPLITS, label: str | None = None,
                 keep_ranks: bool = False) -> list[dict]:
    """:func:`evaluate` of the run folder ``run`` on each of ``splits`` that ``ds`` holds rows of, once per
    inference mode for models that have several (:func:`evaluation_modes`), each result's ``label`` the
    given one or the model's name (``keep_ranks``: with each query's rank, for paired comparisons); one
    :class:`EvaluationWarning` after them when the run was trained on other data (:func:`warn_if_trained_elsewhere`,
    on the first split evaluated)."""
    model = load_model(run)
    results = []
    for mode in evaluation_modes(model):
        if mode is not None:
            model.set_inference_mode(mode)
        for split in splits:
            if split in ds.splits and len(ds.splits[split]):
                r = evaluate(model, ds, split, keep_ranks=keep_ranks, check_run=False, label=label or model.name)
                results.append(r)
    if results:
        warn_if_trained_elsewhere([model], ds, results[0]["split"])
    return results


def as_dataset(ds: Dataset | str | os.PathLike) -> Dataset:
    """``ds``, or the dataset folder it names loaded (:func:`~bgmrec.data.dataset.load_dataset`); a TypeError
    for anything else, naming what was given."""
    if isinstance(ds, str | os.PathLike):
        return load_dataset(Path(ds))
    if not isinstance(ds, Dataset):
        raise TypeError(f"ds must be a Dataset (bgmrec.data.load_dataset(folder)) or a dataset folder's path, got "
                        f"{type(ds).__name__}")
    return ds


def below_chance(model, result: dict) -> str | None:
    """What :func:`evaluate` warns of when ``model`` is a score file (a scorer given its scores, ``video_scores``:
    :class:`~bgmrec.eval.scores.PrecomputedScores`) whose full Recall@10 in ``result`` is below half a random
    order's (10 / candidates, over at least 50 queries): scores where lower means better (distances, not
    similarities) rank the positives last. None otherwise (a trained model's figures are what they are)."""
    if not hasattr(model, "video_scores") or result["n_queries"] < 50:
        return None
    chance, got = min(1.0, 10 / result["n_candidates"]), result["full"]["recall@10"]
    if got >= chance / 2:
        return None
    return (f"{model.source}: full Recall@10 {got:.3f} is below a random order's {chance:.3f}: are its scores higher "
            "for better tracks (similarities, not distances)?")


def evaluate(model: Recommender, ds: Dataset | str | os.PathLike, split: str, seed: int = 0,
             keep_ranks: bool = False, check_run: bool = True, label: str | None = None) -> dict:
    """Every figure of the protocol for one model on one split of the dataset ``ds`` (a :class:`Dataset` or its
    folder's path), as the JSON object ``evaluate --json`` writes.

    ``keep_ranks`` adds ``"full_ranks"``: each query's full-catalogue rank (a NumPy array, not JSON),
    what :func:`compare` and :func:`~bgmrec.eval.report.paired_rows` pair across models, and
    ``"sampled_ranks"``, its rank in the sampled protocol (None for a split without negatives). ``check_run``: an
    :class:`EvaluationWarning` when the model's run was trained on other data (:func:`warn_if_trained_elsewhere`;
    :func:`evaluate_run` checks once for all its evaluations). ``label``: the result's ``label`` (default the
    model's own, when it has one), which its warnings name it by (two runs of one model, compared).
    """
    ds = as_dataset(ds)
    if split not in ds.splits:
        raise ValueError(f"unknown split {split!r}; the dataset has {', '.join(ds.splits)}")
    rows = np.asarray(ds.splits[split])
    if len(rows) == 0:
        raise ValueError(f"split {split!r} has no queries")
    full = full_ranks(model, ds, split, seed=seed)
    warn_if_recall_is_trivial(split, full.n_candidates, FULL_KS, top_k=10)  # exposure_tvd@10's lists
    r = full.ranks
    label = label if label is not None else getattr(model, "label", None)
    result: dict = {"model": model.name, **({"label": label} if label is not None else {}),
                    "split": split, "n_queries": int(len(rows)), "n_candidates": full.n_candidates}
    mode = getattr(model, "inference_mode", None)
    if mode:
        result["inference_mode"] = mode
    unknown = int((rows[:, 2] < 0).sum())
    if mode == "personalised" and unknown:  # Dataset.confounder gives them the dataset's prior taste
        result["queries_without_uploader"] = unknown
        warnings.warn(f"{label or model.name} [personalised]: {unknown} of {len(rows)} {split} "
                      "queries have no known uploader: it ranks "
                      "them with the dataset's prior taste, not their uploader's"
                      + ("; these figures are not personalised" if unknown == len(rows) else ""),
                      EvaluationWarning, stacklevel=2)
    result["full"] = {**M.figures(r, FULL_METRICS), "median_rank": M.median_rank(r)}
    result["full_recall_curve"] = {str(k): M.recall_at_k(r, k) for k in CURVE_KS}
    note = below_chance(model, result)
    if note:
        warnings.warn(note, EvaluationWarning, stacklevel=2)
    if split in ds.negatives:
        sr = sampled_ranks(model, ds, split, seed=seed)
        result["n_negatives"] = int(ds.negatives[split].shape[1])
        result["sampled"] = M.figures(sr, SAMPLED_METRICS)
        result["ipw"] = M.figures(sr, SAMPLED_METRICS, ds.ipw_weights(split))
    else:
        sr = result["sampled"] = result["ipw"] = None
    g = ds.n_genres
    top_share = M.genre_shares(full.top, ds.track_genre, g)
    truth_share = M.genre_shares(rows[:, 1], ds.track_genre, g)
    result["bias"] = {
        "exposure_tvd@10": M.total_variation(top_share, truth_share),
        "coverage@10": M.coverage(full.top, full.n_candidates),
        "genre_share@10": dict(zip(ds.genres, top_share.tolist(), strict=True)),
        "truth_genre_share": dict(zip(ds.genres, truth_share.tolist(), strict=True)),
    }
    per_genre = M.per_group_recall_at_k(r, ds.track_genre[rows[:, 1]], g, 10)
    result["per_genre_recall@10"] = {name: (None if np.isnan(v) else float(v))
                                     for name, v in zip(ds.genres, per_genre, strict=True)}
    if keep_ranks:
        result["full_ranks"], result["sampled_ranks"] = r, sr
    if check_run:
        warn_if_trained_elsewhere([model], ds, split)  # once the figures exist: an error says it alone
    return result


COMPARED_PROTOCOLS = {"full": "full-catalogue", "sampled": "sampled 1+K", "ipw": "IPW-weighted sampled 1+K"}


def query_values(model, ds: Dataset, split: str, metric: str, seed: int = 0) -> np.ndarray:
    """Each query's value of a compared ``metric`` (:func:`~bgmrec.eval.metrics.compared_protocol`) whose mean is
    the figure :func:`evaluate` reports: the metric's gain of the query's full or sampled rank; for an IPW metric, that
    gain times n w_i (w: the split's IPW weights, summing to 1), so that the plain mean over the n queries is
    the weighted figure and the paired tests of :mod:`bgmrec.eval.significance` apply to it unchanged."""
    protocol, rank_metric = compared_protocol(metric)
    if protocol == "full":
        return M.query_gains(full_ranks(model, ds, split, seed=seed).ranks, rank_metric)
    if split not in ds.negatives:
        raise ValueError(f"{metric}: split {split!r} has no frozen negatives, so no sampled figure; compare its "
                         f"full-catalogue {rank_metric}")
    gains = M.query_gains(sampled_ranks(model, ds, split, seed=seed), rank_metric)
    return gains * (len(gains) * ds.ipw_weights(split)) if protocol == "ipw" else gains


def compare(baseline: Recommender, candidate: Recommender, ds: Dataset | str | os.PathLike, split: str,
            metric: str = "recall@10", resamples: int = 10_000, level: float = 0.95, seed: int = 0) -> PairedComparison:
    """Paired comparison of two models' ``metric`` on the queries of ``split`` of the dataset ``ds`` (a
    :class:`Dataset` or its folder's path; bootstrap interval and randomisation test over queries:
    :mod:`bgmrec.eval.significance`): full-catalogue by default, the sampled 1+K protocol for
    ``sampled_recall@10`` and its IPW variant for ``ipw_recall@10`` (:func:`query_values`)."""
    ds = as_dataset(ds)
    protocol, rank_metric = compared_protocol(metric)
    name, k = M.parse_metric(rank_metric)
    check_settings(resamples, level)
    if split not in ds.splits or len(ds.splits[split]) == 0:
        raise ValueError(f"split {split!r} is not in the dataset or has no queries; it has {', '.join(ds.splits)}")
    if name == "recall" and protocol == "full":
        warn_if_recall_is_trivial(split, len(ds.candidate_tracks(split)), (k,))
    elif name == "recall" and split in ds.negatives and k > ds.negatives[split].shape[1]:
        warnings.warn(f"{metric}: split {split!r} ranks each positive among {ds.negatives[split].shape[1]} frozen "
                      f"negatives, so its sampled Recall@{k} is 1 for every model; compare at a smaller K",
                      EvaluationWarning, stacklevel=2)
    base, cand = (query_values(m, ds, split, metric, seed) for m in (baseline, candidate))
    compared = paired_comparison(base, cand, metric, resamples, level, seed)
    warn_if_trained_elsewhere([baseline, candidate], ds, split)  # once the figures exist: an error says it alone
    return compared


def warn_if_trained_elsewhere(models: list, ds: Dataset, split: str) -> None:
    """An :class:`EvaluationWarning` for each of ``models`` loaded from a run folder
    (:func:`~bgmrec.models.base.load_model`, which records it) whose ``run.json`` says it was trained on another
    dataset than ``ds``'s folder, or on other features or labels of it (:func:`~bgmrec.runs.trained_on_other_data`,
    with how many of ``split``'s videos it trained on): the warning the commands give, which a Python caller of
    :func:`evaluate` or :func:`compare` did not get (a run of another world scored at chance without a word). A
    dataset held in memory only (no folder), and a scorer not loaded from a run, are not checked."""
    from bgmrec.runs import trained_on_other_data

    folders = [Path(m.source).parent for m in models if isinstance(getattr(m, "source", None), str)]
    if ds.root is None:
        return
    for folder in dict.fromkeys(folders):  # one model compared with itself: said once
        said = trained_on_other_data(folder, Path(ds.root), split=split)
        if said is not None:
            warnings.warn(said, EvaluationWarning, stacklevel=3)
