"""Shared plumbing of the media extractors: content-hash cache, failure report, progress bar (and steps).

Cache layout (one folder per extractor, by default ``<OUT_DIR>/.cache/<namespace>/``)::

    <namespace>/<config-key>/<sha256[:2]>/<sha256>.npy    one float32 vector per input

The key is the SHA-256 of the input's bytes (or of a caption's UTF-8 text), so a renamed or
copied file is not extracted twice, an edited one is; ``config-key`` is a short hash of the
extractor settings and versions, so changing them never reuses stale vectors (and an entry that is not a
finite vector of the extractor's length, damaged or left by something else, is redone). Every entry is
written atomically (temporary name, then :func:`os.replace`): an interrupted run leaves only
complete entries, and the next run resumes from them. Extractions into several output folders (a catalogue a
week) share vectors through one cache folder outside them, named every time; a cache folder named explicitly
that holds nothing to reuse is named: a new one in a note, another extractor's or other settings' cache in a
warning (:func:`cache_reuse`).

``failures.csv`` has the columns ``file,reason``: one row per input that was skipped, or kept with a note (a
reason starting :data:`KEPT`: a video used without text, or with frames repeated), the reason on one line.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import os
import shutil
import stat
import sys
import time
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bgmrec.data.dataset import is_leftover, separator_hint, sha256_file
from bgmrec.extras import extra_modules

KEPT = "kept "  # a failures.csv reason starting so is a note on an input that was kept, not a failure
UNSUPPORTED = "unsupported format"  # a failures.csv reason starting so: a file of another kind, not media


class MediaError(ValueError):
    """One input file cannot be used; the message is a one-line reason."""


@dataclass
class ExtractReport:
    """What one ``extract-music`` or ``extract-videos`` run did."""

    out: Path  # the folder written
    done: int  # inputs in the output
    extracted: int  # inputs analysed in this run
    cached: int  # inputs whose vector came from the cache
    failures: list[tuple[str, str]]  # (file, reason), warnings included (e.g. a video used without its caption)
    warnings: list[str] = field(default_factory=list)  # one line each, e.g. metadata rows naming no file
    captions_embedded: int | None = None  # extract-videos with captions: those embedded in this run (not cached)
    captions_cached: int | None = None  # extract-videos with captions: those whose vector came from the cache
    added: list[str] | None = None  # ids the folder's last extraction did not have (None: the folder held none)
    pruned: tuple[int, int] | None = None  # with prune_cache: (cache entries removed, their bytes)
    cache_note: str | None = None  # an explicit --cache that held nothing to reuse: a new cache (cache_reuse)


def av_version() -> str:
    """PyAV's version, recorded in a manifest as the decoder's."""
    with extra_modules():
        import av

    return av.__version__


def sha256_text(text: str) -> str:
    """A caption's cache key: the SHA-256 of its UTF-8 bytes (lone surrogates kept, not refused)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def config_key(settings: dict) -> str:
    """A short stable hash of a JSON-able settings dict (extractor parameters and versions)."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def one_line(err: BaseException | str) -> str:
    """An exception as one short line (no newlines, no traceback)."""
    if type(err).__module__.startswith("av") and getattr(err, "strerror", None):
        text = f"{type(err).__name__}: {err.strerror}"  # PyAV: drop the errno and the file name
    else:
        text = str(err) if isinstance(err, str) else (str(err) or type(err).__name__)
    if not isinstance(err, str | MediaError) and type(err).__name__ not in text:
        text = f"{type(err).__name__}: {text}"
    text = " ".join(text.split())
    return text[:300]


@dataclass
class FeatureCache:
    """Vectors keyed by content hash, stored as one ``.npy`` per key (see the module docstring)."""

    root: Path  # the namespace folder, e.g. OUT_DIR/.cache/audio
    settings: dict  # extractor settings; their hash separates incompatible entries
    dim: int  # the extractor's vector length; an entry of another length is not used
    hits: int = 0  # lookups answered from the cache in this process
    folder: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.folder = self.root / config_key(self.settings)

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        """The cached vector, or None when absent, unreadable or not a finite float vector of length ``dim``
        (such an entry, damaged or written by something else, is redone)."""
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            arr = np.load(p, allow_pickle=False)
        except (ValueError, OSError, EOFError):
            return None
        if arr.shape != (self.dim,) or arr.dtype.kind != "f" or not np.isfinite(arr).all():
            return None
        self.hits += 1
        return arr

    def put(self, key: str, arr: np.ndarray) -> None:
        """Store atomically (:func:`~bgmrec.data.dataset.save_npy_atomic`)."""
        from bgmrec.data.dataset import save_npy_atomic

        save_npy_atomic(self.path(key), np.asarray(arr))

    def prune(self, keep: set[str]) -> tuple[int, int]:
        """Remove the entries of this namespace (:attr:`root`) but those of ``keep`` under the current settings:
        every entry of other settings, and every entry of these no extraction of this run used (an input
        removed or edited since). Returns (entries removed, their bytes). The cache of another extraction
        sharing ``root`` loses its entries: prune a cache one folder uses."""
        removed = freed = 0
        if not self.root.is_dir():
            return 0, 0
        for settings_folder in self.root.iterdir():
            if not settings_folder.is_dir() or settings_folder.is_symlink():
                continue
            ours = settings_folder == self.folder
            for entry in settings_folder.rglob("*.npy"):
                if ours and entry.stem in keep:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    size = entry.lstat().st_size
                    entry.unlink()
                    removed, freed = removed + 1, freed + size
            for folder in sorted((f for f in settings_folder.rglob("*") if f.is_dir()), reverse=True):
                with contextlib.suppress(OSError):  # emptied folders: deepest first
                    folder.rmdir()
            if not ours:
                with contextlib.suppress(OSError):  # the other settings' note, then their folder
                    (settings_folder / "settings.json").unlink()
                    settings_folder.rmdir()
        return removed, freed

    def describe(self) -> None:
        """Record the settings beside the entries (for humans; never read back)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        info = self.folder / "settings.json"
        if not info.is_file():
            tmp = info.with_name(f".settings.json.tmp-{os.getpid()}")
            tmp.write_text(json.dumps(self.settings, indent=2, default=str) + "\n")
            os.replace(tmp, info)


def write_csv_atomic(path: Path, header: list[str], rows: list[list]) -> None:
    """Write a UTF-8 CSV of ``header`` and ``rows`` through :func:`~bgmrec.data.dataset.replace_atomically`."""
    from bgmrec.data.dataset import replace_atomically

    def fill(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)

    replace_atomically(path, fill)


def write_failures(path: Path, failures: list[tuple[str, str]]) -> None:
    """``failures.csv``: ``file,reason`` per failed input (written even when empty)."""
    write_csv_atomic(path, ["file", "reason"], [[f, one_line(r)] for f, r in failures])


def skipped_rows(folder: Path) -> list[tuple[str, str]]:
    """(file, reason) of each input an extracted folder's ``failures.csv`` says was skipped (not those kept with a
    note); [] without the file."""
    path = Path(folder) / "failures.csv"
    if not path.is_file():
        return []
    return [(row["file"], row["reason"]) for row in read_csv_utf8(path, ("file", "reason"))
            if not row["reason"].startswith(KEPT)]


def failed_inputs(folder: Path) -> dict[str, str]:
    """``{id: reason}`` of the inputs an extracted folder's ``failures.csv`` says were skipped (:func:`skipped_rows`),
    each by its file stem (the id it would have had) and its file name as the row gives it; {} without the file.
    Tells a typo in an id from an input whose extraction failed."""
    failed = {}
    for file, reason in skipped_rows(folder):
        failed[file] = failed[Path(file).stem] = reason
    return failed


def failed_media(folder: Path) -> dict[str, str]:
    """:func:`failed_inputs` of ``folder`` but the files of a format not read (:func:`media_failures`)."""
    return media_failures(failed_inputs(folder))


def media_failures(failed: dict[str, str]) -> dict[str, str]:
    """Of ``failed`` (:func:`failed_inputs`), the media files: not those of a format not read (a ``.txt`` beside a
    clip is no clip)."""
    return {k: r for k, r in failed.items() if not r.startswith(UNSUPPORTED)}


def files_in(folder: Path, exclude: tuple[Path, ...] = ()) -> list[Path]:
    """Non-hidden entries under ``folder`` (recursively) other than folders, in sorted order: regular files,
    and the FIFOs, devices, sockets and symbolic links to nothing that :func:`regular_file_size` refuses.

    Those of the folders ``exclude`` (the output folder, the cache) that lie inside ``folder`` are skipped: one
    that holds it (a cache ``.`` above the input folder) skips nothing.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder")
    inside = Path(os.path.realpath(folder))
    skip = {e for e in (Path(os.path.realpath(e)) for e in exclude) if inside in e.parents}
    out = [p for p in folder.rglob("*")
           if not p.is_dir() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
           and not skip.intersection(Path(os.path.realpath(p)).parents)]  # resolve() fails on a link loop
    return sorted(out)


def broken_link(path: Path) -> str | None:
    """What ``path`` is when it is a symbolic link that leads to nothing (a loop of links, or a link to a
    missing file), in words; None otherwise."""
    if not path.is_symlink():
        return None
    try:
        path.stat()
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symbolic link loop"
        if e.errno == errno.ENOENT:
            return f"a symbolic link to {os.readlink(path)!r}, which does not exist"
    return None


def check_input_folder(folder: Path, what: str) -> None:
    """A :class:`~bgmrec.data.dataset.DatasetError` unless ``folder`` is a folder (of ``what``, e.g. "tracks"),
    saying why when it is not there: missing, or a symbolic link to nothing."""
    from bgmrec.data.dataset import DatasetError

    if not folder.is_dir():
        why = broken_link(folder) or ("" if folder.exists() else "it does not exist")
        raise DatasetError(f"{folder}: not a folder of {what}" + (f" ({why})" if why else ""))


def regular_file_size(path: Path) -> int:
    """The size in bytes of ``path``, a regular file (a symbolic link's target), found without opening it;
    anything else is a :class:`MediaError` saying what it is (opening a FIFO waits for a writer, for ever)."""
    try:
        st = path.stat()
    except OSError as e:
        raise MediaError(broken_link(path) or f"cannot read: {one_line(e)}") from None
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    kinds = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    what = next((name for test, name in kinds if test(st.st_mode)), "a special file")
    raise MediaError(f"{what}, not a regular file: not read")


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator:
    """A Rich progress bar on stderr; yields ``advance(n=1)``. Disabled (a no-op) when ``enabled`` is False.
    Where stderr is not a terminal (a CI log, a file) a plain line there says each tenth done instead: a bar drew
    nothing until its end."""
    if not enabled:
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    if not console.is_terminal:
        done, t0 = [0], time.perf_counter()

        def advance(n: int = 1) -> None:
            before, done[0] = done[0], done[0] + n
            if total and done[0] * 10 // total > before * 10 // total:  # a tenth more done
                print(f"{description}: {done[0]}/{total} ({done[0] / total:.0%}, {time.perf_counter() - t0:.0f} s)",
                      file=sys.stderr, flush=True)
        yield advance
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), transient=False, console=console) as prog:
        task = prog.add_task(description, total=total)
        yield lambda n=1: prog.advance(task, n)


@contextlib.contextmanager
def progress_steps(description: str, enabled: bool = True) -> Iterator:
    """A task's steps on stderr; yields ``step(what)``, to call as each step starts. On a terminal a Rich status
    line shows the step; where stderr is not a terminal (a CI log, a file) a plain line says each step with the
    seconds since the start instead: a status showed nothing there, for minutes. A no-op when ``enabled`` is
    False."""
    if not enabled:
        yield lambda what: None
        return
    from rich.console import Console

    console, t0 = Console(stderr=True), time.perf_counter()
    if not console.is_terminal:
        yield lambda what: print(f"{description}: {what} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr,
                                 flush=True)
        return
    with console.status(description) as status:
        yield lambda what: status.update(f"{description}: {what}")


def csv_records(reader, path: Path) -> Iterator[tuple[int, list[str]]]:
    """(physical line where the record starts, values) of a ``csv.reader(..., strict=True)`` over ``path``
    opened with ``newline=""``, blank lines skipped; a quoted field may span lines, so this is not a row
    counter. CSV the reader refuses is a :class:`~bgmrec.data.dataset.DatasetError` naming the line its
    record starts on: most often a quote left open, which without ``strict`` swallows the rest of the file
    into one field, silently."""
    from bgmrec.data.dataset import DatasetError

    while True:
        start = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DatasetError(f"{path}: line {start}: {_csv_reason(str(e))}") from None
        if values:
            yield start, values


def check_csv_file(path: Path) -> None:
    """:class:`~bgmrec.data.dataset.DatasetError` unless ``path`` is a file (a folder is named as one)."""
    from bgmrec.data.dataset import check_is_file

    check_is_file(path, kind="CSV file")


def _csv_reason(error: str) -> str:
    """What :class:`csv.Error`'s message means for the line its record starts on."""
    if error.startswith("unexpected end of data"):
        return "a quoted field opened on this line is not closed by the end of the file (a stray '\"'?)"
    if error.startswith("field larger than field limit"):
        return (f"a field of more than {csv.field_size_limit()} characters, more than any id, caption or title "
                "needs (a quote left open on this line?)")
    return (f"not valid CSV ({error}): a quoted field ends at its closing quote, with nothing (not even a space) "
            "before the next comma, and a '\"' inside it is written twice")


def read_csv_utf8(path: Path, columns: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """A whole CSV as dicts (header names stripped and lower-cased); one-line errors name the file.

    A missing file and text that is not UTF-8 (the line is named) are errors. With ``columns`` (a
    file bgmrec wrote) the header must have them and every row exactly the header's fields.
    """
    return [row for _, row in read_csv_lines(path, columns)]


def read_csv_lines(path: Path, columns: tuple[str, ...] = ()) -> list[tuple[int, dict[str, str]]]:
    """As :func:`read_csv_utf8`, each row with the physical line number it starts on."""
    from bgmrec.data.dataset import SAVE_AS_UTF8, DatasetError

    path = Path(path)
    check_csv_file(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DatasetError(f"{path}: line {line}: not UTF-8 text (byte {e.start}: {e.reason}); {SAVE_AS_UTF8}") \
            from None
    records = csv_records(csv.reader(io.StringIO(text, newline=""), strict=True), path)  # quoted fields may span lines
    header_line, header = next(records, (1, []))
    header = [h.strip().lower() for h in header]
    missing = [c for c in columns if c not in header]
    if missing:
        raise DatasetError(f"{path}: line {header_line}: missing column {missing[0]!r} (expected a header with "
                           f"{','.join(columns)}), found {','.join(header) or 'no header'}" + separator_hint(header))
    rows = []
    for line, values in records:
        if columns and len(values) != len(header):
            raise DatasetError(f"{path}: line {line}: {len(values)} field(s), expected "
                               f"{len(header)} ({','.join(header)})")
        check_row_width(path, line, values, header)
        rows.append((line, {h: values[i] if i < len(values) else None for i, h in enumerate(header)}))
    return rows


def check_row_width(path: Path, line: int, values: list[str], header: list[str]) -> None:
    """Refuse a row of an input CSV with fields other than the header's: fewer (a value left out shifts the
    others: an empty one is written ``,,``) or more that are not empty (an unquoted comma inside a value splits
    it, and the columns after it are wrong). Trailing empty fields (a spreadsheet's), and the fields of trailing
    unnamed columns of the header, may be left out or empty."""
    from bgmrec.data.dataset import DatasetError

    named = len(header)
    while named and not header[named - 1]:  # "video,track,uploader," names three columns
        named -= 1
    extra = [v for v in values[named:] if v.strip()]
    if len(values) < named or extra:
        raise DatasetError(f"{path}: line {line}: {len(values)} field(s), expected {named} "
                           f"({','.join(header[:named])})" + (f"; {extra[0]!r} is past the last column (a value with "
                                                              "a comma in it must be quoted)" if extra else
                                                              "; an empty value is written as an empty field (,,)"))


VIDEO_ID_COLUMNS = ("video", "video_id")  # other names a CSV of bgmrec's inputs may give a video's id column
TRACK_ID_COLUMNS = ("track", "track_id", "music", "music_id")  # ... and a track's


def named_column(path: Path, header, what: str, names: tuple[str, ...]) -> str | None:
    """The one column of ``header`` among ``names`` (what a CSV may call the ``what``), or None when it has none.

    Two of them is an error naming the file and both: which one holds the values is not for the reader to
    guess."""
    from bgmrec.data.dataset import DatasetError

    found = [n for n in names if n in header]
    if len(found) > 1:
        raise DatasetError(f"{path}: columns {' and '.join(map(repr, found))} both name the {what}; "
                           "keep one of them (or rename the other)")
    return found[0] if found else None


def key_columns(path: Path, header, what: str, names: tuple[str, ...]) -> list[str]:
    """The columns by which the rows of a metadata or captions CSV name their input: ``id`` and ``file`` where
    the header has them; else the one of ``names`` it has (the pairs CSV's names of the ``what``'s column, as
    ``track_id``; :func:`named_column`). A file with ``id`` or ``file`` keeps its other columns for what they
    were (a music export's ``track`` column of track numbers)."""
    return [c for c in ("id", "file") if c in header] or [c for c in [named_column(path, header, what, names)] if c]


def rows_by_key(path: Path, rows: Iterable[tuple[int, list[str], object]]) -> dict[str, tuple[int, object]]:
    """``{key: (line, value)}`` of rows that each name their input by one or more keys (an id, a file name).

    A key on two rows is an error naming the file, the key and both lines (a later row would silently
    override the earlier one).
    """
    from bgmrec.data.dataset import DatasetError

    out: dict[str, tuple[int, object]] = {}
    for line, keys, value in rows:
        for key in dict.fromkeys(map(same_text, keys)):  # a row whose id and file agree names its input once
            if key in out:
                raise DatasetError(f"{path}: line {line}: duplicate id {key!r} (also on line {out[key][0]}); "
                                   "expected one row per input")
            out[key] = (line, value)
    return out


def same_text(key: str) -> str:
    """``key`` in Unicode's composed form (NFC), so that a name typed as "é" and a file name stored as "e" and a
    combining accent (macOS writes file names decomposed) are one key."""
    return unicodedata.normalize("NFC", key)


def media_keys(item_id: str, path: Path, folder: Path) -> tuple[str, str, str]:
    """The keys by which a row of a metadata or captions CSV names a media file of ``folder``: its id (the
    file stem), its file name, and its path relative to ``folder`` (``rock/a.wav``, as ``tracks.csv`` and
    ``videos.csv`` write it); each as :func:`same_text`, as :func:`rows_by_key` keys the rows."""
    return same_text(item_id), same_text(path.name), same_text(path.relative_to(folder).as_posix())


def unused_rows_warning(path: Path, table: dict[str, tuple[int, object]], items: list[tuple[str, Path, str]],
                        folder: Path, what: str, failures: list[tuple[str, str]] = ()) -> list[str]:
    """The warning lines on rows of ``table`` (from :func:`rows_by_key`) that name none of the ``items`` of
    ``folder`` (by their :func:`media_keys`), e.g. a typo in an id; ``what`` names the inputs ("track file"). A row
    naming a media file of ``failures`` ((path in ``folder``, reason) of the files not extracted: a second file of
    the same id, an empty one) is told apart, with the reason: the file is there, and the row was not a typo. A
    file of a format not read that a row's example names (a song as ``.aiff``, or lyrics beside a missing song)
    is said to be there, with its reason."""
    used_lines = {table[k][0] for item_id, p, _ in items for k in media_keys(item_id, p, folder) if k in table}
    keys_of: dict[int, list[str]] = {}
    for key, (line, _) in table.items():
        keys_of.setdefault(line, []).append(key)
    failed: dict[str, tuple[str, str]] = {}  # media files not extracted (a kept input's note is no failure)
    other_format: dict[str, tuple[str, str]] = {}  # files of a format not read: a song in another, or lyrics
    for rel, reason in failures:
        if not reason.startswith(KEPT):
            target = other_format if reason.startswith(UNSUPPORTED) else failed
            for key in (same_text(Path(rel).stem), same_text(Path(rel).name), same_text(Path(rel).as_posix())):
                target.setdefault(key, (rel, reason))
    unused = sorted((line, keys) for line, keys in keys_of.items() if line not in used_lines)
    missing = [(line, keys) for line, keys in unused if not any(k in failed for k in keys)]
    skipped = [(line, next(k for k in keys if k in failed)) for line, keys in unused if any(k in failed for k in keys)]
    out = []
    if missing:  # its example says what is there of another format, which may be the file or not (song.lrc)
        line, keys = missing[0]
        near = next((other_format[k] for k in keys if k in other_format), None)
        out.append(f"{len(missing)} row(s) of {path} name no {what} in {folder} and were not used (e.g. line "
                   f"{line}: {keys[-1]!r}" + (f"; {near[0]!r} is there: {near[1]}" if near else "") + ")")
    if skipped:
        line, key = skipped[0]
        out.append(f"{len(skipped)} row(s) of {path} name a {what} in {folder} that was not extracted and were not "
                   f"used (e.g. line {line}: {failed[key][0]!r}: {failed[key][1]})")
    return out


def check_output_folder(out: Path, kind: str, what: str, own: tuple[str, ...] = ()) -> None:
    """Refuse, before any work, an output folder an extractor must not write into.

    ``out`` may be missing, empty, hold only what an interrupted run leaves (``.cache``, temporary
    ``.*.tmp-*`` files, and ``own``: the files the extractor writes, before its manifest.json, which it
    writes last), or be a folder of this ``kind`` (its manifest.json says so), which is updated in place.
    Anything else (a dataset, a model run, the other extractor's folder, unrelated files) is a
    :class:`~bgmrec.data.dataset.DatasetError` naming the folder; nothing there is touched.
    """
    from bgmrec.data.dataset import DatasetError, describe_folder

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out}: exists and is not a folder; refusing to replace it")
    if not out.is_dir():
        return
    others = [p for p in out.iterdir() if p.name != ".cache" and p.name not in own and not is_leftover(p)]
    if not others:
        return
    try:
        found = json.loads((out / "manifest.json").read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError, RecursionError):
        found = None
    if found != kind:
        raise DatasetError(f"{out}: the folder is not empty and is not {what} "
                           f"({describe_folder(out, 'manifest.json', what)}; expected manifest.json kind {kind!r}); "
                           "refusing to write into it (choose another output folder or empty this one)")


def last_extraction(out: Path, ids: list[str], what: str, source: Path,
                    failures: list[tuple[str, str]]) -> tuple[str | None, list[str] | None]:
    """How the extraction about to replace the folder ``out``, of ``ids``, differs from the one it holds (its
    manifest's ``ids``): a warning line when it leaves out inputs the folder held, other than those of its
    ``failures`` (``failures.csv`` names them), else None; and the ids it adds, None when the folder holds no
    extraction. A folder holds the inputs of its last extraction only: extracting just the new files of a growing
    catalogue into it dropped the earlier ones without a word; and an app could not tell which tracks were new."""
    before = previous_ids(out)
    if before is None:
        return None, None
    held = set(before)
    added = [i for i in ids if i not in held]
    now = set(ids) | {Path(file).stem for file, reason in failures if not reason.startswith(KEPT)}
    gone = [i for i in before if i not in now]
    if not gone:
        return None, added
    return (f"{out}: {len(gone)} of the {len(before)} {what}(s) it held are not in this extraction of {source} "
            f"(e.g. {gone[0]!r}) and were removed: the folder holds the {what}s of its last extraction only; "
            "extract the whole collection to keep them (vectors computed before come from the cache)"), added


def previous_ids(out: Path) -> list | None:
    """The ids of the extraction the folder ``out`` holds (its manifest.json's ``ids``); None when it holds none (a
    new folder, what an interrupted run left, another kind of folder)."""
    try:
        ids = json.loads((Path(out) / "manifest.json").read_text(encoding="utf-8")).get("ids")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    return ids if isinstance(ids, list) else None


def previous_rows(out: Path, table: str, columns: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """``{id: row}`` of the table ``table`` (``tracks.csv``, ``videos.csv``) of the extraction the folder ``out``
    holds (:func:`previous_ids`), the rows having ``columns``; {} when it holds none or the table cannot be read
    (such a folder is replaced all the same)."""
    if previous_ids(out) is None:
        return {}
    try:  # a DatasetError is a ValueError
        return {row["id"]: row for row in read_csv_utf8(Path(out) / table, ("id", *columns))}
    except (OSError, ValueError):
        return {}


def cache_reuse(given: Path | None, cache: FeatureCache, default: str,
                what: str) -> tuple[str | None, str | None]:
    """What to say of a cache folder named explicitly (``given``: extract-music's or extract-videos' ``--cache``,
    before this run touched it) that holds no vector of this extractor's settings (``cache``'s folder): ``(warning,
    note)``. A warning when it holds vectors of other settings (another extractor's cache, the folder above or
    below the one meant, settings changed since): nothing there was reused. A note when it holds no vector at all
    (a path not made yet, an empty folder, one whose first extraction stopped before any vector): a new cache,
    which is right the first time and, any later week, a path other than the one used before (everything is
    extracted again). (None, None) for the default cache (``default`` names it, e.g. "OUT/.cache/audio") and a
    cache with vectors of these settings. ``what`` names what the cache holds ("audio features", "frame
    features": extract-videos' captions have a cache of their own beside it)."""
    if given is None or holds_vectors(cache.folder):
        return None, None
    given = Path(given)
    if holds_vectors(given):
        return (f"{given}: a cache folder without vectors of these extraction settings, so every input's {what} "
                f"are extracted again (settings changed since, another extractor's cache, or a folder above or below "
                f"the one meant: this extractor's default cache is {default})"), None
    return None, (f"a new cache at {given} (nothing in it to reuse yet): give the same --cache every time; a later "
                  "extraction that finds this note names a path other than the one used before")


def open_cache(cache: FeatureCache, given: Path | None, default: str,
               what: str) -> tuple[Path | None, str | None, str | None]:
    """Make ``cache``'s folder (:meth:`FeatureCache.describe`), after finding the top-most folder that adds
    (:func:`first_missing`: what a run that extracts nothing removes) and :func:`cache_reuse`'s warning and note."""
    created = first_missing(cache.folder)
    warning, note = cache_reuse(given, cache, default, what)
    cache.describe()
    return created, warning, note


def holds_vectors(folder: Path) -> bool:
    """Whether ``folder`` holds a cached vector (an ``.npy`` file) at any depth; stops at the first."""
    return Path(folder).is_dir() and next(Path(folder).rglob("*.npy"), None) is not None


def first_missing(path: Path) -> Path | None:
    """The top-most folder that creating ``path`` would add (``path`` itself or a missing parent), or None
    when it exists: what to remove to leave the disk as it was."""
    missing = None
    for p in (Path(path).absolute(), *Path(path).absolute().parents):
        if p.exists():
            break
        missing = p
    return missing


def nothing_extracted(what: str, folder: Path, out: Path, failures: list[tuple[str, str]],
                      created: Path | None) -> Exception:
    """The error of a run that extracted no input at all; removes ``created`` (the folders this run made,
    see :func:`first_missing`) so that nothing is left behind. ``what`` names the inputs ("track")."""
    from bgmrec.data.dataset import DatasetError

    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
    if not failures:
        return DatasetError(f"{folder}: no {what} files found; nothing written to {out}")
    shown = "; ".join(f"{f}: {one_line(r)}" for f, r in failures[:3])
    more = f"; and {len(failures) - 3} more" if len(failures) > 3 else ""
    return DatasetError(f"{folder}: no {what} could be extracted ({len(failures)} file(s) failed: {shown}{more}); "
                        f"nothing written to {out}")


def kept_items(items: list[tuple[str, Path, str]], vectors: dict[str, np.ndarray], reasons: dict[str, str],
               failures: list[tuple[str, str]], what: str, folder: Path, out: Path,
               created: Path | None) -> list[tuple[str, Path, str]]:
    """The ``items`` of ``folder`` with a vector in ``vectors``, once ``failures`` has a row for each item ``reasons``
    names (by id) and is sorted; a run that keeps none is :func:`nothing_extracted`'s error."""
    failures += [(str(p.relative_to(folder)), reasons[item_id]) for item_id, p, _ in items if item_id in reasons]
    failures.sort()
    kept = [item for item in items if item[0] in vectors]
    if not kept:
        raise nothing_extracted(what, folder, out, failures, created)
    return kept


def arrays_sha256(*arrays: np.ndarray) -> str:
    """SHA-256 of arrays' bytes in C order, one after the other: an extracted folder's ``content_hash``."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(memoryview(np.ascontiguousarray(a)).cast("B"))  # the bytes in place: no copy of a large folder
    return h.hexdigest()


def check_manifest_content(root: Path, manifest: dict, files: str, arrays: tuple[np.ndarray, ...] | None,
                           count_key: str, count: int) -> None:
    """Refuse an extracted folder whose arrays (the files ``files`` names) are not those its ``manifest.json``
    records (``content_hash``), or whose row count differs from the manifest's ``counts[count_key]``: a file
    changed, swapped or copied in part since extraction, whose rows would be served as other inputs' (the hash
    and the count are checked when the manifest has them; hand-made folders may leave them out). ``arrays``
    None: the count alone (the hash reads every byte of the arrays)."""
    from bgmrec.data.dataset import DatasetError

    recorded = (manifest.get("counts") or {}).get(count_key)
    if recorded is not None and recorded != count:
        raise DatasetError(f"{root}/manifest.json: counts.{count_key} is {recorded!r}, but the folder holds {count} "
                           "rows; it was changed since it was extracted: extract it again")
    recorded = manifest.get("content_hash") if arrays is not None else None
    if recorded is not None and recorded != (found := arrays_sha256(*arrays)):
        raise DatasetError(f"{root}/{files}: not the content manifest.json records (content_hash {recorded[:12]}..., "
                           f"found {found[:12]}...): changed, or copied in part, since it was extracted; extract "
                           "it again")


def read_manifest(root: Path, kind: str, what: str) -> dict:
    """The manifest of an extracted folder, checked to be of ``kind`` and its fields the loaders read to be of their
    JSON kinds (errors name the folder)."""
    from bgmrec.data.dataset import DatasetError, check_field_kinds, folder_is, read_json

    if not Path(root).is_dir():
        raise DatasetError(f"{root}: not a {what} folder ({'a file' if Path(root).exists() else 'it does not exist'})")
    found = None if (Path(root) / "manifest.json").is_file() else folder_is(Path(root))
    if found is not None:
        raise DatasetError(f"{root}: not a {what} folder: it is {found}")
    man = read_json(Path(root) / "manifest.json", f"{root}/manifest.json")
    if man.get("kind") != kind:
        found = folder_is(Path(root))
        raise DatasetError(f"{root}: not a {what} folder: it is {found}" if found is not None else
                           f"{root}/manifest.json: expected kind {kind!r}, found {man.get('kind')!r}")
    # of the kinds the loaders use (settings compared key by key with a model's training settings)
    check_field_kinds(man, {"settings": dict, "counts": dict, "content_hash": str, "ids": list, "dim": int},
                      f"{root}/manifest.json")
    return man


def scan_media(folder: Path, extensions: tuple[str, ...], kind: str, exclude: tuple[Path, ...] = (),
               progress: bool = False) -> tuple[list[tuple[str, Path, str]], list[tuple[str, str]]]:
    """Media files of ``folder`` as (id = file stem, path, sha256) items, and per-file failures.

    Entries that are not regular files (never opened), unsupported extensions, empty files, duplicate ids
    and unreadable files become a one-line reason each (``kind`` names the id in messages, e.g. "track");
    the scan continues. ``progress`` shows a bar while the files are hashed (reading every byte of a large
    folder takes a while).
    """
    failures: list[tuple[str, str]] = []
    items: list[tuple[str, Path, str]] = []
    seen: dict[str, str] = {}
    paths = list(files_in(folder, exclude=exclude))
    with progress_bar(f"hashing {kind} files", len(paths), progress and bool(paths)) as advance:
        for p in paths:
            advance()
            rel = str(p.relative_to(folder))
            try:
                size = regular_file_size(p)
            except MediaError as e:
                failures.append((rel, str(e)))
                continue
            if p.suffix.lower() not in extensions:
                failures.append((rel, f"{UNSUPPORTED} {p.suffix or '(no extension)'!r} "
                                      f"(expected {', '.join(e[1:] for e in extensions)})"))
            elif size == 0:
                failures.append((rel, "empty file (0 bytes)"))
            elif p.stem in seen:
                failures.append((rel, f"duplicate {kind} id {p.stem!r} (also {seen[p.stem]})"))
            else:
                seen[p.stem] = rel
                try:
                    items.append((p.stem, p, sha256_file(p)))
                except OSError as e:
                    failures.append((rel, f"cannot read: {one_line(e)}"))
    return items, failures


def split_cached(items: list[tuple[str, Path, str]], cache: FeatureCache
                 ) -> tuple[dict[str, np.ndarray], list[tuple[str, Path, str]]]:
    """Vectors already in ``cache`` by id, and the items still to extract."""
    done: dict[str, np.ndarray] = {}
    todo = []
    for item_id, p, key in items:
        vec = cache.get(key)
        if vec is None:
            todo.append((item_id, p, key))
        else:
            done[item_id] = vec
    return done, todo
