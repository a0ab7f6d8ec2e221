"""The dataset container and bgmrec's native on-disk format.

A dataset folder holds::

    manifest.json                 format version, counts, modality dims, genres, splits, provenance
    videos.csv                    id,uploader,source          (row i = video index i; uploader -1 for PGC)
    tracks.csv                    id,genre,title,artist,new   (row j = track index j; new=1: held out)
    uploaders.npy                 float32 [U, G]  each uploader's genre-preference distribution
    features/video_visual.npy     float32 [N, Dv]
    features/video_text.npy       float32 [N, Dt]
    features/video_text_mask.npy  bool    [N]     False: the video has no usable text
    features/music.npy            float32 [M, Dm]
    splits/<name>.npy             int64   [n, 3]  (video, track, uploader) per interaction; <name> a file name
    negatives/<name>.npy          int64   [n, K]  frozen sampled-protocol negatives (evaluation splits)
    weights/<name>.npy            float64 [n]     optional per-row IPW weights (else inverse popularity)
    truth/                        simulated worlds only: the ground truth (see ``bgmrec.data.simulate``)

Feature matrices are memory-mapped on load. Everything is validated on load, and writing is
atomic: the folder is built under a temporary name and renamed into place.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import glob
import json
import math
import os
import re
import secrets
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
SPLIT_ROLES = ("train", "val", "test", "teacher")
CANDIDATE_SETS = ("existing", "new", "all")
BRIEF_ITEMS = 8  # a list, tuple or dict of more items is shown by its length in a container's repr (brief)


def brief(value: Any) -> str:
    """``value`` as a container's repr shows it: an array by its dtype and shape (``float32[200, 64]``), a list,
    tuple or dict of more than :data:`BRIEF_ITEMS` items by its length, a shorter dict item by item (each value
    brief), anything else by its repr."""
    if isinstance(value, np.ndarray):
        return f"{value.dtype}{list(value.shape)}"
    if isinstance(value, list | tuple | dict) and len(value) > BRIEF_ITEMS:
        return f"<{type(value).__name__} of {len(value)}>"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {brief(v)}" for k, v in value.items()) + "}"
    return repr(value)


def brief_repr(obj: Any) -> str:
    """The repr of the dataclass instance ``obj`` with each field :func:`brief` (the dataclass's own repr printed
    every id and every value of its arrays: 83 KB for a tiny world's dataset)."""
    shown = ", ".join(f"{f.name}={brief(getattr(obj, f.name))}" for f in fields(obj) if f.repr)
    return f"{type(obj).__name__}({shown})"


class DatasetError(ValueError):
    """A dataset folder or array is malformed. The message names the file and what was expected."""


class FieldError(ValueError):
    """A value of a config out of range. The message names the config's fields; :meth:`worded` says the same
    with other names for them (an application's options), so an application need not parse the message.

    ``template`` is the message with each field written ``{field}`` (values already in it, as text without
    braces).
    """

    def __init__(self, template: str, *fields: str) -> None:
        self.template, self.fields = template, fields
        super().__init__(self.worded({}))

    def worded(self, names: dict[str, str]) -> str:
        """The message with each field called ``names[field]`` (its own name where ``names`` has none)."""
        return self.template.format(**{f: names.get(f, f) for f in self.fields})

    @staticmethod
    def given(value) -> str:
        """``repr(value)`` as text of a template: its braces doubled (a user's ``'{x}'`` is not a field)."""
        return repr(value).replace("{", "{{").replace("}", "}}")


class DatasetFieldError(FieldError, DatasetError):
    """A dataset that cannot be made with these config values (both a :class:`FieldError` and a
    :class:`DatasetError`)."""


@dataclass(frozen=True)
class SplitInfo:
    """How one split is used."""

    role: str  # "train" | "val" | "test" | "teacher" (the PGC set a teacher trains on)
    candidates: str  # which tracks a query of this split is ranked among: "existing" | "new" | "all"


@dataclass
class Dataset:
    """Videos, tracks, uploaders, features and interactions of one dataset, all indexed from 0.

    Arrays are held as given (memory-mapped when loaded from disk). Use :func:`load_dataset` and
    :func:`save_dataset` for the on-disk format; :meth:`validate` is called by both.
    """

    genres: list[str]  # genre names, index = genre id
    video_ids: list[str]  # external id of each video
    video_uploader: np.ndarray  # int64 [N]; -1 for professionally made (PGC) videos
    video_source: list[str]  # "ugc" | "pgc" per video
    track_ids: list[str]  # external id of each track
    track_genre: np.ndarray  # int64 [M]
    track_title: list[str]
    track_artist: list[str]
    track_new: np.ndarray  # bool [M]; True: held out of training (strong generalisation)
    uploader_pref: np.ndarray  # float32 [U, G]; rows sum to 1
    video_visual: np.ndarray  # float32 [N, Dv]
    video_text: np.ndarray  # float32 [N, Dt]
    video_text_mask: np.ndarray  # bool [N]
    music: np.ndarray  # float32 [M, Dm]
    splits: dict[str, np.ndarray]  # name -> int64 [n, 3] (video, track, uploader)
    split_info: dict[str, SplitInfo]
    negatives: dict[str, np.ndarray] = field(default_factory=dict)  # name -> int64 [n, K]
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # name -> float64 [n]
    provenance: dict = field(default_factory=dict)  # how it was made (simulator config, importer, ...)
    root: Path | None = None  # folder it was loaded from

    def __repr__(self) -> str:
        """Its counts, splits (rows each) and folder; :meth:`summary` says more."""
        splits = ", ".join(f"{name}: {len(rows)}" for name, rows in self.splits.items())
        return (f"Dataset({self.n_videos} videos, {self.n_tracks} tracks, {self.n_uploaders} uploaders, "
                f"{self.n_genres} genres, splits {{{splits}}}, root={None if self.root is None else str(self.root)!r})")

    # ---- sizes -------------------------------------------------------------------------------
    @property
    def n_videos(self) -> int:
        return len(self.video_ids)

    @property
    def n_tracks(self) -> int:
        return len(self.track_ids)

    @property
    def n_uploaders(self) -> int:
        return int(self.uploader_pref.shape[0])

    @property
    def n_genres(self) -> int:
        return len(self.genres)

    def with_split(self, name: str, rows, role: str = "test", candidates: str = "existing") -> Dataset:
        """A copy of this dataset (arrays shared, not copied) with one more split ``name``: ``rows`` int
        [n, 3] (video, track, uploader or -1), e.g. an app's own held-out queries to :func:`evaluate
        <bgmrec.eval.protocol.evaluate>` a model on. The copy is validated as a loaded dataset is (a
        :class:`DatasetError` for rows out of range, a positive outside ``candidates``, a (video, track)
        pair of a training split); the split has no frozen negatives, so only full-catalogue figures. Errors begin
        ``with_split(name=NAME)`` and name the argument (``rows``, ``role``, ``candidates``)."""
        call = f"with_split(name={name!r})"
        check_split_name(name, call)
        for arg, value, allowed in (("role", role, SPLIT_ROLES), ("candidates", candidates, CANDIDATE_SETS)):
            if value not in allowed:
                raise DatasetError(f"{call}: {arg} must be one of {', '.join(allowed)}, got {value!r}")
        if name in self.splits:
            raise DatasetError(f"{call}: the dataset already has a split of that name")
        ds = replace(self, splits={**self.splits, name: _ids(np.asarray(rows))},
                     split_info={**self.split_info, name: SplitInfo(role, candidates)})
        try:
            ds.validate(call)
        except DatasetError as e:  # validate names files: the new split's (splits/NAME.npy) is the argument rows
            said, own = str(e).removeprefix(f"{call}/"), f"splits/{name}.npy"
            said = "rows" + said.removeprefix(own) if said.startswith(own) else said
            raise DatasetError(f"{call}: {said}") from None
        return ds

    def dims(self) -> dict[str, int]:
        """Feature dimensions by modality, as recorded in the manifest."""
        return {
            "video_visual": int(self.video_visual.shape[1]),
            "video_text": int(self.video_text.shape[1]),
            "music": int(self.music.shape[1]),
        }

    # ---- views ---------------------------------------------------------------------------------
    def candidate_tracks(self, split: str) -> np.ndarray:
        """Track indices that a query of ``split`` is ranked among (int64, ascending)."""
        kind = self.split_info[split].candidates
        if kind == "existing":
            return np.flatnonzero(~self.track_new)
        if kind == "new":
            return np.flatnonzero(self.track_new)
        return np.arange(self.n_tracks)

    def confounder_prior(self) -> np.ndarray:
        """The confounder value of an upload whose uploader is unknown (-1), [G].

        ``provenance["user_prior_mean"]`` when the dataset has one (imported TT-150k), else uniform.
        """
        prior = self.provenance.get("user_prior_mean")
        if prior is not None:  # checked by validate
            p = np.asarray(prior, np.float64)
            return (p / p.sum()).astype(np.float32)
        return np.full(self.n_genres, 1.0 / self.n_genres, np.float32)

    def confounder(self, uploader: np.ndarray) -> np.ndarray:
        """Genre-preference rows [n, G] for uploader indices; unknown (-1) gets :meth:`confounder_prior`."""
        uploader = np.asarray(uploader)
        out = np.tile(self.confounder_prior(), (len(uploader), 1))
        has = uploader >= 0
        out[has] = self.uploader_pref[uploader[has]]
        return out

    def ipw_weights(self, split: str) -> np.ndarray:
        """Per-row inverse-popularity weights summing to 1 (DecCM's IPW protocol).

        Stored weights are used when the dataset has them (e.g. imported TT-150k); otherwise each row
        is weighted by 1 / (1 + training count of its positive track), normalised.
        """
        if split in self.weights:
            w = np.asarray(self.weights[split], dtype=np.float64)
        else:
            counts = np.bincount(self.train_rows()[:, 1], minlength=self.n_tracks)
            w = 1.0 / (1.0 + counts[self.splits[split][:, 1]])
        return w / w.sum()

    def train_rows(self) -> np.ndarray:
        """The interactions of every split whose role is "train"."""
        rows = [self.splits[s] for s, info in self.split_info.items() if info.role == "train"]
        return np.concatenate(rows) if rows else np.zeros((0, 3), np.int64)

    def split_names(self, role: str | None = None) -> list[str]:
        return [s for s, info in self.split_info.items() if role is None or info.role == role]

    def summary(self) -> dict:
        """What the dataset holds, as ``bgmrec describe`` shows it: counts, feature sizes, each genre's tracks
        and share of the training positives, each split's rows, role, candidate tracks, frozen negatives per
        row, stored IPW weights, queries of a known uploader and positives no training row has (new music to a
        model, whatever the split's candidates), and where the data came from."""
        train = self.train_rows()
        positives = np.bincount(train[:, 1], minlength=self.n_tracks) if len(train) else np.zeros(self.n_tracks)
        genre_of = np.asarray(self.track_genre)
        per_genre = np.bincount(genre_of, weights=positives, minlength=self.n_genres)
        made = self.provenance
        source = next((str(made[k]) for k in ("simulator", "importer", "builder", "made_by") if k in made),
                      "unrecorded")
        return {
            "videos": self.n_videos, "tracks": self.n_tracks, "new_tracks": int(np.asarray(self.track_new).sum()),
            "uploaders": self.n_uploaders, "professional_videos": sum(s == "pgc" for s in self.video_source),
            "captioned_videos": int(np.asarray(self.video_text_mask).sum()), "features": self.dims(),
            "genres": {name: {"tracks": int((genre_of == g).sum()),
                              "train_share": float(per_genre[g] / max(per_genre.sum(), 1))}
                       for g, name in enumerate(self.genres)},
            "splits": {name: {"rows": int(len(rows)), "role": self.split_info[name].role,
                              "candidates": self.split_info[name].candidates,
                              "candidate_tracks": int(len(self.candidate_tracks(name))),
                              "negatives": int(self.negatives[name].shape[1]) if name in self.negatives else 0,
                              "weights": name in self.weights,
                              "known_uploaders": int((np.asarray(rows)[:, 2] >= 0).sum()),
                              "untrained_positives": int((positives[np.asarray(rows)[:, 1]] == 0).sum())}
                       for name, rows in self.splits.items()},
            "made_by": source,
        }

    # ---- validation ----------------------------------------------------------------------------
    def validate(self, where: str = "dataset") -> None:
        """Check every invariant of the format; raise :class:`DatasetError` naming the file."""
        n, m, g = self.n_videos, self.n_tracks, self.n_genres
        u = self.uploader_pref.shape[0] if self.uploader_pref.ndim == 2 else -1
        _expect(len(self.video_uploader) == n, where, "videos.csv", f"{n} uploader entries")
        _expect(len(self.video_source) == n, where, "videos.csv", f"{n} source entries")
        odd = next((i for i, s in enumerate(self.video_source) if s not in VIDEO_SOURCES), None)
        _expect(odd is None, where, "videos.csv column source", f"{' or '.join(VIDEO_SOURCES)} (an upload or a "
                f"professional video), found {self.video_source[odd]!r} (video {self.video_ids[odd]!r}, row {odd})"
                if odd is not None else "")
        check_float_matrix(self.video_visual, (n, None), where, "features/video_visual.npy")
        check_float_matrix(self.video_text, (n, None), where, "features/video_text.npy")
        _check_shape(self.video_text_mask, (n,), where, "features/video_text_mask.npy")
        _expect(np.asarray(self.video_text_mask).dtype == bool, where, "features/video_text_mask.npy",
                f"a bool array, found {np.asarray(self.video_text_mask).dtype}")
        check_float_matrix(self.music, (m, None), where, "features/music.npy")
        check_float_matrix(self.uploader_pref, (None, g), where, "uploaders.npy")
        if u > 0:
            sums = self.uploader_pref.sum(axis=1)
            bad = np.flatnonzero(np.abs(sums - 1.0) > 1e-3)
            _expect(bad.size == 0, where, "uploaders.npy",
                    f"rows summing to 1 (row {bad[:1].tolist()} sums to {sums[bad[:1]].tolist()})")
            _expect(bool((self.uploader_pref >= 0).all()), where, "uploaders.npy", "non-negative entries")
        for name, arr, hi in (("videos.csv uploader", self.video_uploader, u),
                              ("tracks.csv genre", self.track_genre, g)):
            _check_range(arr, -1 if "uploader" in name else 0, hi, where, name)
        _check_shape(self.track_new, (m,), where, "tracks.csv new")
        for fname, names in (("manifest.json genres", self.genres), ("videos.csv id", self.video_ids),
                             ("tracks.csv id", self.track_ids)):
            twice = first_repeated(names)
            _expect(twice is None, where, fname, f"distinct names ({twice!r} appears twice)")
            empty = next((i for i, name in enumerate(names) if not str(name).strip()), None)
            _expect(empty is None, where, fname, f"non-empty names (entry {empty} is empty)")
        self._check_provenance(where)
        for s in self.split_info:
            check_split_name(s, f"{where}/manifest.json")
        for s, rows in self.splits.items():
            fname = f"splits/{s}.npy"
            _expect(s in self.split_info, where, "manifest.json", f"an entry for split {s!r}")
            _check_shape(rows, (None, 3), where, fname)
            _check_range(rows[:, 0], 0, n, where, fname + " column video")
            _check_range(rows[:, 1], 0, m, where, fname + " column track")
            _check_range(rows[:, 2], -1, u, where, fname + " column uploader")
            info = self.split_info[s]
            _expect(info.role in SPLIT_ROLES, where, "manifest.json", f"split role in {SPLIT_ROLES}")
            _expect(info.candidates in CANDIDATE_SETS, where, "manifest.json",
                    f"candidates in {CANDIDATE_SETS}")
            if info.role in ("train", "val") and len(rows):
                # held-out (new) music must never be seen in training or model selection
                _expect(not self.track_new[rows[:, 1]].any(), where, fname,
                        "only tracks not marked new in tracks.csv (a train/val row uses a held-out track)")
            outside = np.flatnonzero(~self.in_candidates(s, rows[:, 1]))
            _expect(outside.size == 0, where, fname,
                    f"positive tracks in the split's candidate set ({info.candidates!r} in manifest.json; "
                    f"row {outside[:1].tolist()} has track {rows[outside[:1], 1].tolist()})")
        self._check_no_training_pairs(where)
        for s, neg in self.negatives.items():
            fname = f"negatives/{s}.npy"
            _expect(s in self.splits, where, fname, "a split of the same name")
            _check_shape(neg, (len(self.splits[s]), None), where, fname)
            _check_range(neg, 0, m, where, fname)
            _expect(not (neg == self.splits[s][:, 1:2]).any(), where, fname,
                    "negatives that differ from the row's positive track")
            outside = np.flatnonzero(~self.in_candidates(s, neg).all(axis=1))
            _expect(outside.size == 0, where, fname,
                    f"negatives in the split's candidate set ({self.split_info[s].candidates!r} in manifest.json; "
                    f"row {outside[:1].tolist()} has one outside it; a dataset an older bgmrec imported from a "
                    "bgmrec export can have such: import that export again)")
        for s, w in self.weights.items():
            fname = f"weights/{s}.npy"
            _expect(s in self.splits, where, fname, "a split of the same name")
            _check_shape(w, (len(self.splits[s]),), where, fname)
            numeric = np.issubdtype(w.dtype, np.integer) or np.issubdtype(w.dtype, np.floating)
            _expect(numeric and bool(np.isfinite(w).all() and (w >= 0).all() and (len(w) == 0 or w.sum() > 0)),
                    where, fname, "finite numeric weights >= 0, not all zero")

    def _check_provenance(self, where: str) -> None:
        """The provenance fields the library reads: ``user_prior_mean`` (:meth:`confounder_prior`), G finite
        non-negative numbers with a positive sum, and ``settings`` (the features' extraction), an object."""
        prior = self.provenance.get("user_prior_mean")
        if prior is not None:
            ok = isinstance(prior, list) and len(prior) == self.n_genres and all(
                isinstance(x, int | float) and not isinstance(x, bool) and _finite(x) and x >= 0 for x in prior)
            _expect(ok and sum(prior) > 0, where, "manifest.json provenance.user_prior_mean",
                    f"a list of {self.n_genres} finite numbers >= 0 with a positive sum (one per genre)")
        settings = self.provenance.get("settings")
        _expect(settings is None or isinstance(settings, dict), where, "manifest.json provenance.settings",
                f"a JSON object, found {type(settings).__name__}")

    def in_candidates(self, split: str, tracks: np.ndarray) -> np.ndarray:
        """Whether each of ``tracks`` is among ``split``'s candidates (its ``candidates`` in the manifest)."""
        kind = self.split_info[split].candidates
        new = np.asarray(self.track_new, bool)[tracks]
        return ~new if kind == "existing" else new if kind == "new" else np.ones(np.shape(tracks), bool)

    def _check_no_training_pairs(self, where: str) -> None:
        """A val or test row whose (video, track) pair is also a training row holds its answer in training."""
        train = [self.splits[s] for s in self.split_names("train") if s in self.splits]
        if not train:
            return
        train_rows = np.concatenate(train)
        for s in self.split_names("val") + self.split_names("test"):
            leaked = rows_trained_on(self.splits.get(s, np.zeros((0, 3), np.int64)), train_rows)
            _expect(leaked.size == 0, where, f"splits/{s}.npy",
                    f"no (video, track) pair of a training split (row {leaked[:1].tolist()} is one: the answer "
                    "to that query was trained on)")


def rows_trained_on(rows: np.ndarray, train_rows: np.ndarray) -> np.ndarray:
    """Indices of ``rows`` whose (video, track) pair (columns 0 and 1) is also one of ``train_rows``."""
    rows, train_rows = np.asarray(rows, np.int64), np.asarray(train_rows, np.int64)
    if not len(rows) or not len(train_rows):
        return np.zeros(0, np.int64)
    width = int(max(rows[:, 1].max(), train_rows[:, 1].max())) + 1
    seen = np.unique(train_rows[:, 0] * width + train_rows[:, 1])
    return np.flatnonzero(np.isin(rows[:, 0] * width + rows[:, 1], seen))


def check_split_name(name, where: str) -> None:
    """A split's name names its files (``splits/NAME.npy``): a non-empty name without a path separator or
    NUL, not starting with a dot, so that no name reads or writes outside the dataset folder."""
    if not isinstance(name, str) or not name or name.startswith(".") or any(c in name for c in "/\\\0"):
        raise DatasetError(f"{where}: split name {name!r} must be a file name: not empty, without '/', '\\' "
                           "or NUL, not starting with '.' (it names the split's files)")


def _finite(x: float) -> bool:
    """Whether the JSON number ``x`` is finite; an integer too large for a float is not."""
    try:
        return math.isfinite(x)
    except OverflowError:
        return False


def first_repeated(names) -> object | None:
    """The first of ``names`` that appears twice, or None."""
    seen = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return None


def check_distinct_ids(ids: list[str], csv_path: str) -> None:
    """A :class:`DatasetError` naming the CSV file unless its ``ids`` are distinct (an id on two rows would
    make every lookup by id find one of them)."""
    twice = first_repeated(ids)
    if twice is not None:
        raise DatasetError(f"{csv_path}: id {twice!r} is on two rows; expected distinct ids")


VIDEO_SOURCES = ("ugc", "pgc")  # a video's source: an upload, or a professional music video (the teacher's data)


def _expect(ok: bool, where: str, fname: str, expected: str) -> None:
    if not ok:
        raise DatasetError(f"{where}/{fname}: expected {expected}")


def _check_shape(arr: np.ndarray, shape: tuple, where: str, fname: str) -> None:
    ok = arr.ndim == len(shape) and all(s is None or s == a for s, a in zip(shape, arr.shape, strict=True))
    want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
    _expect(ok, where, fname, f"shape {want}, found {list(arr.shape)}")


CHECK_ROWS = 8192  # rows whose values check_float_matrix checks at once: its temporaries never a copy of the matrix


def check_float_matrix(arr: np.ndarray, shape: tuple, where: str, fname: str, rows: np.ndarray | None = None) -> None:
    """A :class:`DatasetError` naming ``where/fname`` unless ``arr`` has ``shape`` (None: any size), a float
    dtype and finite rows within float32's range, as features are used (the first row with NaN or inf named,
    or with a float64 value float32 cannot hold, which the cast would make inf). ``rows`` (positions): only
    those rows' values are checked, and read (of a memory-mapped matrix, the others stay on disk); the
    shape and dtype are the whole matrix's. Values are checked :data:`CHECK_ROWS` rows at a time."""
    _check_shape(arr, shape, where, fname)
    _expect(np.issubdtype(arr.dtype, np.floating), where, fname, f"a float array, found {arr.dtype}")
    at = np.arange(len(arr)) if rows is None else np.asarray(rows, np.int64).reshape(-1)
    axes = tuple(range(1, arr.ndim))
    largest = float(np.finfo(np.float32).max)
    for s in range(0, len(at), CHECK_ROWS):
        part = at[s:s + CHECK_ROWS]
        values = arr[part[0]:part[-1] + 1] if rows is None else arr[part]
        bad = part[~np.isfinite(values).all(axis=axes)]
        _expect(bad.size == 0, where, fname, f"finite values (row {bad[:1].tolist()} has NaN or inf)")
        if arr.dtype.itemsize > 4:
            beyond = part[(np.abs(values) > largest).any(axis=axes)]
            if beyond.size:
                _expect(False, where, fname, f"values within float32's range, as features are stored and used (row "
                                             f"[{beyond[0]}] has {np.abs(arr[beyond[0]]).max():.3g}, beyond "
                                             f"{largest:.3g})")


SPREAD_RATIO = 100.0  # a feature's standard deviation this many times its robust spread is set by rows far out
FAR_SPREADS = 1e4  # a row this many robust spreads from a feature's median is far out (heavy tails stay within)
FEW_ROWS = 0.05  # far rows that set a feature's deviation are at most this share of the rows (at least one)
ROBUST_SAMPLE = 20_000  # rows whose median and median absolute deviation stand for a feature's typical spread


@dataclass
class OutlyingRows:
    """Features whose standard deviation a few rows far from the rest set (:func:`outlying_rows`)."""

    columns: int  # features whose deviation those rows set
    rows: np.ndarray  # int64: the rows more than FAR_SPREADS robust spreads out in one of them, farthest first
    distance: np.ndarray  # float64: how far each of ``rows`` lies, in robust spreads


def outlying_rows(x: np.ndarray, chunk: int = 8192, seed: int = 0) -> OutlyingRows | None:
    """The few rows of ``x`` [n, d] that set features' standard deviations, or None. A feature is judged so when
    its deviation is more than :data:`SPREAD_RATIO` times its robust spread (1.4826 times the median absolute
    deviation about the median, over at most :data:`ROBUST_SAMPLE` rows, seeded) and some rows, at most
    :data:`FEW_ROWS` of them, lie more than :data:`FAR_SPREADS` robust spreads out: a model that standardises by
    that deviation (every network, CCA) shrinks every other row of the feature toward zero. One video of 300
    whose features were 1e6 took a two-tower model below chance, without a word. Heavy-tailed features
    (lognormal, Pareto, Cauchy samples of up to 10^5 rows), two tight modes, and features of zero robust
    spread (mostly one value) are not judged. Memory: a few chunks of ``chunk`` rows at a time."""
    x = np.asarray(x)
    n = len(x)
    if n < 3 or x.ndim != 2:
        return None
    sample = np.sort(np.random.default_rng(seed).choice(n, ROBUST_SAMPLE, replace=False)) if n > ROBUST_SAMPLE \
        else np.arange(n)
    typical = np.asarray(x[sample], np.float64)
    median = np.median(typical, axis=0)
    spread = 1.4826 * np.median(np.abs(typical - median), axis=0)
    total, squares, far_count = np.zeros(x.shape[1]), np.zeros(x.shape[1]), np.zeros(x.shape[1], np.int64)
    judged_spread = np.where(spread > 0, spread, np.inf)  # zero spread: never far
    for s in range(0, n, chunk):  # every row: one far out need not be in the sample
        part = np.asarray(x[s:s + chunk], np.float64) - median
        total += part.sum(axis=0)
        squares += (part ** 2).sum(axis=0)
        far_count += (np.abs(part) > FAR_SPREADS * judged_spread).sum(axis=0)
    deviation = np.sqrt(np.maximum(squares / n - (total / n) ** 2, 0.0))
    judged = np.flatnonzero((deviation > SPREAD_RATIO * judged_spread) & (far_count > 0)
                            & (far_count <= max(1, int(FEW_ROWS * n))))
    if not judged.size:
        return None
    far = np.concatenate([(np.abs(np.asarray(x[s:s + chunk, judged], np.float64) - median[judged])
                           / spread[judged]).max(axis=1) for s in range(0, n, chunk)])
    rows = np.flatnonzero(far > FAR_SPREADS)
    rows = rows[np.argsort(-far[rows], kind="stable")]
    return OutlyingRows(len(judged), rows, far[rows])


NARROW_SHARE = 0.1  # narrow features (:func:`narrow_columns`) are worth a warning from this share of a file's on


def narrow_columns(x: np.ndarray, floor: float, chunk: int = 8192) -> np.ndarray:
    """Columns of ``x`` [n, d] that vary, but with a standard deviation of at most ``floor``: the networks'
    standardisation takes a feature that narrow for a constant (:class:`~bgmrec.models.layers.Standardizer`),
    so a file of small-scale values (1e-5 units, say) is all 0 to them. A constant column, and the float32
    rounding of one (a deviation within 1e-6 of its magnitude), is not such a column. Memory: a chunk at a time."""
    x = np.asarray(x) if not hasattr(x, "shape") else x
    n = len(x)
    if n < 2 or x.ndim != 2:
        return np.empty(0, np.int64)
    first = np.asarray(x[0], np.float64)  # sums about the first row: no cancellation for large magnitudes
    total, squares = np.zeros(x.shape[1]), np.zeros(x.shape[1])
    for s in range(0, n, chunk):
        part = np.asarray(x[s:s + chunk], np.float64) - first
        total += part.sum(axis=0)
        squares += (part ** 2).sum(axis=0)
    shift = total / n
    deviation = np.sqrt(np.maximum(squares / n - shift ** 2, 0.0))
    return np.flatnonzero((deviation <= floor) & (deviation > 1e-6 * np.abs(first + shift)) & (deviation > 0))


def _check_range(arr: np.ndarray, lo: int, hi: int, where: str, fname: str) -> None:
    arr = np.asarray(arr)
    _expect(np.issubdtype(arr.dtype, np.integer), where, fname, f"integer ids, found {arr.dtype}")
    if arr.size:
        bad = np.flatnonzero((arr < lo) | (arr >= hi))
        _expect(bad.size == 0, where, fname,
                f"ids in [{lo}, {hi}) (entry {bad[:1].tolist()} is {arr.ravel()[bad[:1]].tolist()})")


# ---- on-disk format --------------------------------------------------------------------------------

def atomic_write_dir(out: Path, write, marker: str = "manifest.json", version_key: str = "format_version",
                     what: str = "a dataset", rescue: Callable[[Path], None] | None = None) -> None:
    """Build a folder under a temporary name beside ``out``, then rename it into place.

    An existing ``out`` is replaced only when it is an empty folder or ``what`` this writer makes: its
    ``marker`` file holds a JSON object with ``version_key`` and no ``kind`` (an extracted catalogue or
    videos folder has one). Anything else there is refused before any work, never deleted. What a killed
    write of ``out`` left is tidied first (:func:`recover_killed_write`, given ``rescue``).
    """
    out = Path(os.path.realpath(out)) if Path(out).is_symlink() else Path(out)  # written through, as --json's
    recover_killed_write(out, rescue)
    check_replaceable(out, marker, version_key, what)
    make_parent(out)
    # named before it is made, inside the try: a stop (Ctrl-C, SIGTERM) just after it is made removes it too
    tmp = temporary_beside(out)
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    made = False  # this call made tmp (never removes one it did not make)
    try:
        tmp.mkdir()  # permissions as the umask says (mkdtemp made the finished folder 0700)
        made = True
        write(tmp)
        if out.exists():
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException as e:
        if old.exists() and not out.exists():  # stopped between the two renames: the old folder back
            old.rename(out)
        if made or (tmp.is_dir() and not any(tmp.iterdir())):  # a stop just after mkdir: made is still False
            shutil.rmtree(tmp, ignore_errors=True)
        raise_named(e, out, tmp)
        raise


def check_replaceable(out: Path, marker: str = "manifest.json", version_key: str = "format_version",
                      what: str = "a dataset") -> None:
    """Refuse (:class:`DatasetError`) an ``out`` that :func:`atomic_write_dir` may not replace: a file, or a
    folder neither empty nor ``what`` it writes (its ``marker``'s JSON object with ``version_key`` and no
    ``kind``). For writers that do work beside ``out`` before that call (build-dataset's copied rows), first."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out}: exists and is not a folder; refusing to replace it")
    if out.is_dir() and any(out.iterdir()) and not _written_here(out / marker, version_key):
        raise DatasetError(f"{out}: the folder is not empty and is not {what} ({describe_folder(out, marker, what)}); "
                           "refusing to replace it (choose another output folder or empty this one)")


def temporary_beside(path: Path) -> Path:
    """The hidden temporary name ``.NAME.tmp-PID-RANDOM`` beside ``path`` that the atomic writers fill before
    renaming it into place (:func:`recover_killed_write` tidies a dead process's; :func:`is_leftover` knows it)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def make_parent(out: Path) -> None:
    """Make the folder ``out`` goes in (and its parents); a :class:`DatasetError` when a file stands in the way."""
    try:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # a file where a parent folder must be
        raise DatasetError(f"{out}: cannot be made: a file stands where one of its parent folders must be") from None


@contextlib.contextmanager
def scratch_folder(out: Path):
    """A temporary folder beside ``out`` for files to be moved into it (:func:`save_dataset`'s ``written``: on
    the same file system, a rename), removed on leaving; named as :func:`atomic_write_dir`'s, so a killed
    process's is tidied by the next write of ``out``. A failed write in it (a full disk) names the file under
    ``out``."""
    out = Path(out)
    make_parent(out)
    scratch = temporary_beside(out)
    try:
        scratch.mkdir()
        yield scratch
    except BaseException as e:
        raise_named(e, out, scratch)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def writing_lock(out: Path, option: str = "--out") -> Iterator[None]:
    """Hold, while the block runs, an advisory lock (``flock``) on ``.NAME.lock`` beside the folder ``out``, so
    that a second bgmrec writing ``out`` at the same time is refused at once, naming the process that holds it: two
    ``train --out RUN`` at once each trained, and the one that ended last replaced the other's run without a word
    (an interruption audit). The lock file is removed on leaving; a killed holder's lock is released by the
    system, its file reused (and counted a leftover: :func:`is_leftover`). The folder ``out`` goes in is made
    first; where the file cannot be made or locked (a read-only folder, a file system without ``flock``), the
    block runs unlocked, as before: the write itself then says what is wrong."""
    try:
        import fcntl
    except ImportError:  # not POSIX (Windows): no flock, unlocked as before
        yield
        return
    out = Path(os.path.realpath(out)) if Path(out).is_symlink() else Path(out)  # the folder written, as below
    lock, fd = out.with_name(f".{out.name}.lock"), None
    made = next((p for p in reversed(out.parents) if not p.exists()), None)  # the top folder made here, if any
    try:
        make_parent(out)  # the folder to lock in (a first run into runs/new/ went unlocked)
    except DatasetError:  # a file where a parent folder must be: the write itself says so
        yield
        return
    try:
        while fd is None:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                os.close(fd)
                raise DatasetError(f"{option + ' ' if option else ''}{out}: another bgmrec"
                                   f"{f' (process {holder})' if holder else ''} is writing it now; wait for it to "
                                   "end, or choose another folder") from None
            try:
                if os.stat(lock).st_ino != os.fstat(fd).st_ino:  # removed by its last holder meanwhile: anew
                    os.close(fd)
                    fd = None
            except FileNotFoundError:
                os.close(fd)
                fd = None
        with contextlib.suppress(OSError):  # who holds it, for the refusal's words (a full disk: unsaid)
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
    except DatasetError:
        raise
    except OSError:  # no lock to be had here: as before, unlocked
        if fd is not None:
            os.close(fd)
        fd = None
    try:
        yield
    finally:
        if fd is not None:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            os.close(fd)
        folder = out.parent
        while made is not None:  # the folders made for the lock alone, left empty (a refused or failed write)
            try:
                folder.rmdir()
            except OSError:  # not empty (the write made its output), or gone
                break
            if folder == made:
                break
            folder = folder.parent


def recover_killed_write(out: Path, rescue: Callable[[Path], None] | None = None) -> None:
    """Tidy what a write of the folder ``out`` by :func:`atomic_write_dir` left when its process was killed
    (``kill -9``, a power cut), which no handler saw: the previous folder, moved aside as ``.NAME.old-PID`` just
    before the new one was to take its place, is put back when ``out`` is missing (the newest, if several; the
    others, and any when the new one is there, are removed); a half-written ``.NAME.tmp-PID-*`` is removed, after
    ``rescue`` (when given) was called with it to move out what is worth keeping (a run's finished teacher:
    :func:`bgmrec.runs.rescue_killed_teacher`). Only entries of processes no longer running on this machine are
    touched (a live writer's are its own; a writer on another host sharing the folder cannot be told from a dead
    one)."""
    out = Path(out)
    if not out.parent.is_dir():
        return
    dead = []
    for entry in out.parent.glob(f".{glob.escape(out.name)}.*"):
        kind, _, rest = entry.name[len(out.name) + 2:].partition("-")
        pid = rest.split("-")[0]
        if kind in ("old", "tmp") and pid.isdigit() and entry.is_dir() and not _process_runs(int(pid)):
            try:
                dead.append((kind == "old", entry.stat().st_mtime, entry))
            except FileNotFoundError:  # tidied by another process meanwhile
                continue
    for is_old, _, entry in sorted(dead, key=lambda d: (d[0], d[1]), reverse=True):  # the newest .old first
        if is_old and not out.exists():
            try:
                entry.rename(out)
            except FileNotFoundError:  # another process put it back first
                continue
            print(f"note: {out}: put back the previous folder, which a killed write had moved aside", file=sys.stderr)
        else:
            if rescue is not None and not is_old:
                rescue(entry)
            shutil.rmtree(entry, ignore_errors=True)


def remove_killed_temporaries(path: Path) -> int:
    """Remove the temporary files (``.NAME.tmp-PID-*``, :func:`temporary_beside`) that writes of the file ``path``
    killed midway (``kill -9``, an out-of-memory kill) left beside it, of processes no longer running; how many.
    No handler saw those stops: a killed backfill's half-written answers stayed, hidden, beside the file. Only
    names :func:`temporary_beside` makes, of this machine's processes (a writer on another host sharing the
    folder cannot be told from a dead one)."""
    path, removed = Path(path), 0
    made = re.compile(rf"\.{re.escape(path.name)}\.tmp-(\d+)-[0-9a-f]{{8}}")
    for entry in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        found = made.fullmatch(entry.name)
        if found and entry.is_file() and not entry.is_symlink() and not _process_runs(int(found[1])):
            try:
                entry.unlink()
            except OSError:  # tidied by another process meanwhile, or not ours to remove
                continue
            removed += 1
    return removed


def _process_runs(pid: int) -> bool:
    """True when a process ``pid`` runs (or cannot be told apart from one: another user's)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # OverflowError: no process can have such an id
        return False
    except OSError:
        return True
    return True


def is_leftover(path: Path) -> bool:
    """True for what a write killed midway leaves beside its target: the hidden ``.NAME.tmp*`` and
    ``.NAME.old-*`` entries the atomic writers here (and :meth:`Recommender.save`) make, and the ``.NAME.lock``
    file of :func:`writing_lock` (its lock went with the process)."""
    name = Path(path).name
    return name.startswith(".") and (".tmp" in name or ".old-" in name or name.endswith(".lock"))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (large files are never held in memory)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def describe_folder(folder: Path, marker: str, what: str) -> str:
    """What a folder a writer of ``what`` (e.g. "a model run") refuses to replace is, for its message: "it
    is" another bgmrec folder (:func:`other_folder`) or a dataset; that its ``marker`` is not one this bgmrec
    reads when it is of the writer's own kind; else that it has no ``marker`` of that kind."""
    other = other_folder(folder)
    if other is not None and (folder / marker).is_file() and other[0].startswith(what):
        return f"its {marker} is unreadable or not of this bgmrec"  # e.g. a run with a damaged config.json
    if other is not None:
        return f"it is {other[0]}"
    if _written_here(folder / "manifest.json", "format_version"):
        return "it is a dataset"
    return f"no {marker} of one"


def _written_here(marker: Path, version_key: str) -> bool:
    try:
        obj = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and version_key in obj and "kind" not in obj


def raise_named(e: BaseException, target: Path, tmp: Path) -> None:
    """Raise ``e``, an :class:`OSError` met while writing ``target`` through its temporary ``tmp``, again naming
    ``target`` (a file under ``tmp``: the same file under ``target``); return for anything else. A full disk
    failed a ``write()`` with no file name (numpy's short write with no errno either) and the command line
    printed a traceback; a read-only folder was named by the temporary name the user never gave. The errno keeps
    its subclass (``OSError(ENOENT, ...)`` is a :class:`FileNotFoundError`)."""
    if not isinstance(e, OSError):
        return
    name = target
    if e.filename is not None:
        try:
            name = target / Path(os.fsdecode(e.filename)).relative_to(tmp)
        except ValueError:  # another path than the one written: its own name says more
            return
    elif not (e.errno in WRITE_ERRNOS or (e.errno is None and SHORT_WRITE.fullmatch(str(e)))):
        return  # no file named and not a failed write (a pipe, a library's own error): as it was
    why = e.strerror or f"{e}: the write was cut short (a full disk?)"
    raise OSError(e.errno, why, str(name)) from e


#: errors of a write() that name no file: a full disk or quota, a file too large, a read-only or failing device
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}
# numpy's tofile cut short, or refused the space it asked for (fallocate), neither with an errno
SHORT_WRITE = re.compile(r"\d+ requested and \d+ written|Not enough free space to write \d+ bytes after offset \d+")


def remove_leftover(tmp: Path) -> None:
    """Remove a failed write's temporary file, if it was made: on a read-only file system, where even removing a
    file that is not there fails (EROFS), the write's own error, naming its target, is what is said."""
    with contextlib.suppress(OSError):
        tmp.unlink()


def replace_atomically(path: Path, fill: Callable[[Path], None]) -> None:
    """Make the file ``path`` by ``fill``-ing a temporary file beside it, then renaming that into place: a
    failed or stopped write leaves the old file as it was and no temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_beside(path)
    try:
        fill(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        remove_leftover(tmp)
        raise_named(e, path, tmp)
        raise


def save_npy_atomic(path: Path, arr: np.ndarray) -> None:
    """Write one ``.npy`` file (no pickles) through :func:`replace_atomically`."""
    def fill(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: given a name, np.save would append ".npy" to it
            np.save(f, arr, allow_pickle=False)

    replace_atomically(path, fill)


def save_npy_rows(path: Path, source: np.ndarray, rows: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Write ``source[rows]`` as ``dtype`` to the ``.npy`` file ``path``, byte for byte as ``np.save`` would, a
    block of :data:`CHECK_ROWS` rows at a time: of a memory-mapped ``source`` only those rows are read, and the
    selection is never held whole (``build-dataset``'s features). Returns the file memory-mapped."""
    rows = np.asarray(rows, np.int64)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": (len(rows), *source.shape[1:])}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for s in range(0, len(rows), CHECK_ROWS):
            np.ascontiguousarray(source[rows[s:s + CHECK_ROWS]], dtype).tofile(f)
    return load_npy(path)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) through :func:`replace_atomically`."""
    replace_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_files_together(folder: Path, writers: dict[str, Callable[[Path], None]]) -> None:
    """Write the files ``writers`` name into ``folder``, each writer given a temporary path to fill, and
    rename them into place only when all are written: a failure while writing (a full disk, a stop) leaves
    the folder's earlier files as they were, never a new file beside old ones it does not fit, and no
    temporary file behind. The renames follow the writers' order (a manifest marking completion goes last);
    only a stop between two of them, a moment, can leave some files renamed and not the others."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmps: dict[str, Path] = {}
    try:
        for name, write in writers.items():
            tmps[name] = temporary_beside(folder / name)
            try:
                write(tmps[name])
            except OSError as e:
                raise_named(e, folder / name, tmps[name])
                raise
        for name, tmp in tmps.items():
            os.replace(tmp, folder / name)
    finally:
        for tmp in tmps.values():
            remove_leftover(tmp)


def write_json_atomic(path: Path, obj) -> None:
    """Write ``obj`` as strict JSON through :func:`write_text_atomic`: a float NaN or infinity, which JSON
    has no literal for (Python would write ``NaN``, which other JSON readers refuse), is written as null."""
    write_text_atomic(path, json.dumps(strict_json(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


def strict_json(obj):
    """``obj`` with every non-finite float (in dicts, lists and tuples, recursively) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict_json(v) for v in obj]
    return obj


def save_dataset(ds: Dataset, out: Path, extra_files: dict[str, np.ndarray] | None = None,
                 extra_json: dict[str, object] | None = None, written: dict[str, Path] | None = None) -> Path:
    """Validate ``ds`` and write it to ``out`` atomically.

    ``extra_files`` / ``extra_json`` map relative paths (e.g. ``truth/track_content.npy``) to
    arrays / JSON objects written alongside, inside the same atomic rename. ``written`` maps relative paths of
    the dataset's arrays (e.g. ``features/video_visual.npy``) to ``.npy`` files already holding them as they
    would be written (:func:`save_npy_rows`, the array in ``ds`` memory-mapped from it), moved into the folder
    instead of written again (renamed, on the same file system).
    """
    ds.validate(str(out))
    out = Path(out)
    unknown = sorted(set(written or {}) - {f"features/{name}.npy" for name in FEATURE_FILES})
    if unknown:
        raise ValueError(f"save_dataset: written names files that are not the dataset's feature arrays: {unknown}")

    def write(tmp: Path) -> None:
        manifest = {
            "format_version": FORMAT_VERSION,
            "counts": {"videos": ds.n_videos, "tracks": ds.n_tracks, "uploaders": ds.n_uploaders,
                       "genres": ds.n_genres},
            "modalities": ds.dims(),
            "genres": list(ds.genres),
            "splits": {s: {"rows": int(len(r)), "role": ds.split_info[s].role,
                           "candidates": ds.split_info[s].candidates,
                           "negatives": int(ds.negatives[s].shape[1]) if s in ds.negatives else 0,
                           "weights": s in ds.weights}
                       for s, r in ds.splits.items()},
            "provenance": ds.provenance,
        }
        with open(tmp / "videos.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["id", "uploader", "source"])
            w.writerows(zip(ds.video_ids, ds.video_uploader.tolist(), ds.video_source, strict=True))
        with open(tmp / "tracks.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["id", "genre", "title", "artist", "new"])
            w.writerows(zip(ds.track_ids, ds.track_genre.tolist(), ds.track_title, ds.track_artist,
                            ds.track_new.astype(int).tolist(), strict=True))
        arrays = {
            "uploaders.npy": np.asarray(ds.uploader_pref, np.float32),
            "features/video_visual.npy": np.asarray(ds.video_visual, np.float32),
            "features/video_text.npy": np.asarray(ds.video_text, np.float32),
            "features/video_text_mask.npy": np.asarray(ds.video_text_mask, bool),
            "features/music.npy": np.asarray(ds.music, np.float32),
        }
        arrays.update({f"splits/{s}.npy": np.asarray(r, np.int64) for s, r in ds.splits.items()})
        arrays.update({f"negatives/{s}.npy": np.asarray(r, np.int64) for s, r in ds.negatives.items()})
        arrays.update({f"weights/{s}.npy": np.asarray(r, np.float64) for s, r in ds.weights.items()})
        arrays.update(extra_files or {})
        for rel, arr in arrays.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            if rel in (written or {}):
                shutil.move(written[rel], tmp / rel)
            else:
                np.save(tmp / rel, arr, allow_pickle=False)
        for rel, obj in (extra_json or {}).items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(json.dumps(obj, indent=2) + "\n")
        # the manifest goes last: a folder without one is never a dataset
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")

    atomic_write_dir(out, write)
    ds.root = out
    return out


#: what to do with a CSV file that is not UTF-8 text, as every CSV reader says it
SAVE_AS_UTF8 = "save the file as UTF-8 (a spreadsheet's 'CSV UTF-8'; Latin-1 or Windows-1252 accents are not)"


def check_is_file(path: Path, label: str | None = None, missing: str = "file is missing", kind: str = "file") -> None:
    """A :class:`DatasetError` naming ``label`` (default ``path``) unless ``path`` is a file: "is a folder, not a
    ``kind``" for a folder (it said the file was missing), a pipe or a device as such, a link to nothing for a
    symbolic link whose target is missing or a loop (said to be missing too), else ``missing``."""
    path = Path(path)
    if not path.is_file():
        said = (f"is a folder, not a {kind}" if path.is_dir() else
                "is not a regular file (a pipe, a socket or a device)" if path.exists() else
                "is a symbolic link to nothing (its target is missing, or a loop)" if path.is_symlink() else missing)
        raise DatasetError(f"{label or path}: {said}")


def load_npy(path: Path, where: str | None = None, mmap: bool = True) -> np.ndarray:
    """Load an ``.npy`` file without pickle; errors name the file."""
    path = Path(path)
    label = where or str(path)
    check_is_file(path, label)
    _check_npy_header(path, label)
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DatasetError(f"{label}: not a readable .npy array ({e})") from None


def read_npy_header(f, label: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from the header of the ``.npy`` file open at its start in ``f``, which is left at the data.

    Errors are :class:`DatasetError` naming ``label``: not a ``.npy`` file, an unreadable header, a
    header version other than 1.0 and 2.0 (what NumPy writes).
    """
    if f.read(6) != b"\x93NUMPY":
        raise DatasetError(f"{label}: not a .npy file (no NumPy header)")
    f.seek(-6, os.SEEK_CUR)
    try:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise DatasetError(f"{label}: unsupported .npy version {version}")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    except (ValueError, OSError, EOFError) as e:
        raise DatasetError(f"{label}: not a readable .npy array ({e})") from None
    return shape, dtype


def _check_npy_header(path: Path, label: str) -> None:
    """Refuse a file that is not ``.npy`` or whose header promises more data than the file holds."""
    with open(path, "rb") as f:
        shape, dtype = read_npy_header(f, label)
        data_start = f.tell()
    if dtype.hasobject:
        raise DatasetError(f"{label}: holds Python objects (pickle); expected a numeric array")
    need = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    have = path.stat().st_size - data_start
    if need > have:
        raise DatasetError(f"{label}: its header declares shape {list(shape)} ({dtype}, {need} bytes) but the "
                           f"file holds {have} bytes of data (truncated?)")


def dataset_fingerprint(root: Path) -> str:
    """A short hash of what a dataset's splits hold: its manifest without ``provenance`` (which names the
    folders it was built or imported from) and its split files. Copies of a dataset, wherever they are,
    and the same data imported twice share it; features are not read (cheap at any size), so features
    changed under unchanged splits keep it: :func:`features_fingerprint` tells those apart."""
    import hashlib

    root = Path(root)
    manifest = read_json(root / "manifest.json")
    manifest.pop("provenance", None)
    h = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode())
    for path in sorted((root / "splits").glob("*.npy")):
        h.update(b"\0" + path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


# the fingerprints of a dataset that runs, grids, teachers and figures record (bgmrec.runs.dataset_record)
FINGERPRINTS = ("data_fingerprint", "features_fingerprint", "labels_fingerprint")
LABEL_FILES = ("videos.csv", "tracks.csv", "uploaders.npy", "uploaders.json")  # and negatives/, weights/


def labels_fingerprint(root: Path) -> str:
    """A short hash of what a dataset says of its videos, tracks and uploaders beside its splits and features:
    the videos' uploaders, the tracks' genres, titles and new-music flags, the uploaders' tastes, the frozen
    negatives and IPW weights (:data:`LABEL_FILES`, ``negatives/`` and ``weights/``), which
    :func:`dataset_fingerprint` leaves out. A dataset built again with another ``--seed`` keeps a time split
    but not its negatives, and a catalogue relabelled keeps its features: both change this one."""
    import hashlib

    root = Path(root)
    files = [root / name for name in LABEL_FILES] + sorted((root / "negatives").glob("*.npy")) + sorted(
        (root / "weights").glob("*.npy"))
    h = hashlib.sha256()
    for path in files:
        h.update(f"\0{path.relative_to(root).as_posix()}\0{sha256_file(path) if path.is_file() else '-'}".encode())
    return h.hexdigest()[:16]


FEATURE_FILES = ("video_visual", "video_text", "video_text_mask", "music")  # features/<name>.npy, as loaded


def features_fingerprint(root: Path) -> str:
    """A short hash of a dataset's feature files (the :data:`FEATURE_FILES` it loads, read in chunks), which
    :func:`dataset_fingerprint` leaves out: features extracted again under the same splits change it, another
    file left in ``features/`` does not. Reads every feature byte (about 0.2 s per 100 MB)."""
    import hashlib

    h = hashlib.sha256()
    for name in FEATURE_FILES:
        path = Path(root) / "features" / f"{name}.npy"
        h.update(f"\0{name}\0{sha256_file(path) if path.is_file() else '-'}".encode())
    return h.hexdigest()[:16]


def parse_json_file(path: Path, label: str):
    """The JSON value in the UTF-8 file ``path``; a :class:`DatasetError` starting with ``label`` when it is not
    valid JSON (nested too deeply to parse included)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{label}: not valid JSON ({e})") from None
    except RecursionError:
        raise DatasetError(f"{label}: not valid JSON (nested too deeply to parse)") from None


def read_json(path: Path, where: str | None = None) -> dict:
    """A JSON object from ``path``; a :class:`DatasetError` naming the file (or ``where``) when it is missing,
    not UTF-8 JSON or not an object."""
    label = where or str(path)
    check_is_file(path, label)
    obj = parse_json_file(path, label)
    if not isinstance(obj, dict):
        raise DatasetError(f"{label}: expected a JSON object")
    return obj


def separator_hint(header) -> str:
    """" (...)" saying that a CSV header read as one field holding ';', a tab or '|' looks separated by it (bgmrec
    reads comma-separated files), to end a missing-column message; "" otherwise."""
    fields = list(header or ())
    sep = next((c for c in (";", "\t", "|") if len(fields) == 1 and c in str(fields[0])), None)
    return "" if sep is None else (f" (one field holding {sep!r}: separated by {sep!r}? bgmrec reads "
                                   "comma-separated files)")


def _read_csv(path: Path, columns: list[str]) -> dict[str, list[str]]:
    """The ``columns`` of a dataset's CSV file, checked; a byte-order mark (a spreadsheet's "CSV UTF-8") and blank
    lines (one left at the end by an editor) are passed over, as the other CSV files bgmrec reads pass them."""
    check_is_file(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header != columns:
                raise DatasetError(f"{path}: expected header {','.join(columns)}, found {header}"
                                   + separator_hint(header))
            rows, lines = [], []
            for r in reader:
                if r:
                    rows.append(r)
                    lines.append(reader.line_num)
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); {SAVE_AS_UTF8}") from None
    except csv.Error as e:  # e.g. a field longer than the csv module reads (131,072 characters)
        raise DatasetError(f"{path}: not a readable CSV file ({e})") from None
    bad = [i for i, r in enumerate(rows) if len(r) != len(columns)]
    if bad:
        raise DatasetError(f"{path}: line {lines[bad[0]]} has {len(rows[bad[0]])} fields, expected {len(columns)}")
    return {c: [r[i] for r in rows] for i, c in enumerate(columns)}


def _ints(values: list[str], where: str) -> np.ndarray:
    try:
        return np.asarray([int(v) for v in values], dtype=np.int64)
    except ValueError as e:
        raise DatasetError(f"{where}: expected integers ({e})") from None


_JSON_KINDS = {int: "integer", str: "string", dict: "object", list: "list", bool: "true/false"}


def json_kind(value) -> str:
    """What ``value``, read from JSON, is in JSON's words: null, true/false, an integer, a number, a string, ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    return _JSON_KINDS.get(type(value)) or ("number" if isinstance(value, float) else type(value).__name__)


def check_field_kinds(man: dict, kinds: dict[str, type], where: str) -> None:
    """Refuse a field of the JSON object ``man`` (read from ``where``) present but not of its kind in ``kinds``, in one
    line naming the field (a ``"content_hash": 5`` was a TypeError: 'int' object is not subscriptable)."""
    for key, kind in kinds.items():
        if key in man and (not isinstance(man[key], kind) or kind is int and isinstance(man[key], bool)):
            raise DatasetError(f"{where}: field {key!r} must be a JSON {_JSON_KINDS[kind]}, "
                               f"found {json_kind(man[key])}")


def _flags(values: list[str], where: str, row: str = "row") -> np.ndarray:
    """0/1 values as bool (a 2 was read as True); an error names the first other value's ``row`` by position."""
    ints = _ints(values, where)
    bad = np.flatnonzero((ints != 0) & (ints != 1))
    if bad.size:
        raise DatasetError(f"{where}: expected 0 or 1, found {ints[bad[0]]} ({row} {bad[0]})")
    return ints.astype(bool)


def _ids(arr: np.ndarray) -> np.ndarray:
    """Integer id arrays as int64 (what indexing expects); anything else is left for ``validate`` to name."""
    return np.asarray(arr, np.int64) if np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.int64 else arr


# The other folders bgmrec writes, as a dataset's loader and the writers that refuse to replace them tell them
# apart: the ``kind`` of an extracted folder's manifest (``CATALOG_KIND`` of bgmrec.features.audio, ``VIDEOS_KIND``
# of bgmrec.features.video, which import this module) and the record file of a folder without a manifest
# (``SIDECAR`` of bgmrec.data.tt150k; a run's config). Each: (what it is, what to do to get a dataset from it).
OTHER_KINDS = {
    "music-catalog": ("a music catalogue (written by extract-music)", "make one with build-dataset"),
    "video-features": ("a videos folder (written by extract-videos)", "make one with build-dataset"),
}
OTHER_RECORDS = {
    "bgmrec_export.json": ("a TT-150k export (written by export-tt150k)", "import it with import-tt150k"),
    "config.json": ("a model run (written by train)", None),
}


def other_folder(folder: Path) -> tuple[str, str | None] | None:
    """What ``folder`` is when it is a bgmrec folder but not a dataset, and how to get a dataset from it
    (``OTHER_KINDS``, ``OTHER_RECORDS``; an unknown manifest ``kind`` is named as such); None for a dataset, a
    folder bgmrec did not write, or a missing one."""
    try:
        man = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        man = None
    if isinstance(man, dict) and "kind" in man:
        kind = man["kind"]
        known = OTHER_KINDS.get(kind) if isinstance(kind, str) else None
        return known or (f"a folder of kind {kind!r} by its manifest.json", None)
    if man is None and (folder / "manifest.json").is_file():
        return None  # an unreadable manifest: the dataset loader names what is wrong with it
    if man is None:
        return next((what for name, what in OTHER_RECORDS.items() if (folder / name).is_file()), None)
    return None


#: a folder of media files given where an extracted or built folder goes: its files' kind -> (their extensions, the
#: command that extracts them)
MEDIA_FOLDERS = {"audio": ((".wav", ".mp3", ".ogg", ".flac", ".m4a"), "extract-music"),
                 "video": ((".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi"), "extract-videos")}
#: files that lie beside media files (a downloader's metadata, a thumbnail, subtitles): not counted against them
SIDECAR_SUFFIXES = (".json", ".jpg", ".jpeg", ".png", ".webp", ".txt", ".nfo", ".srt", ".vtt", ".description")


def media_folder(folder: Path, scan: int = 10_000) -> str | None:
    """What ``folder`` is when it has no manifest.json and media files are most of the files among its first
    ``scan`` entries (at any depth; left out: hidden ones, as the extractors leave them out, those of a bgmrec
    folder inside it, and the metadata that lies beside media, :data:`SIDECAR_SUFFIXES`), in words with the
    command that extracts them: raw audio or videos given where an extracted catalogue, a videos folder or a
    dataset goes (which was "manifest.json: file is missing", a file the user had never heard of); else None."""
    import itertools

    folder = Path(folder)
    if (folder / "manifest.json").exists():
        return None
    counts, files = dict.fromkeys(MEDIA_FOLDERS, 0), 0
    for p in itertools.islice(folder.rglob("*"), scan):
        parts = p.relative_to(folder).parts
        if any(part.startswith(".") for part in parts) or p.suffix.lower() in SIDECAR_SUFFIXES or any(
                (folder.joinpath(*parts[:i]) / "manifest.json").is_file() for i in range(1, len(parts))) \
                or not p.is_file():
            continue
        files += 1
        for kind, (extensions, _) in MEDIA_FOLDERS.items():
            counts[kind] += p.suffix.lower() in extensions
    kind = max(counts, key=counts.__getitem__)
    if counts[kind] * 2 <= files:
        return None
    return (f"a folder of {kind} files, not extracted yet (bgmrec {MEDIA_FOLDERS[kind][1]} {folder} --out FOLDER "
            "extracts them)")


def folder_is(folder: Path) -> str | None:
    """What ``folder`` is, when it is not the kind its reader wanted, in words: another bgmrec folder
    (:func:`other_folder`), a dataset, or a folder of media files (:func:`media_folder`); None when it is none of
    these."""
    other = other_folder(folder)
    if other is not None:
        return other[0]
    if _written_here(folder / "manifest.json", "format_version"):
        return "a dataset (written by simulate, build-dataset or import-tt150k)"
    return media_folder(folder)


def load_dataset(root: Path, mmap: bool = True) -> Dataset:
    """Load and validate a dataset folder written by :func:`save_dataset` (or an importer)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a dataset folder ({'a file' if root.exists() else 'it does not exist'})")
    other = other_folder(root)  # an extracted catalogue, a run...: no dataset field would be the first thing said
    if other is not None:
        raise DatasetError(f"{root} is {other[0]}, not a dataset{f': {other[1]}' if other[1] else ''}")
    media = media_folder(root)
    if media is not None:
        raise DatasetError(f"{root} is {media}, not a dataset; build-dataset makes one from the extracted folders")
    man = read_json(root / "manifest.json", f"{root}/manifest.json")
    kinds = {"format_version": int, "counts": dict, "modalities": dict, "genres": list, "splits": dict,
             "provenance": dict}
    for key in kinds:
        if key not in man and key != "provenance":
            raise DatasetError(f"{root}/manifest.json: missing field {key!r}")
    check_field_kinds(man, kinds, f"{root}/manifest.json")
    if man["format_version"] != FORMAT_VERSION:
        raise DatasetError(f"{root}/manifest.json: format_version {man['format_version']!r}, "
                           f"this bgmrec reads {FORMAT_VERSION}")
    if not all(isinstance(g, str) for g in man["genres"]):
        raise DatasetError(f"{root}/manifest.json: genres must be a list of names (strings)")
    vids = _read_csv(root / "videos.csv", ["id", "uploader", "source"])
    trks = _read_csv(root / "tracks.csv", ["id", "genre", "title", "artist", "new"])

    def arr(rel: str) -> np.ndarray:
        return load_npy(root / rel, f"{root}/{rel}", mmap)

    for s in man["splits"]:  # before any split's file is opened by its name
        check_split_name(s, f"{root}/manifest.json")
    check_field_kinds(man["splits"], dict.fromkeys(man["splits"], dict), f"{root}/manifest.json: splits")
    try:
        split_info = {s: SplitInfo(v["role"], v["candidates"]) for s, v in man["splits"].items()}
    except (TypeError, KeyError) as e:
        raise DatasetError(f"{root}/manifest.json: split entries need 'role' and 'candidates' ({e})") from None
    for s, entry in man["splits"].items():  # read by truthiness, "false" was a file to open and null no figures
        check_field_kinds(entry, {"negatives": int, "weights": bool, "rows": int}, f"{root}/manifest.json: splits.{s}")
        for field_name, rel in (("negatives", f"negatives/{s}.npy"), ("weights", f"weights/{s}.npy")):
            there = (root / rel).is_file()
            left_out = not entry.get(field_name) if field_name == "weights" else "negatives" not in entry or (
                entry["negatives"] == 0 and there and np.shape(arr(rel))[1:2] not in ((), (0,)))  # 0: columns none
            if left_out and there:
                should = (f"{np.shape(arr(rel))[1]}, its columns" if field_name == "negatives" and
                          np.ndim(arr(rel)) == 2 else "true" if field_name == "weights" else "its columns")
                now = f"is {json.dumps(entry[field_name])}" if field_name in entry else "is missing"
                raise DatasetError(f"{root}/manifest.json: splits.{s}.{field_name} {now}, but "
                                   f"{rel} is there: the figures it gives would be left out without a word; set it "
                                   f"to {should}, or remove the file")
    ds = Dataset(
        genres=list(man["genres"]),
        video_ids=vids["id"],
        video_uploader=_ints(vids["uploader"], f"{root}/videos.csv column uploader"),
        video_source=vids["source"],
        track_ids=trks["id"],
        track_genre=_ints(trks["genre"], f"{root}/tracks.csv column genre"),
        track_title=trks["title"],
        track_artist=trks["artist"],
        track_new=_flags(trks["new"], f"{root}/tracks.csv column new", "track"),
        uploader_pref=arr("uploaders.npy"),
        video_visual=arr("features/video_visual.npy"),
        video_text=arr("features/video_text.npy"),
        video_text_mask=arr("features/video_text_mask.npy"),
        music=arr("features/music.npy"),
        splits={s: _ids(arr(f"splits/{s}.npy")) for s in split_info},
        split_info=split_info,
        negatives={s: _ids(arr(f"negatives/{s}.npy")) for s, v in man["splits"].items() if v.get("negatives")},
        weights={s: arr(f"weights/{s}.npy") for s, v in man["splits"].items() if v.get("weights")},
        provenance=man.get("provenance", {}),
        root=root,
    )
    # the recorded sizes first: a file cut short is named as such, not as the file that no longer matches it
    # (a split of 100 rows was blamed on its negatives, a row missing from videos.csv on the features)
    def check_counts(have: dict[str, int]) -> None:
        for key, n in have.items():
            if man["counts"].get(key) != n:
                raise DatasetError(f"{root}/manifest.json: counts.{key} is {man['counts'].get(key)!r}, the tables "
                                   f"hold {n}")

    check_counts({"videos": ds.n_videos, "tracks": ds.n_tracks})  # the CSV tables' rows: before any array's check
    for s, entry in man["splits"].items():
        shaped = np.ndim(ds.splits[s]) == 2 and np.shape(ds.splits[s])[1] == 3  # else validate names the shape
        if "rows" in entry and shaped and entry["rows"] != len(ds.splits[s]):
            raise DatasetError(f"{root}/manifest.json: splits.{s}.rows is {entry['rows']!r}, "
                               f"splits/{s}.npy has {len(ds.splits[s])} rows")
    ds.validate(str(root))
    check_counts({"uploaders": ds.n_uploaders, "genres": ds.n_genres})
    for s, entry in man["splits"].items():
        k = entry.get("negatives")
        if k and k != ds.negatives[s].shape[1]:
            raise DatasetError(f"{root}/manifest.json: splits.{s}.negatives is {k!r}, "
                               f"negatives/{s}.npy has {ds.negatives[s].shape[1]} columns")
    for mod, dim in ds.dims().items():
        if man["modalities"].get(mod) != dim:
            raise DatasetError(f"{root}/manifest.json: modalities.{mod} is {man['modalities'].get(mod)!r}, "
                               f"features/{mod}.npy has {dim} columns")
    return ds
