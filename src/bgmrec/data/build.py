"""Extracted media + an upload log -> a native dataset (``bgmrec build-dataset``).

Inputs: a videos folder (:mod:`bgmrec.features.video`), a music catalogue folder
(:mod:`bgmrec.features.audio`) and a pairs CSV with one row per upload::

    video,track,uploader[,time]

(``video_id``/``track_id``/``uploader_id``/``timestamp`` are accepted as column names too, one name per
column: a file with two names of one column, as ``video`` and ``video_id``, is refused; ids are
the file stems used by the extractors; ``time`` is a number or an ISO-8601 date-time, read as UTC when it
names no zone).

What is written (the format of :mod:`bgmrec.data.dataset`):

- every extracted video with at least one usable pair (``source`` "ugc"; its uploader is the one of
  its first pair; the others are left out), and every catalogue track (``track_new`` False but for the new
  music held out below), also
  those no pair names (they are ranked as candidates); videos and tracks in id order (:func:`in_id_order`;
  the videos' features copied a block of rows at a time from the memory-mapped folder, never held whole);
- genres: the sorted genre names of the catalogue, tracks without one get "unknown";
- splits train / val / test of the pairs, by video (all rows of one video land in one split):
  by time when every row has one (earliest video time first; a video's time is its first pair's, and a
  warning says how many pairs of training videos are dated after the first test video), else a seeded
  random permutation (with a warning when only some rows have a time); the command's summary counts the
  val and test rows whose track no training pair names (:meth:`~bgmrec.data.dataset.Dataset.summary`'s
  ``untrained_positives``: new music to the models, ranked among the existing music);
  train, val and test are ranked among the existing tracks (``test_new_music``, below, among the new);
- with ``new_music_share``, that share of the tracks the pairs name held out of training (``track_new``: the
  latest first used when every pair has a time, else seeded): the uploads that chose them form
  ``test_new_music`` (ranked among those tracks), their videos in no other split, their professional pairs
  dropped;
- frozen negatives for val and test: up to 100 per row (fewer when the catalogue is smaller),
  drawn with :func:`bgmrec.data.negatives.negatives_by_id` from the seed and the ids of the row's video and
  track and of the candidates (the same for a query kept from one build to the next), never a track of the row's
  video;
- ``uploaders.npy``: each uploader's genre distribution from their *training* pairs, smoothed
  towards the population share: ``(counts_u + alpha * p) / (n_u + alpha)`` with ``p`` the genre
  shares of all training pairs (add-one smoothed), so rows sum to 1 and an uploader with no
  training pair gets ``p``;
- ``uploaders.json`` (uploader ids, row order of uploaders.npy) and the provenance (inputs, their
  content hashes, seed, how many pair rows were dropped and why: a video or track whose extraction failed
  (its folder's ``failures.csv`` names it), an unknown video, an unknown track, or a duplicate of an
  earlier row's video, track and uploader, each kind also warned of with its first row's line and ids; how
  many extracted videos had no usable pair and how many tracks no pair names).

A share of 0 leaves its split empty, and fewer than 3 videos with usable pairs leave val and test empty:
built, with a warning.

A weekly rebuild can keep an earlier dataset's split assignment (``keep_splits_of``): each video that dataset
has in a split keeps its side (train, val or test; a professional video of its teacher split counts as train,
a video in splits of two roles takes the later of train, val, test), and only the videos new since are split,
by the shares and the rule above, among themselves. Last week's test videos then never enter this week's
training, nor last week's training videos this week's test: last week's model and this week's are compared on
videos neither trained on. With ``new_music_share`` the tracks last week's dataset held out are held out again
(first, whatever the share, unless a video keeping its split names one now), and the others are chosen by the
rule above among the tracks no video keeping its split names (holding one out would move the video out of
its split); fewer than the share are held out when no other is left, and none when only one is, each with a
warning. Without the share, last week's held-out tracks are no longer held out, with a warning.

Professional music videos (the teacher data of DecCM, whose tracks were chosen for their content, not by
uploaders' taste) come in an optional second CSV, ``video,track`` (an uploader column is not read), of
videos of the same videos folder: they are appended as videos of source ``pgc`` (uploader -1) and their
rows form the split ``pgc`` (role ``teacher``). A video may not be both an upload and a professional video.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from bgmrec.data.dataset import (
    Dataset,
    DatasetError,
    DatasetFieldError,
    FieldError,
    SplitInfo,
    check_replaceable,
    dataset_fingerprint,
    labels_fingerprint,
    load_dataset,
    read_json,
    save_dataset,
    save_npy_rows,
    scratch_folder,
    separator_hint,
    sha256_file,
)
from bgmrec.data.negatives import id_keys, negatives_by_id, other_positives  # a video's other tracks: no negatives
from bgmrec.features.cache import (
    TRACK_ID_COLUMNS,
    VIDEO_ID_COLUMNS,
    check_csv_file,
    failed_inputs,
    media_failures,
    named_column,
    read_csv_lines,
    same_text,
)

if TYPE_CHECKING:
    from bgmrec.features.audio import Catalog
    from bgmrec.features.video import VideoFeatures

COLUMN_NAMES = {
    "video": VIDEO_ID_COLUMNS,
    "track": TRACK_ID_COLUMNS,
    "uploader": ("uploader", "uploader_id", "user", "user_id"),
    "time": ("time", "timestamp", "date"),
}


@dataclass(frozen=True)
class BuildConfig:
    """How pairs become splits (saved in the dataset's provenance)."""

    seed: int = 0  # seeds the random split and the negatives
    val_share: float = 0.1  # share of videos in validation
    test_share: float = 0.1  # share of videos in test
    negatives: int = 100  # frozen negatives per val/test row (at most the catalogue size - 1)
    alpha: float = 1.0  # pseudo-count of the population share in each uploader's genre distribution
    new_music_share: float = 0.0  # share of the tracks the pairs name held out of training entirely (the latest
    #  first used when pairs have times, else seeded): the uploads that chose them form test_new_music, ranked
    #  among those tracks alone (the CMVAE paper's new-music setting); 0: none

    def __post_init__(self) -> None:
        for name, share in (("val_share", self.val_share), ("test_share", self.test_share)):
            if not 0 <= share < 1:  # also refuses NaN
                raise FieldError(f"{{{name}}} must be in [0, 1), got {share}", name)
        if not self.val_share + self.test_share < 1:
            raise FieldError(f"{{val_share}} {self.val_share} and {{test_share}} {self.test_share} add up to "
                             f"{self.val_share + self.test_share:g}; their sum must be below 1 (the rest is train)",
                             "val_share", "test_share")
        if self.negatives < 0:
            raise FieldError(f"{{negatives}} must be at least 0, got {self.negatives}", "negatives")
        if self.seed < 0:
            raise FieldError(f"{{seed}} must be at least 0, got {self.seed}", "seed")
        if not 0 < self.alpha < float("inf"):
            raise FieldError(f"{{alpha}} must be a positive number, got {self.alpha}", "alpha")
        if not 0 <= self.new_music_share < 1:
            raise FieldError(f"{{new_music_share}} must be in [0, 1), got {self.new_music_share}", "new_music_share")


@dataclass
class Pairs:
    video: list[str]
    track: list[str]
    uploader: list[str]
    time: list[float] | None  # None when the column is absent or any row lacks a time
    untimed: list[int] = field(default_factory=list)  # lines of the rows without a time, when the column exists
    lines: list[int] = field(default_factory=list)  # each row's physical line in the file (for warnings)


def read_pairs(path: Path, uploaders: bool = True) -> Pairs:
    """Read a pairs CSV (see the module docstring); errors name the file, line and column. Without
    ``uploaders`` (professional videos) the uploader column is not read: every row's uploader is ""."""
    path = Path(path)
    check_csv_file(path)
    with open(path, "rb") as f:
        if f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")[:1] in (b"[", b"{"):
            raise DatasetError(f"{path}: looks like JSON; the pairs are a CSV with a header "
                               "video,track,uploader[,time], one row a pair")
    numbered = read_csv_lines(path)
    lines = [line for line, _ in numbered]  # physical lines: blank lines and quoted line breaks counted
    rows = [row for _, row in numbered]
    if not rows:
        raise DatasetError(f"{path}: no rows (expected a header video,track,uploader[,time], one row a pair)")
    cols: dict[str, str | None] = {}
    for want, names in COLUMN_NAMES.items():
        if want == "uploader" and not uploaders:
            cols[want] = None
            continue
        cols[want] = named_column(path, rows[0], want, names)
        if cols[want] is None and want != "time":
            raise DatasetError(f"{path}: missing column {want!r} (accepted names: {', '.join(names)}); "
                               f"found {sorted(rows[0])}" + separator_hint(rows[0]))
    get = {k: [(r.get(c) or "").strip() for r in rows] for k, c in cols.items() if c}
    get.setdefault("uploader", [""] * len(rows))
    for k in ("video", "track", "uploader") if uploaders else ("video", "track"):
        empty = [i for i, v in enumerate(get[k]) if not v]
        if empty:
            raise DatasetError(f"{path}: line {lines[empty[0]]} has an empty {k!r}")
    times = None
    untimed = [line for v, line in zip(get.get("time", []), lines, strict=False) if not v]
    if "time" in get and not untimed:
        parsed = [_parse_time(v, path, line) for v, line in zip(get["time"], lines, strict=True)]
        dated = next((line for (_, kind), line in zip(parsed, lines, strict=True) if kind == "date"), None)
        odd = next(((t, line) for (t, kind), line in zip(parsed, lines, strict=True)
                    if kind == "number" and not EPOCH_SECONDS[0] <= t < EPOCH_SECONDS[1]), None)
        if dated is not None and odd is not None:  # numbers alone sort on any scale; beside dates, only as seconds
            raise DatasetError(f"{path}: line {odd[1]}: time {odd[0]:.15g} beside ISO-8601 dates (e.g. line {dated}) "
                               "is not seconds since 1970 (milliseconds? a date written as a number?); give one kind")
        seconds = next(((t, line) for (t, kind), line in zip(parsed, lines, strict=True)
                        if kind == "number" and EPOCH_SECONDS[0] <= t < EPOCH_SECONDS[1]), None)
        if seconds is not None and odd is not None:  # one scale or another, not both: a log merged from two systems
            raise DatasetError(f"{path}: line {odd[1]}: time {odd[0]:.15g} beside seconds since 1970 (e.g. line "
                               f"{seconds[1]}: {seconds[0]:.15g}) is on another scale (milliseconds? a counter?), "
                               "so it would sort among them wrongly; give every time on one scale")
        times = [t for t, _ in parsed]
    return Pairs(get["video"], get["track"], get["uploader"], times, untimed, lines)


#: the numbers a time column may hold beside ISO-8601 dates, as seconds since 1970: 1973-03-03 to 5138-11-16
EPOCH_SECONDS = (1e8, 1e11)


def _parse_time(value: str, path: Path, line: int) -> tuple[float, str]:
    """(the time as a number that sorts as the times do, "number" or "date"): a number as it is, an ISO-8601 date
    as seconds since 1970 (UTC when it names no zone)."""
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(number):  # nan sorts nowhere: the split by time would be arbitrary
            raise DatasetError(f"{path}: line {line}: time {value!r} is not a finite number")
        return number, "number"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise DatasetError(f"{path}: line {line}: time {value!r} is neither a number nor ISO-8601") from None
    # without a zone: UTC, not this machine's local time (the same file must split alike everywhere)
    return (moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)).timestamp(), "date"


def split_videos(video_time: np.ndarray | None, n: int, config: BuildConfig) -> np.ndarray:
    """Split id per video (0 train, 1 val, 2 test): latest videos are test when times are given."""
    rng = np.random.default_rng(config.seed)
    order = np.argsort(video_time, kind="stable") if video_time is not None else rng.permutation(n)
    n_test = int(round(config.test_share * n))
    n_val = int(round(config.val_share * n))
    if n >= 3:  # every split with a share above 0 gets at least one video
        n_test, n_val = (max(k, 1) if share > 0 else 0 for k, share in ((n_test, config.test_share),
                                                                        (n_val, config.val_share)))
    n_train = n - n_val - n_test
    if n_train < 1 <= n:
        raise DatasetFieldError(f"{{val_share}} {config.val_share} and {{test_share}} {config.test_share} leave "
                                f"none of the {n} videos with pairs for train", "val_share", "test_share")
    split = np.empty(n, np.int64)
    split[order[:n_train]] = 0
    split[order[n_train:n_train + n_val]] = 1
    split[order[n_train + n_val:]] = 2
    return split


SIDES = ("train", "val", "test")  # split_videos' split ids, in order
MANY_TRACKS = 100  # a video with more tracks than this is warned of (an upload has one or a few)


NEW_MUSIC_SIDE = 3  # kept_sides' side of a video of a new-music test split (test_new_music): a test side too


HELD_OUT_HISTORY = "held_out_videos.json"  # a built dataset's {"videos": {id: side}, "tracks": [id]}: ever held out


def split_sides(video_ids: list[str], splits: dict[str, np.ndarray], split_info: dict) -> dict[str, int]:
    """Each video of a dataset (its ``video_ids``, ``splits`` and ``split_info``) that is in one of its splits, by
    id: its side (0 train, 1 val, 2 test, :data:`NEW_MUSIC_SIDE` for a test split ranked among new music; a video
    in splits of two roles takes the later)."""
    side_of_role = {"train": 0, "teacher": 0, "val": 1, "test": 2}
    side = np.full(len(video_ids), -1, np.int64)
    for name, info in split_info.items():
        if info.role in side_of_role:
            videos = np.unique(np.asarray(splits[name])[:, 0])
            new_music = info.role == "test" and info.candidates == "new"
            side[videos] = np.maximum(side[videos], NEW_MUSIC_SIDE if new_music else side_of_role[info.role])
    return {video_ids[i]: int(side[i]) for i in np.flatnonzero(side >= 0)}


class HeldOutHistory(NamedTuple):
    """What a dataset, or an earlier one whose splits it kept, held out of training (:data:`HELD_OUT_HISTORY`)."""

    videos: dict[str, int]  # each video's held-out side (1 val, 2 test, NEW_MUSIC_SIDE) when last held out, by id
    tracks: list[str]  # the tracks held out of training (new music), by id


def held_out_history(folder: Path) -> HeldOutHistory:
    """The :data:`HELD_OUT_HISTORY` file of the dataset at ``folder`` (empty for a dataset without one)."""
    path = Path(folder) / HELD_OUT_HISTORY
    if not path.is_file():
        return HeldOutHistory({}, [])
    found = read_json(path)
    videos, tracks = found.get("videos"), found.get("tracks", [])
    if not isinstance(videos, dict) or not all(type(v) is int and v in (1, 2, NEW_MUSIC_SIDE) for v in videos.values()):
        raise DatasetError(f"{path}: field 'videos' must map video ids to a side 1 (val), 2 (test) or "
                           f"{NEW_MUSIC_SIDE} (test_new_music)")
    if not isinstance(tracks, list) or not all(isinstance(t, str) for t in tracks):
        raise DatasetError(f"{path}: field 'tracks' must be a list of track ids")
    return HeldOutHistory(videos, tracks)


class KeptSides(NamedTuple):
    """What a rebuild keeps of an earlier dataset's splits (:func:`kept_sides`)."""

    sides: np.ndarray  # int64 per video of the build: its side there, or -1
    held_ids: set[str]  # the tracks it held out of training (its new music)
    from_history: np.ndarray  # bool per video: the side is of an earlier week's (held_out_history), not of its splits
    lost: list[str]  # its val, test and test_new_music videos the build lacks, sorted


def kept_sides(previous: Path, video_ids: list[str], history: HeldOutHistory) -> KeptSides:
    """Each of ``video_ids``' side in the dataset at ``previous`` (0 train, 1 val, 2 test, :data:`NEW_MUSIC_SIDE`
    for a test split ranked among new music, -1 for a video it has in none of its splits; see the module
    docstring), a video it lacks taking the side it had when an earlier week held it out (``history``, its
    :func:`held_out_history`: a test video missing one week, its track withdrawn or its extraction failed, came back
    as training data); the ids of the tracks that dataset or an earlier week held out of training (its new music);
    which sides came from that history; and the videos it held out that the build lacks."""
    prev = load_dataset(Path(previous))
    side = split_sides(prev.video_ids, prev.splits, prev.split_info)
    sides = np.array([side.get(v, history.videos.get(v, -1)) for v in video_ids], np.int64)
    from_history = np.array([v not in side and v in history.videos for v in video_ids], bool)
    here = set(video_ids)
    return KeptSides(sides, {prev.track_ids[j] for j in np.flatnonzero(prev.track_new)} | set(history.tracks),
                     from_history, sorted(v for v, s in side.items() if s > 0 and v not in here))


def kept_record(previous: Path, sides: np.ndarray, from_history: int = 0) -> dict:
    """The provenance of a build that kept the splits of ``previous``: its folder and splits' fingerprint, how many
    of the videos split (``sides``, from :func:`kept_sides`, a new-music side as test) kept each side, how many
    were new, and how many of those kept took their side from an earlier week (``from_history``)."""
    return {"folder": str(previous), "splits_fingerprint": dataset_fingerprint(Path(previous)),
            "kept": {name: int((sides == s).sum()) for s, name in enumerate(SIDES)}, "new": int((sides < 0).sum()),
            **({"held_out_earlier": from_history} if from_history else {})}


def uploader_preferences(train_uploader: np.ndarray, train_genre: np.ndarray, n_uploaders: int,
                         n_genres: int, alpha: float = 1.0) -> np.ndarray:
    """Genre distributions [U, G] from training pairs, smoothed towards the population share."""
    pop = np.bincount(train_genre, minlength=n_genres).astype(np.float64) + 1.0
    pop /= pop.sum()
    counts = np.zeros((n_uploaders, n_genres), np.float64)
    np.add.at(counts, (train_uploader, train_genre), 1.0)
    pref = (counts + alpha * pop[None, :]) / (counts.sum(1, keepdims=True) + alpha)
    return (pref / pref.sum(1, keepdims=True)).astype(np.float32)


def id_order(ids: list[str]) -> np.ndarray:
    """int64 positions of ``ids`` sorted by id: an extracted folder's rows in the order a dataset keeps them."""
    return np.array(sorted(range(len(ids)), key=ids.__getitem__), np.int64).reshape(-1)


def in_id_order(folder):
    """An extracted folder as loaded (a videos folder's :class:`~bgmrec.features.video.VideoFeatures`, a
    catalogue's :class:`~bgmrec.features.audio.Catalog`) with its rows sorted by id (:func:`id_order`), so that a
    dataset, its seeded split and its negatives do not depend on where the files lay: extract-videos orders rows
    by path, and moving clips into subfolders changed 17 of a random split's 18 test videos."""
    n = len(folder.ids)
    order = id_order(folder.ids)
    if (order == np.arange(n)).all():
        return folder
    return dataclasses.replace(folder, **{  # the fields of one value per row
        f.name: ([value[i] for i in order] if isinstance(value, list) else value[order])
        for f in dataclasses.fields(folder)
        if isinstance(value := getattr(folder, f.name), list | np.ndarray) and len(value) == n})


def matched_ids(ids: list[str], known: Iterable[str], failed: Container[str]) -> list[str]:
    """``ids`` with each one that is not in ``known`` but is written as exactly one of them but for its accents'
    Unicode form (composed "é", or "e" and a combining accent, as macOS stores file names; :func:`same_text`)
    replaced by that one: a pairs CSV exported from a database finds a clip as ``--meta`` and ``--captions`` rows
    do. An id of a media file whose extraction failed (``failed``: :func:`~bgmrec.features.cache.media_failures`)
    is left as it is, to be dropped as one: another file, spelled alike, is not the one it names."""
    known = set(known)
    by_form: dict[str, list[str]] = {}
    for k in known:
        by_form.setdefault(same_text(k), []).append(k)
    return [i if i in known or i in failed or len(by_form.get(same_text(i), ())) != 1 else by_form[same_text(i)][0]
            for i in ids]


def usable_rows(pairs: Pairs, csv_path: Path, extracted: set[str], tpos: dict[str, int], videos_dir: Path,
                music_dir: Path, failed: tuple[dict[str, str], dict[str, str]],
                warn: Callable[[str], None] | None) -> tuple[list[int], dict[str, int]]:
    """The rows of ``pairs`` naming an extracted video and a catalogue track, and how many were dropped for
    naming a video or track whose extraction failed (``failed``: the :func:`failed_inputs` of the two folders,
    their ``failures.csv``), no other extracted video, or no other catalogue track; ``warn`` is told of each kind,
    with its first line and id."""
    failed_videos, failed_tracks = failed
    keep = [i for i in range(len(pairs.video)) if pairs.video[i] in extracted and pairs.track[i] in tpos]
    missing_video = [i for i, v in enumerate(pairs.video) if v not in extracted]
    missing_track = [i for i, (v, t) in enumerate(zip(pairs.video, pairs.track, strict=True))
                     if v in extracted and t not in tpos]
    kinds = {  # name in the provenance: (rows, what they name, their ids, the ids that exist, failed extractions)
        "failed_video": ([i for i in missing_video if pairs.video[i] in failed_videos],
                         f"a video whose extraction failed (see {Path(videos_dir) / 'failures.csv'})",
                         pairs.video, extracted, failed_videos),
        "unknown_video": ([i for i in missing_video if pairs.video[i] not in failed_videos],
                          f"no extracted video (of {videos_dir})", pairs.video, extracted, {}),
        "failed_track": ([i for i in missing_track if pairs.track[i] in failed_tracks],
                         "an extracted video but a track whose extraction failed "
                         f"(see {Path(music_dir) / 'failures.csv'})",
                         pairs.track, tpos, failed_tracks),
        "unknown_track": ([i for i in missing_track if pairs.track[i] not in failed_tracks],
                          f"an extracted video but no catalogue track (of {music_dir})", pairs.track, tpos, {}),
    }
    if warn is not None:
        n = len(pairs.video)
        for rows_of, what, ids, known, failed in kinds.values():
            if rows_of:
                first = ids[rows_of[0]]
                stem = Path(first).stem
                hint = f"; ids are file stems: {stem!r}, not {first!r}" if stem != first and stem in known else ""
                spaced = next((k for k in known if k.strip() == first.strip()), None) if not hint else None
                if spaced is not None:
                    hint = (f"; {first!r} and the extracted {spaced!r} differ only in spaces around them: write "
                            "ids without them")
                padded = zeros_lost(first, known) if not hint else None
                if padded is not None:
                    hint = (f"; {first!r} may be the extracted {padded!r}, its leading zeros lost (a spreadsheet "
                            "reads such ids as numbers): keep ids as text")
                why = f": {failed[first]}" if first in failed else ""
                warn(f"{csv_path}: {len(rows_of)} of {n} row(s) name {what} and were not used "
                     f"(e.g. line {pairs.lines[rows_of[0]]}: {first!r}{why}{hint})")
    return keep, {kind: len(rows_of) for kind, (rows_of, *_) in kinds.items()}


def zeros_lost(given: str, known) -> str | None:
    """The first (in sorted order) of the all-digit ids ``known`` that ``given``, all digits and without a leading
    zero, is with its leading zeros lost (``'3'`` for ``'003'``), as a spreadsheet writes such ids back; None when
    none is."""
    if not given.isdigit() or (given.startswith("0") and given != "0"):
        return None
    return min((k for k in known if k != given and k.isdigit() and (k.lstrip("0") or "0") == given), default=None)


def held_out_tracks(rows: np.ndarray, row_of_pair: np.ndarray, pair_time: np.ndarray | None, n_tracks: int,
                    config: BuildConfig, held_before: np.ndarray | None = None,
                    kept_before: np.ndarray | None = None) -> np.ndarray:
    """bool [n_tracks]: the tracks held out of training (:attr:`BuildConfig.new_music_share` of those the
    pairs ``rows`` name; a share that holds out fewer than two, or all, is refused): those first used latest
    when every pair has a time (``pair_time``, per pair; ``row_of_pair`` maps pairs to rows; tracks first used
    at the same time in a seeded order), else a seeded draw.

    A rebuild that keeps an earlier dataset's splits passes two masks [n_tracks]: ``held_before``, the tracks that
    dataset held out, held again (its new-music queries stay new music) before any other; ``kept_before``, tracks
    videos keeping their split name, never held (that would move such a video out of its split). Both count only
    where the pairs name them; fewer than the share are held when the others are all ``kept_before``."""
    held = np.zeros(n_tracks, bool)
    named = np.unique(rows[:, 1])
    n_held = int(round(config.new_music_share * len(named)))
    if config.new_music_share == 0:
        return held
    if not 2 <= n_held < len(named):
        raise DatasetFieldError(f"{{new_music_share}} {config.new_music_share} of the {len(named)} tracks the "
                                f"pairs name holds out {n_held}: new music needs at least 2 tracks, and training at "
                                f"least one (from {2 / len(named):.3g} to below {1 - 0.5 / len(named):.3g})",
                                "new_music_share")
    barred = np.zeros(n_tracks, bool) if kept_before is None else kept_before
    again = np.zeros(n_tracks, bool) if held_before is None else held_before & ~barred
    held[named[again[named]]] = True
    eligible = named[~again[named] & ~barred[named]]
    n_more = min(max(n_held - int(held.sum()), 0), len(eligible))
    if pair_time is None:
        held[np.random.default_rng(config.seed + 2).choice(eligible, n_more, replace=False)] = True
        return held
    first = np.full(n_tracks, np.inf)
    np.minimum.at(first, rows[row_of_pair.reshape(-1), 1], pair_time)
    shuffled = np.random.default_rng(config.seed + 2).permutation(len(named))  # ties in a seeded order
    latest = named[np.lexsort((shuffled, -first[named]))]  # the latest first used first
    held[latest[np.isin(latest, eligible)][:n_more]] = True
    return held


def late_training_pairs(pair_side: np.ndarray, pair_time: np.ndarray) -> str | None:
    """A note when pairs of training videos (``pair_side``: each pair's split, an index of :data:`SIDES`) are
    dated (``pair_time``, seconds) at or after the first test video's time: a video is placed by its first
    pair, and its later pairs go with it into training. None when there are none."""
    test = pair_side == SIDES.index("test")
    if not test.any():
        return None
    start = pair_time[test].min()
    late = (pair_side == SIDES.index("train")) & (pair_time >= start)
    if not late.any():
        return None
    when = datetime.fromtimestamp(start, UTC).isoformat(timespec="seconds")
    return (f"{int(late.sum()):,} pair(s) of training videos are dated at or after the first test video ({when}): "
            "a video is placed by the time of its first pair and its later pairs go with it, so training counts "
            "them (popularity, the track prior, the uploaders' tastes)")


#: each split's :class:`~bgmrec.data.dataset.SplitInfo`, in the order a built dataset has them
SPLIT_INFO = {"train": SplitInfo("train", "existing"), "val": SplitInfo("val", "existing"),
              "test": SplitInfo("test", "existing"), "test_new_music": SplitInfo("test", "new"),
              "pgc": SplitInfo("teacher", "existing")}


@dataclass(frozen=True)
class _Inputs:
    """:func:`build_dataset`'s inputs, read: its paths as given (its messages name them so), the videos folder
    memory-mapped in its own row order, the catalogue in id order, and the pairs."""

    videos_dir: Path
    music_dir: Path
    pairs_csv: Path
    professional_csv: Path | None
    videos: VideoFeatures
    stored: np.ndarray  # the folder's row of each video, in id order
    vid_ids: list[str]  # the extracted videos' ids, in id order
    cat: Catalog
    tpos: dict[str, int]  # each track id's row in cat
    pairs: Pairs
    failed: tuple[dict[str, str], dict[str, str]]  # failed_inputs of the videos and of the music folder, read once


def _read_inputs(videos_dir: Path, music_dir: Path, pairs_csv: Path, professional_csv: Path | None,
                 warn: Callable[[str], None] | None) -> _Inputs:
    """Load the videos folder and the catalogue and read the pairs, warning of rows without a time; a catalogue of
    fewer than 2 tracks is refused."""
    from bgmrec.features.audio import load_catalog
    from bgmrec.features.video import load_video_features

    # the videos' arrays memory-mapped (checked and hashed a block at a time), in the folder's row order: the rows
    # kept are copied in id order into the dataset's files (_write_dataset); loading, sorting and selecting copied
    # them thrice
    videos = load_video_features(Path(videos_dir), mmap=True)
    stored = id_order(videos.ids)
    cat = in_id_order(load_catalog(Path(music_dir)))
    vid_ids = [videos.ids[i] for i in stored]
    failed = failed_inputs(videos_dir), failed_inputs(music_dir)
    pairs = _with_matched_ids(read_pairs(Path(pairs_csv)), vid_ids, cat.ids, failed)
    if pairs.untimed and warn is not None:
        warn(f"{pairs_csv}: {len(pairs.untimed)} of {len(pairs.video)} row(s) have no time (e.g. line "
             f"{pairs.untimed[0]}); the split is random, not by time")
    if len(cat) < 2:
        raise DatasetError(f"{music_dir}: the catalogue has {len(cat)} track(s); a dataset needs at least 2")
    return _Inputs(videos_dir, music_dir, pairs_csv, professional_csv, videos, stored,
                   vid_ids, cat, {t: j for j, t in enumerate(cat.ids)}, pairs, failed)


def _with_matched_ids(pairs: Pairs, video_ids: Iterable[str], track_ids: Iterable[str],
                      failed: tuple[dict[str, str], dict[str, str]]) -> Pairs:
    """``pairs`` with its video and track ids matched to the extracted ones across accent forms
    (:func:`matched_ids`), never onto another file when its own failed (``failed``: as :class:`_Inputs` has it)."""
    return dataclasses.replace(pairs, video=matched_ids(pairs.video, video_ids, media_failures(failed[0])),
                               track=matched_ids(pairs.track, track_ids, media_failures(failed[1])))


@dataclass(frozen=True)
class _Usable:
    """The rows of the pairs a dataset uses and how many were dropped, by why (:func:`usable_rows`); the same of
    the professional pairs (``pro`` None without them)."""

    keep: list[int]
    dropped: dict[str, int]
    pro: Pairs | None
    pro_keep: list[int]
    pro_dropped: dict[str, int]


def _usable_pairs(inputs: _Inputs, warn: Callable[[str], None] | None) -> _Usable:
    """The usable rows of the pairs and of the professional pairs (read here); refused: no usable row in either
    file, or a video both an upload and a professional video."""
    extracted = set(inputs.vid_ids)
    videos_dir, music_dir, pairs_csv, professional_csv = (inputs.videos_dir, inputs.music_dir, inputs.pairs_csv,
                                                          inputs.professional_csv)
    keep, dropped = usable_rows(inputs.pairs, pairs_csv, extracted, inputs.tpos, videos_dir, music_dir,
                                inputs.failed, warn)
    pro_keep, pro_dropped, pro = [], {}, None
    if professional_csv is not None:
        pro = _with_matched_ids(read_pairs(Path(professional_csv), uploaders=False), extracted, inputs.tpos,
                                inputs.failed)
        pro_keep, pro_dropped = usable_rows(pro, professional_csv, extracted, inputs.tpos, videos_dir, music_dir,
                                            inputs.failed, warn)
        if not pro_keep:  # a dataset without its pgc split: the teacher-guided models would fail only at train
            raise DatasetError(f"{professional_csv}: no row names both an extracted video (from {videos_dir}) and a "
                               f"catalogue track (from {music_dir}); the professional videos make the split pgc")
        both = sorted({inputs.pairs.video[i] for i in keep} & {pro.video[i] for i in pro_keep})
        if both:
            raise DatasetError(f"{professional_csv}: {len(both)} video(s) are also uploads in {pairs_csv} (e.g. "
                               f"{both[0]!r}); a video is an upload or a professional music video, not both")
    if not keep:
        raise DatasetError(f"{pairs_csv}: no row names both an extracted video (from {videos_dir}) "
                           f"and a catalogue track (from {music_dir})")
    return _Usable(keep, dropped, pro, pro_keep, pro_dropped)


@dataclass(frozen=True)
class _Uploads:
    """A dataset's uploaded videos (those with a usable pair, by id), their uploaders and their pair rows."""

    sel: np.ndarray  # each video's position in _Inputs.vid_ids
    video_ids: list[str]
    video_uploader: np.ndarray  # each video's uploader: the one of its first usable pair in the file
    uploaders: list[str]  # sorted: the rows of uploaders.npy
    rows: np.ndarray  # int64 [n, 3] (video, track, uploader): each distinct row once, sorted
    row_of_pair: np.ndarray  # each usable pair's row in rows
    pair_time: np.ndarray | None  # each usable pair's time; None when not every row of the pairs has one
    repeated: int  # usable pairs repeating an earlier one's video, track and uploader (counted once)


def _upload_rows(inputs: _Inputs, keep: list[int], warn: Callable[[str], None] | None) -> _Uploads:
    """The dataset's uploaded videos and the distinct rows of the usable pairs ``keep``, warning of repeated rows
    and of videos with more than :data:`MANY_TRACKS` tracks."""
    pairs = inputs.pairs
    # the dataset's videos: those with at least one usable pair, by id
    paired = {pairs.video[i] for i in keep}
    sel = np.array([i for i, v in enumerate(inputs.vid_ids) if v in paired], np.int64)
    video_ids = [inputs.vid_ids[i] for i in sel]
    vpos = {v: i for i, v in enumerate(video_ids)}
    uploaders = sorted({pairs.uploader[i] for i in keep})
    upos = {u: k for k, u in enumerate(uploaders)}
    rows = np.array([[vpos[pairs.video[i]], inputs.tpos[pairs.track[i]], upos[pairs.uploader[i]]] for i in keep],
                    np.int64)
    # a video's uploader: the one of its first usable pair in the file (taken before np.unique sorts the rows)
    video_uploader = np.full(len(video_ids), -1, np.int64)
    for v, u in rows[::-1, [0, 2]]:
        video_uploader[v] = u
    if warn is not None and (rows[:, 2] != video_uploader[rows[:, 0]]).any():
        warn(_uploaders_warning(pairs, keep, inputs.pairs_csv))
    rows, row_of_pair = np.unique(rows, axis=0, return_inverse=True)  # a repeated row counts once
    if len(keep) > len(rows) and warn is not None:
        warn(_repeat_warning(pairs, keep, inputs.pairs_csv))
    tracks_of_video = np.bincount(np.unique(rows[:, :2], axis=0)[:, 0], minlength=len(video_ids))
    if (tracks_of_video > MANY_TRACKS).any() and warn is not None:
        most = int(np.argmax(tracks_of_video))
        warn(f"{inputs.pairs_csv}: {int((tracks_of_video > MANY_TRACKS).sum())} video(s) have more than "
             f"{MANY_TRACKS} tracks (e.g. {video_ids[most]!r}, {int(tracks_of_video[most]):,}): a placeholder id? "
             "Each of a video's tracks is a query ranked without the others, which grows with the square of their "
             "number")
    pair_time = None if pairs.time is None else np.array([pairs.time[i] for i in keep], np.float64)
    return _Uploads(sel, video_ids, video_uploader, uploaders, rows, row_of_pair, pair_time, len(keep) - len(rows))


def _uploaders_warning(pairs: Pairs, keep: list[int], pairs_csv: Path) -> str:
    """The warning of the videos that the usable rows ``keep`` of ``pairs`` name with more than one uploader (there
    is one): how many, and the first such row's line and ids beside its video's first row's."""
    first: dict[str, int] = {}
    other: dict[str, int] = {}
    for i in keep:
        j = first.setdefault(pairs.video[i], i)
        if pairs.uploader[i] != pairs.uploader[j]:
            other.setdefault(pairs.video[i], i)
    i = min(other.values())
    j = first[pairs.video[i]]
    return (f"{pairs_csv}: {len(other)} video(s) are named with more than one uploader (e.g. line {pairs.lines[i]}: "
            f"{pairs.video[i]!r} by {pairs.uploader[i]!r}, by {pairs.uploader[j]!r} on line {pairs.lines[j]}): a video "
            "is one upload, so its rows should name one uploader; each video keeps its first row's (videos.csv), "
            "and each row its own as the confounder's value")


def _repeat_warning(pairs: Pairs, keep: list[int], pairs_csv: Path) -> str:
    """The warning of the usable rows ``keep`` of ``pairs`` that repeat an earlier row's video, track and uploader:
    how many, and the first one's line and ids (there is one)."""
    first: dict[tuple[str, str, str], int] = {}
    repeats = []
    for i in keep:
        key = (pairs.video[i], pairs.track[i], pairs.uploader[i])
        if key in first:
            repeats.append((i, first[key]))
        else:
            first[key] = i
    i, j = repeats[0]
    return (f"{pairs_csv}: {len(repeats)} of {len(pairs.video)} row(s) repeat an earlier row's video, track and "
            f"uploader and were not used again (e.g. line {pairs.lines[i]}: {pairs.video[i]!r}, "
            f"{pairs.track[i]!r}, {pairs.uploader[i]!r}, as on line {pairs.lines[j]})")


def _genres(inputs: _Inputs, warn: Callable[[str], None] | None) -> tuple[list[str], np.ndarray]:
    """The catalogue's sorted genre names ("unknown" for a track without one) and each track's genre id, warning
    of a genre written in several ways."""
    from bgmrec.features.audio import genre_spelling_warning

    cat = inputs.cat
    genres = sorted({g.strip() or "unknown" for g in cat.genre})
    spelling = genre_spelling_warning(Path(inputs.music_dir) / "tracks.csv", [g.strip() for g in cat.genre],
                                      "write each genre one way in the metadata CSV and run extract-music again")
    if spelling and warn is not None:  # a catalogue extracted before extract-music warned of it, or made otherwise
        warn(spelling)
    gpos = {g: k for k, g in enumerate(genres)}
    return genres, np.array([gpos[g.strip() or "unknown"] for g in cat.genre], np.int64)


@dataclass(frozen=True)
class _Previous:
    """What a rebuild keeps of an earlier dataset (``keep_splits_of``)."""

    folder: Path  # as given (the messages name it so)
    side: np.ndarray  # each of this build's videos' side in it (kept_sides)
    from_history: np.ndarray  # bool per video: its side from an earlier week's held-out videos, not from it
    history: HeldOutHistory  # what it or an earlier week held out (held_out_history)
    held: np.ndarray  # bool per track: held out of its training, and named by this build's pairs
    kept: np.ndarray  # bool per track: named by a video keeping its split (never held out)
    lost: list[str]  # its held-out videos (val, test, test_new_music) this build has no usable upload of


def _previous_split(folder: Path, uploads: _Uploads, cat: Catalog) -> _Previous:
    """Each video's side in the earlier dataset at ``folder`` and the tracks it held out (:func:`kept_sides`),
    with the tracks the videos keeping their split name."""
    history = held_out_history(Path(folder))
    side, held_ids, from_history, lost = kept_sides(Path(folder), uploads.video_ids, history)
    rows = uploads.rows
    held = np.isin(np.asarray(cat.ids, dtype=object), list(held_ids))
    held[np.setdiff1d(np.arange(len(cat)), rows[:, 1])] = False  # those the pairs name
    side_of_row = side[rows[:, 0]]
    # never held: what videos keeping their split name (not last week's new-music queries: their own tracks)
    kept = np.zeros(len(cat), bool)
    kept[rows[(side_of_row >= 0) & (side_of_row != NEW_MUSIC_SIDE), 1]] = True
    return _Previous(folder, side, from_history, history, held, kept, lost)


def _held_out(uploads: _Uploads, n_tracks: int, config: BuildConfig, previous: _Previous | None,
              warn: Callable[[str], None] | None) -> np.ndarray:
    """bool [n_tracks]: the tracks held out of training (:func:`held_out_tracks`). A rebuild holds out none when
    only one is left, and warns of what it holds out otherwise than its earlier dataset did or than the share asks."""
    rows = uploads.rows
    before = (None, None) if previous is None else (previous.held, previous.kept)
    held = held_out_tracks(rows, uploads.row_of_pair, uploads.pair_time, n_tracks, config, *before)
    lone = previous is not None and held.sum() == 1  # ranking among one track measures nothing
    if previous is not None and warn is not None:
        if not config.new_music_share and previous.held.any():
            warn(f"{previous.folder} held {int(previous.held.sum())} track(s) out of training as new music, and "
                 "this build holds none (no new_music_share): they are no longer held out (an upload of one can be "
                 "trained on), and its new-music uploads are test's; give the share again to keep them out")
        released = int((previous.held & previous.kept).sum())
        if config.new_music_share and released:
            warn(f"{previous.folder} held out {released} track(s) that videos keeping their split now name: they "
                 "are not held out now (their earlier new-music uploads are test's)")
        asked = int(round(config.new_music_share * len(np.unique(rows[:, 1]))))
        if lone:
            warn("new music: only 1 track could be held out of training (new music needs at least 2): none is, "
                 "and this build has no test_new_music")
        elif config.new_music_share and held.sum() < asked:
            warn(f"new music: {int(held.sum())} of the {asked} tracks the share {config.new_music_share} asks for "
                 f"are held out of training; every other track the pairs name is named by a video that keeps its "
                 f"split of {previous.folder}")
    if lone:
        held[:] = False
    return held


def _new_music_videos(rows: np.ndarray, held: np.ndarray, n_videos: int,
                      warn: Callable[[str], None] | None) -> tuple[np.ndarray, int]:
    """bool [n_videos]: the videos that chose a held-out track (test_new_music's queries), and how many pairs of
    theirs name another track (in no split), warned of."""
    new_music_video = np.zeros(n_videos, bool)
    new_music_video[rows[held[rows[:, 1]], 0]] = True
    other_track = int((new_music_video[rows[:, 0]] & ~held[rows[:, 1]]).sum())
    if other_track and warn is not None:
        warn(f"{other_track} pair(s) of videos that also chose a held-out track name a track that is not held out: "
             "in no split (their videos are test_new_music's queries, ranked among the held-out tracks)")
    return new_music_video, other_track


def _video_sides(uploads: _Uploads, new_music_video: np.ndarray, held: np.ndarray, config: BuildConfig,
                 previous: _Previous | None,
                 warn: Callable[[str], None] | None) -> tuple[np.ndarray, int, dict | None]:
    """Each video's split (an index of :data:`SIDES`, -1 for test_new_music's), how many were split, the record of
    the splits kept (:func:`kept_record`; None without ``previous``): its videos keep their side, and the others are
    split by :func:`split_videos`, by time when every pair has one (a video's time is its first pair's)."""
    rows = uploads.rows
    vids_in = np.unique(rows[~new_music_video[rows[:, 0]], 0])
    if held.any() and not len(vids_in):
        raise DatasetFieldError(f"{{new_music_share}} {config.new_music_share}: every video with pairs chose a "
                                "held-out track, so none is left for training; give a smaller share",
                                "new_music_share")
    vtime = None
    if uploads.pair_time is not None:
        first = np.full(len(uploads.video_ids), np.inf)
        np.minimum.at(first, rows[uploads.row_of_pair.reshape(-1), 0], uploads.pair_time)
        vtime = first[vids_in]
    split_of_video = np.full(len(uploads.video_ids), -1, np.int64)
    kept = None
    if previous is None:
        split_of_video[vids_in] = split_videos(vtime, len(vids_in), config)
    else:
        sides = np.minimum(previous.side[vids_in], SIDES.index("test"))  # last week's new music no longer held: test
        kept = kept_record(Path(previous.folder), sides, int(previous.from_history[vids_in].sum()))
        if held.any():
            kept["new_music_held_again"] = int((held & previous.held).sum())
        new = sides < 0
        sides[new] = split_videos(vtime[new] if vtime is not None else None, int(new.sum()), config)
        split_of_video[vids_in] = sides
        if kept["new"] == len(vids_in) and warn is not None:
            warn(f"{previous.folder}: none of this build's {len(vids_in)} videos with pairs is in a split of that "
                 "dataset (another app's or world's ids?); every video is split as new")
    return split_of_video, len(vids_in), kept


def _choose_splits(uploads: _Uploads, new_music_video: np.ndarray, held: np.ndarray, config: BuildConfig,
                   previous: _Previous | None,
                   warn: Callable[[str], None] | None) -> tuple[dict[str, np.ndarray], dict | None]:
    """The rows of train, val and test (by video: :func:`_video_sides`) and of test_new_music (those choosing a
    held-out track), and the record of the splits kept; warns of what the splits leave mixed or empty."""
    rows = uploads.rows
    split_of_video, n_split, kept = _video_sides(uploads, new_music_video, held, config, previous, warn)
    which = split_of_video[rows[:, 0]]
    splits = {name: rows[which == s] for s, name in enumerate(SIDES)}
    if held.any():
        splits["test_new_music"] = rows[held[rows[:, 1]]]
        if len(splits["test_new_music"]) > len(splits["train"]) and warn is not None:
            warn(f"new music: test_new_music has {len(splits['test_new_music'])} rows, train {len(splits['train'])}: "
                 f"holding out {int(held.sum())} of the {len(np.unique(rows[:, 1]))} tracks the pairs name leaves "
                 "less to train on than to test new music with; give a smaller new_music_share")
    if warn is not None and uploads.pair_time is not None and previous is None:  # kept splits: not by time alone
        earliest = np.full(len(rows), np.inf)  # a repeated row's first time
        np.minimum.at(earliest, uploads.row_of_pair.reshape(-1), uploads.pair_time)
        note = late_training_pairs(which, earliest)
        if note is not None:
            warn(note)
    empty = _empty_splits_warning(splits, config, n_split, kept, previous)
    if empty is not None and warn is not None:
        warn(empty)
    return splits, kept


def _empty_splits_warning(splits: dict[str, np.ndarray], config: BuildConfig, n_split: int, kept: dict | None,
                          previous: _Previous | None) -> str | None:
    """The warning of an empty val or test split: why (a share of 0, or too few of the ``n_split`` videos split),
    and what it means (:data:`CONSEQUENCES`). None when neither is empty."""
    empty = [s for s in ("val", "test") if not len(splits[s])]
    if not empty:
        return None
    asked = all(getattr(config, f"{s}_share") == 0 for s in empty)
    return (f"the {' and '.join(empty)} split{'s are' if len(empty) > 1 else ' is'} empty"
            + (" (a share of 0)" if asked else
               f": only {n_split} video(s){' outside test_new_music' if 'test_new_music' in splits else ''} have "
               "usable pairs (a split with a share above 0 gets one from 3 on)"
               if kept is None else f": only {kept['new']} video(s) with usable pairs are new since "
               f"{previous.folder} (a split with a share above 0 gets one of them from 3 on)")
            + "".join(CONSEQUENCES[s] for s in empty))


#: what an empty val or test split of a built dataset means for what is done with it
CONSEQUENCES = {"val": "; without a val split, training runs every epoch (no early stopping) and tune cannot "
                       "choose settings",
                "test": "; without a test split, evaluate has no test queries to rank (test_new_music, when it "
                        "has queries, or a split of your own rows still can be)"}


@dataclass(frozen=True)
class _Professional:
    """A dataset's professional videos (after its uploads, by id) and their split pgc."""

    sel: np.ndarray  # each video's position in _Inputs.vid_ids
    ids: list[str]
    rows: np.ndarray  # the split pgc: int64 [n, 3] (video, track, -1), each distinct row once
    file_rows: int  # the rows of the professional CSV
    dropped: dict[str, int]  # the professional pairs dropped, by why


def _professional_split(inputs: _Inputs, usable: _Usable, n_uploads: int, held: np.ndarray, config: BuildConfig,
                        warn: Callable[[str], None] | None) -> _Professional:
    """The professional videos and their split pgc, without the pairs naming a held-out track (warned of; refused
    when none is left)."""
    pro, pro_keep = usable.pro, usable.pro_keep
    chosen = {pro.video[i] for i in pro_keep}
    sel = np.array([i for i, v in enumerate(inputs.vid_ids) if v in chosen], np.int64)
    ids = [inputs.vid_ids[i] for i in sel]
    ppos = {v: n_uploads + k for k, v in enumerate(ids)}
    rows = np.unique(np.array([[ppos[pro.video[i]], inputs.tpos[pro.track[i]], -1] for i in pro_keep],
                              np.int64).reshape(-1, 3), axis=0)
    dropped = {**usable.pro_dropped, "duplicate": len(pro_keep) - len(rows)}
    if held.any():  # the teacher trains on none of the held-out tracks either
        dropped["new_music"] = int(held[rows[:, 1]].sum())
        rows = rows[~held[rows[:, 1]]]
        if not len(rows):
            raise DatasetFieldError(f"{{new_music_share}} {config.new_music_share}: every professional pair of "
                                    f"{inputs.professional_csv} names a held-out track, so the teacher would have "
                                    "nothing to train on; give a smaller share", "new_music_share")
        if dropped["new_music"] and warn is not None:
            warn(f"{inputs.professional_csv}: {dropped['new_music']} professional pair(s) name a held-out track "
                 "and were left out of the teacher's split (the teacher trains on no new music either)")
    return _Professional(sel, ids, rows, len(pro.video), dropped)


def _frozen_negatives(splits: dict[str, np.ndarray], held: np.ndarray, config: BuildConfig, video_ids: list[str],
                      track_ids: list[str]) -> dict[str, np.ndarray]:
    """Up to ``config.negatives`` negatives per row of val, test and test_new_music (:func:`negatives_by_id`),
    among the tracks held out for test_new_music, else among the others: each row's from the seed, its video's
    and track's ids and the candidates' ids alone, so a query ``--keep-splits-of`` keeps in its split keeps its
    negatives next week (drawn row after row from one generator, it got others, and its sampled figures could not
    be set beside last week's)."""
    track_keys = id_keys(track_ids, f"bgmrec negatives {config.seed}")
    negatives = {}
    for s in ("val", "test", "test_new_music"):
        if s in splits:
            rows = splits[s]
            candidates = np.flatnonzero(held if s == "test_new_music" else ~held)
            k = min(config.negatives, len(candidates) - 1)
            query_keys = id_keys([f"{video_ids[v]}\0{track_ids[t]}" for v, t in rows[:, :2].tolist()],
                                 f"bgmrec queries {config.seed}")
            negatives[s] = negatives_by_id(rows[:, 1], query_keys, candidates, track_keys, k,
                                           exclude=other_positives(rows))
    return negatives


def _provenance(inputs: _Inputs, config: BuildConfig, splits: dict[str, np.ndarray], kept: dict | None,
                dropped: dict[str, int], pro: _Professional | None, n_videos: int, rows: np.ndarray) -> dict:
    """The dataset's provenance: the config, how it was split, its inputs and their hashes, and the pairs, videos
    (``n_videos`` in the dataset) and tracks (``rows`` naming those used) it used and left out."""
    videos, cat, pairs = inputs.videos, inputs.cat, inputs.pairs
    return {
        "builder": "bgmrec.data.build",
        "config": {k: v for k, v in config.__dict__.items()  # new_music_share 0: as before it existed
                   if k != "new_music_share" or v},
        "split_by": "time" if pairs.time is not None else "random",
        **({"splits_kept_from": kept} if kept is not None else {}),
        "inputs": {"videos": str(inputs.videos_dir), "videos_hash": videos.manifest.get("content_hash"),
                   "music": str(inputs.music_dir), "music_hash": cat.manifest.get("content_hash"),
                   "pairs": str(inputs.pairs_csv), "pairs_sha256": sha256_file(Path(inputs.pairs_csv))},
        "pairs": {"rows": len(pairs.video), "used": sum(len(v) for k, v in splits.items() if k != "pgc"),
                  "dropped": dropped},  # used: the uploads' rows in a split
        **({"professional": {"file": str(inputs.professional_csv), "sha256": sha256_file(Path(inputs.professional_csv)),
                             "rows": pro.file_rows, "used": len(splits["pgc"]), "dropped": pro.dropped}}
           if pro is not None else {}),
        "videos_without_pairs": len(inputs.vid_ids) - n_videos,  # left out of the dataset
        "tracks_without_pairs": len(cat) - len(np.unique(rows[:, 1])),  # kept: candidates to rank
        "extractors": {"videos": videos.manifest.get("extractors"), "music": cat.manifest.get("extractors")},
        "settings": {"videos": videos.manifest.get("settings"), "music": cat.manifest.get("settings")},
    }


def _write_dataset(out: Path, fields: dict, videos: VideoFeatures, rows: np.ndarray, uploaders: list[str],
                   warn: Callable[[str], None] | None, history: HeldOutHistory) -> Dataset:
    """Write at ``out`` the dataset of ``fields`` (all but the videos' features, copied from ``videos``' ``rows`` a
    block at a time), ``uploaders.json`` and the held-out ``history`` (:data:`HELD_OUT_HISTORY`); warns when it
    replaces a dataset of other splits or labels."""
    before = _fingerprints(Path(out))
    check_replaceable(Path(out))  # before the rows are copied beside it (a gigabyte at 150k videos)
    with scratch_folder(Path(out)) as scratch:  # the features' rows copied in blocks there, then moved into place
        written = {f"features/video_{name}.npy": scratch / f"video_{name}.npy" for name in ("visual", "text")}
        features = {name: save_npy_rows(written[f"features/video_{name}.npy"], getattr(videos, name), rows)
                    for name in ("visual", "text")}
        ds = Dataset(**fields, video_visual=features["visual"], video_text=features["text"])
        save_dataset(ds, Path(out), extra_json={"uploaders.json": {"ids": uploaders},
                                                HELD_OUT_HISTORY: {"videos": dict(sorted(history.videos.items())),
                                                                   "tracks": history.tracks}},
                     written=written)
    if before is not None and before != _fingerprints(Path(out)) and warn is not None:
        warn(f"{out}: the dataset this build replaced had other splits, negatives, labels or manifest (other inputs "
             "or settings, or a bgmrec before 2026-11-23, which kept the folders' row order where videos and tracks "
             "are now in id order); runs trained on it will say they were trained on other data")
    return ds


def build_dataset(videos_dir: Path, music_dir: Path, pairs_csv: Path, out: Path,
                  config: BuildConfig | None = None, warn: Callable[[str], None] | None = None,
                  professional_csv: Path | None = None, keep_splits_of: Path | None = None) -> Dataset:
    """Join extracted videos, a catalogue and a pairs CSV into a dataset folder at ``out``.

    ``warn`` is told (one line each) when the val or test split is empty (a share of 0, or too few videos with
    pairs), when some rows of the pairs' time column are empty (the split is then random, not by time), and
    of each kind of pair row dropped (a video or track whose extraction failed, an unknown video, an unknown
    track, a duplicate): how many, and the first one's line and ids. The provenance counts the extracted
    videos without a usable pair (left out) and the catalogue tracks no used pair names (kept: candidates to
    rank). ``professional_csv`` names the professional music videos and their tracks: the split ``pgc`` (see
    the module docstring). ``keep_splits_of``, an earlier dataset's folder: its videos keep their split and only
    the others are split (the module docstring); ``warn`` is told when none of its videos is in this build.
    """
    config = config or BuildConfig()
    inputs = _read_inputs(videos_dir, music_dir, pairs_csv, professional_csv, warn)
    usable = _usable_pairs(inputs, warn)
    uploads = _upload_rows(inputs, usable.keep, warn)
    genres, track_genre = _genres(inputs, warn)
    # new music: tracks held out of training, and the uploads that chose them
    previous = None if keep_splits_of is None else _previous_split(keep_splits_of, uploads, inputs.cat)
    held = _held_out(uploads, len(inputs.cat), config, previous, warn)
    new_music_video, other_track = _new_music_videos(uploads.rows, held, len(uploads.video_ids), warn)
    splits, kept = _choose_splits(uploads, new_music_video, held, config, previous, warn)
    pro, pro_ids, sel = None, [], uploads.sel  # sel: the dataset's videos' positions in inputs.vid_ids
    if usable.pro is not None:
        pro = _professional_split(inputs, usable, len(uploads.video_ids), held, config, warn)
        splits["pgc"], pro_ids, sel = pro.rows, pro.ids, np.concatenate([uploads.sel, pro.sel])
    dropped = {**usable.dropped, "duplicate": uploads.repeated}
    if held.any():  # a new-music video's pairs with other tracks: in no split (its video is in test_new_music)
        dropped["new_music_video_other_track"] = other_track
    train = splits["train"]
    fields = dict(
        genres=genres,
        video_ids=uploads.video_ids + pro_ids,
        video_uploader=np.concatenate([uploads.video_uploader, np.full(len(pro_ids), -1, np.int64)]),
        video_source=["ugc"] * len(uploads.video_ids) + ["pgc"] * len(pro_ids),
        track_ids=list(inputs.cat.ids),
        track_genre=track_genre,
        track_title=list(inputs.cat.title),
        track_artist=list(inputs.cat.artist),
        track_new=held,
        uploader_pref=uploader_preferences(train[:, 2], track_genre[train[:, 1]], len(uploads.uploaders),
                                           len(genres), config.alpha),
        video_text_mask=np.asarray(inputs.videos.text_mask, bool)[inputs.stored[sel]],
        music=inputs.cat.features,
        splits=splits,
        split_info={s: SPLIT_INFO[s] for s in splits},
        negatives=_frozen_negatives(splits, held, config, uploads.video_ids + pro_ids, list(inputs.cat.ids)),
        provenance=_provenance(inputs, config, splits, kept, dropped, pro, len(sel), uploads.rows),
    )
    return _write_dataset(out, fields, inputs.videos, inputs.stored[sel], uploads.uploaders, warn,
                          _held_out_now(fields, previous, kept, warn))


def _held_out_now(fields: dict, previous: _Previous | None, kept: dict | None,
                  warn: Callable[[str], None] | None) -> HeldOutHistory:
    """The history a build writes (:data:`HELD_OUT_HISTORY`): the earlier dataset's (unless none of its videos is in
    this build: another app's or world's), less the videos this build places anywhere, with this build's held-out
    videos and tracks. Last week's held-out videos absent from this build (neither an upload with a usable pair
    nor a professional video) are warned of and counted in ``kept`` (``held_out_missing``)."""
    sides = split_sides(fields["video_ids"], fields["splits"], fields["split_info"])
    ours = previous is not None and kept is not None and any(kept["kept"].values())  # not another app's or world's
    carried = previous.history if ours else HeldOutHistory({}, [])
    videos = {v: side for v, side in carried.videos.items() if v not in sides}  # a video placed now: as placed now
    videos.update({v: side for v, side in sides.items() if side > 0})
    tracks = sorted(set(carried.tracks) | {t for t, new in zip(fields["track_ids"], fields["track_new"], strict=True)
                                           if new})
    lost = [v for v in previous.lost if v not in sides] if ours else []
    if lost:  # a withdrawn track or failed extraction shrank last week's test: its figures and this week's differ
        kept["held_out_missing"] = len(lost)  # the provenance's splits_kept_from (the same dict)
        if warn is not None:
            warn(f"{previous.folder}: {len(lost)} of its held-out (val, test, test_new_music) videos have no usable "
                 f"upload in this build (e.g. {lost[0]!r}: its track withdrawn, its extraction failed?), so its "
                 "figures and this build's are not on the same queries; they keep their side if they come back")
    return HeldOutHistory(videos, tracks)


def _fingerprints(folder: Path) -> tuple[str, str] | None:
    """The splits' and labels' fingerprints (:mod:`bgmrec.data.dataset`) of the dataset in ``folder``, None when it
    holds none, or one too damaged to read (replaced without a word: no run can have used it as it is)."""
    try:
        return (dataset_fingerprint(folder), labels_fingerprint(folder)) if (folder / "manifest.json").is_file() \
            else None
    except (DatasetError, OSError):
        return None

