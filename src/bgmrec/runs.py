"""Run folders: a model trained into a folder with the record of what made it (``run.json``), the
teachers several runs share, and the checks and records that say what a run or a figure was made from.

The library body of ``bgmrec train``, ``tune``, ``demo`` and the benchmarks: a model trained from Python with
:func:`train_model` gets the same folder and record as one trained by the command, so ``evaluate`` and
``compare`` can warn when it is used on other data or under changed code.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import gc
import glob
import hashlib
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from bgmrec.data.dataset import FINGERPRINTS
from bgmrec.models.packages import describe_package, model_package


def git_commit(package: Path | None = None) -> str:
    """The short commit of the bgmrec checkout whose ``src/bgmrec`` is ``package`` (default: this package),
    with "-dirty" when its ``src`` differs from that commit; "unknown" when ``package`` is not the
    ``src/bgmrec`` of a git checkout (an installed copy, even inside someone else's repository)."""
    package = (package or Path(__file__).resolve().parent).resolve()

    def git(*args: str) -> str:
        return subprocess.run(["git", "--no-optional-locks", *args], capture_output=True, text=True, cwd=package,
                              timeout=5).stdout.strip()  # no index refresh: a user's git command is never blocked

    try:
        top = git("rev-parse", "--show-toplevel")
        if not top or Path(top).resolve() / "src" / "bgmrec" != package:
            return "unknown"
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", str(package.parent))
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + ("-dirty" if dirty else "")) if commit else "unknown"


_COMMAND_ARGV: list[list[str]] = []  # the arguments of the bgmrec commands running (bgmrec.cli.main sets them)


def command_argv() -> list[str]:
    """The arguments of the ``bgmrec`` command running, as records keep them: what :func:`bgmrec.cli.main` was
    given (a script calling ``main([...])`` ran with arguments of its own in ``sys.argv``), else
    ``sys.argv[1:]``."""
    return list(_COMMAND_ARGV[-1]) if _COMMAND_ARGV else sys.argv[1:]


@contextlib.contextmanager
def running_command(argv: list[str]):
    """Within: :func:`command_argv` gives ``argv``."""
    _COMMAND_ARGV.append(list(argv))
    try:
        yield
    finally:
        _COMMAND_ARGV.pop()


@contextlib.contextmanager
def note_on_stop(note):
    """Within: a stop (Ctrl-C's KeyboardInterrupt, SIGTERM's SystemExit: :data:`~bgmrec.models.base.STOPS`) is raised
    on with ``note()`` added to it (``add_note``: what is done, how to continue), which a traceback shows and the
    command line prints in its one line (:func:`bgmrec.cli.app.said_when_stopped`)."""
    from bgmrec.models.base import STOPS

    try:
        yield
    except STOPS as stop:
        try:
            said = note()
        except Exception:  # noqa: BLE001 - saying what is done must never replace the stop with another error
            said = None
        if said:
            stop.add_note(said)
        raise


def code_fingerprint() -> str:
    """bgmrec's version and a short SHA-256 of what its Python sources do: the same code, whether or not it
    runs from a clean git checkout (an installed copy, uncommitted edits). Comments, docstrings and layout
    are left out (:func:`code_digest`): a docstring edit made ``bench quality --resume`` retrain every run."""
    import bgmrec

    return f"{bgmrec.__version__}+{code_digest(Path(bgmrec.__file__).resolve().parent)}"


@functools.cache
def code_digest(root: Path) -> str:
    """A short SHA-256 of the ``*.py`` files under ``root`` (with their paths) as code, docstrings removed: what
    the code does, not how it is commented or laid out (every other string counts: help texts, messages). Each
    file is hashed as :func:`ast.unparse` writes it back (source text, stabler across Python versions than the
    tree's dump); a file that does not parse (a contributor's work in progress), as its bytes. The garbage
    collector is paused meanwhile: the trees are acyclic, and the collections their allocations set off scanned
    torch's objects (0.8 s of every train and evaluate, 0.4 s without them)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _code_digest(root)
    finally:
        if enabled:
            gc.enable()


def _code_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        if not path.is_file():  # an editor's lock, a dangling link named *.py: no code
            continue
        source = path.read_bytes()
        try:
            tree = ast.parse(source, str(path))
        except (SyntaxError, ValueError):  # not Python (yet): its bytes, as the code it is
            code = source
        else:
            for node in ast.walk(tree):
                body = getattr(node, "body", None)
                if (isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and body
                        and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                        and isinstance(body[0].value.value, str)):
                    node.body = body[1:] or [ast.Pass()]
            code = ast.unparse(tree).encode()
        h.update(str(path.relative_to(root)).encode() + b"\0" + code + b"\0")
    return h.hexdigest()[:16]


def warn_if_model_code_changed(run: Path, model) -> str | None:
    """Say on stderr, in one line, when the code of the loaded ``model`` of ``run`` (its
    :func:`model_package` now) is not the code its run recorded (``config.json``, else ``run.json``:
    :func:`~bgmrec.models.base.recorded_model_package`): its weights now run under code they were not
    trained with. The code is the hash of the model's whole package, so an edit to another model of the package
    counts too, and the message says so. Silent for bgmrec's own models (their code is the commit's) and runs
    that recorded nothing; never an error. Returns the message (for a result's JSON), None when silent."""
    from bgmrec.features.recommend import warn_on_stderr
    from bgmrec.models.base import recorded_model_package

    then, _ = recorded_model_package(run)
    if then is None:
        return None
    now = model_package(type(model))
    if now is not None and all(then.get(k) == now.get(k) for k in ("class", "package", "version", "code")):
        return None
    where = f"package {then['package']!r}" if then.get("package") else "the code of its model"
    return warn_on_stderr(f"{run}: {where} changed since it was trained (an edit anywhere in it counts: "
                          f"{describe_package(then)} then; {describe_package(now)} now): results are of the new code "
                          "with weights trained by the old; retrain it to measure the code as it is")


def machine() -> str:
    """The machine a benchmark figure was measured on, for its report: architecture, cores, Python, torch."""
    import os

    import torch

    return (f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, torch {torch.__version__}").replace("  ", " ")


def peak_rss_mb() -> float:
    """Peak resident memory of this process image (VmHWM; ``ru_maxrss`` where /proc is missing), MB."""
    import resource

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _same_value(given, value) -> bool:
    """True when a ``--set`` string and an option's value say the same (numbers compared as numbers)."""
    try:
        return float(given) == float(value)
    except (TypeError, ValueError):
        return str(given).strip() == str(value)


def option_into_sets(sets: dict, name: str, value) -> None:
    """Put the option ``--NAME value`` into the ``--set`` overrides; refuse a ``--set NAME`` with another value."""
    if value is None:
        return
    if name in sets and not _same_value(sets[name], value):
        raise ValueError(f"--{name} {value} and --set {name}={sets[name]} disagree; give {name} once")
    sets[name] = value


def train_model(data: Path, model: str, out: Path, epochs: int | None = None, seed: int | None = None,
                sets: dict | None = None, teacher: Path | None = None, progress: bool = True,
                partial: Path | None = None):
    """Build, fit and save one model; the library-level body of ``bgmrec train``. While it runs, another
    ``train_model`` into the same ``out`` (another process: a second ``bgmrec train``, ``tune --resume`` of the
    same grid) is refused (:func:`~bgmrec.data.dataset.writing_lock`).

    ``epochs`` and ``seed`` are the same as ``sets`` entries of those names (None: as ``sets`` or the
    config's default, seed 0); giving one both ways with different values is refused.

    A teacher-guided model given no ``teacher`` reuses one kept beside ``out`` by a stopped or killed training
    of it when that teacher's record matches (:func:`reuse_kept_teacher`), else the teacher of the run at ``out``
    it replaces, copied, when that one's matches (:func:`reuse_own_teacher`), else trains one into
    ``out/teacher``.

    Stopped (:data:`~bgmrec.models.base.STOPS`), nothing is written at ``out`` (a run there before is left as it
    was; a DecCM teacher trained for it is kept beside it: :func:`keep_trained_teacher`) and the stop is raised
    on; with ``partial`` (``bgmrec train``'s :func:`partial_run_folder`), a training stopped after a validated
    epoch is first saved there as a complete run of its best epoch so far, its ``run.json`` saying where it
    stopped (:func:`save_stopped_run`), and the stop carries a note saying what was kept (``add_note``).
    """
    from bgmrec.data.dataset import writing_lock

    with writing_lock(Path(out)):
        return _train_model(data, model, out, epochs, seed, sets, teacher, progress, partial)


def _train_model(data, model, out, epochs, seed, sets, teacher, progress, partial):
    from bgmrec.data.dataset import atomic_write_dir, load_dataset, recover_killed_write, write_json_atomic
    from bgmrec.models.base import STOPS, FeatureSpec, SplitView, load_model
    from bgmrec.models.registry import build, prepare_teacher, takes_teacher

    ds = load_dataset(data)
    overrides = dict(sets or {})
    option_into_sets(overrides, "seed", seed)
    option_into_sets(overrides, "epochs", epochs)
    spec = FeatureSpec.of(ds)
    rec = build(model, spec, overrides)
    check_teacher_data(rec, ds, teacher)
    package = model_package(model)
    check_run_folder(Path(out), teacher)
    timing: dict = {}  # "trained_on": the dataset's record, once taken; "start", "seconds": the training's time

    def trained_on() -> dict:
        if "trained_on" not in timing:  # the features' fingerprint reads every feature byte: taken once
            timing["trained_on"] = dataset_record(data)
        return timing["trained_on"]

    def rescue(tmp: Path) -> None:
        rescue_killed_teacher(tmp, Path(out))

    recover_killed_write(Path(out), rescue)  # before a teacher kept beside ``out`` is looked for
    own_teacher = None  # the teacher of the run at ``out`` that this one may take over (copied into it)
    if teacher is None and takes_teacher(type(rec), rec.config):
        from bgmrec.models.deccm import teacher_config

        def made() -> dict:
            return {**teacher_made_from(trained_on()), "teacher_config": repr(teacher_config(rec.config))}

        teacher = reuse_kept_teacher(Path(out), made)
        own_teacher = reuse_own_teacher(Path(out), made) if teacher is None else None
    if teacher is not None:
        warn_if_not_a_teacher(teacher, data, ds)
    warn_about_features(ds, data)
    if hasattr(rec.config, "patience") and not len(ds.splits.get("val", ())):
        print(f"warning: {data} has no val rows, so {model} trains all its {rec.config.epochs} epochs and keeps the "
              "last (no early stopping; build-dataset --val-share makes a val split)", file=sys.stderr)
    teachers: dict[str, Path | None] = {}  # "kept": where the teacher trained for the run is kept, once stopped

    def save_run(folder: Path, record: dict) -> None:
        """The fitted model saved into ``folder``, checked to load back alike, and its ``run.json`` (``record``
        added)."""
        rec.save(folder)
        check_saved_scores_alike(rec, load_model(folder), ds)
        write_json_atomic(folder / "run.json", {
            **trained_on(), "model": model,
            "seconds": timing.get("seconds", time.perf_counter() - timing["start"]), "epochs_run": len(rec.history),
            "commit": git_commit(), "code": code_fingerprint(),
            "argv": command_argv(), **({"model_package": package} if package else {}),
            **({"feature_settings": ds.provenance["settings"]} if "settings" in ds.provenance else {}), **record})

    def write(folder: Path) -> None:
        trained_on()  # the run's record and, trained here, its teacher's
        if own_teacher is not None:  # the replaced run's, copied: the new run holds its teacher as one trained here
            shutil.copytree(own_teacher, Path(folder) / "teacher")
        prepare_teacher(rec, ds, folder, teacher if own_teacher is None else Path(folder) / "teacher", progress)
        trained = Path(folder) / "teacher"
        if teacher is None and (trained / "config.json").is_file():  # trained now, into the run: its record
            from bgmrec.models.deccm import teacher_config

            write_json_atomic(trained / "run.json",
                              {**teacher_made_from(trained_on()), "teacher_config": repr(teacher_config(rec.config))})
        try:
            timing["start"] = time.perf_counter()
            rec.fit(SplitView(ds, "train"), SplitView(ds, "val") if "val" in ds.splits else None, progress=progress)
            timing["seconds"] = time.perf_counter() - timing["start"]
            save_run(folder, {})
        except BaseException:  # stopped or failed: the run is discarded whole, a teacher trained for it is not
            if teacher is None and own_teacher is None and (trained / "run.json").is_file():  # a copy: the run has it
                was = str(trained.resolve())
                teachers["kept"] = keep_trained_teacher(trained, Path(out))
                if teachers["kept"] is not None and getattr(rec, "teacher_dir", None) == was:
                    rec.teacher_dir = str(teachers["kept"].resolve())  # the student refers to it where it is now
            raise

    # built under a temporary name and renamed into place: nothing at ``out`` until the run is whole, and
    # a run there before (never another kind of folder) is replaced with everything in it
    try:
        atomic_write_dir(Path(out), write, marker="config.json", version_key="bgmrec_version", what="a model run",
                         rescue=rescue)
    except STOPS as stop:
        if partial is not None and "start" not in timing:  # stopped before the model's own training began
            stop.add_note("nothing was saved (stopped while its teacher trained: the teacher's finished epochs are "
                          "not kept)" if teacher is None and takes_teacher(type(rec), rec.config) else
                          "nothing was saved (stopped before the training began)")
        elif partial is not None:
            stop.add_note(save_stopped_run(rec, Path(partial), save_run,
                                           lost_teacher="kept" in teachers and teachers["kept"] is None))
        raise
    return load_model(out), timing["seconds"]


def note_if_stopped(run: Path) -> str | None:
    """Say on stderr when ``run`` holds a training that was stopped (its ``run.json``'s ``stopped_at_epoch``:
    :func:`save_stopped_run`): its figures are those of its best epoch so far, not of a finished training.
    Returns the note (for a result's JSON), None when silent."""
    from bgmrec.models.base import read_run_record

    record = read_run_record(run)
    if "stopped_at_epoch" not in record:
        return None
    note = (f"{run} is a training stopped at epoch {record['stopped_at_epoch']} of {record.get('of_epochs', '?')}: "
            f"its best epoch so far ({record.get('best_epoch', '?')}), not a finished training")
    print(f"note: {note}", file=sys.stderr)
    return note


def partial_run_folder(out: Path) -> Path:
    """Where ``bgmrec train --out OUT`` saves the best epoch so far of a training it stopped: ``OUT.partial``,
    beside ``OUT`` and never at it, so nothing that looks for a finished run at ``OUT`` (``bench --resume``,
    ``tune --resume``) can take it for one."""
    return Path(out).with_name(f"{Path(out).name}.partial")


def save_stopped_run(rec, partial: Path, save_run, lost_teacher: bool = False) -> str:
    """After a training of ``rec`` was stopped: when it ended holding its best epoch so far (``rec.stopped``, a
    :class:`~bgmrec.models.base.StoppedFit`), that model saved as a complete run at ``partial`` (replacing a run
    there, never another kind of folder) by ``save_run(folder, record)``, its ``run.json`` adding
    ``stopped_at_epoch``, ``of_epochs`` and ``best_epoch``. Returns what happened, as a clause of the command's
    line: what was saved and how to use it, or that nothing was and why (no validated epoch; ``lost_teacher``:
    the teacher it was trained with could not be kept; ``partial`` could not be written). A failure to save is
    said, never raised: the stop is what the caller must see."""
    from bgmrec.data.dataset import DatasetError, atomic_write_dir

    done = rec.stopped if rec.fitted else None
    if done is None:
        return "nothing was saved (no validated epoch to keep)"
    if lost_teacher:
        return "nothing was saved (the teacher it was trained with could not be kept)"
    record = {"stopped_at_epoch": done.epoch, "of_epochs": done.epochs, "best_epoch": done.best_epoch}
    try:
        check_run_folder(partial)
        atomic_write_dir(partial, lambda folder: save_run(folder, record), marker="config.json",
                         version_key="bgmrec_version", what="a model run")
    except (DatasetError, ValueError, OSError) as e:
        return f"at epoch {done.epoch} of {done.epochs}: the best epoch so far could not be saved ({e})"
    return (f"at epoch {done.epoch} of {done.epochs}: the best epoch so far ({done.best_epoch}, val R@10 "
            f"{done.best_recall:.3f}) saved to {partial} (evaluate it with --run {partial}; train again, from the "
            "start, to finish)")


def warn_about_features(ds, data: Path) -> list[str]:
    """Say on stderr, per feature file of the dataset folder ``data`` (``ds``), when a few rows far from the
    rest set its features' standard deviations (:func:`~bgmrec.data.dataset.outlying_rows`; captioned videos'
    text only), naming the farthest row's id: models standardise by them, and learn little from the other rows;
    and when a share of its features (:data:`~bgmrec.data.dataset.NARROW_SHARE`) vary too little for the
    networks' standardisation, which takes them for constants (:func:`~bgmrec.data.dataset.narrow_columns`);
    and when no training video has a caption (the networks then leave captions out:
    :attr:`~bgmrec.models.neural.TorchRecommender.learned_text`). Returns the messages."""
    import numpy as np

    from bgmrec.data.dataset import FAR_SPREADS, NARROW_SHARE, SPREAD_RATIO, narrow_columns, outlying_rows
    from bgmrec.features.recommend import warn_on_stderr
    from bgmrec.models.layers import Standardizer

    captioned = np.flatnonzero(np.asarray(ds.video_text_mask))
    said = []
    for fname, x, ids in (("video_visual.npy", ds.video_visual, list(ds.video_ids)),
                          ("video_text.npy", np.asarray(ds.video_text)[captioned],
                           [ds.video_ids[i] for i in captioned]),
                          ("music.npy", ds.music, list(ds.track_ids))):
        found = outlying_rows(x)
        if found is not None:
            said.append(f"{data}/features/{fname}: {found.columns:,} of {np.shape(x)[1]:,} features have a standard "
                        f"deviation over {SPREAD_RATIO:g} times their typical spread (median absolute deviation), set "
                        f"by {len(found.rows):,} row(s) more than {FAR_SPREADS:g} typical spreads from the rest (first "
                        f"{ids[found.rows[0]]!r}, {found.distance[0]:.3g} out): "
                        "standardised by it, every other row of those features shrinks toward zero and models learn "
                        "little from them; check those rows (values extracted or saved wrongly: fix or drop them and "
                        "build the dataset again; a feature of such a range: give its logarithm)")
            warn_on_stderr(said[-1])
        narrow = narrow_columns(x, Standardizer.MIN_STD)
        if len(narrow) and len(narrow) >= NARROW_SHARE * np.shape(x)[1]:
            said.append(f"{data}/features/{fname}: {len(narrow):,} of {np.shape(x)[1]:,} features vary, but with a "
                        f"standard deviation of at most {Standardizer.MIN_STD:g}, which the networks take for a "
                        "constant feature (0 for every input): they learn nothing from them; if the file's values "
                        "are on a small scale, multiply them (by 1e4, say) and build the dataset again")
            warn_on_stderr(said[-1])
    trained = np.unique(ds.train_rows()[:, 0])
    if np.shape(ds.video_text)[1] and len(trained) and not np.asarray(ds.video_text_mask)[trained].any():
        said.append(f"{data}: none of the training videos has a caption (features/video_text_mask.npy): networks "
                    "trained on them learn nothing from text and leave the captions of the clips they rank out (a "
                    "DecCM teacher trained on captioned professional videos still reads them); to use captions, build "
                    "the dataset again from videos with theirs (extract-videos --captions; an import's text features)")
        warn_on_stderr(said[-1])
    return said


def check_saved_scores_alike(fitted, loaded, ds, queries: int = 32) -> None:
    """ValueError unless ``loaded``, the model ``fitted`` saved and loaded back, scores the first ``queries``
    queries of ``ds``'s val split (its train split when val is empty) against the whole catalogue as ``fitted``
    does, to float32 rounding: a model whose ``state_arrays()`` leaves out an array ``fit`` learns is saved
    without it, and loaded back scores by its initialisation, at random. Then :func:`warn_if_every_track_ties`
    on those scores."""
    import numpy as np

    from bgmrec.models.base import MusicCatalog, VideoQuery

    split = "val" if len(ds.splits.get("val", ())) else "train"
    rows = np.asarray(ds.splits[split])[:queries]
    q = VideoQuery.from_dataset(ds, rows[:, 0], rows[:, 2], split)
    catalog = MusicCatalog.from_dataset(ds)
    want, got = fitted.score(q, catalog), loaded.score(q, catalog)
    scale = float(np.abs(want).max(initial=0.0))
    if not np.allclose(got, want, rtol=1e-4, atol=1e-4 * scale):
        raise ValueError(f"{fitted.name} ({type(fitted).__name__}): loaded back from the folder it was saved to, it "
                         f"scores {len(rows)} {split} queries otherwise (by up to "
                         f"{float(np.abs(got - want).max()):.3g}, scores up to {scale:.3g}): state_arrays() must "
                         "return every array fit learns (and load_state_arrays restore it); not saved")
    warn_if_every_track_ties(fitted.name, want, split)


def warn_if_every_track_ties(model: str, scores, split: str) -> str | None:
    """Say on stderr when a trained model scores every track alike for each of the sample queries ``scores``
    ([queries, tracks], of ``split``): its rankings would be the protocol's random order of ties, chance level,
    and nothing else said so (training saw one track chosen by every upload, or tracks whose features do not
    vary). Returns the message, None when silent."""
    import numpy as np

    from bgmrec.features.recommend import warn_on_stderr

    scores = np.asarray(scores, np.float64)
    spread = scores.max(axis=1) - scores.min(axis=1)
    if scores.size == 0 or (spread > 1e-6 * np.abs(scores).max(axis=1)).any():  # relative: not float rounding
        return None
    message = (f"{model} scores every track alike for each of {len(scores)} {split} queries: its rankings are a random "
               "order, chance level (did the training uploads choose more than one track, and do the tracks' "
               "features vary?)")
    warn_on_stderr(message)
    return message


def keep_trained_teacher(trained: Path, out: Path, why: str | None = None) -> Path | None:
    """Move the teacher ``trained`` for the run ``out``, whose student then stopped or failed, beside ``out``
    as ``OUT.teacher`` (``OUT.teacher-2``, ... when taken), and say on stderr how to reuse it: the run is
    discarded whole, but a finished teacher (minutes of training at scale) is worth keeping. ``why``: what
    happened to the run, as the note's first clause. None, said on stderr, when it cannot be moved."""
    kept, n = out.with_name(f"{out.name}.teacher"), 1
    while kept.exists():
        n += 1
        kept = out.with_name(f"{out.name}.teacher-{n}")
    try:
        trained.rename(kept)
    except OSError as e:  # the stop or failure that brought us here is what the caller must see, not this
        print(f"note: the teacher trained for {out} could not be kept ({e}); it is discarded with the run",
              file=sys.stderr)
        return None
    why = why or f"{out} was not written (stopped or failed after its teacher was trained)"
    print(f"note: {why}; the teacher trained for it is kept at {kept}: "
          f"`bgmrec train ... --teacher {kept}` reuses it", file=sys.stderr)
    return kept


def rescue_killed_teacher(tmp: Path, out: Path) -> Path | None:
    """The finished teacher in ``tmp``, the temporary folder of a training into ``out`` whose process was
    killed (``kill -9``, the OOM killer: no handler ran), kept as a stopped training keeps it
    (:func:`keep_trained_teacher`) before the folder is removed (:func:`~bgmrec.data.dataset.recover_killed_write`):
    it was deleted without a word, and trained again. Finished: its ``run.json``, written once it was saved,
    records its teacher config. None when ``tmp`` holds none."""
    from bgmrec.data.dataset import DatasetError, read_json

    trained = Path(tmp) / "teacher"
    try:
        finished = (trained / "config.json").is_file() and "teacher_config" in read_json(trained / "run.json")
    except DatasetError:  # no record, or one cut short: not a finished teacher
        return None
    if not finished:
        return None
    pid = Path(tmp).name[len(out.name) + 2:].split("-")[1]
    return keep_trained_teacher(trained, out, why=f"a training of {out} was killed (process {pid}, which no "
                                                  "longer runs) after its teacher was trained")


TEACHERS = "teachers"  # the folder, beside the runs of a grid, a demo or a benchmark's world, of their teachers


def check_teacher_data(model, ds, teacher: Path | None = None) -> None:
    """Before any work, in the commands' options (the library names its own arguments when it finds out,
    later): a ``teacher`` for a model that takes none is refused, and so is one trained with other settings
    than DecCM's backbone (:func:`~bgmrec.models.deccm.teacher_scale_mismatch`), and a dataset without
    professional videos when a teacher-guided ``model`` given no teacher would train one on them."""
    from bgmrec.models.deccm import DecCM, load_teacher, professional_split, teacher_scale_mismatch
    from bgmrec.models.registry import takes_teacher

    guided = takes_teacher(type(model), model.config)
    if teacher is not None and not guided:
        raise ValueError(f"--teacher {teacher}: model {model.name!r} with this config takes no teacher")
    if teacher is not None and isinstance(model, DecCM):
        differ = teacher_scale_mismatch(load_teacher(teacher).config, model.config)
        if differ:
            raise ValueError(f"--teacher {teacher}: {differ}")
    if teacher is None and guided and isinstance(model, DecCM) and professional_split(ds) is None:
        raise ValueError("the dataset has no teacher split (professional music videos) to train a teacher on: "
                         "pass --teacher RUN_DIR or --set teacher=false (build-dataset --professional makes one)")


def dataset_record(data: Path) -> dict:
    """The dataset folder ``data`` as the records of runs, grids and figures name it: its resolved path and
    its :data:`FINGERPRINTS` (splits; features, which reads every feature byte, so take it once; labels)."""
    from bgmrec.data.dataset import dataset_fingerprint, features_fingerprint, labels_fingerprint

    return {"data": str(Path(data).resolve()), "data_fingerprint": dataset_fingerprint(data),
            "features_fingerprint": features_fingerprint(data), "labels_fingerprint": labels_fingerprint(data)}


def teacher_made_from(data: dict) -> dict:
    """What a teacher trained on the dataset of ``data`` (its :func:`dataset_record`) is made from, for its
    ``run.json``: that record, the code and the commit; with ``teacher_config`` (its config's repr) added, the
    record that marks a folder as a teacher trained on the professional videos."""
    return {"model": "cmvae", **data, "code": code_fingerprint(), "commit": git_commit()}


def warn_if_not_a_teacher(teacher: Path, data: Path, ds) -> None:
    """Say on stderr when the ``--teacher`` folder is not a teacher of ``data``: a run ``bgmrec train`` made (a
    CMVAE fitted to the uploads, whose choices carry the uploaders' taste, where a teacher matches the
    professional videos by content), or a teacher trained on another dataset. A teacher trained inside a run
    before teachers had a record of their own is checked by that run's record. Never an error."""
    from bgmrec.models.base import read_run_record
    from bgmrec.models.registry import resolve

    record = read_run_record(teacher)
    try:  # another model is refused as a teacher when it loads; a CMVAE would be taken
        cmvae = resolve(str(record.get("model")))[0] == "cmvae"
    except ValueError:
        cmvae = False
    if cmvae and "teacher_config" not in record:
        from bgmrec.models.deccm import professional_split

        has_professional = professional_split(ds) is not None  # ``ds``: the dataset at ``data``, loaded once
        way = ("leave --teacher out to have one trained on this dataset's professional videos" if has_professional
               else "this dataset has no professional videos to train one on")
        print(f"warning: --teacher {teacher} was trained by `bgmrec train` on the split 'train' of its dataset, not "
              f"as a teacher on professional videos: it is a teacher only if that dataset's videos are professional "
              f"music videos, whose tracks were chosen by content; {way}", file=sys.stderr)
    owner = Path(teacher).resolve().parent
    if not record and Path(teacher).resolve().name == "teacher" and read_run_record(owner):
        warn_if_trained_on_other_data(owner, data, what="the teacher's run")
    else:
        warn_if_trained_on_other_data(teacher, data, what="the teacher")


class SharedTeachers:
    """The frozen teachers of the teacher-guided models one command trains (``tune``'s points, the demo's and
    ``bench quality``'s models): one per teacher config (:func:`~bgmrec.models.deccm.teacher_config`, the
    backbone fields and the seed), in ``root/<name>`` (the demo's and the benchmark's: the first model that
    needs it; ``tune``'s: :func:`~bgmrec.tune.shared_teacher_folder`), apart from the models' run
    folders, and given to every model of that config. So DecCM and its teacher-guided ablations are guided by
    one teacher and differ only in what they ablate, and it is trained once, not once per model.

    Each teacher's ``run.json`` records what made it: its config, the dataset's fingerprints (splits,
    features, labels) and the code (:func:`code_fingerprint`). A teacher in ``root`` with the same record (a command
    run again, or ``tune --resume``), under any folder name, is loaded, so the runs that already refer to it
    keep it; otherwise one is trained and replaces ``root/<name>``, so a teacher of another world, features,
    config or code, or one that does not load, is never taken. ``data_record``: the dataset's
    :func:`dataset_record` when the caller has taken it already (else it is taken when a teacher is first needed);
    ``progress``: each teacher's training shows its epochs on stderr, as ``train``'s (``fit``'s ``progress``).
    """

    def __init__(self, root: Path, ds, console: Console, data_record: dict | None = None,
                 progress: bool = False) -> None:
        if ds.root is None:
            raise ValueError("SharedTeachers needs a dataset loaded from its folder (load_dataset): a teacher's "
                             "record holds the folder's fingerprints")
        self.root = Path(root)  # where the teachers are written, one folder each
        self.ds = ds  # the dataset (loaded from its folder) whose professional videos they are trained on
        self.console = console  # says when a teacher is trained or reused
        self.folders: dict[str, Path] = {}  # teacher config (its repr) -> its folder
        self._made: dict | None = None  # the dataset's fingerprints and the code, once a teacher needs them
        # the dataset's record when the caller took it (its features' fingerprint reads every feature byte: once)
        self._data_record = data_record
        self.progress = progress  # a teacher's training shows its epochs on stderr

    def for_model(self, model: str, sets: dict, name: str | None = None) -> Path | None:
        """The teacher folder for the model ``model`` with the config fields ``sets`` (as
        :func:`train_model` gets them), or None for a model that takes no teacher; ``name``: the run's
        name, which names the folder when the teacher is trained for it (default: ``model``)."""
        from bgmrec.models.base import FeatureSpec
        from bgmrec.models.registry import build

        return self.folder(build(model, FeatureSpec.of(self.ds), dict(sets)), name or model)

    def folder(self, student, name: str) -> Path | None:
        """The teacher folder for the built (untrained) model ``student``, when no model before needed a
        teacher of its config: a folder of ``root`` holding one with the same record (``root/name`` looked at
        first), else ``root/name`` with one trained now; None when it takes no teacher."""
        from bgmrec.data.dataset import atomic_write_dir, is_leftover, write_json_atomic
        from bgmrec.models.deccm import teacher_config, train_teacher
        from bgmrec.models.registry import takes_teacher

        if not takes_teacher(type(student), student.config):
            return None
        key = repr(teacher_config(student.config))
        if key in self.folders:
            return self.folders[key]
        check_teacher_data(student, self.ds)
        folder = self.root / name
        if folder in self.folders.values():
            raise ValueError(f"{folder}: already holds the teacher of another config; name each run apart")
        if self._made is None:  # what every teacher here is made from: read once, not per teacher config
            self._made = teacher_made_from(self._data_record or dataset_record(self.ds.root))
        made = {**self._made, "teacher_config": key}
        taken = set(self.folders.values())
        others = sorted(p for p in self.root.glob("*")
                        if p.is_dir() and not is_leftover(p) and p != folder and p not in taken)
        found = next((p for p in [folder, *others] if self._reusable(p, made)), None)
        if found is not None:  # also under another name: another first model, or a --models list reordered
            folder = found
            self.console.print(f"    teacher {folder.name}: trained before on this data by this code, reused")
        else:
            self.console.print(f"    teacher {folder.name}: training on the professional videos")

            def write(tmp: Path) -> None:
                train_teacher(student, self.ds, tmp, progress=self.progress)
                write_json_atomic(tmp / "run.json", made)

            atomic_write_dir(folder, write, marker="config.json", version_key="bgmrec_version", what="a model run")
        self.folders[key] = folder
        return folder

    def _reusable(self, folder: Path, made: dict) -> bool:
        """True when ``folder`` holds a teacher whose record is ``made``'s and that loads
        (:func:`teacher_mismatch`); a damaged one (a truncated weights file) is said and not reused."""
        why = teacher_mismatch(folder, made)
        if why is not None and why.startswith("unreadable"):
            self.console.print(f"    teacher {folder.name}: {why}")
        return why is None


#: what a teacher's record must share with the one a teacher trained now would have to stand for it, and how a
#: difference is named
TEACHER_MATCH = {"teacher_config": "config", **dict.fromkeys(FINGERPRINTS, "data"), "code": "code"}


def teacher_mismatch(folder: Path, made: dict) -> str | None:
    """Why the teacher in ``folder`` cannot stand for one trained now, whose ``run.json`` would be ``made``
    (:func:`teacher_made_from` with its ``teacher_config``): no record, another config, data (fingerprints) or
    code (:data:`TEACHER_MATCH`), or "unreadable (...)" when it does not load (a truncated weights file); None when
    it can."""
    from bgmrec.data.dataset import DatasetError, read_json
    from bgmrec.models.deccm import load_teacher

    try:
        found = read_json(folder / "run.json") if (folder / "config.json").is_file() else {}
    except DatasetError:  # none, or damaged
        return "it has no readable record of what it was trained on"
    differ = list(dict.fromkeys(what for k, what in TEACHER_MATCH.items() if found.get(k) != made[k]))
    if differ:
        return f"it was trained with another {' and '.join(differ)}"
    try:
        load_teacher(folder)
    except (DatasetError, ValueError) as e:
        return f"unreadable ({e})"
    return None


def reuse_kept_teacher(out: Path, made) -> Path | None:
    """The teacher a stopped or killed training of ``out`` kept beside it (``OUT.teacher``, ``OUT.teacher-2``, ...:
    :func:`keep_trained_teacher`) that can stand for the one a training now would train (:func:`teacher_mismatch`;
    ``made()``: that teacher's record), said on stderr; the others are said too, with why they are not reused.
    None when none can."""
    kept = sorted((p for p in out.parent.glob(f"{glob.escape(out.name)}.teacher*")
                   if p.is_dir() and re.fullmatch(rf"{re.escape(out.name)}\.teacher(-\d+)?", p.name)),
                  key=lambda p: int(p.name.rpartition("-")[2]) if p.name[-1].isdigit() else 1)
    record = made() if kept else None
    for folder in kept:
        why = teacher_mismatch(folder, record)
        if why is None:
            print(f"note: reusing the teacher kept at {folder} by an earlier training of {out}, trained on this data "
                  f"by this code with this teacher config; the run refers to it there, as with --teacher {folder} "
                  "(keep it beside the run)", file=sys.stderr)
            return folder
        print(f"note: {folder}, a teacher kept by an earlier training of {out}, is not reused: {why}",
              file=sys.stderr)
    return None


def reuse_own_teacher(out: Path, made) -> Path | None:
    """``out/teacher`` when the run at ``out``, which a training now replaces, has a teacher that can stand for the
    one it would train (:func:`teacher_mismatch`; ``made()``: that teacher's record), said on stderr (why not,
    too); None when it has none or it cannot. Training a DecCM into its own folder again with another student
    setting (``alpha``, ``inference``; the backbone's fields, epochs among them, are the teacher's too) trained its
    teacher again from scratch, and ``--teacher OUT/teacher`` is refused (inside ``--out``, replaced whole)."""
    own = Path(out) / "teacher"
    if not (Path(out) / "config.json").is_file() or not (own / "config.json").is_file():
        return None
    why = teacher_mismatch(own, made())
    if why is not None:
        print(f"note: the teacher of the run at {out} is not reused: {why}; a new one is trained", file=sys.stderr)
        return None
    print(f"note: reusing the teacher of the run at {out}, trained on this data by this code with this teacher "
          "config (copied into the new run)", file=sys.stderr)
    return own


RUN_ENTRIES = frozenset({"config.json", "weights.safetensors", "history.json", "run.json", "teacher",  # a run's own
                         ".DS_Store", "Thumbs.db", "desktop.ini"})  # and what file browsers leave

def check_run_folder(out: Path, teacher: Path | None = None) -> None:
    """Before training into ``out``, which is then replaced whole: refuse a ``teacher`` inside it (or
    holding it), and a run folder holding anything but a run's own files (another run, a result file),
    which replacing it would delete. What :func:`~bgmrec.data.dataset.atomic_write_dir` refuses (a folder
    of another kind) it refuses later, before any work too."""
    from bgmrec.data.dataset import is_leftover

    replaced = out.resolve()
    if teacher is not None:
        where = Path(teacher).resolve()
        if where == replaced or replaced in where.parents or where in replaced.parents:
            raise ValueError(f"--teacher {teacher} and --out {out} are one inside the other; training replaces "
                             "--out whole: train into a folder apart from the teacher's")
    if (out / "config.json").is_file():
        extra = sorted(p.name for p in out.iterdir()
                       if p.name not in RUN_ENTRIES and not is_leftover(p))
        if extra:
            raise ValueError(f"--out {out}: holds {', '.join(extra[:3])}{' and more' if len(extra) > 3 else ''} "
                             "besides a run's own files, and training replaces the folder whole: move them out "
                             "or train into another folder")


def trained_on_other_data(run: Path, data: Path, what: str | None = None,
                                  split: str | None = None) -> str | None:
    """What to say when ``run``'s ``run.json`` (written by train, tune, demo and bench) names another
    training dataset than ``data``: its figures there measure a transfer, and a test split of ``data`` may
    hold its training videos (``what`` names the run in the message; given the ``split`` evaluated, and the
    other dataset's folder still there, how many of its queries' videos the run trained on, and how many of
    their tracks it never saw: :func:`training_overlap`); or the same dataset with other
    features (extracted again since), or other labels (frozen negatives, weights, genres, tastes, titles:
    built again with another seed, or a catalogue relabelled); or that its ``run.json`` is damaged, so nothing
    is checked. None for runs without that record or whose record predates it, and when there is nothing to say;
    never an error."""
    from bgmrec.data.dataset import DatasetError, dataset_fingerprint, features_fingerprint, labels_fingerprint
    from bgmrec.models.base import read_run_record, run_record_damaged

    info = read_run_record(run)
    if run_record_damaged(run):  # its silence hid a run of other data
        return (f"{what + ' ' if what else ''}{run}: its run.json is not a readable record (not a JSON "
                f"object), so whether it was trained on {data} is not checked")
    try:
        other = info.get("data_fingerprint") not in (None, dataset_fingerprint(data))
        trained_on = info.get("features_fingerprint")  # hashed only when there is one to compare with
        refeatured = not other and trained_on is not None and trained_on != features_fingerprint(data)
        labelled = info.get("labels_fingerprint")  # runs trained before it was recorded (2026-11-23) have none
        relabelled = not other and not refeatured and labelled is not None and labelled != labels_fingerprint(data)
    except (DatasetError, OSError):  # a damaged dataset: nothing to say here
        return None
    name = f"{what + ' ' if what else ''}{run}"
    if other and info.get("data") == str(Path(data).resolve()):  # the same folder, written again since
        return (f"{name} was trained on {data} as it was before it was built again (its splits or "
                "manifest changed since)")
    if other:
        gone = isinstance(info.get("data"), str) and not (Path(info["data"]) / "manifest.json").is_file()
        overlap = ("" if not split or not info.get("data") else
                   f"; that folder is gone, so whether {split}'s videos were in its training data is not checked (a "
                   "test split can hold them)" if gone else training_overlap(Path(info["data"]), data, split))
        return f"{name} was trained on another dataset ({info.get('data')}) than {data}{overlap}"
    if refeatured:
        return (f"{name} was trained on other features of this dataset than {data} holds now "
                "(extracted again since?)")
    if relabelled:
        return (f"{name} was trained on this dataset's splits and features, but {data} now holds other "
                "frozen negatives, weights, genres, titles or uploaders (built again with another "
                "--seed, or a catalogue relabelled?): its sampled, IPW and per-genre figures can differ")
    return None


def warn_if_trained_on_other_data(run: Path, data: Path, what: str | None = None,
                                  split: str | None = None) -> str | None:
    """:func:`trained_on_other_data` said on stderr, as the commands warn; returns it (for a result's JSON), None
    when silent."""
    from bgmrec.features.recommend import warn_on_stderr

    said = trained_on_other_data(run, data, what, split)
    return None if said is None else warn_on_stderr(said)


def training_overlap(trained_on: Path, data: Path, split: str) -> str:
    """What a run trained on the dataset folder ``trained_on`` knows of the queries of ``split`` of ``data``, as
    a clause of its warning: how many of their videos were in its training splits, the teacher's too (their
    figures are not held out: last week's model scored 1.000 on this week's test split, 5 of 11 of whose videos
    it had trained on), and how many of them have a positive track it never saw (queries, not tracks). A video
    or track is the same when its id and its features (frames, music) are: simulated worlds of one scale share
    ids, not videos. Empty when ``trained_on`` can no longer be read (built again in place, moved), or ``data``'s
    folder has no ``split`` (one added in memory)."""
    import numpy as np

    from bgmrec.data.dataset import DatasetError, load_dataset

    try:
        old, new = load_dataset(trained_on), load_dataset(data)
    except (DatasetError, OSError):
        return ""
    if split not in new.splits:  # a split of the rows held in memory (Dataset.with_split), not of the folder
        return ""

    def keys(rows: np.ndarray, ids: list[str], features: np.ndarray) -> list[tuple[str, bytes]]:
        return [(ids[i], hashlib.blake2b(np.ascontiguousarray(features[i], np.float32).tobytes(),
                                         digest_size=16).digest()) for i in rows]

    trained = np.concatenate([old.train_rows(), *(np.asarray(old.splits[s]) for s in old.split_names("teacher"))])
    videos = set(keys(np.unique(trained[:, 0]), old.video_ids, old.video_visual))
    tracks = set(keys(np.unique(trained[:, 1]), old.track_ids, old.music))
    rows = np.asarray(new.splits[split])
    seen = sum(k in videos for k in keys(rows[:, 0], new.video_ids, new.video_visual))
    unseen = sum(k not in tracks for k in keys(rows[:, 1], new.track_ids, new.music))
    return (f": {seen} of the {len(rows)} {split} queries' videos were in its training data (their figures are not "
            f"held out), and {unseen} have a track it never trained on")


def run_label(run: Path, rec) -> str:
    """The name ``run`` was trained as (an ablation such as ``cmvae-noprior`` is saved as its base
    model), else the saved model's name (a score file's: its file name)."""
    from bgmrec.eval.scores import is_score_file
    from bgmrec.models.base import read_run_record

    if is_score_file(run):
        return rec.label
    name = read_run_record(run).get("model")
    return name if isinstance(name, str) and name else rec.name


def provenance(data: Path, runs: dict[str, Path]) -> dict:
    """What a figure was computed from, for its JSON: the dataset (folder and fingerprints), each run
    (folder, what its ``run.json`` says of its training, and ``model_package``: the code of its model of
    another package as it computed the figure, None for bgmrec's own; a score file: its path and SHA-256)
    and the bgmrec that computed it (its version, commit and :func:`code_fingerprint`, which a wheel's install
    records where its commit is unknown).

    A run saved by the library alone (no ``run.json``) has in ``trained`` the ``model_package`` its
    ``config.json`` recorded."""
    import bgmrec
    from bgmrec.data.dataset import read_json, sha256_file
    from bgmrec.eval.scores import is_score_file
    from bgmrec.models.base import read_run_record, recorded_model_package

    keep = ("model", "data", *FINGERPRINTS, "commit", "code", "argv", "model_package", "stopped_at_epoch",
            "of_epochs", "best_epoch")

    def trained(run: Path) -> dict:
        made, _ = recorded_model_package(run)
        return {**{k: v for k, v in read_run_record(run).items() if k in keep},
                **({"model_package": made} if made is not None else {})}

    def described(run: Path) -> dict:
        if is_score_file(run):  # a model computed elsewhere: its scores, as they were read
            return {"scores": str(Path(run).resolve()), "sha256": sha256_file(run)}
        return {"folder": str(Path(run).resolve()), "trained": trained(run),
                "model_package": model_package(read_json(Path(run) / "config.json")["model"])}

    return {**dataset_record(data), "runs": {role: described(run) for role, run in runs.items()},
            "bgmrec_version": bgmrec.__version__, "commit": git_commit(), "code": code_fingerprint(),
            "argv": command_argv(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def warn_if_seed_unused(model: str, seed: int | None, sets: dict) -> None:
    """Say on stderr when a seed is given (``--seed`` or ``--set seed=``) to a model whose training and scores do
    not depend on one (:attr:`~bgmrec.models.base.Recommender.uses_seed`): a seed sweep of it would show no
    spread, and say nothing of why."""
    from bgmrec.features.recommend import warn_on_stderr
    from bgmrec.models.registry import model_class

    if (seed is not None or "seed" in sets) and not model_class(model).uses_seed:
        warn_on_stderr(f"--seed: {model}'s training and scores do not depend on a seed (nothing is drawn); it is "
                       "recorded and changes nothing")


def epochs_if_trained_in_epochs(model: str, epochs: int | None, sets: dict) -> int | None:
    """The ``--epochs`` option for ``model``: None, with a warning on stderr, for a model not trained in epochs
    (its config has no ``epochs`` field: popularity, cca, random), whose training it would not change. With a
    ``--set epochs=N`` too (``sets``) it is kept: the config field named outright is checked as given."""
    from dataclasses import fields

    from bgmrec.features.recommend import warn_on_stderr
    from bgmrec.models.registry import model_class

    if epochs is None or "epochs" in sets or "epochs" in {f.name for f in fields(model_class(model).config_class)}:
        return epochs
    warn_on_stderr(f"--epochs {epochs}: {model} is not trained in epochs (its config has no field 'epochs'); "
                   "ignored")
    return None
