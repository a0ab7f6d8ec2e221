"""The one recommender contract every model implements (baselines included).

Modelled on Cornac's ``Recommender`` and implicit's ``RecommenderBase``: ``fit`` on a training
split with a validation split for model selection, encoders for each side, scores as the inner
product of the two encodings (so every model can be served by the same exact or FAISS index),
``recommend`` with exclusions, and ``save``/``load`` to a folder of ``config.json`` plus
``weights.safetensors`` -- never a pickle.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import numbers
import os
import types
import typing
import warnings
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

import bgmrec
from bgmrec.bounds import check_bounds as check_bounds  # models and plugins import it from here
from bgmrec.data.dataset import (
    Dataset,
    DatasetError,
    brief_repr,
    check_is_file,
    parse_json_file,
    write_files_together,
    write_json_atomic,
)
from bgmrec.models.packages import model_package

# ---- what a model eats ------------------------------------------------------------------------------

def integer_ids(value: Any, what: str, low: int = 0, high: int | None = None) -> np.ndarray:
    """``value`` as an int64 array of ids in [``low``, ``high``) (None: no upper bound), else a ValueError naming
    ``what``: floats are refused (1.7 would be cut to 1), booleans too (a mask's False and True would be read as ids
    0 and 1), and so is an id out of range (numpy's error would name neither the argument nor the range, or a
    negative id would silently count from the end). An empty list is accepted."""
    arr = np.asarray(value)
    if arr.size and arr.dtype.kind not in "iu":
        got = ("booleans (a mask? give the indices of its True entries: np.flatnonzero(mask))" if arr.dtype.kind == "b"
               else f"{arr.dtype} values")
        raise ValueError(f"{what} must be integer ids (int64), got {got}")
    arr = arr.astype(np.int64)
    bad = np.flatnonzero((arr < low) | (arr >= (high if high is not None else np.iinfo(np.int64).max)))
    if bad.size:
        bounds = f"in [{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"{what} must be ids {bounds}, got {int(arr.ravel()[bad[0]])} ({bad.size} of {arr.size} out "
                         "of range)")
    return arr


@dataclass
class VideoQuery:
    """Content of a batch of videos, as feature arrays (models receive arrays, never paths).

    ``text`` is required: for videos without a caption give zeros of the text features' width with ``text_mask``
    False (``np.zeros((n, spec.video_text), np.float32)``; ``ClipFeatures`` of the clip recommender take None)."""

    visual: np.ndarray  # float32 [n, Dv] frame features
    text: np.ndarray  # float32 [n, Dt] caption + hashtag features (ignored where text_mask is False)
    text_mask: np.ndarray  # bool [n]; False: the video has no usable text
    confounder: np.ndarray | None = None  # float32 [n, G] the uploader's genre preferences, if known
    index: np.ndarray | None = None  # int64 [n] dataset video indices (given only to a model that reads_dataset_rows)
    split: str | None = None  # the split the queries come from (as index)
    genres: tuple[str, ...] | None = None  # the names of confounder's columns (None: the model's genres, in order)

    __repr__ = brief_repr  # arrays by shape, long lists by length: not every value

    def __post_init__(self) -> None:
        """Arrays as the fields say (float32, bool, int64; lists and float64 are converted), else a ValueError
        naming the field: a 2-d ``visual`` and ``text``, one row per video in every field, ``text_mask`` of
        booleans (or 0 and 1), ``index`` of non-negative integers."""
        if self.text is None:
            raise ValueError("VideoQuery.text is None: for videos without a caption give zeros of the text features' "
                             "width, np.zeros((n, spec.video_text), np.float32), with text_mask False")
        mask = np.asarray(self.text_mask)
        if mask.dtype != bool and mask.size and not np.isin(mask, (0, 1)).all():
            raise ValueError(f"VideoQuery.text_mask must be booleans (True, False, or 1 and 0), got "
                             f"{np.setdiff1d(mask, (0, 1))[:3].tolist()}")
        if self.index is not None:
            self.index = integer_ids(self.index, "VideoQuery.index")
        for name, dtype, ndim in (("visual", np.float32, 2), ("text", np.float32, 2), ("text_mask", bool, 1),
                                  ("confounder", np.float32, 2), ("index", np.int64, 1)):
            value = getattr(self, name)
            if value is None and name in ("confounder", "index"):
                continue
            try:
                value = np.asarray(value, dtype)
            except (TypeError, ValueError) as e:
                raise ValueError(f"VideoQuery.{name} must be a {dtype.__name__} array ({e})") from None
            if value.ndim != ndim:
                raise ValueError(f"VideoQuery.{name} must have {ndim} dimension(s) ([n{', D' if ndim == 2 else ''}]), "
                                 f"got shape {list(value.shape)}")
            if len(value) != len(self.visual):
                raise ValueError(f"VideoQuery.{name} has {len(value)} rows, visual has {len(self.visual)}")
            setattr(self, name, value)

    def __len__(self) -> int:
        return len(self.visual)

    def subset(self, rows: np.ndarray | slice) -> VideoQuery:
        """The queries ``rows`` (indices, a boolean mask or a slice), every per-query field cut alike."""

        def pick(a):
            return None if a is None else a[rows]

        return VideoQuery(self.visual[rows], self.text[rows], self.text_mask[rows], pick(self.confounder),
                          pick(self.index), self.split, self.genres)

    @classmethod
    def from_dataset(cls, ds: Dataset, videos: np.ndarray, uploaders: np.ndarray | None = None,
                     split: str | None = None) -> VideoQuery:
        """The queries of ``ds``'s videos ``videos`` (integer indices of its videos; a boolean mask is refused:
        give ``np.flatnonzero(mask)``), with their uploaders' taste when ``uploaders`` (integer indices of its
        uploaders, -1: unknown; one per video) is given, as ranked for ``split`` (the oracle needs it). A
        ValueError names the argument of a float, boolean or out-of-range index."""
        videos = integer_ids(videos, "videos", 0, ds.n_videos)
        if uploaders is not None:
            uploaders = integer_ids(uploaders, "uploaders", -1, ds.n_uploaders)
            if uploaders.shape != videos.shape:
                raise ValueError(f"uploaders must give one uploader per video: {len(uploaders)} for {len(videos)} "
                                 "videos")
        return cls(
            visual=np.asarray(ds.video_visual[videos], np.float32),
            text=np.asarray(ds.video_text[videos], np.float32),
            text_mask=np.asarray(ds.video_text_mask[videos], bool),
            confounder=None if uploaders is None else ds.confounder(uploaders),
            index=videos,
            split=split,
            genres=None if uploaders is None else tuple(ds.genres),
        )


@dataclass
class MusicCatalog:
    """A music catalogue as arrays: features and genre of every track."""

    features: np.ndarray  # float32 [M, Dm]
    genre: np.ndarray  # int64 [M]
    index: np.ndarray | None = None  # int64 [M] dataset track indices (given only to a model that reads_dataset_rows)
    genres: tuple[str, ...] | None = None  # the names of the genre ids (None: ids already in the model's order)

    __repr__ = brief_repr  # arrays by shape, long lists by length: not every value

    def __post_init__(self) -> None:
        """Arrays as the fields say, else a ValueError naming the field: ``features`` a 2-d float32 array (lists
        and float64 converted), ``genre`` and ``index`` one integer id per track, ``genre`` in
        [0, len(genres)) when ``genres`` names them (else the model's genres bound it when it is given data)."""
        try:
            self.features = np.asarray(self.features, np.float32)
        except (TypeError, ValueError) as e:
            raise ValueError(f"MusicCatalog.features must be a float32 array ({e})") from None
        if self.features.ndim != 2:
            raise ValueError(f"MusicCatalog.features must have 2 dimensions ([M, D]), got shape "
                             f"{list(self.features.shape)}")
        self.genre = integer_ids(self.genre, "MusicCatalog.genre", 0, None if self.genres is None else len(self.genres))
        if self.index is not None:
            self.index = integer_ids(self.index, "MusicCatalog.index")
        for name in ("genre", "index"):
            value = getattr(self, name)
            if value is not None and value.shape != (len(self.features),):
                raise ValueError(f"MusicCatalog.{name} must have one id per track, shape [{len(self.features)}], got "
                                 f"{list(value.shape)}")

    def __len__(self) -> int:
        return len(self.features)

    @classmethod
    def from_dataset(cls, ds: Dataset) -> MusicCatalog:
        """Every track of ``ds``, in dataset order, with its index and the dataset's genre names."""
        return cls(np.asarray(ds.music, np.float32), np.asarray(ds.track_genre, np.int64),
                   np.arange(ds.n_tracks), tuple(ds.genres))


@dataclass(frozen=True)
class FeatureSpec:
    """The features a model was trained on; checked whenever it is given data."""

    video_visual: int  # visual feature dimension
    video_text: int  # text feature dimension
    music: int  # music feature dimension
    genres: tuple[str, ...]  # genre names, index = genre id

    def __post_init__(self) -> None:
        for name in ("video_visual", "video_text", "music"):
            v = getattr(self, name)
            if not isinstance(v, int | np.integer) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be a non-negative integer (a feature dimension), got {v!r}")
        if not isinstance(self.genres, tuple) or not all(isinstance(g, str) for g in self.genres):
            raise ValueError(f"genres must be a list of genre names (strings), got {self.genres!r}")

    @classmethod
    def of(cls, ds: Dataset) -> FeatureSpec:
        """The feature sizes and genre names of the dataset ``ds`` (what a model trained on it is given)."""
        d = ds.dims()
        return cls(d["video_visual"], d["video_text"], d["music"], tuple(ds.genres))

    @classmethod
    def from_dict(cls, d: dict) -> FeatureSpec:
        """The spec saved in a ``config.json`` (``asdict`` of one); errors name the field as ``spec.FIELD``."""
        missing = [f.name for f in fields(cls) if f.name not in d]
        if missing:
            raise ValueError(f"spec: missing field(s) {', '.join(missing)}")
        genres = d["genres"]
        try:
            return cls(d["video_visual"], d["video_text"], d["music"],
                       tuple(genres) if isinstance(genres, list) else genres)
        except ValueError as e:
            raise ValueError(f"spec.{e}") from None

    def check_videos(self, q: VideoQuery, source: str | None = None) -> None:
        """Refuse videos whose features do not have this spec's widths (``source``: where the spec was read)."""
        for name, arr, dim in (("visual", q.visual, self.video_visual), ("text", q.text, self.video_text)):
            if arr.ndim != 2 or arr.shape[1] != dim:
                raise DatasetError(f"video {name} features: expected shape [n, {dim}], found {list(arr.shape)}"
                                   + _recorded_in(source))
            if not np.isfinite(arr).all():
                raise DatasetError(f"video {name} features: contain NaN or inf")
        if q.confounder is not None:
            check_confounder(q.confounder, len(self.genres), source)

    def videos_in_model_genres(self, q: VideoQuery) -> VideoQuery:
        """``q`` with its uploaders' taste over this spec's genres, its columns matched by name
        (:func:`taste_in_model_genres`), when ``q.genres`` names them otherwise; a
        :class:`GenreMappingWarning` says what had no counterpart."""
        if q.confounder is None or q.genres is None or tuple(q.genres) == self.genres:
            return q
        check_confounder(q.confounder, len(q.genres))  # as given, before any mapping
        taste, note = taste_in_model_genres(q.confounder, q.genres, self.genres)
        if note:
            warnings.warn(note, GenreMappingWarning, stacklevel=2)
        return dataclasses.replace(q, confounder=taste, genres=self.genres)

    def music_in_model_genres(self, c: MusicCatalog, warn: bool = True) -> MusicCatalog:
        """``c`` with its genre ids in this spec's genres, matched by name (:func:`genre_positions`), when
        ``c.genres`` names them otherwise (a dataset built with a genre more or less than the training data's);
        with ``warn``, a :class:`GenreMappingWarning` names the tracks' genres the model does not know."""
        if c.genres is None or tuple(c.genres) == self.genres:
            return c
        positions, _ = genre_positions(c.genres, self.genres)
        note = unknown_genres_warning([c.genres[g] for g in c.genre], self.genres) if warn else None
        if note:
            warnings.warn(note, GenreMappingWarning, stacklevel=2)
        return dataclasses.replace(c, genre=positions[c.genre], genres=self.genres)

    def check_music(self, c: MusicCatalog, source: str | None = None) -> None:
        """Refuse a catalogue of other feature width, or with genre ids beyond this spec's genres (a catalogue
        whose ``genres`` name them: :meth:`music_in_model_genres` first)."""
        if c.features.ndim != 2 or c.features.shape[1] != self.music:
            raise DatasetError(f"music features: expected shape [M, {self.music}], found {list(c.features.shape)}"
                               + _recorded_in(source))
        if not np.isfinite(c.features).all():
            raise DatasetError("music features: contain NaN or inf")
        beyond = np.flatnonzero(c.genre >= len(self.genres))
        if beyond.size:
            raise DatasetError(f"MusicCatalog.genre: ids must be in [0, {len(self.genres)}) (the model's genres: "
                               f"{', '.join(self.genres)}), got {int(c.genre[beyond[0]])}; give the catalogue's genre "
                               "names as MusicCatalog.genres to have them mapped by name" + _recorded_in(source))


def check_confounder(confounder: np.ndarray, genres: int, source: str | None = None) -> None:
    """Refuse uploaders' genre preferences [n, ``genres``] that are not distributions (rows finite,
    non-negative, summing to 1 within 1e-3, as a dataset's ``uploaders.npy``): a taste path reads log c,
    so a scaled, zero or negative row would shift the scores of whole genres, or make them NaN."""
    c = np.asarray(confounder)
    if c.ndim != 2 or c.shape[1] != genres:
        raise DatasetError(f"confounder: expected shape [n, {genres}], found {list(c.shape)}" + _recorded_in(source))
    with np.errstate(invalid="ignore", over="ignore"):
        sums = c.astype(np.float64).sum(axis=1)
        bad = np.flatnonzero(~np.isfinite(c).all(axis=1) | (c < 0).any(axis=1) | ~(np.abs(sums - 1.0) <= 1e-3))
    if bad.size:
        i = int(bad[0])
        raise DatasetError(f"confounder: row {i} is not an uploader's genre preferences (finite, non-negative, "
                           f"summing to 1): {np.array2string(c[i], precision=4, threshold=12)}, summing to "
                           f"{sums[i]:.6g}; scale each row to sum to 1 (bgmrec.features.recommend.normalised_taste "
                           "does, for non-negative weights)")


class GenreMappingWarning(UserWarning):
    """Data whose genres are not the model's (another dataset's list, or a catalogue's names), mapped by name, has
    genres the model was not trained on (tracks: :func:`genre_positions`; tastes: :func:`taste_in_model_genres`)."""


MIN_TASTE = 1e-6  # the least share of a genre in an uploader's taste mapped to a model's genres (log c stays finite)


def genre_positions(names, model_genres) -> tuple[np.ndarray, list[str]]:
    """The position of each of ``names`` among ``model_genres`` (a blank name: "unknown"), and the names the
    model does not know, which go to its "unknown" genre if it has one, else to its genre 0."""
    model_genres = list(model_genres)
    fallback = model_genres.index("unknown") if "unknown" in model_genres else 0
    positions, unknown = [], []
    for name in names:
        name = name.strip() or "unknown"
        if name in model_genres:
            positions.append(model_genres.index(name))
        else:
            positions.append(fallback)
            unknown.append(name)
    return np.asarray(positions, np.int64), unknown


def _named_genres(unknown: list[str], model_genres: list[str]) -> str:
    """The distinct names of ``unknown``, quoted, each that differs from one of the model's only in case said so."""
    by_case = {g.lower(): g for g in model_genres}
    return ", ".join(repr(g) + (f" (the model's {by_case[g.lower()]!r} differs only in case)"
                                if g.lower() in by_case else "") for g in dict.fromkeys(unknown))


def unknown_genres_warning(track_genres, model_genres, track_ids=None) -> str | None:
    """A warning line when some of the tracks, whose genre names are ``track_genres`` (one per track; blank:
    "unknown"), have a genre the model was not trained on, which :func:`genre_positions` treats as its "unknown"
    genre, else its first; ``track_ids`` name an example; None when every genre is known."""
    model_genres = list(model_genres)
    known = set(model_genres)
    names = [g.strip() or "unknown" for g in track_genres]
    unknown = [i for i, g in enumerate(names) if g not in known]
    if not unknown:
        return None
    example = f" (e.g. {track_ids[unknown[0]]!r})" if track_ids is not None else ""
    fallback = model_genres[int(genre_positions(["unknown"], model_genres)[0][0])]
    return (f"{len(unknown)} of {len(names)} track(s){example} have genre(s) the model was not trained on: "
            f"{_named_genres([names[i] for i in unknown], model_genres)}; treated as its genre {fallback!r} "
            f"(its genres: {', '.join(model_genres)})")


def taste_in_model_genres(taste: np.ndarray, names, model_genres) -> tuple[np.ndarray, str]:
    """Uploaders' genre preferences [n, len(names)] as preferences over ``model_genres`` [n, G], and a note of
    what had no counterpart ("" when nothing).

    Each column's share goes to the model genre of its name; the share of a genre the model was not trained on
    goes to its "unknown" genre if it has one, else is left out (adding it to the model's first genre, where
    such tracks are ranked, would inflate the taste for every real track of that genre); a model genre that no
    column gives a share gets each row's smallest share (at least :data:`MIN_TASTE`: log c must stay finite);
    rows renormalised."""
    model_genres = list(model_genres)
    positions, unknown = genre_positions(names, model_genres)
    used = np.array(["unknown" in model_genres or (n.strip() or "unknown") in model_genres for n in names], bool)
    out = np.zeros((len(taste), len(model_genres)), np.float64)
    np.add.at(out.T, positions[used], np.asarray(taste, np.float64)[:, used].T)
    given = np.zeros(len(model_genres), bool)
    given[positions[used]] = True
    if given.any():
        out[:, ~given] = out[:, given].min(axis=1, keepdims=True)
    out = np.maximum(out, MIN_TASTE)
    notes = []
    if unknown:
        went = ("count as its genre 'unknown'" if "unknown" in model_genres
                else "are left out (it has no genre 'unknown')")
        notes.append(f"the uploaders' tastes for genre(s) the model was not trained on "
                     f"({_named_genres(unknown, model_genres)}) {went}")
    absent = [repr(model_genres[j]) for j in np.flatnonzero(~given)]
    if absent:
        notes.append(f"the model's genre(s) {', '.join(absent)}, which the data does not name, get each "
                     "uploader's smallest share")
    return (out / out.sum(axis=1, keepdims=True)).astype(np.float32), "; ".join(notes)


def feature_digests(features: np.ndarray) -> np.ndarray:
    """int64 [M]: a 64-bit hash of each row's float32 bytes, by which a training track is recognised in any
    catalogue (whatever its order, and beside tracks never seen)."""
    rows = np.ascontiguousarray(features, np.float32)
    return np.array([int.from_bytes(hashlib.blake2b(r.tobytes(), digest_size=8).digest(), "little", signed=True)
                     for r in rows], np.int64)


def find_by_features(known: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(found [M] bool, position [M] in ``known``) of the tracks of ``features`` among the sorted
    :func:`feature_digests` ``known`` of the tracks a model has seen (position 0 where not found)."""
    if not len(known):
        return np.zeros(len(features), bool), np.zeros(len(features), np.int64)
    digest = feature_digests(features)
    pos = np.minimum(np.searchsorted(known, digest), len(known) - 1)
    found = known[pos] == digest
    return found, np.where(found, pos, 0)


def _recorded_in(source: str | None) -> str:
    return "" if source is None else f" (the model's spec in {source})"


@dataclass
class SplitView:
    """One split of a dataset: what ``fit`` receives for training and validation."""

    dataset: Dataset
    name: str
    row_index: np.ndarray | None = None  # a subset of the split's rows (None: all of them)

    __repr__ = brief_repr  # arrays by shape, long lists by length: not every value

    def __post_init__(self) -> None:
        if self.name not in self.dataset.splits:
            raise ValueError(f"the dataset has no split {self.name!r}; it has {', '.join(self.dataset.splits)}")

    @property
    def rows(self) -> np.ndarray:
        """int64 [n, 3] (video, track, uploader)."""
        rows = np.asarray(self.dataset.splits[self.name])
        return rows if self.row_index is None else rows[self.row_index]

    def holdout(self, share: float, seed: int) -> tuple[SplitView, SplitView]:
        """(rest, held-out share) of this split's rows, seeded: a validation set carved from a split."""
        n = len(self.rows)
        perm = np.random.default_rng(seed).permutation(n)
        k = max(1, int(round(share * n))) if n > 1 else 0
        base = np.arange(n) if self.row_index is None else self.row_index
        return (SplitView(self.dataset, self.name, np.sort(base[perm[k:]])),
                SplitView(self.dataset, self.name, np.sort(base[perm[:k]])))


@dataclass
class ModelConfig:
    """Base of every model config; subclasses add fields, each with a comment (and their ranges to
    :func:`check_bounds` in ``__post_init__``, calling the parent's first)."""

    seed: int = 0  # seeds initialisation, batching and sampling

    def __post_init__(self) -> None:
        check_bounds(self, seed="in [0, 2**63)")


#: what a stop raises: Ctrl-C's KeyboardInterrupt, and the SystemExit the command line turns SIGTERM and SIGHUP into
#: (:func:`bgmrec.cli.install_stop_handlers`)
STOPS = (KeyboardInterrupt, SystemExit)


@dataclass(frozen=True)
class StoppedFit:
    """Where a ``fit`` stopped (:data:`STOPS`) after a validated epoch ended, the model holding that epoch's state
    (:attr:`Recommender.stopped`)."""

    epoch: int  # the epoch running when the stop came (1-based; the epochs before it are the model's history)
    epochs: int  # of how many (the config's ``epochs``)
    best_epoch: int  # the epoch whose state the model holds: the best on val so far
    best_recall: float  # its val Recall@10 (early stopping's subset of val)


# ---- the contract --------------------------------------------------------------------------------------

class Recommender(ABC):
    """Base contract. Subclasses set ``name`` and ``config_class`` and implement the abstract methods.

    Constructors only build state from ``config`` and ``spec``; fitting, loading and any teacher
    wiring happen in ``fit``, :meth:`load` and the factories of :mod:`bgmrec.models.registry`.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    #: inference modes a model offers (DecCM: backdoor, content, personalised); empty for one mode
    inference_modes: ClassVar[tuple[str, ...]] = ()
    #: True when the model is trained with a frozen teacher (DecCM); the factory attaches it
    uses_teacher: ClassVar[bool] = False
    inference_mode: str | None = None
    #: False when neither training nor scores depend on the config's seed (popularity, CCA, the oracle): ``train``
    #: then says that ``--seed`` changes nothing, and the contract checks that another seed scores alike
    uses_seed: ClassVar[bool] = True
    #: True when scores depend on the catalogue's genre ids: tracks of a genre the model was not trained on are
    #: then warned of (:class:`GenreMappingWarning`)
    reads_genre: bool = True
    #: True only for a model that must know which dataset rows it scores (the oracle reads the world's truth by
    #: them): the others get queries and
    #: catalogues without ``index`` and ``split``, so that no model can look up the held-out answers by them
    reads_dataset_rows: ClassVar[bool] = False
    #: True once ``fit`` has returned (every subclass's, see ``__init_subclass__``) or :func:`load_model` loaded it
    fitted: bool = False
    #: True while ``fit`` runs (its validation encodes the model before it is fitted)
    fitting: bool = False
    #: set by a ``fit`` stopped (:data:`STOPS`) that left the model holding its best epoch so far, which it then
    #: re-raises: the model is then :attr:`fitted` (None after any other ``fit``)
    stopped: StoppedFit | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Wrap the ``fit`` a subclass defines: it first refuses a config changed since the model was built
        (:meth:`check_config_unchanged`), and marks the model fitted when it returns: :meth:`save`, ``encode_videos``
        and ``encode_music`` refuse a model never fitted (its weights are its initialisation: at random). A ``fit``
        stopped (:data:`STOPS`) re-raises the stop, and leaves the model fitted only when it set :attr:`stopped`
        (holding its best epoch so far); any other exception leaves it unfitted."""
        super().__init_subclass__(**kwargs)
        fit = cls.__dict__.get("fit")
        if fit is None or getattr(fit, "marks_fitted", False):
            return

        @functools.wraps(fit)
        def fit_and_mark(self: Recommender, *args: Any, **kw: Any) -> Recommender:
            if type(self).fit is not fit_and_mark:  # a super().fit() within a subclass's fit
                return fit(self, *args, **kw)
            self.check_config_unchanged()
            self.fitted, self.fitting = False, True  # a fit that raises leaves it unfitted, even one fitted before
            self.stopped = None
            try:
                out = fit(self, *args, **kw)
            except STOPS:
                self.fitted = self.stopped is not None  # stopped holding its best epoch so far
                raise
            finally:
                self.fitting = False
            self.fitted = True
            return out

        fit_and_mark.marks_fitted = True
        cls.fit = fit_and_mark

    def __init__(self, config: ModelConfig, spec: FeatureSpec) -> None:
        self.config = config
        self._built_config = asdict(config)  # what check_config_unchanged compares ``config`` with
        self.spec = spec
        self.history: list[dict] = []  # one entry per epoch for trained models
        self.source: str | None = None  # the config.json it was loaded from (named in input errors)

    @property
    def needs_taste(self) -> bool:
        """Whether scoring reads each query's uploader taste (``VideoQuery.confounder``) and cannot do without it:
        DecCM's personalised mode. A model that always reads it overrides this (``needs_taste = True``);
        ``encode_videos``, ``bgmrec serve`` (HTTP 422) and ``bgmrec recommend`` then refuse a query without one."""
        return self.inference_mode == "personalised"

    @property
    def reads_taste(self) -> bool:
        """Whether scoring reads a query's uploader taste when it is given: :attr:`needs_taste` by default. A model
        that reads it when given but can do without overrides this (``reads_taste = True``); a taste given to a
        model that does not read it is said in each answer's ``warnings``."""
        return self.needs_taste

    def set_inference_mode(self, mode: str) -> None:
        """Choose how the model scores (only for models with several ``inference_modes``)."""
        if mode not in self.inference_modes:
            offered = ", ".join(self.inference_modes) or "only its one mode"
            raise ValueError(f"model {self.name!r} offers {offered}; got mode {mode!r}")
        self.inference_mode = mode

    def modes_to_evaluate(self) -> list[str]:
        """The inference modes reports evaluate this model in: every mode it offers ([] for one mode)."""
        return list(self.inference_modes)

    def modality_shares(self, q: VideoQuery) -> np.ndarray:
        """[n, 2]: the shares of the frames and of the caption in each video's representation, each row summing to
        1 (CMVAE: each expert's share of the fused precision). The default: :class:`NoModalityShares`, for a model
        that keeps no such weighting."""
        raise NoModalityShares(f"model {self.name!r} does not weigh the frames against the caption by shares")

    @property
    def reads_captions(self) -> bool:
        """Whether the model's scores read a clip's caption (what an application says of the captions it is given);
        True by default."""
        return True

    def music_distance_from_training(self, c: MusicCatalog) -> np.ndarray | None:
        """[M]: how far each track's features lie from the model's training music, as the largest number of
        training standard deviations of any feature; None for a model that keeps no such statistics. A track
        far outside can get scores out of all proportion (a network extrapolates)."""
        return None

    def video_distance_from_training(self, q: VideoQuery) -> np.ndarray | None:
        """[n]: how far each video's features (frames, and caption where it has one) lie from the model's training
        videos, as :meth:`music_distance_from_training` measures tracks; None for a model that keeps no such
        statistics."""
        return None

    def check_dataset(self, ds: Dataset) -> None:
        """A ValueError when this model's figures on the dataset ``ds`` would be meaningless whatever its sizes
        (the evaluation protocol calls it before ranking); the default accepts every dataset. The oracle
        refuses a dataset of another simulated world."""

    # -- learning and encoding --
    @abstractmethod
    def fit(self, train: SplitView, val: SplitView | None = None, progress: bool = False) -> Recommender:
        """Learn from ``train``; use ``val`` (never test) for early stopping and selection. Call
        :meth:`check_fit_data` first.

        ``progress`` shows a progress bar (the CLI sets it; the library stays quiet by default). A stop (Ctrl-C's
        KeyboardInterrupt; :data:`STOPS`) is raised on; a model that can end there holding its best epoch so far
        does so, sets :attr:`stopped` and is then :attr:`fitted` (the neural models, once an epoch was validated).
        """

    def check_config_unchanged(self) -> None:
        """ValueError naming each field of ``self.config`` changed since the model was built (``fit`` calls it
        first): the model was made from the config it was given (its network's sizes, the config's range checks),
        so training with another would ignore some changes, record others in ``config.json`` untrained, and fail
        deep in training on a value never checked."""
        now = asdict(self.config)
        changed = [f"{k} {self._built_config.get(k, '(none)')!r} -> {now.get(k, '(none)')!r}"
                   for k in dict.fromkeys([*self._built_config, *now]) if now.get(k) != self._built_config.get(k)]
        if changed:
            raise ValueError(f"{self.name}: config changed after the model was built ({'; '.join(changed)}); fit "
                             "trains the model its config was built as: build a new model with these values "
                             "(bgmrec.models.registry.build(name, spec, {field: value, ...}))")

    def check_fitted(self) -> None:
        """ValueError unless the model is fitted (:attr:`fitted`: by ``fit``, or loaded by :func:`load_model`) or
        being fitted: the encodings, and so ``score``, ``recommend`` and the evaluation, of a model never fitted
        come from its initialisation and rank near chance."""
        if not (self.fitted or self.fitting):
            raise ValueError(f"{self.name} ({type(self).__name__}): not fitted, so its scores would come from its "
                             "initialisation (near chance); call fit first, or load a fitted model with load_model")

    def check_fit_data(self, train: SplitView, val: SplitView | None = None) -> None:
        """ValueError unless ``train`` (and ``val``) are splits of one dataset with the feature sizes and
        genres this model was built for (``self.spec``), ``train`` of role train and ``val`` not a test
        split. ``fit`` calls it first, so a mismatch is named before any training."""
        for what, view in (("train", train), ("val", val)):
            if not isinstance(view, SplitView) and (view is not None or what == "train"):
                raise ValueError(f"{self.name}: fit's {what} must be a SplitView (SplitView(dataset, "
                                 f"split_name)), got {type(view).__name__}")
        have = FeatureSpec.of(train.dataset)
        if have != self.spec:
            raise ValueError(f"{self.name}: built for features {self.spec}, but the training dataset has {have}; "
                             "build the model with FeatureSpec.of(that dataset)")
        if val is not None and val.dataset is not train.dataset:
            raise ValueError(f"{self.name}: train ({train.name!r}) and val ({val.name!r}) come from different "
                             "datasets")
        for view, allowed in ((train, ("train", "teacher")), (val, ("val", "train", "teacher"))):
            role = None if view is None else view.dataset.split_info[view.name].role
            if view is not None and role not in allowed:
                raise ValueError(f"{self.name}: split {view.name!r} has role {role!r}; fit takes a training split and "
                                 "a validation split, never a test split")

    @abstractmethod
    def _encode_videos(self, q: VideoQuery) -> np.ndarray:
        ...

    @abstractmethod
    def _encode_music(self, c: MusicCatalog) -> np.ndarray:
        ...

    def encode_videos(self, q: VideoQuery) -> np.ndarray:
        """Video embeddings [n, d] (float32, finite); ``score`` is their inner product with music embeddings.
        Uploaders' tastes over other genres (``q.genres``) are mapped to the model's by name. A model never fitted
        is refused (:meth:`check_fitted`)."""
        self.check_fitted()
        q = self.spec.videos_in_model_genres(q)
        self.spec.check_videos(q, self.source)
        if self.needs_taste and q.confounder is None:
            raise ValueError(f"{self.name}" + (f" in {self.inference_mode} mode" if self.inference_mode else "")
                             + " ranks by the uploader's taste: give each query's genre preferences "
                             "(VideoQuery.confounder)")
        if not self.reads_dataset_rows:
            q = dataclasses.replace(q, index=None, split=None)
        return self._finite("encode_videos", self._encode_videos(q), len(q))

    def encode_music(self, c: MusicCatalog) -> np.ndarray:
        """Music embeddings [M, d] (float32, finite). Genre ids of other genres (``c.genres``) are mapped to the
        model's by name. A model never fitted is refused (:meth:`check_fitted`)."""
        self.check_fitted()
        c = self.spec.music_in_model_genres(c, warn=self.reads_genre)
        self.spec.check_music(c, self.source)
        if not self.reads_dataset_rows:
            c = dataclasses.replace(c, index=None)
        return self._finite("encode_music", self._encode_music(c), len(c))

    def _finite(self, method: str, embeddings: np.ndarray, rows: int) -> np.ndarray:
        """``embeddings`` as a C-contiguous, writable float32 array (a copy of a read-only one, such as a memory map
        of stored embeddings, which torch warns of and cannot share in the evaluation and the index), refused
        (ValueError) unless it is [``rows``, d], one row per input (a plugin's one row short failed deep in the
        evaluation and the service), and (:class:`NonFiniteEmbeddingError`) where a row holds NaN or a value
        that is infinite, or becomes so as a float32: its every score would be NaN or infinite."""
        if type(embeddings).__module__.partition(".")[0] == "torch":  # a tensor (one needing grad: numpy() fails)
            embeddings = embeddings.detach().float().cpu().numpy()  # float(): bfloat16 has no NumPy type
        with np.errstate(over="ignore"):  # what overflows the cast is refused below, by row
            out = np.require(np.asarray(embeddings, np.float32), requirements=["C", "W"])
        if out.ndim != 2 or len(out) != rows:
            raise ValueError(f"{self.name}: {method} must give [n, d] embeddings, a row per input ({rows}); got "
                             f"shape {list(out.shape)}")
        from bgmrec.index import non_finite_rows

        bad = non_finite_rows(out)
        if bad.size:
            raise NonFiniteEmbeddingError(self.name, method, int(bad[0]), len(bad), len(out))
        return out

    def score(self, q: VideoQuery, c: MusicCatalog) -> np.ndarray:
        """Scores [n, M]: higher means a better fit of the track to the video."""
        videos, music = self.encode_videos(q), self.encode_music(c)
        check_embedding_widths(self, videos, music)
        return videos @ music.T

    def recommend(self, q: VideoQuery, c: MusicCatalog, k: int = 10,
                  exclude: np.ndarray | list | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` track positions in ``c`` and their scores for each video, best first.

        ``exclude`` is a 1-d array of track positions never to return (for every query), or one such
        list per query (a list of arrays, or a 2-d array with a row per query); a query that excludes
        all but j < k tracks gets those j, then position -1.
        """
        from bgmrec.index import ExactIndex

        music, videos = self.encode_music(c), self.encode_videos(q)
        check_embedding_widths(self, videos, music)
        return ExactIndex(music).search(videos, k, exclude)

    # -- persistence --
    @abstractmethod
    def state_arrays(self) -> dict[str, np.ndarray]:
        """Learned state as named arrays (saved as safetensors): every array ``fit`` learns, ``{}`` for a model
        that learns none. Abstract, so that a model cannot leave it out and be saved without its state (loaded
        back, such a model scored by its initialisation: Recall@10 0.511 fitted, 0.054 reloaded, without a word)."""

    @abstractmethod
    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`state_arrays` returned (:func:`load_model` checks them first)."""

    def state_shapes(self) -> dict[str, tuple[int | None, ...]]:
        """The shape each array of :meth:`state_arrays` must have, None where the data sizes it.

        By default the shapes of the unfitted model's arrays; an array empty before ``fit`` is sized
        by the data, so only its number of dimensions is fixed.
        """
        return {k: (None,) * np.ndim(v) if np.size(v) == 0 else np.shape(v) for k, v in self.state_arrays().items()}

    def check_state_arrays(self, arrays: dict[str, Any]) -> None:
        """Raise ValueError unless ``arrays`` holds exactly the keys of :meth:`state_shapes`, of those shapes,
        each of the unfitted model's kind of dtype (float, signed or unsigned integer, bool), floats finite."""
        want = self.state_shapes()
        missing, extra = [k for k in want if k not in arrays], sorted(set(arrays) - set(want))
        if missing or extra:
            raise ValueError("; ".join(f"{what} {_names(keys)}" for what, keys in
                                       (("missing keys", missing), ("unexpected keys", extra)) if keys))
        kinds = {k: np.asarray(v).dtype.kind for k, v in self.state_arrays().items()}
        for k, shape in want.items():
            found = tuple(arrays[k].shape)
            if len(found) != len(shape) or any(w is not None and w != n for w, n in zip(shape, found, strict=False)):
                implied = ", ".join("n" if n is None else str(n) for n in shape)
                raise ValueError(f"{k} has shape {list(found)}, config.json implies [{implied}]")
            values = np.asarray(arrays[k])
            if k in kinds and values.dtype.kind != kinds[k]:
                raise ValueError(f"{k} has dtype {values.dtype}, expected {_DTYPE_KINDS.get(kinds[k], kinds[k])} "
                                 "values")
        bad = first_non_finite(arrays)
        if bad is not None:
            raise ValueError(f"{bad} holds NaN or inf (a diverged or damaged model)")

    def extra_config(self) -> dict[str, Any]:
        """JSON-able facts learned in ``fit`` that are not arrays (saved in config.json)."""
        return {}

    def load_extra_config(self, extra: dict[str, Any]) -> None:
        """Restore what :meth:`extra_config` returned."""

    def after_load(self, folder: Path) -> None:
        """Hook after weights are restored from ``folder`` (DecCM resolves its teacher here)."""

    def save(self, out: Path) -> Path:
        """Write ``weights.safetensors``, ``config.json`` and ``history.json`` (a model trained by epochs: the
        others have none, and an older run's is removed) into the folder ``out``, all or none
        (:func:`~bgmrec.data.dataset.write_files_together`: a failed save into an earlier run leaves that run as
        it was, loadable). Refused before anything is written: a model never fitted
        (:attr:`fitted`), and state that :func:`load_model` would refuse: an array of a dtype safetensors
        cannot store, NaN or inf, or arrays that the model's own :meth:`check_state_arrays`, run as
        :func:`load_model` runs it (on the unfitted model of this config), refuses."""
        from safetensors.numpy import save

        who = f"{self.name} ({type(self).__name__})"
        if not self.fitted:
            raise ValueError(f"{who}: not fitted, so its weights are its initialisation and would load as a model "
                             "scoring at random; call fit before save")
        out = Path(out)
        made = model_package(type(self))
        arrays = {k: np.ascontiguousarray(v) for k, v in self.state_arrays().items()}
        unstorable = next((k for k, v in arrays.items() if v.dtype.name not in SAFETENSORS_DTYPES), None)
        if unstorable is not None:
            raise ValueError(f"{who}: state_arrays() gives {unstorable!r} of dtype {arrays[unstorable].dtype}, which "
                             "safetensors cannot store (bool, integer and float arrays only); not saved")
        bad = first_non_finite(arrays)
        if bad is not None:
            raise ValueError(f"{who}: {bad} holds NaN or inf (training diverged); not saved")
        try:
            type(self)(self.config, self.spec).check_state_arrays(arrays)
        except ValueError as e:
            raise ValueError(f"{who}: state_arrays() gives what load_model would refuse ({e}); not saved") from None
        config = {
            "model": self.name,
            **({"model_package": made} if made is not None else {}),
            "bgmrec_version": bgmrec.__version__,
            "config": asdict(self.config),
            "spec": asdict(self.spec),
            "learned": self.extra_config(),
        }
        # written as bytes by Python, not by safetensors' save_file, which makes the file readable by its owner
        # only whatever the umask (a server running as another account could not read the weights)
        writers = {"weights.safetensors": lambda tmp: Path(tmp).write_bytes(save(arrays)),
                   "config.json": lambda tmp: write_json_atomic(tmp, config)}
        if self.history:
            writers["history.json"] = lambda tmp: write_json_atomic(tmp, self.history)
        write_files_together(out, writers)
        if not self.history:
            (out / "history.json").unlink(missing_ok=True)  # never leave an older run's history behind
        return out

    @classmethod
    def from_folder_config(cls, meta: dict) -> Recommender:
        """Build an untrained model from a saved ``config.json`` object (ValueError naming a bad field)."""
        return cls(config_from_dict(cls.config_class, meta["config"], as_written=True),
                   FeatureSpec.from_dict(meta["spec"]))


class NoModalityShares(ValueError):
    """A model that does not weigh the frames against the caption by a share of its own
    (:meth:`Recommender.modality_shares`): an answer then gives the shares only where they are plain (a clip
    without caption: visual 1, text 0)."""


class NonFiniteEmbeddingError(ValueError):
    """A model's encoding holding NaN or inf (beyond float32's range), from ``method`` (``encode_videos`` or
    ``encode_music``); ``row``: the first such row (a query or a track of the batch encoded)."""

    def __init__(self, model: str, method: str, row: int, bad: int, rows: int) -> None:
        super().__init__(f"{model}: {method} gives NaN or inf in row {row} ({bad} of {rows} rows): a diverged model, "
                         "or input features far outside its training range")
        self.row = row


def check_embedding_widths(model: Recommender, videos: np.ndarray, music: np.ndarray) -> None:
    """ValueError unless ``model``'s video embeddings [n, d] and music embeddings [M, d] have one width ``d``:
    every score is the inner product of the two (the evaluation protocol, :meth:`Recommender.score` and
    ``recommend`` and the clip recommender's start-up check them before any product)."""
    if videos.shape[1] != music.shape[1]:
        raise ValueError(f"{model.name}: encode_videos gives {videos.shape[1]} columns, encode_music "
                         f"{music.shape[1]}; they must match (the score is their inner product)")


_DTYPE_KINDS = {"f": "float", "i": "signed integer", "u": "unsigned integer", "b": "bool"}
#: the numpy dtypes (by name, any byte order) a state array may have: those safetensors stores and loads back
SAFETENSORS_DTYPES = frozenset({"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                                "float16", "float32", "float64"})


def first_non_finite(arrays: dict[str, Any]) -> str | None:
    """The name of the first float array of ``arrays`` holding NaN or inf, or None."""
    for k, v in arrays.items():
        values = np.asarray(v)
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            return k
    return None


def _names(keys: list[str], shown: int = 5) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


#: the fields of a saved config.json that :func:`load_model` reads, and the JSON type each must have
SAVED_FIELDS = {"model": (str, "a string"), "config": (dict, "an object"), "spec": (dict, "an object"),
                "learned": (dict, "an object")}


def read_run_record(run: Path) -> dict:
    """What a run folder's ``run.json`` says of its training (model name as given, data, commit, feature
    settings, ...); {} when the run has no readable record (saved by the library alone, or damaged)."""
    try:
        info = json.loads((Path(run) / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return info if isinstance(info, dict) else {}


def run_record_damaged(run: Path) -> bool:
    """True when the run folder ``run`` has a ``run.json`` that is not a readable JSON object (which
    :func:`read_run_record` reads as {}, as a run without one): what it records cannot be checked."""
    path = Path(run) / "run.json"
    if not path.is_file():
        return False
    try:
        return not isinstance(json.loads(path.read_text(encoding="utf-8")), dict)
    except (OSError, ValueError, RecursionError):
        return True


def recorded_model_package(folder: Path) -> tuple[dict | None, str]:
    """The code a saved model of another package was made with, as its folder records it, and the file that
    says so: ``config.json``'s ``model_package`` (written by :meth:`Recommender.save` with the weights, also
    when the library alone saved them), else ``run.json``'s (written when ``bgmrec train`` starts; runs saved
    before config.json recorded it); (None, "") for bgmrec's own models, folders that record neither (saved
    by an older bgmrec) and records that are not objects naming a class."""
    from bgmrec.data.dataset import read_json

    def valid(made) -> bool:
        return isinstance(made, dict) and isinstance(made.get("class"), str)

    try:
        made = read_json(Path(folder) / "config.json").get("model_package")
    except (DatasetError, OSError):  # none, or damaged
        made = None
    if valid(made):
        return made, "config.json"
    made = read_run_record(folder).get("model_package")
    return (made, "run.json") if valid(made) else (None, "")


def load_model(folder: Path) -> Recommender:
    """Load any saved model folder (the registry picks the class from ``config.json``).

    Anything malformed in the folder raises :class:`DatasetError` naming the file and what was expected.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from bgmrec.data.dataset import folder_is, read_json
    from bgmrec.models.registry import model_class

    folder = Path(folder)
    cfg_path = folder / "config.json"
    found = folder_is(folder) if folder.is_dir() and not cfg_path.exists() else None
    if found is not None:
        raise DatasetError(f"{folder}: not a saved model folder: it is {found}")
    check_is_file(cfg_path, missing="file is missing (not a saved model folder)")
    meta = read_json(cfg_path)
    for key, (kind, what) in SAVED_FIELDS.items():
        if key not in meta and key != "learned":
            raise DatasetError(f"{cfg_path}: missing field {key!r}")
        if key in meta and not isinstance(meta[key], kind):
            raise DatasetError(f"{cfg_path}: field {key!r} must be {what}, found {json.dumps(meta[key])[:80]}")
    try:
        cls = model_class(meta["model"])
    except ValueError as e:
        made, where = recorded_model_package(folder)
        said = f"; its {where} says it was {'trained' if where == 'run.json' else 'saved'} with"
        if made is not None and made.get("package"):
            made = f"{said} {made['class']} of package {made['package']!r} {made.get('version')}: install that package"
        elif made is not None:
            made = (f"{said} {made['class']}, which no installed package provides: install the package that holds "
                    "it, or, in Python, register it (bgmrec.models.registry.register_model) before loading")
        else:
            made = ""
        raise DatasetError(f"{cfg_path}: {e}{made}") from None
    try:
        model = cls.from_folder_config(meta)
    except ValueError as e:
        raise DatasetError(f"{cfg_path}: {e}") from None
    model.source = str(cfg_path)
    wpath = folder / "weights.safetensors"
    check_is_file(wpath)
    try:
        arrays = load_file(str(wpath))
    except (SafetensorError, OSError) as e:
        raise DatasetError(f"{wpath}: not a safetensors file ({e})") from None
    try:
        model.check_state_arrays(arrays)
        model.load_state_arrays(arrays)
    except ValueError as e:
        raise DatasetError(f"{wpath}: {e}") from None
    model.fitted = True
    try:
        model.load_extra_config(meta.get("learned", {}))
    except ValueError as e:
        raise DatasetError(f"{cfg_path}: learned.{e}") from None
    hist = folder / "history.json"
    if hist.is_file():
        model.history = _read_history(hist)
    model.after_load(folder)
    return model


def _read_history(path: Path) -> list[dict]:
    history = parse_json_file(path, str(path))
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise DatasetError(f"{path}: expected a JSON list with one object per epoch")
    return history


#: the field types :func:`_coerce` checks values against, alone or as items of a tuple or list
_SCALARS = (bool, int, float, str)
_SUPPORTED = "bool, int, float, str, Literal[...], tuple[...] or list[...] of those, or any of them | None"


def _type_name(tp: Any) -> str:
    """An annotation as written: ``int``, ``tuple[int, ...]``, ``numpy.float32``."""
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__ if tp.__module__ == "builtins" else f"{tp.__module__}.{tp.__qualname__}"
    return str(tp).replace("typing.", "")


def _type_problem(tp: Any, item: bool = False) -> str | None:
    """Why :func:`_coerce` cannot check values against the annotation ``tp``, saying what to use instead; None
    when it can (``item``: ``tp`` types the items of a tuple or list, which must be scalars or a Literal)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in _SCALARS:
        return None
    if origin is typing.Literal:
        odd = [a for a in args if type(a) not in (bool, int, str)]
        return f"a Literal's options must be bool, int or str values, not {odd[0]!r}" if odd else None
    if isinstance(tp, type) and issubclass(tp, np.generic):
        python = next((t for kind, t in ((np.bool_, bool), (np.integer, int), (np.floating, float), (np.str_, str))
                       if issubclass(tp, kind)), None)
        return f"use {python.__name__ if python else 'bool, int, float or str'}, not a numpy type"
    if item:
        return f"the items of a tuple or list must be bool, int, float, str or a Literal, not {_type_name(tp)}"
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return f"use one type, or one type | None ({_SUPPORTED})" if len(rest) != 1 else _type_problem(rest[0])
    if tp in (tuple, list) or origin in (tuple, list) and not args:
        return ("a bare tuple or list does not say its items' type: use tuple[int, ...] (any length), "
                "tuple[int, str] (one type per item) or list[int]")
    if origin is list and len(args) == 1 or origin is tuple and (Ellipsis not in args or args[1:] == (Ellipsis,)):
        return next((p for p in (_type_problem(a, item=True) for a in args if a is not Ellipsis) if p), None)
    return f"use {_SUPPORTED}"


def _coerce(tp: Any, value: Any) -> Any:
    """Convert a JSON or command-line value to a config field's type (one :func:`_type_problem` accepts); a
    ValueError when the value is not of that type."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or value == "none":
            return None
        return _coerce(next(a for a in args if a is not type(None)), value)
    if origin is typing.Literal:
        for option in args:
            try:
                if _coerce(type(option), value) == option:
                    return option
            except (TypeError, ValueError):
                continue
        raise ValueError(f"expected one of {', '.join(map(repr, args))}")
    if origin in (tuple, list):
        if not isinstance(value, str | list | tuple):
            raise ValueError(f"expected a list (comma-separated on the command line), got {type(value).__name__}")
        items = value.split(",") if isinstance(value, str) else list(value)
        if origin is tuple and args[-1] is not Ellipsis and len(items) != len(args):
            raise ValueError(f"expected {len(args)} items, got {len(items)}")
        kinds = args if origin is tuple and args[-1] is not Ellipsis else args[:1] * len(items)
        return origin(_coerce(kind, x) for kind, x in zip(kinds, items, strict=True))
    if tp is bool:
        if isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"expected a boolean, got {value!r}")
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool | int) or value not in (0, 1):  # bool([]) would read a list as False
            raise ValueError(f"expected a boolean, got {type(value).__name__} {value!r}"[:120])
        return bool(value)
    if tp is str:
        if isinstance(value, os.PathLike):  # a path given from Python
            value = os.fspath(value)
        if not isinstance(value, str):  # str() would take anything, a list or a number
            raise ValueError(f"expected a string, got {type(value).__name__} {value!r}"[:120])
        return value
    if isinstance(value, bool | np.bool_) or not isinstance(value, str | numbers.Real):
        raise ValueError(f"expected a number, got {type(value).__name__} {value!r}"[:120])
    if tp is int and not isinstance(value, str | numbers.Integral) and not float(value).is_integer():
        raise ValueError("expected an integer")
    return tp(value)


def _written_as_text(tp: Any, value: Any) -> bool:
    """Whether ``value``, read from JSON for a config field of type ``tp``, holds text where JSON writes that type
    without quotes (``"false"`` for a flag, ``["256", "128"]`` for sizes): not a string or a choice of strings."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return all(_written_as_text(a, value) for a in args if a is not type(None))
    if isinstance(value, str):
        return not (tp is str or origin is typing.Literal and any(isinstance(a, str) for a in args))
    if origin in (tuple, list) and isinstance(value, list | tuple) and args:
        kinds = args if origin is tuple and args[-1] is not Ellipsis else args[:1] * len(value)
        return any(_written_as_text(kind, x) for kind, x in zip(kinds, value, strict=False))
    return False


def config_from_dict(cls: type, values: dict[str, Any], as_written: bool = False) -> Any:
    """Build config dataclass ``cls`` from a dict, every field converted to its annotated type (a field not in
    ``values`` from its default). A ValueError naming the class and the field refuses an unknown key, a value
    (or default) not of the field's type, and an annotation :func:`_coerce` cannot check. ``as_written``: the
    values come from a saved ``config.json``, which holds each as JSON writes its type, so text where no text
    belongs is refused (``"false"`` was read as false for a field of a run trained with it true, and the
    weights' keys were blamed), where ``--set`` gives every value as text."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception as e:  # whatever evaluating a config's annotations raises (a NameError, mostly)
        raise ValueError(f"{cls.__name__}: cannot read its fields' annotations ({type(e).__name__}: {e})") from None
    own = [f for f in fields(cls) if f.init]
    unknown = sorted(set(values) - {f.name for f in own})
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}; known: {sorted(f.name for f in own)}")
    converted = {}
    for f in own:
        tp = hints[f.name]
        problem = _type_problem(tp)
        if problem is not None:
            raise ValueError(f"{cls.__name__}.{f.name}: its annotation {_type_name(tp)} is not supported: {problem}")
        if f.name in values:
            value = values[f.name]
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            raise ValueError(f"{cls.__name__}.{f.name}: missing (the field has no default)")
        try:
            if as_written and f.name in values and _written_as_text(tp, value):
                raise ValueError("text, where JSON writes this type without quotes")
            converted[f.name] = _coerce(tp, value)
        except (TypeError, ValueError) as e:
            given = repr(value) if f.name in values else f"its default {value!r}"
            raise ValueError(f"{cls.__name__}.{f.name}: cannot use {given} as {_type_name(tp)} ({e})") from None
    return cls(**converted)


def with_overrides(config: Any, overrides: dict[str, Any]) -> Any:
    """A copy of a config dataclass with string or typed overrides applied (``--set key=value``). Every field is
    checked by :func:`config_from_dict`, overridden or not: a class's wrong default is refused (as its default)
    whatever the overrides, not only when there are some."""
    changed = {f.name: getattr(config, f.name) for f in fields(config)
               if f.init and getattr(config, f.name) is not f.default}
    return config_from_dict(type(config), {**changed, **overrides})
