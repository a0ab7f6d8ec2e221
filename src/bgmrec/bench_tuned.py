"""``bgmrec bench tuned``: models tuned alike on val, then compared on the test splits.

A comparison of two models at their default settings can say more about the defaults than about the models.
Here every model gets the same grid search on ``val`` (:func:`bgmrec.tune.run_grid`, one grid for all), and
the report gives two views of each test split:

* **val's choice**: each model's best point on val against the first model's best point, paired on the same
  queries (the honest comparison: nothing about a test split chose anything);
* **every grid point**: the same settings for every model, so each point gives one paired change over the
  first model. Their spread says how much of a gain at one setting (the defaults) belongs to that setting.

The first model is the baseline, in the inference mode ``tune`` ranks it in (its default); a model with several
modes is chosen on val in that mode, and its other modes are compared at the point it chose. Results are
written beside the report as JSON (without per-query ranks).
"""

from __future__ import annotations

import glob
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console

from bgmrec.bench import check_report_file, first_line, with_resume, write_report
from bgmrec.data.dataset import load_dataset, read_json
from bgmrec.demo import check_own_folder
from bgmrec.eval.protocol import evaluate_run
from bgmrec.eval.report import change_cell, label, markdown_from_rows, paired_against, without_ranks
from bgmrec.tune import (
    Trial,
    check_grid,
    check_resumable,
    fixed_text,
    grid_points,
    grid_text,
    output_folder_contents,
    run_grid,
    trial_folder,
)

if TYPE_CHECKING:
    from bgmrec.data.dataset import Dataset

TUNED_TITLE = "# Models tuned alike on val"  # the first line of the report
DEFAULT_SPLITS = ("test_unbiased", "test")  # the splits compared, by default


@dataclass
class _Tuned:
    """One model's grid, tuned: what the report reads of it."""

    chosen: str  # its best point on val (the point's name, its settings in the grid's order)
    val_mode: str | None  # the inference mode it was ranked on val in (None: a model of one mode)
    val: dict[str, float]  # point -> Recall@10 on val
    diverged: list[str]  # the points whose training diverged (not ranked)
    record: dict  # its tuning.json


def run_tuned(data: Path, models: list[str], grid: dict[str, list[str]], work: Path, out: Path, console: Console,
              command: str, sets: dict | None = None, seed: int | None = None,
              splits: tuple[str, ...] = DEFAULT_SPLITS, resume: bool = False, progress: bool = False) -> Path:
    """Tune each of ``models`` on ``data``'s val split over ``grid`` (one :func:`~bgmrec.tune.run_grid` per model
    into ``work/<model>``; ``sets`` fixed for every point, a key ``MODEL.FIELD`` for that model's points alone;
    ``seed`` for every point; ``resume`` finishes stopped grids and reuses finished points), rank every point on
    ``splits`` (test splits) and write the Markdown report ``out``, its JSON figures beside it (``out`` with
    ``.json``). The first model is the baseline of every paired comparison. Every model's grid is checked before
    any training. ``progress``: every point's training (and a shared teacher's) shows its epochs on stderr."""
    from bgmrec.models.base import STOPS
    from bgmrec.runs import dataset_record, git_commit, machine

    if len(models) < 2 or len(set(models)) != len(models):
        raise ValueError(f"bench tuned compares at least two distinct models, the first the baseline; got {models}")
    if not splits or len(set(splits)) != len(splits):
        raise ValueError(f"bench tuned: name each split to compare on once, at least one; got {list(splits)}")
    per_model = model_sets(sets, models)
    ds = load_dataset(data)
    _check_splits(ds, data, splits)
    _check_work(work, models, out, resume)
    trained_on = dataset_record(data) if resume else {}
    _check_grid_fields(grid, models)
    for model in models:  # a field one model lacks, or a grid --resume cannot finish, fails now, not after others
        try:
            check_grid(ds, data, model, grid, per_model[model], seed)
            if resume:
                check_resumable(data, model, grid, Path(work) / model, per_model[model], seed, trained_on)
        except ValueError as e:
            raise ValueError(f"{model}: {str(e).replace('tune into a new --out', 'give a new --work')}") from None
    tuned: dict[str, _Tuned] = {}
    results: list[dict] = []  # every point of every model on every split, ranks kept for the pairings
    try:
        for model in models:
            trials = run_grid(data, model, grid, Path(work) / model, per_model[model], seed, console=console,
                              resume=resume, progress=progress)
            tuned[model] = _tuned(trials, grid, Path(work) / model)
            for t in trials:
                results += _point_results(Path(t.run), ds, splits, model, point_name(t.settings, grid))
            console.print(f"{model}: {len(trials)} points ranked on {', '.join(splits)}")
    except STOPS as stop:  # the benchmark's command continues it, not the grid's own (the note run_grid adds)
        stop.__notes__ = [f"`{with_resume(command)}` continues the benchmark, reusing every point finished"]
        raise
    base = _baseline_label(models[0], tuned[models[0]])
    lines = [TUNED_TITLE, "",
             f"Made by `{command}` at commit {git_commit()} on {machine()}, {time.strftime('%Y-%m-%d')}. Dataset "
             f"`{data}`. Every model was tuned by `bgmrec tune` on val over the same grid ({grid_text(grid)}), each "
             "point trained with early stopping on val and ranked on the whole val split"
             + "".join(f"; {m} in its `{t.val_mode}` mode" for m, t in tuned.items() if t.val_mode)
             + (", its other modes compared at the point that mode chose. "
                if any(t.val_mode for t in tuned.values()) else ". ")
             + " ".join(f"{m}:{fixed_text(t.record)}" for m, t in tuned.items())
             + f" The baseline is {base}. Full-catalogue Recall@10 throughout; changes are relative, at val's choice "
             "with a 95% paired bootstrap interval over the queries and a paired randomisation test's p-value "
             "(`bgmrec compare`), given these trained models.", ""]
    points = [point_name(p, grid) for p in grid_points(grid)]
    for split in splits:
        lines += _chosen_section(results, base, tuned, split)
        lines += _per_point_section(results, base, points, split)
    diverged = [f"{m} at {', '.join(t.diverged)}" for m, t in tuned.items() if t.diverged]
    if diverged:
        lines += ["Diverged in training, not ranked (their cells are blank): " + "; ".join(diverged) + ".", ""]
    figures = {"command": command, "data": str(data), "models": list(models), "baseline": base, "grid": grid,
               "sets": dict(sets or {}), "seed": {m: t.record.get("seed") for m, t in tuned.items()},
               "splits": list(splits), "val_mode": {m: t.val_mode for m, t in tuned.items()},
               "chosen": {m: t.chosen for m, t in tuned.items()},
               "val_recall_at_10": {m: t.val for m, t in tuned.items()},
               "diverged": {m: t.diverged for m, t in tuned.items()}, "results": without_ranks(results)}
    return write_report(out, lines, console, {Path(out).with_suffix(".json").name: figures})


def model_sets(sets: dict | None, models: list[str]) -> dict[str, dict]:
    """Each model's fixed fields: every ``FIELD`` of ``sets``, and its own ``MODEL.FIELD`` ones (a field only one
    model has, as DecCM's ``inference``). A prefix naming no model of ``models`` is refused."""
    own: dict[str, dict] = {m: {} for m in models}
    shared = {}
    for key, value in (sets or {}).items():
        model, dot, field = key.rpartition(".")
        if not dot:
            shared[key] = value
        elif model in own:
            own[model][field] = value
        else:
            raise ValueError(f"--set {key}={value}: {model!r} is not one of the models ({', '.join(models)})")
    return {m: {**shared, **own[m]} for m in models}


def _check_grid_fields(grid: dict[str, list[str]], models: list[str]) -> None:
    """Refuse a ``grid`` field one of ``models`` lacks, saying why the grid is every model's: a ``MODEL.FIELD`` (as
    ``--set`` takes) or a field only DecCM has was refused as an unknown field of CMVAE's config."""
    from bgmrec.models.registry import config_fields

    for model in models:
        lacking = [key for key in grid if key not in {f.name for f in config_fields(model)}]
        if lacking:
            raise ValueError(f"--grid {', '.join(lacking)}: not a config field of {model}; the grid is every model's, "
                             "each point paired across them, so its fields must be fields of every model (fix one "
                             "model's own field with --set MODEL.FIELD=VALUE, or tune it with bgmrec tune)")


def point_name(settings: dict[str, str], grid: dict[str, list[str]]) -> str:
    """A grid point's name in the report, its settings in the order of ``grid``'s fields as given now: one name for
    every model's point, whatever order each grid's folders were named in when it was started."""
    return trial_folder({k: settings[k] for k in grid})


def _check_splits(ds: Dataset, data: Path, splits: tuple[str, ...]) -> None:
    """Refuse a split the dataset lacks, one with no queries, or one that is not a test split (val chose)."""
    unknown = [s for s in splits if s not in ds.splits]
    if unknown:
        raise ValueError(f"{data}: no split {', '.join(unknown)} (it has {', '.join(ds.splits)})")
    not_test = [f"{s} (role {ds.split_info[s].role})" for s in splits if ds.split_info[s].role != "test"]
    if not_test:
        raise ValueError(f"{data}: {', '.join(not_test)}: not a test split; val chooses each model's settings, so "
                         "compare on test splits only")
    empty = [s for s in splits if not len(ds.splits[s])]
    if empty:
        raise ValueError(f"{data}: split {', '.join(empty)} has no queries to compare on")


def _check_work(work: Path, models: list[str], out: Path, resume: bool) -> None:
    """Refuse a report ``out`` that is not Markdown, is a file but an earlier report of this command
    (:func:`~bgmrec.bench.check_report_file`), lies in a folder below ``work``, or whose JSON beside it would
    replace a file that is not an earlier report's figures; a ``work`` folder holding anything but grids of
    ``tune`` and reports of this command; a model's entry in it that is not a grid; and, without ``resume``, a
    model's grid already there."""
    work, out = Path(work), Path(out)
    check_report_file(out, TUNED_TITLE)
    if out.resolve().parent != work.resolve() and out.resolve().is_relative_to(work.resolve()):
        raise ValueError(f"--out {out}: inside a folder of --work {work}; write it into {work} itself or outside it")
    figures = out.with_suffix(".json")
    if figures.exists() and not _earlier_figures(figures):
        raise ValueError(f"--out {out}: {figures} exists and is not the figures of an earlier bench tuned report; "
                         "refusing to replace it (choose another --out)")
    grids = [p.name for p in output_folder_contents(work) if (p / "tuning.json").is_file()] if work.is_dir() else []
    reports = [p for p in work.glob("*.md") if first_line(p).startswith(TUNED_TITLE)] if work.is_dir() else []
    own = [*models, *grids, *(name for p in reports for name in (p.name, p.with_suffix(".json").name))]
    if out.resolve().parent == work.resolve():
        own += [out.name, figures.name]
    check_own_folder(work, "--work", "a work folder of bgmrec bench tuned", [glob.escape(name) for name in own])
    for model in models:
        folder = work / model
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"--work {work}: {folder} is a file, where the grid of {model} goes; give a new --work")
        if not output_folder_contents(folder):
            continue
        if not (folder / "tuning.json").is_file():
            raise ValueError(f"--work {work}: {folder} is not a grid of bgmrec tune; give a new --work")
        if not resume:
            raise ValueError(f"--work {work}: holds the grid of {model} from an earlier run; --resume finishes it "
                             "and reuses its points, or give a new --work")


def _earlier_figures(path: Path) -> bool:
    """Whether ``path`` holds the JSON figures of a bench tuned report (which a new report may replace)."""
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(found, dict) and all(key in found for key in ("command", "models", "chosen", "results"))


def _tuned(trials: list[Trial], grid: dict[str, list[str]], folder: Path) -> _Tuned:
    """What the report reads of one model's finished grid in ``folder`` (its trials, best on val first)."""
    record = read_json(folder / "tuning.json")
    return _Tuned(chosen=point_name(trials[0].settings, grid), val_mode=trials[0].inference_mode,
                  val={point_name(t.settings, grid): t.val_recall_at_10 for t in trials},
                  diverged=[point_name(d["settings"], grid) for d in record.get("diverged", [])], record=record)


def _baseline_label(model: str, tuned: _Tuned) -> str:
    """The baseline's row label: the model, with the mode it was chosen in when it has several."""
    return label({"model": model, "inference_mode": tuned.val_mode})


def _point_results(run: Path, ds: Dataset, splits: tuple[str, ...], model: str, point: str) -> list[dict]:
    """One grid point's results on ``splits``, each inference mode's, labelled by its model and tagged by point."""
    results = evaluate_run(run, ds, splits=splits, label=model, keep_ranks=True)
    for r in results:
        r["point"] = point
    return results


def _chosen_section(results: list[dict], base: str, tuned: dict[str, _Tuned], split: str) -> list[str]:
    """The table of each model's best point on val, ranked on ``split``, paired with the baseline's (``base``, its
    label); the val figure on the row of the mode that was ranked on val."""
    picked = [r for r in results if r["split"] == split and r["point"] == tuned[r["label"]].chosen]
    changes = dict(paired_against(picked, base, split))
    rows = [["model", "val's choice", "val R@10", f"{split} R@10", f"vs {base}"]]
    for r in picked:
        t, name = tuned[r["label"]], label(r)
        on_val = r.get("inference_mode") == t.val_mode
        rows.append([name, t.chosen, f"{t.val[t.chosen]:.4f}" if on_val else "", f"{r['full']['recall@10']:.4f}",
                     change_cell(changes[name]) if name in changes else ""])
    return [f"## `{split}`: each model at its best point on val", "",
            "*val R@10* is on the row of the mode each model was ranked on val in.", "", markdown_from_rows(rows), ""]


def _per_point_section(results: list[dict], base: str, points: list[str], split: str) -> list[str]:
    """Every grid point's Recall@10 on ``split`` for every model (and mode), its change over the baseline (``base``,
    its label) at the same point, and the changes' mean, median and range over the points where both trained."""
    columns = list(dict.fromkeys(label(r) for r in results if r["split"] == split and label(r) != base))
    rows = [["point", base, *columns]]
    gains: dict[str, list[float]] = {c: [] for c in columns}
    for point in points:
        here = [r for r in results if r["split"] == split and r["point"] == point]
        recall = {label(r): r["full"]["recall@10"] for r in here}
        changes = {name: c.relative_change for name, c in paired_against(here, base, split)}
        cells = []
        for c in columns:
            if c in changes:
                gains[c].append(changes[c])
            cells.append("" if c not in recall else
                         f"{recall[c]:.4f}" + (f" ({changes[c]:+.1%})" if c in changes else ""))
        rows.append([point, f"{recall[base]:.4f}" if base in recall else "", *cells])
    summary = [["model", "points", "mean change", "median", "lowest", "highest", "points above the baseline"]]
    for c, g in gains.items():
        if g:
            summary.append([c, str(len(g)), f"{np.mean(g):+.1%}", f"{np.median(g):+.1%}", f"{min(g):+.1%}",
                            f"{max(g):+.1%}", str(sum(x > 0 for x in g))])
    return [f"## `{split}`: every grid point, the same settings for every model", "",
            f"Recall@10 at each point, and in brackets the change over {base} at the same point (paired on the same "
            "queries). A cell is blank where that model diverged at that point; the summary is over the points "
            "where both trained (*points*).", "", markdown_from_rows(rows), "", markdown_from_rows(summary), ""]
