"""Non-neural baselines: random, popularity and CCA (as in the CMVAE paper's comparison)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from bgmrec.models.base import (
    FeatureSpec,
    ModelConfig,
    MusicCatalog,
    Recommender,
    SplitView,
    VideoQuery,
    check_bounds,
    feature_digests,
    find_by_features,
)


def video_input(q: VideoQuery) -> np.ndarray:
    """Visual features, text features (zeroed where absent) and the text mask, side by side."""
    mask = np.asarray(q.text_mask, np.float32)[:, None]
    return np.hstack([q.visual, q.text * mask, mask]).astype(np.float64)


@dataclass
class RandomConfig(ModelConfig):
    """The settings of ``random``."""

    dim: int = 32  # width of the random projections

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bounds(self, dim="in [1, 4096]")


class RandomRecommender(Recommender):
    """A floor that learns nothing: inner products of two fixed random projections of the features.

    The projections ignore every relation between video and music; they depend only on the content (batch
    equals one-by-one). It is not chance level, even in expectation over the seed: a track's scores vary in
    proportion to the length of its projection, so tracks with long feature vectors reach the top of every
    video's list, and where those are the often-chosen tracks, as in the simulated worlds (whose choices favour
    long content vectors), it scores above chance: full Recall@10 on `small`'s test 0.029, 0.013 and 0.049 in
    the quality benchmark's seeds 0-2, and 0.012 to 0.042 (mean 0.025) over 12 more projection seeds of seed
    0's world, against 10 / 850 = 0.012.
    """

    name = "random"
    config_class = RandomConfig
    reads_genre = False

    def __init__(self, config: RandomConfig, spec: FeatureSpec) -> None:
        super().__init__(config, spec)
        rng = np.random.default_rng(config.seed)
        self.video_proj = rng.normal(size=(spec.video_visual + spec.video_text + 1, config.dim))
        self.music_proj = rng.normal(size=(spec.music, config.dim))

    def fit(self, train: SplitView, val: SplitView | None = None, progress: bool = False) -> RandomRecommender:
        self.check_fit_data(train, val)
        return self

    def _encode_videos(self, q: VideoQuery) -> np.ndarray:
        return video_input(q) @ self.video_proj

    def _encode_music(self, c: MusicCatalog) -> np.ndarray:
        return c.features.astype(np.float64) @ self.music_proj

    def state_arrays(self) -> dict[str, np.ndarray]:
        return {"video_proj": self.video_proj, "music_proj": self.music_proj}

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.video_proj, self.music_proj = arrays["video_proj"], arrays["music_proj"]


class NoTrainingTrackWarning(UserWarning):
    """A catalogue in which popularity recognises none of its training tracks (by their features)."""


class PopularityRecommender(Recommender):
    """PopularRank: every video gets the tracks ordered by their training count (content-blind).

    Tracks are recognised by a hash of their features (:func:`~bgmrec.models.base.feature_digests`, as the
    neural models' track prior), so a catalogue may hold the training tracks in any order beside new ones (count
    0).
    """

    name = "popularity"
    uses_seed = False  # counts: nothing is drawn
    reads_genre = False

    def __init__(self, config: ModelConfig, spec: FeatureSpec) -> None:
        super().__init__(config, spec)
        self.counts = np.zeros(0, np.float64)  # [M] training count of each training track, in digest order
        self.digest = np.zeros(0, np.int64)  # [M] sorted feature hashes of the training tracks

    def fit(self, train: SplitView, val: SplitView | None = None, progress: bool = False) -> PopularityRecommender:
        self.check_fit_data(train, val)
        counts = np.bincount(train.rows[:, 1], minlength=train.dataset.n_tracks).astype(np.float64)
        # tracks of identical features (one song twice) cannot be told apart: they share their summed count
        self.digest, copy_of = np.unique(feature_digests(train.dataset.music), return_inverse=True)
        self.counts = np.bincount(copy_of, weights=counts, minlength=len(self.digest))
        return self

    def _encode_videos(self, q: VideoQuery) -> np.ndarray:
        return np.ones((len(q), 1))

    def _encode_music(self, c: MusicCatalog) -> np.ndarray:
        counts = np.zeros(len(c))
        found, pos = find_by_features(self.digest, c.features)
        counts[found] = self.counts[pos[found]]
        if len(c) and self.counts.any() and not found.any():
            warnings.warn(f"popularity: none of the {len(c)} tracks has the features of a training track "
                          "(extracted again, with other settings or code?): every track counts 0, the ranking "
                          "is a tie", NoTrainingTrackWarning, stacklevel=2)
        return np.log1p(counts)[:, None]

    def state_arrays(self) -> dict[str, np.ndarray]:
        return {"counts": self.counts, "digest": self.digest}

    def check_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        if "counts" in arrays and "digest" not in arrays and "digest" in self.state_shapes():
            raise ValueError("missing keys digest: a run saved before 2026-11-23, which knew its tracks by dataset "
                             "position only; train it again")
        super().check_state_arrays(arrays)
        digest, counts = arrays.get("digest"), arrays.get("counts")  # a subclass may keep others
        if digest is not None and counts is not None and digest.shape != counts.shape:
            raise ValueError(f"digest has shape {list(digest.shape)}, counts {list(counts.shape)}: one hash per track")
        if digest is not None and (digest[1:] <= digest[:-1]).any():  # not np.diff: int64 hashes overflow it
            raise ValueError("digest is not sorted (the track hashes are searched by bisection), or names a track "
                             "twice")

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.counts = arrays["counts"]
        self.digest = arrays["digest"]


SPREAD_FLOOR = 0.1  # CCA scales a feature by at most 1 / (this share of the features' median standard deviation)


def spread_floor(sd: np.ndarray) -> np.ndarray:
    """The standard deviations CCA divides its features by: each feature's, but at least :data:`SPREAD_FLOOR`
    times the median of the features' (1 when none varies). A feature nearly constant in training (one track at
    0.01, the others 0) would otherwise be scaled a hundredfold, and a new track's ordinary value there (1) would
    outweigh every other feature: new music fell from 0.861 to 0.367 on the tiny world with one such column."""
    varying = sd[sd > 0]
    return np.maximum(sd, SPREAD_FLOOR * (float(np.median(varying)) if varying.size else 1.0))


@dataclass
class CCAConfig(ModelConfig):
    """The settings of ``cca``."""

    dim: int = 32  # canonical components kept (fewer when a side has fewer features)
    ridge: float = 1e-2  # added to each covariance's diagonal (relative to its mean variance)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bounds(self, dim=">= 1", ridge=">= 0")


class CCARecommender(Recommender):
    """Canonical correlation analysis (Hotelling, "Relations between two sets of variates", Biometrika 1936)
    between video and music features of training pairs, the CMVAE paper's baseline.

    Solves max corr(a^T x_v, b^T x_m) by whitening both sides (ridge-regularised covariances) and an
    SVD of the whitened cross-covariance; scores are inner products of the canonical variates,
    the video side weighted by the canonical correlations. Each feature is standardised first (by its
    standard deviation over the training pairs), so that the ridge, relative to the mean variance, weighs
    every feature alike: unstandardised, one feature of large variance (an extracted loudness in dB
    squared, next to spectral shape coefficients) set the ridge that drowned the others.
    """

    name = "cca"
    uses_seed = False  # a closed-form solution: nothing is drawn
    config_class = CCAConfig
    reads_genre = False

    def __init__(self, config: CCAConfig, spec: FeatureSpec) -> None:
        super().__init__(config, spec)
        d_v = spec.video_visual + spec.video_text + 1
        self.mean_v, self.mean_m = np.zeros(d_v), np.zeros(spec.music)
        self.proj_v, self.proj_m = np.zeros((d_v, config.dim)), np.zeros((spec.music, config.dim))

    def fit(self, train: SplitView, val: SplitView | None = None, progress: bool = False) -> CCARecommender:
        self.check_fit_data(train, val)
        ds, rows = train.dataset, train.rows
        x = video_input(VideoQuery.from_dataset(ds, rows[:, 0]))
        y = np.asarray(ds.music, np.float64)[rows[:, 1]]
        self.mean_v, self.mean_m = x.mean(0), y.mean(0)
        sd_v, sd_m = (spread_floor(s) for s in (x.std(0), y.std(0)))
        x, y = (x - self.mean_v) / sd_v, (y - self.mean_m) / sd_m
        n = len(x)

        def inv_sqrt(c: np.ndarray) -> np.ndarray:
            c = c + self.config.ridge * np.trace(c) / len(c) * np.eye(len(c))
            w, v = np.linalg.eigh(c)
            return (v / np.sqrt(np.maximum(w, 1e-12))) @ v.T

        wx, wy = inv_sqrt(x.T @ x / n), inv_sqrt(y.T @ y / n)
        u, s, vt = np.linalg.svd(wx @ (x.T @ y / n) @ wy)
        k = min(self.config.dim, len(s))
        self.proj_v = (wx @ u[:, :k] * s[:k]) / sd_v[:, None]  # of the raw features: the scaling folded in
        self.proj_m = (wy @ vt[:k].T) / sd_m[:, None]
        return self

    def _encode_videos(self, q: VideoQuery) -> np.ndarray:
        return (video_input(q) - self.mean_v) @ self.proj_v

    def _encode_music(self, c: MusicCatalog) -> np.ndarray:
        return (c.features - self.mean_m) @ self.proj_m

    def state_arrays(self) -> dict[str, np.ndarray]:
        return {"mean_v": self.mean_v, "mean_m": self.mean_m, "proj_v": self.proj_v, "proj_m": self.proj_m}

    def state_shapes(self) -> dict[str, tuple[int | None, ...]]:
        shapes = super().state_shapes()  # fit keeps min(dim, feature counts) components: any number of columns
        return {**shapes, "proj_v": shapes["proj_v"][:1] + (None,), "proj_m": shapes["proj_m"][:1] + (None,)}

    def check_state_arrays(self, arrays: dict) -> None:
        super().check_state_arrays(arrays)
        if not arrays["proj_v"].shape[1] == arrays["proj_m"].shape[1] <= self.config.dim:
            raise ValueError(f"proj_v and proj_m must have the same number of columns, at most dim = "
                             f"{self.config.dim}; found {arrays['proj_v'].shape[1]} and {arrays['proj_m'].shape[1]}")

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.mean_v, self.mean_m = arrays["mean_v"], arrays["mean_m"]
        self.proj_v, self.proj_m = arrays["proj_v"], arrays["proj_m"]
