"""recommend_clip reports a catalogue the model was not trained on with a warning, never a print."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from bgmrec.features.audio import Catalog
from bgmrec.features.recommend import ClipFeatures, FeatureMismatchWarning, recommend_clip
from bgmrec.models.base import FeatureSpec, SplitView
from bgmrec.models.registry import build


@pytest.fixture(scope="module")
def popularity(tiny_ds):
    return build("popularity", FeatureSpec.of(tiny_ds), {}).fit(SplitView(tiny_ds, "train"), None)


def catalog_of(ds, genre_of=lambda g: g) -> Catalog:
    ids = list(ds.track_ids)
    return Catalog(ids, [f"title {i}" for i in ids], [f"artist {i}" for i in ids],
                   [genre_of(ds.genres[g]) for g in ds.track_genre], [""] * len(ids), [""] * len(ids),
                   np.asarray(ds.music, np.float32))


def test_an_unknown_genre_is_a_warning_not_a_print(tiny_ds, popularity, capsys):
    clip = ClipFeatures(np.asarray(tiny_ds.video_visual[0]), np.asarray(tiny_ds.video_text[0]),
                        bool(tiny_ds.video_text_mask[0]))
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as trained: nothing to say
        want = recommend_clip(popularity, catalog_of(tiny_ds), clip, 5)
    with pytest.warns(FeatureMismatchWarning, match=r"^\d+ track\(s\) have a genre the model does not know") as w:
        got = recommend_clip(popularity, catalog_of(tiny_ds, lambda g: f"new {g}"), clip, 5)
    assert len(w) == 1 and w[0].filename == __file__  # it points at the caller's line
    assert capsys.readouterr().err == ""  # the library printed nothing
    assert [t["id"] for t in got["tracks"]] == [t["id"] for t in want["tracks"]]  # popularity ignores genres
