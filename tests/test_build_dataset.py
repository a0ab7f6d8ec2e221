"""build-dataset: extracted folders + a pairs CSV -> a native dataset (no media needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import media_fixtures as mf
from bgmrec.data.build import BuildConfig, build_dataset, read_pairs, uploader_preferences
from bgmrec.data.dataset import DatasetError, FieldError, dataset_fingerprint, load_dataset, save_dataset

GENRES = ["pop", "rock", "", "pop", "jazz", "rock", "pop", "pop"]


@pytest.fixture
def folders(tmp_path):
    vids = mf.write_videos_folder(tmp_path / "videos", 30, no_text=(3, 4))
    cat = mf.write_catalog_folder(tmp_path / "music",
                                  np.random.default_rng(1).standard_normal((8, 12)).astype(np.float32), GENRES)
    return vids, cat


def dropped(failed_video=0, unknown_video=0, failed_track=0, unknown_track=0, duplicate=0) -> dict[str, int]:
    """A dataset's provenance count of the pair rows dropped, by why."""
    return {"failed_video": failed_video, "unknown_video": unknown_video, "failed_track": failed_track,
            "unknown_track": unknown_track, "duplicate": duplicate}


def write_pairs(path, n_videos=30, with_time=True, extra=()):
    rng = np.random.default_rng(0)
    lines = ["video_id,track_id,uploader_id" + (",time" if with_time else "")]
    for i in range(n_videos):
        row = f"v{i},t{rng.integers(0, 8)},u{i % 5}"
        lines.append(row + (f",2024-01-{1 + i % 28:02d}T{i % 24:02d}:00:00" if with_time else ""))
    lines += list(extra)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_builds_a_valid_dataset_split_by_time(tmp_path, folders):
    vids, cat = folders
    pairs = write_pairs(tmp_path / "pairs.csv", extra=["ghost,t1,u9,2024-02-01T00:00:00",
                                                       "v1,nosuch,u1,2024-02-01T00:00:00"])
    ds = build_dataset(vids, cat, pairs, tmp_path / "data", BuildConfig(seed=0))
    loaded = load_dataset(tmp_path / "data")
    assert loaded.n_videos == 30 and loaded.n_tracks == 8
    assert loaded.genres == ["jazz", "pop", "rock", "unknown"]
    assert loaded.track_genre.tolist() == [1, 2, 3, 1, 0, 2, 1, 1]
    assert not loaded.track_new.any() and set(loaded.video_source) == {"ugc"}
    assert {s: len(r) for s, r in loaded.splits.items()} == {"train": 24, "val": 3, "test": 3}
    # by time: every test video is later than every training video
    t = {f"v{i}": (1 + i % 28) * 100 + i % 24 for i in range(30)}
    train_t = [t[loaded.video_ids[v]] for v in loaded.splits["train"][:, 0]]
    test_t = [t[loaded.video_ids[v]] for v in loaded.splits["test"][:, 0]]
    assert max(train_t) <= min(test_t)
    assert ds.provenance["split_by"] == "time"
    assert ds.provenance["pairs"]["dropped"] == dropped(unknown_video=1, unknown_track=1, duplicate=0)
    # frozen negatives: as many as the catalogue allows, never the positive
    for s in ("val", "test"):
        neg = loaded.negatives[s]
        assert neg.shape == (len(loaded.splits[s]), 7)
        assert not (neg == loaded.splits[s][:, 1:2]).any()
    assert np.allclose(loaded.uploader_pref.sum(1), 1, atol=1e-5)
    ids = json.loads((tmp_path / "data" / "uploaders.json").read_text())["ids"]
    assert ids == [f"u{i}" for i in range(5)]
    assert [loaded.video_text_mask[loaded.video_ids.index(v)] for v in ("v2", "v3", "v4")] == [True, False, False]


def test_a_videos_folder_of_another_pipelines_widths_is_built_and_recommended_from(tmp_path, folders, capsys):
    # a researcher's own features written as a videos folder: anything but 1280 and 384 columns was refused
    # ("vf/visual.npy: expected shape [2300, 1280]"), though every model takes any width (a walkthrough)
    from bgmrec.cli import main
    from bgmrec.data.dataset import save_npy_atomic, write_json_atomic

    vids, cat = folders
    rng = np.random.default_rng(2)
    save_npy_atomic(vids / "visual.npy", rng.standard_normal((30, 16)).astype(np.float32))
    save_npy_atomic(vids / "text.npy", rng.standard_normal((30, 8)).astype(np.float32) * np.load(
        vids / "text_mask.npy")[:, None])
    manifest = json.loads((vids / "manifest.json").read_text())
    write_json_atomic(vids / "manifest.json", {**manifest, "dims": {"visual": 16, "text": 8}})
    ds = build_dataset(vids, cat, write_pairs(tmp_path / "pairs.csv"), tmp_path / "data", BuildConfig(seed=0))
    assert ds.dims() == {"video_visual": 16, "video_text": 8, "music": 12}
    assert main(["train", "--data", str(tmp_path / "data"), "--model", "cca", "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert main(["recommend", "--run", str(tmp_path / "run"), "--catalog", str(cat), "--features", str(vids),
                 "--video-id", "v5", "--json", "--top", "3"]) == 0
    assert len(json.loads(capsys.readouterr().out)["tracks"]) == 3
    # the manifest's widths are the arrays': other columns, or a width that is no count, are refused by name
    write_json_atomic(vids / "manifest.json", {**manifest, "dims": {"visual": 32, "text": 8}})
    with pytest.raises(DatasetError, match=r"visual.npy: expected shape \[30, 32\]"):
        build_dataset(vids, cat, tmp_path / "pairs.csv", tmp_path / "data2", BuildConfig(seed=0))
    write_json_atomic(vids / "manifest.json", {**manifest, "dims": {"visual": "16", "text": 8}})
    with pytest.raises(DatasetError, match=r"manifest.json: dims.visual must be a positive integer \(the columns "
                                           r"of visual.npy\), found '16'"):
        build_dataset(vids, cat, tmp_path / "pairs.csv", tmp_path / "data2", BuildConfig(seed=0))
    write_json_atomic(vids / "manifest.json", manifest)  # no dims: the encoders' widths, as extract-videos writes
    with pytest.raises(DatasetError, match=r"visual.npy: 16 columns, not the 1280 extract-videos writes; a folder of "
                                           r"another pipeline's features gives its widths in manifest.json's dims"):
        build_dataset(vids, cat, tmp_path / "pairs.csv", tmp_path / "data2", BuildConfig(seed=0))


def test_random_split_is_seeded(tmp_path, folders):
    vids, cat = folders
    pairs = write_pairs(tmp_path / "pairs.csv", with_time=False)
    a = build_dataset(vids, cat, pairs, tmp_path / "a", BuildConfig(seed=3))
    b = build_dataset(vids, cat, pairs, tmp_path / "b", BuildConfig(seed=3))
    c = build_dataset(vids, cat, pairs, tmp_path / "c", BuildConfig(seed=4))
    assert a.provenance["split_by"] == "random"
    assert all(np.array_equal(a.splits[s], b.splits[s]) for s in a.splits)
    assert np.array_equal(a.negatives["test"], b.negatives["test"])
    assert not all(np.array_equal(a.splits[s], c.splits[s]) for s in a.splits)


@pytest.mark.parametrize("with_time", [False, True])
def test_a_dataset_does_not_depend_on_the_order_of_the_folders_rows(tmp_path, folders, with_time):
    # extract-videos orders rows by file path: moving clips into subfolders changed 17 of a random split's 18 test
    # videos, and its negatives (a time split: the order of videos of one time)
    vids, cat = folders
    shuffled = mf.write_videos_folder(tmp_path / "shuffled", 30, no_text=(3, 4),
                                      order=list(np.random.default_rng(5).permutation(30)))
    shuffled_cat = mf.write_catalog_folder(tmp_path / "shuffled_music", np.load(cat / "music.npy"), GENRES,
                                           order=[3, 0, 7, 1, 6, 2, 5, 4])
    pairs = write_pairs(tmp_path / "pairs.csv", with_time=with_time,
                        extra=[f"v{i},t1,u0" + (",2024-03-01T00:00:00" if with_time else "") for i in range(3)])
    a = build_dataset(vids, cat, pairs, tmp_path / "a", BuildConfig(seed=3))
    b = build_dataset(shuffled, shuffled_cat, pairs, tmp_path / "b", BuildConfig(seed=3))
    assert a.video_ids == b.video_ids and np.array_equal(a.video_visual, b.video_visual)
    assert a.track_ids == b.track_ids and np.array_equal(a.music, b.music)
    assert np.array_equal(a.track_genre, b.track_genre)
    assert all(np.array_equal(a.splits[s], b.splits[s]) for s in a.splits)
    assert all(np.array_equal(a.negatives[s], b.negatives[s]) for s in a.negatives)


def test_the_kept_rows_are_copied_a_block_at_a_time_into_the_files_np_save_writes(tmp_path, folders, monkeypatch):
    """build-dataset memory-maps the videos folder and copies the rows it keeps, in id order, a block at a time into
    the dataset's files (it held them thrice: loaded, sorted by id, selected); the files hold np.save's bytes of
    those rows, and its scratch folder beside the dataset is gone afterwards, after a failure too."""
    import io

    import bgmrec.data.build as build
    import bgmrec.data.dataset as dataset
    from bgmrec.features.video import load_video_features

    monkeypatch.setattr(dataset, "CHECK_ROWS", 4)  # several blocks of 30 videos
    _, cat = folders
    shuffled = mf.write_videos_folder(tmp_path / "shuffled", 30, no_text=(3, 4),
                                      order=list(np.random.default_rng(5).permutation(30)))
    ds = build_dataset(shuffled, cat, write_pairs(tmp_path / "pairs.csv", n_videos=20), tmp_path / "d")
    full = load_video_features(shuffled)
    kept = [full.ids.index(v) for v in ds.video_ids]
    for name in ("visual", "text"):
        saved = io.BytesIO()
        np.save(saved, getattr(full, name)[kept])
        assert (tmp_path / "d" / "features" / f"video_{name}.npy").read_bytes() == saved.getvalue(), name
    np.testing.assert_array_equal(load_dataset(tmp_path / "d").video_text_mask, full.text_mask[kept])
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"videos", "music", "shuffled", "pairs.csv", "d"}, left

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(build, "save_dataset", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        build_dataset(shuffled, cat, tmp_path / "pairs.csv", tmp_path / "e")
    assert {p.name for p in tmp_path.iterdir()} == left  # neither e nor its scratch folder


def test_building_over_a_dataset_of_other_splits_says_so(tmp_path, folders):
    # an upgrade rebuilt a dataset in place with other splits (videos now in id order): nothing said so, and the
    # runs trained on it then spoke of "data built again" without a cause
    vids, cat = folders
    pairs = write_pairs(tmp_path / "pairs.csv", with_time=False)
    said = []
    build_dataset(vids, cat, pairs, tmp_path / "d", BuildConfig(seed=3), warn=said.append)
    build_dataset(vids, cat, pairs, tmp_path / "d", BuildConfig(seed=3), warn=said.append)  # the same again
    assert said == []
    build_dataset(vids, cat, pairs, tmp_path / "d", BuildConfig(seed=4), warn=said.append)
    assert said == [f"{tmp_path / 'd'}: the dataset this build replaced had other splits, negatives, labels or "
                    "manifest (other inputs or settings, or a bgmrec before 2026-11-23, which kept the folders' row "
                    "order where videos and tracks are now in id order); runs trained on it will say they were "
                    "trained on other data"]
    timed = write_pairs(tmp_path / "timed.csv")  # a time split: another seed keeps the splits, not the negatives
    build_dataset(vids, cat, timed, tmp_path / "t", BuildConfig(seed=3), warn=said.append)
    build_dataset(vids, cat, timed, tmp_path / "t", BuildConfig(seed=4), warn=said.append)
    assert len(said) == 2 and said[1].startswith(f"{tmp_path / 't'}: the dataset this build replaced had other ")


def test_videos_without_pairs_are_left_out(tmp_path, folders):
    vids, cat = folders
    pairs = write_pairs(tmp_path / "pairs.csv", n_videos=20)
    ds = build_dataset(vids, cat, pairs, tmp_path / "d")
    assert ds.video_ids == sorted(f"v{i}" for i in range(20)) and ds.provenance["videos_without_pairs"] == 10
    assert (ds.video_uploader >= 0).all()  # -1 stays reserved for professionally made videos
    from bgmrec.features.video import load_video_features

    full = load_video_features(vids)
    assert np.array_equal(load_dataset(tmp_path / "d").video_visual, full.visual[[full.ids.index(v)
                                                                                   for v in ds.video_ids]])


def test_uploader_preferences_are_smoothed_and_cold_uploaders_get_the_population_share():
    pref = uploader_preferences(np.array([0, 0, 0, 1]), np.array([0, 0, 1, 2]), 3, 3, alpha=1.0)
    pop = np.array([3, 2, 2]) / 7  # add-one smoothed genre shares of the training pairs
    assert np.allclose(pref.sum(1), 1)
    assert np.allclose(pref[2], pop)  # no training pair
    assert np.allclose(pref[0], (np.array([2, 1, 0]) + pop) / 4)
    assert (pref > 0).all()


def test_bad_pairs_files_are_clear_errors(tmp_path, folders):
    vids, cat = folders
    p = tmp_path / "p.csv"
    p.write_text("video,track\nv1,t1\n")
    with pytest.raises(DatasetError, match="missing column 'uploader'"):
        read_pairs(p)
    p.write_bytes(b"video,track,uploader\nv1,t\xe91,u\n")
    with pytest.raises(DatasetError, match="not UTF-8"):
        read_pairs(p)
    p.write_text("video,track,uploader,time\nv1,t1,u1,yesterday\n")
    with pytest.raises(DatasetError, match="neither a number nor ISO-8601"):
        read_pairs(p)
    for bad in ("nan", "inf", "-Infinity"):
        p.write_text(f"video,track,uploader,time\nv0,t0,u0,1\nv1,t1,u1,{bad}\n")
        with pytest.raises(DatasetError, match=rf"p.csv: line 3: time '{bad}' is not a finite number"):
            read_pairs(p)
    p.write_text("video,track,uploader\nzz,t1,u1\n")
    with pytest.raises(DatasetError, match="no row names both"):
        build_dataset(vids, cat, p, tmp_path / "d")
    with pytest.raises(DatasetError, match="not a video features folder"):
        build_dataset(tmp_path / "nope", cat, p, tmp_path / "d")


# config values -> the words of the error: the library names BuildConfig's fields (it said "--val-share", an
# option a Python caller never gave); build-dataset names its options (the same words with "--" and dashes)
BAD_OPTIONS = {
    "shares over 1": (dict(val_share=0.8, test_share=0.7), "val_share 0.8 and test_share 0.7 add up to 1.5"),
    "negative share": (dict(test_share=-0.1), "test_share must be in [0, 1), got -0.1"),
    "share of 1": (dict(val_share=1.0, test_share=0.0), "val_share must be in [0, 1), got 1.0"),
    "NaN share": (dict(val_share=float("nan")), "val_share must be in [0, 1), got nan"),
    "negative negatives": (dict(negatives=-3), "negatives must be at least 0, got -3"),
    "negative seed": (dict(seed=-1), "seed must be at least 0, got -1"),
}


def as_options(words: str) -> str:
    for name in ("val_share", "test_share", "negatives", "seed"):
        words = words.replace(f"{name} ", f"--{name.replace('_', '-')} ")
    return words


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_options_out_of_range_are_refused_naming_the_field(case):
    options, words = BAD_OPTIONS[case]
    with pytest.raises(FieldError) as err:
        BuildConfig(**options)
    assert str(err.value).startswith(words) and "--" not in str(err.value), str(err.value)
    # the error carries its fields: an application words them as its own, without parsing the message
    assert set(err.value.fields) == set(options) - ({"test_share"} if case == "share of 1" else set())
    expected = str(err.value)
    for name in err.value.fields:
        expected = expected.replace(name, name.upper())
    assert err.value.worded({f: f.upper() for f in err.value.fields}) == expected != str(err.value)
    assert err.value.worded({}) == str(err.value)  # a field without a new name keeps its own
    BuildConfig(val_share=0.0, test_share=0.99, negatives=0, seed=0)  # the edges of the ranges are accepted


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_out_of_range_options_on_the_command_line_are_named_as_options_and_write_nothing(case, tmp_path, folders,
                                                                                       capsys):
    from bgmrec.cli import main

    options, words = BAD_OPTIONS[case]
    vids, cat = folders
    pairs = write_pairs(tmp_path / "pairs.csv")
    argv = [x for k, v in options.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    capsys.readouterr()
    code = main(["build-dataset", "--videos", str(vids), "--music", str(cat), "--pairs", str(pairs), "--out",
                 str(tmp_path / "d"), *argv])
    assert code == 2 and f"error: {as_options(words)}" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_shares_that_round_to_every_video_leave_no_train_and_are_refused(tmp_path, folders, capsys):
    from bgmrec.cli import main

    vids, cat = folders
    pairs = write_pairs(tmp_path / "pairs.csv", with_time=False)
    with pytest.raises(DatasetError, match="^val_share 0.49 and test_share 0.5 leave none of the 30 videos with "
                                           "pairs for train$") as err:
        build_dataset(vids, cat, pairs, tmp_path / "d", BuildConfig(val_share=0.49, test_share=0.5))
    assert isinstance(err.value, FieldError) and err.value.fields == ("val_share", "test_share")
    assert not (tmp_path / "d").exists()
    capsys.readouterr()
    assert main(["build-dataset", "--videos", str(vids), "--music", str(cat), "--pairs", str(pairs), "--out",
                 str(tmp_path / "d"), "--val-share", "0.49", "--test-share", "0.5"]) == 2
    assert capsys.readouterr().err == ("error: --val-share 0.49 and --test-share 0.5 leave none of the 30 videos "
                                       "with pairs for train\n")
    assert not (tmp_path / "d").exists()


def test_training_on_a_dataset_without_val_reports_no_best_val_figure(tmp_path, folders, capsys):
    from bgmrec.cli import main

    vids, cat = folders
    build_dataset(vids, cat, write_pairs(tmp_path / "pairs.csv"), tmp_path / "d", BuildConfig(val_share=0.0))
    capsys.readouterr()
    assert main(["train", "--data", str(tmp_path / "d"), "--model", "twotower-infonce", "--out", str(tmp_path / "r"),
                 "--epochs", "2", "--set", "batch_size=8"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "2 epochs)" in out and "nan" not in out  # it said "best val Recall@10 nan"
    assert main(["train", "--data", str(tmp_path / "d"), "--model", "twotower-infonce", "--out", str(tmp_path / "r"),
                 "--epochs", "1", "--set", "batch_size=8"]) == 0
    assert "1 epoch)" in " ".join(capsys.readouterr().out.split())  # not "1 epochs"


def test_a_videos_uploader_is_the_one_of_its_first_pair_and_duplicates_are_counted(tmp_path, folders):
    vids, cat = folders
    # v0's first pair names u3; a later pair of v0 sorts first by track (t1 < t5) and names u1
    pairs = write_pairs(tmp_path / "pairs.csv", n_videos=10, with_time=False,
                        extra=["v0,t1,u1", "v2,t0,u0", "v2,t0,u0"])
    text = pairs.read_text().replace("\nv0,", "\nv0,t5,u3\nv0_old,", 1)
    pairs.write_text(text.replace("v0_old,", "x,"), encoding="utf-8")  # the original v0 row names no video
    ds = build_dataset(vids, cat, pairs, tmp_path / "d")
    uploaders = json.loads((tmp_path / "d" / "uploaders.json").read_text())["ids"]
    assert uploaders[ds.video_uploader[ds.video_ids.index("v0")]] == "u3"
    assert uploaders[ds.video_uploader[ds.video_ids.index("v2")]] == "u2"
    assert ds.provenance["pairs"]["dropped"] == dropped(unknown_video=1, unknown_track=0, duplicate=1)


VAL_EMPTY = "without a val split, training runs every epoch (no early stopping) and tune cannot choose settings"
TEST_EMPTY = ("without a test split, evaluate has no test queries to rank (test_new_music, when it has queries, or a "
              "split of your own rows still can be)")


def test_too_few_videos_for_val_and_test_are_built_with_a_warning(tmp_path, folders, capsys):
    from bgmrec.cli import main

    vids, cat = folders
    pairs = write_pairs(tmp_path / "pairs.csv", n_videos=2)
    warnings = []
    ds = build_dataset(vids, cat, pairs, tmp_path / "d", warn=warnings.append)
    assert {s: len(r) for s, r in ds.splits.items()} == {"train": 2, "val": 0, "test": 0}
    assert warnings == ["the val and test splits are empty: only 2 video(s) have usable pairs (a split with a "
                        f"share above 0 gets one from 3 on); {VAL_EMPTY}; {TEST_EMPTY}"]
    capsys.readouterr()
    assert main(["build-dataset", "--videos", str(vids), "--music", str(cat), "--pairs", str(pairs), "--out",
                 str(tmp_path / "d2")]) == 0
    assert "warning: the val and test splits are empty" in " ".join(capsys.readouterr().err.split())
    warnings.clear()
    build_dataset(vids, cat, write_pairs(tmp_path / "p3.csv", n_videos=3), tmp_path / "d3", warn=warnings.append)
    assert warnings == []


@pytest.mark.parametrize("with_time", [True, False])
def test_a_share_of_0_leaves_its_split_empty(tmp_path, folders, with_time):
    # --val-share 0 gave val one video: every split got one from 3 videos on, asked for or not
    vids, cat = folders
    pairs = write_pairs(tmp_path / "pairs.csv", with_time=with_time)
    warnings = []
    ds = build_dataset(vids, cat, pairs, tmp_path / "d", BuildConfig(val_share=0.0), warn=warnings.append)
    videos = {s: len(np.unique(r[:, 0])) for s, r in ds.splits.items()}
    assert videos == {"train": 27, "val": 0, "test": 3}
    assert warnings == [f"the val split is empty (a share of 0); {VAL_EMPTY}"]
    warnings.clear()
    ds = build_dataset(vids, cat, pairs, tmp_path / "e", BuildConfig(val_share=0.0, test_share=0.0),
                       warn=warnings.append)
    assert {s: len(r) for s, r in ds.splits.items()} == {"train": len(ds.splits["train"]), "val": 0, "test": 0}
    # was "... and test figures will be NaN": training runs on without early stopping, evaluate refuses test
    assert warnings == [f"the val and test splits are empty (a share of 0); {VAL_EMPTY}; {TEST_EMPTY}"]
    ds = build_dataset(vids, cat, pairs, tmp_path / "f", BuildConfig(val_share=0.01, test_share=0.01))
    assert {s: len(np.unique(r[:, 0])) for s, r in ds.splits.items()} == {"train": 28, "val": 1, "test": 1}


def test_pairs_errors_name_the_physical_line(tmp_path):
    # blank lines and a quoted line break used to shift the line named (row index + 2)
    p = tmp_path / "p.csv"
    p.write_text('video,track,uploader,time\n\nv0,t0,"u\n0",1\n\nv1,,u1,2\n')
    with pytest.raises(DatasetError, match=r"p.csv: line 6 has an empty 'track'"):
        read_pairs(p)
    p.write_text("video,track,uploader,time\n\nv0,t0,u0,1\n\nv1,t1,u1,soon\n")
    with pytest.raises(DatasetError, match=r"p.csv: line 5: time 'soon' is neither"):
        read_pairs(p)


def test_genres_written_in_several_ways_are_warned_of(tmp_path, folders):
    # 'Rock' and 'rock' became two genres without a word (extract-music warns now; a catalogue made before, or
    # otherwise, reaches build-dataset as it is)
    vids, _ = folders
    cat = mf.write_catalog_folder(tmp_path / "music2", np.random.default_rng(1).standard_normal((8, 12)).astype(
        np.float32), ["pop", "Rock", "", "pop", "jazz", "rock", "pop", "pop"])
    said = []
    ds = build_dataset(vids, cat, write_pairs(tmp_path / "p.csv"), tmp_path / "d", warn=said.append)
    assert ds.genres == ["Rock", "jazz", "pop", "rock", "unknown"]  # kept as written
    assert [w for w in said if w.startswith(f"{cat / 'tracks.csv'}: 1 genre(s) are written in several ways") and
            w.endswith("'Rock' (1 track), 'rock' (1 track); write each genre one way in the metadata CSV and run "
                       "extract-music again")]
    unknown = mf.write_catalog_folder(tmp_path / "music3", np.random.default_rng(1).standard_normal((8, 12)).astype(
        np.float32), ["pop", "Unknown", "", "pop", "jazz", "rock", "pop", "pop"])  # no genre is 'unknown' to it
    said.clear()
    assert build_dataset(vids, unknown, write_pairs(tmp_path / "p.csv"), tmp_path / "u", warn=said.append).genres == [
        "Unknown", "jazz", "pop", "rock", "unknown"]
    assert [w for w in said if "'Unknown' (1 track), 'unknown' or no genre (1 track)" in w]
    from bgmrec.features.audio import genre_spelling_warning  # no genre and 'unknown' are one genre: nothing to say

    assert genre_spelling_warning(cat / "tracks.csv", ["pop", "", "unknown", "pop"]) is None
    spaced = genre_spelling_warning(cat / "tracks.csv", ["Hip Hop", "HipHop"])  # a space inside: missed
    assert "'Hip Hop' (1 track), 'HipHop' (1 track)" in spaced
    said.clear()
    build_dataset(vids, folders[1], write_pairs(tmp_path / "p.csv"), tmp_path / "e", warn=said.append)
    assert not [w for w in said if "written in several ways" in w]


def test_input_rows_with_other_fields_than_the_header_are_refused(tmp_path):
    # a pairs row with a fifth field was used as if it had four, and a short one was "an empty 'uploader'" or, its
    # time missing, made the whole split random; captions and metadata rows were as loose (an app audit)
    from bgmrec.features.audio import read_track_meta
    from bgmrec.features.video import caption_rows

    p = tmp_path / "p.csv"
    p.write_text("video,track,uploader,time\nv0,t0,u0,1\nv2,t3,u1,2,extra\n")
    with pytest.raises(DatasetError, match=r"p.csv: line 3: 5 field\(s\), expected 4 \(video,track,uploader,time\); "
                                           r"'extra' is past the last column \(a value with a comma in it must be "
                                           r"quoted\)"):
        read_pairs(p)
    for short in ("v1,t2\n", "v1,t2,u1\n"):
        p.write_text("video,track,uploader,time\nv0,t0,u0,1\n" + short)
        with pytest.raises(DatasetError, match=rf"p.csv: line 3: {short.count(',') + 1} field\(s\), expected 4 "
                                               r".*; an empty value is written as an empty field \(,,\)"):
            read_pairs(p)
    for json_text in ('[{"video": "v0", "track": "t0", "uploader": "u0"}]\n',  # it said "no rows (expected a header"
                      '[\n  {"video": "v0", "track": "t0", "uploader": "u0"},\n  {"video": "v1"}\n]\n'):
        p.write_text(json_text)
        with pytest.raises(DatasetError, match=r"p.csv: looks like JSON; the pairs are a CSV with a header video,"):
            read_pairs(p)
    p.write_text("video,track,uploader,time\nv0,t0,u0,1\nv1,t2,u1,,\nv2,t1,u0,3,,\n")  # trailing empties pass
    assert read_pairs(p).untimed == [3]
    p.write_text("video,track,uploader,\nv0,t0,u0\nv1,t2,u1,\n")  # a header's trailing unnamed column
    assert read_pairs(p).video == ["v0", "v1"]
    caps = tmp_path / "caps.csv"
    caps.write_text("id,caption\nv0,street dance, #city\n")
    with pytest.raises(DatasetError, match=r"caps.csv: line 2: 3 field\(s\), expected 2 \(id,caption\); ' #city'"):
        caption_rows(caps)
    meta = tmp_path / "meta.csv"
    meta.write_text("id,title,genre\nt0,Hello, World,pop\n")
    with pytest.raises(DatasetError, match=r"meta.csv: line 2: 4 field\(s\), expected 3 \(id,title,genre\); 'pop'"):
        read_track_meta(meta)


def test_rows_without_a_time_are_warned_of_as_the_split_turns_random(tmp_path, folders):
    # one empty time silently turned the split by time into a random one
    vids, cat = folders
    pairs = write_pairs(tmp_path / "pairs.csv", extra=["v1,t2,u1,"])
    warnings = []
    ds = build_dataset(vids, cat, pairs, tmp_path / "d", warn=warnings.append)
    assert ds.provenance["split_by"] == "random"
    assert warnings == [f"{pairs}: 1 of 31 row(s) have no time (e.g. line 32); the split is random, not by time"]
    warnings.clear()
    build_dataset(vids, cat, write_pairs(tmp_path / "p2.csv"), tmp_path / "d2", warn=warnings.append)
    build_dataset(vids, cat, write_pairs(tmp_path / "p3.csv", with_time=False), tmp_path / "d3", warn=warnings.append)
    assert warnings == []  # every row timed, or no time column at all


def test_a_time_split_says_what_it_leaves_mixed(tmp_path, folders, capsys):
    # an evaluation audit: a video's later pairs, dated after the test period began, went into training with
    # its first one without a word, and test rows whose track no training pair names (new music to the models)
    # were scored as existing music, uncounted
    vids, cat = folders
    pairs = write_pairs(tmp_path / "pairs.csv", extra=["v0,t7,u0,2024-02-01T00:00:00", "v1,t6,u1,2024-03-01T00:00:00",
                                                       "v1,t6,u1,2024-03-02T00:00:00"])  # a repeat counts once
    warnings = []
    ds = build_dataset(vids, cat, pairs, tmp_path / "d", warn=warnings.append)
    from datetime import UTC, datetime

    logged, test_videos = read_pairs(pairs), {ds.video_ids[v] for v in ds.splits["test"][:, 0].tolist()}
    test_start = min(t for v, t in zip(logged.video, logged.time, strict=True) if v in test_videos)
    assert {"v0", "v1"}.isdisjoint(test_videos)  # the two videos with a later pair are training videos

    assert warnings[0].startswith(f"{pairs}: 1 of 33 row(s) repeat an earlier row's video, track and uploader")
    assert warnings[1:] == [f"2 pair(s) of training videos are dated at or after the first test video "
                        f"({datetime.fromtimestamp(test_start, UTC).isoformat(timespec='seconds')}): a video is "
                        "placed by the time of its first pair and its later pairs go with it, so training counts "
                        "them (popularity, the track prior, the uploaders' tastes)"]
    trained = set(ds.splits["train"][:, 1].tolist())
    counted = {s: load_dataset(tmp_path / "d").summary()["splits"][s]["untrained_positives"] for s in ("val", "test")}
    assert counted == {s: sum(t not in trained for t in ds.splits[s][:, 1].tolist()) for s in ("val", "test")}
    from bgmrec.cli import main

    capsys.readouterr()
    assert main(["build-dataset", "--videos", str(vids), "--music", str(cat), "--pairs", str(pairs), "--out",
                 str(tmp_path / "d")]) == 0
    assert ("rows whose track is in no training pair (new music to the models, ranked among the existing): "
            + ", ".join(f"{k} {v}" for k, v in counted.items())) in capsys.readouterr().out.replace("\n", "")
    warnings.clear()
    build_dataset(vids, cat, write_pairs(tmp_path / "p2.csv"), tmp_path / "d2", warn=warnings.append)
    assert warnings == []  # one pair a video: nothing later than its video's time


def test_a_video_naming_very_many_tracks_is_warned_of(tmp_path, folders, monkeypatch):
    # each of a video's tracks is a query ranked without the others: a placeholder id naming thousands of tracks
    # (a review) made evaluation grow with their square, silently
    vids, cat = folders
    said = []
    many = write_pairs(tmp_path / "many.csv", extra=[f"v3,t{k},u3,2024-01-03T03:00:00" for k in range(8)])
    monkeypatch.setattr("bgmrec.data.build.MANY_TRACKS", 5)
    build_dataset(vids, cat, many, tmp_path / "m", warn=said.append)
    assert [w for w in said if "1 video(s) have more than 5 tracks (e.g. 'v3', 8): a placeholder id?" in w]


def test_new_music_is_held_out_of_training_and_ranked_apart(tmp_path, folders):
    # DESIGN: weak and strong generalisation reported apart; a built dataset had no new-music split, and the
    # uploads of tracks unseen in training were scored inside test as existing music (an evaluation audit)
    vids, cat = folders
    pairs = write_pairs(tmp_path / "pairs.csv", extra=["v2,t3,u2,2024-01-30T00:00:00"])
    logged = read_pairs(pairs)
    first_use = {}
    for track, time in zip(logged.track, logged.time, strict=True):
        first_use[track] = min(first_use.get(track, np.inf), time)
    latest = sorted(first_use, key=first_use.get)[-2:]  # 2 of the 8 named tracks: the two first used last
    said = []
    ds = build_dataset(vids, cat, pairs, tmp_path / "d", BuildConfig(new_music_share=0.25), warn=said.append)
    said_before = list(said)
    new = {ds.track_ids[t] for t in np.flatnonzero(ds.track_new)}
    other = ds.provenance["pairs"]["dropped"]["new_music_video_other_track"]
    assert other and f"{other} pair(s) of videos that also chose a held-out track name a track that is not held " \
        "out: in no split" in " ".join(said)
    assert new == set(latest)
    rows = ds.splits["test_new_music"]
    assert len(rows) and {ds.track_ids[t] for t in rows[:, 1]} <= new and ds.split_info["test_new_music"].candidates \
        == "new"
    for name in ("train", "val", "test"):  # no held-out track, nor a video of one, anywhere else
        assert not ds.track_new[ds.splits[name][:, 1]].any(), name
        assert not set(ds.splits[name][:, 0].tolist()) & set(rows[:, 0].tolist()), name
    assert set(ds.negatives["test_new_music"].ravel().tolist()) <= set(np.flatnonzero(ds.track_new).tolist())
    assert not ds.track_new[ds.negatives["test"]].any()  # test's negatives: existing music only
    assert ds.provenance["pairs"]["dropped"]["new_music_video_other_track"] == sum(
        v in {ds.video_ids[r] for r in rows[:, 0]} and t not in new for v, t in zip(logged.video, logged.track,
                                                                                    strict=True))
    load_dataset(tmp_path / "d")  # valid on disk
    random = build_dataset(vids, cat, write_pairs(tmp_path / "p.csv", with_time=False), tmp_path / "r",
                           BuildConfig(new_music_share=0.25, seed=4))
    assert random.track_new.sum() == 2 and len(random.splits["test_new_music"])  # seeded, without times
    plain = build_dataset(vids, cat, pairs, tmp_path / "plain")
    assert "test_new_music" not in plain.splits and not plain.track_new.any()
    with pytest.raises(ValueError, match="new_music_share"):
        build_dataset(vids, cat, pairs, tmp_path / "x", BuildConfig(new_music_share=0.05))  # fewer than 2 tracks
    assert "new_music_share" not in plain.provenance["config"]  # at 0, the manifest is as before it existed
    assert ds.provenance["pairs"]["used"] == sum(len(r) for k, r in ds.splits.items() if k != "pgc")
    # tracks first used at one time are held out in a seeded order, not by id
    same_time = tmp_path / "same.csv"
    same_time.write_text("video,track,uploader,time\n" + "".join(f"v{i},t{i % 8},u{i % 5},2024-01-01T00:00:00\n"
                                                                   for i in range(30)))
    held = [frozenset(np.flatnonzero(build_dataset(vids, cat, same_time, tmp_path / f"s{seed}", BuildConfig(
        new_music_share=0.25, seed=seed)).track_new).tolist()) for seed in range(4)]
    assert len(set(held)) > 1
    # refused: a share that leaves no video for training; one that empties the teacher's split
    every = tmp_path / "every.csv"  # each video's first pair an old track, its second one of two late ones
    every.write_text("video,track,uploader,time\n" + "".join(
        f"v{i},t2,u0,2024-01-01T00:00:00\nv{i},t{i % 2},u0,2024-02-01T00:00:00\n" for i in range(10)))
    with pytest.raises(ValueError, match="none is left for training"):
        build_dataset(vids, cat, every, tmp_path / "x", BuildConfig(new_music_share=0.67))
    said = []  # a share that leaves less to train on than to test with: built, with a warning (it was silent)
    most = build_dataset(vids, cat, pairs, tmp_path / "most", BuildConfig(new_music_share=0.75), warn=said.append)
    assert len(most.splits["test_new_music"]) > len(most.splits["train"]) and [
        w for w in said if w.startswith(f"new music: test_new_music has {len(most.splits['test_new_music'])} rows, "
                                        f"train {len(most.splits['train'])}: holding out 6 of the 8 tracks")]
    assert not [w for w in said_before if w.startswith("new music:")]  # the share 0.25 above: no such warning
    only = write_pairs(tmp_path / "only.csv", n_videos=25)  # v25-v29 left for professional videos
    base = build_dataset(vids, cat, only, tmp_path / "base", BuildConfig(new_music_share=0.25))
    late = sorted(base.track_ids[t] for t in np.flatnonzero(base.track_new))
    kept = sorted(base.track_ids[t] for t in np.flatnonzero(~base.track_new))
    pro = tmp_path / "pro.csv"
    pro.write_text(f"video,track\nv25,{late[0]}\nv26,{late[1]}\n")
    with pytest.raises(ValueError, match="the teacher would have nothing to train on"):
        build_dataset(vids, cat, only, tmp_path / "x", BuildConfig(new_music_share=0.25), professional_csv=pro)
    pro.write_text(f"video,track\nv25,{late[0]}\nv27,{kept[0]}\n")
    said = []
    built = build_dataset(vids, cat, only, tmp_path / "y", BuildConfig(new_music_share=0.25), warn=said.append,
                          professional_csv=pro)
    assert len(built.splits["pgc"]) == 1 and any("1 professional pair(s) name a held-out track" in w for w in said)


def test_a_rebuild_that_keeps_splits_holds_last_weeks_new_music_out_again(tmp_path, folders, capsys):
    # --new-music-share was refused with --keep-splits-of: a weekly rebuild could not report new music at all
    from bgmrec.cli import main

    vids, cat = folders

    def log(path, uses, extra=()):  # video i chose track uses[i] on day i + 1
        path.write_text("video_id,track_id,uploader_id,time\n" + "".join(
            f"v{i},t{t},u{i % 5},2024-01-{i + 1:02d}T00:00:00\n" for i, t in enumerate(uses)) + "".join(extra))
        return path

    week1_uses = [i % 4 for i in range(16)] + [4, 4, 5, 5]  # t4, t5 first used last
    week1 = build_dataset(vids, cat, log(tmp_path / "w1.csv", week1_uses), tmp_path / "w1",
                          BuildConfig(new_music_share=0.34))
    assert {week1.track_ids[j] for j in np.flatnonzero(week1.track_new)} == {"t4", "t5"}
    week2_uses = week1_uses + [0, 1, 2, 3, 0, 1, 6, 6, 7, 4]  # t6, t7 new this week; v29 chose last week's t4
    said = []
    week2 = build_dataset(vids, cat, log(tmp_path / "w2.csv", week2_uses), tmp_path / "w2",
                          BuildConfig(new_music_share=0.5), warn=said.append, keep_splits_of=tmp_path / "w1")
    assert said == []
    assert {week2.track_ids[j] for j in np.flatnonzero(week2.track_new)} == {"t4", "t5", "t6", "t7"}

    def videos(ds, split):
        return {ds.video_ids[v] for v in np.unique(ds.splits[split][:, 0])}

    assert videos(week2, "test_new_music") == videos(week1, "test_new_music") | {"v26", "v27", "v28", "v29"}
    before, after = sides_by_id(week1), sides_by_id(week2)
    assert {v: after[v] for v in before} == before  # no video last week trained on is in a test split now
    assert week2.provenance["splits_kept_from"]["new_music_held_again"] == 2
    capsys.readouterr()
    assert main(["build-dataset", "--videos", str(vids), "--music", str(cat), "--pairs", str(tmp_path / "w2.csv"),
                 "--out", str(tmp_path / "cli"), "--new-music-share", "0.5", "--keep-splits-of",
                 str(tmp_path / "w1")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "8 tracks (4 held out of training: new music)" in out and "; 2 of its held-out track(s) held out again)" \
        in out
    for name in ("train", "val", "test"):
        assert not week2.track_new[week2.splits[name][:, 1]].any(), name
    # a share more than the tracks no video last week trained on names: those, with a warning
    said = []
    more = build_dataset(vids, cat, log(tmp_path / "w2.csv", week2_uses), tmp_path / "more",
                         BuildConfig(new_music_share=0.75), warn=said.append, keep_splits_of=tmp_path / "w1")
    assert int(more.track_new.sum()) == 4 and said == [
        f"new music: 4 of the 6 tracks the share 0.75 asks for are held out of training; every other track the pairs "
        f"name is named by a video that keeps its split of {tmp_path / 'w1'}"]
    # a track last week held out that a video it trained on names now: trained on, its new-music uploads test's
    trained_video = next(v for v, side in before.items() if side == "train")
    said = []
    again = build_dataset(vids, cat, log(tmp_path / "w2b.csv", week2_uses, [f"{trained_video},t5,u0,"
                                                                           "2024-01-31T00:00:00\n"]),
                          tmp_path / "again", BuildConfig(new_music_share=0.5), warn=said.append,
                          keep_splits_of=tmp_path / "w1")
    assert "t5" not in {again.track_ids[j] for j in np.flatnonzero(again.track_new)}
    assert (f"{tmp_path / 'w1'} held out 1 track(s) that videos keeping their split now name: they are not held out "
            "now (their earlier new-music uploads are test's)") in said
    assert {"v18", "v19"} <= videos(again, "test") and sides_by_id(again)[trained_video] == "train"
    load_dataset(tmp_path / "again")  # valid on disk
    # a track last week's val video names now: not held out, so the video keeps its split (it moved to new music)
    val_video = next(v for v, side in before.items() if side == "val")
    extra = [f"{val_video},t6,u0,2024-01-31T00:00:00\n"]
    valid = build_dataset(vids, cat, log(tmp_path / "w2c.csv", week2_uses, extra), tmp_path / "valid",
                          BuildConfig(new_music_share=0.5), keep_splits_of=tmp_path / "w1")
    assert "t6" not in {valid.track_ids[j] for j in np.flatnonzero(valid.track_new)}
    assert sides_by_id(valid)[val_video] == "val"
    # nor a track last week held out that its test video names now: the video stays in test (it moved, silently)
    test_video = next(v for v, side in before.items() if side == "test")
    said = []
    tested = build_dataset(vids, cat, log(tmp_path / "w2d.csv", week2_uses, [f"{test_video},t4,u0,"
                                                                              "2024-01-31T00:00:00\n"]),
                           tmp_path / "tested", BuildConfig(new_music_share=0.5), warn=said.append,
                           keep_splits_of=tmp_path / "w1")
    assert "t4" not in {tested.track_ids[j] for j in np.flatnonzero(tested.track_new)}
    assert sides_by_id(tested)[test_video] == "test" and {"v16", "v17"} <= videos(tested, "test")
    assert any("held out 1 track(s) that videos keeping their split now name" in w for w in said)
    # no share this week: last week's new music is trained on, which is said (it was silent)
    said = []
    plain = build_dataset(vids, cat, log(tmp_path / "w2.csv", week2_uses), tmp_path / "plain", warn=said.append,
                          keep_splits_of=tmp_path / "w1")
    assert not plain.track_new.any() and said == [
        f"{tmp_path / 'w1'} held 2 track(s) out of training as new music, and this build holds none (no "
        "new_music_share): they are no longer held out (an upload of one can be trained on), and its new-music uploads "
        "are test's; give the share again to keep them out"]
    # one track left to hold out: none is (a fresh build refuses a share that holds out fewer than 2)
    lone_uses = [i % 4 for i in range(16)] + [4, 4, 5, 5] + [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]  # nothing new this week
    said = []
    lone = build_dataset(vids, cat, log(tmp_path / "lone.csv", lone_uses, [f"{trained_video},t5,u0,"
                                                                           "2024-01-31T00:00:00\n"]),
                         tmp_path / "lone", BuildConfig(new_music_share=0.4), warn=said.append,
                         keep_splits_of=tmp_path / "w1")
    assert not lone.track_new.any() and "test_new_music" not in lone.splits
    assert said[-1] == ("new music: only 1 track could be held out of training (new music needs at least 2): none is, "
                        "and this build has no test_new_music")
    assert not [w for w in said if " tracks the share " in w]  # not "1 of the 2 tracks ... are held out" first


def test_times_without_a_zone_are_utc_whatever_the_machines_zone(tmp_path, monkeypatch):
    # they were read in the machine's local zone: one pairs file split differently on another machine
    import time

    p = tmp_path / "p.csv"
    p.write_text("video,track,uploader,time\nv0,t0,u0,2024-01-01T00:00:00\nv1,t1,u1,2024-01-01T03:00:00+02:00\n"
                 "v2,t2,u2,1704067200\n")
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        times = read_pairs(p).time
    finally:
        monkeypatch.undo()
        time.tzset()
    assert times == [1704067200.0, 1704067200.0 + 3600, 1704067200.0]


def first_warnings(vids, cat, tmp_path, rows: str):
    """The pairs file of ``rows`` (video,track,uploader lines) and the first two warnings of a build from it."""
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("video,track,uploader\n" + rows, encoding="utf-8")
    warnings = []
    build_dataset(vids, cat, pairs, tmp_path / "d", warn=warnings.append,
                  config=BuildConfig(val_share=0.0, test_share=0.0))
    return pairs, warnings[:2]


def test_pairs_naming_media_files_instead_of_ids_are_told_that_ids_are_file_stems(tmp_path, folders):
    vids, cat = folders
    pairs, warnings = first_warnings(vids, cat, tmp_path, "".join(f"v{i}.mp4,t{i % 6},u0\n" for i in range(10))
                                     + "".join(f"v{i},t{i % 6}.wav,u0\n" for i in range(10, 20)) + "v20,t1,u0\n")
    assert warnings == [
        f"{pairs}: 10 of 21 row(s) name no extracted video (of {vids}) and were not used (e.g. line 2: 'v0.mp4'; "
        "ids are file stems: 'v0', not 'v0.mp4')",
        f"{pairs}: 10 of 21 row(s) name an extracted video but no catalogue track (of {cat}) and were not used "
        "(e.g. line 12: 't4.wav'; ids are file stems: 't4', not 't4.wav')"]


def test_ids_that_lost_their_leading_zeros_are_told_so(tmp_path):
    # a spreadsheet's round trip wrote the ids 000 and 003 as numbers: '0' and '3', which the warning left unexplained
    from bgmrec.data.build import zeros_lost

    vids = mf.write_videos_folder(tmp_path / "videos", 12, prefix="00")  # ids 000, 001, ..., 0011
    cat = mf.write_catalog_folder(tmp_path / "music", np.ones((8, 12), np.float32), GENRES, prefix="00")
    pairs, warnings = first_warnings(vids, cat, tmp_path, "".join(f"00{i},00{i % 3},u0\n" for i in range(1, 10))
                                     + "0,001,u0\n0010,3,u0\n")
    assert warnings == [
        f"{pairs}: 1 of 11 row(s) name no extracted video (of {vids}) and were not used (e.g. line 11: '0'; '0' may "
        "be the extracted '000', its leading zeros lost (a spreadsheet reads such ids as numbers): keep ids as text)",
        f"{pairs}: 1 of 11 row(s) name an extracted video but no catalogue track (of {cat}) and were not used "
        "(e.g. line 12: '3'; '3' may be the extracted '003', its leading zeros lost (a spreadsheet reads such ids as "
        "numbers): keep ids as text)"]
    assert zeros_lost("12", {"0012", "012", "v0012", "12"}) == "0012"  # the first in sorted order
    assert zeros_lost("0", {"000"}) == "000" and zeros_lost("7", {"70", "7"}) is None
    assert zeros_lost("12", {"clip12", "v012"}) is None  # a spreadsheet keeps letters: no zeros were lost there
    assert zeros_lost("003", {"3"}) is None and zeros_lost("v3", {"003"}) is None  # only a number lost its zeros


def test_each_kind_of_dropped_pair_is_warned_of_with_its_first_line_and_the_summary_counts_the_unpaired(
        tmp_path, folders, capsys):
    # build-dataset said "dropped pairs: unknown_video 1, unknown_track 8" with no example, and neither the 10
    # videos without a usable pair (left out) nor the catalogue tracks no pair names (kept) were mentioned
    from bgmrec.cli import main

    vids, cat = folders
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("video,track,uploader\n"
                     + "".join(f"v{i},t{i % 6},u{i % 3}\n" for i in range(20))  # lines 2-21; t6, t7 unused
                     + "v20,T1,u0\nghost,t1,u0\nv21,nosuch,u1\nv3,t3,u0\nv3,t3,u0\n", encoding="utf-8")
    warnings = []
    ds = build_dataset(vids, cat, pairs, tmp_path / "d", warn=warnings.append)
    assert warnings == [
        f"{pairs}: 1 of 25 row(s) name no extracted video (of {vids}) and were not used (e.g. line 23: 'ghost')",
        f"{pairs}: 2 of 25 row(s) name an extracted video but no catalogue track (of {cat}) and were not used "
        "(e.g. line 22: 'T1')",
        f"{pairs}: 2 of 25 row(s) repeat an earlier row's video, track and uploader and were not used again "
        "(e.g. line 25: 'v3', 't3', 'u0', as on line 5)"]
    assert ds.provenance["pairs"]["dropped"] == dropped(unknown_video=1, unknown_track=2, duplicate=2)
    assert ds.n_videos == 20 and ds.provenance["videos_without_pairs"] == 10
    assert ds.n_tracks == 8 and ds.provenance["tracks_without_pairs"] == 2  # t6 and t7, kept
    capsys.readouterr()
    assert main(["build-dataset", "--videos", str(vids), "--music", str(cat), "--pairs", str(pairs), "--out",
                 str(tmp_path / "d2")]) == 0
    out, err = capsys.readouterr()
    out = " ".join(out.split())
    assert "20 videos (10 other extracted video(s) have no usable pair: left out)" in out
    assert "8 tracks (2 named by no usable pair: kept as candidates)" in out
    assert "dropped pairs: unknown_video 1, unknown_track 2, duplicate 2" in out
    assert [line.split(" (e.g. ")[1] for line in err.splitlines()] == [
        "line 23: 'ghost')", "line 22: 'T1')", "line 25: 'v3', 't3', 'u0', as on line 5)"]


def test_a_pair_whose_id_differs_from_a_file_stem_only_in_unicode_form_names_that_file(tmp_path):
    # a pair written "é" (a database export) naming a track file macOS stored as "e" and a combining accent was
    # dropped with a warning, where --meta and --captions rows found the file: every accented clip lost to training
    vids = mf.write_videos_folder(tmp_path / "videos", 12)
    cat = mf.write_catalog_folder(tmp_path / "music", np.zeros((2, 12), np.float32), ["pop", "rock"])
    (cat / "tracks.csv").write_text("id,title,artist,genre,file,sha256\nBeyonce\u0301,A,,pop,a.wav,\n"
                                    "t1,B,,rock,b.wav,\n", encoding="utf-8")
    manifest = json.loads((cat / "manifest.json").read_text())
    (cat / "manifest.json").write_text(json.dumps({**manifest, "ids": ["Beyonce\u0301", "t1"]}))
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("video,track,uploader\n" + "".join(f"v{i},t1,u0\n" for i in range(11))
                     + "v11,Beyonc\u00e9,u0\n", encoding="utf-8")
    warnings = []
    ds = build_dataset(vids, cat, pairs, tmp_path / "d", warn=warnings.append)
    assert not [w for w in warnings if "not used" in w]
    assert ds.n_videos == 12 and ds.track_ids[0] == "Beyonce\u0301"  # the catalogue's id, as its file is named
    rows = np.concatenate([np.asarray(r) for r in ds.splits.values()])
    assert [ds.video_ids[v] for v, t, _ in rows if t == 0] == ["v11"]
    # but not onto another file: the composed one was there too, and its extraction failed
    (cat / "failures.csv").write_text("file,reason\nBeyonc\u00e9.wav,empty file (0 bytes)\n", encoding="utf-8")
    warnings = []
    ds = build_dataset(vids, cat, pairs, tmp_path / "d2", warn=warnings.append)
    assert warnings == [f"{pairs}: 1 of 12 row(s) name an extracted video but a track whose extraction failed (see "
                        f"{cat / 'failures.csv'}) and were not used (e.g. line 13: 'Beyonc\u00e9': empty file (0 "
                        "bytes))"]
    assert ds.n_videos == 11
    # a file of another format spelled alike is no failed track: the pair still finds the song
    (cat / "failures.csv").write_text("file,reason\nBeyonc\u00e9.txt,unsupported format '.txt' (expected wav)\n",
                                      encoding="utf-8")
    assert build_dataset(vids, cat, pairs, tmp_path / "d3").n_videos == 12


def test_pairs_naming_an_input_whose_extraction_failed_are_told_apart_from_typos(tmp_path, folders, capsys):
    # a pair naming a corrupt clip was counted and worded as an unknown id, as if the pairs CSV had a typo
    from bgmrec.cli import main

    vids, cat = folders
    (vids / "failures.csv").write_text("file,reason\nclips/broken.mp4,corrupt: no video stream\n"
                                       "v3.mp4,kept without text: no caption\n", encoding="utf-8")
    (cat / "failures.csv").write_text("file,reason\nsilent.wav,silent: the first 2.0 s peak at 0\n", encoding="utf-8")
    pairs = write_pairs(tmp_path / "pairs.csv", with_time=False,
                        extra=["broken,t1,u0", "ghost,t1,u0", "v1,silent,u1", "v2,nosuch,u1"])
    warnings = []
    ds = build_dataset(vids, cat, pairs, tmp_path / "d", warn=warnings.append)
    assert ds.provenance["pairs"]["dropped"] == dropped(failed_video=1, unknown_video=1, failed_track=1,
                                                        unknown_track=1)
    assert [w for w in warnings if "were not used" in w] == [
        f"{pairs}: 1 of 34 row(s) name a video whose extraction failed (see {vids / 'failures.csv'}) and were not "
        "used (e.g. line 32: 'broken': corrupt: no video stream)",
        f"{pairs}: 1 of 34 row(s) name no extracted video (of {vids}) and were not used (e.g. line 33: 'ghost')",
        f"{pairs}: 1 of 34 row(s) name an extracted video but a track whose extraction failed (see "
        f"{cat / 'failures.csv'}) and were not used (e.g. line 34: 'silent': silent: the first 2.0 s peak at 0)",
        f"{pairs}: 1 of 34 row(s) name an extracted video but no catalogue track (of {cat}) and were not used "
        "(e.g. line 35: 'nosuch')"]
    capsys.readouterr()
    assert main(["build-dataset", "--videos", str(vids), "--music", str(cat), "--pairs", str(pairs), "--out",
                 str(tmp_path / "d2")]) == 0
    assert ("dropped pairs: failed_video 1, unknown_video 1, failed_track 1, unknown_track 1"
            in " ".join(capsys.readouterr().out.split()))


def test_professional_music_videos_become_the_teacher_split_and_deccm_trains_its_teacher_on_them(tmp_path, folders,
                                                                                                   capsys):
    from bgmrec.cli import main
    from bgmrec.models.deccm import professional_split

    vids, cat = folders
    pairs = write_pairs(tmp_path / "pairs.csv", n_videos=24)  # uploads v0..v23
    pro = tmp_path / "pro.csv"
    pro.write_text("video,track\n" + "".join(f"v{i},t{i % 8}\n" for i in range(24, 30)) + "v99,t1\n",
                   encoding="utf-8")
    ds = build_dataset(vids, cat, pairs, tmp_path / "data", BuildConfig(seed=0), professional_csv=pro,
                       warn=lambda msg: None)
    loaded = load_dataset(tmp_path / "data")
    assert professional_split(loaded) == "pgc" and loaded.split_info["pgc"].role == "teacher"
    assert loaded.video_source.count("pgc") == 6 and loaded.n_videos == 30
    rows = loaded.splits["pgc"]
    assert sorted(loaded.video_ids[v] for v in rows[:, 0]) == [f"v{i}" for i in range(24, 30)]
    assert (rows[:, 2] == -1).all() and (loaded.video_uploader[rows[:, 0]] == -1).all()
    assert [loaded.track_ids[t] for t in rows[np.argsort(rows[:, 0]), 1]] == [f"t{i % 8}" for i in range(24, 30)]
    assert ds.provenance["professional"]["dropped"] == dropped(unknown_video=1, unknown_track=0, duplicate=0)
    assert ds.provenance["videos_without_pairs"] == 0
    # the command: DecCM finds its teacher's data without --teacher
    out = tmp_path / ("cli-data" + "-long" * 30)  # the summary past 200 columns stays one line (it was wrapped)
    assert main(["build-dataset", "--videos", str(vids), "--music", str(cat), "--pairs", str(pairs), "--out",
                 str(out), "--professional", str(pro)]) == 0
    summary = [line for line in capsys.readouterr().out.splitlines() if line.startswith("wrote ")]
    assert len(summary) == 1 and str(out) in summary[0] and "pgc 6" in summary[0]
    assert main(["train", "--data", str(out), "--model", "deccm", "--out", str(tmp_path / "run"), "--set",
                 "epochs=1", "--set", "hidden=16", "--set", "latent_dim=4", "--set", "prior_samples=16"]) == 0
    assert (tmp_path / "run" / "teacher" / "config.json").is_file()
    # a video is an upload or a professional video, not both
    pro.write_text("video,track\nv3,t1\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"pro.csv: 1 video\(s\) are also uploads in .*pairs.csv \(e.g. 'v3'\)"):
        build_dataset(vids, cat, pairs, tmp_path / "data2", professional_csv=pro)
    # a professional file none of whose rows is usable: refused, not a dataset without its pgc split (train then
    # said to give build-dataset --professional, which had been given)
    pro.write_text("video,track\nnosuch,t1\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"pro.csv: no row names both an extracted video .* the professional videos "
                                           r"make the split pgc$"):
        build_dataset(vids, cat, pairs, tmp_path / "data3", professional_csv=pro)
    assert not (tmp_path / "data3").exists()


def test_numbers_beside_dates_in_a_time_column_must_be_seconds_since_1970(tmp_path):
    # epoch milliseconds beside ISO dates sorted as numbers against seconds: the latest upload went to train
    p = tmp_path / "p.csv"
    p.write_text("video,track,uploader,time\nv0,t0,u0,2023-11-15T00:00:00\nv1,t1,u1,1700000000000\n")
    with pytest.raises(DatasetError, match=r"^.*p.csv: line 3: time 1700000000000 beside ISO-8601 dates \(e.g. line "
                                           r"2\) is not seconds since 1970 \(milliseconds\? a date written as a "
                                           r"number\?\); give one kind$"):
        read_pairs(p)
    p.write_text("video,track,uploader,time\nv0,t0,u0,20231114\nv1,t1,u1,2023-11-15T00:00:00\n")
    with pytest.raises(DatasetError, match=r"line 2: time 20231114 beside ISO-8601 dates"):
        read_pairs(p)
    p.write_text("video,track,uploader,time\nv0,t0,u0,3\nv1,t1,u1,1.5\n")  # numbers alone, any scale: kept
    assert read_pairs(p).time == [3.0, 1.5]
    # but not two scales: one log's milliseconds among another's seconds made the earliest upload the latest (test)
    p.write_text("video,track,uploader,time\nv0,t0,u0,1700000000000\nv1,t1,u1,1700000100\n")
    with pytest.raises(DatasetError, match=r"^.*p.csv: line 2: time 1700000000000 beside seconds since 1970 \(e.g. "
                                           r"line 3: 1700000100\) is on another scale \(milliseconds\? a counter\?\), "
                                           r"so it would sort among them wrongly; give every time on one scale$"):
        read_pairs(p)
    p.write_text("video,track,uploader,time\nv0,t0,u0,1700000000000\nv1,t1,u1,1700000100000\n")  # all ms: kept
    assert read_pairs(p).time == [1700000000000.0, 1700000100000.0]


def test_an_output_folder_it_may_not_replace_is_refused_before_any_row_is_copied(tmp_path, folders, monkeypatch):
    # the kept rows (a gigabyte at 150k videos) were copied beside --out before the refusal: on a nearly full disk
    # the user got a traceback instead of it (a review)
    import bgmrec.data.build

    vids, cat = folders
    out = tmp_path / "notes"
    out.mkdir()
    (out / "mine.txt").write_text("not a dataset")
    copied = []
    monkeypatch.setattr(bgmrec.data.build, "save_npy_rows", lambda *args: copied.append(args))
    with pytest.raises(DatasetError, match="the folder is not empty and is not a dataset"):
        build_dataset(vids, cat, write_pairs(tmp_path / "p.csv"), out, BuildConfig(seed=0))
    assert copied == [] and sorted(p.name for p in tmp_path.iterdir()) == ["music", "notes", "p.csv", "videos"]


def test_two_names_of_one_pairs_column_are_refused_not_the_first_taken(tmp_path):
    # a file with `video` and `video_id` was read by `video`, whichever held the extractors' ids
    p = tmp_path / "p.csv"
    p.write_text("video,video_id,track,uploader\nclip A,v1,t1,u1\n")
    with pytest.raises(DatasetError, match=r"p.csv: columns 'video' and 'video_id' both name the video; keep one"):
        read_pairs(p)
    p.write_text("video,track,uploader,time,date\nv1,t1,u1,1,2024-01-01\n")
    with pytest.raises(DatasetError, match=r"columns 'time' and 'date' both name the time"):
        read_pairs(p)
    p.write_text("video,track,user,user_id\nv1,t1,u1,7\n")  # a professional file's uploader is not read
    assert read_pairs(p, uploaders=False).video == ["v1"]


def test_a_csv_separated_by_semicolons_is_named_so_in_the_missing_column_error(tmp_path):
    # it said only "found ['video;track;uploader;time']"
    p = tmp_path / "p.csv"
    p.write_text("video;track;uploader;time\nv0;t0;u0;1\n")
    with pytest.raises(DatasetError, match=r"missing column 'video' .*found \['video;track;uploader;time'\] \(one "
                                           r"field holding ';': separated by ';'\? bgmrec reads comma-separated "
                                           r"files\)$"):
        read_pairs(p)
    p.write_text("video,track,uploader\nv0,t0,u0\nv1,,u1\n")  # a comma-separated file gets no hint
    with pytest.raises(DatasetError) as e:
        read_pairs(p)
    assert "separated by" not in str(e.value)


def test_a_pair_whose_id_differs_from_an_extracted_one_only_in_spaces_is_told_so(tmp_path):
    # a tracks.csv id edited to " t1" left every pair of t1 "naming no catalogue track", with no hint why
    vids = mf.write_videos_folder(tmp_path / "videos", 12)
    cat = mf.write_catalog_folder(tmp_path / "music", np.zeros((2, 12), np.float32), ["pop", "rock"])
    (cat / "tracks.csv").write_text("id,title,artist,genre,file,sha256\nt0,A,,pop,a.wav,\n t1,B,,rock,b.wav,\n",
                                    encoding="utf-8")
    manifest = json.loads((cat / "manifest.json").read_text())
    (cat / "manifest.json").write_text(json.dumps({**manifest, "ids": ["t0", " t1"]}))
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("video,track,uploader\n" + "".join(f"v{i},t0,u0\n" for i in range(11)) + "v11,t1,u0\n",
                     encoding="utf-8")
    warnings = []
    build_dataset(vids, cat, pairs, tmp_path / "d", warn=warnings.append)
    assert warnings[0].endswith("(e.g. line 13: 't1'; 't1' and the extracted ' t1' differ only in spaces around "
                                "them: write ids without them)")


def sides_by_id(ds) -> dict[str, str]:
    """Each video's split (train, val or test) by id."""
    return {ds.video_ids[v]: name for name in ("train", "val", "test") for v in np.unique(ds.splits[name][:, 0])}


@pytest.mark.parametrize("with_time", [True, False])
def test_a_rebuild_can_keep_last_weeks_split_assignment(tmp_path, folders, with_time, capsys):
    # a weekly rebuild split the grown log afresh: last week's test videos went to this week's training (by time,
    # the latest uploads are test), so last week's model and this week's were compared on videos one trained on
    from bgmrec.cli import main

    vids, cat = folders
    week1 = build_dataset(vids, cat, write_pairs(tmp_path / "w1.csv", n_videos=20, with_time=with_time),
                          tmp_path / "w1", BuildConfig(seed=3, negatives=3))  # 3 of 7: which ones is a draw
    week1_fingerprint = dataset_fingerprint(tmp_path / "w1")
    pairs = write_pairs(tmp_path / "w2.csv", n_videos=30, with_time=with_time)
    afresh = sides_by_id(build_dataset(vids, cat, pairs, tmp_path / "afresh", BuildConfig(seed=3)))
    before = sides_by_id(week1)
    assert any(afresh[v] != side for v, side in before.items())  # what the option is for
    warnings = []
    week2 = build_dataset(vids, cat, pairs, tmp_path / "w2", BuildConfig(seed=3, negatives=3), warn=warnings.append,
                          keep_splits_of=tmp_path / "w1")
    after = sides_by_id(week2)
    assert warnings == []
    assert {v: after[v] for v in before} == before
    new = sorted(set(after) - set(before), key=lambda v: int(v[1:]))
    assert new == [f"v{i}" for i in range(20, 30)]
    # the 10 new videos are split among themselves: by time the latest is test, the next val
    assert sorted(after[v] for v in new) == ["test", "train", "train", "train", "train", "train", "train", "train",
                                             "train", "val"]
    if with_time:
        order = sorted(new, key=lambda v: ((1 + int(v[1:]) % 28) * 100 + int(v[1:]) % 24))
        assert [after[v] for v in order[-2:]] == ["val", "test"]
    # and keep their frozen negatives: drawn row after row from one generator, a kept query got others next week
    # (a determinism audit), so its sampled figures could not be set beside last week's
    def negatives_by_query(ds):
        return {(ds.video_ids[v], ds.track_ids[t]): tuple(sorted(ds.track_ids[j] for j in neg))
                for s in ("val", "test") for (v, t, _), neg in zip(ds.splits[s].tolist(), ds.negatives[s], strict=True)}

    last_week, this_week = negatives_by_query(week1), negatives_by_query(week2)
    assert last_week and all(this_week[q] == negs for q, negs in last_week.items())
    kept = week2.provenance["splits_kept_from"]
    assert kept["new"] == 10 and kept["kept"] == {s: list(before.values()).count(s) for s in ("train", "val", "test")}
    assert kept["folder"] == str(tmp_path / "w1") and kept["splits_fingerprint"] == week1_fingerprint
    # the same again, into last week's own folder: read before it is replaced
    again = build_dataset(vids, cat, pairs, tmp_path / "w1", BuildConfig(seed=3), keep_splits_of=tmp_path / "w1")
    assert sides_by_id(again) == after
    capsys.readouterr()
    assert main(["build-dataset", "--videos", str(vids), "--music", str(cat), "--pairs", str(pairs), "--out",
                 str(tmp_path / "w3"), "--seed", "3", "--keep-splits-of", str(tmp_path / "w2")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert (f"(30 video(s) kept their split of {tmp_path / 'w2'}, 0 new one(s) split "
            f"{'by time' if with_time else 'at random'}") in out
    assert sides_by_id(load_dataset(tmp_path / "w3")) == after


def test_keeping_the_splits_of_a_dataset_of_other_videos_says_so(tmp_path, folders, tiny_dir):
    vids, cat = folders
    warnings = []
    ds = build_dataset(vids, cat, write_pairs(tmp_path / "p.csv"), tmp_path / "d", warn=warnings.append,
                       keep_splits_of=tiny_dir)
    assert warnings == [f"{tiny_dir}: none of this build's 30 videos with pairs is in a split of that dataset "
                        "(another app's or world's ids?); every video is split as new"]
    assert ds.provenance["splits_kept_from"]["new"] == 30
    with pytest.raises(DatasetError, match="nope"):
        build_dataset(vids, cat, write_pairs(tmp_path / "p.csv"), tmp_path / "e", keep_splits_of=tmp_path / "nope")


def test_a_kept_split_side_follows_the_split_roles(tmp_path, folders):
    # a professional video of the earlier teacher split stays on the training side; one in splits of two roles
    # takes the later of train, val, test
    from bgmrec.data.build import HeldOutHistory, kept_record, kept_sides

    vids, cat = folders
    pro = tmp_path / "pro.csv"
    pro.write_text("video,track\nv25,t1\nv26,t2\n", encoding="utf-8")
    build_dataset(vids, cat, write_pairs(tmp_path / "p.csv", n_videos=20), tmp_path / "d", professional_csv=pro)
    ds = load_dataset(tmp_path / "d")
    test_video = ds.video_ids[ds.splits["test"][0, 0]]
    train_row = ds.splits["train"][:1].copy()
    train_row[0, 0] = ds.splits["test"][0, 0]
    save_dataset(ds.with_split("extra", train_row, role="train"), tmp_path / "two")
    sides, held, from_history, _ = kept_sides(tmp_path / "two", ["v25", test_video, "v0", "nobody"],
                                              HeldOutHistory({}, []))
    assert sides.tolist() == [0, 2, ("train", "val", "test").index(sides_by_id(ds)["v0"]), -1]
    assert kept_record(tmp_path / "two", sides)["new"] == 1 and held == set()  # no new music held out
    assert not from_history.any()  # no history: every side is of its splits
    kept = kept_sides(tmp_path / "two", ["v25", "nobody"], HeldOutHistory({"nobody": 2, "v25": 1}, ["t9"]))
    assert kept.sides.tolist() == [0, 2] and kept.from_history.tolist() == [False, True]  # its own splits first
    assert test_video in kept.lost and "v25" not in kept.lost  # held out there, and not in this build
    assert kept.held_ids == {"t9"}  # a track held out in an earlier week: held again


def test_a_held_out_video_missing_one_week_keeps_its_side_when_it_comes_back(tmp_path, folders):
    # a week-1 test video missing from week 2 (its track withdrawn, its extraction failed) came back in week 3 as a
    # new video, split by time into train: a week-3 model then trained on week 1's test videos, without a word
    vids, cat = folders
    week1 = tmp_path / "w1"
    build_dataset(vids, cat, write_pairs(tmp_path / "p1.csv", n_videos=30, with_time=False), week1)  # seeded split
    sides1 = sides_by_id(load_dataset(week1))
    held = sorted(v for v, side in sides1.items() if side != "train")
    assert held and json.loads((week1 / "held_out_videos.json").read_text()) == {
        "videos": {v: ("train", "val", "test").index(sides1[v]) for v in held}, "tracks": []}
    lines = (tmp_path / "p1.csv").read_text().splitlines()
    (tmp_path / "p2.csv").write_text("\n".join(line for line in lines if line.split(",")[0] not in held) + "\n")
    warnings = []
    build_dataset(vids, cat, tmp_path / "p2.csv", tmp_path / "w2", keep_splits_of=week1,
                  warn=warnings.append)  # they are missing: said, and recorded
    assert (f"{week1}: {len(held)} of its held-out (val, test, test_new_music) videos have no usable upload in "
            f"this build (e.g. "
            f"{held[0]!r}: its track withdrawn, its extraction failed?), so its figures and this build's are not on "
            "the same queries; they keep their side if they come back") in warnings
    assert load_dataset(tmp_path / "w2").provenance["splits_kept_from"]["held_out_missing"] == len(held)
    assert not set(held) & set(load_dataset(tmp_path / "w2").video_ids)
    build_dataset(vids, cat, tmp_path / "p1.csv", tmp_path / "w3", keep_splits_of=tmp_path / "w2")  # back again
    w3 = load_dataset(tmp_path / "w3")
    assert {v: sides_by_id(w3)[v] for v in held} == {v: sides1[v] for v in held}
    assert w3.provenance["splits_kept_from"]["held_out_earlier"] == len(held)
    from bgmrec.data.build import held_out_history

    (tmp_path / "w3" / "held_out_videos.json").write_text('{"videos": {"v1": 0}}')  # train is no held-out side
    with pytest.raises(DatasetError, match=r"held_out_videos\.json: field 'videos' must map video ids to a side 1 "
                                           r"\(val\), 2 \(test\) or 3 \(test_new_music\)$"):
        held_out_history(tmp_path / "w3")


def test_a_video_named_with_two_uploaders_is_warned_of(tmp_path):
    # v0 by u0 on one row and by u3 on another (a join gone wrong on the app's side) was taken without a word
    vids = mf.write_videos_folder(tmp_path / "videos", 12)
    cat = mf.write_catalog_folder(tmp_path / "music", np.zeros((2, 12), np.float32), ["pop", "rock"])
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("video,track,uploader\nv0,t0,u0\n" + "".join(f"v{i},t1,u{i % 2}\n" for i in range(1, 12))
                     + "v0,t1,u3\nv5,t0,u1\n", encoding="utf-8")
    warnings = []
    ds = build_dataset(vids, cat, pairs, tmp_path / "d", warn=warnings.append)
    assert warnings == [f"{pairs}: 1 video(s) are named with more than one uploader (e.g. line 14: 'v0' by 'u3', by "
                        "'u0' on line 2): a video is one upload, so its rows should name one uploader; each video "
                        "keeps its first row's (videos.csv), and each row its own as the confounder's value"]
    assert ds.video_uploader[ds.video_ids.index("v0")] == 0  # u0: uploaders are sorted, u0 first
    rows = np.concatenate([np.asarray(r) for r in ds.splits.values()])
    assert sorted(int(u) for v, _, u in rows if ds.video_ids[v] == "v0") == [0, 2]  # u0 and u3 (u0, u1, u3)


def test_a_pairs_csv_that_is_not_utf8_says_how_to_save_it(tmp_path, folders):
    # captions said so; the pairs and track metadata CSVs gave the byte alone
    vids, cat = folders
    pairs = tmp_path / "pairs.csv"
    pairs.write_bytes("video_id,track_id,uploader_id\nv0,t1,Jos\xe9\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"pairs\.csv: line 2: not UTF-8 text \(byte 39: invalid continuation "
                                           r"byte\); save the file as UTF-8 \(a spreadsheet's 'CSV UTF-8'; Latin-1 "
                                           r"or Windows-1252 accents are not\)$"):
        build_dataset(vids, cat, pairs, tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_the_held_out_history_follows_what_each_build_does(tmp_path, folders):
    # a review: a history video placed in training since kept its old side; another world's history was carried on;
    # a held-out track missing a week lost its status; a professional video this week was counted as missing
    from bgmrec.data.build import held_out_history

    vids, cat = folders
    week1 = tmp_path / "w1"
    build_dataset(vids, cat, write_pairs(tmp_path / "p1.csv", n_videos=30, with_time=False), week1,
                  BuildConfig(new_music_share=0.25))
    first = load_dataset(week1)
    held_tracks = [first.track_ids[j] for j in np.flatnonzero(first.track_new)]
    assert held_tracks and held_out_history(week1).tracks == held_tracks
    held = sorted(v for v, side in sides_by_id(first).items() if side != "train")
    lines = (tmp_path / "p1.csv").read_text().splitlines()
    kept_lines = [line for line in lines if line.split(",")[0] != held[0] and line.split(",")[1] not in held_tracks]
    (tmp_path / "p2.csv").write_text("\n".join(kept_lines) + "\n")
    pro = tmp_path / "pro.csv"
    pro.write_text(f"video,track\n{held[0]},t1\n")  # a held-out video of week 1 is a professional video now
    warnings = []
    build_dataset(vids, cat, tmp_path / "p2.csv", tmp_path / "w2", BuildConfig(new_music_share=0.25),
                  keep_splits_of=week1, professional_csv=pro, warn=warnings.append)
    history = held_out_history(tmp_path / "w2")
    assert held[0] not in history.videos  # the teacher trains on it now: no longer held out
    assert set(held_tracks) <= set(history.tracks)  # not in this week's data, still held out when they come back
    assert not any(f"e.g. {held[0]!r}" in w for w in warnings)  # in the dataset, as a professional video
    build_dataset(vids, cat, tmp_path / "p1.csv", tmp_path / "w3", BuildConfig(new_music_share=0.25),
                  keep_splits_of=tmp_path / "w2")
    third = load_dataset(tmp_path / "w3")
    assert {third.track_ids[j] for j in np.flatnonzero(third.track_new)} >= set(held_tracks)  # held again
    other = mf.write_videos_folder(tmp_path / "other-videos", 12, prefix="x")  # another app's ids
    (tmp_path / "px.csv").write_text("video,track,uploader\n" + "".join(f"x{i},t{i % 6},u0\n" for i in range(12)))
    build_dataset(other, cat, tmp_path / "px.csv", tmp_path / "wx", keep_splits_of=week1)
    assert not any(v.startswith("v") for v in held_out_history(tmp_path / "wx").videos)  # week 1's not carried
