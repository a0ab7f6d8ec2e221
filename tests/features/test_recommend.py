"""recommend_clip reports a catalogue the model was not trained on with a warning, never a print."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pytest

from bgmrec.data.dataset import DatasetError
from bgmrec.features.recommend import (
    ClipFeatures,
    ClipRecommender,
    FeatureMismatchWarning,
    RequestError,
    open_catalog,
    open_video,
    open_video_features,
    recommend_clip,
)
from bgmrec.models.base import FeatureSpec, SplitView, VideoQuery
from bgmrec.models.registry import build


@pytest.fixture(scope="module")
def popularity(tiny_ds):
    return build("popularity", FeatureSpec.of(tiny_ds), {}).fit(SplitView(tiny_ds, "train"), None)


def catalog_of(ds, genre_of=lambda g: g):
    """The dataset's tracks as a catalogue, each genre name renamed by ``genre_of``."""
    catalog = open_catalog(ds.root)
    catalog.genre = [genre_of(g) for g in catalog.genre]
    return catalog


def test_a_dataset_folder_serves_as_catalogue_and_videos_folder(tiny_dir, tiny_ds, tmp_path):
    catalog = open_catalog(tiny_dir)
    assert catalog.ids == list(tiny_ds.track_ids) and catalog.title == list(tiny_ds.track_title)
    assert catalog.genre == [tiny_ds.genres[g] for g in tiny_ds.track_genre]
    np.testing.assert_array_equal(catalog.features, tiny_ds.music)
    music_bytes = np.ascontiguousarray(np.asarray(tiny_ds.music, np.float32)).tobytes()
    assert catalog.manifest["content_hash"] == hashlib.sha256(music_bytes).hexdigest()  # serve's catalog_hash
    assert "settings" not in catalog.manifest  # a simulated world's music was extracted by no extractor
    videos = open_video_features(tiny_dir)
    i = videos.position(tiny_ds.video_ids[3])
    assert i == 3 and videos.text_mask[i] == tiny_ds.video_text_mask[3]
    np.testing.assert_array_equal(videos.visual[i], tiny_ds.video_visual[3])
    with pytest.raises(DatasetError, match="no video with id 'nope'"):
        videos.position("nope")
    one = open_video(tiny_dir, tiny_ds.video_ids[3])  # recommend --features DATA --video-id ID: one row
    assert one.ids == [tiny_ds.video_ids[3]] and one.text_mask.tolist() == [tiny_ds.video_text_mask[3]]
    np.testing.assert_array_equal(one.visual, tiny_ds.video_visual[3:4])
    with pytest.raises(DatasetError, match="no video with id 'nope'"):
        open_video(tiny_dir, "nope")
    with pytest.raises(DatasetError, match=f"{tmp_path}"):  # neither: the catalogue's own error, as before
        open_catalog(tmp_path)


def test_an_unknown_genre_is_a_warning_not_a_print(tiny_ds, popularity, capsys):
    clip = ClipFeatures(np.asarray(tiny_ds.video_visual[0]), np.asarray(tiny_ds.video_text[0]),
                        bool(tiny_ds.video_text_mask[0]))
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as trained: nothing to say
        want = recommend_clip(popularity, catalog_of(tiny_ds), clip, 5)
    with pytest.warns(FeatureMismatchWarning, match=r"^200 of 200 track\(s\) \(e\.g\. 't00000'\) have genre\(s\) "
                                                 "the model was not trained on: 'new ") as w:
        got = recommend_clip(popularity, catalog_of(tiny_ds, lambda g: f"new {g}"), clip, 5)
    assert len(w) == 1 and w[0].filename == __file__  # it points at the caller's line
    assert capsys.readouterr().err == ""  # the library printed nothing
    assert [t["id"] for t in got["tracks"]] == [t["id"] for t in want["tracks"]]  # popularity ignores genres


def test_a_model_trained_on_no_captions_leaves_the_captions_of_clips_out(tiny_ds, tmp_path, capsys):
    # trained on videos without captions, CMVAE's text expert kept its initial weights, and a clip's caption took a
    # text share of 0.48 and changed every score; build, train, recommend and serve said nothing (an app audit)
    import dataclasses

    from bgmrec.data.dataset import save_dataset
    from bgmrec.features.recommend import CAPTION_LEFT_OUT, CAPTIONS_LEFT_OUT
    from bgmrec.runs import train_model

    uncaptioned = dataclasses.replace(tiny_ds, video_text_mask=np.zeros(tiny_ds.n_videos, bool))
    save_dataset(uncaptioned, tmp_path / "data")
    model, _ = train_model(tmp_path / "data", "cmvae", tmp_path / "run", epochs=1, progress=False)
    assert (f"warning: {tmp_path / 'data'}: none of the training videos has a caption (features/video_text_mask.npy): "
            "networks trained on them learn nothing from text") in capsys.readouterr().err
    captioned = build("cmvae", FeatureSpec.of(tiny_ds), {"epochs": 1}).fit(SplitView(tiny_ds, "train"), None)
    assert not model.learned_text and captioned.learned_text
    q = VideoQuery(np.array(tiny_ds.video_visual[:4]), np.array(tiny_ds.video_text[:4]), np.ones(4, bool))
    blind = dataclasses.replace(q, text_mask=np.zeros(4, bool))
    np.testing.assert_array_equal(model.encode_videos(q), model.encode_videos(blind))
    assert (model.modality_shares(q)[:, 1] == 0).all() and (model.video_distance_from_training(q)
                                                            == model.video_distance_from_training(blind)).all()
    assert not np.array_equal(captioned.encode_videos(q), captioned.encode_videos(blind))  # a caption counts
    warned = []
    recommender = ClipRecommender(model, open_catalog(tiny_ds.root), warn=warned.append)
    assert warned == [CAPTIONS_LEFT_OUT] and CAPTIONS_LEFT_OUT in recommender.warnings
    visual, text = np.asarray(tiny_ds.video_visual[0]), np.asarray(tiny_ds.video_text[0])
    [with_caption] = recommender.recommend([ClipFeatures(visual, text, True)])  # one a call: a row's scores may
    [without] = recommender.recommend([ClipFeatures(visual, None, False)])  # differ in the last bit by its row
    assert with_caption["warnings"] == [CAPTION_LEFT_OUT] and without["warnings"] == []
    assert with_caption["tracks"] == without["tracks"] and with_caption["modality_share"]["text"] == 0
    assert ClipRecommender(captioned, open_catalog(tiny_ds.root)).warnings == []


def test_a_clip_without_a_caption_may_give_no_text(tiny_ds):
    """ClipFeatures(visual, None, False) was refused with "text must have shape [16], got []"."""
    cca = build("cca", FeatureSpec.of(tiny_ds), {"dim": 8}).fit(SplitView(tiny_ds, "train"))
    recommender = ClipRecommender(cca, open_catalog(tiny_ds.root))
    visual = np.asarray(tiny_ds.video_visual[0])
    blank = recommender.recommend([ClipFeatures(visual, np.zeros(tiny_ds.video_text.shape[1]), False)], 5)
    assert recommender.recommend([ClipFeatures(visual, None, False)], 5) == blank
    with pytest.raises(RequestError, match=r"^clip 0: text is None but has_text is True; give the caption's vector, "
                                           r"or has_text=False for a clip without one$"):
        recommender.recommend([ClipFeatures(visual, None, True)], 5)
    with pytest.raises(ValueError, match=r"^VideoQuery.text is None: for videos without a caption give zeros of the "
                                         r"text features' width, np.zeros\(\(n, spec.video_text\), np.float32\), with "
                                         r"text_mask False$"):
        VideoQuery(visual[None], None, [False])


def test_a_run_whose_record_is_damaged_says_its_training_settings_are_not_compared(tiny_ds, tmp_path):
    # a damaged run.json read as none: the extraction settings of the training features were not compared, silently
    from bgmrec.models.base import load_model, run_record_damaged

    folder = build("cca", FeatureSpec.of(tiny_ds), {"dim": 8}).fit(SplitView(tiny_ds, "train")).save(tmp_path / "r")
    said = (f"{folder}: its run.json is not a readable record (not a JSON object), so the settings its training "
            "features were extracted with are not compared")
    for record, damaged in ((None, False), ("{}", False), ('{"feature_settings": {}}', False), ("{not json", True),
                            ("[1, 2]", True), ("null", True)):
        (folder / "run.json").unlink(missing_ok=True)
        if record is not None:
            (folder / "run.json").write_text(record)
        assert run_record_damaged(folder) is damaged
        warnings_ = ClipRecommender(load_model(folder), open_catalog(tiny_ds.root)).warnings
        assert warnings_ == ([said] if damaged else []), record


def test_catalogue_tracks_without_a_genre_are_the_genre_unknown(tiny_ds, popularity):
    """Extraction stores a track without genre as "": answers label it "unknown", so "unknown" is what a
    request's genres may name for it (and "" is no genre name)."""
    empty = set(tiny_ds.track_ids[:3])
    catalog = catalog_of(tiny_ds)
    catalog.genre = ["" if i in empty else g for i, g in zip(catalog.ids, catalog.genre, strict=True)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FeatureMismatchWarning)  # "unknown" is no genre the model was trained on
        rec = ClipRecommender(popularity, catalog)
    assert "unknown" in rec.genre_names and "" not in rec.genre_names
    clip = ClipFeatures(np.asarray(tiny_ds.video_visual[0]), np.asarray(tiny_ds.video_text[0]),
                        bool(tiny_ds.video_text_mask[0]))
    tracks = rec.recommend([clip], 10, genres=[["unknown"]])[0]["tracks"]
    assert {t["id"] for t in tracks} == empty and {t["genre"] for t in tracks} == {"unknown"}
