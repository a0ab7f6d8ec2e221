"""Scores computed outside bgmrec: ranked by the protocol exactly as the model that made them, and refused
clearly when they are not a dataset's scores."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from bgmrec.data.dataset import DatasetError
from bgmrec.eval.protocol import EvaluationWarning, compare, evaluate
from bgmrec.eval.scores import ScoreFileWarning, is_score_file, load_scores
from bgmrec.models.base import FeatureSpec, MusicCatalog, SplitView, VideoQuery
from bgmrec.models.registry import build

pytestmark = pytest.mark.filterwarnings("ignore::bgmrec.eval.scores.ScoreFileWarning")  # tested where said


@pytest.fixture(scope="module")
def popularity(tiny_ds):
    # a model of many exact ties: its figures depend on the protocol's seeded order of ties, not only on scores
    return build("popularity", FeatureSpec.of(tiny_ds), {}).fit(SplitView(tiny_ds, "train"), None)


def all_scores(model, ds) -> np.ndarray:
    """The model's scores of every video against every track, as another codebase would write them."""
    videos = np.arange(ds.n_videos)
    queries = model.encode_videos(VideoQuery.from_dataset(ds, videos, np.full(ds.n_videos, -1), "test"))
    return queries.astype(np.float64) @ model.encode_music(MusicCatalog.from_dataset(ds)).astype(np.float64).T


def save_npz(path, ds, scores, videos, tracks):
    np.savez(path, scores=scores[np.ix_(videos, tracks)], video_ids=np.array(ds.video_ids)[videos],
             track_ids=np.array(ds.track_ids)[tracks])


@pytest.mark.parametrize("split", ["test", "test_unbiased", "test_new_music"])
def test_a_models_scores_from_a_file_give_exactly_its_figures(tiny_ds, popularity, tmp_path, split):
    scores = all_scores(popularity, tiny_ds)
    np.save(tmp_path / "full.npy", scores.astype(np.float32))
    # some videos only (the split's), rows and columns shuffled: read by their ids
    rng = np.random.default_rng(0)
    videos = rng.permutation(np.unique(tiny_ds.splits[split][:, 0]))
    save_npz(tmp_path / "part.npz", tiny_ds, scores, videos, rng.permutation(tiny_ds.n_tracks))
    expected = evaluate(popularity, tiny_ds, split)
    for name in ("full.npy", "part.npz"):
        scores_read = load_scores(tmp_path / name, tiny_ds)
        got = evaluate(scores_read, tiny_ds, split)
        assert got["model"] == "score-file" and got["label"] == scores_read.label == name.split(".")[0]
        for key in ("full", "full_recall_curve", "sampled", "ipw", "bias", "per_genre_recall@10", "n_candidates"):
            assert got[key] == expected[key], key
    paired = compare(popularity, load_scores(tmp_path / "part.npz", tiny_ds), tiny_ds, split, resamples=200)
    assert paired.difference == 0.0 and paired.baseline == expected["full"]["recall@10"]


def test_integer_scores_rank_as_their_values(tiny_ds, tmp_path):
    # every video ranks track t by t's index: the positive's rank is its position among the candidates, from last
    ranks = np.tile(np.arange(tiny_ds.n_tracks, dtype=np.int32), (tiny_ds.n_videos, 1))
    np.save(tmp_path / "by_index.npy", ranks)
    with pytest.warns(EvaluationWarning, match="below a random order's"):  # an order unrelated to the videos
        got = evaluate(load_scores(tmp_path / "by_index.npy", tiny_ds), tiny_ds, "test", keep_ranks=True)
    cand = tiny_ds.candidate_tracks("test")
    positives = tiny_ds.splits["test"][:, 1]
    np.testing.assert_array_equal(got["full_ranks"], len(cand) - np.searchsorted(cand, positives))


def test_a_query_video_without_scores_is_named(tiny_ds, popularity, tmp_path):
    scores = all_scores(popularity, tiny_ds)
    videos = np.unique(tiny_ds.splits["test"][:, 0])
    save_npz(tmp_path / "s.npz", tiny_ds, scores, videos[1:], np.arange(tiny_ds.n_tracks))
    with pytest.raises(DatasetError, match=rf"s.npz: no scores for video '{tiny_ds.video_ids[videos[0]]}' \(and 0 "
                                           r"more of these \d+ queries\)"):
        evaluate(load_scores(tmp_path / "s.npz", tiny_ds), tiny_ds, "test")


def test_scores_read_against_one_dataset_refuse_another(tiny_ds, popularity, tmp_path):
    np.save(tmp_path / "s.npy", all_scores(popularity, tiny_ds))
    other = tiny_ds.with_split("mine", tiny_ds.splits["test"][:3])  # the same videos and tracks: accepted
    assert evaluate(load_scores(tmp_path / "s.npy", tiny_ds), other, "mine")["n_queries"] == 3
    loaded = load_scores(tmp_path / "s.npy", tiny_ds)
    loaded._ids = (loaded._ids[0][:-1], loaded._ids[1])
    with pytest.raises(DatasetError, match="read against another dataset's videos and tracks"):
        evaluate(loaded, tiny_ds, "test")


def refused(path, ds, match):
    with pytest.raises(DatasetError, match=match):
        load_scores(path, ds)


def test_score_files_that_are_not_a_datasets_scores_are_refused_naming_file_and_field(tiny_ds, tmp_path):
    n, m = tiny_ds.n_videos, tiny_ds.n_tracks
    vids, tracks = np.array(tiny_ds.video_ids), np.array(tiny_ds.track_ids)
    np.save(tmp_path / "short.npy", np.zeros((n - 1, m)))
    refused(tmp_path / "short.npy", tiny_ds, rf"short.npy: expected scores of shape \[{n}, {m}\] .* found "
                                             rf"\[{n - 1}, {m}\]")
    np.save(tmp_path / "text.npy", np.full((n, m), "x"))
    refused(tmp_path / "text.npy", tiny_ds, r"text.npy: scores: expected real numbers \(float or int\), found "
                                            "dtype <U1")
    nan = np.zeros((n, m))
    nan[5, 7] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    refused(tmp_path / "nan.npy", tiny_ds, rf"nan.npy: scores: nan for video '{vids[5]}' and track '{tracks[7]}' "
                                           r"\(row 5, column 7\); every score must be finite")
    inf = np.zeros((3, m))
    inf[2, 0] = np.inf
    np.savez(tmp_path / "inf.npz", scores=inf, video_ids=vids[[9, 4, 8]], track_ids=tracks[::-1])
    refused(tmp_path / "inf.npz", tiny_ds, rf"scores: inf for video '{vids[8]}' and track '{tracks[-1]}' \(row 2, "
                                           r"column 0\)")
    np.savez(tmp_path / "unknown.npz", scores=np.zeros((1, m)), video_ids=np.array(["nobody"]), track_ids=tracks)
    refused(tmp_path / "unknown.npz", tiny_ds, rf"unknown.npz: video_ids: 1 id\(s\) not in the dataset's videos.csv "
                                               rf"\(first 'nobody'; the dataset's first is '{vids[0]}'\)")
    np.savez(tmp_path / "twice.npz", scores=np.zeros((2, m)), video_ids=vids[[3, 3]], track_ids=tracks)
    refused(tmp_path / "twice.npz", tiny_ds, rf"video_ids: '{vids[3]}' is listed more than once")
    np.savez(tmp_path / "few.npz", scores=np.zeros((1, m - 2)), video_ids=vids[:1], track_ids=tracks[2:])
    refused(tmp_path / "few.npz", tiny_ds, rf"track_ids: 2 of the dataset's {m} tracks have no column \(first "
                                           rf"'{tracks[0]}'\); score every track of tracks.csv")
    np.savez(tmp_path / "shape.npz", scores=np.zeros((2, m)), video_ids=vids[:1], track_ids=tracks)
    refused(tmp_path / "shape.npz", tiny_ds, rf"scores: expected shape \[1, {m}\] \(video_ids by track_ids\), found "
                                             rf"\[2, {m}\]")
    np.savez(tmp_path / "column.npz", scores=np.zeros((1, m)), video_ids=vids[:1, None], track_ids=tracks)
    refused(tmp_path / "column.npz", tiny_ds, r"video_ids: expected a 1-D array of string ids \(as videos.csv's id "
                                              r"column\), found dtype <U\d+ and shape \[1, 1\]")
    np.savez(tmp_path / "ints.npz", scores=np.zeros((1, m)), video_ids=np.arange(1), track_ids=tracks)
    refused(tmp_path / "ints.npz", tiny_ds, r"video_ids: expected a 1-D array of string ids \(as videos.csv's id "
                                            r"column\), found dtype int64")
    np.savez(tmp_path / "objects.npz", scores=np.zeros((1, m)), video_ids=vids[:1].astype(object), track_ids=tracks)
    refused(tmp_path / "objects.npz", tiny_ds, r"objects.npz: not a score file numpy reads without pickle .*it holds "
                                               r"an array of Python objects, which is not unpickled; save ids as "
                                               r"strings \(np.array\(ids, dtype=str\)\) and scores as numbers")
    # object scores were said to be ids saved as objects (a fuzz audit)
    np.savez(tmp_path / "objects.npz", scores=np.zeros((1, m)).astype(object), video_ids=vids[:1], track_ids=tracks)
    refused(tmp_path / "objects.npz", tiny_ds, r"save ids as strings .* and scores as numbers")
    np.savez(tmp_path / "missing.npz", scores=np.zeros((1, m)))
    refused(tmp_path / "missing.npz", tiny_ds, "missing.npz: missing video_ids, track_ids; an .npz score file holds "
                                               r"scores, video_ids, track_ids \(found scores\)")
    (tmp_path / "json.npz").write_text("{}")
    refused(tmp_path / "json.npz", tiny_ds, r"json.npz: not an .npz file \(it does not begin as one\); save scores "
                                            "with np.savez")
    refused(tmp_path / "absent.npy", tiny_ds, r"absent.npy: cannot be read as a NumPy file \(\[Errno 2\]")
    (tmp_path / "cut.npy").write_bytes((tmp_path / "short.npy").read_bytes()[:200])
    refused(tmp_path / "cut.npy", tiny_ds, r"cut.npy: .*the file is shorter than its header says \(cut short\?\)")
    np.savez(tmp_path / "bytes.npz", scores=np.zeros((1, m)), video_ids=np.array([b"\xff\xfe"]), track_ids=tracks)
    refused(tmp_path / "bytes.npz", tiny_ds, r"bytes.npz: video_ids: an id is bytes that are not UTF-8 text")
    np.savez(tmp_path / "big.npz", scores=np.full((1, m), 2**53 + 1), video_ids=vids[:1], track_ids=tracks)
    refused(tmp_path / "big.npz", tiny_ds, r"every score must lie within 2\*\*53")


def test_an_npz_declaring_a_huge_matrix_is_refused_before_it_is_read(tiny_ds, tmp_path):
    # a 78-KB file whose header claimed 10**6 x 10**6 ended in a 7-TiB allocation's traceback
    import zipfile

    path = tmp_path / "huge.npz"
    np.savez(path, scores=np.zeros((1, 1)), video_ids=np.array(tiny_ds.video_ids[:1]),
             track_ids=np.array(tiny_ds.track_ids))
    with zipfile.ZipFile(path) as z:
        members = {name: z.read(name) for name in z.namelist()}
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1)))
    header["shape"] = (10**6, 10**6)
    import io

    fake = io.BytesIO()
    np.lib.format.write_array_header_1_0(fake, header)
    members["scores.npy"] = fake.getvalue()
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    refused(path, tiny_ds, rf"huge.npz: scores: expected shape \[1, {tiny_ds.n_tracks}\] \(video_ids by track_ids\), "
                           r"found \[1000000, 1000000\]")


def test_a_recorded_fingerprint_is_checked_and_ids_written_otherwise_are_named(tiny_ds, tiny_dir, popularity, tmp_path):
    # simulated worlds of one scale share their ids: another world's scores passed every check
    import dataclasses
    import unicodedata

    from bgmrec.data.dataset import dataset_fingerprint

    scores = all_scores(popularity, tiny_ds)
    vids, tracks = np.array(tiny_ds.video_ids), np.array(tiny_ds.track_ids)
    np.savez(tmp_path / "own.npz", scores=scores, video_ids=vids, track_ids=tracks,
             data_fingerprint=dataset_fingerprint(tiny_dir))
    assert load_scores(tmp_path / "own.npz", tiny_ds).notes == []
    np.savez(tmp_path / "other.npz", scores=scores, video_ids=vids, track_ids=tracks, data_fingerprint="0" * 16)
    refused(tmp_path / "other.npz", tiny_ds, rf"other.npz: data_fingerprint: 0{{16}}, but this dataset's is "
                                             rf"{dataset_fingerprint(tiny_dir)} \(bgmrec describe\): the scores are "
                                             "of another dataset")
    for saved in (np.bytes_(dataset_fingerprint(tiny_dir)), np.array([dataset_fingerprint(tiny_dir)])):  # as given
        np.savez(tmp_path / "own.npz", scores=scores, video_ids=vids, track_ids=tracks, data_fingerprint=saved)
        assert load_scores(tmp_path / "own.npz", tiny_ds).notes == []
    np.savez(tmp_path / "num.npz", scores=scores, video_ids=vids, track_ids=tracks, data_fingerprint=123)
    refused(tmp_path / "num.npz", tiny_ds, "num.npz: data_fingerprint: expected the dataset.s fingerprint as one")
    np.savez(tmp_path / "bare.npz", scores=scores, video_ids=vids, track_ids=tracks)
    with pytest.warns(ScoreFileWarning, match=r"bare.npz holds scores of .* \(it records no data_fingerprint: only "
                                              r"its ids were checked; save an .npz with data_fingerprint"):
        assert len(load_scores(tmp_path / "bare.npz", tiny_ds).notes) == 1  # said in Python too, not only by the CLI
    np.savez(tmp_path / "extra.npz", scores=scores, video_ids=vids, track_ids=tracks,
             features_fingerprint="deadbeefdeadbeef")  # would be believed checked
    refused(tmp_path / "extra.npz", tiny_ds, r"extra.npz: unknown field\(s\) features_fingerprint; an .npz score "
                                             "file holds scores, video_ids, track_ids and optionally data_fingerprint")
    ds = dataclasses.replace(tiny_ds, video_ids=["café", *tiny_ds.video_ids[1:]])  # typed composed (NFC)
    np.savez(tmp_path / "nfd.npz", scores=np.zeros((1, len(tracks))), track_ids=tracks,
             video_ids=np.array([unicodedata.normalize("NFD", "café")]))  # written decomposed (macOS file names)
    refused(tmp_path / "nfd.npz", ds, r"video_ids: 1 id\(s\) not in the dataset's videos.csv \(first 'cafe\u0301'; "
                                      r"'cafe\u0301' is 'café' written with other Unicode code points")


def test_reading_warns_of_float16_scores_and_rows_that_tie_every_track(tiny_ds, popularity, tmp_path):
    scores = all_scores(popularity, tiny_ds)
    scores[:3] = 0.5  # three videos tie every track
    np.save(tmp_path / "half.npy", scores.astype(np.float16))
    with pytest.warns(ScoreFileWarning) as said:
        notes = load_scores(tmp_path / "half.npy", tiny_ds).notes
    assert [str(w.message) for w in said] == notes and len(notes) == 3  # with no fingerprint to check
    assert notes[1].endswith("half.npy: float16 scores keep about 3 significant digits, so close tracks tie and "
                             "are ranked in the protocol's random order; save float32")
    assert notes[2].endswith(f"half.npy: 3 of its {tiny_ds.n_videos:,} rows score every track alike (their rankings "
                             "are the protocol's random order, chance level)")


def test_evaluate_warns_of_a_score_file_below_chance(tiny_dir, tiny_ds, popularity, tmp_path, capsys):
    # distances given as scores (lower is better) ranked every positive last, and evaluate said nothing
    from bgmrec.cli import main

    cmvae = build("cmvae", FeatureSpec.of(tiny_ds), {"epochs": 2}).fit(SplitView(tiny_ds, "train"), None)
    np.save(tmp_path / "distances.npy", -all_scores(cmvae, tiny_ds))
    assert main(["evaluate", "--run", str(tmp_path / "distances.npy"), "--data", str(tiny_dir), "--json",
                 str(tmp_path / "e.json")]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "below a random order" in line]
    assert len(said) == 1 and said[0].startswith("warning: ") and "distances.npy: full Recall@10 0.0" in said[0]
    assert said[0].removeprefix("warning: ") in json.loads((tmp_path / "e.json").read_text())["warnings"]
    np.save(tmp_path / "similarities.npy", all_scores(cmvae, tiny_ds))
    assert main(["evaluate", "--run", str(tmp_path / "similarities.npy"), "--data", str(tiny_dir)]) == 0
    assert "below a random order" not in capsys.readouterr().err


def test_the_library_s_evaluate_warns_of_a_score_file_below_chance(tiny_ds, tmp_path):
    """The README said evaluate warns; only the command line did."""
    cca = build("cca", FeatureSpec.of(tiny_ds), {"dim": 8}).fit(SplitView(tiny_ds, "train"))
    np.save(tmp_path / "distances.npy", -all_scores(cca, tiny_ds))
    with pytest.warns(EvaluationWarning, match=r"distances.npy: full Recall@10 0.0\d\d is below a random order's "
                                               r"0.059: are its scores higher for better tracks \(similarities, not "
                                               r"distances\)\?$"):
        evaluate(load_scores(tmp_path / "distances.npy", tiny_ds), tiny_ds, "test")
    np.save(tmp_path / "similarities.npy", all_scores(cca, tiny_ds))
    with warnings.catch_warnings():
        warnings.simplefilter("error", EvaluationWarning)
        evaluate(load_scores(tmp_path / "similarities.npy", tiny_ds), tiny_ds, "test")
        evaluate(cca, tiny_ds, "test")


def test_score_files_are_told_from_run_folders(tmp_path):
    (tmp_path / "run.npz").mkdir()
    assert is_score_file(tmp_path / "s.npz") and is_score_file(tmp_path / "S.NPY")
    assert not is_score_file(tmp_path / "run.npz") and not is_score_file(tmp_path / "run")


def test_evaluate_and_compare_take_a_score_file_where_they_take_a_run(tiny_dir, tiny_ds, popularity, tmp_path):
    from bgmrec.cli import main

    popularity.save(tmp_path / "pop")
    np.save(tmp_path / "outside.npy", all_scores(popularity, tiny_ds))
    args = ["--data", str(tiny_dir), "--split", "test_unbiased"]
    assert main(["evaluate", "--run", str(tmp_path / "outside.npy"), *args, "--json", str(tmp_path / "e.json")]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["label"] == "outside" and result["warnings"] == [  # an .npy cannot say whose scores it holds
        f"nothing says the score file {tmp_path / 'outside.npy'} holds scores of {tiny_dir} (an .npy score file "
        "records no dataset: only its shape was checked; save an .npz with data_fingerprint, which bgmrec describe "
        "prints, to have it checked)"]
    from bgmrec.data.dataset import sha256_file

    assert result["provenance"]["runs"] == {"run": {"scores": str((tmp_path / "outside.npy").resolve()),
                                                    "sha256": sha256_file(tmp_path / "outside.npy")}}
    assert result["full"] == evaluate(popularity, tiny_ds, "test_unbiased")["full"]
    assert main(["compare", "--baseline", str(tmp_path / "pop"), "--run", str(tmp_path / "outside.npy"), *args,
                 "--resamples", "100", "--json", str(tmp_path / "c.json")]) == 0
    paired = json.loads((tmp_path / "c.json").read_text())
    assert paired["candidate_model"] == "outside" and paired["difference"] == 0.0
    assert main(["evaluate", "--run", str(tmp_path / "outside.npy"), *args, "--mode", "content"]) == 2

