"""End to end from raw media: extract-music, extract-videos, build-dataset, train, recommend (CLI)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import media_fixtures as mf
from bgmrec.cli import main

pytestmark = pytest.mark.media

GENRES = ["pop", "rock", "jazz", "pop", "rock", "pop"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """6 tracks, 12 clips, captions, metadata and an upload log, extracted and built once."""
    root = tmp_path_factory.mktemp("e2e")
    audio, videos = root / "audio", root / "videos"
    audio.mkdir()
    videos.mkdir()
    exts = [".wav", ".mp3", ".flac", ".ogg", ".m4a", ".wav"]
    for j, ext in enumerate(exts):
        f = 200.0 * 1.2 ** j
        sig = mf.chord([f, f * 1.26, f * 1.5], 2.0) + 0.5 * mf.clicks(80 + 20 * j, 2.0)
        mf.write_audio(audio / f"song{j}{ext}", sig.astype(np.float32))
    (root / "meta.csv").write_text("id,title,artist,genre\n" + "".join(
        f"song{j},Song {j},Band {j % 2},{g}\n" for j, g in enumerate(GENRES)), encoding="utf-8")
    for i in range(12):
        mf.write_video(videos / f"clip{i:02d}.mp4", 1.0, 96, 64, 8, kind=i, audio=i % 3 == 0)
    (root / "captions.csv").write_text("id,caption,hashtags\n" + "".join(
        f"clip{i:02d},{'' if i % 4 == 0 else f'clip number {i}'},{'' if i % 4 == 0 else f'#tag{i % 3}'}\n"
        for i in range(12)),
        encoding="utf-8")
    rows = [f"clip{i:02d},song{(i * 5) % 6},u{i % 3},{1000 + 10 * i}" for i in range(12)]
    (root / "pairs.csv").write_text("video,track,uploader,time\n" + "\n".join(rows) + "\n", encoding="utf-8")

    assert main(["extract-music", str(audio), "--out", str(root / "catalog"), "--meta", str(root / "meta.csv"),
                 "--workers", "1", "--no-progress"]) == 0
    assert main(["extract-videos", str(videos), "--out", str(root / "vf"), "--captions",
                 str(root / "captions.csv"), "--frames", "4", "--no-progress"]) == 0
    assert main(["build-dataset", "--videos", str(root / "vf"), "--music", str(root / "catalog"), "--pairs",
                 str(root / "pairs.csv"), "--out", str(root / "data"), "--seed", "0"]) == 0
    assert main(["train", "--data", str(root / "data"), "--model", "random", "--out", str(root / "run")]) == 0
    return root


def recommend_json(capsys, args):
    capsys.readouterr()
    assert main(["recommend", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_stopped_training_is_noted_when_it_recommends(world, tmp_path, capsys):
    # a RUN.partial (train stopped: its best epoch so far) was noted by evaluate and compare, not by recommend
    import shutil

    partial = tmp_path / "run.partial"
    shutil.copytree(world / "run", partial)
    record = json.loads((partial / "run.json").read_text())
    (partial / "run.json").write_text(json.dumps({**record, "stopped_at_epoch": 3, "of_epochs": 5, "best_epoch": 2}))
    capsys.readouterr()
    assert main(["recommend", "--run", str(partial), "--catalog", str(world / "catalog"), "--video",
                 str(world / "videos" / "clip03.mp4"), "--json"]) == 0
    out, err = capsys.readouterr()
    said = f"{partial} is a training stopped at epoch 3 of 5: its best epoch so far (2), not a finished training"
    assert f"note: {said}" in err and said in json.loads(out)["warnings"]


def test_from_a_clip_file_to_ranked_tracks(world, capsys):
    res = recommend_json(capsys, ["--run", str(world / "run"), "--catalog", str(world / "catalog"),
                                  "--video", str(world / "videos" / "clip03.mp4"), "--caption",
                                  "street dance #city", "--top", "4"])
    assert len(res["tracks"]) == 4
    assert set(res["tracks"][0]) == {"id", "title", "artist", "genre", "score"}
    scores = [t["score"] for t in res["tracks"]]
    assert scores == sorted(scores, reverse=True)
    assert {t["id"] for t in res["tracks"]} <= {f"song{j}" for j in range(6)}
    assert res["tracks"][0]["title"].startswith("Song ")
    assert res["modality_share"] == {"visual": None, "text": None}  # the model does not say
    no_text = recommend_json(capsys, ["--run", str(world / "run"), "--catalog", str(world / "catalog"),
                                      "--video", str(world / "videos" / "clip03.mp4")])
    assert len(no_text["tracks"]) == 6  # --top 10 capped at the catalogue size
    assert no_text["modality_share"] == {"visual": 1.0, "text": 0.0}


def test_from_precomputed_features_matches_the_file(world, capsys):
    base = ["--run", str(world / "run"), "--catalog", str(world / "catalog"), "--top", "6"]
    pre = recommend_json(capsys, [*base, "--features", str(world / "vf"), "--video-id", "clip05"])
    caption = (world / "vf" / "videos.csv").read_text().splitlines()[6].split(",", 2)[2]
    assert caption == "clip number 5 tag2"
    # the same clip from its file and caption, with the same frames setting, gives the same answer
    raw = recommend_json(capsys, [*base, "--video", str(world / "videos" / "clip05.mp4"), "--caption",
                                  "clip number 5 #tag2", "--frames", "4"])
    assert [t["id"] for t in pre["tracks"]] == [t["id"] for t in raw["tracks"]]
    assert np.allclose([t["score"] for t in pre["tracks"]], [t["score"] for t in raw["tracks"]], rtol=1e-4)


def test_recommend_excludes_tracks_and_keeps_genres_as_the_service_does(world, capsys):
    # the HTTP service took exclude and genres, the command line neither ("No such option: --genres")
    base = ["--run", str(world / "run"), "--catalog", str(world / "catalog"), "--features", str(world / "vf"),
            "--video-id", "clip05"]
    every = [t["id"] for t in recommend_json(capsys, base)["tracks"]]
    fewer = recommend_json(capsys, [*base, "--exclude", every[0], "--exclude", every[2]])
    assert [t["id"] for t in fewer["tracks"]] == [every[1], *every[3:]]
    rock_jazz = recommend_json(capsys, [*base, "--genre", "rock", "--genre", "jazz"])
    assert [t["id"] for t in rock_jazz["tracks"]] == [
        t for t in every if GENRES[int(t.removeprefix("song"))] in ("rock", "jazz")]
    passed_over = recommend_json(capsys, [*base, "--exclude", "nosuch", "--exclude", every[0]])  # a warning, not 2
    assert [t["id"] for t in passed_over["tracks"]] == every[1:]
    assert passed_over["warnings"] == ["exclude: 1 track id(s) not in the catalogue, passed over: 'nosuch'"]
    assert main(["recommend", *base, "--genre", "polka"]) == 2
    assert one_line_err(capsys).startswith("error: --genre: unknown genre(s) polka; the catalogue has ")


def test_table_output_and_cmvae_modality_share(world, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")  # piped with COLUMNS set, ids were cut to "t00…" and scores to "1.2…"
    assert main(["train", "--data", str(world / "data"), "--model", "cmvae", "--out", str(world / "cmvae"),
                 "--epochs", "1"]) == 0
    res = recommend_json(capsys, ["--run", str(world / "cmvae"), "--catalog", str(world / "catalog"),
                                  "--features", str(world / "vf"), "--video-id", "clip01", "--top", "3"])
    share = res["modality_share"]
    assert len(res["tracks"]) == 3 and abs(share["visual"] + share["text"] - 1) < 1e-6
    assert 0 < share["text"] < 1
    capsys.readouterr()
    assert main(["recommend", "--run", str(world / "run"), "--catalog", str(world / "catalog"),
                 "--features", str(world / "vf"), "--video-id", "clip00", "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "Song" in out and "frames 100%" in out
    ids = [t["id"] for t in recommend_json(capsys, ["--run", str(world / "run"), "--catalog", str(world / "catalog"),
                                                    "--features", str(world / "vf"), "--video-id", "clip00",
                                                    "--top", "2"])["tracks"]]
    rows = [line for line in out.splitlines() if "Song" in line]
    assert len(rows) == 2 and all(i in row for i, row in zip(ids, rows, strict=True))  # the id beside its title
    assert "…" not in out


def one_line_err(capsys) -> str:
    return " ".join(capsys.readouterr().err.split())  # the console may wrap a long line


def test_clear_errors(world, tmp_path, capsys):
    wrong = mf.write_catalog_folder(tmp_path / "wrong", np.zeros((3, 5), np.float32), ["a", "b", "c"])
    capsys.readouterr()
    code = main(["recommend", "--run", str(world / "run"), "--catalog", str(wrong), "--features",
                 str(world / "vf"), "--video-id", "clip00"])
    assert code == 2 and "trained on music features of dimension 173" in one_line_err(capsys)
    (wrong / "tracks.csv").write_text("id,title,artist,genre,file,sha256\na\nb,B,C,rock,b.wav,\nc,B,C,pop,c.wav,\n")
    code = main(["recommend", "--run", str(world / "run"), "--catalog", str(wrong), "--features",
                 str(world / "vf"), "--video-id", "clip00"])
    assert code == 2 and "tracks.csv: line 2: 1 field(s), expected 6" in one_line_err(capsys)
    code = main(["recommend", "--run", str(world / "run"), "--catalog", str(world / "catalog"), "--features",
                 str(world / "vf"), "--video-id", "nope"])
    assert code == 2 and "no video with id 'nope'" in one_line_err(capsys)
    vf = shutil.copytree(world / "vf", tmp_path / "vf")  # a clip whose extraction failed: said so, not "no such id"
    (vf / "failures.csv").write_text("file,reason\nsub/broken.mp4,cannot open as media: damaged\n", encoding="utf-8")
    code = main(["recommend", "--run", str(world / "run"), "--catalog", str(world / "catalog"), "--features",
                 str(vf), "--video-id", "broken"])
    assert code == 2 and one_line_err(capsys) == (f"error: {vf}/videos.csv: no video with id 'broken': its extraction "
                                                  f"failed (cannot open as media: damaged; see {vf}/failures.csv)")
    (vf / "failures.csv").write_text("file,reason\nbro\u0301ken.mp4,empty file (0 bytes)\n", encoding="utf-8")
    code = main(["recommend", "--run", str(world / "run"), "--catalog", str(world / "catalog"), "--features",
                 str(vf), "--video-id", "br\u00f3ken"])  # its accent written the other way
    assert code == 2 and one_line_err(capsys).endswith("its extraction failed (empty file (0 bytes); see "
                                                       f"{vf}/failures.csv)")
    clip = world / "videos" / "clip05.mp4"  # --video with --features is an id; a file's path gets a hint
    code = main(["recommend", "--run", str(world / "run"), "--catalog", str(world / "catalog"), "--features",
                 str(world / "vf"), "--video", str(clip)])
    assert code == 2 and one_line_err(capsys) == (
        f"error: {world / 'vf'}/videos.csv: no video with id '{clip}'; with --features, --video names an id of it, "
        f"and {clip} is a file: give it without --features to embed it, or its id with --video-id")
    code = main(["recommend", "--run", str(world / "run"), "--catalog", str(world / "catalog"), "--features",
                 str(tmp_path / "nowhere"), "--video", str(clip)])  # another error: as it is, without the hint
    assert code == 2 and "--video names an id" not in one_line_err(capsys)
    (vf / "failures.csv").write_text("not,this\n", encoding="utf-8")  # unreadable: the missing id is the error
    code = main(["recommend", "--run", str(world / "run"), "--catalog", str(world / "catalog"), "--features",
                 str(vf), "--video-id", "broken"])
    assert code == 2 and one_line_err(capsys) == f"error: {vf}/videos.csv: no video with id 'broken'"
    code = main(["recommend", "--run", str(world / "run"), "--catalog", str(world / "catalog"), "--features",
                 str(world / "vf"), "--video-id", "clip00", "--mode", "content"])
    assert code == 2 and "content" in one_line_err(capsys)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    code = main(["recommend", "--run", str(world / "run"), "--catalog", str(world / "catalog"), "--video",
                 str(bad)])
    assert code == 2 and "cannot open as media" in one_line_err(capsys)
    damaged = mf.without_codec(world / "videos" / "clip05.mp4", tmp_path / "damaged.mp4")  # was a traceback
    code = main(["recommend", "--run", str(world / "run"), "--catalog", str(world / "catalog"), "--video",
                 str(damaged)])
    assert code == 2 and one_line_err(capsys) == (f"error: {damaged}: no decoder for its video stream: a damaged "
                                                  "header, or a codec FFmpeg does not decode")


def test_the_service_answers_an_uploaded_video_as_the_cli(world, capsys, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from bgmrec.features.audio import load_catalog
    from bgmrec.features.recommend import ClipRecommender
    from bgmrec.models.base import load_model
    from bgmrec.service import create_app

    client = TestClient(create_app(ClipRecommender(load_model(world / "run"), load_catalog(world / "catalog")),
                                   frames=4))
    clip = world / "videos" / "clip05.mp4"
    cli = recommend_json(capsys, ["--run", str(world / "run"), "--catalog", str(world / "catalog"), "--top", "3",
                                  "--video", str(clip), "--caption", "clip number 5 #tag2", "--frames", "4"])
    r = client.post("/recommend/video", files={"video": ("clip05.mp4", clip.read_bytes(), "video/mp4")},
                    data={"caption": "clip number 5 #tag2", "top": "3"})
    assert r.status_code == 200 and r.json()["served_by"]["run"] == "run"
    assert [t["id"] for t in r.json()["tracks"]] == [t["id"] for t in cli["tracks"]]
    assert np.allclose([t["score"] for t in r.json()["tracks"]], [t["score"] for t in cli["tracks"]], rtol=1e-4)
    broken = client.post("/recommend/video", files={"video": ("broken.mp4", b"not a video", "video/mp4")})
    assert broken.status_code == 422 and broken.json()["detail"].startswith("video broken.mp4: ")
    photo = mf.write_image(tmp_path / "photo.png", "png").read_bytes()  # extract-videos refuses images too
    still = client.post("/recommend/video", files={"video": ("photo.png", photo, "image/png")})
    assert still.status_code == 422 and "video photo.png: an image, not a video" in still.json()["detail"]


def test_features_extracted_otherwise_than_the_training_data_are_warned_of(world, tmp_path, capsys):
    base = ["--run", str(world / "run"), "--video", str(world / "videos" / "clip05.mp4"), "--top", "2"]
    assert recommend_json(capsys, [*base, "--catalog", str(world / "catalog"), "--frames", "4"])["warnings"] == []
    assert "warning" not in capsys.readouterr().err  # as trained: 4 frames, the same catalogue
    # without --frames: sampled as the training videos were (4, which run.json records), not extract-videos' 8
    as_trained = recommend_json(capsys, [*base, "--catalog", str(world / "catalog")])
    assert as_trained["warnings"] == [] and as_trained["tracks"] == recommend_json(
        capsys, [*base, "--catalog", str(world / "catalog"), "--frames", "4"])["tracks"]
    capsys.readouterr()
    assert main(["recommend", *base, "--catalog", str(world / "catalog"), "--frames", "8", "--json"]) == 0
    # the library warns (FeatureMismatchWarning); the command shows it as its other warnings, once, and its JSON
    # carries it (a program reading the answer sees what a person reading stderr sees)
    out, err = capsys.readouterr()
    said = ("clips are sampled at 8 frames, the model's training videos at 4; sample them at 4 (recommend --frames "
            "for a video file, extract-videos --frames for extracted features)")
    assert " ".join(err.split()) == f"warning: {said}"
    assert json.loads(out)["warnings"] == [said]
    assert main(["extract-music", str(world / "audio"), "--out", str(tmp_path / "short"), "--seconds", "1",
                 "--workers", "1", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["recommend", *base, "--catalog", str(tmp_path / "short"), "--frames", "4", "--json"]) == 0
    assert f"warning: the catalogue {tmp_path / 'short'} was extracted with max_seconds=1.0, the model's training " \
           "music with max_seconds=60.0" in one_line_err(capsys)
    assert main(["extract-videos", str(world / "videos"), "--out", str(tmp_path / "vf2"), "--frames", "2",
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["recommend", "--run", str(world / "run"), "--catalog", str(world / "catalog"), "--features",
                 str(tmp_path / "vf2"), "--video-id", "clip05", "--json"]) == 0
    assert "clips are sampled at 2 frames, the model's training videos at 4" in one_line_err(capsys)
    # a backfill of that folder says it too: once on stderr, and in every line's warnings
    answers = tmp_path / "answers.jsonl"
    assert main(["recommend", "--run", str(world / "run"), "--catalog", str(world / "catalog"), "--features",
                 str(tmp_path / "vf2"), "--all-videos", "--out", str(answers)]) == 0
    assert "clips are sampled at 2 frames, the model's training videos at 4" in one_line_err(capsys)
    lines = [json.loads(line) for line in answers.read_text().splitlines()]
    assert lines and all(any("clips are sampled at 2 frames" in w for w in a["warnings"]) for a in lines)


def test_recommend_refuses_personalised_mode_and_a_folder_as_the_clip_naming_what_to_do(world, tmp_path, capsys):
    base = ["recommend", "--run", str(world / "run"), "--catalog", str(world / "catalog")]
    capsys.readouterr()
    assert main([*base, "--video", str(world / "videos" / "clip05.mp4"), "--mode", "personalised"]) == 2
    assert one_line_err(capsys) == (
        "error: recommend: --mode personalised ranks with the uploader's genre taste, which this command does not "
        "take; `bgmrec serve --mode personalised` takes it with each request (taste)")
    assert main([*base, "--video", str(world / "videos")]) == 2
    folder = world / "videos"
    assert one_line_err(capsys) == f"error: {folder}: a folder, not a video file (extract-videos reads folders)"
    assert main([*base, "--video", str(tmp_path / "nosuch.mp4")]) == 2
    assert one_line_err(capsys) == f"error: {tmp_path / 'nosuch.mp4'}: no such video file"


@pytest.mark.parametrize("option", ["--top", "--frames"])
def test_a_count_below_one_is_refused_naming_the_option_before_anything_is_loaded(tmp_path, capsys, option):
    # --top 0 loaded the model and the catalogue first, then said "top must be at least 1"
    capsys.readouterr()
    code = main(["recommend", "--run", str(tmp_path / "no-run"), "--catalog", str(tmp_path / "no-catalog"),
                 "--video", "clip.mp4", option, "0"])
    assert code == 2 and f"Invalid value for '{option}'" in one_line_err(capsys)


@pytest.mark.parametrize("extra, words", [
    # the clip file was ignored and v02 of --features ranked
    (["--video", "videos/v01.mp4", "--features", "vfeat", "--video-id", "v02"],
     "error: --video videos/v01.mp4 and --video-id v02 both name the clip of --features vfeat; give one"),
    (["--features", "vfeat", "--video-id", "v02", "--caption", "street dance"],
     "error: --caption is read for a clip file only (--video FILE without --features); --features vfeat holds "
     "each clip's caption"),
    (["--features", "vfeat", "--video", "v02", "--frames", "4"],
     "error: --frames is read for a clip file only (--video FILE without --features); the clips of --features "
     "vfeat were sampled"),
    (["--features", "vfeat", "--video-id", "v02", "--frames", "8"],  # the default, given: still unused
     "error: --frames is read for a clip file only (--video FILE without --features)"),
    (["--video", "videos/v01.mp4", "--video-id", "v02"],  # the id was ignored and the file ranked
     "error: --video-id v02: an id of a videos folder; give it with --features DIR"),
    (["--features", "vfeat"], "error: --features needs --video-id ID"),
    (["--caption", "street dance"], "error: give --video FILE [--caption TEXT], or --features DIR --video-id ID"),
], ids=["video-and-video-id", "caption-with-features", "frames-with-features", "default-frames-with-features",
        "video-id-without-features", "features-without-id", "no-clip"])
def test_contradictory_or_unused_clip_options_are_refused_before_anything_is_loaded(tmp_path, capsys, extra,
                                                                                      words):
    capsys.readouterr()
    code = main(["recommend", "--run", str(tmp_path / "no-run"), "--catalog", str(tmp_path / "no-catalog"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(words) and err.count("\n") == 1, err


def test_the_help_names_one_option_for_each_way_of_giving_the_clip():
    import typer.main

    from bgmrec.cli.app import app

    helps = {p.name: p.help for p in typer.main.get_command(app).commands["recommend"].params}
    assert "video file" in helps["video"] and " id" not in helps["video"]  # a file; an id is --video-id's
    assert "--video-id" in helps["video"] and "--video-id" in helps["features"]
    assert helps["video_id"].startswith("id of the clip in --features")


def test_a_built_dataset_as_catalogue_keeps_its_music_extraction_settings(world):
    """So that recommend and serve on it check them against the model's, as on the catalogue it was built from."""
    from bgmrec.features.audio import load_catalog
    from bgmrec.features.recommend import open_catalog

    assert open_catalog(world / "data").manifest["settings"] == load_catalog(world / "catalog").manifest["settings"]


def test_a_clip_cut_off_after_half_its_samples_is_ranked_and_the_answer_says_its_frames_were_repeated(world, tmp_path,
                                                                                                       capsys):
    # recommend --video and an upload ranked it on its last decoded frame repeated, and said nothing
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from bgmrec.features.audio import load_catalog
    from bgmrec.features.recommend import ClipRecommender
    from bgmrec.features.video import decode_samples
    from bgmrec.models.base import load_model
    from bgmrec.service import create_app

    full = mf.write_video(tmp_path / "full.mkv", 4.0, 64, 48, 10, kind=2, audio=False)
    cut = mf.truncate(full, tmp_path / "cut.mkv", 0.7)  # Matroska: what was written before the cut still decodes
    decoded = decode_samples(cut, 4, 224, 600.0)[1]
    assert 2 <= decoded < 4
    note = (f"kept with repeated frames: only {decoded} of 4 sample frames decodable (cut off or damaged?); the last "
            "decoded frame stands in for the others")
    base = ["recommend", "--run", str(world / "run"), "--catalog", str(world / "catalog"), "--frames", "4"]
    capsys.readouterr()
    assert main([*base, "--video", str(cut), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["warnings"] == [note] and len(json.loads(out)["tracks"]) == 6
    assert " ".join(err.split()) == f"warning: {cut}: {note}"
    assert main([*base, "--video", str(cut)]) == 0  # the table: the same warning beside it
    out, err = capsys.readouterr()
    assert "Song" in out and " ".join(err.split()) == f"warning: {cut}: {note}"
    whole = world / "videos" / "clip05.mp4"
    assert main([*base, "--video", str(whole), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["warnings"] == [] and err == ""

    client = TestClient(create_app(ClipRecommender(load_model(world / "run"), load_catalog(world / "catalog")),
                                   frames=4))
    r = client.post("/recommend/video", files={"video": ("cut.mkv", cut.read_bytes(), "video/x-matroska")})
    assert r.status_code == 200 and r.json()["warnings"] == [note] and len(r.json()["tracks"]) == 6
    r = client.post("/recommend/video", files={"video": ("clip05.mp4", whole.read_bytes(), "video/mp4")})
    assert r.status_code == 200 and r.json()["warnings"] == []

    # the same clip extracted: its note in failures.csv comes with its answer (--features --video-id)
    (tmp_path / "vids").mkdir()
    shutil.copy(cut, tmp_path / "vids" / "cut.mkv")
    shutil.copy(whole, tmp_path / "vids" / "whole.mp4")
    assert main(["extract-videos", str(tmp_path / "vids"), "--out", str(tmp_path / "vf"), "--frames", "4",
                 "--no-progress"]) == 0
    by_id = ["recommend", "--run", str(world / "run"), "--catalog", str(world / "catalog"), "--features",
             str(tmp_path / "vf"), "--json", "--video-id"]
    capsys.readouterr()
    assert main([*by_id, "cut"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["warnings"] == [note] and f"{note}" in " ".join(err.split())
    assert main([*by_id, "whole"]) == 0
    assert json.loads(capsys.readouterr().out)["warnings"] == []
    every = ["recommend", "--run", str(world / "run"), "--catalog", str(world / "catalog"), "--features",
             str(tmp_path / "vf"), "--all-videos", "--out", "-"]
    assert main(every) == 0  # failures.csv read once for all: each clip's note with its own answer
    assert {a["video"]: a["warnings"] for a in map(json.loads, capsys.readouterr().out.splitlines())} == {
        "cut": [note], "whole": []}


def test_a_clip_path_that_is_a_link_to_nothing_or_no_regular_file_is_named_as_extract_videos_names_it(world,
                                                                                                        tmp_path,
                                                                                                        capsys):
    # a link loop and a link to a missing file were "no such video file", and so was a FIFO
    import os

    (tmp_path / "self.mp4").symlink_to("self.mp4")
    (tmp_path / "gone.mp4").symlink_to("deleted.mp4")
    os.mkfifo(tmp_path / "pipe.mp4")  # opening it would wait for a writer
    (tmp_path / "to-pipe.mp4").symlink_to("pipe.mp4")
    (tmp_path / "null.mp4").symlink_to(os.devnull)
    base = ["recommend", "--run", str(world / "run"), "--catalog", str(world / "catalog"), "--video"]
    capsys.readouterr()
    with mf.time_limit(30):
        for name, reason in [("self.mp4", "a symbolic link loop"),
                             ("gone.mp4", "a symbolic link to 'deleted.mp4', which does not exist"),
                             ("pipe.mp4", "a named pipe (FIFO), not a regular file: not read"),
                             ("to-pipe.mp4", "a named pipe (FIFO), not a regular file: not read"),
                             ("null.mp4", "a character device, not a regular file: not read")]:
            assert main([*base, str(tmp_path / name)]) == 2
            assert one_line_err(capsys) == f"error: {tmp_path / name}: {reason}"
    assert main([*base, str(tmp_path / "nosuch.mp4")]) == 2  # no file, no link: as before
    assert one_line_err(capsys) == f"error: {tmp_path / 'nosuch.mp4'}: no such video file"


def test_the_answers_own_warnings_are_on_stderr_beside_the_table_as_in_the_json(world, capsys, monkeypatch):
    # the table showed only the clip's repeated-frames note: a clip far from the training videos (or a caption
    # the model leaves out) was said in --json alone
    from bgmrec.models.base import Recommender

    monkeypatch.setattr(Recommender, "video_distance_from_training", lambda self, q: np.full(len(q), 680.0))
    base = ["recommend", "--run", str(world / "run"), "--catalog", str(world / "catalog"), "--video",
            str(world / "videos" / "clip05.mp4"), "--top", "2"]
    capsys.readouterr()
    assert main([*base, "--json"]) == 0
    out, json_err = capsys.readouterr()
    said = json.loads(out)["warnings"]
    assert len(said) == 1 and said[0].startswith("its features lie up to 680 standard deviations")
    assert main(base) == 0
    out, err = capsys.readouterr()
    assert "Song" in out and " ".join(err.split()) == " ".join(json_err.split()) == \
        f"warning: {world / 'videos' / 'clip05.mp4'}: {said[0]}"
    # a model that reads no captions: said of every clip at once, and not again of this one (the JSON has both)
    from bgmrec.features.recommend import CAPTION_LEFT_OUT, CAPTIONS_LEFT_OUT

    monkeypatch.setattr(Recommender, "video_distance_from_training", lambda self, q: None)
    monkeypatch.setattr(Recommender, "reads_captions", False, raising=False)
    assert main([*base, "--caption", "street dance", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["warnings"] == [CAPTIONS_LEFT_OUT, CAPTION_LEFT_OUT]
    assert " ".join(err.split()) == f"warning: {CAPTIONS_LEFT_OUT}"
