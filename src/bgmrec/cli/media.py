"""Commands from raw media to recommendations: extract-music, extract-videos, build-dataset, recommend,
bench-media.

The work is done by :mod:`bgmrec.features` and :mod:`bgmrec.data.build`, imported lazily (PyAV,
librosa, openSMILE, torch and the sentence model are heavy); these commands parse arguments and
print what happened. Folder formats are documented in :mod:`bgmrec.features.audio` (catalogue),
:mod:`bgmrec.features.video` (videos) and :mod:`bgmrec.data.build` (dataset).
"""

from __future__ import annotations

import json
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from bgmrec.cli.app import app, flag, make_console, options_named, said_when_stopped, threads_option, use_threads

if TYPE_CHECKING:
    from bgmrec.features.recommend import ClipFeatures
    from bgmrec.models.base import Recommender


def _console(stderr: bool = False):
    return make_console(stderr, highlight=False)


def _summary(what: str, report) -> None:
    """Print an extraction's :class:`~bgmrec.features.cache.ExtractReport`: its warnings (stderr), counts, the
    inputs new since the folder's last extraction (up to three ids) and the first failures."""
    from bgmrec.features.cache import KEPT
    from bgmrec.features.recommend import warn_on_stderr

    out, failures, captions_embedded = report.out, report.failures, report.captions_embedded
    for w in report.warnings:
        warn_on_stderr(w)
    con = _console()
    failed = [f for f in failures if not f[1].startswith(KEPT)]
    # notes on kept inputs by kind: "kept without text: ..." is counted as "2 without text"
    notes = Counter(reason.split(":", 1)[0].removeprefix(KEPT) for _, reason in failures if reason.startswith(KEPT))
    captions = (f"; {captions_embedded} caption(s) embedded, {report.captions_cached} from the cache"
                if captions_embedded is not None else "; no --captions: no video has text" if what == "videos"
                else "")
    added = "" if report.added is None else f"; {len(report.added)} new since the last extraction in {out}" + (
        f" ({', '.join(map(repr, report.added[:3]))}{', ...' if len(report.added) > 3 else ''})" if report.added
        else "")
    con.print(f"wrote {report.done} {what.removesuffix('s') if report.done == 1 else what} to {out} "
              f"({report.extracted} extracted, {report.cached} from the cache, "
              f"{len(failed)} failed" + "".join(f", {k} {note}" for note, k in sorted(notes.items())) + captions
              + added + ")", markup=False)
    if report.cache_note is not None:
        con.print(report.cache_note, markup=False)
    if report.pruned is not None:
        removed, freed = report.pruned
        con.print("pruned the cache: " + (f"{removed} entr{'y' if removed == 1 else 'ies'} no input of this "
                                          f"extraction uses removed ({freed / 2**10:,.0f} KB)" if removed else
                                          "every entry is used by this extraction, nothing removed"), markup=False)
    listed = failed + [f for f in failures if f[1].startswith(KEPT)]  # the inputs left out first, then the notes
    for f, reason in listed[:10]:
        con.print(f"  {f}: {reason}", markup=False, soft_wrap=True)
    if len(listed) > 10:
        con.print(f"  ... {len(listed) - 10} more in {out / 'failures.csv'}")


def continue_from_cache(cache: Path) -> str:
    """A stopped extraction's note: what it computed is in ``cache``, which the same command run again reads."""
    return (f"the vectors extracted so far are kept in the cache ({cache}): the same command run again continues "
            "from it")


PRUNE_HELP = ("once written, remove the cache entries no input of this extraction uses (inputs removed or edited "
              "since, other settings): the cache grows with every input it ever saw; with a cache weekly folders "
              "share, only from an extraction of the whole collection; never with one another collection or "
              "extractor uses")


@app.command("extract-music")
def extract_music_cmd(
    audio_dir: Path = typer.Argument(..., help="folder of tracks: wav, mp3, ogg, flac, m4a (recursive)"),
    out: Path = typer.Option(..., help="catalogue folder to write (music.npy, tracks.csv, manifest.json, "
                                       "failures.csv)"),
    meta: Path | None = typer.Option(None, help="CSV with id or file (without either: track, track_id, music or "
                                                "music_id) and title, artist, genre"),
    workers: int = typer.Option(2, help="processes analysing tracks in parallel"),
    seconds: float = typer.Option(60.0, help="analyse only the first this many seconds of each track"),
    sample_rate: int = typer.Option(22050, help="tracks are resampled to this rate (Hz, 16000 to 96000), mono"),
    cache: Path | None = typer.Option(None, help="cache folder (default OUT/.cache/audio); to reuse vectors across "
                                                 "output folders (a catalogue a week), one folder outside them, the "
                                                 "same every time, e.g. cache/audio"),
    prune_cache: bool = flag(False, "--prune-cache", help=PRUNE_HELP),
    progress: bool = flag(True, help="show a progress bar"),
) -> None:
    """Decode every track and compute its feature vector (openSMILE eGeMAPS + librosa descriptors)."""
    from bgmrec.data.dataset import writing_lock
    from bgmrec.features.audio import AudioConfig, extract_music

    with options_named(sample_rate="--sample-rate", max_seconds="--seconds", workers="--workers"):
        cfg = AudioConfig(sample_rate=sample_rate, max_seconds=seconds)  # checks the options before any work
        with writing_lock(out), said_when_stopped(continue_from_cache(cache or out / ".cache" / "audio")):
            r = extract_music(audio_dir, out, meta=meta, config=cfg, workers=workers, cache_dir=cache,
                              progress=progress, prune_cache=prune_cache)
    _summary("tracks", r)


@app.command("extract-videos")
def extract_videos_cmd(
    video_dir: Path = typer.Argument(..., help="folder of videos (mp4, mov, m4v, mkv, webm, avi)"),
    out: Path = typer.Option(..., help="folder to write (visual.npy, text.npy, text_mask.npy, videos.csv, "
                                       "manifest.json, failures.csv)"),
    captions: Path | None = typer.Option(None, help="CSV with id or file (without either: video or video_id), "
                                                    "caption[, hashtags]"),
    frames: int = typer.Option(8, help="frames sampled evenly over each clip"),
    threads: int = typer.Option(2, help="frames embedded in parallel (one torch thread each)"),
    cache: Path | None = typer.Option(None, help="cache folder (default OUT/.cache); to reuse vectors across output "
                                                 "folders (a videos folder a week), one folder outside them, the same "
                                                 "every time, e.g. cache/video"),
    prune_cache: bool = flag(False, "--prune-cache", help=PRUNE_HELP),
    progress: bool = flag(True, help="show a progress bar"),
) -> None:
    """Embed each video's frames (EfficientNet-Lite0, 1280-d) and caption (MiniLM, 384-d)."""
    from bgmrec.data.dataset import writing_lock
    from bgmrec.features.video import VideoConfig, extract_videos

    with options_named(frames="--frames", threads="--threads"):
        cfg = VideoConfig(frames=frames, threads=threads)  # checks the options before any work
    with writing_lock(out), said_when_stopped(continue_from_cache(cache or out / ".cache")):
        r = extract_videos(video_dir, out, captions=captions, config=cfg, cache_dir=cache, progress=progress,
                           prune_cache=prune_cache)
    _summary("videos", r)


#: BuildConfig's fields build-dataset has as options
BUILD_OPTIONS = ("seed", "val_share", "test_share", "negatives", "new_music_share")


@app.command("build-dataset")
def build_dataset_cmd(
    videos: Path = typer.Option(..., help="videos folder written by extract-videos"),
    music: Path = typer.Option(..., help="catalogue folder written by extract-music"),
    pairs: Path = typer.Option(..., help="CSV: video, track, uploader[, time]"),
    out: Path = typer.Option(..., help="dataset folder to write (replaced atomically)"),
    professional: Path | None = typer.Option(None, help="CSV: video, track of professional music videos in "
                                                        "--videos (DecCM's teacher data: the split pgc)"),
    seed: int = typer.Option(0, help="seed of the random split (when pairs have no time) and the negatives"),
    val_share: float = typer.Option(0.1, help="share of videos in validation"),
    test_share: float = typer.Option(0.1, help="share of videos in test"),
    negatives: int = typer.Option(100, help="frozen negatives per val/test row"),
    new_music_share: float = typer.Option(0.0, help="share of the tracks the pairs name held out of training (the "
                                          "latest first used, by time, else seeded): their uploads form "
                                          "test_new_music; with --keep-splits-of, that dataset's held-out tracks "
                                          "first, and none a video keeping its split names"),
    keep_splits_of: Path | None = typer.Option(None, help="an earlier dataset's folder (last week's): its videos "
                                                          "keep their split, only new ones are split"),
) -> None:
    """Join extracted videos, a catalogue and an upload log into a dataset every model trains on."""
    from bgmrec.data.build import BuildConfig, build_dataset
    from bgmrec.data.dataset import writing_lock
    from bgmrec.features.recommend import warn_on_stderr

    with writing_lock(out), options_named(**{f: "--" + f.replace("_", "-") for f in BUILD_OPTIONS}):
        ds = build_dataset(videos, music, pairs, out, BuildConfig(seed=seed, val_share=val_share,
                                                                  test_share=test_share, negatives=negatives,
                                                                  new_music_share=new_music_share),
                           warn=warn_on_stderr, professional_csv=professional, keep_splits_of=keep_splits_of)
    split_by = "at random" if ds.provenance.get("split_by") == "random" else f"by {ds.provenance.get('split_by')}"
    kept = ds.provenance.get("splits_kept_from")
    dropped = ds.provenance.get("pairs", {}).get("dropped", {})
    untrained = {s: info["untrained_positives"] for s, info in ds.summary()["splits"].items()
                 if s in ("val", "test")}  # new music to the models, ranked among the existing
    # videos without a usable pair are left out of the dataset; tracks no pair names stay, as candidates
    lone_videos, lone_tracks = (ds.provenance.get(k, 0) for k in ("videos_without_pairs", "tracks_without_pairs"))
    _console().print(f"wrote {out}: {ds.n_videos} videos"
                     + (f" ({lone_videos} other extracted video(s) have no usable pair: left out)" if lone_videos
                        else "")
                     + f", {ds.n_tracks} tracks"
                     + (f" ({int(ds.track_new.sum())} held out of training: new music)" if ds.track_new.any() else "")
                     + (f" ({lone_tracks} named by no usable pair: kept as candidates)" if lone_tracks else "")
                     + f", {ds.n_uploaders} uploaders, "
                     f"{ds.n_genres} genres; " + ", ".join(f"{s} {len(r)}" for s, r in ds.splits.items())
                     + (f" (split {split_by})" if kept is None else
                        f" ({sum(kept['kept'].values())} video(s) kept their split of {keep_splits_of}, "
                        f"{kept['new']} new one(s) split {split_by}"
                        + (f"; {kept['new_music_held_again']} of its held-out track(s) held out again"
                           if "new_music_held_again" in kept else "") + ")")
                     + ("; dropped pairs: " + ", ".join(f"{k} {v}" for k, v in dropped.items() if v)
                        if any(dropped.values()) else "")
                     + ("; rows whose track is in no training pair (new music to the models, ranked among the "
                        "existing): " + ", ".join(f"{k} {v}" for k, v in untrained.items())
                        if any(untrained.values()) else ""))


def check_clip_options(video: str | None, caption: str | None, features: Path | None, video_id: str | None,
                       frames: int | None, all_videos: bool = False, out: Path | None = None,
                       json_: bool = False) -> Path | None:
    """Refuse ``recommend``'s clip options that contradict one another or would go unused: one clip, either a
    file (``--video`` with ``--caption``, ``--frames``) or extracted features (``--features`` with one id), or
    every video of extracted features (``--features`` with ``--all-videos`` and ``--out``). Returns the file
    ``--out`` writes to (:func:`check_answers_file`)."""
    if all_videos:
        if features is None:
            raise ValueError("--all-videos ranks for every video of --features DIR (a videos folder of "
                             "extract-videos, or a dataset folder); give it")
        if video is not None or video_id is not None:
            raise ValueError(f"--all-videos ranks for every video of --features {features}; --video and --video-id "
                             "name one: give either")
        if out is None:
            raise ValueError("--all-videos writes each video's answer as a line of JSON to --out FILE (- for stdout); "
                             "give it")
        if json_:
            raise ValueError("--all-videos writes JSON lines to --out; --json is the answer of one clip")
        out = check_answers_file(out)
    elif out is not None:
        raise ValueError(f"--out {out} is written with --all-videos; one clip's answer is printed (as JSON with "
                         "--json)")
    if features is None:
        if video_id is not None:
            raise ValueError(f"--video-id {video_id}: an id of a videos folder; give it with --features DIR (a clip "
                             "file is given as --video FILE)")
        if video is None:
            raise ValueError("give --video FILE [--caption TEXT], or --features DIR --video-id ID")
        return out
    if video is not None and video_id is not None:
        raise ValueError(f"--video {video} and --video-id {video_id} both name the clip of --features {features}; "
                         "give one (--video-id ID, or --video FILE without --features)")
    if video is None and video_id is None and not all_videos:
        raise ValueError("--features needs --video-id ID (a video id in its videos.csv), or --all-videos")
    if caption is not None:
        raise ValueError(f"--caption is read for a clip file only (--video FILE without --features); --features "
                         f"{features} holds each clip's caption as extract-videos embedded it")
    if frames is not None:
        raise ValueError(f"--frames is read for a clip file only (--video FILE without --features); the clips of "
                         f"--features {features} were sampled when extract-videos ran")
    return out


ANSWER_KEYS = ("video", "tracks")  # of each line of recommend --all-videos' --out
ANSWER_LINE_BYTES = 64 * 2**20  # the longest first line an earlier --out is read for (--top 1000: about 110 KB)


def check_answers_file(path: Path) -> Path:
    """The file an ``--out`` of ``recommend --all-videos`` writes to (:func:`~bgmrec.cli.core.check_output_file`;
    ``-``: stdout): an earlier ``--out`` may be replaced (its first line a JSON object with :data:`ANSWER_KEYS`)."""
    from bgmrec.cli.core import STDOUT, check_output_file

    if path == STDOUT:
        return path

    def earlier_answers(file: Path) -> bool:
        with open(file, "rb") as f:  # a line of one video's top tracks: as long as --top makes it, within reason
            first = f.readline(ANSWER_LINE_BYTES) if f.read(1) == b"{" else b""
            first = b"{" + first if first.endswith(b"\n") else b""
        try:
            found = json.loads(first)
        except (ValueError, RecursionError):
            return False
        return isinstance(found, dict) and all(k in found for k in ANSWER_KEYS)

    return check_output_file(path, "--out", "the answers", "the answers of bgmrec recommend --all-videos",
                             earlier_answers)


def _recommend_all(model: Recommender, catalog, features: Path, out: Path, top: int, exclude: list[str],
                   genres: list[str] | None, said: list[str]) -> None:
    """``recommend --all-videos``: every video of ``features`` ranked, a line of JSON each, written to ``out``
    whole or not at all (stdout for ``-``); ``said``: what was printed of the model, leading every answer's
    ``warnings`` as it leads ``--json``'s."""
    import numpy as np

    from bgmrec.cli.core import STDOUT
    from bgmrec.data.dataset import replace_atomically
    from bgmrec.features.cache import UNSUPPORTED, progress_bar, skipped_rows
    from bgmrec.features.recommend import (
        ClipRecommender,
        RequestError,
        not_in_catalog_warning,
        open_video_features,
        recommend_videos,
        warn_on_stderr,
    )

    videos = open_video_features(features, mmap=True)
    kept = f"{out} is as it was" if out != STDOUT and out.exists() else None  # said when the command fails or stops
    if not len(videos):  # it replaced an earlier backfill with an empty file
        raise ValueError(f"--features {features} holds no video: nothing to rank" + (f" ({kept})" if kept else ""))
    frames = (videos.manifest.get("settings") or {}).get("frames")
    recommender = ClipRecommender(model, catalog, frames=frames)
    unknown = [t for t in exclude if t not in recommender.position]  # the same for every video: said once, and
    exclude = [t for t in exclude if t in recommender.position]  # not looked up again for each of them
    said = [*said, *(warn_on_stderr(m) for m in [*recommender.warnings, *not_in_catalog_warning(unknown)])]
    try:
        left_out = recommender.excluded_positions([list(exclude)], [genres or None], 1)  # a bad --genre first
    except RequestError as e:
        raise _named_by_options(e) from None
    allowed = len(catalog.ids) - (0 if left_out is None else len(np.unique(left_out[0])))
    if not allowed:  # every line would be empty
        raise ValueError(f"--exclude and --genre leave none of the catalogue's {len(catalog.ids)} tracks to "
                         "recommend" + (f" ({kept})" if kept else ""))
    with_warnings = [0]

    def write(f) -> None:
        with progress_bar(f"ranking {len(videos)} videos", len(videos)) as advance:
            for answer in recommend_videos(recommender, videos, top, exclude, genres or None):
                with_warnings[0] += bool(answer["warnings"])  # the clip's own
                answer["warnings"][:0] = said
                f.write(json.dumps(answer) + "\n")
                advance()

    with said_when_stopped(kept):
        try:
            if out == STDOUT:
                write(sys.stdout)
            else:
                replace_atomically(out, lambda tmp: _write_utf8(tmp, write))
        except RequestError as e:
            raise _named_by_options(e) from None
    where = "stdout" if out == STDOUT else str(out)
    failed = sum(not reason.startswith(UNSUPPORTED) for _, reason in skipped_rows(features))  # media files only
    _console(stderr=True).print(
        f"wrote the top {min(top, allowed)} tracks of {len(videos)} videos of {features} to {where} "
        f"({with_warnings[0]} with warnings of their own)"
        + (f"; {failed} video file(s) whose extraction failed have no line (its failures.csv)" if failed else ""),
        markup=False)


def _named_by_options(e: Exception) -> ValueError:
    """A :class:`~bgmrec.features.recommend.RequestError` named by ``recommend``'s options, not the request's
    fields (``genres: unknown genre(s) ...`` as ``--genre: ...``)."""
    message = str(e)
    return ValueError("--genre: " + message.removeprefix("genres: ") if message.startswith("genres: ") else message)


def _write_utf8(path: Path, write) -> None:
    with open(path, "w", encoding="utf-8") as f:
        write(f)


def _clip_from_features(features: Path, vid: str) -> tuple[ClipFeatures, str, int | None]:
    """``recommend``'s clip from a videos (or dataset) folder: its features, label and the frames it was sampled at."""
    from bgmrec.features.recommend import ClipFeatures, open_video

    vf = open_video(features, vid)  # its row alone
    clip = ClipFeatures(vf.visual[0], vf.text[0], bool(vf.text_mask[0]), vf.notes(vid))
    return clip, f"{vid} (from {features})", (vf.manifest.get("settings") or {}).get("frames")


def _clip_from_file(video: str, caption: str | None, frames: int | None,
                    model: Recommender) -> tuple[ClipFeatures, str, int]:
    """``recommend``'s clip embedded from a video file now: its features, label and the frames sampled (``frames``,
    else as the model's training videos were, else extract-videos' default)."""
    from bgmrec.features.cache import MediaError, regular_file_size
    from bgmrec.features.recommend import ClipFeatures, frames_to_sample, video_files_refused
    from bgmrec.features.text import TextEncoder
    from bgmrec.features.video import FrameEncoder, VideoConfig, embed_clip

    if Path(video).is_dir():
        raise ValueError(f"{video}: a folder, not a video file (extract-videos reads folders)")
    if not (Path(video).exists() or Path(video).is_symlink()):
        raise ValueError(f"{video}: no such video file")
    try:  # a link to nothing, a FIFO or a device: named as in failures.csv, never opened, before the encoders load
        regular_file_size(Path(video))
    except MediaError as e:
        raise ValueError(f"{video}: {e}") from None
    why = video_files_refused(model.spec)  # a simulated world's model: refused before the encoders load
    if why is not None:
        raise ValueError(f"{video}: {why}; give the clip's features of the model's sizes (--features DIR "
                         "--video-id ID)")
    if frames is None:  # as the model's training videos were sampled, else extract-videos' default
        frames = frames_to_sample(model, VideoConfig.frames)
    try:
        clip = ClipFeatures(*embed_clip(Path(video), caption, FrameEncoder(), TextEncoder(),
                                        VideoConfig(frames=frames)))
    except MediaError as e:
        raise ValueError(f"{video}: {e}") from None
    return clip, video, frames


def _print_tracks(result: dict, model_name: str, label: str) -> None:
    """``recommend``'s table of tracks and the modality share, on the console."""
    from rich.markup import escape
    from rich.table import Table

    # the catalogue's words as written: a title such as "[live]" is text, not console markup
    t = Table("#", "id", "title", "artist", "genre", "score", title=escape(f"{model_name}: tracks for {label}"))
    for i, tr in enumerate(result["tracks"], 1):
        t.add_row(str(i), *(escape(tr[k]) for k in ("id", "title", "artist", "genre")), f"{tr['score']:.3f}")
    con = _console()
    con.print(t)
    share = result["modality_share"]
    if share["visual"] is None:
        con.print("modality share: not reported by this model (frames and caption both used)")
    else:
        con.print(f"modality share: frames {100 * share['visual']:.0f}%, caption {100 * share['text']:.0f}%")


@app.command("recommend")
def recommend_cmd(
    run: Path = typer.Option(..., help="run folder of a trained model"),
    catalog: Path = typer.Option(..., help="catalogue folder written by extract-music, or a dataset folder (its "
                                           "tracks)"),
    video: str | None = typer.Option(None, help="the clip as a video file, embedded now (with --caption and "
                                                "--frames); a video of --features is named by --video-id"),
    caption: str | None = typer.Option(None, help="caption and hashtags of the --video file"),
    features: Path | None = typer.Option(None, help="the clip from a videos folder of extract-videos (or a dataset "
                                                    "folder) instead of a file: its video --video-id"),
    video_id: str | None = typer.Option(None, help="id of the clip in --features (a row of its videos.csv)"),
    top: int = typer.Option(10, min=1, help="how many tracks"),
    exclude: list[str] = typer.Option([], help="a track id never to return (repeat the option for several), "
                                               "as POST /recommend's exclude"),
    genre: list[str] = typer.Option([], help="return only tracks of this catalogue genre (repeat the option for "
                                             "several; default: every genre), as POST /recommend's genres"),
    frames: int | None = typer.Option(None, min=1, help="frames sampled from --video (default: as the model's "
                                                        "training videos were, else extract-videos' 8)"),
    mode: str | None = typer.Option(None, help="inference mode of models that have several (DecCM: backdoor, "
                                               "content; personalised needs an uploader and is not offered here)"),
    json_: bool = flag(False, "--json", help="print one JSON object instead of a table"),
    all_videos: bool = flag(False, "--all-videos", help="rank for every video of --features (no "
                                    "--video-id) and write a line of JSON per video to --out: the object --json "
                                    "prints, its id as 'video' first"),
    out: Path | None = typer.Option(None, help="with --all-videos: the JSON-lines file to write, whole or not at "
                                               "all (- for stdout)"),
    threads: int | None = threads_option(),
) -> None:
    """Rank the catalogue's tracks for one clip, from its file and caption or from extracted features; or for
    every video of extracted features (--all-videos)."""
    use_threads(threads)
    # before the model, the catalogue, the media
    out = check_clip_options(video, caption, features, video_id, frames, all_videos, out, json_)
    if mode == "personalised":
        raise ValueError("recommend: --mode personalised ranks with the uploader's genre taste, which this command "
                         "does not take; `bgmrec serve --mode personalised` takes it with each request (taste)")
    from bgmrec.data.dataset import DatasetError
    from bgmrec.features.recommend import (
        CAPTION_LEFT_OUT,
        CAPTIONS_LEFT_OUT,
        FeatureMismatchWarning,
        RequestError,
        open_catalog,
        recommend_clip,
        warn_on_stderr,
    )
    from bgmrec.models.base import load_model
    from bgmrec.runs import note_if_stopped, warn_if_model_code_changed

    model = load_model(run)
    said = [m for m in (warn_if_model_code_changed(run, model), note_if_stopped(run)) if m]
    if mode is not None:
        model.set_inference_mode(mode)
    if model.needs_taste:  # a model that always reads it (DecCM's personalised mode is refused above)
        raise ValueError(f"recommend: {model.name} ranks with the uploader's genre taste, which this command does "
                         "not take; `bgmrec serve` takes it with each request (taste)")
    cat = open_catalog(catalog)
    if all_videos:
        _recommend_all(model, cat, features, out, top, exclude, genre, said)
        return
    if features is not None:
        try:
            clip, label, frames = _clip_from_features(features, video if video_id is None else video_id)
        except DatasetError as e:  # --video as an id, of a file: the user meant the file
            if video_id is None and Path(video).is_file() and f"no video with id {video!r}" in str(e):
                raise DatasetError(f"{e}; with --features, --video names an id of it, and {video} is a file: give "
                                   "it without --features to embed it, or its id with --video-id") from None
            raise
    else:  # a clip file (check_clip_options: one of the two)
        clip, label, frames = _clip_from_file(video, caption, frames, model)
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", FeatureMismatchWarning)
            result = recommend_clip(model, cat, clip, top, frames, exclude, genre or None)
    except RequestError as e:
        raise _named_by_options(e) from None
    finally:  # every mismatch shown as "warning: ..." (cli.app's every_command), also before an error
        for w in caught:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    shown = {str(w.message) for w in caught if issubclass(w.category, FeatureMismatchWarning)}
    if CAPTIONS_LEFT_OUT in shown:  # said of every clip already
        shown.add(CAPTION_LEFT_OUT)
    for msg in result["warnings"]:  # the clip's own: its frames repeated, far from training, ...
        if msg not in shown:
            warn_on_stderr(f"{label}: {msg}")
    result["warnings"][:0] = said  # the JSON says all that stderr said
    if json_:
        sys.stdout.write(json.dumps(result) + "\n")
        return
    _print_tracks(result, model.name, label)


@app.command("bench-media")
def bench_media_cmd(
    out: Path = typer.Option(Path("runs/bench/bench_media.md"), help="Markdown file to write (the committed one is "
                                                                      "docs/bench_media.md)"),
    tracks: int = typer.Option(6, help="synthetic 60-s tracks timed for music extraction"),
    catalog_size: int = typer.Option(3000, help="tracks in the random-feature catalogue for recommend"),
    repeats: int = typer.Option(5, help="timed repeats of the warm clip and recommend measurements"),
) -> None:
    """Time music extraction, clip embedding and recommend; write a Markdown table with the machine."""
    from bgmrec.bench import MEDIA_TITLE, check_report_file
    from bgmrec.bench_media import run_bench, write_markdown

    check_report_file(out, MEDIA_TITLE)  # before the minutes of timing
    res = run_bench(n_tracks=tracks, catalog_size=catalog_size, repeats=repeats,
                    log=lambda m: _console(stderr=True).print(m, markup=False))
    write_markdown(res, out)
    _console().print(Path(out).read_text(), markup=False)
