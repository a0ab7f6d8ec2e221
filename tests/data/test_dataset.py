"""The native dataset format: round trip, refusal of malformed folders (naming the file), atomic writes."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from bgmrec.data.dataset import DatasetError, load_dataset, save_dataset


def _assert_same(a, b) -> None:
    for name in ("genres", "video_ids", "video_source", "track_ids", "track_title", "track_artist"):
        assert list(getattr(a, name)) == list(getattr(b, name)), name
    for name in ("video_uploader", "track_genre", "track_new", "uploader_pref", "video_visual", "video_text",
                 "video_text_mask", "music"):
        np.testing.assert_array_equal(np.asarray(getattr(a, name)), np.asarray(getattr(b, name)), err_msg=name)
    assert set(a.splits) == set(b.splits)
    for s in a.splits:
        np.testing.assert_array_equal(np.asarray(a.splits[s]), np.asarray(b.splits[s]))
    assert set(a.negatives) == set(b.negatives)
    for s in a.negatives:
        np.testing.assert_array_equal(np.asarray(a.negatives[s]), np.asarray(b.negatives[s]))
    assert a.split_info == b.split_info
    assert a.provenance == b.provenance


def test_round_trip(tiny_world, tiny_ds, tmp_path):
    ds, _ = tiny_world
    _assert_same(ds, tiny_ds)
    assert tiny_ds.video_visual.dtype == np.float32 and tiny_ds.splits["train"].dtype == np.int64
    # a second save of the loaded dataset reproduces it, weights included
    tiny_ds_w = load_dataset(tiny_ds.root)
    tiny_ds_w.weights = {"test": np.linspace(1, 2, len(tiny_ds_w.splits["test"]))}
    back = load_dataset(save_dataset(tiny_ds_w, tmp_path / "again"))
    _assert_same(tiny_ds, back)
    np.testing.assert_array_equal(back.weights["test"], tiny_ds_w.weights["test"])
    w = back.ipw_weights("test")
    assert w.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(w, tiny_ds_w.weights["test"] / tiny_ds_w.weights["test"].sum())


def test_ipw_weights_default_inverse_popularity(tiny_ds):
    # by hand: tracks 0, 1 and 2 have 3, 1 and 0 training rows, so test rows of tracks 0, 1, 2 weigh 1/4, 1/2, 1,
    # normalised by their sum 7/4
    def rows(tracks):
        return np.array([[0, t, 0] for t in tracks], np.int64)

    roles = {s: info.role for s, info in tiny_ds.split_info.items()}
    splits = {s: rows([0, 0, 0, 1]) if s == "train" else rows([]).reshape(0, 3) for s in tiny_ds.splits}
    assert roles["train"] == "train" and sum(r == "train" for r in roles.values()) == 1
    ds = dataclasses.replace(tiny_ds, splits={**splits, "test": rows([0, 1, 2])}, weights={})
    np.testing.assert_allclose(ds.ipw_weights("test"), [1 / 7, 2 / 7, 4 / 7], rtol=1e-12)


def test_confounder_prior_for_unknown_uploader(tiny_ds):
    c = tiny_ds.confounder(np.array([-1, 0]))
    np.testing.assert_allclose(c[0], np.full(tiny_ds.n_genres, 1 / tiny_ds.n_genres))
    np.testing.assert_array_equal(c[1], tiny_ds.uploader_pref[0])


# ---- malformed folders ----------------------------------------------------------------------------

def _save_npy(path: Path, arr) -> None:
    np.save(path, arr, allow_pickle=False)


def _edit_manifest(root: Path, fn) -> None:
    man = json.loads((root / "manifest.json").read_text())
    fn(man)
    (root / "manifest.json").write_text(json.dumps(man))


def _missing(root):
    (root / "features" / "music.npy").unlink()


def _feature_rows(root):
    x = np.load(root / "features/video_visual.npy")
    _save_npy(root / "features/video_visual.npy", x[:-1])


def _feature_width(root):
    x = np.load(root / "features/music.npy")
    _save_npy(root / "features/music.npy", np.hstack([x, x[:, :1]]))


def _nan(root):
    x = np.load(root / "features/video_text.npy")
    x[5, 3] = np.nan
    _save_npy(root / "features/video_text.npy", x)


def _int_features(root):
    x = np.load(root / "features/video_visual.npy")
    _save_npy(root / "features/video_visual.npy", x.astype(np.int64))


def _split_range(root):
    x = np.load(root / "splits/train.npy")
    x[3, 1] = 10_000
    _save_npy(root / "splits/train.npy", x)


def _split_negative(root):
    x = np.load(root / "splits/val.npy")
    x[0, 0] = -1
    _save_npy(root / "splits/val.npy", x)


def _split_shape(root):
    x = np.load(root / "splits/test.npy")
    _save_npy(root / "splits/test.npy", x[:, :2])


def _truncated_manifest(root):
    text = (root / "manifest.json").read_text()
    (root / "manifest.json").write_text(text[: len(text) // 2])


def _counts_tracks(root):
    _edit_manifest(root, lambda m: m["counts"].__setitem__("tracks", m["counts"]["tracks"] + 1))


def _counts_uploaders(root):
    _edit_manifest(root, lambda m: m["counts"].__setitem__("uploaders", m["counts"]["uploaders"] + 5))


def _split_rows(root):
    _edit_manifest(root, lambda m: m["splits"]["test"].__setitem__("rows", m["splits"]["test"]["rows"] + 1))


def _modalities(root):
    _edit_manifest(root, lambda m: m["modalities"].__setitem__("music", 7))


def _uploader_rows(root):
    x = np.load(root / "uploaders.npy")
    x[2] *= 2
    _save_npy(root / "uploaders.npy", x)


def _negatives_hold_positive(root):
    neg = np.load(root / "negatives/test.npy")
    pos = np.load(root / "splits/test.npy")[:, 1]
    neg[4, 7] = pos[4]
    _save_npy(root / "negatives/test.npy", neg)


def _pickled(root):
    np.save(root / "splits/val.npy", np.array([{"video": 1}, None], dtype=object), allow_pickle=True)


def _bad_csv(root):
    lines = (root / "tracks.csv").read_text().splitlines()
    lines[3] = lines[3] + ",extra"
    (root / "tracks.csv").write_text("\n".join(lines) + "\n")


def _format_version(root):
    _edit_manifest(root, lambda m: m.__setitem__("format_version", 99))


def _weights_of(fill):
    def damage(root):
        n = len(np.load(root / "splits/test.npy"))
        (root / "weights").mkdir(exist_ok=True)
        _save_npy(root / "weights/test.npy", np.full(n, fill))
        _edit_manifest(root, lambda m: m["splits"]["test"].__setitem__("weights", True))
    return damage


def _latin1_csv(root):
    (root / "videos.csv").write_bytes((root / "videos.csv").read_bytes() + "v9,0,caf\xe9\n".encode("latin-1"))


def _text_npy(root):
    (root / "splits/val.npy").write_text("video,track,uploader\n1,2,3\n")


def _huge_header(root):
    x = np.load(root / "features/music.npy")
    with open(root / "features/music.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                 "shape": (10**12, x.shape[1])})
        f.write(x.tobytes())


def _manifest_field(key, value):
    return lambda root: _edit_manifest(root, lambda m: m.__setitem__(key, value))


def _renamed_split(name):
    def damage(root):
        _edit_manifest(root, lambda m: m["splits"].__setitem__(name, m["splits"].pop("val")))
    return damage


def _provenance_field(key, value):
    return lambda root: _edit_manifest(root, lambda m: m.setdefault("provenance", {}).__setitem__(key, value))


def _unlisted_weights(root):
    (root / "weights").mkdir(exist_ok=True)
    np.save(root / "weights/test.npy", np.ones(len(np.load(root / "splits/test.npy")), np.float32))


def _split_field(split, key, value):
    """A damage setting ``key`` of the manifest's entry of ``split`` to ``value`` (``...``: removing it)."""
    def edit(m):
        if value is ...:
            del m["splits"][split][key]
        else:
            m["splits"][split][key] = value
    return lambda root: _edit_manifest(root, edit)


def _repeated_track_id(root):
    text = (root / "tracks.csv").read_text(encoding="utf-8").splitlines()
    text[2] = text[1].split(",")[0] + "," + ",".join(text[2].split(",")[1:])  # row 2 takes row 1's id
    (root / "tracks.csv").write_text("\n".join(text) + "\n", encoding="utf-8")


def _edit_csv_cell(path, line: int, column: str, value: str) -> None:
    """Set ``column`` of the CSV file's ``line`` (1: the header) to ``value``."""
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    rows[line - 1][rows[0].index(column)] = value
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)


def _a_folder_at(rel: str):
    def damage(root):
        (root / rel).unlink()
        (root / rel).mkdir()
    return damage


# (damage, file the error must name, a word the message must contain)
CASES = {
    # a track marked new=2 was taken as new, a video without an id was kept
    "track-new-2": (lambda root: _edit_csv_cell(root / "tracks.csv", 3, "new", "2"), "tracks.csv column new",
                    "expected 0 or 1, found 2 (track 1)"),
    # any word was accepted (a fuzz audit)
    "video-source-other": (lambda root: _edit_csv_cell(root / "videos.csv", 5, "source", "xyz"),
                           "videos.csv column source", "expected ugc or pgc (an upload or a professional video), "
                                                       "found 'xyz' (video 'v000003', row 3)"),
    "video-id-empty": (lambda root: _edit_csv_cell(root / "videos.csv", 5, "id", ""), "videos.csv id",
                       "non-empty names (entry 3 is empty)"),
    # a split cut short was blamed on its negatives, a row missing from videos.csv on the features
    "split-cut-short": (lambda root: np.save(root / "splits/test.npy", np.load(root / "splits/test.npy")[:100]),
                        "manifest.json", "splits.test.rows is 184, splits/test.npy has 100 rows"),
    "videos-row-missing": (lambda root: (root / "videos.csv").write_text("\n".join(
        (root / "videos.csv").read_text(encoding="utf-8").splitlines()[:-1]) + "\n", encoding="utf-8"),
        "manifest.json", "counts.videos is 2600, the tables hold 2599"),
    # a folder where a file belongs was said to be a missing file
    "folder-for-manifest": (_a_folder_at("manifest.json"), "manifest.json", "is a folder, not a file"),
    "folder-for-npy": (_a_folder_at("features/video_text_mask.npy"), "features/video_text_mask.npy",
                       "is a folder, not a file"),
    "folder-for-csv": (_a_folder_at("videos.csv"), "videos.csv", "is a folder, not a file"),
    # a link loop was "file is missing", where the extractors say what it is (a fuzz audit)
    "csv-link-loop": (lambda root: ((root / "videos.csv").unlink(), (root / "videos.csv").symlink_to("videos.csv")),
                      "videos.csv", "is a symbolic link to nothing (its target is missing, or a loop)"),
    "csv-a-pipe": (lambda root: ((root / "videos.csv").unlink(), os.mkfifo(root / "videos.csv")), "videos.csv",
                   "is not a regular file (a pipe, a socket or a device)"),
    "csv-link-to-a-pipe": (lambda root: (os.mkfifo(root / "fifo"), (root / "videos.csv").unlink(),
                                         (root / "videos.csv").symlink_to(root / "fifo")),
                           "videos.csv", "is not a regular file (a pipe"),  # not a link to nothing (a review)
    "npy-link-to-nothing": (lambda root: ((root / "uploaders.npy").unlink(),
                                          (root / "uploaders.npy").symlink_to(root / "gone.npy")),
                            "uploaders.npy", "is a symbolic link to nothing"),
    "missing-file": (_missing, "features/music.npy", "missing"),
    "feature-rows": (_feature_rows, "features/video_visual.npy", "shape"),
    "feature-width": (_feature_width, "features/music.npy", "columns"),
    "nan-features": (_nan, "features/video_text.npy", "NaN"),
    "int-features": (_int_features, "features/video_visual.npy", "float"),
    "split-out-of-range": (_split_range, "splits/train.npy", "ids in"),
    "split-negative-id": (_split_negative, "splits/val.npy", "ids in"),
    "split-shape": (_split_shape, "splits/test.npy", "shape"),
    "truncated-manifest": (_truncated_manifest, "manifest.json", "JSON"),
    "counts-tracks": (_counts_tracks, "manifest.json", "counts.tracks"),
    "counts-uploaders": (_counts_uploaders, "manifest.json", "counts.uploaders"),
    "split-rows": (_split_rows, "manifest.json", "test"),
    "modalities": (_modalities, "manifest.json", "modalities.music"),
    "uploader-rows": (_uploader_rows, "uploaders.npy", "sum"),
    "negatives-hold-positive": (_negatives_hold_positive, "negatives/test.npy", "positive"),
    "pickled-npy": (_pickled, "splits/val.npy", "pickle"),
    "bad-csv": (_bad_csv, "tracks.csv", "fields"),
    "format-version": (_format_version, "manifest.json", "format_version"),
    "zero-weights": (_weights_of(0.0), "weights/test.npy", "not all zero"),
    "text-weights": (_weights_of("1.0"), "weights/test.npy", "numeric"),
    "text-as-npy": (_text_npy, "splits/val.npy", "not a .npy file"),
    "latin1-csv": (_latin1_csv, "videos.csv", "not UTF-8"),
    "huge-header": (_huge_header, "features/music.npy", "declares shape"),
    "splits-list": (_manifest_field("splits", ["train"]), "manifest.json", "'splits' must be a JSON object"),
    "counts-list": (_manifest_field("counts", [1, 2]), "manifest.json", "'counts' must be a JSON object"),
    "genres-null": (_manifest_field("genres", None), "manifest.json", "'genres' must be a JSON list"),
    "genres-numbers": (_manifest_field("genres", [1, 2, 3, 4, 5, 6]), "manifest.json", "list of names"),
    "provenance-text": (_manifest_field("provenance", "x"), "manifest.json", "'provenance' must be"),
    "format-version-text": (_manifest_field("format_version", "1"), "manifest.json", "must be a JSON integer"),
    "counts-text": (lambda root: _edit_manifest(root, lambda m: m["counts"].__setitem__("videos", "2600")),
                    "manifest.json", "counts.videos is '2600'"),
    # a number written as text was shown as the number ("splits.test.rows is 184, splits/test.npy has 184 rows"); a
    # null split entry said "'NoneType' object is not subscriptable"
    "split-rows-text": (lambda root: _edit_manifest(root, lambda m: m["splits"]["test"].__setitem__("rows", str(
        m["splits"]["test"]["rows"]))), "manifest.json: splits.test",
        "field 'rows' must be a JSON integer, found string"),
    "modalities-text": (lambda root: _edit_manifest(root, lambda m: m["modalities"].__setitem__("music", str(
        m["modalities"]["music"]))), "manifest.json", "modalities.music is '"),
    "split-entry-null": (lambda root: _edit_manifest(root, lambda m: m["splits"].__setitem__("val", None)),
                         "manifest.json", "splits: field 'val' must be a JSON object, found null"),
    "split-name-a-path": (_renamed_split("../../../outside"), "manifest.json", "split name '../../../outside'"),
    "split-name-hidden": (_renamed_split(".val"), "manifest.json", "not starting with '.'"),
    "split-name-backslash": (_renamed_split("a\\b"), "manifest.json", "without '/', '\\' or NUL"),
    "split-name-empty": (_renamed_split(""), "manifest.json", "split name ''"),
    "genres-repeated": (lambda root: _edit_manifest(root, lambda m: m["genres"].__setitem__(1, m["genres"][0])),
                        "manifest.json genres", "appears twice"),
    "track-id-repeated": (_repeated_track_id, "tracks.csv id", "appears twice"),
    "prior-text": (_provenance_field("user_prior_mean", "abcdef"), "provenance.user_prior_mean", "finite numbers"),
    "prior-zeros": (_provenance_field("user_prior_mean", [0] * 6), "provenance.user_prior_mean", "positive sum"),
    "prior-huge": (_provenance_field("user_prior_mean", [10 ** 400] + [1] * 5), "provenance.user_prior_mean",
                   "finite numbers"),
    "prior-length": (_provenance_field("user_prior_mean", [1, 1]), "provenance.user_prior_mean", "list of 6"),
    # a split's manifest entry read by truthiness (a fuzz audit): null or no negatives dropped the sampled and IPW
    # figures without a word, "false" as weights opened a file, and a split file of the wrong shape was blamed on
    # the manifest's row count
    "negatives-null": (_split_field("test", "negatives", None), "manifest.json: splits.test",
                       "field 'negatives' must be a JSON integer, found null"),
    "negatives-gone": (_split_field("test", "negatives", ...), "manifest.json",
                       "splits.test.negatives is missing, but negatives/test.npy is there: the figures it gives would "
                       "be left out without a word; set it to 100, its columns, or remove the file"),
    "negatives-zero": (_split_field("test", "negatives", 0), "manifest.json",
                       "splits.test.negatives is 0, but negatives/test.npy is there"),
    "weights-text": (_split_field("test", "weights", "false"), "manifest.json: splits.test",
                     "field 'weights' must be a JSON true/false, found string"),
    "weights-unlisted": (_unlisted_weights, "manifest.json",
                         "splits.test.weights is False, but weights/test.npy is there: the figures it gives would "
                         "be left out without a word; set it to true, or remove the file"),
    "split-flat": (lambda root: np.save(root / "splits/test.npy", np.load(root / "splits/test.npy").reshape(-1)),
                   "splits/test.npy", "shape"),
    "split-transposed": (lambda root: np.save(root / "splits/test.npy", np.load(root / "splits/test.npy").T.copy()),
                         "splits/test.npy", "shape"),
    "settings-text": (_provenance_field("settings", "sample_rate=22050"), "provenance.settings", "JSON object"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_folder_raises_naming_the_file(tiny_copy, case):
    damage, fname, word = CASES[case]
    damage(tiny_copy)
    with pytest.raises(DatasetError) as err:
        load_dataset(tiny_copy)
    msg = str(err.value)
    assert fname in msg, msg
    assert word.lower() in msg.lower(), msg
    assert "\n" not in msg  # one line


def test_a_csv_saved_with_a_byte_order_mark_or_blank_lines_loads_as_written(tiny_copy, tiny_ds):
    # a spreadsheet's "CSV UTF-8" (a BOM) was "expected header id,genre,..., found ['\\ufeffid', ...]", and a blank
    # line an editor left at the end "row 2602 has 0 fields", where every other CSV bgmrec reads passes them
    videos = (tiny_copy / "videos.csv").read_text(encoding="utf-8").splitlines()
    (tiny_copy / "videos.csv").write_text("\n".join([videos[0], videos[1], "", *videos[2:]]) + "\n\n\n",
                                          encoding="utf-8")
    (tiny_copy / "tracks.csv").write_bytes(b"\xef\xbb\xbf" + (tiny_copy / "tracks.csv").read_bytes())
    ds = load_dataset(tiny_copy)
    assert list(ds.video_ids) == list(tiny_ds.video_ids) and list(ds.track_ids) == list(tiny_ds.track_ids)
    assert list(ds.track_title) == list(tiny_ds.track_title)
    lines = (tiny_copy / "tracks.csv").read_text(encoding="utf-8-sig").splitlines()
    (tiny_copy / "tracks.csv").write_text("\n".join([lines[0], "", lines[1] + ",extra", *lines[2:]]) + "\n",
                                          encoding="utf-8")
    with pytest.raises(DatasetError, match=r"tracks.csv: line 3 has 6 fields, expected 5$"):  # its line in the file
        load_dataset(tiny_copy)


def test_pickled_npy_is_refused_without_mmap_too(tiny_copy):
    _pickled(tiny_copy)
    with pytest.raises(DatasetError, match="pickle"):
        load_dataset(tiny_copy, mmap=False)


def test_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope")


def test_save_refuses_invalid_dataset(tiny_ds, tmp_path):
    bad = load_dataset(tiny_ds.root, mmap=False)
    bad.music = bad.music.copy()
    bad.music[0, 0] = np.inf
    with pytest.raises(DatasetError, match="features/music.npy"):
        save_dataset(bad, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


# ---- atomic writes ---------------------------------------------------------------------------------

def _failing_save(monkeypatch):
    real = np.save
    calls = []

    def save(*args, **kwargs):
        calls.append(args[0])
        if len(calls) > 1:
            raise OSError("disk full (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(np, "save", save)
    return calls


def test_failed_write_leaves_previous_dataset_unchanged(tiny_ds, tmp_path, monkeypatch):
    out = tmp_path / "data"
    save_dataset(load_dataset(tiny_ds.root), out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    changed = load_dataset(tiny_ds.root, mmap=False)
    changed.music = changed.music + 1.0
    calls = _failing_save(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        save_dataset(changed, out)
    monkeypatch.undo()
    assert len(calls) == 2
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    _assert_same(load_dataset(out), tiny_ds)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temporary folder left


def test_failed_first_write_leaves_nothing(tiny_ds, tmp_path, monkeypatch):
    _failing_save(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        save_dataset(load_dataset(tiny_ds.root), tmp_path / "data")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_a_stop_between_the_two_renames_puts_the_old_folder_back(tmp_path, monkeypatch):
    from bgmrec.data.dataset import atomic_write_dir

    out = tmp_path / "data"
    atomic_write_dir(out, lambda d: (d / "manifest.json").write_text('{"format_version": 1}'))
    (out / "old.txt").write_text("the previous content")
    real_rename = Path.rename

    def rename(self, target):
        if self.name.startswith(".data.tmp-"):
            raise KeyboardInterrupt  # after out was moved aside, before the new folder took its place
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_dir(out, lambda d: (d / "manifest.json").write_text('{"format_version": 1}'))
    monkeypatch.undo()
    assert (out / "old.txt").read_text() == "the previous content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_the_next_write_puts_back_the_folder_a_killed_write_moved_aside(tmp_path, capsys):
    # kill -9 between the two renames left no `data`: the previous folder only as the hidden .data.old-PID, which
    # nothing pointed to and no later run put back; every kill left a .data.tmp-PID-* behind
    import os
    import subprocess
    import sys

    from bgmrec.data.dataset import atomic_write_dir

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a process id that no longer runs
    older = tmp_path / f".data.old-{dead.pid}0"  # an earlier killed write's (an id that cannot be running)
    older.mkdir()
    (older / "old.txt").write_text("an earlier content")
    os.utime(older, (1, 1))
    aside = tmp_path / f".data.old-{dead.pid}"
    aside.mkdir()
    (aside / "manifest.json").write_text('{"format_version": 1}')
    (aside / "old.txt").write_text("the previous content")
    (tmp_path / ".data.tmp-99999999999999999999-x").mkdir()  # no process has such an id (os.kill: OverflowError)
    (tmp_path / f".data.tmp-{dead.pid}-abcd1234").mkdir()  # the killed write's half-written folder
    live = tmp_path / f".data.tmp-{os.getpid()}-live0000"  # a running writer's: left to it
    live.mkdir()

    def fail(folder):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_dir(tmp_path / "data", fail)
    assert (tmp_path / "data" / "old.txt").read_text() == "the previous content"
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "data"]
    assert "put back the previous folder, which a killed write had moved aside" in capsys.readouterr().err


def test_a_stop_just_after_the_temporary_folder_is_made_removes_it(tmp_path, monkeypatch):
    # SIGTERM right after the folder appeared (as a scheduler watching it would send it) left it behind
    import os

    from bgmrec.data.dataset import atomic_write_dir

    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        real_mkdir(path, *args, **kwargs)
        if ".data.tmp" in os.fspath(path):
            raise KeyboardInterrupt  # the stop, arriving as the call returns

    monkeypatch.setattr(os, "mkdir", mkdir)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_dir(tmp_path / "data", lambda d: (d / "manifest.json").write_text('{"format_version": 1}'))
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_a_written_folder_has_the_permissions_the_umask_gives(tmp_path):
    import os
    import stat

    from bgmrec.data.dataset import atomic_write_dir

    old = os.umask(0o022)
    try:
        atomic_write_dir(tmp_path / "data", lambda d: (d / "manifest.json").write_text('{"format_version": 1}'))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o755  # readable by the group, as a mkdir makes


def test_a_temporary_name_taken_by_another_writer_is_left_to_it(tmp_path, monkeypatch):
    import os
    import secrets

    from bgmrec.data.dataset import atomic_write_dir

    monkeypatch.setattr(secrets, "token_hex", lambda n: "same")
    theirs = tmp_path / f".data.tmp-{os.getpid()}-same"
    theirs.mkdir()
    (theirs / "manifest.json").write_text("another writer's")
    with pytest.raises(FileExistsError):
        atomic_write_dir(tmp_path / "data", lambda d: (d / "manifest.json").write_text('{"format_version": 1}'))
    assert (theirs / "manifest.json").read_text() == "another writer's"


def test_overwrite_replaces_dataset(tiny_ds, tmp_path):
    out = tmp_path / "data"
    save_dataset(load_dataset(tiny_ds.root), out)
    changed = load_dataset(tiny_ds.root, mmap=False)
    changed.music = changed.music + 1.0
    save_dataset(changed, out)
    np.testing.assert_array_equal(load_dataset(out).music, np.asarray(tiny_ds.music) + 1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_an_existing_folder_that_bgmrec_did_not_write_is_never_replaced(tiny_ds, tmp_path):
    notes = tmp_path / "thesis"
    notes.mkdir()
    (notes / "thesis.tex").write_text("years of work")
    with pytest.raises(DatasetError, match="is not a dataset.*refusing to replace"):
        save_dataset(load_dataset(tiny_ds.root), notes)
    assert [p.name for p in notes.iterdir()] == ["thesis.tex"]
    a_file = tmp_path / "a.txt"
    a_file.write_text("keep me")
    with pytest.raises(DatasetError, match="exists and is not a folder"):
        save_dataset(load_dataset(tiny_ds.root), a_file)
    assert a_file.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "thesis"]  # nothing hidden or left behind
    catalogue = tmp_path / "catalog"  # another bgmrec folder with a manifest: not a dataset either
    catalogue.mkdir()
    (catalogue / "manifest.json").write_text('{"kind": "music catalogue", "format_version": 1}')
    with pytest.raises(DatasetError, match=r"is not a dataset \(it is a folder of kind 'music catalogue' by its "
                       r"manifest.json\); refusing"):
        save_dataset(load_dataset(tiny_ds.root), catalogue)
    assert (catalogue / "manifest.json").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    save_dataset(load_dataset(tiny_ds.root), empty)  # an empty folder is filled
    _assert_same(load_dataset(empty), tiny_ds)


def test_unsigned_and_narrow_integer_ids_load_as_int64(tiny_copy):
    for rel in ("splits/test.npy", "negatives/test.npy"):
        _save_npy(tiny_copy / rel, np.load(tiny_copy / rel).astype(np.uint32 if "neg" in rel else np.uint64))
    ds = load_dataset(tiny_copy)
    assert ds.splits["test"].dtype == np.int64 and ds.negatives["test"].dtype == np.int64
    np.testing.assert_array_equal(ds.splits["test"], np.load(tiny_copy / "splits/test.npy").astype(np.int64))


def test_float_matrices_are_checked_a_block_of_rows_at_a_time_naming_the_row(monkeypatch):
    import bgmrec.data.dataset as dataset

    monkeypatch.setattr(dataset, "CHECK_ROWS", 2)
    m = np.zeros((7, 3))
    dataset.check_float_matrix(m, (7, 3), "w", "f.npy")
    m[5, 1] = np.nan
    with pytest.raises(DatasetError, match=re.escape("w/f.npy: expected finite values (row [5] has NaN or inf)")):
        dataset.check_float_matrix(m, (7, 3), "w", "f.npy")
    dataset.check_float_matrix(m, (7, 3), "w", "f.npy", rows=np.array([6, 0, 4]))  # row 5 is not read
    m[5, 1], m[6, 0] = 0.0, 1e300
    with pytest.raises(DatasetError, match=re.escape("w/f.npy: expected values within float32's range, as features "
                                                     "are stored and used (row [6] has 1e+300")):
        dataset.check_float_matrix(m, (7, 3), "w", "f.npy")


def test_rows_saved_in_blocks_are_the_bytes_np_save_writes(tmp_path, monkeypatch, tiny_ds):
    import io

    import bgmrec.data.dataset as dataset

    monkeypatch.setattr(dataset, "CHECK_ROWS", 3)
    source = np.random.default_rng(0).standard_normal((10, 4, 2))  # float64, saved as float32
    np.save(tmp_path / "source.npy", source)
    for rows in ([7, 0, 3, 3, 9, 1, 2], [], [4]):
        saved = io.BytesIO()
        np.save(saved, source[rows].astype(np.float32))
        back = dataset.save_npy_rows(tmp_path / "rows.npy", np.load(tmp_path / "source.npy", mmap_mode="r"), rows)
        assert (tmp_path / "rows.npy").read_bytes() == saved.getvalue() and back.shape == (len(rows), 4, 2)
    with pytest.raises(ValueError, match=r"written names files that are not the dataset's feature arrays: \['x.npy'\]"):
        dataset.save_dataset(tiny_ds, tmp_path / "d", written={"x.npy": tmp_path / "rows.npy"})


# ---- frozen negatives ------------------------------------------------------------------------------

def test_sample_negatives_distinct_never_positive_and_uniform():
    from bgmrec.data.negatives import sample_negatives

    rng = np.random.default_rng(0)
    cand = np.arange(10, 30)  # 20 candidates
    pos = np.tile(np.array([10, 15, 29]), 2000)
    neg = sample_negatives(pos, cand, 5, rng, chunk=97)
    assert neg.shape == (6000, 5) and neg.dtype == np.int64
    assert not (neg == pos[:, None]).any()
    assert np.isin(neg, cand).all()
    assert all(len(set(r)) == 5 for r in neg.tolist())
    # each of the 19 other candidates is drawn with probability 5/19 per row
    rows = neg[pos == 15]
    counts = np.bincount(rows.ravel(), minlength=30)[cand]
    expected = len(rows) * 5 / 19
    assert counts[cand == 15] == 0
    others = counts[cand != 15]
    assert np.abs(others - expected).max() < 5 * np.sqrt(expected)
    # the same generator state gives the same negatives (frozen on disk, but also reproducible)
    np.testing.assert_array_equal(sample_negatives(pos, cand, 5, np.random.default_rng(0), chunk=97), neg)


def test_sample_negatives_do_not_depend_on_the_block(monkeypatch):
    """Blocks of any size, by rows (chunk) or by keys (MAX_BLOCK), draw the same negatives: a simulated world's
    negatives stay byte-identical whatever the catalogue's width makes the block. A positive that is not a
    candidate is simply never excluded."""
    from bgmrec.data import negatives

    cand = np.arange(5, 400)
    pos = np.random.default_rng(3).integers(0, 410, 1000)  # some below and above the candidates
    want = negatives.sample_negatives(pos, cand, 20, np.random.default_rng(0))
    assert not (want == pos[:, None]).any() and np.isin(want, cand).all()
    for chunk in (1, 7, 999):
        got = negatives.sample_negatives(pos, cand, 20, np.random.default_rng(0), chunk=chunk)
        np.testing.assert_array_equal(got, want)

    class Recorded:  # a generator noting the shape of each block of keys
        def __init__(self):
            self.rng, self.shapes = np.random.default_rng(0), []

        def random(self, shape):
            self.shapes.append(shape)
            return self.rng.random(shape)

    monkeypatch.setattr(negatives, "MAX_BLOCK", 4 * len(cand))  # 4 rows of keys at once
    rng = Recorded()
    np.testing.assert_array_equal(negatives.sample_negatives(pos, cand, 20, rng), want)
    assert set(rng.shapes) == {(4, len(cand))} and len(rng.shapes) == 250


@pytest.mark.parametrize("draw", ["random", "by_id"])
def test_an_excluded_track_outside_the_candidates_changes_no_negative(draw):
    """A new-music row's video may have another, existing track: it is no candidate, so excluding it must leave
    the row's negatives as they are (looked up among the candidates, a track that is none had landed on the
    column of another and pushed that candidate back)."""
    from bgmrec.data.negatives import id_keys, negatives_by_id, sample_negatives

    cand = np.arange(10, 16)  # tracks 0 to 9 are not candidates; 4 of a row's other 5 are drawn
    pos = np.array([12, 13, 15])
    outside = (np.array([0, 1, 2]), np.array([3, 5, 9]))  # each row's other positive, outside the candidates

    def draw_negatives(exclude):
        if draw == "random":
            return sample_negatives(pos, cand, 4, np.random.default_rng(4), exclude=exclude)
        return negatives_by_id(pos, id_keys(["a", "b", "c"]), cand, id_keys([f"t{i}" for i in range(16)]), 4,
                               exclude=exclude)

    np.testing.assert_array_equal(draw_negatives(outside), draw_negatives(None))


def test_sample_negatives_all_others_and_too_many():
    from bgmrec.data.negatives import sample_negatives

    rng = np.random.default_rng(1)
    neg = sample_negatives(np.array([2, 0]), np.array([0, 1, 2, 3, 3]), 3, rng)  # duplicates are ignored
    assert [sorted(r) for r in neg.tolist()] == [[0, 1, 3], [1, 2, 3]]
    with pytest.raises(ValueError, match="cannot draw 4 negatives from 4 candidates"):
        sample_negatives(np.array([0]), np.arange(4), 4, rng)


def test_text_mask_must_be_boolean(tiny_copy):
    m = np.load(tiny_copy / "features/video_text_mask.npy")
    _save_npy(tiny_copy / "features/video_text_mask.npy", m.astype(np.float64) * 0.5)
    with pytest.raises(DatasetError, match="features/video_text_mask.npy"):
        load_dataset(tiny_copy)


def test_a_training_row_with_held_out_music_is_refused(tiny_world, tmp_path):
    ds, _ = tiny_world
    rows = np.array(ds.splits["train"])
    rows[0, 1] = int(np.flatnonzero(ds.track_new)[0])
    bad = dataclasses.replace(ds, splits={**ds.splits, "train": rows})
    with pytest.raises(DatasetError, match="splits/train.npy.*held-out track"):
        save_dataset(bad, tmp_path / "bad")


def _replaced(ds, **changes):
    return dataclasses.replace(ds, **{k: {**getattr(ds, k), **v} for k, v in changes.items()})


def test_splits_and_negatives_outside_their_candidate_set_are_refused(tiny_world, tmp_path):
    ds, _ = tiny_world
    new_track, old_track = int(np.flatnonzero(ds.track_new)[0]), int(np.flatnonzero(~ds.track_new)[0])
    test = np.array(ds.splits["test"])  # candidates: existing music
    test[2, 1] = new_track
    with pytest.raises(DatasetError, match=r"splits/test.npy: expected positive tracks in the split's candidate set "
                                           r"\('existing' in manifest.json; row \[2\]"):
        _replaced(ds, splits={"test": test}).validate()
    neg = np.array(ds.negatives["test_new_music"])  # candidates: new music
    neg[4, 0] = old_track
    with pytest.raises(DatasetError, match=r"negatives/test_new_music.npy: expected negatives in the split's "
                                           r"candidate set \('new' in manifest.json; row \[4\]"):
        _replaced(ds, negatives={"test_new_music": neg}).validate()


@pytest.mark.parametrize("split", ["test", "val"])
def test_a_test_or_val_row_that_is_a_training_pair_is_refused(tiny_world, tmp_path, split):
    """Its answer was trained on: a test figure, or model selection on val, would hold it."""
    ds, _ = tiny_world
    rows = np.array(ds.splits[split])
    rows[5, :2] = ds.splits["train"][10, :2]
    negatives = np.array(ds.negatives[split])
    negatives[5] = np.setdiff1d(np.flatnonzero(~ds.track_new), [rows[5, 1]])[: negatives.shape[1]]
    bad = _replaced(ds, splits={split: rows}, negatives={split: negatives})
    with pytest.raises(DatasetError, match=rf"splits/{split}.npy: expected no \(video, track\) pair of a training "
                                           r"split \(row \[5\]"):
        save_dataset(bad, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_a_val_row_of_a_held_out_track_is_refused_whatever_its_candidates(tiny_world):
    from bgmrec.data.dataset import SplitInfo

    ds, _ = tiny_world
    val = np.array(ds.splits["val"])
    val[2, 1] = int(np.flatnonzero(ds.track_new)[0])
    with pytest.raises(DatasetError, match=r"splits/val.npy: expected only tracks not marked new in tracks.csv "
                                           r"\(a train/val row uses a held-out track\)"):
        _replaced(ds, splits={"val": val}, split_info={"val": SplitInfo("val", "all")}).validate()


def test_a_negative_ipw_weight_is_refused_though_the_sum_is_positive(tiny_world):
    ds, _ = tiny_world
    weights = np.ones(len(ds.splits["test"]))
    weights[4] = -1.0
    with pytest.raises(DatasetError, match=r"weights/test.npy: expected finite numeric weights >= 0, not all zero"):
        _replaced(ds, weights={"test": weights}).validate()


def test_a_genre_id_of_minus_one_is_refused_not_read_as_the_last_genre(tiny_world):
    ds, _ = tiny_world
    genre = np.array(ds.track_genre)
    genre[4] = -1
    with pytest.raises(DatasetError, match=r"tracks.csv genre: expected ids in \[0, \d+\) \(entry \[4\] is \[-1\]\)"):
        dataclasses.replace(ds, track_genre=genre).validate()


def test_another_folder_bgmrec_writes_is_named_for_what_it_is_not_a_missing_field(tiny_ds, tmp_path):
    # a catalogue given as a dataset said "catalog/manifest.json: missing field 'format_version'"
    from bgmrec.data.tt150k import SIDECAR
    from bgmrec.features.audio import CATALOG_KIND
    from bgmrec.features.video import VIDEOS_KIND
    from bgmrec.models.registry import build

    def folder(name: str, files: dict[str, object]) -> Path:
        root = tmp_path / name
        root.mkdir()
        for fname, obj in files.items():
            (root / fname).write_text(json.dumps(obj), encoding="utf-8")
        return root

    cases = {
        folder("catalog", {"manifest.json": {"kind": CATALOG_KIND, "dim": 3, "ids": ["a"]}}):
            "is a music catalogue (written by extract-music), not a dataset: make one with build-dataset",
        folder("videos", {"manifest.json": {"kind": VIDEOS_KIND, "ids": ["v"]}}):
            "is a videos folder (written by extract-videos), not a dataset: make one with build-dataset",
        folder("export", {SIDECAR: {"sidecar_version": 1}}):
            "is a TT-150k export (written by export-tt150k), not a dataset: import it with import-tt150k",
        folder("other", {"manifest.json": {"kind": "something-new", "format_version": 1}}):
            "is a folder of kind 'something-new' by its manifest.json, not a dataset",
    }
    from bgmrec.models.base import FeatureSpec, SplitView

    build("popularity", FeatureSpec.of(tiny_ds)).fit(SplitView(tiny_ds, "train")).save(tmp_path / "run")
    cases[tmp_path / "run"] = "is a model run (written by train), not a dataset"
    for root, words in cases.items():
        with pytest.raises(DatasetError) as e:
            load_dataset(root)
        assert str(e.value) == f"{root} {words}"
    with pytest.raises(DatasetError, match="empty/manifest.json: file is missing"):  # nothing known: as before
        load_dataset(folder("empty", {}))


def test_json_written_is_strict_json_with_null_for_nan_and_infinity(tmp_path):
    from bgmrec.data.dataset import write_json_atomic

    write_json_atomic(tmp_path / "f.json", {"a": float("nan"), "b": [1.5, float("inf"), (-float("inf"), 2)],
                                            "c": {"d": np.float64("nan"), "e": "NaN"}})
    text = (tmp_path / "f.json").read_text()
    assert "NaN" not in text.replace('"NaN"', "") and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [1.5, None, [None, 2]], "c": {"d": None, "e": "NaN"}}


def test_a_write_that_fails_midway_leaves_the_old_files_and_no_temporary_file(tmp_path):
    from bgmrec.data.dataset import save_npy_atomic, write_files_together, write_text_atomic
    from bgmrec.features.cache import write_csv_atomic

    folder = tmp_path / "f"
    write_files_together(folder, {"a.npy": lambda p: save_npy_atomic(p, np.arange(3)),
                                  "b.csv": lambda p: write_csv_atomic(p, ["x"], [[1]]),
                                  "c.txt": lambda p: write_text_atomic(p, "old")})
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert sorted(before) == ["a.npy", "b.csv", "c.txt"]  # and nothing else: no temporary name left

    class Unwritable:  # fails while its bytes are being written, after the temporary file is opened
        def __array__(self, *args, **kwargs):
            raise OSError(28, "No space left on device")

    def half_written(path):
        path.write_text("half")
        raise OSError(28, "No space left on device")

    for failing in ({"a.npy": lambda p: save_npy_atomic(p, np.arange(5)),
                     "b.csv": lambda p: write_csv_atomic(p, ["x"], [[2]]),
                     "c.txt": half_written},
                    {"a.npy": lambda p: save_npy_atomic(p, Unwritable())},
                    {"b.csv": lambda p: write_csv_atomic(p, ["x"], Unwritable())}):
        with pytest.raises((OSError, TypeError)):
            write_files_together(folder, failing)
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert np.load(folder / "a.npy", allow_pickle=False).tolist() == [0, 1, 2]


def test_a_full_disk_is_named_by_the_file_or_folder_being_written_not_its_temporary_name(tmp_path):
    # a write() failing on a full disk has no file name, and numpy's short write no errno: the command line
    # printed a traceback; a read-only folder was named by the temporary folder the user never gave
    from bgmrec.data.dataset import atomic_write_dir, save_npy_atomic, write_files_together

    def full(_path):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left") as e:
        write_files_together(tmp_path / "f", {"a.npy": full})
    assert (e.value.errno, e.value.filename) == (28, str(tmp_path / "f" / "a.npy"))

    for said in ("38400 requested and 17376 written", "Not enough free space to write 41943040 bytes after offset 128"):
        def short(_path, said=said):  # numpy's messages, with no errno: a short write, a refused fallocate
            raise OSError(said)

        with pytest.raises(OSError) as e:
            atomic_write_dir(tmp_path / "run", short)
        assert e.value.filename == str(tmp_path / "run")
        assert e.value.strerror == f"{said}: the write was cut short (a full disk?)"

    def read_only_inside(folder):
        raise PermissionError(13, "Permission denied", str(folder / "weights.safetensors"))

    with pytest.raises(PermissionError) as e:  # its kind kept: callers may catch PermissionError
        atomic_write_dir(tmp_path / "run", read_only_inside)
    assert e.value.filename == str(tmp_path / "run" / "weights.safetensors")

    class Unwritable:
        def __array__(self, *args, **kwargs):
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError) as e:
        save_npy_atomic(tmp_path / "m.npy", Unwritable())
    assert e.value.filename == str(tmp_path / "m.npy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # and no temporary file left by any of them

    def elsewhere(_folder):
        raise FileNotFoundError(2, "No such file or directory", str(tmp_path / "input.csv"))

    with pytest.raises(FileNotFoundError) as e:  # a file read on the way keeps its own name
        atomic_write_dir(tmp_path / "run", elsewhere)
    assert e.value.filename == str(tmp_path / "input.csv")

    for unrelated in (OSError("CUDA driver could not be initialised"), BrokenPipeError(32, "Broken pipe")):
        def fails(_folder, error=unrelated):
            raise error

        with pytest.raises(OSError) as e:  # no file named, no failed write: left as it was, not a "full disk"
            atomic_write_dir(tmp_path / "run", fails)
        assert e.value is unrelated


def test_a_split_name_with_spaces_or_other_letters_is_a_file_name_and_loads(tiny_copy):
    _renamed_split("test dur\u00e9e 2")(tiny_copy)
    (tiny_copy / "splits" / "val.npy").rename(tiny_copy / "splits" / "test dur\u00e9e 2.npy")
    if (tiny_copy / "negatives" / "val.npy").exists():
        (tiny_copy / "negatives" / "val.npy").rename(tiny_copy / "negatives" / "test dur\u00e9e 2.npy")
    assert "test dur\u00e9e 2" in load_dataset(tiny_copy).splits


def test_a_run_folder_with_a_damaged_config_is_refused_as_such_not_as_another_kind(tmp_path):
    from bgmrec.data.dataset import atomic_write_dir

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"model": "cmvae"}')  # no bgmrec_version
    (run / "weights.safetensors").write_bytes(b"x")
    with pytest.raises(DatasetError, match=r"is not a model run \(its config.json is unreadable or not of this "
                                           r"bgmrec\); refusing"):
        atomic_write_dir(run, lambda tmp: None, marker="config.json", version_key="bgmrec_version",
                         what="a model run")


def test_a_split_of_ones_own_is_added_validated_and_evaluated(tiny_ds):
    from bgmrec.eval.protocol import evaluate
    from bgmrec.models.base import FeatureSpec, SplitView
    from bgmrec.models.registry import build

    test = np.asarray(tiny_ds.splits["test"])
    mine = tiny_ds.with_split("mine", test[::2])
    assert "mine" not in tiny_ds.splits and mine.split_info["mine"].role == "test"
    model = build("popularity", FeatureSpec.of(tiny_ds)).fit(SplitView(tiny_ds, "train"))
    result = evaluate(model, mine, "mine")
    assert result["n_queries"] == len(test[::2]) and result["sampled"] is None
    assert result["full"]["recall@10"] == pytest.approx(
        float(np.mean(evaluate(model, tiny_ds, "test", keep_ranks=True)["full_ranks"][::2] <= 10)))
    train = np.asarray(tiny_ds.splits["train"])
    # the errors named files that do not exist (Dataset.with_split/splits/leaky.npy): they name the call's arguments
    for args, said in (
            (("leaky", train[:3]), "with_split(name='leaky'): rows: expected no (video, track) pair of a training "
                                   "split (row [0] is one"),
            (("far", [[tiny_ds.n_videos, 0, -1]]), "with_split(name='far'): rows column video: expected ids in "
                                                   f"[0, {tiny_ds.n_videos})"),
            (("flat", [0, 1, 2]), "with_split(name='flat'): rows: expected shape [*, 3], found [3]"),
            (("test", test), "with_split(name='test'): the dataset already has a split of that name"),
            (("a/b", test), "with_split(name='a/b'): split name 'a/b' must be a file name"),
            (("mine", test, "tset"), "with_split(name='mine'): role must be one of train, val, test, teacher, got "
                                     "'tset'"),
            (("mine", test, "test", "old"), "with_split(name='mine'): candidates must be one of existing, new, all, "
                                            "got 'old'"),
            (("more", test[:3], "train"), "with_split(name='more'): splits/test.npy: expected no (video, track) pair "
                                          "of a training split")):
        with pytest.raises(DatasetError, match="^" + re.escape(said)):
            tiny_ds.with_split(*args)


def test_outlying_rows_are_the_few_that_set_a_features_deviation():
    from bgmrec.data.dataset import FAR_SPREADS, outlying_rows

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    assert outlying_rows(x) is None  # Gaussian features: nothing far out
    x[[5, 9], 1], x[9, 3] = [1e6, -3e6], 1e5
    found = outlying_rows(x)
    assert found.columns == 2 and found.rows.tolist() == [9, 5]  # farthest first, over the judged features
    spread = 1.4826 * np.median(np.abs(x[:, 1] - np.median(x[:, 1])))
    assert found.distance[0] == pytest.approx(abs(-3e6 - np.median(x[:, 1])) / spread)
    assert (found.distance > FAR_SPREADS).all()
    many = rng.normal(size=(2600, 3))
    many[:27] = 1e6  # 1% of the rows (a review's case, missed at a 1% limit): still few
    assert outlying_rows(many).rows.size == 27
    # heavy tails are no error: lognormal of sigma 2, Pareto of alpha 1.5, as extracted loudness or energy can be
    assert outlying_rows(np.exp(rng.normal(0, 2, (3000, 4)))) is None
    assert outlying_rows(rng.pareto(1.5, (3000, 4))) is None
    # two tight modes: many rows far from the median, and a deviation that standardises them as it should
    bimodal = np.where(rng.random((300, 2)) < 0.3, 1.0, 0.0) + rng.normal(0, 1e-4, (300, 2))
    assert outlying_rows(bimodal) is None
    assert outlying_rows(np.zeros((50, 3))) is None  # no spread at all: not judged
    big = rng.normal(size=(30_000, 2))  # more rows than the robust sample: a far row outside it still counts
    big[29_999] = 1e7
    assert outlying_rows(big).rows.tolist() == [29_999]


def test_containers_repr_briefly(tiny_ds, tiny_dir):
    """A notebook showing a dataset printed every id (83 KB on the tiny world); catalogues, videos and queries too."""
    from bgmrec.features.recommend import ClipFeatures, open_catalog, open_video_features
    from bgmrec.models.base import MusicCatalog, SplitView, VideoQuery

    n = tiny_ds.n_videos
    assert repr(tiny_ds) == (f"Dataset({n} videos, 200 tracks, 300 uploaders, 6 genres, splits {{val: 184, "
                             "test: 184, train: 1474, test_new_music: 158, test_unbiased: 184, pgc: 600}, "
                             f"root={str(tiny_dir)!r})")
    q = VideoQuery.from_dataset(tiny_ds, np.arange(n), np.zeros(n, np.int64))
    assert repr(q).startswith(f"VideoQuery(visual=float32[{n}, 32], text=float32[{n}, 16], text_mask=bool[{n}], ")
    assert repr(MusicCatalog.from_dataset(tiny_ds)).startswith("MusicCatalog(features=float32[200, 24], "
                                                               "genre=int64[200], index=int64[200], genres=('pop', ")
    assert repr(open_catalog(tiny_dir)).startswith("Catalog(ids=<list of 200>, title=<list of 200>, ")
    shown = [q, SplitView(tiny_ds, "train", np.arange(1000)), open_catalog(tiny_dir), open_video_features(tiny_dir),
             ClipFeatures(np.zeros(1280, np.float32), np.zeros(384, np.float32), True)]
    assert max(len(repr(x)) for x in shown) < 400 + 2 * len(str(tiny_dir)), [repr(x) for x in shown]
