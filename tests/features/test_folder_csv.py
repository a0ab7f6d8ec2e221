"""The CSVs of extracted folders (a catalogue's tracks.csv, a videos folder's videos.csv) as read back:
bad ones are one-line errors naming the file, the line and the columns expected (no media needed)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import media_fixtures as mf
from bgmrec.data.dataset import DatasetError
from bgmrec.features.audio import load_catalog
from bgmrec.features.video import load_video_features, load_video_row

TRACKS_HEADER = "id,title,artist,genre,file,sha256\n"
VIDEOS_HEADER = "id,file,caption\n"

# name -> (folder kind, tracks.csv / videos.csv bytes, words the error must contain)
CASES = {
    "track row of one field": ("catalog", (TRACKS_HEADER + "t0\nt1,B,C,pop,t1.wav,\nt2,B,C,pop,t2.wav,\n").encode(),
                               ("tracks.csv: line 2: 1 field(s), expected 6 (id,title,artist,genre,file,sha256)",)),
    "tracks without id": ("catalog", b"name,title\nt0,A\nt1,B\nt2,C\n",
                          ("tracks.csv: line 1: missing column 'id'", "found name,title")),
    "tracks not UTF-8": ("catalog", (TRACKS_HEADER + "t0,A,C,pop,t0.wav,\nt1,Caf\xe9,C,pop,t1.wav,\n"
                                     "t2,B,C,pop,t2.wav,\n").encode("latin-1"),
                         ("tracks.csv: line 3: not UTF-8 text", "; save the file as UTF-8")),
    "videos not UTF-8": ("videos", (VIDEOS_HEADER + "v0,v0.mp4,caf\xe9\nv1,v1.mp4,\nv2,v2.mp4,\n").encode("latin-1"),
                         ("videos.csv: line 2: not UTF-8 text", "; save the file as UTF-8")),
    "videos without caption": ("videos", b"id,file\nv0,v0.mp4\nv1,v1.mp4\nv2,v2.mp4\n",
                               ("videos.csv: line 1: missing column 'caption'", "id,file,caption")),
    "video row of one field": ("videos", (VIDEOS_HEADER + "v0,v0.mp4,\nv1\nv2,v2.mp4,\n").encode(),
                               ("videos.csv: line 3: 1 field(s), expected 3 (id,file,caption)",)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_csv_names_the_file_line_and_columns(tmp_path, case):
    kind, data, words = CASES[case]
    if kind == "catalog":
        root = mf.write_catalog_folder(tmp_path / "c", np.zeros((3, 5), np.float32), ["pop"] * 3)
        (root / "tracks.csv").write_bytes(data)
        load = load_catalog
    else:
        root = mf.write_videos_folder(tmp_path / "v", 3)
        (root / "videos.csv").write_bytes(data)
        load = load_video_features
    with pytest.raises(DatasetError) as err:
        load(root)
    for w in words:
        assert w in str(err.value), str(err.value)


def test_captions_with_line_breaks_read_back_as_written(tmp_path):
    import csv

    root = mf.write_videos_folder(tmp_path / "v", 3)
    captions = ["two\nlines", "a form feed \x0c and a line separator \u2028 inside", "plain"]
    with open(root / "videos.csv", "w", newline="", encoding="utf-8") as f:  # as extract-videos writes it
        w = csv.writer(f)
        w.writerow(["id", "file", "caption"])
        w.writerows([f"v{i}", f"v{i}.mp4", c] for i, c in enumerate(captions))
    assert load_video_features(root).caption == captions


# the user's CSVs (pairs, --meta, --captions) -> (bytes, words of the error): a quote left open read the rest of
# the file into one field without a word (a --meta lost every later track's genre), a long field was a traceback
USER_CSV_CASES = {
    "quote left open": (b'id,title,genre\nt0,ok,pop\nt1,"Song t1,rock\nt2,B,jazz\n',
                        "line 3: a quoted field opened on this line is not closed by the end of the file"),
    "text after a closing quote": (b'id,title\nt0,"A"B\n', "line 2: not valid CSV (',' expected after '\"'"),
    "field over csv's limit": (b'id,title\nt0,' + b"x" * 200_000 + b"\n",
                               "line 2: a field of more than 131072 characters"),
}


@pytest.mark.parametrize("case", sorted(USER_CSV_CASES))
def test_csv_the_reader_refuses_names_the_line_its_record_starts_on(tmp_path, case):
    from bgmrec.features.cache import read_csv_lines
    from bgmrec.features.video import caption_rows

    data, words = USER_CSV_CASES[case]
    path = tmp_path / "user.csv"
    path.write_bytes(data)
    with pytest.raises(DatasetError, match="^" + re.escape(f"{path}: {words}")):
        read_csv_lines(path)
    path.write_bytes(data.replace(b"title", b"caption", 1))
    with pytest.raises(DatasetError, match="^" + re.escape(f"{path}: {words}")):
        caption_rows(path)


def test_a_quoted_field_over_lines_and_a_doubled_quote_are_still_read(tmp_path):
    from bgmrec.features.cache import read_csv_lines

    path = tmp_path / "user.csv"
    path.write_bytes(b'\nid,title\nt0,"two\nlines"\nt1,"say ""hi"""\n')  # a blank line before the header too
    assert read_csv_lines(path) == [(3, {"id": "t0", "title": "two\nlines"}), (5, {"id": "t1", "title": 'say "hi"'})]


def test_a_folder_given_for_a_csv_is_named_as_one(tmp_path):
    from bgmrec.features.cache import read_csv_lines
    from bgmrec.features.video import caption_rows

    for read in (read_csv_lines, caption_rows):
        with pytest.raises(DatasetError, match=f"^{re.escape(str(tmp_path))}: is a folder, not a CSV file$"):
            read(tmp_path)
        with pytest.raises(DatasetError, match="nope.csv: file is missing$"):
            read(tmp_path / "nope.csv")


def _manifest_edit(root, key, value):
    man = json.loads((root / "manifest.json").read_text())
    man[key] = value
    (root / "manifest.json").write_text(json.dumps(man))


def _rows_swapped_after_extraction(root, name):
    """Record the hash of ``root``'s arrays in its manifest, as the extractors do, then swap two rows of ``name``
    (a file changed, or another copy's, with the same shape)."""
    from bgmrec.features.cache import arrays_sha256

    files = ("music.npy",) if name == "music.npy" else ("visual.npy", "text.npy", "text_mask.npy")
    arrays = {f: np.load(root / f) for f in files}
    arrays[name] = np.arange(arrays[name].size, dtype=np.float32).reshape(arrays[name].shape)
    np.save(root / name, arrays[name])
    _manifest_edit(root, "content_hash", arrays_sha256(*arrays.values()))
    np.save(root / name, arrays[name][[1, 0, 2]])


# name -> (folder kind, damage, words the error must contain): arrays and manifests, not only the CSVs
DAMAGED = {
    "music as text": ("catalog", lambda r: np.save(r / "music.npy", np.full((3, 5), "1.5")),
                      "c/music.npy: expected a float array, found <U3"),
    "music complex": ("catalog", lambda r: np.save(r / "music.npy", np.ones((3, 5), np.complex64)),
                      "c/music.npy: expected a float array, found complex64"),
    "music bool": ("catalog", lambda r: np.save(r / "music.npy", np.ones((3, 5), bool)),
                   "c/music.npy: expected a float array, found bool"),
    "music NaN": ("catalog", lambda r: np.save(r / "music.npy", np.array([[0.0] * 5, [np.nan] * 5, [0.0] * 5])),
                  "c/music.npy: expected finite values (row [1] has NaN or inf)"),
    # float64 beyond float32's range was finite when checked, then inf once cast: "contain NaN or inf", no file named
    "music beyond float32": ("catalog", lambda r: np.save(r / "music.npy", np.array([[0.0] * 5, [0.0] * 5,
                                                                                   [0.0] * 4 + [-1e300]])),
                             "c/music.npy: expected values within float32's range, as features are stored and used "
                             "(row [2] has 1e+300, beyond 3.4e+38)"),
    "music narrower than its manifest": ("catalog", lambda r: np.save(r / "music.npy", np.zeros((3, 4), np.float32)),
                                         "c/music.npy: expected shape [3, 5]"),
    "catalogue settings text": ("catalog", lambda r: _manifest_edit(r, "settings", "sample_rate=22050"),
                                "c/manifest.json: field 'settings' must be a JSON object, found string"),
    "track id twice": ("catalog", lambda r: _manifest_edit(r, "ids", ["t0", "t1", "t0"]) or (
        r / "tracks.csv").write_text(TRACKS_HEADER + "t0,A,,pop,a.wav,\nt1,B,,pop,b.wav,\nt0,C,,pop,c.wav,\n",
                                     encoding="utf-8"), "c/tracks.csv: id 't0' is on two rows"),
    "music rows swapped": ("catalog", lambda r: _rows_swapped_after_extraction(r, "music.npy"),
                           "c/music.npy: not the content manifest.json records (content_hash "),
    # a field of another JSON kind was a TypeError ('int' object is not subscriptable) or an AttributeError
    "content hash a number": ("catalog", lambda r: _manifest_edit(r, "content_hash", 5),
                              "c/manifest.json: field 'content_hash' must be a JSON string, found integer"),
    "catalogue dim text": ("catalog", lambda r: _manifest_edit(r, "dim", "5"),
                           "c/manifest.json: field 'dim' must be a JSON integer, found string"),
    "catalogue dim true": ("catalog", lambda r: _manifest_edit(r, "dim", True),  # a bool is no integer here
                           "c/manifest.json: field 'dim' must be a JSON integer, found true/false"),
    "track ids text": ("catalog", lambda r: _manifest_edit(r, "ids", "t0 t1 t2"),
                       "c/manifest.json: field 'ids' must be a JSON list, found string"),
    "video counts a list": ("videos", lambda r: _manifest_edit(r, "counts", [3]),
                            "v/manifest.json: field 'counts' must be a JSON object, found list"),
    "video content hash null": ("videos", lambda r: _manifest_edit(r, "content_hash", None),
                                "v/manifest.json: field 'content_hash' must be a JSON string, found null"),
    "track count edited": ("catalog", lambda r: _manifest_edit(r, "counts", {"tracks": 999}),
                           "c/manifest.json: counts.tracks is 999, but the folder holds 3 rows"),
    "no tracks": ("catalog", lambda r: np.save(r / "music.npy", np.zeros((0, 5), np.float32)) or _manifest_edit(
        r, "ids", []) or (r / "tracks.csv").write_text(TRACKS_HEADER, encoding="utf-8"),
                  "c/tracks.csv: no tracks; a catalogue needs at least one"),
    "visual rows swapped": ("videos", lambda r: _rows_swapped_after_extraction(r, "visual.npy"),
                            "v/visual.npy, text.npy and text_mask.npy: not the content manifest.json records"),
    "video count edited": ("videos", lambda r: _manifest_edit(r, "counts", {"videos": 2}),
                           "v/manifest.json: counts.videos is 2, but the folder holds 3 rows"),
    "visual NaN": ("videos", lambda r: np.save(r / "visual.npy", np.full((3, 1280), np.nan, np.float32)),
                   "v/visual.npy: expected finite values (row [0] has NaN or inf)"),
    "visual beyond float32": ("videos", lambda r: np.save(r / "visual.npy", np.full((3, 1280), 1e39)),
                              "v/visual.npy: expected values within float32's range"),
    "visual too narrow": ("videos", lambda r: np.save(r / "visual.npy", np.zeros((3, 7), np.float32)),
                          "v/visual.npy: 7 columns, not the 1280 extract-videos writes"),
    "text as ints": ("videos", lambda r: np.save(r / "text.npy", np.zeros((3, 384), np.int32)),
                     "v/text.npy: expected a float array, found int32"),
    "text mask as floats": ("videos", lambda r: np.save(r / "text_mask.npy", np.full(3, 0.5)),
                            "v/text_mask.npy: expected a bool array, found float64"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_damaged_arrays_and_manifests_of_extracted_folders_name_the_file(tmp_path, case):
    kind, damage, words = DAMAGED[case]
    if kind == "catalog":
        root, load = mf.write_catalog_folder(tmp_path / "c", np.zeros((3, 5), np.float32), ["pop"] * 3), load_catalog
    else:
        root, load = mf.write_videos_folder(tmp_path / "v", 3), load_video_features
    damage(root)
    with pytest.raises(DatasetError) as err:
        load(root)
    assert words in str(err.value) and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize("case", sorted(c for c, (kind, *_) in DAMAGED.items() if kind == "videos"))
def test_one_video_read_alone_is_refused_alike_but_for_the_content_hash(tmp_path, case):
    """recommend --features DIR --video-id ID reads its clip's row alone (load_video_row): each damage
    load_video_features names, it names alike, but arrays whose bytes are not the manifest's content_hash, shapes
    kept (the hash reads every byte), as its docstring and the README say."""
    _, damage, words = DAMAGED[case]
    root = mf.write_videos_folder(tmp_path / "v", 3)
    damage(root)
    if "not the content manifest.json records" in words:
        assert load_video_row(root, "v1").ids == ["v1"]
        return
    with pytest.raises(DatasetError) as err:
        load_video_row(root, "v0")
    assert words in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_a_manifest_without_content_hash_or_counts_is_loaded_unchecked(tmp_path):
    """check_manifest_content checks the hash and counts a manifest has: hand-made folders (as these tests write, from
    arrays) may leave them out; extract-music and extract-videos always write both."""
    catalog = mf.write_catalog_folder(tmp_path / "c", np.zeros((3, 5), np.float32), ["pop"] * 3)
    videos = mf.write_videos_folder(tmp_path / "v", 3)
    for root in (catalog, videos):
        assert not {"content_hash", "counts"} & set(json.loads((root / "manifest.json").read_text()))
    assert load_catalog(catalog).ids == ["t0", "t1", "t2"]
    assert load_video_features(videos).ids == ["v0", "v1", "v2"]


def test_one_video_read_alone_is_its_row_of_the_folder_and_only_its_values_are_checked(tmp_path):
    root = mf.write_videos_folder(tmp_path / "v", 4, no_text=(2,))
    whole = load_video_features(root)
    for i, vid in enumerate(whole.ids):
        one = load_video_row(root, vid)
        assert (one.ids, one.file, one.caption, one.manifest, one.root) == (
            [vid], [whole.file[i]], [whole.caption[i]], whole.manifest, whole.root)
        for name in ("visual", "text", "text_mask"):
            got = getattr(one, name)
            assert type(got) is np.ndarray and got.dtype == getattr(whole, name).dtype  # copied, not a memory map
            np.testing.assert_array_equal(got, getattr(whole, name)[i:i + 1])
    with pytest.raises(DatasetError, match=re.escape(f"{root}/videos.csv: no video with id 'v9'")):
        load_video_row(root, "v9")
    text = np.load(root / "text.npy")
    text[3, 5] = np.inf
    np.save(root / "text.npy", text)
    assert load_video_row(root, "v1").ids == ["v1"]  # another row's inf is not read
    with pytest.raises(DatasetError, match=re.escape("v/text.npy: expected finite values (row [3] has NaN or inf)")):
        load_video_row(root, "v3")  # named by its row in the file


def test_a_videos_folder_memory_mapped_holds_what_it_loads_and_is_checked_alike(tmp_path):
    root = mf.write_videos_folder(tmp_path / "v", 5, no_text=(1,))
    loaded, mapped = load_video_features(root), load_video_features(root, mmap=True)
    assert isinstance(mapped.visual, np.memmap) and isinstance(mapped.text, np.memmap)
    assert (mapped.ids, mapped.file, mapped.caption, mapped.manifest) == (loaded.ids, loaded.file, loaded.caption,
                                                                          loaded.manifest)
    for name in ("visual", "text", "text_mask"):
        np.testing.assert_array_equal(getattr(mapped, name), getattr(loaded, name))
    for case in ("visual rows swapped", "visual NaN", "video count edited"):
        damaged = mf.write_videos_folder(tmp_path / case, 3)
        DAMAGED[case][1](damaged)
        with pytest.raises(DatasetError, match=re.escape(DAMAGED[case][2].removeprefix("v/"))):
            load_video_features(damaged, mmap=True)
