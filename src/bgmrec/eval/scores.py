"""Scores of a model computed outside bgmrec (another codebase's), evaluated by bgmrec's protocol.

``bgmrec evaluate --run SCORES`` and ``bgmrec compare --run/--baseline SCORES`` take a score file where they
take a run folder: the file's scores are ranked as a trained model's are (the split's candidate tracks, its
frozen negatives, the same seeded order of ties, every metric and the paired tests), so that a method built
elsewhere is compared with bgmrec's models under one protocol, not a re-implementation of it. Two forms,
both read by ``np.load(..., allow_pickle=False)``:

- ``.npz`` (``np.savez``): ``scores`` [n, m], real numbers, the higher the better; ``video_ids`` [n] and
  ``track_ids`` [m], strings (``np.array(ids, dtype=str)``), the dataset's ``videos.csv`` and ``tracks.csv``
  ids; optionally ``data_fingerprint``, the dataset's (``bgmrec describe`` prints it), which is then checked.
  Rows may be any of the dataset's videos, in any order (a split's query videos suffice: a 150k-video
  world's full matrix is 1.8 GB of float32, and an .npz is read whole); the columns are every track of the
  dataset, in any order.
- ``.npy``: the full matrix [videos, tracks] in the dataset's row order of ``videos.csv`` and ``tracks.csv``
  (memory-mapped, not read whole).

Without a fingerprint only the ids (or the .npy's shape) are checked, and simulated worlds of one scale
share their ids: reading the file says so (:class:`ScoreFileWarning`, as for float16 scores and rows that tie
every track). Integer scores must lie within 2**53 (float64 holds them exactly; larger ones would tie). The
figures' ``model`` is ``score-file`` and their label the file's name.

Ranked lists alone (top-K, no scores) cannot be evaluated: the full-catalogue ranks of positives outside the
list, and so the median rank, MRR and the sampled protocol, would be made up.
"""

from __future__ import annotations

import unicodedata
import warnings
import zipfile
from pathlib import Path

import numpy as np

from bgmrec.data.dataset import Dataset, DatasetError, dataset_fingerprint

SCORE_SUFFIXES = (".npy", ".npz")  # the files evaluate and compare read as scores, not as run folders
NPZ_FIELDS = ("scores", "video_ids", "track_ids")  # what an .npz score file holds
FINGERPRINT_FIELD = "data_fingerprint"  # what an .npz may hold besides: the dataset's fingerprint, then checked
FINITE_CHECK_ROWS = 4096  # rows checked for non-finite scores at once (a memory-mapped matrix is read in parts)
EXACT_INTEGERS = 2**53  # integer scores float64 holds exactly


def is_score_file(path: Path) -> bool:
    """Whether ``path`` names a score file (ending in .npy or .npz, not a folder), not a run folder."""
    return Path(path).suffix.lower() in SCORE_SUFFIXES and not Path(path).is_dir()


class ScoreFileWarning(UserWarning):
    """A score file that may not measure what its figures say: no dataset fingerprint to check, float16 scores,
    rows that tie every track (:attr:`PrecomputedScores.notes`). The commands print it as one ``warning: ...``
    line and keep it in their JSON's ``warnings``."""


class PrecomputedScores:
    """Scores computed elsewhere for a dataset's videos against all its tracks, as a scorer that
    :func:`~bgmrec.eval.protocol.evaluate` and :func:`~bgmrec.eval.protocol.compare` read (through
    :meth:`video_scores`) where they encode a model's videos and tracks. Made by :func:`load_scores`."""

    name = "score-file"  # the figures' "model": a file, whatever it is called (an oracle.npz is no oracle)
    inference_mode = None  # one way of scoring: the file's

    def __init__(self, scores: np.ndarray, row_of_video: np.ndarray, column_of_track: np.ndarray, source: Path,
                 video_ids: list[str], track_ids: list[str], notes: list[str]) -> None:
        self.scores = scores  # [n, m] as given (memory-mapped for an .npy)
        self.row_of_video = row_of_video  # int64 [dataset videos]: the row of each video, -1 for none
        self.column_of_track = column_of_track  # int64 [dataset tracks]: the column of each track
        self.label = source.stem  # the name of its figures: the file's, without its suffix
        self.source = source  # the score file
        self.notes = notes  # what may make its figures mean less (ScoreFileWarning, said when it was read)
        self._ids = (video_ids, track_ids)  # the dataset's, to refuse another's in check_dataset

    def check_dataset(self, ds: Dataset) -> None:
        """Refuse a dataset of other videos or tracks than the one the file was read against."""
        if (list(ds.video_ids), list(ds.track_ids)) != (self._ids[0], self._ids[1]):
            raise DatasetError(f"{self.source}: its scores were read against another dataset's videos and tracks")

    def video_scores(self, videos: np.ndarray, tracks: np.ndarray) -> np.ndarray:
        """Scores (float64) of dataset video indices ``videos`` [n] against dataset track indices ``tracks``, [K]
        for every video alike or [n, K] each its own; a :class:`DatasetError` naming the first video the file has
        no row for."""
        rows = self.row_of_video[np.asarray(videos, np.int64)]
        missing = np.flatnonzero(rows < 0)
        if missing.size:
            first = self._ids[0][int(videos[missing[0]])]
            raise DatasetError(f"{self.source}: no scores for video {first!r} (and {missing.size - 1} more of "
                               f"these {len(rows)} queries); give a row for every query video of the split")
        columns = self.column_of_track[tracks]
        given = np.asarray(self.scores[rows])
        picked = given[:, columns] if columns.ndim == 1 else np.take_along_axis(given, columns, axis=1)
        return picked.astype(np.float64)  # exact for float32 and integers within EXACT_INTEGERS


def load_scores(path: Path, ds: Dataset) -> PrecomputedScores:
    """The score file ``path`` (module docstring: .npz with ids, or .npy in the dataset's order) checked against
    ``ds``: a :class:`DatasetError` naming the file, the field and what was expected for a wrong shape, a
    type that is not real numbers, ids unknown to ``ds``, repeated or not text, tracks missing, a score that
    is not finite (or an integer beyond float64's exact range), a recorded fingerprint not ``ds``'s, an .npz
    field it does not know, or a file too large to read. A :class:`ScoreFileWarning` for each of its ``notes``."""
    path = Path(path)
    unchecked = None
    if path.suffix.lower() == ".npy":
        scores = _read(path, lambda: np.load(path, mmap_mode="r", allow_pickle=False))
        expected = [ds.n_videos, ds.n_tracks]
        if scores.ndim != 2 or list(scores.shape) != expected:
            raise DatasetError(f"{path}: expected scores of shape {expected} (every video of videos.csv by every "
                               f"track of tracks.csv, in their order), found {list(scores.shape)}; an .npz with "
                               f"{', '.join(NPZ_FIELDS)} may hold some videos only, in any order")
        rows, cols = np.arange(ds.n_videos, dtype=np.int64), np.arange(ds.n_tracks, dtype=np.int64)
        unchecked = "an .npy score file records no dataset: only its shape was checked"
    elif path.suffix.lower() == ".npz":
        scores, rows, cols, recorded = _read_npz(path, ds)
        if recorded is None:
            unchecked = f"it records no {FINGERPRINT_FIELD}: only its ids were checked"
        elif ds.root is None:
            unchecked = f"its {FINGERPRINT_FIELD} was not compared: the dataset was not loaded from a folder"
        elif recorded.lower() != dataset_fingerprint(ds.root):
            raise DatasetError(f"{path}: {FINGERPRINT_FIELD}: {recorded}, but this dataset's is "
                               f"{dataset_fingerprint(ds.root)} (bgmrec describe): the scores are of another dataset")
    else:
        raise DatasetError(f"{path}: a score file is .npy or .npz, not {path.suffix or 'a file without suffix'}")
    if scores.dtype.kind not in "fiu":
        raise DatasetError(f"{path}: scores: expected real numbers (float or int), found dtype {scores.dtype}")
    tied = _check_values(path, scores, ds, rows, cols)
    notes = [f"nothing says the score file {path} holds scores of {ds.root or 'this dataset'} ({unchecked}; save an "
             ".npz with data_fingerprint, which bgmrec describe prints, to have it checked)"] if unchecked else []
    if scores.dtype == np.float16:
        notes.append(f"{path}: float16 scores keep about 3 significant digits, so close tracks tie and are ranked in "
                     "the protocol's random order; save float32")
    if tied:
        notes.append(f"{path}: {tied:,} of its {len(scores):,} rows score every track alike (their rankings are the "
                     "protocol's random order, chance level)")
    for note in notes:
        warnings.warn(note, ScoreFileWarning, stacklevel=2)
    return PrecomputedScores(scores, rows, cols, path, list(ds.video_ids), list(ds.track_ids), notes)


MAGIC = {".npy": b"\x93NUMPY", ".npz": b"PK"}  # how each form's file begins (NumPy's format; a zip archive)


def _read(path: Path, load):
    try:
        with open(path, "rb") as f:
            head = f.read(6)
        magic = MAGIC[path.suffix.lower()]
        if not head.startswith(magic):
            raise DatasetError(f"{path}: not a{'n' if path.suffix.lower() == '.npz' else ''} {path.suffix.lower()} "
                               f"file (it does not begin as one); save scores with "
                               f"{'np.savez' if path.suffix.lower() == '.npz' else 'np.save'}")
        return load()
    except DatasetError:
        raise
    except MemoryError:
        raise DatasetError(f"{path}: too large to read into memory; give only the rows of the split's query "
                           "videos (an .npz), or a full .npy, which is memory-mapped") from None
    except ValueError as e:  # object arrays (pickles), a header numpy cannot parse, a file cut short
        hint = (": it holds an array of Python objects, which is not unpickled; save ids as strings (np.array(ids, "
                "dtype=str)) and scores as numbers"
                if "allow_pickle" in str(e) else ": the file is shorter than its header says (cut short?)"
                if "mmap length" in str(e) else "")
        raise DatasetError(f"{path}: not a score file numpy reads without pickle ({e}){hint}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise DatasetError(f"{path}: cannot be read as a NumPy file ({e})") from None


def _npz_shape(z, name: str) -> tuple[int, ...]:
    """The shape an .npz member's header declares, read without its data."""
    with z.zip.open(f"{name}.npy") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return read(f)[0]


def _read_npz(path: Path, ds: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, str | None]:
    def load():
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in NPZ_FIELDS if k not in z.files]
            if missing:
                raise DatasetError(f"{path}: missing {', '.join(missing)}; an .npz score file holds "
                                   f"{', '.join(NPZ_FIELDS)} (found {', '.join(z.files) or 'nothing'})")
            unknown = [k for k in z.files if k not in (*NPZ_FIELDS, FINGERPRINT_FIELD)]
            if unknown:  # a features_fingerprint or a split given here would be believed checked
                raise DatasetError(f"{path}: unknown field(s) {', '.join(unknown)}; an .npz score file holds "
                                   f"{', '.join(NPZ_FIELDS)} and optionally {FINGERPRINT_FIELD}, which alone is "
                                   "checked")
            video_ids, track_ids = z["video_ids"], z["track_ids"]
            recorded = _fingerprint(path, z[FINGERPRINT_FIELD]) if FINGERPRINT_FIELD in z.files else None
            for field, ids, table in (("video_ids", video_ids, "videos.csv"), ("track_ids", track_ids, "tracks.csv")):
                _check_ids(path, field, ids, table)
            expected, found = (len(video_ids), len(track_ids)), _npz_shape(z, "scores")
            if found != expected:  # checked before the data is read: a declared 10**6 x 10**6 is not allocated
                raise DatasetError(f"{path}: scores: expected shape {list(expected)} (video_ids by track_ids), "
                                   f"found {list(found)}")
            return z["scores"], video_ids, track_ids, recorded

    scores, video_ids, track_ids, recorded = _read(path, load)
    rows_of = _positions(path, "video_ids", video_ids, ds.video_ids, "videos.csv")
    cols_of = _positions(path, "track_ids", track_ids, ds.track_ids, "tracks.csv")
    if len(track_ids) != ds.n_tracks:
        absent = sorted(set(ds.track_ids) - {ds.track_ids[i] for i in cols_of})
        raise DatasetError(f"{path}: track_ids: {len(absent)} of the dataset's {ds.n_tracks} tracks have no "
                           f"column (first {absent[0]!r}); score every track of tracks.csv")
    row_of_video = np.full(ds.n_videos, -1, np.int64)
    row_of_video[rows_of] = np.arange(len(rows_of))
    column_of_track = np.empty(ds.n_tracks, np.int64)
    column_of_track[cols_of] = np.arange(len(cols_of))
    return scores, row_of_video, column_of_track, recorded


def _fingerprint(path: Path, value: np.ndarray) -> str:
    """An .npz's recorded dataset fingerprint as text (a string, or bytes of UTF-8, saved alone or in one cell)."""
    item = value.reshape(-1)[0].item() if value.size == 1 and value.dtype.kind in "US" else None
    if isinstance(item, bytes):
        item = item.decode("utf-8", "replace")
    if not isinstance(item, str):
        raise DatasetError(f"{path}: {FINGERPRINT_FIELD}: expected the dataset's fingerprint as one string (bgmrec "
                           f"describe prints it), found dtype {value.dtype} and shape {list(value.shape)}")
    return item.strip()


def _check_ids(path: Path, field: str, ids: np.ndarray, table: str) -> None:
    if ids.ndim != 1 or ids.dtype.kind not in "US":
        raise DatasetError(f"{path}: {field}: expected a 1-D array of string ids (as {table}'s id column), found "
                           f"dtype {ids.dtype} and shape {list(ids.shape)}")


def _positions(path: Path, field: str, ids: np.ndarray, known: list[str], table: str) -> np.ndarray:
    """The dataset positions of the score file's ids of ``field`` (1-D text, as :func:`_check_ids` checked)."""
    try:
        given = [i.decode() if isinstance(i, bytes) else str(i) for i in ids.tolist()]
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: {field}: an id is bytes that are not UTF-8 text ({e.object[:20]!r}); save ids "
                           "as strings (np.array(ids, dtype=str))") from None
    position = {name: i for i, name in enumerate(known)}
    unknown = [i for i in given if i not in position]
    if unknown:
        same_text = {unicodedata.normalize("NFC", name): name for name in known}
        written = same_text.get(unicodedata.normalize("NFC", unknown[0]))
        hint = (f"; {unknown[0]!r} is {written!r} written with other Unicode code points (NFC/NFD): write ids as "
                f"{table} does" if written is not None else f"; the dataset's first is {known[0]!r}")
        raise DatasetError(f"{path}: {field}: {len(unknown)} id(s) not in the dataset's {table} (first "
                           f"{unknown[0]!r}{hint})")
    if len(set(given)) != len(given):
        seen: set[str] = set()
        twice = next(i for i in given if i in seen or seen.add(i))
        raise DatasetError(f"{path}: {field}: {twice!r} is listed more than once")
    return np.array([position[i] for i in given], np.int64)


def _check_values(path: Path, scores: np.ndarray, ds: Dataset, rows: np.ndarray, cols: np.ndarray) -> int:
    """Every score finite, and an integer one within :data:`EXACT_INTEGERS`: else the first named by its ids.
    Returns how many rows score every track alike."""
    video_of_row = np.empty(len(scores), np.int64)
    video_of_row[rows[rows >= 0]] = np.flatnonzero(rows >= 0)
    track_of_column = np.empty(scores.shape[1], np.int64)
    track_of_column[cols] = np.arange(len(cols))
    tied = 0
    for start in range(0, len(scores), FINITE_CHECK_ROWS):
        part = np.asarray(scores[start:start + FINITE_CHECK_ROWS])
        tied += int((part.max(axis=1) == part.min(axis=1)).sum()) if part.size else 0
        if part.dtype.kind == "f":
            bad, must = np.argwhere(~np.isfinite(part)), "be finite"
        else:  # compared as integers: cast to float64 first, 2**53 + 1 would pass as 2**53
            beyond = part > EXACT_INTEGERS if part.dtype.kind == "u" else (part > EXACT_INTEGERS) | (
                part < -EXACT_INTEGERS)
            bad, must = np.argwhere(beyond), "lie within 2**53 (integers float64 holds exactly; larger ones would tie)"
        if len(bad):
            r, c = int(bad[0, 0]) + start, int(bad[0, 1])
            raise DatasetError(f"{path}: scores: {scores[r, c]} for video {ds.video_ids[video_of_row[r]]!r} and "
                               f"track {ds.track_ids[track_of_column[c]]!r} (row {r}, column {c}); every score "
                               f"must {must}")
    return tied
