"""Recommend tracks of an extracted catalogue for one clip (the library side of ``bgmrec recommend``).

The clip is given either as media (a video file and a caption, embedded by
:mod:`bgmrec.features.video` and :mod:`bgmrec.features.text`) or as a row of a videos folder
written by ``bgmrec extract-videos``. The model is any saved :class:`~bgmrec.models.base.Recommender`.
A dataset folder (a simulated world, an imported TT-150k, a built dataset) stands in for both the
catalogue and the videos folder (:func:`open_catalog`, :func:`open_video_features`): its tracks and its
videos' features, for a model trained on features no media extractor makes.

The answer is a dict, the object ``bgmrec recommend --json`` prints::

    {"tracks": [{"id", "title", "artist", "genre", "score"}, ...],   best first
     "modality_share": {"visual": float | null, "text": float | null},
     "warnings": [str, ...]}                                          [] when none

``modality_share`` says how much the frames and the caption drove the video's representation:
the model's own ``modality_shares`` when it has one (CMVAE: each expert's share of the fused
precision; DecCM's content mode: its student's and its teacher's, weighted as their scores), else
visual 1 / text 0 for a clip without text, and null otherwise (the model does not say). It is how the
fusion weighs the two, not how much the caption improves the ranking: an expert confident about noise (a
caption unrelated to the music) still takes its share; an ablation (``cmvae-visual``) measures the worth.
``warnings`` are
the clip's own (:attr:`ClipFeatures.warnings`): a video file cut off after at least half its sample frames,
ranked with its last decoded frame repeated, says so there
(:func:`~bgmrec.features.video.embed_clip`).
"""

from __future__ import annotations

import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bgmrec.data.dataset import DatasetError, brief_repr
from bgmrec.features.audio import Catalog
from bgmrec.models.base import (
    MusicCatalog,
    NoModalityShares,
    NonFiniteEmbeddingError,
    Recommender,
    VideoQuery,
    check_embedding_widths,
    genre_positions,
    read_run_record,
    run_record_damaged,
    unknown_genres_warning,
)


class RequestError(ValueError):
    """Input the caller must fix (a bad count, an unknown genre); the message is one line naming the field.

    The HTTP service answers it with 422 and any other error with 500, so raise it only for the caller's input.
    """


class FeatureMismatchWarning(UserWarning):
    """The catalogue or the clip is not what the model was trained on (a genre it never saw, features
    extracted with other settings): its scores can mean little. :func:`recommend_clip` warns with it."""


@dataclass
class ClipFeatures:
    """One clip's content vectors, and what its answer must say of how they were made."""

    visual: np.ndarray  # float32 [Dv]
    text: np.ndarray | None  # float32 [Dt]; None (or zeros) without a caption, with has_text False
    has_text: bool  # False: no usable caption
    warnings: list[str] = field(default_factory=list)  # one line each, e.g. frames repeated: its answer's warnings

    __repr__ = brief_repr  # arrays by shape, long lists by length: not every value


def _is_dataset(root: Path) -> bool:
    """Whether ``root`` is a dataset folder (its manifest.json has no ``kind``, which extracted folders have)."""
    from bgmrec.data.dataset import read_json

    manifest = Path(root) / "manifest.json"
    return manifest.is_file() and "kind" not in read_json(manifest, str(manifest))


def _dataset_at(root: Path):
    """The dataset at ``root`` when it is a dataset folder (:func:`_is_dataset`), else None."""
    from bgmrec.data.dataset import load_dataset

    return load_dataset(Path(root)) if _is_dataset(root) else None  # memory-mapped: a catalogue and videos load cheaply


def open_catalog(root: Path) -> Catalog:
    """The catalogue folder at ``root`` (:func:`~bgmrec.features.audio.load_catalog`), or a dataset's tracks
    with their features, ids, titles, artists and genre names when ``root`` is a dataset folder. The latter's
    manifest has what an extracted catalogue's has for answers and checks: the ``content_hash`` of its
    features and, for a dataset made by ``build-dataset``, the ``settings`` its music was extracted with."""
    from bgmrec.features.audio import load_catalog
    from bgmrec.features.cache import arrays_sha256

    ds = _dataset_at(root)
    if ds is None:
        return load_catalog(root)
    m = ds.n_tracks
    music = np.asarray(ds.music, np.float32)
    settings = (ds.provenance.get("settings") or {}).get("music")
    manifest = {"dataset": str(root), "content_hash": arrays_sha256(music),
                **({"settings": settings} if isinstance(settings, dict) else {})}
    return Catalog(list(ds.track_ids), list(ds.track_title), list(ds.track_artist),
                   [ds.genres[g] for g in ds.track_genre], [""] * m, [""] * m, music, manifest, Path(root))


def open_video(root: Path, video_id: str):
    """The video ``video_id`` of the videos folder at ``root`` as a one-row
    :class:`~bgmrec.features.video.VideoFeatures` (:func:`~bgmrec.features.video.load_video_row`: only its row
    read, and the folder's content hash not checked), or of a dataset folder (loaded memory-mapped and validated
    by :func:`open_video_features`); an id not there is a :class:`~bgmrec.data.dataset.DatasetError` naming it."""
    from bgmrec.features.video import load_video_row

    return open_video_features(root).only(video_id) if _is_dataset(root) else load_video_row(root, video_id)


def open_video_features(root: Path, mmap: bool = False):
    """The videos folder at ``root`` (:func:`~bgmrec.features.video.load_video_features`; ``mmap``: its arrays
    memory-mapped, not loaded), or a dataset's videos with their features (ids from its videos.csv; no files or
    captions; memory-mapped as the dataset is) when ``root`` is a dataset."""
    from bgmrec.features.video import VideoFeatures, load_video_features

    ds = _dataset_at(root)
    if ds is None:
        return load_video_features(root, mmap=mmap)
    n = ds.n_videos
    return VideoFeatures(list(ds.video_ids), [""] * n, [""] * n, np.asarray(ds.video_visual, np.float32),
                         np.asarray(ds.video_text, np.float32), np.asarray(ds.video_text_mask, bool),
                         {"dataset": str(root)}, Path(root))


FAR_FROM_TRAINING_SD = 20.0  # a catalogue track this many training standard deviations out is named at start-up


def beyond_far(distance: float) -> str:
    """``distance`` (above :data:`FAR_FROM_TRAINING_SD`) in 3 significant digits, more where those would round it
    down to the threshold (it read "up to 20 standard deviations ... (more than 20)")."""
    shown = f"{distance:.3g}"
    return shown if float(shown) > FAR_FROM_TRAINING_SD else f"{distance:.6g}"


def far_from_training_music(model: Recommender, music: MusicCatalog, ids: list[str]) -> str | None:
    """One line naming the catalogue tracks whose features lie more than :data:`FAR_FROM_TRAINING_SD` training
    standard deviations from the model's training music, whose scores can be out of all proportion; None when
    there are none or the model cannot tell (``Recommender.music_distance_from_training``)."""
    distance = model.music_distance_from_training(music)
    if distance is None or not len(distance) or distance.max() <= FAR_FROM_TRAINING_SD:
        return None
    far = np.flatnonzero(distance > FAR_FROM_TRAINING_SD)
    worst = int(np.argmax(distance))
    return (f"{len(far)} catalogue track(s) have features more than {FAR_FROM_TRAINING_SD:g} standard deviations "
            f"from the model's training music (up to {beyond_far(distance[worst])}, track {ids[worst]!r}): their "
            "scores can be out of all proportion and top every list; give music like the training music, extracted "
            "with the same extractor and settings")


def video_files_refused(spec) -> str | None:
    """Why a model of feature sizes ``spec`` cannot rank a video file (trained on features of other sizes than the
    encoders of ``extract-videos`` give: a simulated world's), None when it can."""
    from bgmrec.features.text import TEXT_DIM
    from bgmrec.features.video import VISUAL_DIM

    if (spec.video_visual, spec.video_text) == (VISUAL_DIM, TEXT_DIM):
        return None
    return (f"the model was trained on video features of sizes {spec.video_visual} (visual) and {spec.video_text} "
            f"(text), not those extract-videos gives a video file ({VISUAL_DIM}, {TEXT_DIM})")


def far_from_training_videos(model: Recommender, q: VideoQuery) -> list[list[str]]:
    """Per video of ``q``, the warning its answer carries when its features lie more than
    :data:`FAR_FROM_TRAINING_SD` standard deviations from the model's training videos (a network extrapolates:
    its scores can be out of all proportion); [] for the others, and for a model that cannot tell
    (``Recommender.video_distance_from_training``)."""
    distance = model.video_distance_from_training(q)
    if distance is None:
        return [[] for _ in range(len(q))]
    return [[f"its features lie up to {beyond_far(d)} standard deviations from the model's training videos (more than "
             f"{FAR_FROM_TRAINING_SD:g}): its scores can be out of all proportion; give clips like the training "
             "videos, extracted with the same extractor and settings"] if d > FAR_FROM_TRAINING_SD else []
            for d in distance]


def music_catalog(model: Recommender, catalog: Catalog, warn=None) -> MusicCatalog:
    """The catalogue as model input, with a clear error when its features do not fit the model.

    Genre names are mapped to the model's genre ids; a genre the model never saw gets the id of
    "unknown" when the model has it, else 0 (``warn`` is told how many tracks that concerns).
    """
    spec = model.spec
    if catalog.dim != spec.music:
        raise DatasetError(f"{catalog.name}: tracks have {catalog.dim} features, but the model was "
                           f"trained on music features of dimension {spec.music}; extract the catalogue with "
                           f"the extractor the training data used")
    ids, _ = genre_positions(catalog.genre, spec.genres)
    note = unknown_genres_warning(catalog.genre, spec.genres, catalog.ids)
    if note and warn is not None:
        warn(note)
    return MusicCatalog(np.asarray(catalog.features, np.float32), np.asarray(ids, np.int64))


def modality_shares(model: Recommender, q: VideoQuery) -> list[dict[str, float | None]]:
    """Visual and text shares of each query (see the module docstring)."""
    try:
        return [{"visual": float(v), "text": float(t)} for v, t in np.asarray(model.modality_shares(q), np.float64)]
    except NoModalityShares:  # e.g. a fusion that does not separate the modalities
        pass
    return [{"visual": 1.0, "text": 0.0} if not has_text else {"visual": None, "text": None}
            for has_text in np.asarray(q.text_mask, bool)]


def taste_vector(taste: dict[str, float], genres, field: str = "taste") -> np.ndarray:
    """[G] genre preferences from ``{genre: weight}`` (a genre left out weighs 0), in the order of ``genres``;
    a :class:`RequestError` naming ``field`` for an unknown genre (:meth:`ClipRecommender.recommend` checks the
    weights)."""
    g = list(genres)
    unknown = sorted(set(taste) - set(g))
    if unknown:
        raise RequestError(f"{field}: unknown genre(s) {', '.join(unknown)}; the model knows {', '.join(g)}")
    return np.array([taste.get(name, 0.0) for name in g], np.float64)


def normalised_taste(weights: np.ndarray) -> np.ndarray:
    """Genre weights [n, G] as preferences, each row scaled to sum to 1 (float32); a :class:`RequestError`
    unless every weight is finite and non-negative and no row is all zero."""
    w = np.asarray(weights, np.float64)
    bad = np.flatnonzero(~np.isfinite(w).all(axis=1) | (w < 0).any(axis=1) | ~(w.max(axis=1) > 0))
    if bad.size:
        raise RequestError(f"taste{f'[{bad[0]}]' if len(w) > 1 else ''}: weights must be finite, non-negative and "
                           "not all zero")  # the row named when there are several
    w = w / w.max(axis=1, keepdims=True)  # then the sum cannot overflow
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def check_search(index: str, ef_search: int | None) -> None:
    """A :class:`~bgmrec.data.dataset.FieldError` unless ``index`` is "exact" or "faiss" and ``ef_search`` is None
    or, with "faiss", a positive integer (:class:`ClipRecommender`'s arguments; ``serve`` checks its options so
    before loading anything)."""
    from bgmrec.data.dataset import FieldError

    given = FieldError.given(index)
    if index not in ("exact", "faiss"):
        raise FieldError(f"{{index}} must be 'exact' or 'faiss', got {given}", "index")
    if ef_search is not None and (index != "faiss" or ef_search < 1):
        raise FieldError(f"{{ef_search}} must be a positive integer and is read by the faiss index only, got "
                         f"{ef_search} with {{index}} {given}", "ef_search", "index")


CAPTIONS_LEFT_OUT = ("the model was trained on videos without captions: it learned nothing from text, and the "
                     "captions of clips are left out (to use them, train on a dataset of captioned videos)")
CAPTION_LEFT_OUT = "its caption was left out: the model was trained on videos without captions"
NOTHING_LEFT = "no track to answer with: exclude and genres leave none of the catalogue's tracks"
EXCLUDE_NOT_IN_CATALOG = "exclude: {n} track id(s) not in the catalogue, passed over: {ids}"


def not_in_catalog_warning(unknown: list[str]) -> list[str]:
    """The answer's warning for ``exclude`` ids the catalogue has not (withdrawn since the app stored them, or
    mistyped): they are passed over, not refused, so that an app's stored exclude list keeps working after a
    catalogue update; each named once, the first three by name."""
    unknown = list(dict.fromkeys(unknown))
    if not unknown:
        return []
    named = ", ".join(repr(t) for t in unknown[:3]) + (", ..." if len(unknown) > 3 else "")
    return [EXCLUDE_NOT_IN_CATALOG.format(n=len(unknown), ids=named)]


TASTE_NOT_READ = ("its taste was not read: this model ranks without the uploader's taste (DecCM reads it in its "
                  "personalised mode)")


class ClipRecommender:
    """A trained model and a catalogue, ready for many clips: the catalogue is encoded and indexed once.

    What ``bgmrec recommend`` and ``bgmrec serve`` answer with. ``index`` is ``"exact"``
    (:class:`~bgmrec.index.ExactIndex`, the reference) or ``"faiss"`` (:class:`~bgmrec.index.FaissIndex`,
    approximate, for large catalogues); ``warn`` is told about catalogue genres the model does not know
    and about feature settings that differ from its training data's (:func:`feature_settings_mismatches`;
    ``frames``: how many frames each clip given as a video file is sampled at). ``ef_search`` sets the
    FAISS index's search breadth (None: its default), trading speed for recall. Those start-up warnings
    stay in ``warnings`` (one line each, also without ``warn``), which ``bgmrec serve``'s ``/health`` reports.

    ``threads`` sets torch's intra-op thread count in every thread that calls :meth:`recommend` (None: as
    torch has it). torch's own ``set_num_threads`` holds in the thread that calls it: a thread started later
    (a server's worker) reports the count but may run its first operations with OpenMP's default team, which
    beside another busy process made one small request 100 times slower.
    """

    def __init__(self, model: Recommender, catalog: Catalog, index: str = "exact", warn=None,
                 frames: int | None = None, ef_search: int | None = None, threads: int | None = None) -> None:
        from bgmrec.data.dataset import check_distinct_ids
        from bgmrec.index import ExactIndex, FaissIndex

        check_search(index, ef_search)
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        if not isinstance(catalog, Catalog):
            raise TypeError(f"catalog must be a bgmrec.features.audio.Catalog (load_catalog, open_catalog or "
                            f"Catalog.from_arrays), got {type(catalog).__name__}")
        check_distinct_ids(catalog.ids, catalog.name)
        self.model, self.catalog, self.threads = model, catalog, threads
        self.index_kind = index  # "exact" or "faiss", as ``bgmrec serve --index`` names it (``/health``'s index)
        self._thread_state = threading.local()
        self._use_threads()
        self.warnings: list[str] = []

        def said(msg: str) -> None:
            self.warnings.append(msg)
            if warn is not None:
                warn(msg)

        for mismatch in feature_settings_mismatches(model, catalog, frames):
            said(mismatch)
        self.captions_left_out = not model.reads_captions
        if self.captions_left_out:
            said(CAPTIONS_LEFT_OUT)
        self.music = music_catalog(model, catalog, warn=said)
        far = far_from_training_music(model, self.music, catalog.ids)
        if far:
            said(far)
        embeddings = model.encode_music(self.music)  # the neural models encode it in chunks
        spec = model.spec  # one blank clip (without text, an even taste for personalised mode) shows the videos'
        g = len(spec.genres)  # width: a model may refuse a query of no clips, as fitted transforms do
        blank = VideoQuery(np.zeros((1, spec.video_visual)), np.zeros((1, spec.video_text)), np.zeros(1, bool),
                           np.full((1, g), 1.0 / g))
        check_embedding_widths(model, model.encode_videos(blank), embeddings)
        options = {} if ef_search is None else {"ef_search": ef_search}
        self.index = ExactIndex(embeddings) if index == "exact" else FaissIndex(embeddings, **options)
        self.position = {track_id: j for j, track_id in enumerate(catalog.ids)}
        self._track_genre = np.array([g or "unknown" for g in catalog.genre], dtype=object)
        self.genre_names = sorted(set(self._track_genre.tolist()))  # what ``genres`` may name

    def recommend(self, clips: list[ClipFeatures], k: int = 10, exclude: list[list[str]] | None = None,
                  taste: np.ndarray | None = None, labels: list[str] | None = None,
                  genres: list[list[str] | None] | None = None) -> list[dict]:
        """The ``--json`` object of each clip: its top-``k`` tracks, best first, its modality share and its
        :attr:`ClipFeatures.warnings`.

        ``exclude`` gives track ids never to return, one list per clip; ``genres`` the catalogue genres to
        return tracks of, one list (or None: every genre) per clip; ``taste`` [n, G] the uploaders'
        genre preferences, which only a model in personalised mode reads (given to another, each answer's
        ``warnings`` say it was not read). A bad ``k``, ``exclude`` or
        ``genres`` of the wrong length, an unknown genre in them raise :class:`RequestError` (an unknown
        track id in ``exclude`` is passed over, and the clip's ``warnings`` name it),
        and so do features for which the model's scores are not finite (finite but huge values can
        overflow); ``labels`` name the clips in that message (default "clip 0", "clip 1", ...).
        """
        from bgmrec.index import NaNScoreError

        if isinstance(k, bool) or not isinstance(k, int | np.integer):
            raise RequestError(f"top must be an integer, got {k!r}")
        if k < 1:
            raise RequestError(f"top must be at least 1, got {k}")
        q = self._query(clips, taste)
        excluded = self.excluded_positions(exclude, genres, len(clips))
        unknown = [[t for t in ids if t not in self.position] for ids in exclude] if exclude else [[]] * len(clips)
        self._use_threads()
        try:
            ids, scores = self.index.search(self.model.encode_videos(q), min(k, len(self.catalog)), excluded)
        except NonFiniteEmbeddingError as e:  # the clip's features far outside the model's training range
            bad = e.row
        except NaNScoreError as e:
            bad = e.query
        else:
            rows = np.flatnonzero(~np.where(np.asarray(ids) >= 0, np.isfinite(scores), True).all(axis=1))
            bad = int(rows[0]) if rows.size else None
        if bad is not None:
            raise RequestError(f"{labels[bad] if labels else f'clip {bad}'}: the model's scores for these features are "
                               "not finite (values far outside the range of its training features?)")
        cat = self.catalog
        far = far_from_training_videos(self.model, q)
        return [{"tracks": [{"id": cat.ids[j], "title": cat.title[j], "artist": cat.artist[j],
                             "genre": cat.genre[j] or "unknown", "score": float(s)}
                            for j, s in zip(row_ids.tolist(), row_scores.tolist(), strict=True) if j >= 0],
                 "modality_share": share, "warnings": [*clip.warnings, *far[i], *(
                     [CAPTION_LEFT_OUT] if self.captions_left_out and clip.has_text else []), *(
                     [NOTHING_LEFT] if (np.asarray(row_ids) < 0).all() else []), *(
                     [TASTE_NOT_READ] if taste is not None and not self.model.reads_taste else []),
                     *not_in_catalog_warning(unknown[i])]}
                for i, (row_ids, row_scores, share, clip) in enumerate(zip(ids, scores, modality_shares(self.model, q),
                                                                           clips, strict=True))]

    def excluded_positions(self, exclude: list[list[str]] | None, genres: list[list[str] | None] | None,
                           n: int) -> list[np.ndarray] | None:
        """The catalogue positions each of ``n`` clips must not get, from :meth:`recommend`'s ``exclude`` and
        ``genres`` (None: none), or a :class:`RequestError` for a bad one (an ``exclude`` id the catalogue has
        not is passed over: :meth:`recommend` warns of it); cheap, so a caller with an
        expensive clip to embed (a video upload) can check them first."""
        if exclude is not None and len(exclude) == 0:
            exclude = None  # no lists: nothing excluded
        if exclude is not None and len(exclude) != n:
            raise RequestError(f"exclude has {len(exclude)} lists for {n} clips")
        for i, ids in enumerate(exclude or []):
            if isinstance(ids, str) or not isinstance(ids, list | tuple | set | frozenset | np.ndarray):
                raise RequestError(f"exclude[{i}] must be a list of track ids, got {type(ids).__name__} {ids!r}"[:160])
        excluded = None if not exclude or not any(len(ids) for ids in exclude) else [
            np.array([self.position[t] for t in ids if t in self.position], np.int64) for ids in exclude]
        return self._outside_genres(genres, n, excluded)

    def _query(self, clips: list[ClipFeatures], taste) -> VideoQuery:
        """The model's query of ``clips``: a non-empty list of :class:`ClipFeatures` with the model's feature
        sizes, a clip without a caption given ``text`` None (zeros) and ``has_text`` False (a
        :class:`RequestError` naming the clip and the field otherwise)."""
        if not isinstance(clips, list | tuple) or not clips:
            raise RequestError(f"clips must be a non-empty list of ClipFeatures, got {type(clips).__name__}")
        spec = self.model.spec
        texts = []
        for i, c in enumerate(clips):
            if not isinstance(c, ClipFeatures):
                raise RequestError(f"clip {i}: expected ClipFeatures, got {type(c).__name__}")
            if not isinstance(c.has_text, bool | np.bool_):  # "no" is a true string
                raise RequestError(f"clip {i}: has_text must be True or False, got {c.has_text!r}"[:160])
            if c.text is None and c.has_text:
                raise RequestError(f"clip {i}: text is None but has_text is True; give the caption's vector, or "
                                   "has_text=False for a clip without one")
            texts.append(np.zeros(spec.video_text, np.float32) if c.text is None else c.text)
            for field_name, value, width in (("visual", c.visual, spec.video_visual),
                                             ("text", texts[-1], spec.video_text)):
                if np.shape(value) != (width,):
                    raise RequestError(f"clip {i}: {field_name} must have shape [{width}] (the model's), got "
                                       f"{list(np.shape(value))}")
                if np.asarray(value).dtype.kind not in "iuf":  # strings of digits were converted and answered
                    raise RequestError(f"clip {i}: {field_name} must be real numbers, got values of dtype "
                                       f"{np.asarray(value).dtype}")
        with np.errstate(over="ignore"):  # past float32's range: inf, refused below with NaN and inf
            arrays = {"visual": np.stack([np.asarray(c.visual, np.float32) for c in clips]),
                      "text": np.stack([np.asarray(t, np.float32) for t in texts])}
        for field_name, values in arrays.items():  # the whole batch at once, the first bad value named
            bad = np.argwhere(~np.isfinite(values))
            if len(bad):
                raise RequestError(f"clip {bad[0, 0]}: {field_name} has values that are NaN, inf or beyond "
                                   f"float32's range (position {bad[0, 1]})")
        return VideoQuery(visual=arrays["visual"], text=arrays["text"],
                          text_mask=np.array([bool(c.has_text) for c in clips], bool),
                          confounder=self._taste(taste, len(clips)))

    def _taste(self, taste, n: int) -> np.ndarray | None:
        """The uploaders' genre preferences [n, G] as a model in personalised mode reads them (rows
        normalised to sum to 1), required in that mode; a :class:`RequestError` for a missing or bad one."""
        if taste is None:
            if self.model.needs_taste:
                raise RequestError("taste: required " + ("in personalised mode" if self.model.inference_mode ==
                                                         "personalised" else f"by {self.model.name}")
                                   + " (the uploader's genre preferences, for every clip)")
            return None
        genres = len(self.model.spec.genres)
        try:
            w = np.asarray(taste, np.float64)
        except (TypeError, ValueError):
            w = np.zeros(0)
        if w.shape != (n, genres):
            raise RequestError(f"taste must have shape [{n}, {genres}] (one row of genre weights per clip, in the "
                               f"model's genre order), got {list(np.shape(w))}")
        return normalised_taste(w)

    def _use_threads(self) -> None:
        """Set torch's thread count in the calling thread, once per thread (see the class docstring)."""
        if self.threads is not None and getattr(self._thread_state, "threads", None) != self.threads:
            import torch

            torch.set_num_threads(self.threads)
            self._thread_state.threads = self.threads

    def _outside_genres(self, genres, n: int, excluded: list[np.ndarray] | None) -> list[np.ndarray] | None:
        """``excluded`` (track positions per clip, or None) with the tracks outside each clip's ``genres``."""
        if genres is None:
            return excluded
        if len(genres) != n:
            raise RequestError(f"genres has {len(genres)} lists for {n} clips")
        lists = [np.zeros(0, np.int64)] * n if excluded is None else excluded
        outside: dict[frozenset, np.ndarray] = {}  # the tracks outside each distinct set of genres, found once
        for i, wanted in enumerate(genres):
            if wanted is None:
                continue
            if isinstance(wanted, str) or not isinstance(wanted, list | tuple | set | frozenset):
                raise RequestError(f"genres[{i}] must be a list of genre names, got {type(wanted).__name__}")
            field = f"genres[{i}]" if n > 1 else "genres"
            if not wanted:  # answered with no track at all, as if the request had worked
                raise RequestError(f"{field}: an empty list keeps no track; give at least one genre, or null for "
                                   "every genre")
            unknown = sorted(set(wanted) - set(self.genre_names))
            if unknown:
                raise RequestError(f"{field}: unknown genre(s) {', '.join(map(str, unknown))}; the catalogue has "
                                   f"{', '.join(self.genre_names)}")
            key = frozenset(wanted)
            if key not in outside:
                outside[key] = np.flatnonzero(~np.isin(self._track_genre, list(key)))
            # positions may repeat (an excluded track outside the genres): the search masks each once
            lists[i] = np.concatenate([lists[i], outside[key]]) if len(lists[i]) else outside[key]
        return lists


SETTINGS_NOT_IN_FEATURES = ("min_seconds", "threads", "silent_below_dbfs")  # extraction settings that do not
#   change a feature vector (they decide which inputs fail)


def recommend_clip(model: Recommender, catalog: Catalog, clip: ClipFeatures, k: int = 10,
                   frames: int | None = None, exclude: list[str] | None = None,
                   genres: list[str] | None = None) -> dict:
    """Top-``k`` tracks of ``catalog`` for one clip, its modality share and warnings (the ``--json`` object);
    ``frames``: those the clip was sampled at, when it came from a video file; ``exclude``: track ids never to
    return; ``genres``: the catalogue genres to return tracks of (None: every genre). Catalogue genres the model
    does not know and feature settings other than its training data's are told with
    :class:`FeatureMismatchWarning`, and lead the answer's ``warnings``, before the clip's own."""
    said: list[str] = []
    recommender = ClipRecommender(model, catalog, warn=said.append, frames=frames)
    for msg in said:  # warned from here, so that each points at the caller's line
        warnings.warn(msg, FeatureMismatchWarning, stacklevel=2)
    answer = recommender.recommend([clip], k, [list(exclude or [])], genres=[genres])[0]
    return {**answer, "warnings": [*said, *answer["warnings"]]}


RANKED_AT_ONCE = 1024  # videos :func:`recommend_videos` ranks with one matrix product (serve's largest batch)


def recommend_videos(recommender: ClipRecommender, videos, k: int = 10, exclude: list[str] | None = None,
                     genres: list[str] | None = None, at_once: int = RANKED_AT_ONCE) -> Iterator[dict]:
    """The answer of :meth:`ClipRecommender.recommend` for every video of ``videos`` (a
    :class:`~bgmrec.features.video.VideoFeatures`, from :func:`open_video_features`), in its row order, each with
    its ``video`` id first (``bgmrec recommend --all-videos``); ``exclude`` and ``genres`` hold for every video.
    ``at_once`` videos are read and ranked together, so memory-mapped features are read a block at a time. A clip
    whose scores are not finite is a :class:`RequestError` naming its video."""
    if isinstance(at_once, bool) or not isinstance(at_once, int) or at_once < 1:  # when called, not when iterated
        raise ValueError(f"at_once must be a positive integer, got {at_once!r}")
    return _answers_in_blocks(recommender, videos, k, exclude, genres, at_once)


def _answers_in_blocks(recommender: ClipRecommender, videos, k: int, exclude: list[str] | None,
                       genres: list[str] | None, at_once: int) -> Iterator[dict]:
    """:func:`recommend_videos`' answers, ``at_once`` videos ranked together."""
    notes = videos.repeated_frame_notes()
    for start in range(0, len(videos), at_once):
        block = slice(start, min(start + at_once, len(videos)))
        visual, text = (np.asarray(x[block], np.float32) for x in (videos.visual, videos.text))
        ids, files, has_text = videos.ids[block], videos.file[block], np.asarray(videos.text_mask[block], bool)
        clips = [ClipFeatures(v, t, bool(h), list(notes.get(f, [])))
                 for v, t, h, f in zip(visual, text, has_text, files, strict=True)]
        answers = recommender.recommend(clips, k, [list(exclude or [])] * len(clips), labels=list(ids),
                                        genres=[genres] * len(clips))
        for vid, answer in zip(ids, answers, strict=True):
            yield {"video": vid, **answer}


def training_feature_settings(model: Recommender) -> tuple[dict, dict]:
    """The extraction settings of the music and of the videos the model was trained on, from its run's
    ``run.json`` (recorded for datasets made by ``build-dataset``); empty when it records none."""
    source = getattr(model, "source", None)
    trained = read_run_record(Path(source).parent).get("feature_settings") if source else None
    music, videos = ((trained.get(k) if isinstance(trained, dict) else None) for k in ("music", "videos"))
    return tuple(x if isinstance(x, dict) else {} for x in (music, videos))


def frames_to_sample(model: Recommender, default: int) -> int:
    """The frames to sample from a clip file for ``model``: those its training videos were sampled at, when its
    run records them (:func:`training_feature_settings`), else ``default`` (extract-videos' own)."""
    frames = training_feature_settings(model)[1].get("frames")
    return frames if isinstance(frames, int) and not isinstance(frames, bool) and frames >= 1 else default


def feature_settings_mismatches(model: Recommender, catalog: Catalog, frames: int | None = None) -> list[str]:
    """One line per feature setting that differs between the model's training data and what it is now
    given: the catalogue's extraction settings, and ``frames`` sampled per clip. A model's scores on
    features extracted otherwise can mean little. The training settings: :func:`training_feature_settings`;
    [] when it records none; a line saying they are not compared when the run's ``run.json`` is damaged."""
    music, videos = training_feature_settings(model)
    now = catalog.manifest.get("settings") or {}
    source = getattr(model, "source", None)
    out = [f"{Path(source).parent}: its run.json is not a readable record (not a JSON object), so the settings its "
           "training features were extracted with are not compared"] if source and run_record_damaged(
        Path(source).parent) else []
    differ = [k for k in music if k in now and k not in SETTINGS_NOT_IN_FEATURES and music[k] != now[k]]
    if differ:
        out.append(f"{catalog.name} was extracted with "
                   f"{', '.join(f'{k}={now[k]}' for k in differ)}, the model's training music with "
                   f"{', '.join(f'{k}={music[k]}' for k in differ)}; re-extract it with the training settings")
    if frames is not None and "frames" in videos and videos["frames"] != frames:
        out.append(f"clips are sampled at {frames} frames, the model's training videos at {videos['frames']}; "
                   f"sample them at {videos['frames']} (recommend --frames for a video file, extract-videos "
                   "--frames for extracted features)")
    return out


def warn_on_stderr(msg: str) -> str:
    """Print a warning on standard error: what the commands pass as ``warn``, and how they show a
    :class:`FeatureMismatchWarning` (:class:`ClipRecommender` never prints: it tells ``warn``). Returns ``msg``
    (for a result's JSON)."""
    print(f"warning: {msg}", file=sys.stderr)
    return msg
