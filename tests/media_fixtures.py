"""Synthetic media for the feature tests, written with PyAV into a temporary folder.

Nothing here is committed as a binary: tones, chords, click tracks and noise of known pitch and
tempo, and moving test-pattern videos with or without an audio track, a few seconds each.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

SR = 22050

# container / codec per audio extension
AUDIO_CODECS = {
    ".wav": ("wav", "pcm_s16le", "s16"),
    ".flac": ("flac", "flac", "s16"),
    ".mp3": ("mp3", "libmp3lame", "fltp"),
    ".ogg": ("ogg", "libopus", "flt"),
    ".m4a": ("mp4", "aac", "fltp"),
}


def tone(freq: float, seconds: float, sr: int = SR, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def chord(freqs: list[float], seconds: float, sr: int = SR) -> np.ndarray:
    return (sum(tone(f, seconds, sr, 0.2) for f in freqs) / len(freqs)).astype(np.float32)


def clicks(bpm: float, seconds: float, sr: int = SR, freq: float = 1000.0) -> np.ndarray:
    """A click track: short decaying bursts every beat."""
    y = np.zeros(int(seconds * sr), np.float32)
    burst = tone(freq, 0.05, sr, 0.8) * np.exp(-np.linspace(0, 8, int(0.05 * sr))).astype(np.float32)
    step = 60.0 / bpm
    for b in np.arange(0, seconds - 0.06, step):
        i = int(b * sr)
        y[i:i + len(burst)] += burst
    return y


def noise(seconds: float, sr: int = SR, seed: int = 0) -> np.ndarray:
    return (0.2 * np.random.default_rng(seed).standard_normal(int(seconds * sr))).astype(np.float32)


def write_audio(path: Path, signal: np.ndarray, sr: int = SR, stereo: bool = False) -> Path:
    """Encode a mono float signal into ``path``; the codec follows the extension."""
    import av

    path = Path(path)
    fmt, codec, sample_fmt = AUDIO_CODECS[path.suffix.lower()]
    rate = 48000 if codec == "libopus" else sr
    if rate != sr:  # opus only takes a few rates: resample by interpolation (test media only)
        t_new = np.arange(int(len(signal) * rate / sr)) / rate
        signal = np.interp(t_new, np.arange(len(signal)) / sr, signal).astype(np.float32)
    layout = "stereo" if stereo else "mono"
    data = np.stack([signal, signal]) if stereo else signal[None, :]
    with av.open(str(path), "w", format=fmt) as out:
        st = out.add_stream(codec, rate=rate, layout=layout)
        st.format = sample_fmt
        frame_size = st.codec_context.frame_size or 1024
        planar = sample_fmt.endswith("p")
        for s in range(0, data.shape[1], frame_size):
            chunk = np.ascontiguousarray(data[:, s:s + frame_size], np.float32)
            is_int = sample_fmt.startswith("s16")
            arr = (np.clip(chunk, -1, 1) * 32767).astype(np.int16) if is_int else chunk
            if not planar:
                arr = np.ascontiguousarray(arr.T.reshape(1, -1))
            frame = av.AudioFrame.from_ndarray(arr, format=sample_fmt, layout=layout)
            frame.sample_rate = rate
            frame.pts = s
            mux(out, st, frame)
        mux(out, st, None)
    return path


def mux(out, stream, frame) -> None:
    """Encode ``frame`` on ``stream`` (None: flush the encoder) and write its packets into ``out``."""
    for packet in stream.encode(frame):
        out.mux(packet)


def pattern_frame(i: int, width: int, height: int, kind: int = 0) -> np.ndarray:
    """A moving test pattern (RGB uint8): colour bars, a gradient, or a moving checkerboard."""
    yy, xx = np.mgrid[0:height, 0:width]
    if kind % 3 == 0:
        bars = ((xx + 4 * i) * 8 // max(width, 1)) % 8
        palette = np.array([[255, 255, 255], [255, 255, 0], [0, 255, 255], [0, 255, 0],
                            [255, 0, 255], [255, 0, 0], [0, 0, 255], [0, 0, 0]], np.uint8)
        return palette[bars]
    if kind % 3 == 1:
        r = ((xx + 3 * i) % 256).astype(np.uint8)
        g = ((yy + 2 * i) % 256).astype(np.uint8)
        b = np.full_like(r, (40 * kind) % 256)
        return np.stack([r, g, b], -1)
    cell = max(8, width // 10)
    board = (((xx + 2 * i) // cell + yy // cell) % 2 * 255).astype(np.uint8)
    return np.stack([board, 255 - board, board // 2], -1)


def write_video(path: Path, seconds: float = 2.0, width: int = 160, height: int = 120, fps: int = 10,
                kind: int = 0, audio: bool = True, video: bool = True, codec: str = "libx264",
                gop: int | None = None) -> Path:
    """A test-pattern clip (H.264 in MP4) with an optional 440 Hz audio track; a keyframe every ``gop`` frames
    (default: every second)."""
    import av

    path = Path(path)
    n = int(seconds * fps)
    with av.open(str(path), "w") as out:
        vs = None
        if video:
            vs = out.add_stream(codec, rate=fps)
            vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
            if codec == "libx264":
                vs.options = {"preset": "ultrafast", "g": str(fps)} if gop is None else {
                    "preset": "ultrafast", "g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"}
        if audio:
            ast = out.add_stream("aac", rate=SR, layout="mono")
        if video:
            for i in range(n):
                fr = av.VideoFrame.from_ndarray(pattern_frame(i, width, height, kind), format="rgb24")
                fr.pts = i
                fr.time_base = Fraction(1, fps)
                mux(out, vs, fr)
            mux(out, vs, None)
        if audio:
            sig = tone(440.0, seconds)
            fs = ast.codec_context.frame_size or 1024
            for s in range(0, len(sig), fs):
                fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(sig[None, s:s + fs]), format="fltp",
                                                layout="mono")
                fr.sample_rate = SR
                fr.pts = s
                mux(out, ast, fr)
            mux(out, ast, None)
    return path


def write_image(path: Path, fmt: str = "png", frames: int = 1, width: int = 64, height: int = 48) -> Path:
    """A still PNG (``fmt="png"``) or an animated GIF (``fmt="gif"``) of test patterns, whatever ``path``'s suffix."""
    import av

    path = Path(path)
    container, codec, pix = {"png": ("image2", "png", "rgb24"), "gif": ("gif", "gif", "rgb8")}[fmt]
    with av.open(str(path), "w", format=container) as out:
        st = out.add_stream(codec, rate=10)
        st.width, st.height, st.pix_fmt = width, height, pix
        for i in range(frames):
            fr = av.VideoFrame.from_ndarray(pattern_frame(i, width, height, 1), format="rgb24").reformat(format=pix)
            fr.pts = i
            mux(out, st, fr)
        mux(out, st, None)
    return path


@contextlib.contextmanager
def time_limit(seconds: int = 30) -> Iterator[None]:
    """Fail what blocks for more than ``seconds`` within (on opening a FIFO, say) instead of hanging the run."""
    import signal

    def blocked(*_):
        raise TimeoutError(f"blocked for {seconds} s")

    previous = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def truncate(src: Path, dst: Path, keep: float = 0.3) -> Path:
    """Copy the first ``keep`` share of a file's bytes (a download cut off midway)."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: max(1, int(len(data) * keep))])
    return Path(dst)


def without_codec(src: Path, dst: Path) -> Path:
    """Copy an MP4 with its 'minf' boxes renamed (a fuzzer's damage): its streams' codecs unknown, PyAV's
    ``codec_context`` None."""
    Path(dst).write_bytes(Path(src).read_bytes().replace(b"minf", b"Rinf"))
    return Path(dst)


# ---- expensive objects, built once per test process (shared by every media test module) ----------------

@functools.cache
def frame_encoder():
    from bgmrec.features.video import FrameEncoder

    # under pytest-xdist each worker process has one core
    return FrameEncoder(threads=1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@functools.cache
def text_encoder():
    from bgmrec.features.text import TextEncoder

    return TextEncoder()


@functools.cache
def audio_extractor():
    from bgmrec.features.audio import AudioExtractor

    return AudioExtractor()


def write_catalog_folder(out: Path, features: np.ndarray, genres: list[str], order: list[int] | None = None,
                         prefix: str = "t") -> Path:
    """A catalogue folder in the extract-music format from arrays (no media, for fast tests); track ``t{j}`` (the
    ``prefix``, then ``j``) has row ``j`` of ``features`` and ``genres``, and ``order`` is the tracks' row order
    (default: by number)."""
    from bgmrec.data.dataset import save_npy_atomic, write_json_atomic

    out = Path(out)
    order = list(range(len(features))) if order is None else list(order)
    ids = [f"{prefix}{j}" for j in order]
    features, genres = np.asarray(features)[order], [genres[j] for j in order]
    out.mkdir(parents=True, exist_ok=True)
    save_npy_atomic(out / "music.npy", np.asarray(features, np.float32))
    with open(out / "tracks.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "title", "artist", "genre", "file", "sha256"])
        w.writerows([i, f"Title {i}", "Artist", g, f"{i}.wav", ""] for i, g in zip(ids, genres, strict=True))
    write_json_atomic(out / "manifest.json", {"kind": "music-catalog", "dim": features.shape[1], "ids": ids})
    return out


def write_videos_folder(out: Path, n: int, seed: int = 0, no_text: tuple[int, ...] = (),
                        order: list[int] | None = None, prefix: str = "v") -> Path:
    """A videos folder in the extract-videos format with random vectors (no media, for fast tests), video ``i``'s
    id ``v{i}`` (the ``prefix``, then ``i``); ``order``: the videos' row order (default: by number), each video's
    vectors the same whatever the order."""
    from bgmrec.data.dataset import save_npy_atomic, write_json_atomic

    rng = np.random.default_rng(seed)
    out = Path(out)
    order = list(range(n)) if order is None else list(order)
    ids = [f"{prefix}{i}" for i in order]
    mask = np.array([i not in no_text for i in range(n)])
    text = rng.standard_normal((n, 384)).astype(np.float32) * mask[:, None]
    visual = rng.standard_normal((n, 1280)).astype(np.float32)
    mask = mask[order]
    save_npy_atomic(out / "visual.npy", visual[order])
    save_npy_atomic(out / "text.npy", text[order])
    save_npy_atomic(out / "text_mask.npy", mask)
    with open(out / "videos.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "file", "caption"])
        w.writerows([i, f"{i}.mp4", "" if not m else f"caption {i}"] for i, m in zip(ids, mask, strict=True))
    write_json_atomic(out / "manifest.json", {"kind": "video-features", "ids": ids})
    return out
