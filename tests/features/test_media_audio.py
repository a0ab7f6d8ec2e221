"""Music decoding, features, catalogue folder, bad media and the content-hash cache."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

import media_fixtures as mf
from bgmrec.data.dataset import DatasetError
from bgmrec.features.audio import (
    AudioExtractor,
    MediaError,
    decode_audio,
    extract_music,
    load_catalog,
)

pytestmark = pytest.mark.media
SR = 22050


def features(path):
    return mf.audio_extractor().extract_file(path)


def chroma_means(vec):
    names = mf.audio_extractor().feature_names()
    idx = [i for i, n in enumerate(names) if n.startswith("chroma_") and n.endswith("_mean")]
    return [names[i].split("_")[1] for i in idx], vec[idx]


@pytest.mark.parametrize("ext", [".wav", ".flac", ".mp3", ".ogg", ".m4a"])
def test_every_format_decodes_to_mono_at_the_target_rate(tmp_path, ext):
    path = mf.write_audio(tmp_path / f"a{ext}", mf.tone(440, 2.0), stereo=ext in (".mp3", ".m4a"))
    y = decode_audio(path, SR, 60.0)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) / SR - 2.0) < 0.1
    # the dominant frequency survives decoding and resampling
    spec = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spec) * SR / len(y) - 440) < 3


def test_decode_is_capped(tmp_path):
    path = mf.write_audio(tmp_path / "long.wav", mf.noise(8.0))
    assert len(decode_audio(path, SR, max_seconds=1.5)) == int(1.5 * SR)


def test_feature_vector_shape_names_and_determinism(tmp_path):
    path = mf.write_audio(tmp_path / "c.mp3", mf.chord([261.63, 329.63, 392.0], 3.0))
    a, b = features(path), AudioExtractor().extract_file(path)  # a second decode, a fresh extractor
    assert a.shape == (len(mf.audio_extractor().feature_names()),) == (173,)
    assert a.dtype == np.float32 and np.isfinite(a).all()
    assert np.array_equal(a, b)


def test_features_do_not_depend_on_how_many_blas_threads_the_process_has(tmp_path):
    # extract-music under OMP_NUM_THREADS=1 and 2 differed in 103 of 865 values (by up to 7.6e-6): the spectral
    # features' matrix products summed in another order on more threads
    from threadpoolctl import threadpool_limits

    signal = mf.chord([261.63, 329.63, 392.0], 3.0) + 0.3 * mf.clicks(100, 3.0)
    extractor = AudioExtractor()
    with threadpool_limits(limits=1, user_api="blas"):
        one = extractor.extract_signal(signal)
    with threadpool_limits(limits=4, user_api="blas"):
        four = extractor.extract_signal(signal)
    assert np.array_equal(one, four)


def test_lossless_formats_agree(tmp_path):
    sig = mf.chord([220.0, 277.18, 329.63], 2.0)
    wav = features(mf.write_audio(tmp_path / "x.wav", sig))
    flac = features(mf.write_audio(tmp_path / "x.flac", sig))
    assert np.allclose(wav, flac, rtol=1e-4, atol=1e-4)


def test_tone_differs_from_noise_and_pitch_shows_in_chroma(tmp_path):
    tone = features(mf.write_audio(tmp_path / "tone.wav", mf.tone(440.0, 3.0)))
    noise = features(mf.write_audio(tmp_path / "noise.wav", mf.noise(3.0)))
    rel = np.abs(tone - noise) / (np.abs(tone) + np.abs(noise) + 1e-6)
    assert np.mean(rel > 0.2) > 0.3  # many features differ by a lot
    names, chroma = chroma_means(tone)
    assert names[int(np.argmax(chroma))] == "A"
    names, chroma = chroma_means(features(mf.write_audio(tmp_path / "cmaj.wav",
                                                         mf.chord([261.63, 329.63, 392.0], 3.0))))
    assert set(np.array(names)[np.argsort(chroma)[-3:]]) == {"C", "E", "G"}


def test_tempo_of_a_click_track(tmp_path):
    names = mf.audio_extractor().feature_names()
    vec = features(mf.write_audio(tmp_path / "clicks.wav", mf.clicks(120.0, 8.0)))
    bpm = vec[names.index("tempo_bpm")]
    assert min(abs(bpm - 120), abs(bpm - 60), abs(bpm - 240)) < 6
    assert abs(vec[names.index("beats_per_second")] * 60 - bpm) < 0.25 * bpm


@pytest.mark.parametrize("case", ["truncated.wav", "truncated.flac", "truncated.m4a", "empty", "no_audio",
                                  "garbage", "too_short", "silent"])
def test_bad_files_give_a_one_line_reason(tmp_path, case):
    if case.startswith("truncated"):
        ext = case[len("truncated"):]
        ok = mf.write_audio(tmp_path / f"ok{ext}", mf.tone(330, 3.0))
        path = mf.truncate(ok, tmp_path / f"cut{ext}", 0.4)
        want = {".wav": "truncated", ".flac": "corrupt audio after", ".m4a": "cannot open as media"}[ext]
    elif case == "empty":
        path = tmp_path / "empty.mp3"
        path.write_bytes(b"")
        want = "empty file"
    elif case == "no_audio":
        path = mf.write_video(tmp_path / "silent.m4a", 1.0, audio=False)
        want = "no audio stream"
    elif case == "garbage":
        path = tmp_path / "junk.mp3"
        path.write_bytes(np.random.default_rng(0).bytes(5000))
        want = "cannot open"
    elif case == "silent":  # its features were those of every other silent file: a catalogue of equals
        path = mf.write_audio(tmp_path / "quiet.wav", np.zeros(2 * SR, np.float32))
        want = "silent: the first 2.0 s peak at digital silence (below -80 dBFS), no sound to describe"
    else:
        path = mf.write_audio(tmp_path / "blip.wav", mf.tone(440, 0.1))
        want = "too short"
    with pytest.raises(MediaError) as e:
        mf.audio_extractor().extract_file(path)
    assert want in str(e.value) and "\n" not in str(e.value)


def test_the_silence_check_keys_the_cache_but_is_no_feature_setting():
    # a silent track analysed (and cached) before the check would otherwise be taken from the cache
    from bgmrec.features.audio import SILENT_DBFS
    from bgmrec.features.recommend import SETTINGS_NOT_IN_FEATURES

    assert mf.audio_extractor().settings["silent_below_dbfs"] == SILENT_DBFS
    assert "silent_below_dbfs" in SETTINGS_NOT_IN_FEATURES  # no "re-extract the catalogue" warning for it


def test_a_quiet_track_is_analysed_and_a_near_silent_one_is_a_failure(tmp_path):
    quiet = mf.write_audio(tmp_path / "quiet.flac", 0.003 * mf.tone(440, 2.0) / np.abs(mf.tone(440, 2.0)).max())
    assert np.isfinite(features(quiet)).all()  # about -50 dBFS: soft, not silent
    # a hum whose peak is 2 steps of 16-bit PCM (2.5 steps, truncated or rounded): 20 log10(2 / 32768) = -84.3 dBFS
    hum = mf.write_audio(tmp_path / "hum.wav", 2.5 / 32768 * mf.tone(50, 2.0) / np.abs(mf.tone(50, 2.0)).max())
    with pytest.raises(MediaError, match=r"^silent: the first 2.0 s peak at -84 dBFS \(below -80 dBFS\)"):
        features(hum)


class Counting(AudioExtractor):
    """Counts analysed files; can fail (simulated interruption) after some."""

    def __init__(self, stop_after: int | None = None):
        super().__init__()
        self.calls = 0
        self.stop_after = stop_after
        self._smile = mf.audio_extractor()._opensmile()

    def extract_file(self, path):
        if self.stop_after is not None and self.calls >= self.stop_after:
            raise KeyboardInterrupt
        self.calls += 1
        return super().extract_file(path)


@pytest.fixture
def music_dir(tmp_path):
    d = tmp_path / "music"
    d.mkdir()
    for i, (ext, f) in enumerate([(".wav", 220.0), (".mp3", 330.0), (".flac", 440.0), (".ogg", 550.0),
                                  (".m4a", 660.0)]):
        mf.write_audio(d / f"track{i}{ext}", mf.chord([f, f * 1.25, f * 1.5], 1.5))
    return d


def test_batch_reports_bad_files_and_continues(tmp_path, music_dir):
    (music_dir / "notes.txt").write_text("not audio")
    (music_dir / "zero.wav").write_bytes(b"")
    mf.truncate(music_dir / "track0.wav", music_dir / "cut.wav", 0.3)
    mf.write_video(music_dir / "videoonly.m4a", 1.0, audio=False)
    (music_dir / "zz").mkdir()
    mf.write_audio(music_dir / "zz" / "track1.wav", mf.tone(100, 1.0))
    meta = tmp_path / "meta.csv"
    meta.write_text("file,title,artist,genre\ntrack0.wav,Low,Ann,jazz\ntrack2.flac,Mid,Bob,pop\nghost,X,Y,Z\n"
                    "zz/track1.wav,Dup,Cy,rock\nnotes,Lyrics,Di,pop\n", encoding="utf-8")
    out = tmp_path / "cat"
    rep = extract_music(music_dir, out, meta=meta, extractor=Counting(), progress=False)
    assert rep.done == 5
    with open(out / "failures.csv", encoding="utf-8") as f:
        fails = {r["file"]: r["reason"] for r in csv.DictReader(f)}
    assert set(fails) == {"notes.txt", "zero.wav", "cut.wav", "videoonly.m4a", "zz/track1.wav"}
    assert "unsupported format" in fails["notes.txt"]
    assert "empty" in fails["zero.wav"]
    assert "truncated" in fails["cut.wav"]
    assert "no audio stream" in fails["videoonly.m4a"]
    assert "duplicate track id" in fails["zz/track1.wav"]
    cat = load_catalog(out)
    assert cat.ids == [f"track{i}" for i in range(5)]
    assert cat.features.shape == (5, 173) and cat.features.dtype == np.float32
    assert (cat.title[0], cat.artist[0], cat.genre[0]) == ("Low", "Ann", "jazz")
    assert (cat.title[1], cat.genre[1]) == ("track1", "")
    man = json.loads((out / "manifest.json").read_text())
    assert man["dim"] == 173 and len(man["feature_names"]) == 173 and man["ids"] == cat.ids
    assert man["counts"] == {"tracks": 5, "failures": 5, "inputs": 10}
    # the row naming the second file of id track1 names a file that is there: said apart, with why it was skipped
    # notes.txt is no track file: the row naming "notes" names none (a typo, a file not copied)
    assert rep.warnings == [f"2 row(s) of {meta} name no track file in {music_dir} and were not used "
                            "(e.g. line 4: 'ghost')",
                            f"1 row(s) of {meta} name a track file in {music_dir} that was not extracted and were "
                            "not used (e.g. line 5: 'zz/track1.wav': duplicate track id 'track1' (also track1.mp3))",
                            f"3 of 5 track(s) have no row in {meta} (e.g. 'track1'): their title is their id "
                            "and their genre is empty"]
    assert np.load(out / "music.npy", allow_pickle=False).shape == (5, 173)


def test_rows_naming_files_not_extracted_say_what_is_there(tmp_path):
    # a row naming a failed song (a second file of its id) is told apart from a typo; a file of a format not read
    # is named in the example, as the song itself (.aiff) or as what lies beside a missing one (.lrc), never as
    # "not extracted" when it is not the song; a failed song's own reason wins over lyrics beside it
    from bgmrec.features.cache import rows_by_key, unused_rows_warning

    folder = tmp_path / "music"
    rows = ["song2.aiff", "b", "c", "ghost"]
    table = rows_by_key(tmp_path / "meta.csv", [(i + 2, [key], {}) for i, key in enumerate(rows)])
    failures = [("song2.aiff", "unsupported format '.aiff' (expected wav)"),
                ("b.lrc", "unsupported format '.lrc' (expected wav)"),
                ("c.lrc", "unsupported format '.lrc' (expected wav)"), ("c.wav", "empty file (0 bytes)")]
    assert unused_rows_warning(tmp_path / "meta.csv", table, [], folder, "track file", failures) == [
        f"3 row(s) of {tmp_path / 'meta.csv'} name no track file in {folder} and were not used (e.g. line 2: "
        "'song2.aiff'; 'song2.aiff' is there: unsupported format '.aiff' (expected wav))",
        f"1 row(s) of {tmp_path / 'meta.csv'} name a track file in {folder} that was not extracted and were not "
        "used (e.g. line 4: 'c.wav': empty file (0 bytes))"]
    table = rows_by_key(tmp_path / "meta.csv", [(2, ["b"], {})])
    assert unused_rows_warning(tmp_path / "meta.csv", table, [], folder, "track file", failures) == [
        f"1 row(s) of {tmp_path / 'meta.csv'} name no track file in {folder} and were not used (e.g. line 2: 'b'; "
        "'b.lrc' is there: unsupported format '.lrc' (expected wav))"]


def test_cache_skips_done_files_and_resumes_after_interruption(tmp_path, music_dir):
    out = tmp_path / "cat"
    first = Counting(stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        extract_music(music_dir, out, extractor=first, progress=False)
    assert first.calls == 2
    resumed = Counting()
    rep = extract_music(music_dir, out, extractor=resumed, progress=False)
    assert resumed.calls == 3 and rep.cached == 2 and rep.done == 5
    before = np.load(out / "music.npy")
    again = Counting()
    rep = extract_music(music_dir, out, extractor=again, progress=False)
    assert again.calls == 0 and rep.cached == 5
    assert np.array_equal(before, np.load(out / "music.npy"))
    # a renamed copy has the same content: no new analysis
    (music_dir / "track0.wav").rename(music_dir / "renamed.wav")
    again = Counting()
    extract_music(music_dir, out, extractor=again, progress=False)
    assert again.calls == 0 and "renamed" in load_catalog(out).ids
    assert not list(out.rglob("*.tmp-*"))  # atomic writes leave no temporaries


def test_pruning_the_cache_keeps_the_entries_of_this_extraction_alone(tmp_path, music_dir, capsys):
    # the cache kept a vector of every file it ever saw, under every setting: a weekly extraction's only grew
    from bgmrec.cli import main

    out = tmp_path / "cat"
    extract_music(music_dir, out, extractor=Counting(), progress=False)
    cache = out / ".cache" / "audio"
    entries = sorted(cache.rglob("*.npy"))
    assert len(entries) == 5
    other = cache / "0123456789abcdef"  # other settings' entries: one of a key no input has, and one of each
    stale = [other / "ab" / ("ab" + "0" * 62 + ".npy")] + [  # input's key (the same content, other settings)
        other / entry.relative_to(entry.parent.parent) for entry in entries]
    for entry in stale:
        entry.parent.mkdir(parents=True, exist_ok=True)
        np.save(entry, np.zeros(3, np.float32))
    (other / "settings.json").write_text("{}")
    (music_dir / "track4.m4a").unlink()  # a track gone from the collection
    rep = extract_music(music_dir, out, extractor=Counting(), progress=False)
    assert rep.pruned is None and len(list(cache.rglob("*.npy"))) == len(entries) + len(stale)  # kept unless asked
    sizes = {p: p.stat().st_size for p in cache.rglob("*.npy")}
    rep = extract_music(music_dir, out, extractor=(again := Counting()), progress=False, prune_cache=True)
    assert again.calls == 0 and rep.cached == 4
    left = sorted(cache.rglob("*.npy"))
    assert len(left) == 4 and set(left) < set(entries)  # this run's four tracks
    assert rep.pruned == (1 + len(stale), sum(size for p, size in sizes.items() if p not in left))  # the gone
    # track's and the other settings' entries
    assert not (cache / "0123456789abcdef").exists()  # the other settings' folder, emptied, is gone
    assert {r[5] for r in csv.reader((out / "tracks.csv").open())} - {"sha256"} == {p.stem for p in left}
    mf.write_audio(music_dir / "track4.m4a", mf.chord([660.0], 1.5))
    assert main(["extract-music", str(music_dir), "--out", str(out), "--workers", "1", "--prune-cache",
                 "--no-progress"]) == 0
    assert len(list(cache.rglob("*.npy"))) == 5
    assert main(["extract-music", str(music_dir), "--out", str(out), "--workers", "1", "--prune-cache",
                 "--no-progress"]) == 0  # nothing left to prune
    assert "pruned the cache: every entry is used by this extraction, nothing removed" in capsys.readouterr().out


def test_extract_music_s_sample_rate_and_seconds_reach_the_analysis(tmp_path, music_dir):
    """--sample-rate and --seconds were tested only as refusals: a valid value is what the tracks are analysed
    at (the manifest's settings, the vectors) and what the cache is keyed by."""
    from bgmrec.cli import main

    one = tmp_path / "one"
    one.mkdir()
    (one / "track1.mp3").write_bytes((music_dir / "track1.mp3").read_bytes())
    vectors = {}
    for rate, seconds in ((22050, 30.0), (16000, 30.0), (22050, 0.5)):
        out = tmp_path / f"cat-{rate}-{seconds}"
        assert main(["extract-music", str(one), "--out", str(out), "--workers", "1", "--no-progress",
                     "--sample-rate", str(rate), "--seconds", str(seconds), "--cache", str(tmp_path / "cache")]) == 0
        settings = json.loads((out / "manifest.json").read_text())["settings"]
        assert (settings["sample_rate"], settings["max_seconds"]) == (rate, seconds)
        vectors[rate, seconds] = np.load(out / "music.npy")
    default = vectors[22050, 30.0]
    assert not np.allclose(vectors[16000, 30.0], default) and not np.allclose(vectors[22050, 0.5], default)


def test_a_damaged_cache_entry_is_analysed_again_not_stacked(tmp_path, music_dir):
    out = tmp_path / "cat"
    extract_music(music_dir, out, extractor=Counting(), progress=False)
    before = np.load(out / "music.npy")
    entries = sorted(p for p in (out / ".cache").rglob("*.npy"))
    np.save(entries[0], np.zeros((2, 2), np.float32))  # another shape
    np.save(entries[1], np.full(before.shape[1], np.nan, np.float32))
    np.save(entries[2], np.array(["x"] * before.shape[1]))
    again = Counting()
    rep = extract_music(music_dir, out, extractor=again, progress=False)
    assert again.calls == 3 and rep.cached == 2
    assert np.array_equal(before, np.load(out / "music.npy"))


def test_a_cached_vector_of_another_length_is_analysed_again_not_used(tmp_path, music_dir):
    out = tmp_path / "cat"
    for f in sorted(music_dir.iterdir())[1:]:
        f.unlink()  # one track: a vector of another length would be the whole catalogue, unnoticed
    extract_music(music_dir, out, extractor=Counting(), progress=False)
    before = np.load(out / "music.npy")
    (entry,) = (out / ".cache").rglob("*.npy")
    np.save(entry, np.ones(before.shape[1] - 1, np.float32))  # e.g. left by an extractor with one feature fewer
    again = Counting()
    rep = extract_music(music_dir, out, extractor=again, progress=False)
    assert again.calls == 1 and rep.cached == 0
    assert np.array_equal(before, np.load(out / "music.npy"))
    assert np.load(entry).shape == (before.shape[1],)  # and the entry is redone


def test_two_worker_processes_match_one(tmp_path, music_dir):
    one = extract_music(music_dir, tmp_path / "one", extractor=Counting(), progress=False)
    two = extract_music(music_dir, tmp_path / "two", workers=2, progress=False)
    assert one.done == two.done == 5 and two.extracted == 5
    assert np.array_equal(np.load(tmp_path / "one" / "music.npy"), np.load(tmp_path / "two" / "music.npy"))


def test_non_utf8_metadata_is_a_clear_error(tmp_path, music_dir):
    meta = tmp_path / "meta.csv"
    meta.write_bytes("id,title\ntrack0,Caf\xe9\n".encode("latin-1"))
    with pytest.raises(DatasetError, match="not UTF-8"):
        extract_music(music_dir, tmp_path / "cat", meta=meta, extractor=Counting(), progress=False)


def test_extracting_only_new_tracks_into_a_catalogue_says_which_it_removes(tmp_path, music_dir):
    # an app audit extracted the day's new songs into its 28-track catalogue: "wrote 4 tracks", nothing more
    import shutil

    cat = tmp_path / "cat"
    first = extract_music(music_dir, cat, extractor=Counting(), progress=False)
    assert first.warnings == [] and first.added is None  # no earlier extraction there
    again = extract_music(music_dir, cat, extractor=Counting(), progress=False)  # the same tracks: nothing to say
    assert again.warnings == [] and again.cached == 5 and again.added == []
    new = tmp_path / "new"
    new.mkdir()
    shutil.copy(music_dir / "track1.mp3", new / "track1.mp3")
    mf.write_audio(new / "track9.wav", mf.chord([300.0, 375.0], 1.5))
    report = extract_music(new, cat, extractor=Counting(), progress=False)
    assert report.warnings == [
        f"{cat}: 4 of the 5 track(s) it held are not in this extraction of {new} (e.g. 'track0') and were removed: "
        "the folder holds the tracks of its last extraction only; extract the whole collection to keep them "
        "(vectors computed before come from the cache)"]
    assert load_catalog(cat).ids == ["track1", "track9"] and report.added == ["track9"]
    (new / "track9.wav").write_bytes(b"not audio")  # failed this time: failures.csv names it, not this warning
    shutil.copy(music_dir / "track2.flac", new / "track2.flac")
    report = extract_music(new, cat, extractor=Counting(), progress=False)
    assert [f for f, _ in report.failures] == ["track9.wav"] and report.warnings == []
    assert report.added == ["track2"]  # the tracks an app should know are new (it could not tell)


def test_metadata_finds_a_file_whose_name_is_written_decomposed(tmp_path):
    # macOS writes file names decomposed ("e" + a combining accent); a CSV typed by hand has "é": the track lost
    # its title and genre, with two warnings naming what looked like the same id
    songs = tmp_path / "songs"
    songs.mkdir()
    mf.write_audio(songs / "Beyonce\u0301_halo.wav", mf.chord([220.0, 275.0], 1.5))
    meta = tmp_path / "meta.csv"
    meta.write_text("id,title,genre\nBeyonc\u00e9_halo,Halo,pop\n", encoding="utf-8")
    report = extract_music(songs, tmp_path / "cat", meta=meta, extractor=Counting(), progress=False)
    assert report.warnings == []
    cat = load_catalog(tmp_path / "cat")
    assert (cat.title, cat.genre) == (["Halo"], ["pop"])


def test_load_catalog_checks_the_folder(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_catalog(tmp_path / "nope")
    d = mf.write_catalog_folder(tmp_path / "c", np.zeros((3, 5), np.float32), ["a", "b", "c"])
    np.save(d / "music.npy", np.zeros((2, 5), np.float32))
    with pytest.raises(DatasetError, match="one row per tracks.csv row"):
        load_catalog(d)


def test_a_failed_write_leaves_the_earlier_catalogue_as_it_was(tmp_path, music_dir, monkeypatch):
    out = tmp_path / "cat"
    (music_dir / "track4.m4a").rename(tmp_path / "later.m4a")
    extract_music(music_dir, out, extractor=Counting(), progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    (tmp_path / "later.m4a").rename(music_dir / "track4.m4a")  # one more track: every file would change

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("bgmrec.features.audio.write_csv_atomic", full_disk)  # after music.npy is written
    with pytest.raises(OSError, match="No space left"):
        extract_music(music_dir, out, extractor=Counting(), progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # and no temporary file
    assert len(load_catalog(out).ids) == 4


def test_an_output_folder_inside_the_input_folder_is_not_read_back(music_dir):
    out = music_dir / "catalog"
    extract_music(music_dir, out, extractor=Counting(), progress=False)
    rep = extract_music(music_dir, out, extractor=Counting(), progress=False)
    assert rep.done == 5 and rep.failures == []


def test_the_cap_stops_decoding_before_later_damage(tmp_path):
    full = mf.write_audio(tmp_path / "long.flac", mf.chord([220.0, 330.0], 10.0))
    path = mf.truncate(full, tmp_path / "cut.flac", 0.7)  # damage after about 7 s
    assert len(decode_audio(path, SR, max_seconds=1.0)) == SR  # the capped decode never reaches it
    with pytest.raises(MediaError):
        decode_audio(path, SR, max_seconds=60.0)


def test_numba_cache_is_warmed_before_worker_processes_start(tmp_path, music_dir, monkeypatch):
    """Worker processes compiling librosa's numba functions at once can crash (numba/numba#10128):
    the parent compiles them first."""
    import bgmrec.features.audio as audio

    events = []
    monkeypatch.setattr(audio.AudioExtractor, "warm_up", lambda self: events.append("warm_up"))
    real_pool = audio.ProcessPoolExecutor

    def pool(*args, **kwargs):
        events.append("pool")
        return real_pool(*args, **kwargs)

    monkeypatch.setattr(audio, "ProcessPoolExecutor", pool)
    extract_music(music_dir, tmp_path / "out", workers=2, progress=False)
    assert events == ["warm_up", "pool"]


def test_a_stopped_run_drops_the_queued_files_instead_of_waiting_for_them(tmp_path, music_dir, monkeypatch):
    import contextlib

    import bgmrec.features.audio as audio

    shutdowns = []

    class Pool(audio.ProcessPoolExecutor):
        def shutdown(self, wait=True, *, cancel_futures=False):
            shutdowns.append((wait, cancel_futures))
            super().shutdown(wait=wait, cancel_futures=cancel_futures)

    @contextlib.contextmanager
    def stopped_at_the_first_file(*args):
        def advance():
            raise KeyboardInterrupt  # as SIGTERM's SystemExit or Ctrl-C, while files are still queued
        yield advance

    monkeypatch.setattr(audio, "ProcessPoolExecutor", Pool)
    monkeypatch.setattr(audio, "progress_bar", stopped_at_the_first_file)
    stopped = []
    real_stop = audio.stop_pool
    monkeypatch.setattr(audio, "stop_pool", lambda pool, note=False: (stopped.append(note), real_stop(pool, note)))
    with pytest.raises(KeyboardInterrupt):
        extract_music(music_dir, tmp_path / "out", workers=2, progress=False)
    assert shutdowns[0] == (False, True)  # not waiting for the queued files: they are cancelled
    assert stopped == [False]  # through stop_pool (a second Ctrl-C kills the workers), quiet without progress


def test_a_second_interrupt_while_the_files_being_analysed_finish_ends_the_workers_at_once():
    """The first Ctrl-C waits for the files being analysed; a second one kills the workers. It used to break
    the wait at interpreter exit and leave the process hanging on idle workers."""
    import multiprocessing as mp
    import os
    import signal
    import time

    import bgmrec.features.audio as audio

    pool = audio.ProcessPoolExecutor(max_workers=2, mp_context=mp.get_context("spawn"))
    busy = [pool.submit(time.sleep, 600) for _ in range(2)]  # two files being analysed for ten minutes
    queued = [pool.submit(time.sleep, 600) for _ in range(3)]  # the first may already sit in the workers' queue
    while not all(f.running() for f in busy):
        time.sleep(0.05)
    workers = list(pool._processes.values())

    def second_ctrl_c(*_):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, second_ctrl_c)
    signal.alarm(2)  # while stop_pool waits for them
    try:
        with pytest.raises(KeyboardInterrupt):
            audio.stop_pool(pool)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert all(f.cancelled() for f in queued[1:])
    for w in workers:  # gone (killed: their sleep had ten minutes to run), whichever thread reaped them
        for _ in range(600):
            try:
                os.kill(w.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"worker {w.pid} still runs 30 s after the second interrupt")


def test_warm_up_runs_the_whole_analysis():
    calls = []

    class Recording(AudioExtractor):
        def extract_signal(self, y):
            calls.append(len(y))
            return super().extract_signal(y)

    Recording().warm_up()
    assert calls == [2 * AudioExtractor().config.sample_rate]


def test_stereo_is_the_mean_of_its_channels_as_loud_as_mono(tmp_path):
    sig = mf.tone(440.0, 1.0)
    mono = decode_audio(mf.write_audio(tmp_path / "mono.wav", sig), SR, 60.0)
    stereo = decode_audio(mf.write_audio(tmp_path / "stereo.wav", sig, stereo=True), SR, 60.0)
    rms = [float(np.sqrt(np.mean(y.astype(np.float64) ** 2))) for y in (mono, stereo)]
    assert rms[0] == pytest.approx(0.3 / np.sqrt(2), rel=0.01)
    assert rms[1] == pytest.approx(rms[0], rel=0.01)  # FFmpeg's own downmix made it 3 dB louder


def test_eight_channels_decode_to_the_mean_of_their_channels(tmp_path):
    # PyAV's planar frames of 8 channels segfaulted the process in to_ndarray (every extract-music run failed)
    import soundfile as sf

    channels = np.stack([mf.tone(220.0 + 55.0 * i, 1.0) for i in range(8)], axis=1)
    sf.write(tmp_path / "eight.wav", channels, SR, subtype="PCM_16")
    y = decode_audio(tmp_path / "eight.wav", SR, 60.0)
    np.testing.assert_allclose(y, channels.mean(axis=1), atol=2e-4)  # 16-bit rounding


def test_opensmile_reads_a_signal_past_full_scale_as_clipped_not_wrapped_around():
    # openSMILE reads the signal as 16-bit integers: a loud master's samples past 1.0 wrapped to the other sign and
    # changed most of its 88 features, silently
    extractor = mf.audio_extractor()
    loud = 3.0 * (mf.tone(440.0, 2.0) + 0.1 * mf.noise(2.0))
    n = len(extractor._opensmile().feature_names)
    clipped = np.clip(loud, -1.0, 32767 / 32768)
    np.testing.assert_allclose(extractor.extract_signal(loud)[:n], extractor.extract_signal(clipped)[:n], rtol=1e-5)


def test_an_offset_alone_is_silent(tmp_path):
    dc = mf.write_audio(tmp_path / "dc.wav", np.full(2 * SR, 0.5, np.float32))  # no sound: a constant offset
    with pytest.raises(MediaError, match=r"^silent: the first 2.0 s peak at"):
        features(dc)



@pytest.mark.parametrize("start", [0, 1000])
def test_a_float_file_of_samples_that_are_not_numbers_is_a_failure_saying_so(tmp_path, start):
    # was: librosa's "ParameterError: Audio buffer is not finite everywhere", after openSMILE's RuntimeWarning
    import soundfile

    y = (0.3 * np.sin(np.arange(3 * SR) / 10)).astype(np.float32)
    y[start:start + 1000] = np.nan
    soundfile.write(tmp_path / "nan.wav", y, SR, subtype="FLOAT")
    with pytest.raises(MediaError, match=rf"^samples that are not numbers \(NaN or inf\) from {start / SR:.2f} s: a "
                                         "damaged float file$"):
        features(tmp_path / "nan.wav")

def test_meta_csv_takes_the_pairs_csvs_names_of_the_track_column(tmp_path):
    from bgmrec.features.audio import read_track_meta

    meta = tmp_path / "meta.csv"
    meta.write_text("track_id,genre\ntrack0,rock\n", encoding="utf-8")
    assert read_track_meta(meta) == {"track0": (2, {"title": "", "artist": "", "genre": "rock"})}
    meta.write_text("id,title,artist,track,genre\ntrack0,A,B,1,rock\ntrack1,C,D,1,pop\n", encoding="utf-8")
    assert set(read_track_meta(meta)) == {"track0", "track1"}  # a music export's track numbers are not ids
    meta.write_text("track,track_id,genre\ntrack0,track1,rock\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"meta.csv: columns 'track' and 'track_id' both name the track; keep one"):
        read_track_meta(meta)
    meta.write_text("name,genre\ntrack0,rock\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"expected a column 'id' \(file stem; or 'track', 'track_id', 'music', "
                       r"'music_id'\) or 'file', found \['genre', 'name'\]"):
        read_track_meta(meta)


def test_meta_csv_quoted_line_breaks_and_duplicate_ids(tmp_path, music_dir):
    from bgmrec.features.audio import read_track_meta

    meta = tmp_path / "meta.csv"
    meta.write_text('id,title\ntrack0,"Two\nlines"\ntrack1,B\n', encoding="utf-8")
    assert read_track_meta(meta)["track1"] == (4, {"title": "B", "artist": "", "genre": ""})
    meta.write_text('id,title\ntrack0,"A\nB"\ntrack1,B\nfile.wav,C\ntrack0,D\n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"meta.csv: line 6: duplicate id 'track0' \(also on line 2\)"):
        extract_music(music_dir, tmp_path / "cat", meta=meta, extractor=Counting(), progress=False)
    assert not (tmp_path / "cat").exists()


def test_meta_rows_find_tracks_by_their_path_under_the_folder_as_tracks_csv_writes_it(tmp_path, music_dir):
    (music_dir / "rock").mkdir()
    (music_dir / "track0.wav").rename(music_dir / "rock" / "low.wav")
    meta = tmp_path / "meta.csv"  # these rows were "name no track file" and both tracks lost their metadata
    meta.write_text("file,title,genre\nrock/low.wav,Low,rock\ntrack2.flac,Mid,pop\n", encoding="utf-8")
    rep = extract_music(music_dir, tmp_path / "cat", meta=meta, extractor=Counting(), progress=False)
    assert rep.warnings == [f"3 of 5 track(s) have no row in {meta} (e.g. 'track1'): their title is their id "
                            "and their genre is empty"]
    with open(tmp_path / "cat" / "tracks.csv", encoding="utf-8", newline="") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    assert (rows["low"]["file"], rows["low"]["title"], rows["low"]["genre"]) == ("rock/low.wav", "Low", "rock")
    assert (rows["track2"]["title"], rows["track2"]["genre"]) == ("Mid", "pop")


def test_metadata_without_genres_or_covering_every_track_is_named(tmp_path, music_dir):
    meta = tmp_path / "meta.csv"
    meta.write_text("id,title\n" + "".join(f"track{i},T{i}\n" for i in range(5)), encoding="utf-8")
    rep = extract_music(music_dir, tmp_path / "cat", meta=meta, extractor=Counting(), progress=False)
    assert rep.warnings == [f"{meta}: no row gives a genre (column 'genre'): the catalogue's tracks have none"]
    meta.write_text("id,title,genre\n" + "".join(f"track{i},T{i},rock\n" for i in range(5)), encoding="utf-8")
    rep = extract_music(music_dir, tmp_path / "cat2", meta=meta, extractor=Counting(), progress=False)
    assert rep.warnings == []


def test_extracting_again_without_the_metadata_says_which_tracks_lose_it(tmp_path, music_dir, capsys):
    # run again without --meta, a catalogue lost every title, artist and genre: "0 new since the last extraction"
    from bgmrec.cli import main

    meta = tmp_path / "meta.csv"
    meta.write_text("id,title,artist,genre\n" + "".join(f"track{i},T{i},A{i},rock\n" for i in range(4))
                    + "track4,,,\n", encoding="utf-8")
    cat = tmp_path / "cat"
    assert extract_music(music_dir, cat, meta=meta, extractor=Counting(), progress=False).warnings == []
    again = extract_music(music_dir, cat, meta=meta, extractor=Counting(), progress=False)
    assert again.warnings == []  # the same metadata: nothing to say
    bare = extract_music(music_dir, cat, extractor=Counting(), progress=False)
    assert bare.warnings == [
        f"{cat}: its last extraction gave 4 of these 5 track(s) metadata this one does not (genre of 4, title of 4, "
        "artist of 4; e.g. 'track0'): no metadata CSV was given (--meta), so their titles are now their ids and "
        "their artists and genres empty; give the CSV again to keep them"]
    assert load_catalog(cat).genre == [""] * 5  # not carried over: the folder holds its last extraction
    assert extract_music(music_dir, cat, extractor=Counting(), progress=False).warnings == []  # said once
    extract_music(music_dir, cat, meta=meta, extractor=Counting(), progress=False)
    meta.write_text("id,title,artist,genre\n" + "".join(f"track{i},T{i},A{i},rock\n" for i in range(3))
                    + "track3,T3,A3,\n", encoding="utf-8")  # track3's genre left out, track4 as before
    fewer = extract_music(music_dir, cat, meta=meta, extractor=Counting(), progress=False)
    assert fewer.warnings[-1] == (
        f"{cat}: its last extraction gave 1 of these 5 track(s) metadata this one does not (genre of 1; e.g. "
        f"'track3'): {meta} gives them none now, so those are left empty (a title: the id); add them to {meta} to "
        "keep them")
    capsys.readouterr()
    assert main(["extract-music", str(music_dir), "--out", str(cat), "--workers", "1", "--no-progress"]) == 0
    out = capsys.readouterr()
    assert "0 new since the last extraction" in out.out
    assert "its last extraction gave 4 of these 5 track(s) metadata this one does not" in " ".join(out.err.split())


def test_one_shared_cache_serves_every_week_and_a_cache_path_with_nothing_to_reuse_is_named(tmp_path, music_dir,
                                                                                           capsys):
    # the README's weekly advice pointed week 2 at week 1's folder's cache: week 3, pointed at week 2's, found no
    # cache there, extracted everything again and created the path, silently
    from bgmrec.cli import main

    shared = tmp_path / "cache" / "audio"
    first = extract_music(music_dir, tmp_path / "w1", cache_dir=shared, extractor=(w1 := Counting()), progress=False)
    new_cache = ("a new cache at {} (nothing in it to reuse yet): give the same --cache every time; a later "
                 "extraction that finds this note names a path other than the one used before")
    assert w1.calls == 5 and first.warnings == [] and first.cache_note == new_cache.format(shared)  # right: a note
    for week in ("w2", "w3"):  # the README's way: the same folder every week, every vector reused, nothing to say
        rep = extract_music(music_dir, tmp_path / week, cache_dir=shared, extractor=(again := Counting()),
                            progress=False)
        assert again.calls == 0 and rep.cached == 5 and rep.warnings == [] and rep.cache_note is None
        assert not (tmp_path / week / ".cache").exists()
    stale = tmp_path / "w3" / ".cache" / "audio"  # the old advice's week 3: a folder's own cache, never written
    rep = extract_music(music_dir, tmp_path / "w4", cache_dir=stale, extractor=Counting(), progress=False)
    assert rep.cached == 0 and rep.cache_note == new_cache.format(stale)
    empty = tmp_path / "made"  # made beforehand (mkdir -p): new as well, not "without vectors of these settings"
    empty.mkdir()
    rep = extract_music(music_dir, tmp_path / "w4b", cache_dir=empty, extractor=Counting(), progress=False)
    assert rep.warnings == [] and rep.cache_note == new_cache.format(empty)
    above = tmp_path / "cache"  # the folder above the cache meant: no vectors of these settings in it
    rep = extract_music(music_dir, tmp_path / "w5", cache_dir=above, extractor=Counting(), progress=False)
    assert rep.cached == 0 and rep.warnings == [
        f"{above}: a cache folder without vectors of these extraction settings, so every input's audio features are "
        "extracted again (settings changed since, another extractor's cache, or a folder above or below the one "
        "meant: this extractor's default cache is OUT/.cache/audio)"]
    assert extract_music(music_dir, tmp_path / "w6", extractor=Counting(), progress=False).warnings == []  # default
    import shutil  # a cache inside the input folder: its vectors were scanned as tracks, "8 failed" and growing

    songs = shutil.copytree(music_dir, tmp_path / "songs")
    for week in ("inside1", "inside2"):
        rep = extract_music(songs, tmp_path / week, cache_dir=songs / "cache", extractor=Counting(), progress=False)
        assert rep.done == 5 and not [f for f, _ in rep.failures if f.startswith("cache")], rep.failures
    # a cache holding the input folder skips nothing of it (skipping the cache skipped every track)
    assert extract_music(songs, tmp_path / "above", cache_dir=tmp_path, extractor=Counting(), progress=False).done == 5
    capsys.readouterr()
    typo = tmp_path / "cahce" / "audio"
    assert main(["extract-music", str(music_dir), "--out", str(tmp_path / "w7"), "--cache", str(typo), "--workers",
                 "1", "--no-progress"]) == 0
    out = capsys.readouterr()
    assert "(0 extracted, 5 from the cache" not in out.out and "(5 extracted, 0 from the cache" in out.out
    assert new_cache.format(typo) in " ".join(out.out.split()) and "warning" not in out.err


def test_genre_names_differing_only_in_case_or_spacing_are_named(tmp_path, music_dir, capsys):
    # "Rock" for one track and "rock" for the others made two genres with no word: DecCM's confounder changed
    from bgmrec.cli import main

    meta = tmp_path / "meta.csv"
    meta.write_text("id,genre\ntrack0,Rock\ntrack1, rock \ntrack2,rock\ntrack3,Hip  Hop\ntrack4,hip hop\n",
                    encoding="utf-8")
    rep = extract_music(music_dir, tmp_path / "cat", meta=meta, extractor=Counting(), progress=False)
    assert rep.warnings == [
        f"{meta}: 2 genre(s) are written in several ways, differing only in letter case, spacing or character "
        "encoding, and each way is a genre of its own (DecCM's confounder and the per-genre figures count them apart): "
        "'rock' (2 tracks), 'Rock' (1 track); 'Hip  Hop' (1 track), 'hip hop' (1 track); write each genre one way in "
        "meta.csv"]
    # kept as written (the CSV is what a genre is), spaces at either end stripped
    assert load_catalog(tmp_path / "cat").genre == ["Rock", "rock", "rock", "Hip  Hop", "hip hop"]
    meta.write_text("id,genre\n" + "".join(f"track{i},{g}\n" for i, g in enumerate(
        ["rock", " rock", "rock ", "Caf\u00e9", "Cafe\u0301"])), encoding="utf-8")  # an accent encoded two ways
    rep = extract_music(music_dir, tmp_path / "cat", meta=meta, extractor=Counting(), progress=False)
    assert rep.warnings == [
        f"{meta}: 1 genre(s) are written in several ways, differing only in letter case, spacing or character "
        "encoding, and each way is a genre of its own (DecCM's confounder and the per-genre figures count them apart): "
        "'Cafe\\u0301' (written with other code points) (1 track), 'Café' (1 track); write each genre one way in "
        "meta.csv"]
    # invisible and full-width spellings, and no genre beside 'Unknown' (build-dataset calls no genre 'unknown')
    meta.write_text("id,genre\n" + "".join(f"track{i},{g}\n" for i, g in enumerate(
        ["pop", "Pop\u200b", "\uff30\uff4f\uff50", "", "Unknown"])), encoding="utf-8")
    said = extract_music(music_dir, tmp_path / "cat", meta=meta, extractor=Counting(), progress=False).warnings
    assert [w for w in said if w.endswith(
        ": 'Pop\\u200b' (written with other code points) (1 track), 'pop' (1 track), '\\uff30\\uff4f\\uff50' (written "
        "with other code points) (1 track); 'Unknown' (1 track), 'unknown' or no genre (1 track); write each genre "
        "one way in meta.csv")], said
    meta.write_text("id,genre\n" + "".join(f"track{i},{g}\n" for i, g in enumerate(
        ["rock", "Rock", "POP", "pop", "jazz"])), encoding="utf-8")
    capsys.readouterr()
    assert main(["extract-music", str(music_dir), "--out", str(tmp_path / "cat2"), "--meta", str(meta),
                 "--workers", "1", "--no-progress"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "'POP' (1 track), 'pop' (1 track); 'Rock' (1 track), 'rock' (1 track); write each genre one way" in err


# ---- the command line: options and inputs checked before any work, another kind of folder refused ----------

def run_cli(capsys, *args) -> tuple[int, str]:
    from bgmrec.cli import main

    capsys.readouterr()
    code = main(list(args))
    return code, " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize(("option", "words"), [
    (["--sample-rate", "100"], "--sample-rate must be between 16000 and 96000 Hz, got 100"),
    (["--sample-rate", "0"], "--sample-rate must be between 16000 and 96000 Hz, got 0"),
    (["--seconds", "nan"], "--seconds must be a finite number of at least 0.5"),
    (["--seconds", "inf"], "--seconds must be a finite number of at least 0.5"),
    (["--seconds", "0"], "--seconds must be a finite number of at least 0.5 (the shortest track analysed), got 0"),
    (["--workers", "0"], "--workers must be at least 1, got 0"),
])
def test_bad_options_are_refused_before_anything_is_written(tmp_path, music_dir, capsys, option, words):
    out = tmp_path / "cat"
    code, err = run_cli(capsys, "extract-music", str(music_dir), "--out", str(out), "--no-progress", *option)
    assert code == 2 and words in err, err
    assert not out.exists()


def test_the_library_names_the_config_fields_not_the_commands_options(tmp_path, music_dir):
    from bgmrec.data.dataset import FieldError
    from bgmrec.features.audio import AudioConfig

    for kwargs, words in [(dict(sample_rate=100), "sample_rate must be between 16000 and 96000 Hz, got 100"),
                          (dict(max_seconds=0.0), "max_seconds must be a finite number of at least 0.5"),
                          (dict(n_mels=0), "n_mels must be at least 1, got 0")]:
        with pytest.raises(FieldError, match=f"^{re.escape(words)}") as err:
            AudioConfig(**kwargs)
        assert err.value.fields == tuple(kwargs)
    with pytest.raises(FieldError, match="^workers must be at least 1, got 0$"):
        extract_music(music_dir, tmp_path / "cat", workers=0)
    assert not (tmp_path / "cat").exists()


def test_missing_inputs_are_refused_before_anything_is_written(tmp_path, music_dir, capsys):
    out = tmp_path / "cat"
    code, err = run_cli(capsys, "extract-music", str(tmp_path / "nope"), "--out", str(out), "--no-progress")
    assert code == 2 and "nope: not a folder of tracks (it does not exist)" in err
    code, err = run_cli(capsys, "extract-music", str(music_dir), "--out", str(out), "--meta",
                        str(tmp_path / "meta.csv"), "--no-progress")
    assert code == 2 and "meta.csv: file is missing" in err
    assert not out.exists()


def test_a_run_that_extracts_nothing_is_an_error_and_leaves_no_folder(tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "junk.mp3").write_bytes(np.random.default_rng(0).bytes(3000))
    (bad / "notes.txt").write_text("not audio")
    out = tmp_path / "new" / "cat"
    code, err = run_cli(capsys, "extract-music", str(bad), "--out", str(out), "--workers", "1", "--no-progress")
    assert code == 2 and "no track could be extracted (2 file(s) failed: junk.mp3: cannot open" in err, err
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    code, err = run_cli(capsys, "extract-music", str(tmp_path / "empty"), "--out", str(out), "--no-progress")
    assert code == 2 and "empty: no track files found" in err
    assert not (tmp_path / "new").exists()


def test_a_folder_of_another_kind_is_refused_and_left_as_it_was(tmp_path, music_dir, capsys):
    dataset = tmp_path / "data"
    dataset.mkdir()
    (dataset / "manifest.json").write_text('{"format_version": 1}')
    (dataset / "videos.csv").write_text("id\n")
    code, err = run_cli(capsys, "extract-music", str(music_dir), "--out", str(dataset), "--no-progress")
    assert code == 2 and ("data: the folder is not empty and is not a music catalogue (it is a dataset; expected "
                          "manifest.json kind 'music-catalog')") in err, err
    assert sorted(p.name for p in dataset.iterdir()) == ["manifest.json", "videos.csv"]
    assert (dataset / "manifest.json").read_text() == '{"format_version": 1}'
    videos = mf.write_videos_folder(tmp_path / "videos", 2)
    with pytest.raises(DatasetError, match=r"\(it is a videos folder \(written by extract-videos\); expected "
                       r"manifest.json kind 'music-catalog'\)"):
        extract_music(music_dir, videos, extractor=Counting(), progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="exists and is not a folder"):
        extract_music(music_dir, tmp_path / "file", extractor=Counting(), progress=False)
    stopped = tmp_path / "stopped"  # a run stopped before its manifest, which is written last
    extract_music(music_dir, stopped, extractor=Counting(), progress=False)
    (stopped / "manifest.json").unlink()
    extract_music(music_dir, stopped, extractor=Counting(), progress=False)  # finished, not refused
    assert (stopped / "manifest.json").is_file()


WORKER_OF_A_KILLED_RUN = """
import os, sys, time, multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from bgmrec.features.audio import AudioConfig, _init_worker
if __name__ == "__main__":
    pool = ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                               initargs=(AudioConfig(),))
    print(pool.submit(os.getpid).result(), flush=True)
    time.sleep(600)
"""


def test_worker_processes_end_when_the_run_is_killed(tmp_path):
    # extract-music killed (SIGKILL, or SIGTERM from a scheduler) left its worker processes waiting forever
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    if not Path("/proc/self/stat").is_file():
        pytest.skip("reads process states from /proc")
    script = tmp_path / "run.py"
    script.write_text(WORKER_OF_A_KILLED_RUN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                           env=env)
    worker = int(run.stdout.readline())
    run.send_signal(signal.SIGKILL)
    run.wait()

    def alive(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state != "Z"  # a zombie has exited (its new parent may not reap it at once)

    deadline = time.monotonic() + 20
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(worker):
        os.kill(worker, signal.SIGKILL)
        pytest.fail(f"worker {worker} outlived its killed parent")


def test_an_analysis_openSMILE_left_as_nan_is_a_failure_not_a_cached_track(tmp_path, music_dir):
    """Ctrl-C during openSMILE's callback, which it swallows, left NaN features that were cached as zeros."""
    import pandas as pd

    from bgmrec.features.audio import AudioExtractor

    class Interrupted(AudioExtractor):
        def _opensmile(self):
            real = super()._opensmile()

            class Swallowed:  # openSMILE after a swallowed KeyboardInterrupt: "filling with NaN"
                feature_names = real.feature_names

                def process_signal(self, y, sr):
                    out = real.process_signal(y, sr)
                    return pd.DataFrame(np.full(out.shape, np.nan), columns=out.columns)
            return Swallowed()

    with pytest.raises(MediaError, match=r"^openSMILE gave (\d+) of \1 features as NaN or infinite \(an interrupted"):
        Interrupted().extract_file(music_dir / "track0.wav")
    with pytest.raises(DatasetError, match="no track"):  # every track failed, and none was cached
        extract_music(music_dir, tmp_path / "cat", extractor=Interrupted(), progress=False)
    assert not list((tmp_path / "cat").rglob("*.npy"))


def test_ctrl_c_during_openSMILE_stops_the_run_after_the_analysis_not_as_a_failed_track(tmp_path, music_dir):
    """openSMILE's callback swallowed the KeyboardInterrupt: extract-music --workers 1 listed a good track as failed
    (NaN features) and ended with exit 0; the parent's warm-up ended in a traceback."""
    import signal

    from bgmrec.features.audio import AudioExtractor, stops_deferred

    analysed = []

    class CtrlCInside(AudioExtractor):
        def _opensmile(self):
            real = super()._opensmile()

            class Pressed:
                feature_names = real.feature_names

                def process_signal(self, y, sr):
                    signal.raise_signal(signal.SIGINT)  # as a Ctrl-C arriving in the callback
                    out = real.process_signal(y, sr)
                    analysed.append(bool(np.isfinite(out.to_numpy()).all()))
                    return out
            return Pressed()

    with pytest.raises(KeyboardInterrupt):
        extract_music(music_dir, tmp_path / "cat", extractor=CtrlCInside(), progress=False, workers=1)
    assert analysed == [True]  # the analysis finished whole, then the run stopped: no failures.csv, no catalogue
    assert not (tmp_path / "cat" / "music.npy").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler in place is given back

    received = []
    for stop in (signal.SIGTERM, signal.SIGHUP):  # the command line stops on SIGHUP as on SIGTERM
        received.clear()
        before = signal.signal(stop, lambda signum, _frame: received.append(signum))
        try:
            with stops_deferred():
                signal.raise_signal(stop)
                assert received == []  # held back until the block ends
            assert received == [stop]
        finally:
            signal.signal(stop, before)


def test_worker_processes_ignore_ctrl_c_which_their_parent_handles():
    import multiprocessing as mp
    import signal
    from concurrent.futures import ProcessPoolExecutor

    from bgmrec.features.audio import AudioConfig, _init_worker

    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                             initargs=(AudioConfig(),)) as pool:
        assert pool.submit(signal.getsignal, signal.SIGINT).result() == signal.SIG_IGN


def test_an_extractions_summary_names_the_inputs_new_since_the_last(tmp_path, capsys):
    from bgmrec.cli.media import _summary
    from bgmrec.features.cache import ExtractReport

    out = tmp_path / "cat"
    capsys.readouterr()
    _summary("tracks", ExtractReport(out, 6, 4, 2, [], added=["a", "b[1]", "c", "d"]))
    _summary("tracks", ExtractReport(out, 6, 0, 6, [], added=[]))
    _summary("tracks", ExtractReport(out, 6, 6, 0, []))
    lines = [" ".join(line.split()) for line in capsys.readouterr().out.split("wrote 6 tracks to ")[1:]]
    assert lines == [f"{out} (4 extracted, 2 from the cache, 0 failed; 4 new since the last extraction in {out} "
                     "('a', 'b[1]', 'c', ...))",
                     f"{out} (0 extracted, 6 from the cache, 0 failed; 0 new since the last extraction in {out})",
                     f"{out} (6 extracted, 0 from the cache, 0 failed)"]
