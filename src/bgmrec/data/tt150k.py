"""Import and export of the TT-150k / DecCM reference layout (issue #5).

The features of TT-150k-genre are shared privately by the DecCM authors in the layout that the public
DecCM code reads (GitHub ``jing-1/DecCM``, commit 78dc2f8: ``DataLoad.py``, ``DataLoad_teacher.py``,
``train_with_pgc_distillation.py``, ``train_teacher_net.py``, ``evaluate.py``, ``README.md``). What those
scripts read, and therefore what this module reads and writes::

    data_matching/                            the user uploads (UGC): the student's data
        visual_features_resnet_V.npy          float [N, Dv]   ResNet frames (the scripts hard-code 2048)
        music_features.npy                    float [M, 128]  VGGish
        new_music_smile_features_norm.npy     float [M, 128]  openSMILE; concatenated after VGGish
        train.npy                             object [n, 5]   [video, music, genre string such as '3',
                                                               uploader genre distribution (G floats),
                                                               propensity for IPS]
        100neg/val.npy, 100neg/test.npy       object [n, 3]   [video, music, ndarray of 100 negative ids]
        video_popularity_val.npy, ..._test.npy float [n]      inverse-popularity weight per row (optional:
                                                              without, bgmrec's own, 1 / (1 + training count))
        user_prior_mean.npy                   float [G]       mean uploader distribution over train
        text_features.npy                     float [N, Dt]   optional (bgmrec's addition; the scripts
                                                              declare ``dim_t`` but read no text)
        100neg/<name>.npy + video_popularity_<name>.npy      optional further test splits
    data_pgc/                                 professional music videos (PGC): the teacher's data
        mv_video_resnet_features.npy          float [P, Dv]
        vggish_features.npy                   float [M', 128]
        opensmile_features_norm.npy           float [M', 128]
        train.npy                             int [n, 2]      [video, music]; read *without* pickle
        val.npy                               int [n, 2]      teacher validation, full ranking

Details learnt from the scripts: ``DataLoad.py`` unpacks each train row into exactly five values, so the
genre distribution is one nested element (``np.array(user_prior, float32)``); the genre is a string that
the script ``eval``s to an int (bgmrec parses it as an integer, never evaluates it). The evaluation does
``dataset[:, 0].astype(int)`` and ``dataset[i][2].tolist()``, so the negative files are 2-D object arrays
whose third cell is an ndarray, and it hard-codes ``num_neg=100``. The weights are multiplied into the hit
counts and summed, so they are expected to sum to 1. The teacher (``DataLoad_teacher.py``) loads
``data_pgc/train.npy`` without ``allow_pickle`` and squeezes it. Both scripts default to
``num_music=3003`` and the student feeds its own music features to the teacher's music encoder, so the
PGC music is read as the same catalogue when its feature files equal the UGC ones (``pgc_music="auto"``);
otherwise the PGC tracks are appended as their own tracks (ids ``pgc:<j>``) marked ``new`` in
``tracks.csv``, so that the UGC splits (candidates ``existing``) rank the UGC catalogue and the teacher
split (candidates ``new``) its own.

Accepted beyond the scripts: the genre distribution as G separate float columns (rows of 4 + G values);
1-D object arrays of row sequences; plain numeric arrays where no nesting is needed; ids stored as
integral floats or digit strings.

Mapping to the native dataset (:mod:`bgmrec.data.dataset`): UGC videos keep their ids as indices, PGC
videos are appended (source ``pgc``, uploader -1). Splits ``train``, ``val``, ``test``, further test files
by their stem (role ``test``), ``pgc`` (role ``teacher``); ``data_pgc/val.npy`` is kept as
``extra/pgc_val.npy`` (the native format has no teacher-validation role). UGC splits rank the
``existing`` tracks, which is the whole catalogue unless PGC music was appended as its own tracks. Each
distinct training genre distribution becomes one "uploader" (renormalised where it does not sum to 1;
negative or NaN entries are refused); val/test rows get uploader -1 (the model's prior). The README
calls the genre column "genre of the video"; it is the genre label of the row's chosen music, so a
track's genre is the majority genre of its training rows (disagreements and ties reported); tracks
never seen in train get the most frequent genre (counted in the report). The propensity column is
kept in ``extra/train_propensity.npy``; ``user_prior_mean`` in the manifest's provenance. Without
``text_features.npy`` the text matrix is one zero column, masked out (all-zero text rows are masked).
The layout has no track titles or artists (imported tracks have none) and no uploader ids, only each
row's genre distribution, so uploaders come back as the distinct distributions: ids renumbered, and two
uploaders of one distribution merged.

Export writes any native dataset in that layout. Music features wider than 256 are split in halves; up
to 256 they fill VGGish's 128 columns then openSMILE's, zero-padded. ``bgmrec_export.json`` records what
the layout cannot hold (true music width, genre names, track genres and ``new`` flags, split names and
candidate sets, ids, the PGC validation hold-out) and import reads it when present, so
``import(export(ds))`` recovers features, interactions, negatives and weights exactly. Splits without
exactly 100 frozen negatives (the reference hard-codes 100) get 100 fresh ones for the layout, seeded and
reported: from the split's candidates, or the whole catalogue when they are too few; the split's own
(or none) are kept in ``bgmrec_negatives/`` and the sidecar, and import puts them back. The object
arrays are pickled with NumPy's pre-2.0 module names
(``numpy.core.multiarray``) so that the reference code's old NumPy can read them.

Safety: this is the one documented place in bgmrec where pickle is parsed on purpose. The object arrays
are read by :func:`read_npy` with :class:`RestrictedUnpickler`, which admits only NumPy's array
reconstruction callables and plain data; any other global (``os.system``, ``builtins.eval``, ...) is
refused before anything runs. It is Python's own unpickler, not the C one: it checks each array's pickled
state before NumPy reads it (an object array's list shorter than its shape crashed NumPy), its memo is a
dict (a memo index of 10**9 grew the C unpickler's memo to gigabytes), and it reads from a copy of the
file in memory, so a damaged length reads no further than the file's end. Arrays are made only as NumPy
pickles them (an empty array filled by its checked state): a few bytes cannot declare an array of any
size. A damaged pickle is an error naming the file. Reading is several times slower than the C unpickler
(about 2 s for 150 000 train rows).
"""

from __future__ import annotations

import io
import json
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bgmrec.data.dataset import (
    CANDIDATE_SETS,
    SPLIT_ROLES,
    Dataset,
    DatasetError,
    FieldError,
    SplitInfo,
    atomic_write_dir,
    check_is_file,
    check_replaceable,
    check_split_name,
    load_dataset,
    parse_json_file,
    read_npy_header,
    rows_trained_on,
    save_dataset,
)

REF_NEGATIVES = 100  # the reference evaluation hard-codes 1 + 100 candidates
MUSIC_PART = 128  # width of each of the two reference music files (VGGish, openSMILE)
SIDECAR = "bgmrec_export.json"
SIDECAR_VERSION = 1
NATIVE_NEG_DIR = "bgmrec_negatives"  # export's copies of frozen negatives the layout cannot hold (not 100)
PGC_VAL_SHARE = 0.1  # share of the teacher split exported as data_pgc/val.npy (its last rows)

M_DIR, P_DIR = "data_matching", "data_pgc"
F_VISUAL = f"{M_DIR}/visual_features_resnet_V.npy"
F_VGGISH = f"{M_DIR}/music_features.npy"
F_SMILE = f"{M_DIR}/new_music_smile_features_norm.npy"
F_TEXT = f"{M_DIR}/text_features.npy"
F_TRAIN = f"{M_DIR}/train.npy"
F_PRIOR = f"{M_DIR}/user_prior_mean.npy"
F_P_VISUAL = f"{P_DIR}/mv_video_resnet_features.npy"
F_P_VGGISH = f"{P_DIR}/vggish_features.npy"
F_P_SMILE = f"{P_DIR}/opensmile_features_norm.npy"
F_P_TEXT = f"{P_DIR}/text_features.npy"
F_P_TRAIN = f"{P_DIR}/train.npy"
F_P_VAL = f"{P_DIR}/val.npy"


def _neg_file(name: str) -> str:
    return f"{M_DIR}/100neg/{name}.npy"


def _weight_file(name: str) -> str:
    return f"{M_DIR}/video_popularity_{name}.npy"


# ---- restricted pickle -------------------------------------------------------------------------------

def _numpy_globals() -> dict[tuple[str, str], object]:
    from numpy._core import multiarray, numeric

    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): __import__("codecs").encode,  # bytes in protocol-2 pickles (Python 2 era)
    }
    def reconstruct_empty(subtype, shape, dtype):  # as NumPy pickles an array: empty, then filled by its state
        if subtype is not np.ndarray or not isinstance(shape, tuple) or shape != (0,):
            raise pickle.UnpicklingError(f"an array reconstructed as {getattr(subtype, '__name__', subtype)} of "
                                         f"shape {shape!r}, where NumPy writes an empty ndarray and then its state "
                                         "(an array of any size could be declared so)")
        return multiarray._reconstruct(subtype, shape, dtype)

    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = reconstruct_empty
        allowed[(f"{mod}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{mod}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


_PLAIN = (int, float, str, bool, type(None), np.integer, np.floating, np.str_, np.bool_)
_PLAIN_KINDS = "biufU"  # dtype kinds of the numeric and string arrays a TT-150k file may hold


class _Refused(pickle.UnpicklingError):
    """A global that a TT-150k file may not name (as opposed to a damaged pickle)."""


class _Opcodes(dict):
    """Python's unpickler's table of opcodes, naming a byte that is no opcode (Python raises a bare KeyError)."""

    def __missing__(self, code: int):
        raise pickle.UnpicklingError(f"invalid opcode {bytes([code])!r}")


def _check_array_state(state) -> None:
    """Refuse an array's pickled state ``(version, shape, dtype, Fortran order, values)`` whose values do not
    fill its shape, or whose dtype is neither object nor one that :func:`_check_plain` admits. NumPy checks
    the length of raw bytes but not of an object array's list: it reads past a short list's end (a crash)."""
    try:
        _, shape, dtype, _, values = state
    except (TypeError, ValueError):
        raise pickle.UnpicklingError("an array's state is not (version, shape, dtype, order, values)") from None
    if not isinstance(dtype, np.dtype) or dtype.kind not in _PLAIN_KINDS + "O":
        raise pickle.UnpicklingError(f"an array's state has dtype {dtype!r}")
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise pickle.UnpicklingError(f"an array's state has shape {shape!r}")
    size = math.prod(shape)
    need, unit, kind = (size, "values", list) if dtype.kind == "O" else (size * dtype.itemsize, "bytes", bytes | str)
    if not isinstance(values, kind):
        raise pickle.UnpicklingError(f"an array of dtype {dtype} is pickled with {type(values).__name__} "
                                     f"for its {unit}")
    if len(values) != need:
        raise pickle.UnpicklingError(f"an array of shape {list(shape)} ({dtype}) is pickled with {len(values)} "
                                     f"{unit}; its shape needs {need}")


class RestrictedUnpickler(pickle._Unpickler):
    """An unpickler that resolves only NumPy's array/dtype/scalar reconstruction callables.

    Plain Python data (ints, floats, strings, lists, tuples, dicts) needs no global lookup; any other
    global raises :class:`pickle.UnpicklingError` before it is called. It is Python's own unpickler
    (``pickle._Unpickler``), not the C one, so that it can check each array's state before NumPy's
    ``ndarray.__setstate__`` reads it (:func:`_check_array_state`), and because its memo is a dict: a memo
    index of 10**9 costs one entry, where the C unpickler grows an array to that length (gigabytes).
    """

    _allowed = None
    dispatch = _Opcodes(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str):
        if RestrictedUnpickler._allowed is None:
            RestrictedUnpickler._allowed = _numpy_globals()
        try:
            return RestrictedUnpickler._allowed[(module, name)]
        except KeyError:
            raise _Refused(f"refused global {module}.{name}: only NumPy arrays and plain "
                           "data may appear in a TT-150k file") from None

    def load_build(self):
        if len(self.stack) > 1 and isinstance(self.stack[-2], np.ndarray):
            _check_array_state(self.stack[-1])
        super().load_build()

    def _called(self, depth: int) -> None:
        """Refuse ``numpy.ndarray`` called (or instantiated) directly, ``depth`` places down the stack: NumPy
        never pickles an array so, and a pickle of a few bytes would declare an array of any size."""
        if len(self.stack) >= depth and self.stack[-depth] is np.ndarray:
            raise pickle.UnpicklingError("numpy.ndarray called directly, which NumPy never writes (an array of "
                                         "any size could be declared so)")

    def load_reduce(self):  # stack: callable, arguments
        self._called(2)
        super().load_reduce()

    def load_newobj(self):  # stack: class, arguments
        self._called(2)
        super().load_newobj()

    def load_newobj_ex(self):  # stack: class, arguments, keywords
        self._called(3)
        super().load_newobj_ex()

    def _instantiate(self, klass, args):  # the protocol 0 and 1 opcodes INST and OBJ, which np.save never writes
        if klass is np.ndarray:
            raise pickle.UnpicklingError("numpy.ndarray called directly, which NumPy never writes (an array of "
                                         "any size could be declared so)")
        return super()._instantiate(klass, args)

    def load_bytearray8(self):  # Python's unpickler would allocate the declared length before reading it
        raise pickle.UnpicklingError("a protocol-5 bytearray, which NumPy never writes in a .npy file")

    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8


def _check_plain(obj, label: str, depth: int = 0) -> None:
    """Refuse anything but numbers, strings and (nested) lists/tuples/arrays of them."""
    if depth > 4:
        raise DatasetError(f"{label}: nested more deeply than a TT-150k row")
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            for x in obj.ravel():
                _check_plain(x, label, depth + 1)
        elif obj.dtype.kind not in _PLAIN_KINDS:
            raise DatasetError(f"{label}: holds an array of dtype {obj.dtype}")
    elif isinstance(obj, list | tuple):
        for x in obj:
            _check_plain(x, label, depth + 1)
    elif not isinstance(obj, _PLAIN):
        raise DatasetError(f"{label}: holds a {type(obj).__name__}; expected numbers, strings and arrays")


def read_npy(path: Path, label: str, objects: bool = False) -> np.ndarray:
    """Read one ``.npy`` file; object arrays (``objects=True``) go through :class:`RestrictedUnpickler`.

    Errors are :class:`DatasetError` naming ``label``.
    """
    path = Path(path)
    check_is_file(path, label, missing="required file is missing")
    try:
        with open(path, "rb") as f:
            shape, dtype = read_npy_header(f, label)
            if not dtype.hasobject:
                arr = np.load(path, allow_pickle=False)
            elif not objects:
                raise DatasetError(f"{label}: holds Python objects; expected a numeric array")
            else:
                try:  # read from memory, so that a damaged length reads at most the rest of the file
                    arr = RestrictedUnpickler(io.BytesIO(f.read())).load()
                except _Refused as e:
                    raise DatasetError(f"{label}: refused to read it ({e})") from None
                except MemoryError:  # an array the pickle declares far larger than the file
                    raise DatasetError(f"{label}: not a readable object array (it declares an array too large "
                                       "for memory)") from None
                except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
                        KeyError, OverflowError, RecursionError) as e:
                    reason = "it ends early" if isinstance(e, EOFError) else e  # Python's EOFError says nothing
                    raise DatasetError(f"{label}: not a readable object array (damaged pickle: {reason})") from None
    except DatasetError:
        raise
    except (OSError, ValueError, EOFError) as e:
        raise DatasetError(f"{label}: not a readable .npy file ({e})") from None
    if not isinstance(arr, np.ndarray) or tuple(arr.shape) != tuple(shape):
        raise DatasetError(f"{label}: the pickle is not the array of shape {list(shape)} "
                           "that its header announces")
    if dtype.hasobject:
        _check_plain(arr, label)
    return arr


class _LegacyNumpyPickler(pickle._Pickler):
    """Writes NumPy globals under their pre-2.0 module names so that NumPy 1.x (the reference code's)
    can read them; NumPy 2 reads them too."""

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", None) or ""
        if module.startswith("numpy._core"):
            legacy = module.replace("numpy._core", "numpy.core", 1)
            qual = name or obj.__name__
            self.write(pickle.GLOBAL + legacy.encode() + b"\n" + qual.encode() + b"\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def save_object_npy(path: Path, arr: np.ndarray) -> None:
    """``np.save(..., allow_pickle=True)`` for an object array, with legacy NumPy module names."""
    from numpy.lib import format as npf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    _LegacyNumpyPickler(buf, protocol=3).dump(arr)
    with open(path, "wb") as f:
        npf.write_array_header_1_0(f, npf.header_data_from_array_1_0(arr))
        f.write(buf.getvalue())


# ---- reports -----------------------------------------------------------------------------------------

@dataclass
class InteropReport:
    """What an import or export found and did (printed by the CLI, saved as JSON by import)."""

    counts: dict[str, int] = field(default_factory=dict)  # videos, tracks, uploaders, rows per split ...
    dims: dict[str, int] = field(default_factory=dict)  # feature widths
    missing: list[str] = field(default_factory=list)  # optional parts not found
    notes: list[str] = field(default_factory=list)  # decisions and repairs worth knowing

    def to_json(self) -> dict:
        return {"counts": self.counts, "dims": self.dims, "missing": self.missing, "notes": self.notes}


# ---- parsing helpers ---------------------------------------------------------------------------------

def _ids(col, label: str) -> np.ndarray:
    """Integer ids from a column of ints, integral floats or digit strings."""
    arr = np.asarray(col)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    try:
        if arr.dtype.kind == "f":
            ok = bool(np.isfinite(arr).all())
            out = arr.astype(np.int64) if ok else np.zeros(arr.shape, np.int64)  # NaN casts with a warning
            ok = ok and bool((out == arr).all())
        else:
            out = np.asarray([int(str(x).strip().strip("\ufeff")) if not isinstance(x, float | np.floating) else int(x)
                              for x in arr.ravel()], np.int64).reshape(arr.shape)
            ok = all(not isinstance(x, float | np.floating) or float(x).is_integer() for x in arr.ravel())
    except (ValueError, TypeError, OverflowError) as e:
        raise DatasetError(f"{label}: expected integer ids ({e})") from None
    if not ok:
        raise DatasetError(f"{label}: expected integer ids, found non-integral values")
    return out


def evaluation_overlap_notes(splits: dict[str, np.ndarray], rep: InteropReport,
                             by_design: frozenset[frozenset[str]] = frozenset()) -> None:
    """Warn (``rep.notes``) of evaluation rows listed twice in a split, and of rows two evaluation splits share
    (a model early-stopped on val and tested on the same queries; a copy of a file left in ``100neg/``), but for
    the pairs of splits ``by_design`` (a bgmrec world's test and test_unbiased: the same videos, the track
    redrawn, often the same one) unless every row is shared (one file copied over the other)."""
    names = [s for s in splits if s != "train"]
    for i, a in enumerate(names):
        repeated = len(splits[a]) - len(np.unique(splits[a][:, :2], axis=0))
        if repeated:
            rep.notes.append(f"warning: {a}: {repeated} of {len(splits[a])} rows repeat an earlier row's video and "
                             "music (kept: such a query counts once per listing)")
        for b in names[i + 1:]:
            shared = rows_trained_on(splits[b], splits[a])
            if shared.size and (frozenset((a, b)) not in by_design or shared.size == len(splits[b])):
                video, music = (int(x) for x in splits[b][shared[0], :2])
                rep.notes.append(f"warning: {shared.size} of the {len(splits[b])} rows of {b} are rows of {a} too "
                                 f"(e.g. video {video}, music {music}): the same queries in two evaluation splits")


def _transposed_hint(visual: np.ndarray, ids: np.ndarray) -> str:
    """" (... saved transposed?)" when the frame matrix [n, d] has fewer rows than values per frame and every video
    id would fit its columns: saved as [d, n], its ids look out of range; "" otherwise."""
    fits = len(ids) and visual.shape[1] > visual.shape[0] and int(np.max(ids)) < visual.shape[1]
    return f" ({F_VISUAL} has {visual.shape[0]} rows of {visual.shape[1]} values: saved transposed?)" if fits else ""


def _in_range(ids: np.ndarray, n: int, label: str, what: str, hint: str = "") -> None:
    bad = np.flatnonzero((ids < 0) | (ids >= n))
    if bad.size:
        raise DatasetError(f"{label}: {what} id {int(ids.ravel()[bad[0]])} (row {int(bad[0])}) is out of "
                           f"range [0, {n}){hint}")


def _float_matrix(arr: np.ndarray, label: str, rows: tuple[int, str] | None = None) -> np.ndarray:
    """``arr`` as finite float32 [n, d]; ``rows``: (n, the file that sets n), one row per video in both."""
    if arr.ndim != 2 or arr.dtype.kind not in "fiu":
        raise DatasetError(f"{label}: expected a numeric matrix, found {arr.dtype} "
                           f"of shape {list(arr.shape)}")
    if rows is not None and arr.shape[0] != rows[0]:
        raise DatasetError(f"{label}: has {arr.shape[0]} rows but {rows[1]} has {rows[0]}; both hold one row "
                           "per video (one of the two is truncated or of other videos)")
    arr = np.asarray(arr, np.float32)
    bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
    if bad.size:
        raise DatasetError(f"{label}: row {int(bad[0])} has NaN or inf")
    return arr


def _rows_of(arr: np.ndarray, label: str) -> list:
    """Rows of a 2-D (object or numeric) array or a 1-D object array of sequences, as lists."""
    if arr.ndim == 2:
        return list(arr)
    if arr.ndim == 1 and arr.dtype.hasobject:
        out = []
        for i, r in enumerate(arr):
            if not isinstance(r, list | tuple | np.ndarray):
                raise DatasetError(f"{label}: row {i} is a {type(r).__name__}, expected a sequence")
            out.append(list(r))
        return out
    raise DatasetError(f"{label}: expected rows (a 2-D array), found shape {list(arr.shape)}")


def _parse_train(arr: np.ndarray, n_genres: int, label: str):
    """(video, music, genre, prior [n, G], propensity) from DecCM train rows, nested or flat."""
    rows = _rows_of(arr, label)
    if not rows:
        raise DatasetError(f"{label}: has no rows")
    lengths = {len(r) for r in rows}
    if len(lengths) != 1:
        raise DatasetError(f"{label}: rows of different lengths {sorted(lengths)}")
    width = lengths.pop()
    nested = width == 5 and isinstance(rows[0][3], list | tuple | np.ndarray)
    if width == 5 and not nested and n_genres != 1:  # it said "rows of 5 values; expected 5"
        raise DatasetError(f"{label}: row 0's column 3 (genre distribution) is a {type(rows[0][3]).__name__}; "
                           f"expected a list of {n_genres} numbers")
    if nested:
        table = np.empty((len(rows), 5), object)
        for i, r in enumerate(rows):
            table[i, :] = [r[0], r[1], r[2], None, r[4]]
            table[i, 3] = r[3]
        try:
            prior = np.asarray([np.asarray(p, np.float64).ravel() for p in table[:, 3]])
        except (ValueError, TypeError) as e:
            raise DatasetError(f"{label}: column 3 (genre distribution) is not numeric ({e})") from None
        if prior.ndim != 2 or prior.shape[1] != n_genres:
            raise DatasetError(f"{label}: genre distributions of {prior.shape[1:] or 'ragged'} entries; "
                               f"user_prior_mean.npy has {n_genres}")
        prop_col = table[:, 4]
    elif width == 4 + n_genres:
        table = np.asarray(rows, object)
        try:
            prior = table[:, 3:3 + n_genres].astype(np.float64)
        except (ValueError, TypeError) as e:
            raise DatasetError(f"{label}: genre distribution columns are not numeric ({e})") from None
        prop_col = table[:, 3 + n_genres]
    else:
        raise DatasetError(f"{label}: rows of {width} values; expected 5 ([video, music, genre, "
                           f"distribution, propensity]) or {4 + n_genres} (the distribution as "
                           f"{n_genres} columns)")
    video = _ids(table[:, 0], f"{label} column 0 (video)")
    music = _ids(table[:, 1], f"{label} column 1 (music)")
    genre = _ids(table[:, 2], f"{label} column 2 (genre)")
    try:
        propensity = np.asarray(prop_col, np.float64)
    except (ValueError, TypeError) as e:
        raise DatasetError(f"{label}: propensity column is not numeric ({e})") from None
    bad = np.flatnonzero(~(np.isfinite(propensity) & (propensity >= 0)))
    if bad.size:
        raise DatasetError(f"{label}: row {int(bad[0])} has propensity {propensity[bad[0]]}; expected a finite "
                           "number >= 0")
    return video, music, genre, prior, propensity


def _parse_neg(arr: np.ndarray, label: str):
    """(video, music, negatives [n, 100]) from DecCM ``100neg`` rows."""
    if arr.ndim == 2 and not arr.dtype.hasobject:
        if arr.shape[1] != 2 + REF_NEGATIVES:
            raise DatasetError(f"{label}: rows of {arr.shape[1] - 2} negatives, expected {REF_NEGATIVES}")
        return _ids(arr[:, 0], label), _ids(arr[:, 1], label), _ids(arr[:, 2:], f"{label} negatives")
    rows = _rows_of(arr, label)
    if not rows:
        raise DatasetError(f"{label}: has no rows")
    video, music, neg = [], [], np.empty((len(rows), REF_NEGATIVES), np.int64)
    for i, r in enumerate(rows):
        if len(r) != 3:
            raise DatasetError(f"{label}: row {i} has {len(r)} cells, expected [video, music, negatives]")
        n = np.asarray(r[2]).ravel()
        if n.size != REF_NEGATIVES:
            raise DatasetError(f"{label}: row {i} has {n.size} negatives, expected {REF_NEGATIVES}")
        neg[i] = _ids(n, f"{label} row {i} negatives")
        video.append(r[0])
        music.append(r[1])
    return _ids(np.asarray(video, object), label), _ids(np.asarray(music, object), label), neg


def _pair_rows(arr: np.ndarray, label: str) -> np.ndarray:
    arr = np.squeeze(arr) if arr.ndim > 2 else arr
    if arr.ndim == 1 and arr.shape[0] == 2:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise DatasetError(f"{label}: expected [video, music] rows, found shape {list(arr.shape)}")
    return _ids(arr, label)


def _distribution(arr: np.ndarray, label: str, what: str) -> np.ndarray:
    """A 1-D float64 vector of finite values >= 0, not all zero (a distribution or weights)."""
    v = arr.reshape(-1) if sum(d != 1 for d in arr.shape) <= 1 else arr  # [G], [1, G], [G, 1]
    if v.ndim != 1 or v.size < 1 or arr.dtype.kind not in "fiu":
        raise DatasetError(f"{label}: expected a {what} of numbers, found {arr.dtype} of shape {list(arr.shape)}")
    v = v.astype(np.float64)
    if not (np.isfinite(v).all() and (v >= 0).all()) or v.sum() <= 0:
        raise DatasetError(f"{label}: expected a {what} of finite values >= 0, not all zero")
    return v


def _weights(path: Path, label: str, n: int) -> np.ndarray:
    w = _distribution(read_npy(path, label), label, "weight per row [n]")
    if len(w) != n:
        raise DatasetError(f"{label}: has {len(w)} weights, its split has {n} rows")
    return w


# ---- import ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Folder:
    """The reference-layout folder being read: its files' paths and the labels errors name them by."""

    root: Path

    def path(self, rel: str) -> Path:
        return self.root / rel

    def lab(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def read(self, rel: str, objects: bool = False) -> np.ndarray:
        """File ``rel`` as :func:`read_npy` reads it."""
        return read_npy(self.path(rel), self.lab(rel), objects=objects)

    def matrix(self, rel: str, rows: tuple[int, str] | None = None) -> np.ndarray:
        """File ``rel`` as a finite float32 matrix (:func:`_float_matrix`)."""
        return _float_matrix(self.read(rel), self.lab(rel), rows=rows)


@dataclass(frozen=True)
class _UgcFeatures:
    """The uploaded videos' features and the catalogue's music, as ``data_matching/`` holds them."""

    visual: np.ndarray  # float32 [N, Dv]
    text: np.ndarray | None  # float32 [N, Dt]; None without text_features.npy
    text_mask: np.ndarray  # bool [N]: the videos with text
    music: np.ndarray  # float32 [M, Dm]


@dataclass(frozen=True)
class _Training:
    """The checked training rows, each distinct genre distribution an uploader."""

    rows: np.ndarray  # int64 [n, 3]: video, music, uploader
    genre: np.ndarray  # int64 [n]: the genre label of each row's music
    propensity: np.ndarray  # float64 [n]
    uploader_pref: np.ndarray  # float64 [U, G]: the distinct distributions, each summing to 1
    prior_mean: np.ndarray  # float64 [G]: user_prior_mean.npy


@dataclass(frozen=True)
class _EvalSplit:
    """One checked evaluation split of ``100neg/``."""

    rows: np.ndarray  # int64 [n, 3]: video, music, -1
    negatives: np.ndarray  # int64 [n, 100]
    weights: np.ndarray | None  # float64 [n]; None where no weight file was given


@dataclass(frozen=True)
class _PgcData:
    """The checked teacher data of ``data_pgc/``, its ids as the layout numbers them."""

    visual: np.ndarray  # float32 [P, Dv]
    text: np.ndarray | None  # float32 [P, Dt]; None without data_pgc/text_features.npy
    rows: np.ndarray  # int64 [n, 2]: video, music (train.npy)
    val: np.ndarray | None  # int64 [n, 2]: the teacher's validation rows; None without val.npy
    own_music: np.ndarray | None  # float32 [M', Dm]: its tracks, appended; None: it ranks the UGC catalogue


@dataclass(frozen=True)
class _Videos:
    """Every video of the dataset, the uploaded ones first, then the professional ones."""

    visual: np.ndarray  # float32 [N + P, Dv]
    text: np.ndarray  # float32 [N + P, Dt]; one zero column when no text was given
    text_mask: np.ndarray  # bool [N + P]
    uploader: np.ndarray  # int64 [N + P]: the uploader of the video's first training row, else -1
    n_ugc: int
    n_pgc: int


@dataclass(frozen=True)
class _Splits:
    """The dataset's splits by name: rows [video, track, uploader], role and candidates, negatives, weights."""

    rows: dict[str, np.ndarray]
    info: dict[str, SplitInfo]
    negatives: dict[str, np.ndarray]
    weights: dict[str, np.ndarray]


@dataclass(frozen=True)
class _Labels:
    """What the layout cannot hold and the sidecar restores: genre names, track genres and flags, ids."""

    genres: list[str]
    track_genre: np.ndarray  # int64 [M]
    track_new: np.ndarray  # bool [M]
    video_ids: list[str]
    track_ids: list[str]


def read_tt150k(src: Path, pgc_music: str = "auto") -> tuple[Dataset, dict[str, np.ndarray], InteropReport]:
    """Read a reference-layout folder into a validated :class:`Dataset` (not yet written).

    Parameters
    ----------
    src : folder holding ``data_matching/`` (required) and ``data_pgc/`` (optional).
    pgc_music : "auto" (shared catalogue if the PGC music files equal the UGC ones), "shared" (same track
        ids, UGC features kept) or "own" (PGC tracks appended as their own tracks).

    Returns
    -------
    The dataset, side files for ``save_dataset`` (``extra/...``) and the report.
    """
    if pgc_music not in ("auto", "shared", "own"):
        raise FieldError(f"{{pgc_music}} must be auto, shared or own, not {FieldError.given(pgc_music)}", "pgc_music")
    src = Path(src)
    _check_layout_folder(src)
    f, rep = _Folder(src), InteropReport()
    side = _read_sidecar(src)
    if side:
        rep.notes.append(f"{SIDECAR} found: restoring what the layout cannot hold (written by bgmrec export-tt150k)")

    ugc = _read_ugc_features(f, side, rep)
    train = _read_training_rows(f, ugc, rep)
    evaluation = _read_evaluation_splits(f, ugc, train.rows, side, rep)
    pgc = _read_pgc(f, pgc_music, side, ugc, rep)
    videos = _assemble_videos(f, ugc, pgc, train, rep)
    own_music = None if pgc is None else pgc.own_music
    music = ugc.music if own_music is None else np.vstack([ugc.music, own_music])
    n_m, n_tracks, n_genres = len(ugc.music), len(music), len(train.prior_mean)
    track_genre, genre_note = _vote_track_genres(train, n_tracks, rep)
    splits, extra = _assemble_splits(train, evaluation, pgc, videos.n_ugc, n_m)
    labels = _Labels(genres=[str(g) for g in range(n_genres)], track_genre=track_genre,
                     track_new=np.arange(n_tracks) >= n_m,
                     video_ids=[str(i) for i in range(videos.n_ugc)] + [f"pgc:{j}" for j in range(videos.n_pgc)],
                     track_ids=[str(j) for j in range(n_m)] + [f"pgc:{j}" for j in range(n_tracks - n_m)])
    if side:
        labels = _apply_sidecar(side, src, labels)
        if "track_genre" in side:  # the vote above is not what the dataset holds
            genre_note = f"track genres: as {SIDECAR} records them (the exported dataset's own)"
        splits = _apply_sidecar_splits(side, src, splits, extra, rep)
    rep.notes.append(genre_note)

    ds = Dataset(
        genres=labels.genres,
        video_ids=labels.video_ids,
        video_uploader=videos.uploader,
        video_source=["ugc"] * videos.n_ugc + ["pgc"] * videos.n_pgc,
        track_ids=labels.track_ids,
        track_genre=np.asarray(labels.track_genre, np.int64),
        track_title=[""] * n_tracks,
        track_artist=[""] * n_tracks,
        track_new=np.asarray(labels.track_new, bool),
        uploader_pref=train.uploader_pref.astype(np.float32),
        video_visual=videos.visual,
        video_text=videos.text,
        video_text_mask=videos.text_mask,
        music=np.asarray(music, np.float32),
        splits={k: np.asarray(v, np.int64) for k, v in splits.rows.items()},
        split_info=splits.info,
        negatives=splits.negatives,
        weights=splits.weights,
        provenance={"importer": "bgmrec.data.tt150k", "layout": "DecCM data_matching/ + data_pgc/",
                    "source": str(src), "user_prior_mean": train.prior_mean.tolist(),
                    "train_propensity": "extra/train_propensity.npy",
                    "train_rows_sha256": _rows_digest(splits.rows["train"]),
                    "pgc_val": "extra/pgc_val.npy" if "extra/pgc_val.npy" in extra else None,
                    "pgc_music": "own" if own_music is not None else "shared"},
    )
    if side:
        _redraw_outside_candidates(ds, [n for n in side.get("resampled_negatives", [])
                                        if n in ds.negatives and n not in side.get("native_negatives", {})], rep)
    ds.validate(str(src))
    rep.counts = {**{"ugc_videos": videos.n_ugc, "pgc_videos": videos.n_pgc, "tracks": n_tracks, "genres": n_genres,
                     "uploaders": ds.n_uploaders}, **rep.counts,
                  **{f"rows_{s}": len(r) for s, r in ds.splits.items()}}
    if "extra/pgc_val.npy" in extra:
        rep.counts["rows_pgc_val"] = len(extra["extra/pgc_val.npy"])
    rep.dims = ds.dims()
    rep.notes.append(f"user_prior_mean {np.round(train.prior_mean, 4).tolist()} is kept in the manifest's "
                     "provenance")
    return ds, extra, rep


def _check_layout_folder(src: Path) -> None:
    """Refuse a ``src`` that is no folder or holds no ``data_matching/`` (naming the folder to give instead)."""
    if not src.is_dir():
        raise DatasetError(f"{src}: no such folder")
    if not (src / M_DIR).is_dir():
        inside = src.name == M_DIR or (src / "100neg").is_dir()
        raise DatasetError(f"{src}/{M_DIR}: required folder is missing (is this a DecCM-layout folder?"
                           + (f" {src} looks like {M_DIR}/ itself: give the folder that holds it, {src.parent}"
                              if inside else "") + ")")


def _read_music(f: _Folder, vggish: str, smile: str) -> np.ndarray:
    """The VGGish and openSMILE files side by side, which must hold one row per track both."""
    vgg, sm = f.matrix(vggish), f.matrix(smile)
    if vgg.shape[0] != sm.shape[0]:
        raise DatasetError(f"{f.lab(smile)}: has {sm.shape[0]} tracks but {vggish} has {vgg.shape[0]}")
    return np.hstack([vgg, sm])


def _read_ugc_features(f: _Folder, side: dict | None, rep: InteropReport) -> _UgcFeatures:
    """The uploaded videos' frames and text and the catalogue's music (cut to the sidecar's ``music_dim``)."""
    visual = f.matrix(F_VISUAL)
    music = _read_music(f, F_VGGISH, F_SMILE)
    if side:
        if side["music_dim"] > music.shape[1]:
            raise DatasetError(f"{f.root}/{SIDECAR}: field 'music_dim' is {side['music_dim']}, but {F_VGGISH} and "
                               f"{F_SMILE} hold {music.shape[1]} columns")
        music = music[:, : side["music_dim"]]
    text, text_mask = _read_ugc_text(f, visual, rep)
    return _UgcFeatures(visual, text, text_mask, music)


def _read_ugc_text(f: _Folder, visual: np.ndarray, rep: InteropReport) -> tuple[np.ndarray | None, np.ndarray]:
    """The uploaded videos' optional text features and their mask (all-zero rows masked out); (None, all
    masked) without the file."""
    n_ugc = visual.shape[0]
    if not f.path(F_TEXT).is_file():
        rep.missing.append(F_TEXT)
        rep.notes.append("no text features: a 1-column zero text matrix is written, masked out "
                         "(models use frames alone)")
        return None, np.zeros(n_ugc, bool)
    text_rows = f.read(F_TEXT)
    if text_rows.ndim == 2 and text_rows.shape[0] == visual.shape[1] != n_ugc:
        raise DatasetError(f"{f.lab(F_VISUAL)}: {n_ugc} rows of {visual.shape[1]} values, where {F_TEXT} has "
                           f"{text_rows.shape[0]} rows, one per video: saved transposed?")
    text = _float_matrix(text_rows, f.lab(F_TEXT), rows=(n_ugc, F_VISUAL))
    text_mask = np.abs(text).sum(axis=1) > 0
    rep.notes.append(f"text: {int((~text_mask).sum())} uploaded videos with all-zero text rows are masked out")
    return text, text_mask


def _read_training_rows(f: _Folder, ugc: _UgcFeatures, rep: InteropReport) -> _Training:
    """``user_prior_mean.npy`` (which sets the number of genres) and ``train.npy``, checked; each distinct genre
    distribution of the rows becomes an uploader (renormalised where it does not sum to 1)."""
    prior_mean = _distribution(f.read(F_PRIOR), f.lab(F_PRIOR), "genre distribution [G]")
    n_genres, lab = len(prior_mean), f.lab(F_TRAIN)
    video, music, genre, prior, propensity = _parse_train(f.read(F_TRAIN, objects=True), n_genres, lab)
    _in_range(video, len(ugc.visual), lab, "video", _transposed_hint(ugc.visual, video))
    _in_range(music, len(ugc.music), lab, "music")
    _in_range(genre, n_genres, lab, "genre")
    if not np.isfinite(prior).all() or (prior < 0).any():
        row = int(np.flatnonzero(~(np.isfinite(prior) & (prior >= 0)).all(axis=1))[0])
        raise DatasetError(f"{lab}: row {row} has a negative or NaN genre distribution")
    sums = prior.sum(axis=1)
    if (sums <= 0).any():
        row = int(np.flatnonzero(sums <= 0)[0])
        raise DatasetError(f"{lab}: row {row} has an all-zero genre distribution")
    uploader_pref, uploader = np.unique(prior, axis=0, return_inverse=True)
    uploader = uploader.ravel().astype(np.int64)
    off = np.abs(uploader_pref.sum(axis=1) - 1.0) > 1e-6  # rows already summing to 1 are kept bit for bit
    uploader_pref[off] /= uploader_pref[off].sum(axis=1, keepdims=True)
    rep.notes.append(f"confounder: {len(uploader_pref)} distinct training genre distributions become "
                     f"uploaders; val/test rows get uploader -1 (the model's prior)")
    return _Training(np.stack([video, music, uploader], axis=1), genre, propensity, uploader_pref, prior_mean)


def _read_evaluation_splits(f: _Folder, ugc: _UgcFeatures, train_rows: np.ndarray, side: dict | None,
                            rep: InteropReport) -> dict[str, _EvalSplit]:
    """Every evaluation split of ``100neg/`` by file stem (val, test, then the others by name), checked; rows
    two of them share, or one lists twice, are warned of, but not those a bgmrec export's test and test_unbiased
    share (the sidecar ``side`` names them: the same videos, by construction)."""
    splits = {}
    for stem in _evaluation_stems(f, rep):
        split = _read_evaluation_split(f, stem, ugc, train_rows, rep)
        if split is not None:
            splits[stem] = split
    named = {str(meta.get("name", stem)): stem for stem, meta in (side or {}).get("splits", {}).items()}
    pair = {"test", "test_unbiased"}
    by_design = frozenset({frozenset(named[n] for n in pair)} if pair <= set(named) else ())
    evaluation_overlap_notes({stem: split.rows for stem, split in splits.items()}, rep, by_design)
    return splits


def _evaluation_stems(f: _Folder, rep: InteropReport) -> list[str]:
    """The stems of the ``100neg/`` files to read: val and test (required), then the others by name; hidden files
    are skipped (reported)."""
    neg_dir = f.path(f"{M_DIR}/100neg")
    found = sorted(neg_dir.glob("*.npy")) if neg_dir.is_dir() else []
    hidden = [p.name for p in found if p.name.startswith(".")]  # macOS's "._val.npy" beside an unzipped val.npy
    if hidden:
        rep.notes.append(f"{M_DIR}/100neg: hidden file(s) skipped: {', '.join(hidden)}")
    stems = [p.stem for p in found if not p.name.startswith(".")]
    for req in ("val", "test"):
        if req not in stems:
            raise DatasetError(f"{f.lab(_neg_file(req))}: required file is missing")
    return ["val", "test"] + [s for s in stems if s not in ("val", "test")]


def _read_evaluation_split(f: _Folder, stem: str, ugc: _UgcFeatures, train_rows: np.ndarray,
                           rep: InteropReport) -> _EvalSplit | None:
    """Split ``stem`` of ``100neg/`` with its weights, checked; None for a further split left empty."""
    if stem in ("train", "pgc"):
        raise DatasetError(f"{f.lab(_neg_file(stem))}: the split name {stem!r} is reserved")
    fn = _neg_file(stem)
    rows = f.read(fn, objects=True)
    if stem not in ("val", "test") and rows.size == 0:  # an extra split left empty: nothing to evaluate
        rep.notes.append(f"{stem}: {fn} has no rows: not imported")
        return None
    try:
        vid, mus, neg = _parse_neg(rows, f.lab(fn))
    except DatasetError as e:
        if stem in ("val", "test"):
            raise
        raise DatasetError(f"{e} (every .npy file of {M_DIR}/100neg is read as an evaluation split: move other "
                           "files out of it)") from None
    _check_evaluation_rows(f.lab(fn), stem, vid, mus, neg, ugc, train_rows, rep)
    if stem not in ("val", "test"):
        rep.notes.append(f"{stem}: imported as an evaluation split of its own (role test), as is every .npy of "
                         f"{M_DIR}/100neg but val and test")
    wf, weights = _weight_file(stem), None
    if f.path(wf).is_file():  # without it (a copy made without the weights), the protocol's own, with a note
        weights = _weights(f.path(wf), f.lab(wf), len(vid))
        if not math.isclose(weights.sum(), 1.0, rel_tol=1e-3):  # the reference code sums hits times weights as given
            rep.notes.append(f"{wf}: its weights sum to {weights.sum():.6g}, not 1; bgmrec's IPW figures normalise "
                             f"them to 1, so the DecCM scripts' figures on these files are {weights.sum():.6g} times "
                             "bgmrec's")
    else:
        rep.missing.append(wf)
        rep.notes.append(f"{stem}: no {wf}; bgmrec uses inverse training popularity as its weights")
    return _EvalSplit(np.stack([vid, mus, np.full(len(vid), -1)], axis=1), neg, weights)


def _check_evaluation_rows(label: str, stem: str, vid: np.ndarray, mus: np.ndarray, neg: np.ndarray,
                           ugc: _UgcFeatures, train_rows: np.ndarray, rep: InteropReport) -> None:
    """Refuse ids out of range, a positive among its negatives and a training pair; warn (``rep.notes``) of
    repeated negatives and of videos that are in train too."""
    n_m = len(ugc.music)
    _in_range(vid, len(ugc.visual), label, "video", _transposed_hint(ugc.visual, vid))
    _in_range(mus, n_m, label, "music")
    _in_range(neg, n_m, label, "negative music")
    hit = np.flatnonzero((neg == mus[:, None]).any(axis=1))
    if hit.size:
        raise DatasetError(f"{label}: row {int(hit[0])} lists its positive music among the negatives")
    leaked = rows_trained_on(np.stack([vid, mus], axis=1), train_rows)
    if leaked.size:
        raise DatasetError(f"{label}: row {int(leaked[0])} is the pair (video {int(vid[leaked[0]])}, music "
                           f"{int(mus[leaked[0]])}) of a row of {F_TRAIN}: the answer to that query is trained "
                           "on (val and test rows must be held out of train)")
    ordered = np.sort(neg, axis=1)
    repeats = int((ordered[:, 1:] == ordered[:, :-1]).any(axis=1).sum())
    if repeats:  # kept as given (drawn with replacement?): the sampled rank counts each listed negative
        rep.notes.append(f"warning: {stem}: {repeats} of {len(vid)} rows repeat a negative track (kept as "
                         "given: a repeated negative that outscores the positive counts once per listing)")
    shared = np.isin(vid, train_rows[:, 0])
    if shared.any():
        rep.notes.append(f"warning: {stem}: {int(shared.sum())} of {len(vid)} rows have videos that are in "
                         f"{F_TRAIN} too (with another music): splits are usually by video")


def _read_pgc(f: _Folder, pgc_music: str, side: dict | None, ugc: _UgcFeatures,
              rep: InteropReport) -> _PgcData | None:
    """The optional teacher data of ``data_pgc/``, checked against the UGC data; None (reported) when the folder
    is missing or empty."""
    pgc_dir = f.path(P_DIR)
    if pgc_dir.is_dir() and not any(pgc_dir.iterdir()):
        rep.notes.append(f"{P_DIR}/ is empty: no teacher split")
        return None
    if not pgc_dir.is_dir():
        rep.missing.append(f"{P_DIR}/")
        rep.notes.append("no data_pgc/: no teacher split")
        return None
    visual = f.matrix(F_P_VISUAL)
    if visual.shape[1] != ugc.visual.shape[1]:
        raise DatasetError(f"{f.lab(F_P_VISUAL)}: {visual.shape[1]} columns, {F_VISUAL} has "
                           f"{ugc.visual.shape[1]} (one visual extractor serves both)")
    own_music = _read_pgc_music(f, pgc_music, side, ugc.music, rep)
    n_music = len(ugc.music) if own_music is None else len(own_music)
    rows = _read_pgc_pairs(f, F_P_TRAIN, len(visual), n_music)
    if not len(rows):
        raise DatasetError(f"{f.lab(F_P_TRAIN)}: has no rows; the teacher split is made of them (remove {P_DIR}/ "
                           "to import without one)")
    val = text = None
    if f.path(F_P_VAL).is_file():
        val = _read_pgc_pairs(f, F_P_VAL, len(visual), n_music)
    else:
        rep.missing.append(F_P_VAL)
    if f.path(F_P_TEXT).is_file():
        text = f.matrix(F_P_TEXT, rows=(len(visual), F_P_VISUAL))
    elif ugc.text is not None:
        rep.missing.append(F_P_TEXT)
    return _PgcData(visual, text, rows, val, own_music)


def _read_pgc_music(f: _Folder, pgc_music: str, side: dict | None, music: np.ndarray,
                    rep: InteropReport) -> np.ndarray | None:
    """The PGC music when it is appended as tracks of its own, None when it is the UGC catalogue: as
    ``pgc_music`` asks ("auto": shared when its files equal the UGC ones), or as the sidecar records."""
    whole = _read_music(f, F_P_VGGISH, F_P_SMILE)
    p_music = whole[:, : music.shape[1]]  # past the UGC music's width: an export's zero padding, nothing else
    if p_music.shape[1] != music.shape[1] or whole[:, music.shape[1]:].any():
        raise DatasetError(f"{f.lab(F_P_VGGISH)}: music width {whole.shape[1]} differs from the UGC "
                           f"music's {music.shape[1]}")
    n_m = music.shape[0]
    same = p_music.shape == music.shape and np.array_equal(p_music, music)
    mode = pgc_music if pgc_music != "auto" else ("shared" if same else "own")
    if side:
        mode = side.get("pgc_music", mode)
    if mode == "shared" and p_music.shape[0] != n_m:
        raise DatasetError(f"{f.lab(F_P_VGGISH)}: {p_music.shape[0]} tracks cannot be the UGC catalogue of "
                           f"{n_m} (pgc_music='shared')")
    if mode == "own" and pgc_music == "auto" and p_music.shape == music.shape:
        rep.notes.append(f"warning: pgc music: as many tracks as the UGC catalogue ({n_m}) but other feature "
                         "values (normalised otherwise?), so appended as tracks of their own, whose genres "
                         "are not known; if they are the UGC tracks, import with --pgc-music shared")
    if mode == "shared" and not same:
        rep.notes.append("pgc music: shared catalogue by request, although its feature files differ; "
                         "the UGC features are used")
    what = "the UGC catalogue" if mode == "shared" else "its own tracks, appended"
    rep.notes.append(f"pgc music: {what}")
    return p_music if mode == "own" else None


def _read_pgc_pairs(f: _Folder, rel: str, n_videos: int, n_music: int) -> np.ndarray:
    """The [video, music] rows of ``data_pgc/`` file ``rel``, their ids checked against its videos and music."""
    rows = _pair_rows(f.read(rel), f.lab(rel))
    _in_range(rows[:, 0], n_videos, f.lab(rel), "video")
    _in_range(rows[:, 1], n_music, f.lab(rel), "music")
    return rows


def _assemble_videos(f: _Folder, ugc: _UgcFeatures, pgc: _PgcData | None, train: _Training,
                     rep: InteropReport) -> _Videos:
    """The uploaded videos then the professional ones: frames, text (masked where all zero or not given) and
    each uploaded video's uploader (that of its first training row)."""
    n_ugc = len(ugc.visual)
    n_pgc = 0 if pgc is None else len(pgc.visual)
    visual = ugc.visual if n_pgc == 0 else np.vstack([ugc.visual, pgc.visual])
    pgc_text = None if pgc is None else pgc.text
    dt = ugc.text.shape[1] if ugc.text is not None else (pgc_text.shape[1] if pgc_text is not None else 1)
    text = np.zeros((n_ugc + n_pgc, dt), np.float32)
    mask = np.zeros(n_ugc + n_pgc, bool)
    if ugc.text is not None:
        text[:n_ugc], mask[:n_ugc] = ugc.text, ugc.text_mask
    if pgc_text is not None:
        if pgc_text.shape[1] != dt:
            raise DatasetError(f"{f.lab(F_P_TEXT)}: {pgc_text.shape[1]} columns, {F_TEXT} has {dt}")
        text[n_ugc:] = pgc_text
        mask[n_ugc:] = np.abs(pgc_text).sum(axis=1) > 0
        rep.notes.append(f"text: {int((~mask[n_ugc:]).sum())} professional videos with all-zero text rows "
                         "are masked out")
    uploader = np.full(n_ugc + n_pgc, -1, np.int64)
    first = np.unique(train.rows[:, 0], return_index=True)
    uploader[first[0]] = train.rows[first[1], 2]
    return _Videos(visual, text, mask, uploader, n_ugc, n_pgc)


def _vote_track_genres(train: _Training, n_tracks: int, rep: InteropReport) -> tuple[np.ndarray, str]:
    """Each track's genre, the majority label of its training rows (ties: the lowest id; tracks never in train: the
    most frequent genre, counted in ``rep.counts``), and the report's note on the vote."""
    n_genres = len(train.prior_mean)
    votes = np.zeros((n_tracks, n_genres), np.int64)
    np.add.at(votes, (train.rows[:, 1], train.genre), 1)
    seen = votes.sum(axis=1) > 0
    track_genre = votes.argmax(axis=1)
    top = np.sort(votes, axis=1)
    conflicted = int((seen & (votes.max(axis=1) < votes.sum(axis=1))).sum())
    ties = int((seen & (top[:, -1] == top[:, -2])).sum()) if n_genres > 1 else 0
    majority = int(np.bincount(track_genre[seen], minlength=n_genres).argmax()) if seen.any() else 0
    track_genre[~seen] = majority
    rep.counts["tracks_never_in_train"] = int((~seen).sum())
    return track_genre, (f"track genres: majority vote over training rows; {conflicted} tracks had inconsistent "
                         f"genres ({ties} ties, lowest genre id kept); {int((~seen).sum())} tracks never in train "
                         f"got the most frequent genre ({majority})")


def _pgc_rows(pairs: np.ndarray, n_ugc: int, music_offset: int) -> np.ndarray:
    """``data_pgc/`` [video, music] pairs as dataset rows [video, track, -1]: the PGC videos follow the UGC ones,
    its tracks the UGC catalogue when it has its own (``music_offset``)."""
    return np.stack([pairs[:, 0] + n_ugc, pairs[:, 1] + music_offset, np.full(len(pairs), -1)],
                    axis=1).astype(np.int64)


def _assemble_splits(train: _Training, evaluation: dict[str, _EvalSplit], pgc: _PgcData | None, n_ugc: int,
                     n_m: int) -> tuple[_Splits, dict[str, np.ndarray]]:
    """The splits (train, the evaluation splits, the teacher's ``pgc``) and the side files (the training rows'
    propensities, the teacher's validation rows)."""
    rows = {"train": train.rows, **{stem: split.rows for stem, split in evaluation.items()}}
    info = {"train": SplitInfo("train", "existing"),
            **{stem: SplitInfo("val" if stem == "val" else "test", "existing") for stem in evaluation}}
    extra = {"extra/train_propensity.npy": train.propensity}
    if pgc is not None:
        offset = 0 if pgc.own_music is None else n_m
        rows["pgc"] = _pgc_rows(pgc.rows, n_ugc, offset)
        info["pgc"] = SplitInfo("teacher", "existing" if pgc.own_music is None else "new")
        if pgc.val is not None:
            extra["extra/pgc_val.npy"] = _pgc_rows(pgc.val, n_ugc, offset)
    negatives = {stem: split.negatives for stem, split in evaluation.items()}
    weights = {stem: split.weights for stem, split in evaluation.items() if split.weights is not None}
    return _Splits(rows, info, negatives, weights), extra


def _read_sidecar(src: Path) -> dict | None:
    p = src / SIDECAR
    if not p.is_file():
        return None
    side = parse_json_file(p, str(p))
    if not isinstance(side, dict) or side.get("sidecar_version") != SIDECAR_VERSION:
        raise DatasetError(f"{p}: not a bgmrec export record of version {SIDECAR_VERSION}")
    for key, (expected, ok) in _SIDECAR_FIELDS.items():
        if (key in side or key == "music_dim") and not ok(side.get(key)):
            raise DatasetError(f"{p}: field {key!r} must be {expected}, found {json.dumps(side.get(key))[:60]}")
    for stem, meta in side.get("splits", {}).items():
        if not (isinstance(meta, dict) and isinstance(meta.get("name", ""), str)
                and meta.get("role", "test") in SPLIT_ROLES and meta.get("candidates", "all") in CANDIDATE_SETS):
            raise DatasetError(f"{p}: field 'splits.{stem}' must be an object with a string name, a role in "
                               f"{SPLIT_ROLES} and candidates in {CANDIDATE_SETS}, found {json.dumps(meta)[:60]}")
    names = [str(meta.get("name", stem)) for stem, meta in side.get("splits", {}).items()]
    for name in names:
        check_split_name(name, f"{p}: field 'splits'")
    if len(set(names)) < len(names):
        raise DatasetError(f"{p}: field 'splits' gives two splits the same name ({sorted(names)})")
    return side


def _restore_negatives(side: dict, src: Path, name: str, negatives: dict, rep: InteropReport) -> None:
    """Put back the frozen negatives split ``name`` had before export drew the layout's 100 (none, or the
    file ``native_negatives`` names). A sidecar without that record (an older export) keeps the drawn
    ones, unless they reach beyond the split's candidates (:func:`_redraw_outside_candidates`)."""
    native = side.get("native_negatives", {})
    if name not in native:
        rep.notes.append(f"{name}: its negatives were drawn by bgmrec export (the native split had no "
                         f"{REF_NEGATIVES} frozen ones)")
        return
    if native[name] is None:
        del negatives[name]
        rep.notes.append(f"{name}: no frozen negatives, as before export (which drew {REF_NEGATIVES} for the layout)")
        return
    rel = Path(native[name])
    if rel.is_absolute() or ".." in rel.parts:
        raise DatasetError(f"{src}/{SIDECAR}: field 'native_negatives.{name}' must name a file inside {src}")
    label = f"{src}/{rel}"
    neg = read_npy(src / rel, label)
    if neg.ndim != 2 or neg.shape[0] != len(negatives[name]) or neg.dtype.kind not in "iu":
        raise DatasetError(f"{label}: expected int negatives [{len(negatives[name])}, k], found {neg.dtype} of "
                           f"shape {list(neg.shape)}")
    negatives[name] = neg.astype(np.int64)
    rep.notes.append(f"{name}: its own {neg.shape[1]} frozen negatives put back from {rel} (export drew "
                     f"{REF_NEGATIVES} for the layout)")


def _redraw_outside_candidates(ds: Dataset, names: list[str], rep: InteropReport) -> None:
    """Splits whose negatives an older bgmrec export drew from the whole catalogue, beyond the split's own
    candidates (and kept no copy of the split's own): their negatives are drawn again, seeded, from the
    candidates, as many as the layout's or every other candidate when fewer (as ``simulate`` does)."""
    from bgmrec.data.negatives import sample_negatives

    for name in names:
        if ds.in_candidates(name, ds.negatives[name]).all():
            continue
        pool = ds.candidate_tracks(name)
        k = min(ds.negatives[name].shape[1], len(pool) - 1)
        ds.negatives[name] = sample_negatives(ds.splits[name][:, 1], pool, k, np.random.default_rng(0))
        rep.notes.append(f"{name}: an older bgmrec export drew its negatives beyond its {len(pool)} candidates "
                         f"({ds.split_info[name].candidates}); {k} drawn again from them (seed 0)")


def _reference_negatives(ds: Dataset, name: str, rng: np.random.Generator, rep: InteropReport) -> np.ndarray:
    """The layout's 100 negatives per row of split ``name``, which has another number: drawn from the
    split's candidates, or from the whole catalogue when those are too few (the reference script then ranks
    tracks the split does not; said in the report)."""
    from bgmrec.data.negatives import sample_negatives

    had = "no" if ds.negatives.get(name) is None else ds.negatives[name].shape[1]
    pool = ds.candidate_tracks(name)
    where = f"its candidates ({ds.split_info[name].candidates})"
    if len(pool) - 1 < REF_NEGATIVES:
        if ds.n_tracks - 1 < REF_NEGATIVES:
            raise ValueError(f"split {name!r}: {ds.n_tracks} tracks cannot give {REF_NEGATIVES} negatives: the "
                             f"reference layout freezes {REF_NEGATIVES} per evaluation row, so it needs a catalogue "
                             f"of at least {REF_NEGATIVES + 1} tracks")
        pool = np.arange(ds.n_tracks)
        where = (f"the whole catalogue: its {ds.split_info[name].candidates} candidates are "
                 f"{len(ds.candidate_tracks(name))}, so the reference evaluation also ranks tracks this split does not")
    rep.notes.append(f"{name}: {had} frozen negatives; {REF_NEGATIVES} drawn from {where}, seeded; "
                     f"import puts back the split's own")
    return sample_negatives(ds.splits[name][:, 1], pool, REF_NEGATIVES, rng)


def _list_of(kind: type, distinct: bool = False):
    return lambda v: (isinstance(v, list) and all(isinstance(x, kind) for x in v)
                      and (not distinct or len(set(v)) == len(v)))


# field -> (what it must be, check); 'music_dim' is required, the others optional
_SIDECAR_FIELDS = {
    "music_dim": ("a positive integer", lambda v: type(v) is int and v > 0),
    "genres": ("a list of distinct genre names", _list_of(str, distinct=True)),
    "track_genre": ("a list of genre ids", _list_of(int)),
    "track_new": ("a list of 0/1 flags", lambda v: _list_of(int)(v) and set(v) <= {0, 1}),
    "track_ids": ("a list of distinct track ids (strings)", _list_of(str, distinct=True)),
    "video_ids": ("a list of distinct video ids (strings)", _list_of(str, distinct=True)),
    "pgc_music": ("'shared' or 'own'", lambda v: v in ("shared", "own")),
    "pgc_val_holdout": ("true or false", lambda v: isinstance(v, bool)),
    "splits": ("an object {file stem: {name, role, candidates}}", lambda v: isinstance(v, dict)),
    "resampled_negatives": ("a list of split names", _list_of(str)),
    "native_negatives": ("an object {split name: file of its own negatives, or null}",
                         lambda v: isinstance(v, dict) and all(x is None or isinstance(x, str) for x in v.values())),
}


def _apply_sidecar(side: dict, src: Path, labels: _Labels) -> _Labels:
    """``labels`` as the sidecar records them, its lists checked against the data's counts."""
    label = f"{src}/{SIDECAR}"
    n_t, n_v = len(labels.track_ids), len(labels.video_ids)
    for key, n in (("track_genre", n_t), ("track_new", n_t), ("track_ids", n_t), ("video_ids", n_v)):
        if key in side and len(side[key]) != n:
            raise DatasetError(f"{label}: {key} has {len(side[key])} entries, the data has {n}")
    genres = list(side.get("genres", labels.genres))
    tg = np.asarray(side.get("track_genre", labels.track_genre), np.int64)
    bad = np.flatnonzero((tg < 0) | (tg >= len(genres)))
    if bad.size:
        raise DatasetError(f"{label}: track_genre[{int(bad[0])}] is {int(tg[bad[0]])}; expected a genre id in "
                           f"[0, {len(genres)}) ({len(genres)} genres in field 'genres')")
    return _Labels(genres, tg, np.asarray(side.get("track_new", labels.track_new), bool),
                   list(side.get("video_ids", labels.video_ids)), list(side.get("track_ids", labels.track_ids)))


def _apply_sidecar_splits(side: dict, src: Path, splits: _Splits, extra: dict[str, np.ndarray],
                          rep: InteropReport) -> _Splits:
    """The splits under the names, roles and candidates the sidecar records, with the teacher validation rows
    export carved from the teacher split moved back from ``extra`` into it and the splits' own negatives put back."""
    rows = splits.rows
    if side.get("pgc_val_holdout") and "pgc" in rows and "extra/pgc_val.npy" in extra:
        rows = {**rows, "pgc": np.concatenate([rows["pgc"], extra.pop("extra/pgc_val.npy")])}
    meta = side.get("splits", {})

    def nm(stem: str) -> str:
        return str(meta.get(stem, {}).get("name", stem))

    info = {nm(s): SplitInfo(str(meta.get(s, {}).get("role", given.role)),
                             str(meta.get(s, {}).get("candidates", given.candidates)))
            for s, given in splits.info.items()}
    negatives = {nm(s): r for s, r in splits.negatives.items()}
    for name in side.get("resampled_negatives", []):
        if name in negatives:
            _restore_negatives(side, src, name, negatives, rep)
    return _Splits({nm(s): r for s, r in rows.items()}, info, negatives, {nm(s): w for s, w in splits.weights.items()})


def import_tt150k(src: Path, out: Path, pgc_music: str = "auto") -> InteropReport:
    """Import a DecCM reference-layout folder ``src`` as a native dataset at ``out`` (atomic; an ``out`` that may not
    be replaced is refused first, not after the whole source is read)."""
    check_replaceable(Path(out))
    ds, extra, rep = read_tt150k(src, pgc_music)
    save_dataset(ds, Path(out), extra_files=extra, extra_json={"extra/import_report.json": rep.to_json()})
    return rep


# ---- export ------------------------------------------------------------------------------------------

def _split_music(music: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = music.shape[1]
    if d <= 2 * MUSIC_PART:
        padded = np.zeros((music.shape[0], 2 * MUSIC_PART), np.float32)
        padded[:, :d] = music
        return padded[:, :MUSIC_PART], padded[:, MUSIC_PART:]
    half = (d + 1) // 2
    second = np.zeros((music.shape[0], half), np.float32)
    second[:, : d - half] = music[:, half:]
    return np.ascontiguousarray(music[:, :half]), second


def export_tt150k(data: Dataset | Path, out: Path, seed: int = 0) -> InteropReport:
    """Write a native dataset (a folder or a :class:`Dataset`) in the DecCM reference layout at ``out``.

    ``out`` receives ``data_matching/``, ``data_pgc/``, ``bgmrec_export.json`` and, for splits whose frozen
    negatives are not 100, ``bgmrec_negatives/`` (their own, for import to put back), written under a
    temporary name and renamed into place. See the module docstring for the layout and for the choices
    made where the layout cannot hold the native data. ``seed`` draws the layout's negatives of splits
    that have no 100 frozen ones.
    """
    ds = data if isinstance(data, Dataset) else load_dataset(Path(data))
    ds.validate("export")
    reports: list[InteropReport] = []
    atomic_write_dir(Path(out), lambda tmp: reports.append(_export_into(ds, tmp, seed)), marker=SIDECAR,
                     version_key="sidecar_version", what="a TT-150k export")
    return reports[0]


@dataclass(frozen=True)
class _LayoutVideos:
    """Where the layout puts each video of a dataset: the UGC ones in ``data_matching/``, the PGC ones in
    ``data_pgc/``, each numbered from 0 in its folder."""

    source: np.ndarray  # str [N]: each video's source
    ugc: np.ndarray  # int64: the UGC videos, in the order the layout numbers them
    pgc: np.ndarray  # int64: the PGC videos, likewise
    ref_of: np.ndarray  # int64 [N]: each video's id in its folder

    @classmethod
    def of(cls, ds: Dataset) -> _LayoutVideos:
        source = np.asarray(ds.video_source)
        ugc, pgc = np.flatnonzero(source != "pgc"), np.flatnonzero(source == "pgc")
        ref_of = np.full(ds.n_videos, -1, np.int64)
        ref_of[ugc] = np.arange(len(ugc))
        ref_of[pgc] = np.arange(len(pgc))
        return cls(source, ugc, pgc, ref_of)

    def check(self, name: str, rows: np.ndarray, want_pgc: bool) -> None:
        """Refuse rows of split ``name`` that use a video of the other source than ``want_pgc`` says."""
        wrong = (self.source[rows[:, 0]] == "pgc") != want_pgc
        if wrong.any():
            raise ValueError(f"split {name!r}: row {int(np.flatnonzero(wrong)[0])} uses a "
                             f"{'UGC' if want_pgc else 'PGC'} video; the layout keeps UGC and PGC apart")


_UGC_FILES = (F_VISUAL, F_VGGISH, F_SMILE, F_TEXT)
_PGC_FILES = (F_P_VISUAL, F_P_VGGISH, F_P_SMILE, F_P_TEXT)


def _export_into(ds: Dataset, out: Path, seed: int) -> InteropReport:
    """Write ``ds`` in the reference layout into the folder ``out``; the report of what was written."""
    rep = InteropReport()
    layout = _LayoutVideos.of(ds)
    by_role, stems = _layout_stems(ds)
    (out / M_DIR / "100neg").mkdir(parents=True, exist_ok=True)
    music = np.asarray(ds.music, np.float32)
    vgg, smile = _split_music(music)
    _save_features(out, _UGC_FILES, ds, layout.ugc, vgg, smile)
    if music.shape[1] != 2 * MUSIC_PART:
        rep.notes.append(f"music: {music.shape[1]} columns written as two files of {vgg.shape[1]} "
                         f"(zero-padded); the true width is in {SIDECAR}")
    train_name = by_role["train"][0]
    _save_train(ds, out, train_name, layout, rep)
    resampled, native = _save_evaluation_splits(ds, out, stems, layout, np.random.default_rng(seed), rep)

    teacher, pgc_holdout = None, 0
    if by_role["teacher"]:
        if len(by_role["teacher"]) > 1:
            raise ValueError(f"the layout holds one teacher split; found {by_role['teacher']}")
        teacher = by_role["teacher"][0]
        pgc_holdout = _save_teacher(ds, out, teacher, layout, vgg, smile, rep)
    else:
        rep.missing.append(f"{P_DIR}/ (the dataset has no teacher split)")

    side = _export_record(ds, stems, teacher, layout, int(music.shape[1]), pgc_holdout > 0, resampled, native)
    (out / SIDECAR).write_text(json.dumps(side, indent=1) + "\n", encoding="utf-8")
    if len(layout.ugc) and not np.array_equal(np.concatenate([layout.ugc, layout.pgc]), np.arange(ds.n_videos)):
        rep.notes.append("videos were reordered (UGC first, then PGC); ids are kept in the sidecar")
    rep.counts.update({"ugc_videos": len(layout.ugc), "pgc_videos": len(layout.pgc), "tracks": ds.n_tracks,
                       "genres": ds.n_genres, "rows_train": len(ds.splits[train_name])})
    rep.dims = {"video_visual": int(ds.video_visual.shape[1]), "video_text": int(ds.video_text.shape[1]),
                "music": int(music.shape[1]), "music_files": int(vgg.shape[1])}
    rep.notes.append("the DecCM scripts hard-code dim_v=2048, dim_m=256, num_music=3003 and num_groups=6: edit "
                     f"them to dim_v={rep.dims['video_visual']}, dim_m={2 * vgg.shape[1]}, num_music={ds.n_tracks} "
                     f"and num_groups={ds.n_genres}")
    return rep


def _layout_stems(ds: Dataset) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The split names by role and the file stem of each split but the teacher's (train, val, test, further
    test splits by name); refused where the layout cannot hold the splits."""
    by_role = {r: ds.split_names(r) for r in ("train", "val", "test", "teacher")}
    if len(by_role["train"]) != 1 or len(by_role["val"]) != 1 or not by_role["test"]:
        raise ValueError(f"the layout needs one train split, one val split and at least one test split; "
                         f"found {by_role}")
    tests = sorted(by_role["test"], key=lambda s: s != "test")
    stems = {by_role["train"][0]: "train", by_role["val"][0]: "val", tests[0]: "test"}
    for s in tests[1:]:
        if s in ("train", "val", "test", "pgc"):
            raise ValueError(f"test split {s!r} would collide with a reference file name")
        stems[s] = s
    return by_role, stems


def _save_features(out: Path, files: tuple[str, str, str, str], ds: Dataset, videos: np.ndarray,
                   vgg: np.ndarray, smile: np.ndarray) -> None:
    """The frames of ``videos``, the two music files and, when any of ``videos`` has text, their text (zero where
    masked out), into ``files`` (visual, VGGish, openSMILE, text)."""
    visual_file, vgg_file, smile_file, text_file = files
    np.save(out / visual_file, np.asarray(ds.video_visual, np.float32)[videos])
    np.save(out / vgg_file, vgg)
    np.save(out / smile_file, smile)
    mask = np.asarray(ds.video_text_mask, bool)[videos]
    if mask.any():
        text = np.asarray(ds.video_text, np.float32)[videos]
        np.save(out / text_file, np.where(mask[:, None], text, 0.0).astype(np.float32))


def _save_train(ds: Dataset, out: Path, name: str, layout: _LayoutVideos, rep: InteropReport) -> None:
    """``train.npy`` (rows [video, music, genre string, genre distribution, propensity]) of training split
    ``name``, and ``user_prior_mean.npy``: of a dataset this module imported, the prior and the propensity column
    it kept (:func:`_kept_train_columns`), else the rows' mean distribution and each track's share of the rows."""
    tr = np.asarray(ds.splits[name])
    layout.check(name, tr, False)
    prior = ds.confounder(tr[:, 2]).astype(np.float64)
    counts = np.bincount(tr[:, 1], minlength=ds.n_tracks)
    kept_mean, kept_propensity = _kept_train_columns(ds, len(tr))
    propensity = counts[tr[:, 1]] / max(1, len(tr)) if kept_propensity is None else kept_propensity
    if kept_mean is not None or kept_propensity is not None:
        rep.notes.append("the imported " + " and ".join(
            w for w, kept in (("user_prior_mean", kept_mean), ("propensity column", kept_propensity))
            if kept is not None) + " written back as imported (not recomputed from the rows)")
    rows = np.empty((len(tr), 5), object)
    vids, mus, gen = layout.ref_of[tr[:, 0]].tolist(), tr[:, 1].tolist(), ds.track_genre[tr[:, 1]].tolist()
    for i in range(len(tr)):
        rows[i, 0], rows[i, 1], rows[i, 2], rows[i, 4] = vids[i], mus[i], str(gen[i]), float(propensity[i])
        rows[i, 3] = prior[i].tolist()
    save_object_npy(out / F_TRAIN, rows)
    mean = kept_mean if kept_mean is not None else prior.mean(axis=0) if len(prior) else \
        np.full(ds.n_genres, 1 / ds.n_genres)
    np.save(out / F_PRIOR, mean)


def _rows_digest(rows) -> str:
    """SHA-256 of a split's rows as int64: what an import's kept train columns belong to."""
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(np.asarray(rows), np.int64).tobytes()).hexdigest()


def _kept_train_columns(ds: Dataset, n_train: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(``user_prior_mean`` [G], the propensity column [n_train]) that an import of the layout kept of its source
    (the manifest's provenance, ``extra/train_propensity.npy`` in the dataset's folder), each None when the
    dataset has none of the right size and finite, or its train rows are not those imported (their SHA-256 in the
    provenance): an export had recomputed both from the rows, so the DecCM scripts scored a re-export with another
    prior than the authors' files held."""
    prov = ds.provenance or {}
    train = ds.split_names("train")
    if prov.get("importer") != "bgmrec.data.tt150k" or len(train) != 1 or \
            prov.get("train_rows_sha256") != _rows_digest(ds.splits[train[0]]):  # rows changed since: not theirs
        return None, None
    mean = None
    try:
        given = np.asarray(prov.get("user_prior_mean"), np.float64)
        mean = given if given.shape == (ds.n_genres,) and np.isfinite(given).all() else None
    except (TypeError, ValueError):
        pass
    propensity = None
    rel = prov.get("train_propensity")
    if ds.root is not None and isinstance(rel, str) and rel == "extra/train_propensity.npy":
        try:
            given = np.load(Path(ds.root) / rel, allow_pickle=False)
            if given.shape == (n_train,) and np.issubdtype(given.dtype, np.number) and np.isfinite(given).all():
                propensity = given.astype(np.float64)
        except (OSError, ValueError):
            pass
    return mean, propensity


def _save_evaluation_splits(ds: Dataset, out: Path, stems: dict[str, str], layout: _LayoutVideos,
                            rng: np.random.Generator, rep: InteropReport) -> tuple[list[str], dict[str, str | None]]:
    """The ``100neg/`` rows and the weights of every split of ``stems`` but train, 100 negatives a row (drawn
    where the split has no 100 frozen ones); the splits drawn for, and the file of each one's own negatives."""
    resampled, native = [], {}
    for name, stem in stems.items():
        if stem == "train":
            continue
        r = np.asarray(ds.splits[name])
        layout.check(name, r, False)
        neg = ds.negatives.get(name)
        if neg is None or neg.shape[1] != REF_NEGATIVES:
            neg = _reference_negatives(ds, name, rng, rep)
            resampled.append(name)
            native[name] = _save_native_negatives(ds, out, name)
        table = np.empty((len(r), 3), object)
        vr, mr = layout.ref_of[r[:, 0]].tolist(), r[:, 1].tolist()
        neg = np.asarray(neg, np.int64)
        for i in range(len(r)):
            table[i, 0], table[i, 1], table[i, 2] = vr[i], mr[i], neg[i].copy()
        save_object_npy(out / _neg_file(stem), table)
        w = np.asarray(ds.weights[name], np.float64) if name in ds.weights else ds.ipw_weights(name)
        np.save(out / _weight_file(stem), w)
        rep.counts[f"rows_{stem}"] = len(r)
    return resampled, native


def _save_native_negatives(ds: Dataset, out: Path, name: str) -> str | None:
    """Split ``name``'s own frozen negatives, kept beside the layout for import to put back: their file, or None
    when it has none."""
    if ds.negatives.get(name) is None:
        return None
    rel = f"{NATIVE_NEG_DIR}/{name}.npy"
    (out / NATIVE_NEG_DIR).mkdir(exist_ok=True)
    np.save(out / rel, np.asarray(ds.negatives[name], np.int64))
    return rel


def _save_teacher(ds: Dataset, out: Path, name: str, layout: _LayoutVideos, vgg: np.ndarray, smile: np.ndarray,
                  rep: InteropReport) -> int:
    """``data_pgc/`` from teacher split ``name``: the PGC videos' features, the music files and the rows, with
    ``val.npy`` the validation rows an import kept, else the split's last rows; how many rows that holds out."""
    r = np.asarray(ds.splits[name])
    layout.check(name, r, True)
    (out / P_DIR).mkdir(parents=True, exist_ok=True)
    _save_features(out, _PGC_FILES, ds, layout.pgc, vgg, smile)
    pairs = np.stack([layout.ref_of[r[:, 0]], r[:, 1]], axis=1).astype(np.int64)
    kept_val = None if ds.root is None else Path(ds.root) / "extra" / "pgc_val.npy"
    if kept_val is not None and kept_val.is_file():  # an imported dataset: its own teacher validation
        val = np.load(kept_val, allow_pickle=False)
        if val.ndim != 2 or val.shape[1] != 3 or ((val[:, 0] < 0) | (val[:, 0] >= ds.n_videos)).any():
            raise DatasetError(f"{kept_val}: expected int rows [video, track, -1] of this dataset")
        layout.check("extra/pgc_val", val, True)
        np.save(out / F_P_TRAIN, pairs)
        np.save(out / F_P_VAL, np.stack([layout.ref_of[val[:, 0]], val[:, 1]], axis=1).astype(np.int64))
        rep.counts["rows_pgc_train"], rep.counts["rows_pgc_val"] = len(pairs), len(val)
        rep.notes.append("data_pgc/val.npy: the teacher validation rows kept at import "
                         "(extra/pgc_val.npy)")
        return 0
    holdout = int(np.ceil(PGC_VAL_SHARE * len(pairs))) if len(pairs) > 1 else 0
    np.save(out / F_P_TRAIN, pairs[: len(pairs) - holdout])
    np.save(out / F_P_VAL, pairs[len(pairs) - holdout:])
    rep.counts["rows_pgc_train"], rep.counts["rows_pgc_val"] = len(pairs) - holdout, holdout
    rep.notes.append(f"data_pgc/val.npy: the last {holdout} rows of {name!r} (the teacher script "
                     "needs a validation file); import puts them back")
    return holdout


def _export_record(ds: Dataset, stems: dict[str, str], teacher: str | None, layout: _LayoutVideos,
                   music_dim: int, pgc_val_holdout: bool, resampled: list[str],
                   native: dict[str, str | None]) -> dict:
    """The sidecar's content: what the layout cannot hold, for import to restore."""
    split_meta = {stem: {"name": name, "role": ds.split_info[name].role,
                         "candidates": ds.split_info[name].candidates} for name, stem in stems.items()}
    if teacher is not None:
        split_meta["pgc"] = {"name": teacher, "role": "teacher", "candidates": ds.split_info[teacher].candidates}
    return {
        "sidecar_version": SIDECAR_VERSION,
        "written_by": "bgmrec.data.tt150k.export_tt150k",
        "music_dim": music_dim,
        "genres": list(ds.genres),
        "track_genre": ds.track_genre.tolist(),
        "track_new": np.asarray(ds.track_new, bool).astype(int).tolist(),
        "track_ids": list(ds.track_ids),
        "video_ids": [ds.video_ids[i] for i in np.concatenate([layout.ugc, layout.pgc])],
        "pgc_music": "shared",
        "pgc_val_holdout": pgc_val_holdout,
        "splits": split_meta,
        "resampled_negatives": resampled,
        "native_negatives": native,
        "source_provenance": ds.provenance,
        "note": "Not read by the DecCM scripts. They hard-code dim_v=2048, dim_m=256 and num_groups=6 and default "
                "num_music=3003; set them to the counts/dims here when running them on this folder.",
    }
