"""Frame sampling, frame and caption embeddings, the videos folder, bad media and the cache."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

import media_fixtures as mf
from bgmrec.data.dataset import DatasetError
from bgmrec.features.text import caption_text
from bgmrec.features.video import (
    FrameEncoder,
    MediaError,
    VideoConfig,
    caption_rows,
    decode_samples,
    extract_videos,
    load_video_features,
    sample_frames,
)

pytestmark = pytest.mark.media


def test_frames_are_sampled_evenly_and_squared(tmp_path):
    path = mf.write_video(tmp_path / "a.mp4", 2.0, 160, 120, 10, kind=0)
    frames = sample_frames(path, 8, 224)
    assert frames.shape == (8, 224, 224, 3) and frames.dtype == np.uint8
    # a moving pattern: consecutive samples differ
    assert all(np.abs(frames[i].astype(int) - frames[i + 1]).mean() > 1 for i in range(7))
    portrait = mf.write_video(tmp_path / "p.mp4", 1.0, 96, 160, 10, kind=2)
    assert sample_frames(portrait, 3, 224).shape == (3, 224, 224, 3)
    assert np.array_equal(sample_frames(path, 8, 224), frames)  # decoding is deterministic


def test_frame_embeddings_shape_determinism_and_content(tmp_path):
    enc = mf.frame_encoder()
    a = sample_frames(mf.write_video(tmp_path / "a.mp4", 1.0, kind=0), 4)
    b = sample_frames(mf.write_video(tmp_path / "b.mp4", 1.0, kind=2), 4)
    va, vb = enc.embed_clip(a), enc.embed_clip(b)
    assert va.shape == (1280,) and va.dtype == np.float32 and np.isfinite(va).all()
    assert np.array_equal(va, enc.embed_clip(a))
    cos = va @ vb / np.linalg.norm(va) / np.linalg.norm(vb)
    assert cos < 0.99
    assert enc.embed(a).shape == (4, 1280)
    # each frame thread runs torch on one thread, as documented (it ran on the cores, and the frame vectors changed
    # with OMP_NUM_THREADS by up to 7.5e-6)
    import threading

    import torch

    assert {enc._pool.submit(torch.get_num_threads).result() for _ in range(8)} == {1}
    # and no other thread: torch's count set in a frame thread was also taken by every thread started later (a
    # server's request threads ran torch on one thread after the first upload)
    default, later = torch.get_num_threads(), {}
    started = threading.Thread(target=lambda: later.update(n=(torch.ones(2).sum(), torch.get_num_threads())[1]))
    started.start()
    started.join()
    assert later["n"] == default == torch.get_num_threads()


def test_caption_text_and_empty_caption_is_no_text():
    assert caption_text("Beach day", "#sun_set #surf") == "Beach day sun set surf"
    # a caption of punctuation alone is no text too (a lone "#" was embedded); an emoji or a number is read
    texts = ["a happy dance", "", "   ", "#rain", "#", "... !!", "\U0001F525", "2024", caption_text("#", "# #"),
             "#\ufe0f\u20e3", "\u6d77\u8fb9"]  # a keycap emoji (# and an enclosing mark), CJK
    emb, mask = mf.text_encoder().encode(texts)
    assert emb.shape == (11, 384) and emb.dtype == np.float32
    assert mask.tolist() == [True, False, False, True, False, False, True, True, False, True, True]
    assert not emb[~mask].any()
    assert np.allclose(np.linalg.norm(emb[mask], axis=1), 1, atol=1e-4)
    assert mf.text_encoder().settings["no_text"] == "no letter, digit or symbol"  # extracted otherwise: said


def test_bad_videos_give_one_line_reasons(tmp_path):
    good = mf.write_video(tmp_path / "good.mp4", 1.0)
    cases = {
        "truncated": mf.truncate(good, tmp_path / "cut.mp4", 0.5),
        "empty": tmp_path / "empty.mp4",
        "no video stream": mf.write_video(tmp_path / "audio_only.mp4", 1.0, video=False),
        "cannot open": tmp_path / "junk.mp4",
    }
    cases["empty"].write_bytes(b"")
    cases["cannot open"].write_bytes(np.random.default_rng(1).bytes(3000))
    for want, path in cases.items():
        with pytest.raises(MediaError) as e:
            sample_frames(path, 4)
        msg = str(e.value)
        assert "\n" not in msg and len(msg) < 200
        if want not in ("truncated",):
            assert want in msg
    # no audio is fine: frames are all we need
    assert sample_frames(mf.write_video(tmp_path / "mute.mp4", 1.0, audio=False), 4).shape[0] == 4


class CountingFrames(FrameEncoder):
    def __init__(self):
        super().__init__()
        self._net = mf.frame_encoder().net()
        self.calls = 0

    def embed_clip(self, frames):
        self.calls += 1
        return super().embed_clip(frames)


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    for i in range(4):
        mf.write_video(d / f"clip{i}.mp4", 1.0, 128, 96, 8, kind=i, audio=i % 2 == 0)
    mf.write_video(d / "mute.mp4", 1.0, 128, 96, 8, kind=1, audio=False)
    mf.write_video(d / "sound_only.mp4", 1.0, video=False)
    mf.truncate(d / "clip0.mp4", d / "cut.mp4", 0.5)
    (d / "zero.mp4").write_bytes(b"")
    (d / "anim.gif").write_bytes(b"GIF89a")
    return d


def write_captions(path):
    rows = ["id,caption,hashtags", "clip0,Surfing at dawn,#surf #waves", "clip1,,",
            "clip2,Caf\xe9 morning,#coffee", "mute,Quiet city,#night", "ghost,Nobody,"]
    path.write_bytes("\n".join(rows).encode("latin-1") + b"\n")  # not UTF-8: clip2's row is unusable
    return path


def test_batch_reports_bad_media_and_caption_problems(tmp_path, video_dir):
    out = tmp_path / "vids"
    caps = write_captions(tmp_path / "captions.csv")
    rep = extract_videos(video_dir, out, captions=caps, config=VideoConfig(frames=4), progress=False,
                         frames=CountingFrames(), text=mf.text_encoder())
    vf = load_video_features(out)
    assert vf.ids == ["clip0", "clip1", "clip2", "clip3", "mute"] and rep.done == 5
    assert vf.visual.shape == (5, 1280) and vf.visual.dtype == np.float32
    assert vf.text.shape == (5, 384) and vf.text_mask.dtype == bool
    assert vf.text_mask.tolist() == [True, False, False, False, True]
    assert not vf.text[~vf.text_mask].any()
    assert vf.caption[0] == "Surfing at dawn surf waves"
    with open(out / "failures.csv", encoding="utf-8") as f:
        fails = {r["file"]: r["reason"] for r in csv.DictReader(f)}
    assert set(fails) == {"cut.mp4", "zero.mp4", "anim.gif", "sound_only.mp4", "clip2.mp4", "clip3.mp4"}
    assert "no video stream" in fails["sound_only.mp4"]
    assert "unsupported format" in fails["anim.gif"]
    assert "not UTF-8" in fails["clip2.mp4"] and fails["clip2.mp4"].startswith("kept without text")
    assert "no caption" in fails["clip3.mp4"]
    assert all("\n" not in r for r in fails.values())
    man = json.loads((out / "manifest.json").read_text())
    assert man["dims"] == {"visual": 1280, "text": 384} and man["ids"] == vf.ids
    assert man["counts"] == {"videos": 5, "with_text": 2, "failed": 4}
    # the file's encoding is named once, beside each of its videos' notes
    assert rep.warnings == [f"{caps}: 1 of 5 row(s) are not UTF-8 text (e.g. line 4), and their videos were kept "
                            "without text: save the file as UTF-8 (a spreadsheet's 'CSV UTF-8'; Latin-1 or "
                            "Windows-1252 accents are not)",
                            f"1 row(s) of {caps} name no video file in {video_dir} and were not used "
                            "(e.g. line 6: 'ghost')"]


def test_a_caption_with_nothing_to_read_is_extracted_as_no_text_and_noted(tmp_path, video_dir):
    # was: "...", "#" or "!!!" were kept as text (text_mask True) with a zero vector, where an upload's or
    # recommend --caption's same caption is no text: one clip, two inputs to the model
    caps = tmp_path / "captions.csv"
    caps.write_text("id,caption,hashtags\nclip0,...,\nclip1,,#\nclip2,!!!,\nclip3,ok,\nmute,\U0001F525,\n",
                    encoding="utf-8")
    out = tmp_path / "vids"
    rep = extract_videos(video_dir, out, captions=caps, config=VideoConfig(frames=4), progress=False,
                         frames=CountingFrames(), text=mf.text_encoder())
    vf = load_video_features(out)
    assert vf.text_mask.tolist() == [False, False, False, True, True] and not vf.text[:3].any()
    assert vf.caption[:3] == ["...", "#", "!!!"]  # the caption as given is kept in videos.csv
    assert (rep.captions_embedded, rep.captions_cached) == (2, 0)
    with open(out / "failures.csv", encoding="utf-8") as f:
        fails = {r["file"]: r["reason"] for r in csv.DictReader(f)}
    assert fails["clip0.mp4"] == "kept without text: its caption '...' has no letter, digit or symbol to read"
    assert fails["clip2.mp4"] == "kept without text: its caption '!!!' has no letter, digit or symbol to read"
    assert fails["clip1.mp4"] == "kept without text: its caption '#' has no letter, digit or symbol to read"
    assert "clip3.mp4" not in fails and "mute.mp4" not in fails
    assert json.loads((out / "manifest.json").read_text())["counts"]["with_text"] == 2


def test_cache_skips_done_videos_and_results_are_identical(tmp_path, video_dir):
    out = tmp_path / "vids"
    first = CountingFrames()
    extract_videos(video_dir, out, config=VideoConfig(frames=4), progress=False, frames=first,
                   text=mf.text_encoder())
    assert first.calls == 5
    before = load_video_features(out)
    again = CountingFrames()
    rep = extract_videos(video_dir, out, config=VideoConfig(frames=4), progress=False, frames=again,
                         text=mf.text_encoder())
    assert again.calls == 0 and rep.cached == 5
    after = load_video_features(out)
    assert np.array_equal(before.visual, after.visual) and np.array_equal(before.text_mask, after.text_mask)
    # other settings (frames) are a different cache entry, never a stale reuse
    other = CountingFrames()
    extract_videos(video_dir, tmp_path / "v2", config=VideoConfig(frames=2), progress=False, frames=other,
                   text=mf.text_encoder(), cache_dir=out / ".cache")
    assert other.calls == 5


def test_pruning_the_caches_keeps_this_extraction_s_clips_and_captions_alone(tmp_path, video_dir):
    import shutil

    clips = tmp_path / "clips"
    shutil.copytree(video_dir, clips)
    caps = tmp_path / "caps.csv"
    caps.write_text("id,caption\nclip0,Surfing at dawn\nclip2,Morning coffee\n")
    out = tmp_path / "vids"
    extract_videos(clips, out, captions=caps, config=VideoConfig(frames=4), progress=False, frames=CountingFrames(),
                   text=mf.text_encoder())
    visual, text = out / ".cache" / "visual", out / ".cache" / "text"
    # four frame vectors: clip0-3 (mute.mp4 has clip1's bytes; the other files fail)
    assert (len(list(visual.rglob("*.npy"))), len(list(text.rglob("*.npy")))) == (4, 2)
    (clips / "clip3.mp4").unlink()  # a clip deleted, a caption edited
    caps.write_text("id,caption\nclip0,Surfing at dawn\nclip2,Evening tea\n")
    rep = extract_videos(clips, out, captions=caps, config=VideoConfig(frames=4), progress=False,
                         frames=(again := CountingFrames()), text=mf.text_encoder(), prune_cache=True)
    assert again.calls == 0 and rep.pruned[0] == 2  # the deleted clip's frames, the old caption
    assert (len(list(visual.rglob("*.npy"))), len(list(text.rglob("*.npy")))) == (3, 2)
    assert load_video_features(out).ids == ["clip0", "clip1", "clip2", "mute"]  # written as usual


def test_cached_vectors_of_another_length_are_computed_again_not_used(tmp_path, video_dir):
    out = tmp_path / "vids"
    caps = write_captions(tmp_path / "captions.csv")
    extract_videos(video_dir, out, captions=caps, config=VideoConfig(frames=4), progress=False,
                   frames=CountingFrames(), text=mf.text_encoder())
    before = load_video_features(out)
    for kind, dim in (("visual", 1280), ("text", 384)):
        for entry in (out / ".cache" / kind).rglob("*.npy"):
            np.save(entry, np.ones(dim // 2, np.float32))  # a finite float vector, of half the length
    again = CountingFrames()
    rep = extract_videos(video_dir, out, captions=caps, config=VideoConfig(frames=4), progress=False,
                         frames=again, text=mf.text_encoder())
    assert again.calls == 5 and rep.cached == 0
    after = load_video_features(out)
    assert np.array_equal(before.visual, after.visual) and np.array_equal(before.text, after.text)


def test_a_changed_caption_is_embedded_again_and_counted(tmp_path, video_dir):
    # a re-uploaded clip with a new caption was embedded again, but counted only as a frame-cache hit
    out = tmp_path / "vids"
    caps = tmp_path / "captions.csv"
    caps.write_text("id,caption\nclip0,Surfing at dawn\nmute,Quiet city\n", encoding="utf-8")
    first = extract_videos(video_dir, out, captions=caps, config=VideoConfig(frames=4), progress=False,
                           frames=CountingFrames(), text=mf.text_encoder())
    assert (first.captions_embedded, first.captions_cached) == (2, 0)
    caps.write_text("id,caption\nclip0,Surfing at dusk\nmute,Quiet city\n", encoding="utf-8")
    again = extract_videos(video_dir, out, captions=caps, config=VideoConfig(frames=4), progress=False,
                           frames=CountingFrames(), text=mf.text_encoder())
    assert again.captions_embedded == 1 and again.extracted == 0  # the frames from the cache, the caption anew
    assert again.captions_cached == 1  # mute's: the videos without a caption are neither


def test_the_summary_lists_the_videos_left_out_before_the_notes_on_those_kept(tmp_path, capsys):
    # 11 "kept without text" notes filled the ten lines shown, and the corrupt clip was in failures.csv alone; the
    # summary said "others from the cache" of captions when none came from it
    from bgmrec.cli import main

    d = tmp_path / "videos"
    d.mkdir()
    for i in range(12):
        mf.write_video(d / f"clip{i:02d}.mp4", 0.5, 32, 32, 4, kind=i % 4, audio=False)
    (d / "zbroken.mp4").write_bytes(b"not a video at all")
    caps = tmp_path / "captions.csv"
    caps.write_text("id,caption\nclip00,Surfing at dawn\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["extract-videos", str(d), "--out", str(tmp_path / "vids"), "--captions", str(caps), "--frames", "2",
                 "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    summary = " ".join(lines[0].split())
    assert ("(12 extracted, 0 from the cache, 1 failed, 11 without text; 1 caption(s) embedded, 0 from the "
            "cache") in summary
    listed = [line.strip() for line in lines if line.startswith("  ")]
    assert listed[0].startswith("zbroken.mp4: ") and "kept without text" not in listed[0]
    assert [x.split(":")[0] for x in listed[1:10]] == [f"clip{i:02d}.mp4" for i in range(1, 10)]
    assert listed[10] == f"... 2 more in {tmp_path / 'vids' / 'failures.csv'}"


def test_extracting_again_without_the_captions_says_how_many_videos_lose_theirs(tmp_path, video_dir, capsys):
    # run again without --captions, a videos folder lost every caption (text_mask all False): "0 new since ..."
    out = tmp_path / "vids"
    caps = tmp_path / "captions.csv"
    caps.write_text("id,caption\nclip0,Surfing at dawn\nmute,Quiet city\nclip1,\n", encoding="utf-8")
    kw = dict(config=VideoConfig(frames=4), progress=False, frames=CountingFrames(), text=mf.text_encoder())
    extract_videos(video_dir, out, captions=caps, **kw)
    assert extract_videos(video_dir, out, captions=caps, **kw).warnings == []  # the same captions: nothing to say
    bare = extract_videos(video_dir, out, **kw)
    assert bare.warnings == [
        f"{out}: 2 of these 5 video(s) had a caption in its last extraction and have none in this one (e.g. "
        "'clip0'): no captions CSV was given (--captions), so they are kept without text (text_mask False); give "
        "the CSV again to keep their captions"]
    assert not load_video_features(out).text_mask.any()  # not carried over: the folder holds its last extraction
    assert extract_videos(video_dir, out, **kw).warnings == []  # said once
    extract_videos(video_dir, out, captions=caps, **kw)
    caps.write_text("id,caption\nclip0,Surfing at dawn\nmute,\n", encoding="utf-8")  # mute's caption emptied
    fewer = extract_videos(video_dir, out, captions=caps, **kw)
    assert fewer.warnings == [
        f"{out}: 1 of these 5 video(s) had a caption in its last extraction and have none in this one (e.g. "
        f"'mute'): {caps} gives them no caption now, so they are kept without text; add their captions to it to "
        "keep them"]
    extract_videos(video_dir, out, captions=caps, **kw)
    code, err = run_cli(capsys, "extract-videos", str(video_dir), "--out", str(out), "--frames", "4",
                        "--no-progress")
    assert code == 0 and ("1 of these 5 video(s) had a caption in its last extraction and have none in this one "
                          "(e.g. 'clip0'): no captions CSV was given (--captions)") in err, err


def test_one_shared_cache_serves_every_week_and_a_cache_path_with_nothing_to_reuse_is_named(tmp_path, video_dir):
    shared = tmp_path / "cache" / "video"
    kw = dict(config=VideoConfig(frames=4), progress=False, text=mf.text_encoder())
    first = extract_videos(video_dir, tmp_path / "w1", cache_dir=shared, frames=CountingFrames(), **kw)
    assert first.warnings == [] and first.cache_note == (  # right the first time: a note, not a warning
        f"a new cache at {shared} (nothing in it to reuse yet): give the same --cache every time; a later extraction "
        "that finds this note names a path other than the one used before")
    for week in ("w2", "w3"):  # the same folder every week: every clip from it, nothing to say
        rep = extract_videos(video_dir, tmp_path / week, cache_dir=shared, frames=(again := CountingFrames()), **kw)
        assert again.calls == 0 and rep.cached == 5 and rep.warnings == [] and rep.cache_note is None
    below = shared / "visual"  # one of the caches in it, not the folder holding both
    rep = extract_videos(video_dir, tmp_path / "w4", cache_dir=below, frames=(again := CountingFrames()), **kw)
    assert again.calls == 5 and rep.warnings == [
        f"{below}: a cache folder without vectors of these extraction settings, so every input's frame features are "
        "extracted again (settings changed since, another extractor's cache, or a folder above or below the one "
        "meant: this extractor's default cache is OUT/.cache)"] and rep.cache_note is None


def test_a_failed_write_leaves_the_earlier_videos_folder_as_it_was(tmp_path, video_dir, monkeypatch):
    out = tmp_path / "vids"
    extract_videos(video_dir, out, config=VideoConfig(frames=4), progress=False, frames=CountingFrames(),
                   text=mf.text_encoder())
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("bgmrec.features.video.write_csv_atomic", full_disk)  # after the arrays are written
    with pytest.raises(OSError, match="No space left"):  # other settings: every array would change
        extract_videos(video_dir, out, config=VideoConfig(frames=2), progress=False, frames=CountingFrames(),
                       text=mf.text_encoder())
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # and no temporary file
    assert load_video_features(out).manifest["settings"]["frames"] == 4


def read_captions(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """({key: caption text}, {key: why its caption is not used}) of a captions CSV (:func:`caption_rows`)."""
    rows = caption_rows(path)
    return ({k: text for k, (_, (text, reason)) in rows.items() if not reason},
            {k: reason for k, (_, (_, reason)) in rows.items() if reason})


def test_captions_csv_needs_its_columns(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("name,text\na,b\n")
    with pytest.raises(DatasetError, match="caption"):
        read_captions(p)
    p.write_text("file,caption\nx.mp4,hello #world\n")
    ok, bad = read_captions(p)
    assert ok == {"x.mp4": "hello world"} and bad == {}
    p.write_text("video_id,caption\nx,hi\n")  # the pairs CSV's name of the column is accepted here too
    assert read_captions(p) == ({"x": "hi"}, {})
    p.write_text("id,video,caption\nx,https://example.com/x,hi\n")  # with 'id' (or 'file'), 'video' is not read
    assert read_captions(p) == ({"x": "hi"}, {})
    p.write_text("video,video_id,caption\nx,y,hi\n")
    with pytest.raises(DatasetError, match=r"c.csv: columns 'video' and 'video_id' both name the video; keep one"):
        read_captions(p)
    p.write_text("name,caption\nx,hi\n")
    with pytest.raises(DatasetError, match=r"expected columns 'id' \(or 'video', 'video_id' or 'file'\) and 'caption'"):
        read_captions(p)


def test_a_stream_without_duration_is_scanned_evenly(tmp_path):
    from fractions import Fraction

    import av

    path = tmp_path / "raw.h264"
    with av.open(str(path), "w", format="h264") as out:
        vs = out.add_stream("libx264", rate=10)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        for i in range(30):
            fr = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 8, np.uint8), format="rgb24")
            fr.pts, fr.time_base = i, Fraction(1, 10)
            for p in vs.encode(fr):
                out.mux(p)
        for p in vs.encode(None):
            out.mux(p)
    frames = sample_frames(path, 4, 32)
    level = frames[:, 0, 0, 0].astype(int)
    assert frames.shape == (4, 32, 32, 3) and (np.diff(level) > 20).all()  # first to last, increasing


def test_captions_csv_keeps_quoted_line_breaks_and_names_physical_lines(tmp_path):
    p = tmp_path / "c.csv"
    p.write_bytes('id,caption\na,"multi\nline"\n\nb,Caf\xe9\nc,"x\r\ny"\n'.encode("latin-1"))
    ok, bad = read_captions(p)
    assert ok == {"a": "multi line", "c": "x y"}
    assert bad == {"b": "caption in c.csv line 5 is not UTF-8 text"}


def test_a_duplicate_caption_id_is_an_error_naming_both_lines(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text('id,caption\nclip0,"first\ncaption"\nclip1,b\nclip0,again\n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"c.csv: line 5: duplicate id 'clip0' \(also on line 2\)"):
        read_captions(p)


def run_cli(capsys, *args) -> tuple[int, str]:
    from bgmrec.cli import main

    capsys.readouterr()
    code = main(list(args))
    return code, " ".join(capsys.readouterr().err.split())


def test_the_library_names_the_config_fields_not_the_commands_options():
    from bgmrec.data.dataset import FieldError
    from bgmrec.features.video import VideoConfig

    for name in ("frames", "threads", "size"):
        with pytest.raises(FieldError, match=f"^{name} must be at least 1, got 0$"):
            VideoConfig(**{name: 0})
    with pytest.raises(FieldError, match="^scan_seconds must be a positive finite number, got nan$"):
        VideoConfig(scan_seconds=float("nan"))


def test_bad_inputs_and_folders_are_refused_before_anything_is_written(tmp_path, video_dir, capsys):
    out = tmp_path / "vids"
    code, err = run_cli(capsys, "extract-videos", str(video_dir), "--out", str(out), "--captions",
                        str(tmp_path / "missing.csv"), "--no-progress")
    assert code == 2 and "missing.csv: file is missing" in err
    code, err = run_cli(capsys, "extract-videos", str(tmp_path / "nope"), "--out", str(out), "--no-progress")
    assert code == 2 and "nope: not a folder of videos (it does not exist)" in err
    code, err = run_cli(capsys, "extract-videos", str(video_dir), "--out", str(out), "--threads", "0")
    assert code == 2 and "--threads must be at least 1, got 0" in err
    assert not out.exists()
    catalog = mf.write_catalog_folder(tmp_path / "cat", np.zeros((2, 3), np.float32), ["a", "b"])
    before = (catalog / "manifest.json").read_text()
    code, err = run_cli(capsys, "extract-videos", str(video_dir), "--out", str(catalog), "--no-progress")
    assert code == 2 and ("the folder is not empty and is not a videos folder (it is a music catalogue (written by "
                          "extract-music); expected manifest.json kind 'video-features')") in err, err
    assert (catalog / "manifest.json").read_text() == before and not (catalog / ".cache").exists()


def test_a_run_that_keeps_no_video_is_an_error_and_leaves_no_folder(tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    (d / "zero.mp4").write_bytes(b"")
    mf.write_video(d / "sound_only.mp4", 0.5, video=False)
    out = tmp_path / "vids"
    code, err = run_cli(capsys, "extract-videos", str(d), "--out", str(out), "--no-progress")
    assert code == 2 and "no video could be extracted (2 file(s) failed: " in err and "no video stream" in err
    assert not out.exists()
    out.mkdir()  # an empty folder given: it stays as it was (no .cache left in it)
    assert run_cli(capsys, "extract-videos", str(d), "--out", str(out), "--no-progress")[0] == 2
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("n_frames", [1, 2, 3])
def test_a_clip_with_fewer_frames_than_samples_uses_every_frame(tmp_path, n_frames):
    # a 1-frame clip was refused as "truncated or corrupt: only 1 of 8 sample frames decodable"
    path = mf.write_video(tmp_path / "short.mp4", n_frames / 10, 64, 48, 10, kind=1)
    frames = sample_frames(path, 8, 32)
    assert frames.shape == (8, 32, 32, 3)
    distinct = {f.tobytes() for f in frames}
    assert len(distinct) == n_frames  # each of the clip's frames, repeated evenly
    runs = 1 + sum(not np.array_equal(a, b) for a, b in zip(frames, frames[1:], strict=False))
    assert runs == n_frames  # in time order: each frame one run of repeats


def test_images_are_refused_by_content_whatever_their_name(tmp_path):
    # extract-videos skips .png/.gif by extension, but renamed ones (and uploads) were embedded as clips
    d = tmp_path / "in"
    d.mkdir()
    mf.write_video(d / "clip.mp4", 1.0)
    mf.write_image(d / "still.mp4", "png")
    mf.write_image(d / "anim.mov", "gif", frames=5)
    for name in ("still.mp4", "anim.mov"):
        with pytest.raises(MediaError, match="an image, not a video"):
            sample_frames(d / name, 4)
    r = extract_videos(d, tmp_path / "out", frames=CountingFrames(), text=mf.text_encoder(), progress=False)
    assert r.done == 1 and sorted(f for f, _ in r.failures) == ["anim.mov", "still.mp4"]


def _with_display_matrix(src: Path, dst: Path, matrix: tuple[int, ...]) -> Path:
    """A copy of the mp4 ``src`` whose track header holds ``matrix`` (the display matrix a phone writes)."""
    import struct

    data = bytearray(src.read_bytes())
    at = data.find(b"tkhd")
    # after the box type: version and flags (4), times, track id and duration (20, or 32 in version 1),
    # reserved (8), layer, alternate group, volume and reserved (8), then the 3x3 matrix
    start = at + 4 + 4 + (32 if data[at + 4] == 1 else 20) + 8 + 8
    data[start:start + 36] = struct.pack(">9i", *matrix)
    dst.write_bytes(bytes(data))
    return dst


def test_a_clip_with_a_display_rotation_is_sampled_upright(tmp_path):
    # a phone's portrait clip is stored landscape with a rotation to apply when shown: it was embedded sideways
    import av

    plain = mf.write_video(tmp_path / "plain.mp4", seconds=2.0, width=160, height=120)
    turned = _with_display_matrix(plain, tmp_path / "turned.mp4", (0, 1 << 16, 0, -(1 << 16), 0, 0, 0, 0, 1 << 30))
    with av.open(str(turned)) as container:
        rotation = next(container.decode(video=0)).rotation
    assert rotation == -90  # PyAV: the angle the display turns the frame counterclockwise (a quarter turn clockwise)
    upright, stored = sample_frames(turned, 4, 32), sample_frames(plain, 4, 32)
    np.testing.assert_array_equal(upright, np.rot90(stored, -1, axes=(1, 2)))


NO_DECODER = "no decoder for its video stream: a damaged header, or a codec FFmpeg does not decode"


def test_a_video_stream_without_a_decoder_is_refused_in_one_line_and_listed_in_failures_csv(tmp_path):
    # a damaged mp4 (its stream's codec_context None) was an AttributeError: a traceback from recommend --video, a
    # 500 from an upload, and "AttributeError: 'NoneType' object has no attribute 'width'" in failures.csv
    videos = tmp_path / "videos"
    videos.mkdir()
    good = mf.write_video(videos / "good.mp4", 1.0, 96, 64, 8)
    bad = mf.without_codec(good, videos / "bad.mp4")
    with pytest.raises(MediaError, match=f"^{NO_DECODER}$"):
        sample_frames(bad, 4)
    out = tmp_path / "vids"
    rep = extract_videos(videos, out, config=VideoConfig(frames=4), progress=False, frames=CountingFrames(),
                         text=mf.text_encoder())
    assert rep.done == 1 and rep.failures == [("bad.mp4", NO_DECODER)]
    with open(out / "failures.csv", encoding="utf-8") as f:
        assert list(csv.reader(f)) == [["file", "reason"], ["bad.mp4", NO_DECODER]]


def test_frames_larger_than_8k_are_refused_before_they_are_decoded(tmp_path, monkeypatch):
    import bgmrec.features.video as video

    clip = mf.write_video(tmp_path / "clip.mp4", seconds=1.0, width=160, height=120)
    monkeypatch.setattr(video, "MAX_FRAME_PIXELS", 160 * 120 - 1)  # as an 8K+ clip is to the real limit
    with pytest.raises(MediaError, match=r"^frames of 160x120 pixels, more than this extractor decodes \(19,199 "):
        sample_frames(clip, 4, 32)


def test_keyframes_too_far_apart_are_refused_not_decoded_from_the_start_for_every_sample(tmp_path, monkeypatch):
    # an hour-long clip with one keyframe took 16 s per upload: each of the 8 seeks decoded from frame 0
    import av

    import bgmrec.features.video as video

    clip = mf.write_video(tmp_path / "one_gop.mp4", seconds=10.0, width=32, height=32, fps=10, gop=1000,
                          audio=False)
    with av.open(str(clip)) as container:
        keyframes = sum(p.is_keyframe for p in container.demux(video=0) if p.size)
    assert keyframes == 1
    monkeypatch.setattr(video, "MAX_FRAMES_PER_SEEK", 50)  # as an hour-long single keyframe is to the real limit
    with pytest.raises(MediaError, match=r"^keyframes more than 50 frames apart \(from 4\.9 s on\): re-encode"):
        sample_frames(clip, 8, 32)
    assert sample_frames(mf.write_video(tmp_path / "keyed.mp4", seconds=10.0, width=32, height=32, fps=10, gop=20,
                                        audio=False), 8, 32).shape == (8, 32, 32, 3)  # a keyframe every 2 s


def test_a_clip_cut_off_after_half_its_samples_is_kept_and_noted_in_failures_csv(tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    mf.write_video(d / "whole.mp4", 1.0, 64, 48, 10)
    full = mf.write_video(tmp_path / "full.mkv", 4.0, 64, 48, 10, kind=2, audio=False)
    mf.truncate(full, d / "cut.mkv", 0.7)  # Matroska: what was written before the cut still decodes
    frames, decoded = decode_samples(d / "cut.mkv", 8, 32, 600.0)
    assert 4 <= decoded < 8 and all(np.array_equal(f, frames[decoded - 1]) for f in frames[decoded:])
    note = (f"kept with repeated frames: only {decoded} of 8 sample frames decodable (cut off or damaged?); the last "
            "decoded frame stands in for the others")
    out = tmp_path / "vids"
    for _ in range(2):  # its vector is not cached, so that the next run notes it again
        rep = extract_videos(d, out, progress=False, frames=CountingFrames(), text=mf.text_encoder())
        assert rep.failures == [("cut.mkv", note)] and rep.extracted == 1 + (rep.cached == 0)
        with open(out / "failures.csv", encoding="utf-8") as f:
            assert list(csv.reader(f)) == [["file", "reason"], ["cut.mkv", note]]
    assert load_video_features(out).ids == ["cut", "whole"]
    assert json.loads((out / "manifest.json").read_text())["counts"]["failed"] == 0
    from bgmrec.cli import main

    capsys.readouterr()
    assert main(["extract-videos", str(d), "--out", str(out), "--no-progress"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert (f"(1 extracted, 1 from the cache, 0 failed, 1 with repeated frames; no --captions: no video has text; 0 "
            f"new since the last extraction in {out})") in printed  # no captions: no count, and said so
    assert f"cut.mkv: {note}" in printed


@pytest.fixture
def alarm():
    """Fail a test that blocks for more than 30 s (on opening a FIFO, say) instead of hanging the run."""
    with mf.time_limit(30):
        yield


def test_fifos_and_devices_in_the_folder_are_failures_never_opened(tmp_path, alarm):
    d = tmp_path / "in"
    d.mkdir()
    mf.write_video(d / "clip.mp4", 1.0, 64, 48, 10)
    os.mkfifo(d / "pipe.mp4")  # opening it would wait for a writer
    (d / "null.mp4").symlink_to(os.devnull)  # a link to a character device
    out = tmp_path / "vids"
    rep = extract_videos(d, out, config=VideoConfig(frames=2), progress=False, frames=CountingFrames(),
                         text=mf.text_encoder())
    assert rep.done == 1
    with open(out / "failures.csv", encoding="utf-8") as f:
        assert list(csv.reader(f))[1:] == [["null.mp4", "a character device, not a regular file: not read"],
                                           ["pipe.mp4", "a named pipe (FIFO), not a regular file: not read"]]


def test_one_clip_that_is_a_link_to_nothing_or_no_regular_file_is_named_as_such_never_opened(tmp_path, alarm):
    # sample_frames (recommend --video, embed_clip) said "empty file (0 bytes)" of a FIFO; a link loop was an OSError
    os.mkfifo(tmp_path / "pipe.mp4")
    (tmp_path / "self.mp4").symlink_to("self.mp4")
    (tmp_path / "gone.mp4").symlink_to("deleted.mp4")
    for name, reason in [("pipe.mp4", "a named pipe (FIFO), not a regular file: not read"),
                         ("self.mp4", "a symbolic link loop"),
                         ("gone.mp4", "a symbolic link to 'deleted.mp4', which does not exist")]:
        with pytest.raises(MediaError) as e:
            sample_frames(tmp_path / name, 4, 32)
        assert str(e.value) == reason


def test_symbolic_link_loops_and_links_to_nothing_are_named_as_such(tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    mf.write_video(d / "clip.mp4", 1.0, 64, 48, 10)
    (d / "self.mp4").symlink_to("self.mp4")
    (d / "ping.mp4").symlink_to("pong.mp4")
    (d / "pong.mp4").symlink_to("ping.mp4")
    (d / "gone.mp4").symlink_to("deleted.mp4")
    out = tmp_path / "vids"
    extract_videos(d, out, config=VideoConfig(frames=2), progress=False, frames=CountingFrames(),
                   text=mf.text_encoder())
    with open(out / "failures.csv", encoding="utf-8") as f:
        assert list(csv.reader(f))[1:] == [["gone.mp4", "a symbolic link to 'deleted.mp4', which does not exist"],
                                           ["ping.mp4", "a symbolic link loop"], ["pong.mp4", "a symbolic link loop"],
                                           ["self.mp4", "a symbolic link loop"]]
    (tmp_path / "loop").symlink_to("loop")  # the folder given: not "it does not exist"
    for command in ("extract-videos", "extract-music"):
        code, err = run_cli(capsys, command, str(tmp_path / "loop"), "--out", str(tmp_path / "o"), "--no-progress")
        assert code == 2 and "loop: not a folder of " in err and err.endswith("(a symbolic link loop)"), err


def test_a_playlist_named_as_a_clip_is_not_opened(tmp_path):
    # a security review: an ffconcat playlist uploaded as clip.mp4 made the server decode a file of its own disk
    from bgmrec.features.video import decode_samples

    mf.write_video(tmp_path / "theirs.mp4")
    (tmp_path / "clip.mp4").write_text("ffconcat version 1.0\nfile theirs.mp4\n", encoding="utf-8")
    with pytest.raises(MediaError, match=r"^cannot open as media: .*; only video files are opened \(mp4, mov, mkv, "
                                         r"webm, avi and other video formats\), not playlists or other files$"):
        decode_samples(tmp_path / "clip.mp4", 4, 32, 600.0)
    assert decode_samples(tmp_path / "theirs.mp4", 4, 32, 600.0)[1] == 4  # the clip itself is read


def test_a_decode_past_its_deadline_or_a_frame_past_8k_is_refused(tmp_path):
    # a small file of huge frames (a first one small, the size changed mid-stream) or of dense timestamps kept a
    # server's upload decoding for minutes to hours
    import time
    from fractions import Fraction
    from types import SimpleNamespace

    from bgmrec.features.video import MAX_FRAME_PIXELS, DecodeLimit, _checked_frames, decode_samples

    clip = mf.write_video(tmp_path / "clip.mp4")
    with pytest.raises(MediaError, match=r"^still decoding after this server's time for one video \(at 0\.\d s "
                                         r"of it\): a clip too long or too large to sample; send a shorter or "
                                         r"smaller one$"):
        decode_samples(clip, 4, 32, 600.0, DecodeLimit(time.monotonic() - 1))
    assert decode_samples(clip, 4, 32, 600.0, DecodeLimit(time.monotonic() + 60))[1] == 4

    def container(*packets):  # packets of (seconds, frames it decodes to), as PyAV's demux gives them
        return SimpleNamespace(demux=lambda stream: iter(SimpleNamespace(
            pts=None if t is None else int(t * 1000), time_base=Fraction(1, 1000), decode=lambda f=f: iter(f))
            for t, f in packets))

    small, huge = SimpleNamespace(width=64, height=64, time=0.0), SimpleNamespace(width=12000, height=12000, time=2.5)
    frames = _checked_frames(container((0.0, [small]), (2.0, [huge])), None, None)  # the frame's own time said
    assert next(frames) is small and MAX_FRAME_PIXELS < 12000 * 12000
    with pytest.raises(MediaError, match=r"^a frame of 12000x12000 pixels \(at 2\.5 s\), more than this extractor "
                                         r"decodes \(33,177,600 pixels, 8K UHD\)$"):
        next(frames)
    # packets that make no frame are checked too (a file of millions of them overran a deadline checked per frame)
    empty = container((0.0, []), (None, []), (1.5, []), (1.6, [small]))
    passed = DecodeLimit(time.monotonic() - 1)
    with pytest.raises(MediaError, match=r"^still decoding after this server's time for one video \(at 0\.0 s"):
        next(_checked_frames(empty, None, passed))
    ticks = iter([0.0, 0.0, 99.0])  # the deadline passes at the third packet (1.5 s), which makes no frame
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr("bgmrec.features.video.time.monotonic", lambda: next(ticks))
        with pytest.raises(MediaError, match=r"^still decoding after this server's time for one video \(at 1\.5 s"):
            next(_checked_frames(empty, None, DecodeLimit(50.0)))


def test_a_decode_stops_at_its_next_packet_once_the_server_stops(tmp_path):
    # a decode in progress when the server stopped ran on to its 60-s deadline, past the server's time to stop
    import threading
    import time

    from bgmrec.features.video import DecodeLimit, decode_samples

    clip = mf.write_video(tmp_path / "clip.mp4")
    stop = threading.Event()
    limit = DecodeLimit(time.monotonic() + 60, stop)
    assert decode_samples(clip, 4, 32, 600.0, limit)[1] == 4  # not stopped: decoded
    stop.set()
    with pytest.raises(MediaError, match=r"^the server stopped while this video was decoded \(at 0\.\d s of it\); "
                                         r"send it again$"):
        decode_samples(clip, 4, 32, 600.0, limit)


def test_a_file_name_is_never_read_as_a_protocol_s_url(tmp_path, monkeypatch):
    # a review: extract-videos hands FFmpeg names relative to its folder, and one named tcp:127.0.0.1:9.mp4 made
    # FFmpeg open a TCP connection, one named concat:a.mp4|b.mp4 read both files
    from bgmrec.features.video import decode_samples

    monkeypatch.chdir(tmp_path)
    mf.write_video(tmp_path / "a.mp4", seconds=1.0)
    mf.write_video(tmp_path / "b.mp4", seconds=3.0)
    (tmp_path / "concat:a.mp4|b.mp4").write_bytes((tmp_path / "b.mp4").read_bytes())
    assert decode_samples(Path("concat:a.mp4|b.mp4"), 4, 32, 600.0)[1] == 4  # the file, as itself
    (tmp_path / "tcp:127.0.0.1:9.mp4").write_bytes(b"junk")
    with pytest.raises(MediaError, match=r"^cannot open as media: InvalidDataError"):  # a file, not a connection
        decode_samples(Path("tcp:127.0.0.1:9.mp4"), 4, 32, 600.0)
