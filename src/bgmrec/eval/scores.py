"""Scores of a model computed outside bgmrec (another codebase's), evaluated by bgmrec's protocol.

``bgmrec evaluate --run SCORES`` and ``bgmrec compare --run/--baseline SCORES`` take a score file where they
take a run folder: the file's scores are ranked as a trained model's are (the split's candidate tracks, its
frozen negatives, the same seeded order of ties, every metric and the paired tests), so that a method built
elsewhere is compared with bgmrec's models under one protocol, not a re-implementation of it. Two forms,
both read by ``np.load(..., allow_pickle=False)``:

- ``.npz`` (``np.savez``): ``scores`` [n, m], real numbers, the higher the better; ``video_ids`` [n] and
  ``track_ids`` [m], strings (``np.array(ids, dtype=str)``), the dataset's ``videos.csv`` and ``tracks.csv``
  ids. Rows may be any of the dataset's videos, in any order (a split's query videos suffice: a 150k-video
  world's full matrix is 1.8 GB of float32); the columns are every track of the dataset, in any order.
- ``.npy``: the full matrix [videos, tracks] in the dataset's row order of ``videos.csv`` and ``tracks.csv``
  (memory-mapped, not read whole).

Ranked lists alone (top-K, no scores) cannot be evaluated: the full-catalogue ranks of positives outside the
list, and so the median rank, MRR and the sampled protocol, would be made up.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from bgmrec.data.dataset import Dataset, DatasetError

SCORE_SUFFIXES = (".npy", ".npz")  # the files evaluate and compare read as scores, not as run folders
NPZ_FIELDS = ("scores", "video_ids", "track_ids")  # what an .npz score file holds
FINITE_CHECK_ROWS = 4096  # rows checked for non-finite scores at once (a memory-mapped matrix is read in parts)


def is_score_file(path: Path) -> bool:
    """Whether ``path`` names a score file (ending in .npy or .npz, not a folder), not a run folder."""
    return Path(path).suffix.lower() in SCORE_SUFFIXES and not Path(path).is_dir()


class PrecomputedScores:
    """Scores computed elsewhere for a dataset's videos against all its tracks, as a scorer that
    :func:`~bgmrec.eval.protocol.evaluate` and :func:`~bgmrec.eval.protocol.compare` read (through
    :meth:`video_scores`) where they encode a model's videos and tracks. Made by :func:`load_scores`."""

    inference_mode = None  # one way of scoring: the file's

    def __init__(self, scores: np.ndarray, row_of_video: np.ndarray, column_of_track: np.ndarray, name: str,
                 source: Path, video_ids: list[str], track_ids: list[str]) -> None:
        self.scores = scores  # [n, m] as given (memory-mapped for an .npy)
        self.row_of_video = row_of_video  # int64 [dataset videos]: the row of each video, -1 for none
        self.column_of_track = column_of_track  # int64 [dataset tracks]: the column of each track
        self.name = name  # the label of its figures (the file's name without its suffix)
        self.source = source  # the score file
        self._ids = (video_ids, track_ids)  # the dataset's, to refuse another's in check_dataset

    def check_dataset(self, ds: Dataset) -> None:
        """Refuse a dataset of other videos or tracks than the one the file was read against."""
        if (list(ds.video_ids), list(ds.track_ids)) != (self._ids[0], self._ids[1]):
            raise DatasetError(f"{self.source}: its scores were read against another dataset's videos and tracks")

    def video_scores(self, videos: np.ndarray) -> np.ndarray:
        """Scores [len(videos), dataset tracks] of dataset video indices ``videos``, columns in the dataset's
        track order; ValueError naming the first video the file has no row for."""
        rows = self.row_of_video[np.asarray(videos, np.int64)]
        missing = np.flatnonzero(rows < 0)
        if missing.size:
            first = self._ids[0][int(videos[missing[0]])]
            raise DatasetError(f"{self.source}: no scores for video {first!r} (and {missing.size - 1} more of "
                               f"these {len(rows)} queries); give a row for every query video of the split")
        return np.asarray(self.scores[rows], np.float64)[:, self.column_of_track]  # exact for float32, int32


def load_scores(path: Path, ds: Dataset) -> PrecomputedScores:
    """The score file ``path`` (module docstring: .npz with ids, or .npy in the dataset's order) checked against
    ``ds``: a :class:`DatasetError` naming the file, the field and what was expected for a wrong shape, a
    type that is not real numbers, ids unknown to ``ds`` or repeated, tracks missing, or a score that is not
    finite."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        scores = _read(path, lambda: np.load(path, mmap_mode="r", allow_pickle=False))
        expected = [ds.n_videos, ds.n_tracks]
        if scores.ndim != 2 or list(scores.shape) != expected:
            raise DatasetError(f"{path}: expected scores of shape {expected} (every video of videos.csv by every "
                               f"track of tracks.csv, in their order), found {list(scores.shape)}; an .npz with "
                               f"{', '.join(NPZ_FIELDS)} may hold some videos only, in any order")
        rows, cols = np.arange(ds.n_videos, dtype=np.int64), np.arange(ds.n_tracks, dtype=np.int64)
    elif path.suffix.lower() == ".npz":
        scores, rows, cols = _read_npz(path, ds)
    else:
        raise DatasetError(f"{path}: a score file is .npy or .npz, not {path.suffix or 'a file without suffix'}")
    if scores.dtype.kind not in "fiu":
        raise DatasetError(f"{path}: scores: expected real numbers (float or int), found dtype {scores.dtype}")
    _check_finite(path, scores, ds, rows, cols)
    return PrecomputedScores(scores, rows, cols, path.stem, path, list(ds.video_ids), list(ds.track_ids))


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
    except ValueError as e:  # object arrays (pickles), or a header numpy cannot parse
        hint = (": ids must be saved as strings (np.array(ids, dtype=str)), not Python objects"
                if "allow_pickle" in str(e) else "")
        raise DatasetError(f"{path}: not a score file numpy reads without pickle ({e}){hint}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise DatasetError(f"{path}: cannot be read as a NumPy file ({e})") from None


def _read_npz(path: Path, ds: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    def load():
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in NPZ_FIELDS if k not in z.files]
            if missing:
                raise DatasetError(f"{path}: missing {', '.join(missing)}; an .npz score file holds "
                                   f"{', '.join(NPZ_FIELDS)} (found {', '.join(z.files) or 'nothing'})")
            return tuple(z[k] for k in NPZ_FIELDS)

    scores, video_ids, track_ids = _read(path, load)
    rows_of = _positions(path, "video_ids", video_ids, ds.video_ids, "videos.csv")
    cols_of = _positions(path, "track_ids", track_ids, ds.track_ids, "tracks.csv")
    expected = [len(video_ids), len(track_ids)]
    if scores.ndim != 2 or list(scores.shape) != expected:
        raise DatasetError(f"{path}: scores: expected shape {expected} (video_ids by track_ids), found "
                           f"{list(scores.shape)}")
    if len(track_ids) != ds.n_tracks:
        absent = sorted(set(ds.track_ids) - set(track_ids.tolist()))
        raise DatasetError(f"{path}: track_ids: {len(absent)} of the dataset's {ds.n_tracks} tracks have no "
                           f"column (first {absent[0]!r}); score every track of tracks.csv")
    row_of_video = np.full(ds.n_videos, -1, np.int64)
    row_of_video[rows_of] = np.arange(len(rows_of))
    column_of_track = np.empty(ds.n_tracks, np.int64)
    column_of_track[cols_of] = np.arange(len(cols_of))
    return scores, row_of_video, column_of_track


def _positions(path: Path, field: str, ids: np.ndarray, known: list[str], table: str) -> np.ndarray:
    """The dataset positions of the score file's ids of ``field``."""
    if ids.ndim != 1 or ids.dtype.kind not in "US":
        raise DatasetError(f"{path}: {field}: expected a 1-D array of string ids (as {table}'s id column), found "
                           f"dtype {ids.dtype} and shape {list(ids.shape)}")
    given = [i.decode() if isinstance(i, bytes) else str(i) for i in ids.tolist()]
    position = {name: i for i, name in enumerate(known)}
    unknown = [i for i in given if i not in position]
    if unknown:
        raise DatasetError(f"{path}: {field}: {len(unknown)} id(s) not in the dataset's {table} (first "
                           f"{unknown[0]!r}; the dataset's first is {known[0]!r})")
    if len(set(given)) != len(given):
        seen: set[str] = set()
        twice = next(i for i in given if i in seen or seen.add(i))
        raise DatasetError(f"{path}: {field}: {twice!r} is listed more than once")
    return np.array([position[i] for i in given], np.int64)


def _check_finite(path: Path, scores: np.ndarray, ds: Dataset, rows: np.ndarray, cols: np.ndarray) -> None:
    video_of_row = np.empty(len(scores), np.int64)
    video_of_row[rows[rows >= 0]] = np.flatnonzero(rows >= 0)
    track_of_column = np.empty(scores.shape[1], np.int64)
    track_of_column[cols] = np.arange(len(cols))
    for start in range(0, len(scores), FINITE_CHECK_ROWS):
        part = np.asarray(scores[start:start + FINITE_CHECK_ROWS])
        bad = np.argwhere(~np.isfinite(part)) if part.dtype.kind == "f" else np.empty((0, 2), np.int64)
        if len(bad):
            r, c = int(bad[0, 0]) + start, int(bad[0, 1])
            raise DatasetError(f"{path}: scores: {scores[r, c]} for video {ds.video_ids[video_of_row[r]]!r} and "
                               f"track {ds.track_ids[track_of_column[c]]!r} (row {r}, column {c}); every score "
                               "must be finite")
