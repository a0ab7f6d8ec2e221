"""Options of the media commands that must take effect: recommend --all-videos with --video, --exclude with
--genre, and extract-videos' --frames and --cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

import media_fixtures as mf
from bgmrec.cli import main

GENRES = ["pop", "rock", "jazz", "pop", "rock", "pop", "rock", "pop"]  # t2 is the only jazz track


def one_line_err(capsys) -> str:
    return " ".join(capsys.readouterr().err.split())


def test_all_videos_with_a_video_file_is_refused_naming_video(tmp_path, capsys):
    # guards against check_clip_options testing only --video-id with --all-videos: --video FILE silently ignored
    features = tmp_path / "vfeat"
    clip = tmp_path / "clip.mp4"
    capsys.readouterr()
    code = main(["recommend", "--run", str(tmp_path / "no-run"), "--catalog", str(tmp_path / "no-catalog"),
                 "--features", str(features), "--all-videos", "--out", str(tmp_path / "answers.jsonl"),
                 "--video", str(clip)])
    assert code == 2
    assert one_line_err(capsys) == (f"error: --all-videos ranks for every video of --features {features}; --video "
                                    "and --video-id name one: give either")
    assert not (tmp_path / "answers.jsonl").exists()


@pytest.fixture
def small_world(tmp_path):
    """30 videos of random vectors, a catalogue of 8 tracks (one jazz), and a popularity run trained on them."""
    vids = mf.write_videos_folder(tmp_path / "vids", 30)
    cat = mf.write_catalog_folder(tmp_path / "cat",
                                  np.random.default_rng(1).standard_normal((8, 12)).astype(np.float32), GENRES)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("video,track,uploader\n" + "".join(f"v{i},t{(i * 3) % 8},u{i % 5}\n" for i in range(30)),
                     encoding="utf-8")
    assert main(["build-dataset", "--videos", str(vids), "--music", str(cat), "--pairs", str(pairs), "--out",
                 str(tmp_path / "data")]) == 0
    assert main(["train", "--data", str(tmp_path / "data"), "--model", "popularity", "--out",
                 str(tmp_path / "run")]) == 0
    return vids, cat, tmp_path / "run"


def test_an_excluded_track_outside_the_genre_is_counted_once(small_world, tmp_path, capsys):
    # guards against counting left-out positions with repeats: --exclude t0 (pop) with --genre jazz counted t0
    # twice, leaving "none" of the 8 tracks and refusing a request whose one jazz track remains
    vids, cat, run = small_world
    out = tmp_path / "answers.jsonl"
    capsys.readouterr()
    assert main(["recommend", "--run", str(run), "--catalog", str(cat), "--features", str(vids), "--all-videos",
                 "--genre", "jazz", "--exclude", "t0", "--out", str(out), "--top", "5"]) == 0
    err = one_line_err(capsys)
    assert "leave none" not in err
    assert err.endswith(f"wrote the top 1 tracks of 30 videos of {vids} to {out} (0 with warnings of their own)")
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 30 and all([t["id"] for t in a["tracks"]] == ["t2"] for a in lines)
    # with two tracks of the genre left after the exclusion, the summary says 2 (the repeat made it 1)
    assert main(["recommend", "--run", str(run), "--catalog", str(cat), "--features", str(vids), "--all-videos",
                 "--genre", "rock", "--genre", "jazz", "--exclude", "t0", "--exclude", "t1", "--out", str(out),
                 "--top", "5"]) == 0
    assert one_line_err(capsys).endswith(f"wrote the top 3 tracks of 30 videos of {vids} to {out} (0 with "
                                         "warnings of their own)")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Two one-second test-pattern clips without sound."""
    folder = tmp_path_factory.mktemp("clips") / "videos"
    folder.mkdir()
    for i in range(2):
        mf.write_video(folder / f"clip{i}.mp4", 1.0, 96, 64, 8, kind=i, audio=False)
    return folder


def settings_of(folder) -> dict:
    return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["settings"]


@pytest.mark.media
def test_extract_videos_frames_option_is_used(clips, tmp_path):
    # guards against extract-videos building VideoConfig with the default frames (8) whatever --frames says
    for frames in (2, 3):
        out = tmp_path / f"vf{frames}"
        assert main(["extract-videos", str(clips), "--out", str(out), "--frames", str(frames), "--no-progress"]) == 0
        assert settings_of(out)["frames"] == frames
    assert settings_of(tmp_path / "vf2") != settings_of(tmp_path / "vf3")


@pytest.mark.media
def test_extract_videos_cache_option_is_shared_across_output_folders(clips, tmp_path, capsys):
    # guards against extract-videos passing cache_dir=None: --cache ignored, each OUT/.cache used instead
    cache = tmp_path / "cache"
    first, second = tmp_path / "week1", tmp_path / "week2"
    capsys.readouterr()
    assert main(["extract-videos", str(clips), "--out", str(first), "--frames", "2", "--cache", str(cache),
                 "--no-progress"]) == 0
    assert "(2 extracted, 0 from the cache" in capsys.readouterr().out
    assert len(list((cache / "visual").rglob("*.npy"))) == 2
    assert not (first / ".cache").exists()
    assert main(["extract-videos", str(clips), "--out", str(second), "--frames", "2", "--cache", str(cache),
                 "--no-progress"]) == 0
    assert f"wrote 2 videos to {second} (0 extracted, 2 from the cache, 0 failed" in capsys.readouterr().out
    assert not (second / ".cache").exists()
    assert np.array_equal(np.load(first / "visual.npy"), np.load(second / "visual.npy"))
