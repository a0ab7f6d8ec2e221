"""The simulated world: micro-video uploads choosing background music, with the ground truth kept.

The real TT-150k is not public, so bgmrec's default dataset is a world with the same causal story
(Yi et al., CMVAE, arXiv 2107.07268; Yi & Chen, DecCM, ACM TIST 15(3) 2024) whose truth is known:

* tracks have a genre (imbalanced shares), a content latent near their genre's centroid, a
  long-tailed popularity, and audio features made from latent and genre by a fixed random
  non-linear map plus noise;
* uploaders have a genre-preference distribution pi_u (Dirichlet, skewed to the majority genre)
  and a long-tailed activity; optionally their videos' content leans to their favourite genres;
* videos have a content latent; visual features from it by a fixed random map plus noise; text
  features likewise, but with a per-video noise level, and a share of videos with unrelated text
  (wrong hashtags) or no text at all;
* an upload chooses track m with P(m | v, u) ∝ exp(beta match(v, m) + gamma log pi_u[genre(m)]
  + delta log pop(m)), match(v, m) = <z_v, z_m> / sqrt(d). gamma is the confounding strength,
  delta the popularity bias;
* professional music videos (PGC, the DecCM teacher's data) choose by content alone.

Splits: ``train``, ``val``, ``test`` (existing music), ``test_new_music`` (uploads whose track was
held out of training), ``test_unbiased`` (the ``test`` videos with the positive redrawn with
gamma = delta = 0) and ``pgc``. ``truth/`` keeps the latents, popularity and each split's process
so that :class:`bgmrec.models.oracle.Oracle` can rank by the true logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bgmrec.bounds import check_bounds
from bgmrec.data.dataset import (
    Dataset,
    SplitInfo,
    check_float_matrix,
    check_replaceable,
    load_npy,
    read_json,
    save_dataset,
)
from bgmrec.data.negatives import block_rows, sample_negatives

GENRE_NAMES = ("pop", "hiphop", "electronic", "rock", "classical", "folk", "jazz", "metal", "country", "latin")


@dataclass(frozen=True)
class WorldConfig:
    """Every parameter of the simulated world. Defaults are the ``small`` scale."""

    seed: int = 0  # one seed gives the same world, byte for byte
    n_videos: int = 20_000  # user uploads (UGC)
    n_tracks: int = 1_000  # music catalogue size
    n_uploaders: int = 3_000  # uploaders of the UGC videos
    n_pgc_videos: int = 4_000  # professional music videos (teacher data), fewer than the uploads
    genre_shares: tuple[float, ...] = (0.40, 0.20, 0.14, 0.12, 0.08, 0.06)  # G genres, a majority near 40%
    content_dim: int = 8  # size of the content latent (mood, tempo, energy, scene, ...)
    genre_spread: float = 1.0  # std of genre centroids around 0: larger separates genres more
    track_spread: float = 0.8  # std of a track's latent around its genre centroid: overlap between genres
    video_spread: float = 0.8  # std of a video's latent around the centroid of the genre it evokes
    popularity_sigma: float = 1.0  # log-normal sigma of track popularity (long tail)
    pref_concentration: float = 0.6  # Dirichlet concentration per genre share: small = peaky tastes
    activity_sigma: float = 1.2  # log-normal sigma of uploader activity (long tail)
    content_lean: float = 0.3  # share of uploads whose content is drawn from the uploader's taste
    visual_dim: int = 128  # visual feature dimension
    text_dim: int = 64  # text feature dimension
    music_dim: int = 96  # audio feature dimension
    hidden_dim: int = 64  # width of the fixed random maps from latents to features
    visual_noise: float = 0.5  # std of the noise on visual features (features have unit scale)
    music_noise: float = 0.3  # std of the noise on audio features
    music_genre_weight: float = 1.0  # how strongly a track's genre shows in its audio features
    text_noise: float = 0.4  # median std of the noise on informative text features
    text_noise_spread: float = 0.8  # log-normal sigma of the per-video text noise level
    text_unrelated_share: float = 0.2  # share of videos whose text describes other content
    text_empty_share: float = 0.15  # share of videos with no text (empty caption, no hashtags)
    beta: float = 4.0  # weight of content match in the choice of music
    gamma: float = 1.0  # confounding strength: weight of log pi_u[genre] (0 removes taste)
    delta: float = 0.5  # popularity bias: weight of log pop (0 removes it)
    new_track_share: float = 0.15  # share of tracks held out of training (new music)
    val_share: float = 0.1  # share of existing-music uploads in val
    test_share: float = 0.1  # share of existing-music uploads in test
    n_negatives: int = 100  # frozen negatives per evaluation row (sampled protocol)
    pgc_beta_scale: float = 1.0  # the professional videos' weight of content match, as a multiple of beta: below 1
    #  they choose more loosely than test_unbiased's process does (the teacher's data then differs from the truth
    #  content mode aims at), above 1 more sharply; 1: both choose alike
    taste_estimated: bool = False  # uploaders.npy: each uploader's taste estimated from its training uploads, as
    #  build-dataset does from real data, instead of the true pi_u (the default: the backdoor adjustment's assumption
    #  of an observed confounder); truth/ keeps the true one, which the oracle ranks by

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            for x in value if isinstance(value, tuple) else (value,):
                if isinstance(x, float) and not math.isfinite(x):
                    raise ValueError(f"world parameter {f.name} must be a finite number, got {x}")
        check_bounds(self, "world parameter ",
                     **{name: rule for rule, names in _WORLD_BOUNDS.items() for name in names})
        if not self.genre_shares or min(self.genre_shares) <= 0:
            raise ValueError(f"world parameter genre_shares must be positive shares, got {list(self.genre_shares)}")
        if self.val_share + self.test_share >= 1:
            raise ValueError(f"world parameters val_share + test_share must be below 1 (train needs uploads), "
                             f"got {self.val_share} + {self.test_share}")
        if self.text_unrelated_share + self.text_empty_share > 1:
            raise ValueError("world parameters text_unrelated_share + text_empty_share must be at most 1, got "
                             f"{self.text_unrelated_share} + {self.text_empty_share}")
        if round(self.new_track_share * self.n_tracks) >= self.n_tracks:
            raise ValueError(f"world parameter new_track_share={self.new_track_share} holds out all "
                             f"{self.n_tracks} tracks; at least one must stay for training")

    @property
    def n_genres(self) -> int:
        return len(self.genre_shares)

    def to_json(self) -> dict:
        d = asdict(self)
        d["genre_shares"] = list(self.genre_shares)
        for name, default in _ADDED_LATER.items():  # at their defaults, left out: a default world's manifest is as
            if d[name] == default:  # older bgmrec's, which refuses parameters it does not know
                del d[name]
        return d

    @classmethod
    def from_json(cls, d: dict) -> WorldConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown world parameters: {sorted(unknown)}")
        d = dict(d)
        if "genre_shares" in d:
            d["genre_shares"] = tuple(float(x) for x in d["genre_shares"])
        return cls(**d)


SCALES: dict[str, dict] = {
    "tiny": dict(n_videos=2_000, n_tracks=200, n_uploaders=300, n_pgc_videos=600,
                 visual_dim=32, text_dim=16, music_dim=24, hidden_dim=32),
    "small": {},
    "tt150k": dict(n_videos=150_000, n_tracks=3_000, n_uploaders=20_000, n_pgc_videos=15_000),
}


def world_config(scale: str = "small", **overrides) -> WorldConfig:
    """The preset for ``scale`` ("tiny", "small", "tt150k") with ``overrides`` applied."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {sorted(SCALES)}")
    return replace(WorldConfig(**SCALES[scale]), **overrides)


_WORLD_BOUNDS = {  # rule -> the WorldConfig fields it bounds (checked on construction)
    ">= 1": ("n_videos", "n_tracks", "n_uploaders", "content_dim", "visual_dim", "text_dim", "music_dim",
             "hidden_dim", "n_negatives"),
    ">= 0": ("seed", "n_pgc_videos", "genre_spread", "track_spread", "video_spread", "popularity_sigma",
             "activity_sigma", "visual_noise", "music_noise", "music_genre_weight", "text_noise", "text_noise_spread",
             "pgc_beta_scale"),
    "> 0": ("pref_concentration",),
    "in [0, 1]": ("content_lean", "text_unrelated_share", "text_empty_share"),
    "in [0, 1)": ("new_track_share", "val_share", "test_share"),
}
_ADDED_LATER = {"pgc_beta_scale": 1.0, "taste_estimated": False}  # parameters left out of to_json at these values
#: WorldConfig's numeric fields without a range in _WORLD_BOUNDS, and why (a test holds to it; a bool is a switch)
_WORLD_UNBOUNDED = {
    "beta": "a weight of a choice logit: any finite value is a world (negative: videos avoid matching music)",
    "gamma": "a weight of a choice logit: any finite value is a world (negative: uploaders avoid their taste)",
    "delta": "a weight of a choice logit: any finite value is a world (negative: popular tracks are avoided)",
    "genre_shares": "checked in __post_init__ (positive shares) and simulate (summing to 1)",
}


@dataclass(frozen=True)
class SplitProcess:
    """The selection process that drew a split's positives (what the oracle ranks by)."""

    beta: float
    gamma: float
    delta: float


class WorldSplit(NamedTuple):
    """One split of the simulated world: how it is used and which selection process drew its positives."""

    info: SplitInfo  # its role and candidate tracks (the dataset's manifest)
    process: str  # "biased" (the uploads' choice: beta, gamma, delta), "content" (beta alone) or "professional"
    #  (beta * pgc_beta_scale alone)


# every split of a simulated world, in the order of its manifest's split_info and truth's processes. train, val,
# test and test_new_music divide the uploads, whose music is drawn once, by their one process; test_unbiased
# redraws test's music and pgc is the professional videos' music
WORLD_SPLITS: dict[str, WorldSplit] = {
    "train": WorldSplit(SplitInfo("train", "existing"), "biased"),
    "val": WorldSplit(SplitInfo("val", "existing"), "biased"),
    "test": WorldSplit(SplitInfo("test", "existing"), "biased"),
    "test_new_music": WorldSplit(SplitInfo("test", "new"), "biased"),
    "test_unbiased": WorldSplit(SplitInfo("test", "existing"), "content"),
    "pgc": WorldSplit(SplitInfo("teacher", "existing"), "professional"),
}
EVALUATED_ROLES = ("val", "test")  # splits of these roles get frozen negatives (the sampled protocol), in order
UPLOAD_SPLITS = ("train", "val", "test", "test_new_music")  # the splits that divide the uploads


@dataclass
class WorldTruth:
    """Ground truth of a simulated world (``truth/`` in the dataset folder)."""

    config: WorldConfig
    video_content: np.ndarray  # float32 [N, d] content latents of every video (UGC and PGC)
    track_content: np.ndarray  # float32 [M, d]
    track_popularity: np.ndarray  # float64 [M], sums to 1
    video_text_kind: np.ndarray  # int8 [N]: 0 informative, 1 unrelated, 2 empty
    processes: dict[str, SplitProcess] = field(default_factory=dict)  # split -> its selection process
    uploader_pref: np.ndarray | None = None  # float32 [U, G] the uploaders' true tastes pi_u (None: a world saved
    #  before truth/ kept them, whose uploaders.npy holds them)

    def logits(self, split: str, videos: np.ndarray, uploader_pref: np.ndarray, genre: np.ndarray,
               tracks: np.ndarray | None = None) -> np.ndarray:
        """True selection logits [n, M'] of ``split``'s process for videos against tracks."""
        p = self.processes[split]
        tracks = np.arange(len(self.track_content)) if tracks is None else np.asarray(tracks)
        zv = self.video_content[np.asarray(videos)].astype(np.float64)
        zm = self.track_content[tracks].astype(np.float64)
        out = zv @ zm.T
        out *= p.beta  # in place, in the order beta * match / sqrt(d) always took (the same bits, no copies)
        out /= math.sqrt(zv.shape[1])
        if p.gamma:  # the log taken per genre, then spread to the tracks (a log per track took most of the time)
            out += (p.gamma * np.log(np.maximum(uploader_pref, 1e-12)))[:, genre[tracks]]
        if p.delta:
            out += p.delta * np.log(self.track_popularity[tracks])[None, :]
        return out


def _random_map(rng: np.random.Generator, d_in: int, d_hidden: int, d_out: int):
    """A fixed random two-layer tanh network, output scaled to unit variance per feature."""
    w1 = rng.normal(0, 1 / math.sqrt(d_in), (d_in, d_hidden))
    b1 = rng.normal(0, 0.5, d_hidden)
    w2 = rng.normal(0, 1 / math.sqrt(d_hidden), (d_hidden, d_out))

    def f(x: np.ndarray) -> np.ndarray:
        h = np.tanh(x @ w1 + b1) @ w2
        return h / (h.std(axis=0, keepdims=True) + 1e-8)

    return f


def gumbel_max_choice(rng: np.random.Generator, logits_fn, n: int, chunk: int = 4096) -> np.ndarray:
    """One index per row drawn from softmax(logits) by Gumbel-max, ``logits_fn(rows)`` computed block by block
    (a new float64 array each call: the noise is added to it in place).

    A block holds at most ``chunk`` rows and :data:`~bgmrec.data.negatives.MAX_BLOCK` logits (the first is one
    row, which tells the width), so memory does not grow with the catalogue: a block is two such arrays, its
    logits and its noise. The noise does not depend on the blocks (``rng`` draws it row after row whatever
    their size); the logits' last bits can (BLAS computes one row and many by different routines), which would
    change a choice only where its two best noisy logits are within a rounding error of each other (about 1e-12
    of the rows; the worlds checked were byte-identical).
    """
    out = np.empty(n, np.int64)
    s, size = 0, 1
    while s < n:
        rows = np.arange(s, min(n, s + size))
        lg = logits_fn(rows)
        noise = rng.random(lg.shape)
        np.log(noise, out=noise)
        np.negative(noise, out=noise)
        lg -= np.log(noise, out=noise)  # logits plus Gumbel noise, -log(-log(u)), in place: two arrays, not five
        out[rows] = np.argmax(lg, axis=1)
        s, size = int(rows[-1]) + 1, block_rows(chunk, lg.shape[1])
    return out


def simulate(config: WorldConfig, progress: Callable[[str], None] | None = None) -> tuple[Dataset, WorldTruth]:
    """Draw a world from ``config``. Pure: same config, same arrays. ``progress(step)``, when given, is called as
    each step starts ("1,000 tracks", ..., "frozen negatives"), for a command to show (an app-sized world takes
    minutes); it draws nothing."""
    step = progress or (lambda what: None)
    c = config
    shares = np.asarray(c.genre_shares, np.float64)
    if not np.isclose(shares.sum(), 1.0) or (shares <= 0).any():
        raise ValueError("genre_shares must be positive and sum to 1")
    if c.n_genres > len(GENRE_NAMES):
        raise ValueError(f"at most {len(GENRE_NAMES)} genres")
    root = np.random.SeedSequence(c.seed)
    r_struct, r_track, r_upl, r_video, r_feat, r_choice, r_split, r_neg = (
        np.random.default_rng(s) for s in root.spawn(8))

    step(f"{c.n_tracks:,} tracks")
    centroids = r_struct.normal(0, c.genre_spread, (c.n_genres, c.content_dim))  # each genre's content centroid
    tracks = _draw_tracks(c, shares, centroids, r_track)
    step(f"{c.n_uploaders:,} uploaders")
    uploaders = _draw_uploaders(c, shares, r_upl)
    step(f"{c.n_videos + c.n_pgc_videos:,} videos")
    video_content = _draw_video_content(c, shares, centroids, uploaders, r_video)
    step("features")
    features = _draw_features(c, shares, centroids, tracks, video_content, r_struct, r_feat)
    truth = WorldTruth(c, video_content.astype(np.float32), tracks.content.astype(np.float32), tracks.popularity,
                       features.text_kind, _split_processes(c), uploaders.pref.astype(np.float32))
    splits = _draw_splits(c, truth, tracks, uploaders, r_choice, r_split, step)
    taste = _given_taste(c, uploaders, tracks, splits)
    step("frozen negatives")
    negatives = _frozen_negatives(c, splits, tracks, r_neg)
    return _world_dataset(c, tracks, uploaders.of_video, taste, features, splits, negatives), truth


class _Tracks(NamedTuple):
    """The catalogue as drawn (float64 where not said)."""

    genre: np.ndarray  # int [M]
    content: np.ndarray  # [M, d] content latents
    popularity: np.ndarray  # [M], sums to 1
    new: np.ndarray  # bool [M]: held out of training (new music)

    @property
    def existing(self) -> np.ndarray:
        """The tracks kept for training (existing music), in order."""
        return np.flatnonzero(~self.new)


class _Uploaders(NamedTuple):
    """The uploaders' true tastes and who uploaded each video."""

    pref: np.ndarray  # float64 [U, G]: pi_u
    of_video: np.ndarray  # [N]: each video's uploader, -1 for the professional (PGC) videos


class _Features(NamedTuple):
    """The observed features (float64) and the kind of each video's text."""

    visual: np.ndarray  # [N, visual_dim]
    text: np.ndarray  # [N, text_dim], 0 where a video has no text
    text_kind: np.ndarray  # int8 [N]: 0 informative, 1 unrelated, 2 empty
    music: np.ndarray  # [M, music_dim]


def _draw_tracks(c: WorldConfig, shares: np.ndarray, centroids: np.ndarray, rng: np.random.Generator) -> _Tracks:
    """Each track's genre, content latent around its genre's centroid, long-tailed popularity and whether it is
    held out of training."""
    genre = rng.choice(c.n_genres, size=c.n_tracks, p=shares)
    content = centroids[genre] + rng.normal(0, c.track_spread, (c.n_tracks, c.content_dim))
    popularity = np.exp(rng.normal(0, c.popularity_sigma, c.n_tracks))
    popularity /= popularity.sum()
    new = np.zeros(c.n_tracks, bool)
    new[rng.permutation(c.n_tracks)[: int(round(c.new_track_share * c.n_tracks))]] = True
    return _Tracks(genre, content, popularity, new)


def _draw_uploaders(c: WorldConfig, shares: np.ndarray, rng: np.random.Generator) -> _Uploaders:
    """The uploaders' tastes (Dirichlet, skewed to the majority genre) and each upload's uploader, drawn by their
    long-tailed activity."""
    pref = rng.dirichlet(c.pref_concentration * c.n_genres * shares, size=c.n_uploaders)
    pref = np.maximum(pref, 1e-6)
    pref /= pref.sum(axis=1, keepdims=True)
    activity = np.exp(rng.normal(0, c.activity_sigma, c.n_uploaders))
    of_video = np.concatenate([rng.choice(c.n_uploaders, size=c.n_videos, p=activity / activity.sum()),
                               np.full(c.n_pgc_videos, -1)])
    return _Uploaders(pref, of_video)


def _draw_video_content(c: WorldConfig, shares: np.ndarray, centroids: np.ndarray, uploaders: _Uploaders,
                        rng: np.random.Generator) -> np.ndarray:
    """Every video's content latent (float64 [N, d], the uploads then the PGC videos) around the centroid of the
    genre it evokes, which leans to its uploader's taste for a share ``content_lean`` of the uploads."""
    n_all = c.n_videos + c.n_pgc_videos
    lean = rng.random(n_all) < c.content_lean
    evoked = rng.choice(c.n_genres, size=n_all, p=shares)
    ugc_lean = np.flatnonzero(lean[: c.n_videos])
    cum = np.cumsum(uploaders.pref[uploaders.of_video[ugc_lean]], axis=1)
    evoked[ugc_lean] = np.minimum((cum < rng.random((len(ugc_lean), 1))).sum(axis=1), c.n_genres - 1)
    return centroids[evoked] + rng.normal(0, c.video_spread, (n_all, c.content_dim))


def _draw_features(c: WorldConfig, shares: np.ndarray, centroids: np.ndarray, tracks: _Tracks,
                   video_content: np.ndarray, map_rng: np.random.Generator, rng: np.random.Generator) -> _Features:
    """The features made from the latents by fixed random maps (drawn on ``map_rng``) plus noise (on ``rng``); a
    video's text describes other content, drawn anew, or is empty by the text shares."""
    n_all, d, g_count = len(video_content), c.content_dim, c.n_genres
    visual_map = _random_map(map_rng, d, c.hidden_dim, c.visual_dim)
    text_map = _random_map(map_rng, d, c.hidden_dim, c.text_dim)
    music_map = _random_map(map_rng, d + g_count, c.hidden_dim, c.music_dim)
    visual = visual_map(video_content) + rng.normal(0, c.visual_noise, (n_all, c.visual_dim))
    kind = rng.choice(3, size=n_all, p=[1 - c.text_unrelated_share - c.text_empty_share,
                                        c.text_unrelated_share, c.text_empty_share]).astype(np.int8)
    text_source = video_content.copy()
    unrelated = kind == 1
    text_source[unrelated] = centroids[rng.choice(g_count, unrelated.sum(), p=shares)] + rng.normal(
        0, c.video_spread, (unrelated.sum(), d))
    text_sd = c.text_noise * np.exp(rng.normal(0, c.text_noise_spread, (n_all, 1)))
    text = text_map(text_source) + text_sd * rng.normal(0, 1, (n_all, c.text_dim))
    text[kind == 2] = 0.0
    genre_onehot = np.eye(g_count)[tracks.genre] * c.music_genre_weight
    music = music_map(np.hstack([tracks.content, genre_onehot])) + rng.normal(
        0, c.music_noise, (c.n_tracks, c.music_dim))
    return _Features(visual, text, kind, music)


def _split_processes(c: WorldConfig) -> dict[str, SplitProcess]:
    """Each split's selection process, in :data:`WORLD_SPLITS`' order (the splits of one process share it)."""
    by_process = {"biased": SplitProcess(c.beta, c.gamma, c.delta), "content": SplitProcess(c.beta, 0.0, 0.0),
                  "professional": SplitProcess(c.beta * c.pgc_beta_scale, 0.0, 0.0)}
    return {name: by_process[split.process] for name, split in WORLD_SPLITS.items()}


def _draw_splits(c: WorldConfig, truth: WorldTruth, tracks: _Tracks, uploaders: _Uploaders,
                 choice_rng: np.random.Generator, split_rng: np.random.Generator,
                 step: Callable[[str], None]) -> dict[str, np.ndarray]:
    """Each split's rows (video, track, uploader): the music of the uploads, of the PGC videos and, once the uploads
    are divided, of test_unbiased's videos, each drawn by its split's process on ``choice_rng``."""
    pref_of = uploaders.pref[np.maximum(uploaders.of_video, 0)]

    def choose(split: str, vids: np.ndarray, among: np.ndarray | None = None) -> np.ndarray:  # None: every track
        picked = gumbel_max_choice(choice_rng, lambda rows: truth.logits(
            split, vids[rows], pref_of[vids[rows]], tracks.genre, among), len(vids))
        return picked if among is None else among[picked]

    def rows(vids: np.ndarray, music: np.ndarray) -> np.ndarray:
        return np.stack([vids, music, uploaders.of_video[vids]], axis=1).astype(np.int64)

    ugc, pgc = np.arange(c.n_videos), np.arange(c.n_videos, c.n_videos + c.n_pgc_videos)
    step(f"the music of {len(ugc):,} uploads")
    ugc_choice = choose(UPLOAD_SPLITS[0], ugc)
    step(f"the music of {len(pgc):,} professional videos")
    pgc_choice = choose("pgc", pgc, tracks.existing)
    parts = _divide_uploads(c, tracks.new[ugc_choice], split_rng)
    step(f"the music of test_unbiased's {len(parts['test']):,} videos")
    unbiased_choice = choose("test_unbiased", parts["test"], tracks.existing)
    splits = {name: rows(v, ugc_choice[v]) for name, v in parts.items()}
    splits["test_unbiased"] = rows(parts["test"], unbiased_choice)
    splits["pgc"] = rows(pgc, pgc_choice)
    return splits


def _divide_uploads(c: WorldConfig, chose_new: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The uploads of each upload split, sorted: those that chose new music are test_new_music, the others are
    shuffled into val, test and train by ``val_share`` and ``test_share``."""
    old_rows = rng.permutation(np.flatnonzero(~chose_new))
    n_val, n_test = int(c.val_share * len(old_rows)), int(c.test_share * len(old_rows))
    return {"val": np.sort(old_rows[:n_val]), "test": np.sort(old_rows[n_val:n_val + n_test]),
            "train": np.sort(old_rows[n_val + n_test:]), "test_new_music": np.flatnonzero(chose_new)}


def _given_taste(c: WorldConfig, uploaders: _Uploaders, tracks: _Tracks, splits: dict[str, np.ndarray]) -> np.ndarray:
    """Each uploader's taste as a model is given it: the true pi_u, or with ``taste_estimated`` what its training
    uploads show."""
    if not c.taste_estimated:
        return uploaders.pref
    from bgmrec.data.build import uploader_preferences

    train = splits["train"]
    return uploader_preferences(train[:, 2], tracks.genre[train[:, 1]], c.n_uploaders, c.n_genres)


def _frozen_negatives(c: WorldConfig, splits: dict[str, np.ndarray], tracks: _Tracks,
                      rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The frozen negatives of each evaluated split that has rows, drawn in :data:`WORLD_SPLITS`' order among its
    candidate tracks."""
    negatives = {}
    for s, split in WORLD_SPLITS.items():
        if split.info.role not in EVALUATED_ROLES or len(splits[s]) == 0:
            continue
        cand = np.flatnonzero(tracks.new) if split.info.candidates == "new" else tracks.existing
        negatives[s] = sample_negatives(splits[s][:, 1], cand, min(c.n_negatives, len(cand) - 1), rng)
    return negatives


def _world_dataset(c: WorldConfig, tracks: _Tracks, video_uploader: np.ndarray, uploader_pref: np.ndarray,
                   features: _Features, splits: dict[str, np.ndarray], negatives: dict[str, np.ndarray]) -> Dataset:
    """The world as a :class:`Dataset` with ``uploader_pref`` as the uploaders' tastes, its ids and names made up."""
    genres = list(GENRE_NAMES[:c.n_genres])
    return Dataset(
        genres=genres,
        video_ids=[f"v{i:06d}" for i in range(c.n_videos + c.n_pgc_videos)],
        video_uploader=video_uploader.astype(np.int64),
        video_source=["ugc"] * c.n_videos + ["pgc"] * c.n_pgc_videos,
        track_ids=[f"t{j:05d}" for j in range(c.n_tracks)],
        track_genre=tracks.genre.astype(np.int64),
        track_title=[f"{genres[g]} track {j}" for j, g in enumerate(tracks.genre)],
        track_artist=[f"artist {j % max(1, c.n_tracks // 4)}" for j in range(c.n_tracks)],
        track_new=tracks.new,
        uploader_pref=uploader_pref.astype(np.float32),
        video_visual=features.visual.astype(np.float32),
        video_text=features.text.astype(np.float32),
        video_text_mask=features.text_kind != 2,
        music=features.music.astype(np.float32),
        splits=splits,
        split_info={name: split.info for name, split in WORLD_SPLITS.items()},
        negatives=negatives,
        provenance={"simulator": "bgmrec.data.simulate", "world": c.to_json()},
    )


def save_world(ds: Dataset, truth: WorldTruth, out: Path) -> Path:
    """Write a simulated world: the dataset plus ``truth/`` (atomic)."""
    arrays = {
        "truth/video_content.npy": truth.video_content,
        "truth/track_content.npy": truth.track_content,
        "truth/track_popularity.npy": truth.track_popularity,
        "truth/video_text_kind.npy": truth.video_text_kind,
    }
    if truth.uploader_pref is not None:
        arrays["truth/uploader_pref.npy"] = truth.uploader_pref
    meta = {"truth/world.json": {"config": truth.config.to_json(),
                                 "processes": {s: asdict(p) for s, p in truth.processes.items()}}}
    return save_dataset(ds, out, arrays, meta)


def simulate_and_save(config: WorldConfig, out: Path, progress: Callable[[str], None] | None = None,
                      ) -> tuple[Dataset, WorldTruth]:
    """:func:`simulate` then :func:`save_world` into ``out``; ``progress`` as :func:`simulate` takes it, told
    "writing OUT" last. An ``out`` that may not be replaced is refused first, not after the simulation."""
    check_replaceable(out)
    ds, truth = simulate(config, progress)
    if progress is not None:
        progress(f"writing {out}")
    save_world(ds, truth, out)
    return ds, truth


def load_truth(root: Path) -> WorldTruth:
    """Read ``truth/`` of a simulated dataset folder."""
    root = Path(root)
    meta = read_json(root / "truth" / "world.json", f"{root}/truth/world.json")

    def values(name: str, ndim: int) -> np.ndarray:  # finite floats, named (a NaN ended as "training diverged")
        arr = load_npy(root / "truth" / name, mmap=False)
        check_float_matrix(arr, (None,) * ndim, f"{root}/truth", name)
        return arr

    return WorldTruth(
        config=WorldConfig.from_json(meta["config"]),
        video_content=values("video_content.npy", 2),
        track_content=values("track_content.npy", 2),
        track_popularity=values("track_popularity.npy", 1),
        video_text_kind=load_npy(root / "truth/video_text_kind.npy", mmap=False),
        processes={s: SplitProcess(**p) for s, p in meta["processes"].items()},
        uploader_pref=values("uploader_pref.npy", 2) if (root / "truth/uploader_pref.npy").is_file() else None,
    )
