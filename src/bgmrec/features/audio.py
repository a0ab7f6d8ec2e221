"""Music tracks -> feature vectors, and the music catalogue folder (``bgmrec extract-music``).

Each track is decoded with PyAV (so wav, mp3, ogg, flac and m4a all work), mixed to mono (the
mean of its channels, so a stereo file with two equal channels is as loud as the mono one),
resampled to :attr:`AudioConfig.sample_rate` and cut to its first :attr:`AudioConfig.max_seconds`
seconds while decoding (a 10-hour file is never decoded whole).
Its vector joins, in this order (173 values with the defaults):

- the openSMILE eGeMAPSv02 functionals (88; Eyben et al. 2016, the openSMILE features the CMVAE
  paper adds to VGGish);
- timbre: MFCC means and standard deviations over frames (2 x 20);
- harmony: chroma (STFT) means and standard deviations (2 x 12);
- spectral contrast means and standard deviations (2 x 7);
- rhythm: global tempo (BPM), local-tempo mean and std, beats per second, inter-beat-interval
  coefficient of variation, onset-strength mean and std (7).

Vectors are raw (not standardised): standardisation depends on the catalogue, so it belongs to the
model. Decoding and analysis are deterministic: two runs over one file give identical vectors.

A catalogue folder (CATALOG_DIR) holds::

    music.npy       float32 [M, D]   row j = track j of tracks.csv (saved with allow_pickle=False)
    tracks.csv      id,title,artist,genre,file,sha256   (id = file stem; genre may be empty)
    manifest.json   kind "music-catalog", extractor names and versions, settings, dim, feature
                    names, id order, counts, content hash (SHA-256 of music.npy's bytes)
    failures.csv    file,reason   one row per skipped input (unreadable, truncated, too short, silent; a FIFO,
                                  device or link to nothing, never opened)
    .cache/audio/   per-file vectors keyed by content hash (see :mod:`bgmrec.features.cache`)

The optional metadata CSV (``--meta``) has a column ``id`` (the file stem) or ``file`` (the file name, or
its path under AUDIO_DIR as tracks.csv writes it: ``rock/a.wav``) (without either: one of ``track``,
``track_id``, ``music`` or ``music_id``, as the pairs CSV names it) and any of ``title``,
``artist``, ``genre``; missing titles default to the id. An id (or file)
on two rows is an error naming both lines; rows naming no track file, tracks no row names, a file
giving no genre at all, genre names that differ only in letter case or spacing ("Rock", "rock": kept as
written, so two genres), and tracks losing a title, artist or genre the folder's last extraction gave them (run
again without ``--meta``: nothing is carried over from the folder, the CSV is given every time) are each named
in a warning.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bgmrec.data.dataset import (
    MEDIA_FOLDERS,
    DatasetError,
    FieldError,
    brief_repr,
    check_distinct_ids,
    check_float_matrix,
    load_npy,
    save_npy_atomic,
    separator_hint,
    write_files_together,
    write_json_atomic,
)
from bgmrec.extras import extra_modules
from bgmrec.features.cache import (
    TRACK_ID_COLUMNS,
    ExtractReport,
    FeatureCache,
    MediaError,
    arrays_sha256,
    av_version,
    check_input_folder,
    check_manifest_content,
    check_output_folder,
    kept_items,
    key_columns,
    last_extraction,
    media_keys,
    one_line,
    open_cache,
    previous_rows,
    progress_bar,
    read_csv_lines,
    read_csv_utf8,
    read_manifest,
    rows_by_key,
    scan_media,
    split_cached,
    unused_rows_warning,
    write_csv_atomic,
    write_failures,
)

AUDIO_EXTENSIONS = MEDIA_FOLDERS["audio"][0]  # the files extract-music reads
SAMPLE_RATES = (16000, 96000)  # Hz: the analysis rates accepted (AudioConfig.sample_rate)
CATALOG_KIND = "music-catalog"


SILENT_DBFS = -80.0  # a track whose decoded part peaks below this level (dB of full scale) is a failure


@dataclass(frozen=True)
class AudioConfig:
    """Settings of the music feature extractor (saved in the catalogue manifest)."""

    sample_rate: int = 22050  # Hz; every track is resampled to this rate, mono
    max_seconds: float = 60.0  # only the first this many seconds are decoded and analysed
    min_seconds: float = 0.5  # shorter tracks are reported as failures
    n_fft: int = 2048  # STFT window (samples)
    hop_length: int = 512  # STFT hop (samples)
    n_mfcc: int = 20  # MFCC coefficients
    n_mels: int = 128  # mel bands the MFCCs are computed from
    opensmile_set: str = "eGeMAPSv02"  # openSMILE feature set (functionals level)

    def __post_init__(self) -> None:
        low, high = SAMPLE_RATES
        if not low <= self.sample_rate <= high:  # below 16 kHz the spectral-contrast bands pass Nyquist
            raise FieldError(f"{{sample_rate}} must be between {low} and {high} Hz, got {self.sample_rate}",
                             "sample_rate")
        if not self.min_seconds <= self.max_seconds < float("inf"):  # also refuses NaN
            raise FieldError(f"{{max_seconds}} must be a finite number of at least {self.min_seconds:g} (the "
                             f"shortest track analysed), got {self.max_seconds}", "max_seconds")
        for name in ("n_fft", "hop_length", "n_mfcc", "n_mels"):
            if getattr(self, name) < 1:
                raise FieldError(f"{{{name}}} must be at least 1, got {getattr(self, name)}", name)


# ---- decoding -------------------------------------------------------------------------------------

def decode_audio(path: Path, sample_rate: int = 22050, max_seconds: float = 60.0,
                 min_seconds: float = 0.0) -> np.ndarray:
    """Decode the first ``max_seconds`` of a file's first audio stream to mono float32 at ``sample_rate``.

    Mono is the mean of the channels (FFmpeg's own downmix adds them at -3 dB each, which makes a
    stereo file 3 dB louder than the same signal in mono). Raises :class:`MediaError` with a one-line
    reason for empty, unreadable, truncated or corrupt files, for files with no audio stream and for samples
    that are not numbers (NaN or inf, in a float file).
    """
    with extra_modules():
        import av

    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise MediaError("empty file (0 bytes)")
    _check_riff(path, size)
    try:
        container = av.open(str(path.absolute()), metadata_errors="ignore",  # a name is never a protocol's URL
                            container_options={"protocol_whitelist": "file"})
    except (av.FFmpegError, OSError) as e:
        raise MediaError(f"cannot open as media: {one_line(e)}") from None
    need = int(round(max_seconds * sample_rate))
    chunks: list[np.ndarray] = []
    got = 0
    with container:
        if not container.streams.audio:
            raise MediaError("no audio stream")
        stream = container.streams.audio[0]
        declared = _declared_seconds(container, stream)
        # packed (interleaved) float: PyAV's planar frames of 8 channels crashed the process (a segfault in
        # to_ndarray, which counted 9 planes)
        resampler = av.AudioResampler(format="flt", rate=sample_rate)
        try:
            for packet in container.demux(stream):
                for frame in packet.decode():
                    for out in resampler.resample(frame):
                        chunks.append(_mono(out))
                        got += chunks[-1].size
                if got >= need:
                    break
            else:
                for out in resampler.resample(None):
                    chunks.append(_mono(out))
                    got += chunks[-1].size
        except av.FFmpegError as e:
            raise MediaError(f"corrupt audio after {got / sample_rate:.1f} s: {one_line(e)}") from None
        codec = stream.codec_context.name or ""
    y = np.concatenate(chunks)[:need] if chunks else np.zeros(0, np.float32)
    seconds = len(y) / sample_rate
    bad = np.flatnonzero(~np.isfinite(y))
    if bad.size:  # a float file's damaged samples: librosa's "buffer is not finite" said it, after openSMILE's warning
        raise MediaError(f"samples that are not numbers (NaN or inf) from {bad[0] / sample_rate:.2f} s: a damaged "
                         "float file")
    if declared is not None and not codec.startswith("mp3"):  # mp3 durations are estimates
        expected = min(declared, max_seconds)
        if seconds < 0.9 * expected - 0.25:
            raise MediaError(f"truncated: decoded {seconds:.2f} s of a declared {declared:.2f} s")
    if seconds < min_seconds:
        raise MediaError(f"too short: {seconds:.2f} s of audio (need {min_seconds:g} s)")
    return np.ascontiguousarray(y, np.float32)


def _mono(frame) -> np.ndarray:
    """The mean of the channels of a packed float audio frame, float32 [samples]."""
    channels = len(frame.layout.channels)
    return frame.to_ndarray().reshape(-1, channels).mean(axis=1, dtype=np.float32)


def _check_riff(path: Path, size: int) -> None:
    """WAV/RIFF: the header states the file's length; FFmpeg silently decodes a cut file, we report it."""
    with open(path, "rb") as f:
        head = f.read(12)
    if len(head) == 12 and head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        declared = int.from_bytes(head[4:8], "little") + 8
        if 44 < declared < 0xFFFFFFFF and declared > size:  # 0 / 0xFFFFFFFF: written as a stream
            raise MediaError(f"truncated: the RIFF header declares {declared} bytes, the file has {size}")


def _declared_seconds(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


# ---- features -------------------------------------------------------------------------------------

class AudioExtractor:
    """Signal -> feature vector (openSMILE functionals + librosa descriptors; see the module docstring).

    Construction is cheap; openSMILE and librosa are imported on first use.
    """

    def __init__(self, config: AudioConfig | None = None) -> None:
        self.config = config or AudioConfig()
        self._smile = None

    @property
    def settings(self) -> dict:
        """Settings and library versions; their hash keys the cache."""
        with extra_modules():
            import librosa
            import opensmile

        # bgmrec.audio/2: mono is the mean of the channels (1 used FFmpeg's louder downmix); /3: openSMILE reads the
        # signal clipped to full scale (past it, /2's vectors of loud tracks were wrong); silent_below_dbfs keys the
        # cache (a silent track analysed before the check must fail now) but changes no vector
        return {"extractor": "bgmrec.audio/3", **asdict(self.config), "silent_below_dbfs": SILENT_DBFS,
                "opensmile": opensmile.__version__, "librosa": librosa.__version__}

    def _opensmile(self):
        if self._smile is None:
            with extra_modules():
                import opensmile

            fset = getattr(opensmile.FeatureSet, self.config.opensmile_set)
            self._smile = opensmile.Smile(feature_set=fset, feature_level=opensmile.FeatureLevel.Functionals)
        return self._smile

    def feature_names(self) -> list[str]:
        c = self.config
        names = [f"smile_{n}" for n in self._opensmile().feature_names]
        for stat in ("mean", "std"):
            names += [f"mfcc{i}_{stat}" for i in range(c.n_mfcc)]
        for stat in ("mean", "std"):
            names += [f"chroma_{p}_{stat}" for p in
                      ("C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B")]
        for stat in ("mean", "std"):
            names += [f"contrast{i}_{stat}" for i in range(7)]
        names += ["tempo_bpm", "local_tempo_mean", "local_tempo_std", "beats_per_second", "ibi_cv",
                  "onset_mean", "onset_std"]
        return names

    def extract_signal(self, y: np.ndarray) -> np.ndarray:
        """Features [D] (float32) of a mono signal at ``config.sample_rate``, computed with one BLAS thread: the
        matrix products of the spectral features summed in another order on more threads (values differed by up
        to 8e-6 between OMP_NUM_THREADS=1 and 2), so a catalogue changed with the machine's cores."""
        with extra_modules():
            from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            return self._extract_signal(y)

    def _extract_signal(self, y: np.ndarray) -> np.ndarray:
        with extra_modules():
            import librosa

        c, sr = self.config, self.config.sample_rate
        y = np.asarray(y, np.float32)
        # openSMILE reads the signal as 16-bit integers (times 32768): a sample past full scale, as a loud master
        # resampled has, wrapped around to the other sign and changed most of its features; clipped here
        with stops_deferred():  # a Ctrl-C in openSMILE's callback would be swallowed there (NaN features)
            smile = self._opensmile().process_signal(np.clip(y, -1.0, 32767 / 32768), sr)
        smile = smile.to_numpy(np.float64).reshape(-1)
        if not np.isfinite(smile).all():  # openSMILE fills a failed or interrupted analysis (Ctrl-C in its
            # callback, which it swallows) with NaN: never a track's features, and never to be cached
            raise MediaError(f"openSMILE gave {int((~np.isfinite(smile)).sum())} of {len(smile)} features as "
                             "NaN or infinite (an interrupted or failed analysis)")
        spec = np.abs(librosa.stft(y, n_fft=c.n_fft, hop_length=c.hop_length))
        power = spec ** 2
        logmel = librosa.power_to_db(librosa.feature.melspectrogram(S=power, sr=sr, n_mels=c.n_mels))
        mfcc = librosa.feature.mfcc(S=logmel, n_mfcc=c.n_mfcc)
        chroma = librosa.feature.chroma_stft(S=power, sr=sr, n_fft=c.n_fft, tuning=0.0)
        contrast = librosa.feature.spectral_contrast(S=spec, sr=sr, n_fft=c.n_fft)
        onset = librosa.onset.onset_strength(S=logmel, sr=sr)
        tempo, beats = librosa.beat.beat_track(onset_envelope=onset, sr=sr, hop_length=c.hop_length)
        local = librosa.feature.tempo(onset_envelope=onset, sr=sr, hop_length=c.hop_length, aggregate=None)
        seconds = max(len(y) / sr, 1e-6)
        beat_t = librosa.frames_to_time(beats, sr=sr, hop_length=c.hop_length)
        ibi = np.diff(beat_t)
        ibi_cv = float(ibi.std() / ibi.mean()) if len(ibi) > 1 and ibi.mean() > 0 else 0.0
        rhythm = [float(np.atleast_1d(tempo)[0]), float(local.mean()), float(local.std()),
                  len(beats) / seconds, ibi_cv, float(onset.mean()), float(onset.std())]
        vec = np.concatenate([smile, mfcc.mean(1), mfcc.std(1), chroma.mean(1), chroma.std(1),
                              contrast.mean(1), contrast.std(1), rhythm])
        return np.nan_to_num(vec, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)

    def warm_up(self) -> None:
        """Analyse two seconds of a synthetic signal, so that librosa's numba functions are compiled and
        written to numba's on-disk cache by this one process. Processes compiling the same
        ``guvectorize(cache=True)`` function at once can leave mismatched cache files and crash
        (numba/numba#10128, librosa/librosa#1998): call this before starting worker processes."""
        t = np.arange(2 * self.config.sample_rate) / self.config.sample_rate
        self.extract_signal(0.1 * np.sin(2 * np.pi * 440.0 * t) * (np.sin(2 * np.pi * 2.0 * t) > 0))

    def extract_file(self, path: Path) -> np.ndarray:
        """Decode (capped) and analyse one file; :class:`MediaError` on bad media, and on a silent
        decoded part (peak below :data:`SILENT_DBFS`), whose features would describe no sound."""
        c = self.config
        y = decode_audio(path, c.sample_rate, c.max_seconds, c.min_seconds)
        peak = float(np.abs(y - y.mean()).max()) if len(y) else 0.0  # an offset alone (DC) is no sound
        if peak < 10.0 ** (SILENT_DBFS / 20.0):
            level = f"{20.0 * np.log10(peak):.0f} dBFS" if peak > 0 else "digital silence"
            raise MediaError(f"silent: the first {len(y) / c.sample_rate:.1f} s peak at {level} "
                             f"(below {SILENT_DBFS:g} dBFS), no sound to describe")
        return self.extract_signal(y)


# ---- worker processes -------------------------------------------------------------------------------

_WORKER: AudioExtractor | None = None


@contextlib.contextmanager
def stops_deferred() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP (the command line's stops) back while the block runs, then deliver the
    first one received to the handler
    that was in place. openSMILE runs Python callbacks from C (ctypes), which swallow the KeyboardInterrupt a
    Ctrl-C raises in them: the analysis went on with NaN features, the track was listed as failed and the run
    ended with exit 0 (``extract-music --workers 1``) or a traceback (the parent's warm-up). Only the main
    thread receives signals; elsewhere, and for a signal already ignored, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    stops = (signal.SIGINT, signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else []))
    held = {s: signal.getsignal(s) for s in stops}
    held = {s: h for s, h in held.items() if h not in (signal.SIG_IGN, None)}
    for s in held:
        signal.signal(s, lambda signum, _frame: received.append(signum))
    try:
        yield
    finally:
        for s, handler in held.items():
            signal.signal(s, handler)
        if received:
            signal.raise_signal(received[0])


def _init_worker(config: AudioConfig) -> None:
    """Set up a worker process. It ignores SIGINT: Ctrl-C in a terminal reaches the whole process group, and
    openSMILE swallows the KeyboardInterrupt in its callback and returns NaN features; the parent stops the
    run (cancelling the queued files) and the files being analysed finish whole."""
    import signal

    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER = AudioExtractor(config)
    _exit_with_parent()


def _exit_with_parent() -> None:
    """End this worker process as soon as the process that started it ends. A parent killed (SIGKILL, or SIGTERM
    from a scheduler or ``timeout``) cannot shut its pool down, and its workers would wait for work forever."""
    import multiprocessing as mp
    import threading
    from multiprocessing.connection import wait

    parent = mp.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])  # ready once the parent has exited
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def stop_pool(pool: ProcessPoolExecutor, note: bool = False) -> None:
    """Stop ``pool`` after an interrupt: drop its queued files and wait for the files already handed to the
    workers (up to twice their number and one; their cache entries are kept for the next run); a second
    interrupt while waiting ends the workers at once. Without it, a second Ctrl-C broke the wait at
    interpreter exit and left the process hanging on its idle workers. ``note`` says so on stderr."""
    workers = list(pool._processes.values())  # the pool forgets them at shutdown; nothing public lists them
    try:
        if note:
            print(f"stopping: waiting for the tracks already handed to the {len(workers)} workers (Ctrl-C again "
                  "to drop them)", file=sys.stderr)
        pool.shutdown(wait=False, cancel_futures=True)
        for worker in workers:
            worker.join()
    except BaseException:
        for worker in workers:
            worker.kill()
            worker.join()
        raise


def _worker_job(path: str, key: str, cache_root: str, settings: dict) -> tuple[str, np.ndarray | None, str]:
    """Extract one file in a worker process and write its cache entry there (so a crash loses nothing)."""
    try:
        vec = _WORKER.extract_file(Path(path))
    except MediaError as e:
        return path, None, str(e)
    except Exception as e:  # noqa: BLE001 - one bad file must not stop the batch
        return path, None, one_line(e)
    FeatureCache(Path(cache_root), settings, len(vec)).put(key, vec)  # a writer: no length to check
    return path, vec, ""


# ---- the catalogue --------------------------------------------------------------------------------------

@dataclass
class Catalog:
    """A music catalogue folder loaded into memory (see the module docstring for the format)."""

    ids: list[str]
    title: list[str]
    artist: list[str]
    genre: list[str]  # "" when unknown
    file: list[str]
    sha256: list[str]
    features: np.ndarray  # float32 [M, D]
    manifest: dict = field(default_factory=dict)
    root: Path | None = None

    __repr__ = brief_repr  # arrays by shape, long lists by length: not every value

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def name(self) -> str:
        """How messages name it: "the catalogue ROOT", or "the catalogue" when it was made in memory."""
        return f"the catalogue {self.root}" if self.root is not None else "the catalogue"

    @classmethod
    def from_arrays(cls, ids: list[str], features: np.ndarray, genres: list[str] | None = None,
                    titles: list[str] | None = None, artists: list[str] | None = None) -> Catalog:
        """A catalogue of an app's own tracks from memory: distinct ``ids``, their ``features`` float [M, D]
        (as the model's training music was extracted), and optional genre names ("" when unknown), titles
        (default: the ids) and artists. Bad arguments are a :class:`DatasetError` naming the argument."""
        ids = list(ids)
        check_float_matrix(np.asarray(features), (len(ids), None), "Catalog.from_arrays", "features")
        check_distinct_ids(ids, "Catalog.from_arrays: ids")
        columns = {}
        for name, values, default in (("genres", genres, ""), ("titles", titles, None), ("artists", artists, "")):
            values = [default if default is not None else i for i in ids] if values is None else list(values)
            if len(values) != len(ids) or not all(isinstance(v, str) for v in values):
                raise DatasetError(f"Catalog.from_arrays: {name} must be {len(ids)} strings, one per id")
            columns[name] = values
        empty = [""] * len(ids)
        return cls(ids, columns["titles"], columns["artists"], columns["genres"], empty, list(empty),
                   np.asarray(features, np.float32))


def read_track_meta(path: Path) -> dict[str, tuple[int, dict[str, str]]]:
    """Metadata CSV -> {id or file name: (line, {"title", "artist", "genre"})}.

    Each row is found by its ``id`` and by its ``file``; one of those on two rows is an error naming both lines.
    """
    path = Path(path)
    rows = read_csv_lines(path)
    if not rows:
        return {}
    cols = set(rows[0][1])
    keys = key_columns(path, cols, "track", TRACK_ID_COLUMNS)
    if not keys:
        raise DatasetError(f"{path}: expected a column 'id' (file stem; or {', '.join(map(repr, TRACK_ID_COLUMNS))}) "
                           f"or 'file', found {sorted(cols)}" + separator_hint(cols))
    return rows_by_key(path, ((line, [k.strip() for k in map(r.get, keys) if k and k.strip()],
                               {k: (r.get(k) or "").strip() for k in ("title", "artist", "genre")})
                              for line, r in rows))


def meta_coverage_warnings(path: Path, metadata: dict[str, tuple[int, dict[str, str]]],
                           kept: list[tuple[str, Path, str]], audio_dir: Path) -> list[str]:
    """Warning lines when the metadata CSV ``path`` leaves tracks without metadata: tracks no row names
    (their title is their id, their genre empty), and a CSV with no genre for any track (a dataset built on
    the catalogue then has one genre, "unknown", so DecCM's taste path and the per-genre figures see none)."""
    warnings = []
    missing = [tid for tid, p, _ in kept if not any(k in metadata for k in media_keys(tid, p, audio_dir))]
    if missing:
        warnings.append(f"{len(missing)} of {len(kept)} track(s) have no row in {path} (e.g. {missing[0]!r}): "
                        f"their title is their id and their genre is empty")
    if metadata and not any(row["genre"] for _, row in metadata.values()):
        warnings.append(f"{path}: no row gives a genre (column 'genre'): the catalogue's tracks have none")
    return warnings


def genre_spelling_warning(path: Path, genres: list[str], remedy: str | None = None) -> str | None:
    """A warning line when genre names of the catalogue's tracks (``genres``, one per track, from the metadata CSV
    ``path``, without spaces at either end; empty: no genre, which build-dataset calls "unknown", as this does)
    differ only in letter case, in spaces ("Hip Hop", "HipHop"; invisible ones too), in compatibility forms
    (full-width letters) or in how an accent is encoded ("Rock" for one track, "rock" for the others; no genre
    beside "Unknown"): each spelling is a genre of its own to build-dataset, which changes DecCM's confounder and
    the per-genre figures. The line names the spellings of up to three such genres, with their tracks, and ends
    with ``remedy`` (default: write each genre one way in ``path``); the names are kept as written (a genre is what
    the CSV says)."""
    spellings: dict[str, Counter[str]] = defaultdict(Counter)
    blank = "" in genres
    for g in genres:
        g = g or "unknown"  # as build-dataset names it: one genre with "unknown" written so
        spellings["".join(unicodedata.normalize("NFKC", g.translate(INVISIBLE)).casefold().split())][g] += 1
    clashes = sorted((sorted(named.items(), key=lambda kv: (-kv[1], kv[0])) for named in spellings.values()
                      if len(named) > 1), key=lambda group: (-sum(n for _, n in group), group[0][0]))
    if not clashes:
        return None

    def named(name: str) -> str:  # a combining accent, an invisible space, a full-width letter look like the other
        if name == "unknown" and blank:
            return "'unknown' or no genre"
        plain = unicodedata.normalize("NFKC", name.translate(INVISIBLE)) == name
        return repr(name) if plain else f"{ascii(name)} (written with other code points)"

    shown = "; ".join(", ".join(f"{named(name)} ({n} track{'s' if n > 1 else ''})" for name, n in group)
                      for group in clashes[:3])
    more = f"; and {len(clashes) - 3} more" if len(clashes) > 3 else ""
    return (f"{path}: {len(clashes)} genre(s) are written in several ways, differing only in letter case, spacing or "
            "character encoding, and each way is a genre of its own (DecCM's confounder and the per-genre figures "
            f"count them apart): {shown}{more}; " + (remedy or f"write each genre one way in {path.name}"))


INVISIBLE_CHARS = "\u200b\u200c\u200d\u2060\ufeff"  # zero-width spaces and joiners, word joiner, BOM
INVISIBLE = str.maketrans("", "", INVISIBLE_CHARS)  # deleted before genre names are compared


def lost_metadata_warning(out: Path, rows: list[list[str]], meta: Path | None) -> str | None:
    """A warning line when tracks of ``rows`` (tracks.csv's rows about to be written to ``out``) lose a title,
    artist or genre the folder's last extraction gave them (a title other than the id): most often an extraction
    run again without the metadata CSV, which blanked every title, artist and genre with no word but "0 new since
    the last extraction". The values are not carried over (the folder holds its last extraction only, and the
    CSV is where they live); the line says how to keep them. None when no track loses any."""
    before = previous_rows(out, "tracks.csv", ())
    lost: dict[str, list[str]] = {"genre": [], "title": [], "artist": []}
    for tid, title, artist, genre, *_ in rows:
        old = before.get(tid)
        if old is None:
            continue
        now = {"title": title if title != tid else "", "artist": artist, "genre": genre}
        for k, ids in lost.items():
            had = (old.get(k) or "").strip()
            if had and (k != "title" or had != tid) and not now[k]:
                ids.append(tid)
    losing = sorted({tid for ids in lost.values() for tid in ids})
    if not losing:
        return None
    what = ", ".join(f"{k} of {len(ids)}" for k, ids in lost.items() if ids)
    return (f"{out}: its last extraction gave {len(losing)} of these {len(rows)} track(s) metadata this one does not "
            f"({what}; e.g. {losing[0]!r}): " +
            ("no metadata CSV was given (--meta), so their titles are now their ids and their artists and genres "
             "empty; give the CSV again to keep them" if meta is None else
             f"{meta} gives them none now, so those are left empty (a title: the id); add them to {meta} to keep "
             "them"))


def extract_music(audio_dir: Path, out: Path, meta: Path | None = None, config: AudioConfig | None = None,
                  workers: int = 2, cache_dir: Path | None = None, progress: bool = True,
                  extractor: AudioExtractor | None = None, prune_cache: bool = False) -> ExtractReport:
    """Extract every track of ``audio_dir`` into the catalogue folder ``out``.

    Inputs already in the cache are not analysed again; every analysed file is cached at once, so
    an interrupted run resumes. ``workers`` > 1 analyses in that many processes; an explicit
    ``extractor`` (tests) runs in this process. Bad files are reported in ``failures.csv`` and
    skipped; the batch continues. ``prune_cache``: once the catalogue is written, the cache keeps the entries
    of this run's tracks alone (:meth:`~bgmrec.features.cache.FeatureCache.prune`; the report's ``pruned``).

    Checked before anything is written (:class:`~bgmrec.data.dataset.DatasetError` or ``ValueError``
    otherwise): ``workers`` at least 1, ``audio_dir`` a folder, ``meta`` a readable CSV without duplicate
    ids, and ``out`` missing, empty, or a catalogue folder (see
    :func:`~bgmrec.features.cache.check_output_folder`). A run that extracts no track at all is an error
    too, and leaves no folder it created behind.
    """
    audio_dir, out = Path(audio_dir), Path(out)
    if workers < 1:
        raise FieldError(f"{{workers}} must be at least 1, got {workers}", "workers")
    check_output_folder(out, CATALOG_KIND, "a music catalogue", ("music.npy", "tracks.csv", "failures.csv"))
    check_input_folder(audio_dir, "tracks")
    metadata = read_track_meta(Path(meta)) if meta else {}
    processes = 1 if extractor is not None else workers  # an explicit extractor runs in this process
    extractor = extractor or AudioExtractor(config)
    config = extractor.config
    settings = extractor.settings
    feature_names = extractor.feature_names()
    skipped = (out, *([cache_dir] if cache_dir else []))  # inside the input folder, they are not media
    items, failures = scan_media(audio_dir, AUDIO_EXTENSIONS, "track", exclude=skipped, progress=progress)
    cache = FeatureCache(Path(cache_dir) if cache_dir else out / ".cache" / "audio", settings, len(feature_names))
    created, no_reuse, cache_note = open_cache(cache, cache_dir, "OUT/.cache/audio", "audio features")

    cached, todo = split_cached(items, cache)
    analysed, bad = _extract_tracks(todo, cache, extractor, processes, progress)
    vectors = cached | analysed
    kept = kept_items(items, vectors, bad, failures, "track", audio_dir, out, created)
    music = np.stack([vectors[t] for t, _, _ in kept]).astype(np.float32)
    rows = _track_rows(kept, metadata, audio_dir)
    meta_warnings = _meta_warnings(Path(meta), metadata, items, kept, rows, audio_dir, failures) if meta else []
    left_out, added = last_extraction(out, [r[0] for r in rows], "track", audio_dir, failures)
    lost = lost_metadata_warning(out, rows, Path(meta) if meta else None)
    manifest = _catalog_manifest(config, settings, feature_names, rows, failures, music)
    _write_catalog(out, music, rows, failures, manifest)
    pruned = cache.prune({key for _, _, key in kept}) if prune_cache else None
    return ExtractReport(out, len(rows), len(analysed), len(cached), failures,
                         [w for w in [no_reuse, *meta_warnings, left_out, lost] if w],
                         added=added, pruned=pruned, cache_note=cache_note)


def _extract_tracks(todo: list[tuple[str, Path, str]], cache: FeatureCache, extractor: AudioExtractor,
                    processes: int, progress: bool) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The vectors of the ``todo`` tracks, each cached once analysed, and why the others failed, by id: analysed in
    ``processes`` worker processes, or in this one when that is 1 or there is one track at most."""
    with progress_bar("extract-music", len(todo), progress and bool(todo)) as advance:
        if processes <= 1 or len(todo) <= 1:
            return _extract_here(todo, cache, extractor, advance)
        return _extract_in_processes(todo, cache, extractor, processes, progress, advance)


def _extract_here(todo: list[tuple[str, Path, str]], cache: FeatureCache, extractor: AudioExtractor,
                  advance: Callable[[], None]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """:func:`_extract_tracks` in this process."""
    vectors: dict[str, np.ndarray] = {}
    bad: dict[str, str] = {}
    for tid, p, key in todo:
        try:
            vec = extractor.extract_file(p)
            cache.put(key, vec)
            vectors[tid] = vec
        except MediaError as e:
            bad[tid] = str(e)
        except Exception as e:  # noqa: BLE001 - one bad file must not stop the batch
            bad[tid] = one_line(e)
        advance()
    return vectors, bad


def _extract_in_processes(todo: list[tuple[str, Path, str]], cache: FeatureCache, extractor: AudioExtractor,
                          workers: int, progress: bool, advance: Callable[[], None]
                          ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """:func:`_extract_tracks` in ``workers`` processes, each writing its tracks' cache entries; a stop (Ctrl-C) or a
    failure ends the pool as :func:`stop_pool` says."""
    import multiprocessing as mp

    vectors: dict[str, np.ndarray] = {}
    bad: dict[str, str] = {}
    by_path = {str(p): tid for tid, p, _ in todo}
    extractor.warm_up()  # numba's cache written once, before the workers read it
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                               initializer=_init_worker, initargs=(extractor.config,))
    try:
        futs = {pool.submit(_worker_job, str(p), key, str(cache.root), cache.settings): str(p)
                for _, p, key in todo}
        for fut in as_completed(futs):
            try:
                path, vec, reason = fut.result()
            except Exception as e:  # noqa: BLE001 - e.g. a worker killed by the OOM killer
                path, vec, reason = futs[fut], None, f"worker process failed: {one_line(e)}"
            if vec is None:
                bad[by_path[path]] = reason
            else:
                vectors[by_path[path]] = vec
            advance()
    except BaseException as stopped:  # stopped (Ctrl-C, SIGTERM) or failed
        stop_pool(pool, note=progress and isinstance(stopped, KeyboardInterrupt))
        raise
    pool.shutdown()
    return vectors, bad


def _track_rows(kept: list[tuple[str, Path, str]], metadata: dict[str, tuple[int, dict[str, str]]],
                audio_dir: Path) -> list[list[str]]:
    """tracks.csv's rows of the ``kept`` tracks: id, title (default: the id), artist and genre from ``metadata``, file
    and sha256."""
    rows = []
    for tid, p, key in kept:
        m = next((metadata[k] for k in media_keys(tid, p, audio_dir) if k in metadata), (0, {}))[1]
        rows.append([tid, m.get("title") or tid, m.get("artist", ""), m.get("genre", ""),
                     str(p.relative_to(audio_dir)), key])
    return rows


def _meta_warnings(meta: Path, metadata: dict[str, tuple[int, dict[str, str]]], items: list[tuple[str, Path, str]],
                   kept: list[tuple[str, Path, str]], rows: list[list[str]], audio_dir: Path,
                   failures: list[tuple[str, str]]) -> list[str]:
    """The warnings on the metadata CSV ``meta``: rows naming no track file or one of ``failures`` (not extracted),
    tracks without a row or a CSV without genres (:func:`meta_coverage_warnings`), and genre names written several
    ways."""
    unused = unused_rows_warning(meta, metadata, items, audio_dir, "track file", failures)
    uncovered = meta_coverage_warnings(meta, metadata, kept, audio_dir)
    spelled = genre_spelling_warning(meta, [r[3] for r in rows])
    return [w for w in [*unused, *uncovered, spelled] if w]


def _catalog_manifest(config: AudioConfig, settings: dict, feature_names: list[str], rows: list[list[str]],
                      failures: list[tuple[str, str]], music: np.ndarray) -> dict:
    """The manifest.json of the catalogue of tracks.csv's ``rows`` and their vectors ``music``."""
    return {
        "kind": CATALOG_KIND,
        "extractors": {"opensmile": {"feature_set": config.opensmile_set, "level": "functionals",
                                     "version": settings["opensmile"]},
                       "librosa": {"version": settings["librosa"]},
                       "decoder": {"name": "pyav", "version": av_version()}},
        "settings": asdict(config),
        "dim": int(music.shape[1]),
        "feature_names": feature_names,
        "ids": [r[0] for r in rows],
        "counts": {"tracks": len(rows), "failures": len(failures), "inputs": len(rows) + len(failures)},
        "content_hash": arrays_sha256(music),
    }


def _write_catalog(out: Path, music: np.ndarray, rows: list[list[str]], failures: list[tuple[str, str]],
                   manifest: dict) -> None:
    """Write the catalogue folder ``out``: music.npy, tracks.csv's ``rows``, failures.csv and manifest.json."""
    write_files_together(out, {  # all or nothing: a failed write leaves an earlier catalogue as it was
        "music.npy": lambda tmp: save_npy_atomic(tmp, music),
        "tracks.csv": lambda tmp: write_csv_atomic(tmp, ["id", "title", "artist", "genre", "file", "sha256"], rows),
        "failures.csv": lambda tmp: write_failures(tmp, failures),
        "manifest.json": lambda tmp: write_json_atomic(tmp, manifest)})


def load_catalog(root: Path) -> Catalog:
    """Load and check a catalogue folder written by :func:`extract_music`."""
    root = Path(root)
    man = read_manifest(root, CATALOG_KIND, "music catalogue")
    rows = read_csv_utf8(root / "tracks.csv", ("id",))
    feats = load_npy(root / "music.npy", f"{root}/music.npy", mmap=False)
    if feats.ndim != 2 or len(feats) != len(rows):
        raise DatasetError(f"{root}/music.npy: expected shape [{len(rows)}, *] (one row per tracks.csv row), "
                           f"found {list(feats.shape)}")
    check_float_matrix(feats, (len(rows), man.get("dim")), str(root), "music.npy")
    if not rows:
        raise DatasetError(f"{root}/tracks.csv: no tracks; a catalogue needs at least one")
    check_manifest_content(root, man, "music.npy", (feats,), "tracks", len(rows))
    ids = [r["id"] for r in rows]
    if man.get("ids") is not None and man["ids"] != ids:
        raise DatasetError(f"{root}/tracks.csv: ids differ from the id order in manifest.json")
    check_distinct_ids(ids, f"{root}/tracks.csv")
    return Catalog(ids, [r.get("title", "") for r in rows], [r.get("artist", "") for r in rows],
                   [r.get("genre", "") for r in rows], [r.get("file", "") for r in rows],
                   [r.get("sha256", "") for r in rows], np.asarray(feats, np.float32), man, root)
