"""Recommend tracks of an extracted catalogue for one clip (the library side of ``bgmrec recommend``).

The clip is given either as media (a video file and a caption, embedded by
:mod:`bgmrec.features.video` and :mod:`bgmrec.features.text`) or as a row of a videos folder
written by ``bgmrec extract-videos``. The model is any saved :class:`~bgmrec.models.base.Recommender`.

The answer is a dict, the object ``bgmrec recommend --json`` prints::

    {"tracks": [{"id", "title", "artist", "genre", "score"}, ...],   best first
     "modality_share": {"visual": float | null, "text": float | null}}

``modality_share`` says how much the frames and the caption drove the video's representation:
the model's own ``modality_shares`` when it has one (CMVAE: each expert's share of the fused
precision), else visual 1 / text 0 for a clip without text, and null otherwise (the model does not
say).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from bgmrec.data.dataset import DatasetError
from bgmrec.features.audio import Catalog
from bgmrec.models.base import MusicCatalog, Recommender, VideoQuery


@dataclass
class ClipFeatures:
    """One clip's content vectors."""

    visual: np.ndarray  # float32 [Dv]
    text: np.ndarray  # float32 [Dt] (zeros without text)
    has_text: bool  # False: no usable caption


def music_catalog(model: Recommender, catalog: Catalog, warn=None) -> MusicCatalog:
    """The catalogue as model input, with a clear error when its features do not fit the model.

    Genre names are mapped to the model's genre ids; a genre the model never saw gets the id of
    "unknown" when the model has it, else 0 (``warn`` is told how many tracks that concerns).
    """
    spec = model.spec
    if catalog.dim != spec.music:
        raise DatasetError(f"{catalog.root}/music.npy: tracks have {catalog.dim} features, but the model was "
                           f"trained on music features of dimension {spec.music}; extract the catalogue with "
                           f"the extractor the training data used")
    names = list(spec.genres)
    fallback = names.index("unknown") if "unknown" in names else 0
    ids, unseen = [], 0
    for g in catalog.genre:
        g = g.strip() or "unknown"
        if g in names:
            ids.append(names.index(g))
        else:
            ids.append(fallback)
            unseen += 1
    if unseen and warn is not None:
        warn(f"{unseen} track(s) have a genre the model does not know; treated as "
             f"{names[fallback] if names else 'genre 0'!r}")
    return MusicCatalog(np.asarray(catalog.features, np.float32), np.asarray(ids, np.int64))


def modality_share(model: Recommender, q: VideoQuery) -> dict[str, float | None]:
    """Visual and text shares of one query (see the module docstring)."""
    fn = getattr(model, "modality_shares", None)
    if callable(fn):
        try:
            v, t = np.asarray(fn(q), np.float64)[0]
            return {"visual": float(v), "text": float(t)}
        except ValueError:  # e.g. a fusion that does not separate the modalities
            pass
    if not bool(q.text_mask[0]):
        return {"visual": 1.0, "text": 0.0}
    return {"visual": None, "text": None}


def recommend_clip(model: Recommender, catalog: Catalog, clip: ClipFeatures, k: int = 10,
                   music: MusicCatalog | None = None) -> dict:
    """Top-``k`` tracks of ``catalog`` for one clip, and the modality share (the ``--json`` object).

    ``music`` may be passed to reuse a :func:`music_catalog` built once for many clips.
    """
    if k < 1:
        raise ValueError(f"--top must be at least 1, got {k}")
    music = music if music is not None else music_catalog(model, catalog, warn=_stderr)
    q = VideoQuery(visual=np.asarray(clip.visual, np.float32)[None, :],
                   text=np.asarray(clip.text, np.float32)[None, :],
                   text_mask=np.array([clip.has_text], bool))
    ids, scores = model.recommend(q, music, min(k, len(catalog)))
    tracks = [{"id": catalog.ids[j], "title": catalog.title[j], "artist": catalog.artist[j],
               "genre": catalog.genre[j] or "unknown", "score": float(s)}
              for j, s in zip(ids[0].tolist(), scores[0].tolist(), strict=True) if j >= 0]
    return {"tracks": tracks, "modality_share": modality_share(model, q)}


def _stderr(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)
