"""Grid search over a model's config on the validation split: ``bgmrec tune``.

Every combination of the grid's values (the Cartesian product, as Cornac's ``GridSearch`` and RecBole's
hyper-parameter tuning do) trains one run with early stopping on ``val``; each run is then ranked on
the whole ``val`` split (full catalogue, as :func:`bgmrec.eval.protocol.evaluate`) and compared, query by
query, with the grid's first point (:mod:`bgmrec.eval.significance`), so a winner that no more than
noise separates from the first point says so. The dataset is loaded whole (its checks and fingerprint read
every split's file), but no test split is scored: no test figure is computed or used for any choice. Test
figures of the chosen run come afterwards, once, from ``bgmrec evaluate``.
"""

from __future__ import annotations

import itertools
import re
import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from rich.console import Console

from bgmrec.data.dataset import FINGERPRINTS
from bgmrec.eval.report import change_cell
from bgmrec.eval.significance import PairedComparison

if TYPE_CHECKING:
    import numpy as np

    from bgmrec.data.dataset import Dataset
    from bgmrec.models.base import Recommender
    from bgmrec.runs import SharedTeachers

LEVEL = 0.95  # confidence level of the comparisons with the first point


@dataclass
class Trial:
    """One point of the grid, trained and ranked on ``val``."""

    settings: dict[str, str]  # the grid's value of each tuned field for this point
    run: str  # its run folder
    val_recall_at_10: float  # full-catalogue Recall@10 on the whole val split
    val_mrr: float  # full-catalogue MRR on the whole val split (breaks ties of Recall@10, as early stopping does)
    against_first: PairedComparison | None  # paired with the grid's first point on val (None for that point)
    epochs: int  # epochs trained (early stopping on val)
    seconds: float  # training time
    inference_mode: str | None = None  # the mode it was ranked on val in (models with several, as DecCM)

    def to_json(self) -> dict:
        """The trial as a JSON object (its comparison as :meth:`PairedComparison.to_json` writes it)."""
        out = asdict(self)
        out["against_first"] = None if self.against_first is None else self.against_first.to_json()
        return out


def parse_grid(items: list[str] | None) -> dict[str, list[str]]:
    """``--grid key=value`` items -> {key: [values in order]}; a key given several times gets several values."""
    grid: dict[str, list[str]] = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise ValueError(f"--grid expects key=value (repeat a key for more values), got {item!r}")
        values = grid.setdefault(key.strip(), [])
        if value.strip() in values:
            raise ValueError(f"--grid {key.strip()}={value.strip()} is given twice")
        values.append(value.strip())
    if not grid:
        raise ValueError("give at least one --grid key=value (repeat a key for each value to try)")
    return grid


def grid_points(grid: dict[str, list[str]]) -> list[dict[str, str]]:
    """Every combination of the grid's values, the first value of each key first (the reference point)."""
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]


def trial_folder(settings: dict[str, str]) -> str:
    """A folder name for one point, e.g. ``lr=0.002,dropout=0.4`` (characters unsafe in paths replaced)."""
    return re.sub(r"[^A-Za-z0-9_.=,+-]", "_", ",".join(f"{k}={v}" for k, v in settings.items()))


def run_grid(data: Path, model: str, grid: dict[str, list[str]], out: Path, sets: dict | None = None,
             seed: int | None = None, teacher: Path | None = None, console: Console | None = None,
             resume: bool = False, progress: bool = False) -> list[Trial]:
    """Train ``model`` at every point of ``grid`` (on top of ``sets``) into ``out/<point>``, rank each on
    val, write ``out/tuning.json`` (after every point) and ``out/tuning.md``; return the trials, best val
    Recall@10 first. Both files record the command that started the grid (:func:`tune_command`; with ``resume``,
    the stopped grid's, and this command in ``resumed_by``, after any earlier resume's), the fixed fields and the seed
    every point used (``seed`` None: ``sets``' seed or the config's default, 0); ``tuning.md`` also says the
    inference mode each point was ranked in, for a model with several. The last ``tuning.json`` (``complete``)
    and ``tuning.md`` are renamed into place together (:func:`~bgmrec.data.dataset.write_files_together`), so
    a stop while they are written leaves no summary of one grid beside the record of another. ``console``: where a
    line per point is said (none by default); ``progress``: each point's training (and a shared teacher's) shows
    its epochs on stderr, as ``train``'s.

    ``out`` must be a new or empty folder, or with ``resume`` the folder of a stopped run of the same grid
    (same model, dataset, grid, fixed fields and seed, as its ``tuning.json`` records; the seed as used, so
    ``--seed 0``, ``--set seed=0`` and no seed at all are one seed): the points it finished are loaded and
    ranked again, not retrained. A teacher-guided model (DecCM) without ``teacher``
    trains one teacher per distinct teacher config (the backbone fields) into ``out/teachers/`` (named by
    :func:`shared_teacher_folder`), which every point of that config shares: apart from the points' folders, so
    retraining one point by hand (``bgmrec train --out``) cannot replace the others' teacher
    (:class:`~bgmrec.runs.SharedTeachers`; a resumed grid loads the teacher it trained).

    Stopped (Ctrl-C, SIGTERM), the stop is raised on with a note (:func:`~bgmrec.runs.note_on_stop`) saying how
    many points ``tuning.json`` records as finished and the command that resumes the grid. While it runs,
    another grid into ``out`` (a second ``tune --resume``) is refused (:func:`~bgmrec.data.dataset.writing_lock`):
    both trained the same points, and the shared teachers.
    """
    from bgmrec.data.dataset import writing_lock
    from bgmrec.runs import note_on_stop

    with writing_lock(Path(out)), note_on_stop(lambda: resume_note(
            Path(out), len(grid_points(grid)), tune_command(data, model, out, grid, sets, seed, teacher, resume=True))):
        return _run_grid(data, model, grid, out, sets, seed, teacher, console, resume, progress)


def resume_note(out: Path, points: int, resumed: str) -> str:
    """What a stopped grid of ``points`` points in ``out`` has done, as its stop's note: the points its
    ``tuning.json`` records as finished (ranked, or diverged), and ``resumed``, the command that finishes it."""
    from bgmrec.data.dataset import DatasetError, read_json

    try:
        found = read_json(out / "tuning.json")
        done = len(found.get("trials", [])) + len(found.get("diverged", []))
    except (DatasetError, TypeError):
        done = 0
    return f"{done} of {points} points of the grid finished; `{resumed}` finishes it without training them again"


def _run_grid(data: Path, model: str, grid: dict[str, list[str]], out: Path, sets: dict | None, seed: int | None,
              teacher: Path | None, console: Console | None, resume: bool, progress: bool) -> list[Trial]:
    """:func:`run_grid`'s work: the grid's record (:func:`_grid_record`, :func:`_resumed`), then each point trained
    or loaded (:func:`_point_run`), ranked on val (:func:`_ranked_trial`) and saved, and the summary."""
    from bgmrec.data.dataset import write_json_atomic
    from bgmrec.runs import TEACHERS, SharedTeachers, dataset_record
    from bgmrec.train import TrainingDiverged

    console = console or Console(quiet=True)
    args = _GridArgs(data, model, out, sets, seed, teacher, console, resume, progress)
    trained_on = dataset_record(data)  # taken once: the features' fingerprint reads every feature byte
    record = _grid_record(args, grid, trained_on)
    record, grid, finished = _resumed(args, grid, record) if resume else (record, grid, {})
    ds, points, base, configs = _preflight(
        data, model, grid, Path(out), dict(sets or {}), seed, teacher, empty_out=not resume)
    if not resume or not (Path(out) / "tuning.json").is_file():  # from now on ``out`` holds a grid to resume
        Path(out).mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(out) / "tuning.json", {**record, "complete": False, "trials": []})
    # the points' shared teachers (a stopped grid's are loaded)
    teachers = SharedTeachers(Path(out) / TEACHERS, ds, console, trained_on, progress=progress)
    trials: list[Trial] = []
    diverged: list[dict] = stopped_diverged(Path(out)) if resume else []  # points a resumed grid does not retry
    first_gains = None
    for i, settings in enumerate(points):
        run = Path(out) / trial_folder(settings)
        console.print(f"[{i + 1}/{len(points)}] {model} " + " ".join(f"{k}={v}" for k, v in settings.items()))
        point = _Point(settings, run, point_sets(base, settings, seed), configs[i], finished.get(run.name))
        if any(Path(d["run"]).name == run.name for d in diverged):
            console.print("    diverged before: left out of the ranking, not retrained (the same seed diverges again)")
            continue
        try:
            made = _point_run(args, point, record, teachers)
        except TrainingDiverged as e:  # one bad point (lr too high) must not lose the grid: recorded, left out
            diverged.append({"settings": settings, "run": str(run), "diverged": str(e)})
            console.print(f"    diverged, left out of the ranking: {e}", markup=False)
        else:
            trial, gains = _ranked_trial(point, made, ds, first_gains)
            first_gains = gains if first_gains is None else first_gains
            trials.append(trial)
            console.print(f"    val Recall@10 {trial.val_recall_at_10:.4f}" + (
                "" if trial.against_first is None else f", {change_cell(trial.against_first)} over the first point"))
        _save_progress(Path(out), record, trials, diverged)
    return _save_tuning(Path(out), record, trials, diverged)


@dataclass(frozen=True)
class _GridArgs:
    """:func:`run_grid`'s arguments that its steps share (``out`` as given: the commands name it so)."""

    data: Path
    model: str
    out: Path
    sets: dict | None
    seed: int | None
    teacher: Path | None
    console: Console
    resume: bool
    progress: bool = False  # each point's training shows its epochs on stderr

    def command(self, grid: dict[str, list[str]], resume: bool = False) -> str:
        """The ``bgmrec tune`` command of these arguments and ``grid`` (:func:`tune_command`)."""
        return tune_command(self.data, self.model, self.out, grid, self.sets, self.seed, self.teacher, resume)


def _grid_record(args: _GridArgs, grid: dict[str, list[str]], trained_on: dict) -> dict:
    """What ``tuning.json`` records of the grid besides its points: what ``--resume`` checks (:data:`RESUME_KEYS`;
    ``trained_on``: the dataset's :func:`~bgmrec.runs.dataset_record`), the commit and this command."""
    from bgmrec.models.deccm import weights_digest
    from bgmrec.models.packages import model_package
    from bgmrec.runs import code_fingerprint, git_commit

    sets, teacher = dict(args.sets or {}), args.teacher
    return {"model": args.model, **trained_on,
            "grid": grid, "sets": sets, "seed": seed_used(args.model, grid, sets, args.seed),
            "teacher": None if teacher is None else str(Path(teacher).resolve()),
            "teacher_weights_sha256": weights_digest(Path(teacher)) if teacher is not None and (
                Path(teacher) / "weights.safetensors").is_file() else None,  # a missing one is refused later
            "code": code_fingerprint(), "model_package": model_package(args.model), "commit": git_commit(),
            "command": args.command(grid, args.resume)}


def check_resumable(data: Path, model: str, grid: dict[str, list[str]], out: Path, sets: dict | None,
                    seed: int | None, trained_on: dict) -> None:
    """Refuse (ValueError), before any training, a stopped grid in ``out`` that ``--resume`` could not finish with
    these arguments (another grid, fixed fields, seed, dataset or code: :func:`_finished_points`); ``trained_on``:
    the dataset's :func:`~bgmrec.runs.dataset_record`. Nothing to check when ``out`` holds no grid."""
    args = _GridArgs(data, model, out, sets, seed, None, Console(quiet=True), True)
    _finished_points(Path(out), _grid_record(args, grid, trained_on))


class _Resumed(NamedTuple):
    """What ``--resume`` takes from the stopped grid in ``out`` (:func:`_resumed`)."""

    record: dict  # the grid's record, with the command that started the grid and each that resumed it
    grid: dict[str, list[str]]  # the grid, its keys in the order the stopped grid named its points by
    finished: dict[str, dict]  # {point folder: its trial} of the points it finished (:func:`_finished_points`)


def _resumed(args: _GridArgs, grid: dict[str, list[str]], record: dict) -> _Resumed:
    """For ``--resume``: the grid's ``record`` and ``grid`` as the stopped grid in ``out`` has them, and the points
    it finished, after checking it was this grid; as given when ``out`` holds none yet."""
    from bgmrec.data.dataset import read_json

    finished = _finished_points(Path(args.out), record)
    if not (Path(args.out) / "tuning.json").is_file():
        return _Resumed(record, grid, finished)
    started = read_json(Path(args.out) / "tuning.json")  # a stopped grid, the same as this one (checked above)
    grid = {k: grid[k] for k in started["grid"]}  # the points as it named them: keys given in another order
    resumed_by = [c for c in started.get("resumed_by", []) if isinstance(c, str)] \
        if isinstance(started.get("resumed_by"), list) else []
    return _Resumed({**record, "grid": grid,  # the command that started the grid, and each that resumed it
                     "command": started["command"] if isinstance(started.get("command"), str) else args.command(grid),
                     "resumed_by": [*resumed_by, args.command(grid, resume=True)]}, grid, finished)


class _Point(NamedTuple):
    """One point of the grid as :func:`_point_run` trains or loads it."""

    settings: dict[str, str]  # the grid's value of each tuned field
    run: Path  # its run folder
    fields: dict  # its config fields, as ``train_model`` takes them (:func:`point_sets`)
    config: str  # its config's ``repr``
    finished: dict | None  # its trial, when the stopped grid finished it (``--resume``: :func:`_finished_points`)


class _PointRun(NamedTuple):
    """A point's run, trained now or loaded, with the epochs and seconds its trial records."""

    rec: Recommender  # the trained model
    epochs: int
    seconds: float


def _point_run(args: _GridArgs, point: _Point, record: dict, teachers: SharedTeachers) -> _PointRun:
    """The point's run: loaded when the stopped grid finished it or saved it whole (:func:`_unranked_run`), else
    trained; its training's divergence, or its shared teacher's (:class:`~bgmrec.runs.SharedTeachers`), is raised."""
    from bgmrec.models.base import load_model
    from bgmrec.runs import train_model
    from bgmrec.train import TrainingDiverged

    try:  # a DecCM point's teacher takes its lr too, and can diverge as the point's own training does
        shared = None if args.teacher is not None else teachers.for_model(
            args.model, point.fields, shared_teacher_folder(point.settings))
    except TrainingDiverged as e:
        shared = e
    stopped = point.finished
    if args.resume and stopped is None and not isinstance(shared, TrainingDiverged):
        stopped = _unranked_run(point.run, record, point.config, args.teacher if shared is None else shared)
    if stopped is not None:
        rec = load_model(point.run)
        if repr(rec.config) != point.config:
            raise ValueError(f"--resume: {point.run} holds a run of another config than this point's; tune into a "
                             "new --out")
        if shared is not None and (isinstance(shared, TrainingDiverged) or rec.teacher_dir != str(shared.resolve())):
            raise ValueError(f"--resume: {point.run}'s teacher is missing or was retrained since; tune into a new "
                             "--out")
        args.console.print("    trained before, its ranking stopped: loaded, not retrained"
                           if stopped.get("unranked") else "    finished before: loaded, not retrained")
        return _PointRun(rec, stopped["epochs"], stopped["seconds"])
    if isinstance(shared, TrainingDiverged):
        raise TrainingDiverged(f"its teacher: {shared}")
    rec, seconds = train_model(args.data, args.model, point.run, sets=point.fields,
                               teacher=args.teacher if shared is None else shared, progress=args.progress)
    return _PointRun(rec, len(rec.history), seconds)


def _ranked_trial(point: _Point, made: _PointRun, ds: Dataset,
                  first_gains: np.ndarray | None) -> tuple[Trial, np.ndarray]:
    """The point's trial, its run ranked on the whole val split and compared query by query with the grid's first
    ranked point (``first_gains``: its Recall@10 per query; None: this is the first), and its own gains."""
    from bgmrec.eval.metrics import query_gains
    from bgmrec.eval.protocol import evaluate
    from bgmrec.eval.significance import paired_comparison

    result = evaluate(made.rec, ds, "val", keep_ranks=True, check_run=False)  # trained on ds just now
    gains = query_gains(result["full_ranks"], "recall@10")
    against = None if first_gains is None else paired_comparison(first_gains, gains, "recall@10", level=LEVEL)
    return Trial(point.settings, str(point.run), result["full"]["recall@10"], result["full"]["mrr"], against,
                 made.epochs, made.seconds, made.rec.inference_mode), gains


def _save_progress(out: Path, record: dict, trials: list[Trial], diverged: list[dict]) -> None:
    """``tuning.json`` of a grid not finished yet: its ``record``, the points ranked so far (best first) and those
    that diverged; what ``--resume`` goes on from."""
    from bgmrec.data.dataset import write_json_atomic

    write_json_atomic(out / "tuning.json", {**record, "complete": False, "diverged": diverged,
                                            "trials": [t.to_json() for t in _ranked(trials)]})


def _save_tuning(out: Path, record: dict, trials: list[Trial], diverged: list[dict]) -> list[Trial]:
    """The finished grid's ``tuning.md`` and ``tuning.json`` (marked complete), written together; its trials, best
    first. A grid whose every point diverged fails, saying so."""
    from bgmrec.data.dataset import write_files_together, write_json_atomic
    from bgmrec.models.packages import packages_note
    from bgmrec.train import TrainingDiverged

    if not trials:
        raise TrainingDiverged(f"every point of the grid diverged ({diverged[0]['diverged']}); lower the learning "
                               "rate (--grid or --set lr)")
    trials = _ranked(trials)
    made = (f"`{record['data']}` (fingerprint {record['data_fingerprint']}), commit {record['commit']}"
            + packages_note({record["model"]: record["model_package"]}))  # the code it was trained with
    summary = tuning_markdown(record["model"], record["grid"], trials, made, record, diverged) + "\n"
    write_files_together(out, {  # the record marking the grid complete goes last
        "tuning.md": lambda tmp: tmp.write_text(summary, encoding="utf-8"),
        "tuning.json": lambda tmp: write_json_atomic(tmp, {**record, "complete": True, "diverged": diverged,
                                                           "trials": [t.to_json() for t in trials]})})
    return trials


def shared_teacher_folder(point: dict[str, str]) -> str:
    """The name, in ``out/teachers``, of the teacher the points of ``point``'s teacher config share:
    ``shared``, then the point's values of the grid keys that are fields of the teacher's config
    (:func:`~bgmrec.models.deccm.teacher_config`: the backbone fields and the seed), e.g.
    ``shared-latent_dim=8``: one name per teacher config, and none a single point's."""
    from dataclasses import fields

    from bgmrec.models.cmvae import CMVAEConfig

    backbone = {f.name for f in fields(CMVAEConfig)}  # what teacher_config copies from the student
    own = {k: v for k, v in point.items() if k in backbone}
    return "shared" + (f"-{trial_folder(own)}" if own else "")


def tune_command(data: Path, model: str, out: Path, grid: dict[str, list[str]], sets: dict | None = None,
                 seed: int | None = None, teacher: Path | None = None, resume: bool = False) -> str:
    """The ``bgmrec tune`` command of these arguments, each quoted as the shell needs (as
    :func:`bgmrec.bench.command_line`), so that pasting it runs the same grid: paths as given, every
    ``--grid`` value in the grid's order, the ``--set`` fields, and ``--seed``, ``--teacher`` and ``--resume``
    when given."""
    words = ["bgmrec", "tune", "--data", str(data), "--model", model, "--out", str(out)]
    for key, values in grid.items():
        for value in values:
            words += ["--grid", f"{key}={value}"]
    for key, value in (sets or {}).items():
        words += ["--set", f"{key}={value}"]
    words += [] if seed is None else ["--seed", str(seed)]
    words += [] if teacher is None else ["--teacher", str(teacher)]
    return shlex.join(words + (["--resume"] if resume else []))


def seed_used(model: str, grid: dict[str, list[str]], sets: dict, seed: int | None) -> int | None:
    """The seed every point of the grid trains with: ``seed`` (``--seed``), else ``sets``' seed (``--set
    seed=N``), else the model's default (0); None when ``seed`` is a key of the grid (each point its own).
    ``--seed`` and ``--set seed`` of different values are refused, as ``bgmrec train`` refuses them."""
    from bgmrec.models.base import with_overrides
    from bgmrec.models.registry import model_class, resolve
    from bgmrec.runs import option_into_sets

    if "seed" in grid:
        return None
    given = dict(sets)
    option_into_sets(given, "seed", seed)
    overrides = {**resolve(model)[1], **({"seed": given["seed"]} if "seed" in given else {})}
    return with_overrides(model_class(model).config_class(), overrides).seed


def _ranked(trials: list[Trial]) -> list[Trial]:
    return sorted(trials, key=lambda t: (-t.val_recall_at_10, -t.val_mrr))  # stable: ties keep the grid's order


def stopped_diverged(out: Path) -> list[dict]:
    """For ``--resume`` (after :func:`_finished_points` checked the grid): the points whose training diverged in
    the stopped grid of ``out`` (its ``tuning.json``'s ``diverged``), which a resumed grid does not train again."""
    from bgmrec.data.dataset import read_json

    path = out / "tuning.json"
    found = read_json(path).get("diverged", []) if path.is_file() else []
    if not isinstance(found, list) or not all(isinstance(d, dict) and isinstance(d.get("run"), str)
                                              and isinstance(d.get("settings"), dict) for d in found):
        raise ValueError(f"--resume: {path}: field 'diverged' must be a list of objects with 'settings' and 'run'; "
                         "the file is damaged, tune into a new --out")
    return found


def _finished_points(out: Path, record: dict) -> dict[str, dict]:
    """For ``--resume``: {point folder: its trial} of the points the stopped grid in ``out`` finished (in
    its ``tuning.json``, with the run's ``run.json``), after checking that grid was this one (the same
    arguments, teacher weights and code)."""
    from bgmrec.data.dataset import DatasetError, read_json

    path = out / "tuning.json"
    if not output_folder_contents(out) and not path.is_file():
        return {}
    try:
        stopped = read_json(path)
    except DatasetError as e:
        raise ValueError(f"--resume: {out} holds no grid of `bgmrec tune` to resume ({e})") from None
    lacking = [k for k in ("model", "grid", "trials") if k not in stopped]
    if lacking:  # what every tune wrote: damaged, not old (an emptied file was said to be an older bgmrec's)
        raise ValueError(f"--resume: {path} is no record of a tune grid (no field {', '.join(map(repr, lacking))}): "
                         "damaged or replaced; tune into a new --out")
    if "code" not in stopped:
        raise ValueError(f"--resume: {path} was written by a bgmrec before --resume existed, which recorded too "
                         "little to check the grid; tune into a new --out")
    then, now = _as_resumed(stopped, record["model"]), _as_resumed(record, record["model"])
    differ = [k for k in RESUME_KEYS if then.get(k) != now[k]]
    if "code" in differ:  # no argument of the user's can make it match: say so first
        raise ValueError(f"--resume: {path} was tuned by another bgmrec (code {then.get('code')}, now {now['code']}), "
                         "whose finished points cannot be reused: tune into a new --out")
    if differ:
        was = {k: "not recorded (an older bgmrec)" if k not in then else "each point's own (a grid key)"
               if k == "seed" and then[k] is None else repr(then[k]) for k in differ}
        fields = [RESUME_NAMES.get(k, k) for k in differ]
        raise ValueError(f"--resume: {path} records another "
                         f"{' and '.join(filter(None, [', '.join(fields[:-1]), fields[-1]]))} than given now "
                         f"({'; '.join(f'{RESUME_VALUES.get(k, k)}: {v}' for k, v in was.items())}); resume with "
                         "the same arguments (and code) or tune into a new --out")
    trials = stopped.get("trials")
    if not isinstance(trials, list) or not all(
            isinstance(t, dict) and isinstance(t.get("run"), str) and isinstance(t.get("seconds"), int | float)
            and isinstance(t.get("epochs"), int) for t in trials):
        raise ValueError(f"--resume: {path}: field 'trials' must be a list of objects with 'run' (a folder), "
                         "'seconds' and 'epochs'; the file is damaged, tune into a new --out")
    names = [Path(t["run"]).name for t in trials]  # by name: ``out`` may have moved
    return {name: t for name, t in zip(names, trials, strict=True) if (out / name / "run.json").is_file()}


def _unranked_run(run: Path, record: dict, config: str, teacher: Path | None) -> dict | None:
    """For ``--resume``: the trial's ``seconds`` and ``epochs`` (and ``unranked``) of a point whose run the stopped
    grid saved whole but had not ranked (stopped while ranking it on val, so its ``tuning.json`` does not list
    it), when its ``run.json`` says this grid made it (model, the dataset's fingerprints, code, model package),
    not a stopped training's, and it holds the point's ``config`` (its ``repr``) and ``teacher``; else None (it is
    trained again)."""
    from bgmrec.data.dataset import DatasetError, read_json
    from bgmrec.models.base import load_model

    try:
        made = read_json(run / "run.json") if (run / "config.json").is_file() else {}
    except DatasetError:
        return None
    if not made or "stopped_at_epoch" in made or any(made.get(k) != record[k] for k in
                                                     ("model", *FINGERPRINTS, "code", "model_package")):
        return None
    try:
        rec = load_model(run)
    except (DatasetError, ValueError, OSError):  # damaged: trained again
        return None
    if repr(rec.config) != config or teacher is not None and getattr(rec, "teacher_dir", None) != str(
            Path(teacher).resolve()):
        return None
    return {"seconds": made.get("seconds", 0.0), "epochs": made.get("epochs_run", len(rec.history)), "unranked": True}


# what must match to resume (``code``: :func:`bgmrec.runs.code_fingerprint`; ``model_package``:
# :func:`bgmrec.models.packages.model_package`, the code of a model from another package)
RESUME_KEYS = ("model", *FINGERPRINTS, "grid", "sets", "seed", "teacher", "teacher_weights_sha256", "code",
               "model_package")
# how the refusal names a key that differs ("records another ... than given now"), and its recorded value
RESUME_NAMES = {"sets": "set of --set values"}
RESUME_VALUES = {"sets": "--set values"}


def _as_resumed(record: dict, model: str) -> dict:
    """The :data:`RESUME_KEYS` of a ``tuning.json`` record as ``--resume`` compares them: the seed as every
    point used it (:func:`seed_used`; an older bgmrec's ``tuning.json`` recorded ``--seed`` as given, None
    for the default) and the ``--set`` values without it, so ``--seed 0``, ``--set seed=0`` and
    no seed at all resume one another's grid."""
    out = {k: record[k] for k in RESUME_KEYS if k in record}
    if isinstance(record.get("grid"), dict) and isinstance(record.get("sets"), dict) and "seed" in record:
        try:
            out["seed"] = seed_used(model, record["grid"], record["sets"], record["seed"])
        except (TypeError, ValueError):  # not a seed of this model (a grid of another): compared as recorded
            return out
        out["sets"] = {k: v for k, v in record["sets"].items() if k != "seed"}
    return out


def output_folder_contents(out: Path) -> list[Path]:
    """What ``out`` holds besides the temporary folders a training stopped by a kill leaves behind and a
    ``tuning.json`` of no trial (a grid stopped or failed before its first point finished, with nothing
    else of it here: a new grid may take the folder)."""
    if not out.is_dir():
        return []
    from bgmrec.data.dataset import is_leftover

    held = [p for p in out.iterdir() if not is_leftover(p)]
    return [] if [p.name for p in held] == ["tuning.json"] and _no_trials(held[0]) else held


def _no_trials(path: Path) -> bool:
    from bgmrec.data.dataset import DatasetError, read_json

    try:
        return read_json(path).get("trials") == []
    except DatasetError:  # unreadable: not a grid that may be replaced
        return False


def _preflight(data: Path, model: str, grid: dict[str, list[str]], out: Path, base: dict, seed: int | None,
               teacher: Path | None, empty_out: bool = True):
    """Everything checked before any training, so a typo fails now and not after hours: (dataset, points,
    the fixed fields, and per point ``repr`` of its config)."""
    from bgmrec.data.dataset import load_dataset

    if empty_out and out.exists() and (not out.is_dir() or output_folder_contents(out)):
        raise ValueError(f"--out {out}: exists and is not an empty folder; give a new folder for the grid's runs, "
                         "or --resume to finish a stopped grid there")
    ds = load_dataset(data)
    return ds, grid_points(grid), base, check_grid(ds, data, model, grid, base, seed, teacher, out)


def check_grid(ds, data: Path, model: str, grid: dict[str, list[str]], base: dict, seed: int | None,
               teacher: Path | None = None, out: Path | None = None) -> list[str]:
    """Check, before any training, that ``model`` can be tuned over ``grid`` on the dataset ``ds`` (folder ``data``):
    a val split with queries, each field given one way, every point a config of its own (``repr``, returned in
    the grid's order) with a folder name of its own, and the teacher data (or the given ``teacher``, prepared
    beside ``out``) fitting every point. A ValueError says what is wrong."""
    from bgmrec.models.base import FeatureSpec
    from bgmrec.models.registry import build, prepare_teacher
    from bgmrec.runs import check_teacher_data

    if "val" not in ds.splits or len(ds.splits["val"]) == 0:
        raise ValueError(f"{data}: tuning needs a val split with queries; the dataset has {', '.join(ds.splits)}")
    overlap = sorted(set(base) & set(grid))
    if overlap:
        raise ValueError(f"{', '.join(overlap)}: given both as --set and as --grid; give each field one way")
    if seed is not None and "seed" in grid:
        raise ValueError("seed: given both as --seed and as --grid; give it one way")
    points = grid_points(grid)
    configs: list[str] = []
    folders = set()
    for point in points:
        rec = build(model, FeatureSpec.of(ds), point_sets(base, point, seed))
        config = repr(rec.config)
        if config in configs:
            raise ValueError(f"{trial_folder(point)} and {trial_folder(points[configs.index(config)])} give the same "
                             "config; drop one of the two values")
        configs.append(config)
        folder = trial_folder(point)
        if folder in folders:
            raise ValueError(f"two grid points share the folder name {folder!r}; change one of their values")
        folders.add(folder)
        try:
            check_teacher_data(rec, ds, teacher)
            if teacher is not None:  # the given teacher must also fit every point (latent size, features)
                prepare_teacher(rec, ds, out, teacher)
        except ValueError as e:
            raise ValueError(f"{trial_folder(point)}: {e}") from None
    return configs


def point_sets(base: dict, point: dict, seed: int | None) -> dict:
    """A point's config fields: the fixed ones, the point's, and ``seed`` (as ``train_model`` takes them)."""
    from bgmrec.runs import option_into_sets

    sets = {**base, **point}
    option_into_sets(sets, "seed", seed)
    return sets


def tuning_rows(trials: list[Trial]) -> list[list[str]]:
    """Header and one row per trial: its settings, for a model with several inference modes the one it was
    ranked in, val Recall@10 and MRR, change over the first point, epochs, time."""
    keys = list(trials[0].settings)
    modes = any(t.inference_mode is not None for t in trials)
    rows = [[*keys, *(["mode"] if modes else []), "val R@10", "val MRR", "vs the first point", "epochs", "seconds"]]
    for t in trials:
        rows.append([*(t.settings[k] for k in keys), *([t.inference_mode or "-"] if modes else []),
                     f"{t.val_recall_at_10:.4f}", f"{t.val_mrr:.4f}",
                     "(the first point)" if t.against_first is None else change_cell(t.against_first),
                     str(t.epochs), f"{t.seconds:.0f}"])
    return rows


def tuning_markdown(model: str, grid: dict[str, list[str]], trials: list[Trial], made: str = "",
                    record: dict | None = None, diverged: list[dict] | None = None) -> str:
    """``tuning.md``: the command, the grid and what every point shares (``record``: ``tuning.json``'s
    ``command``, ``sets`` and ``seed``), the inference mode of the figures, how each point was trained and
    compared (``made``: on what data, by what code), :func:`tuning_rows`, and the points whose training
    diverged (``diverged``: ``tuning.json``'s records), which are not ranked."""
    from bgmrec.eval.report import markdown_from_rows

    return "\n".join([
        f"# Tuning {model} on val ({time.strftime('%Y-%m-%d')})", "",
        *([f"Made by `{record['command']}`" + "".join(f", resumed by `{c}`" for c in dict.fromkeys(
            record.get("resumed_by") or [])) + ".", ""] if record and record.get("command") else []),
        *([f"Dataset {made}.", ""] if made else []),
        f"Grid: {grid_text(grid)}.{fixed_text(record) if record else ''}{modes_text(trials)} Each point trained with "
        "early stopping on val, then ranked on the whole val split (full catalogue); *vs the first point*: the change "
        f"in Recall@10 over the grid's first point on the same val queries, its {LEVEL:.0%} paired bootstrap interval "
        "and randomisation-test p-value. Best first (by Recall@10, ties by MRR). The dataset was loaded whole, but no "
        "test split was scored: no test figure was computed or used for the choice.", "",
        markdown_from_rows(tuning_rows(trials)),
        *(["", "Diverged, not ranked (their training's loss or weights stopped being finite)"
           + ("; *vs the first point* compares with the first point that trained" if diverged and
              diverged[0]["settings"] == grid_points(grid)[0] else "") + ":", "",
           *(f"- {' '.join(f'{k}={v}' for k, v in d['settings'].items())}: {d['diverged']}" for d in diverged)]
          if diverged else [])])


def grid_text(grid: dict[str, list[str]]) -> str:
    """``lr in {0.001, 0.002}; dropout in {0.1}``: the grid's values of each field."""
    return "; ".join(f"{k} in {{{', '.join(v)}}}" for k, v in grid.items())


def fixed_text(record: dict) -> str:
    """`` Fixed for every point: ...; seed ....``: the ``--set`` values and the seed every point used (as
    ``tuning.json`` records them), with a space before."""
    sets = {k: v for k, v in record["sets"].items() if k != "seed"}
    fixed = ", ".join(f"{k}={v}" for k, v in sets.items()) + " (--set; other fields at the model's defaults)" \
        if sets else "no --set (every field outside the grid at the model's default)"
    seed = "seed: each point's own (a grid key)" if record["seed"] is None else f"seed {record['seed']}"
    return f" Fixed for every point: {fixed}; {seed}."


def modes_text(trials: list[Trial]) -> str:
    """`` Ranked in inference mode ....``, with a space before, for a model with several inference modes (as
    every figure of DecCM says its mode); empty for a model of one mode."""
    modes = list(dict.fromkeys(t.inference_mode for t in trials if t.inference_mode is not None))
    if not modes:
        return ""
    if len(modes) == 1:
        return f" Every point was ranked on val in inference mode `{modes[0]}`."
    return " Each point was ranked on val in its own inference mode (column *mode*)."
