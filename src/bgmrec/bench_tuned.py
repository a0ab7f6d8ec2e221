"""``bgmrec bench tuned``: models tuned alike on val, then compared on the test splits.

A comparison of two models at their default settings can say more about the defaults than about the models.
Here every model gets the same grid search on ``val`` (:func:`bgmrec.tune.run_grid`, the grid and fixed fields
shared), and the report gives two views of the test splits:

* **val's choice**: each model's best point on val against the first model's best point, paired on the same
  queries (the honest comparison: nothing about a test split chose anything);
* **every grid point**: the same settings for every model, so each point gives one paired change over the
  first model. Their spread says how much of a gain at one setting (the defaults) belongs to that setting.

The first model is the baseline. Results are written beside the report as JSON (without per-query ranks).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from rich.console import Console

from bgmrec.bench import write_report
from bgmrec.eval.report import change_cell, label, markdown_from_rows, paired_against, without_ranks

TUNED_TITLE = "# Models tuned alike on val"  # the first line of the report
DEFAULT_SPLITS = ("test_unbiased", "test")  # the splits compared, by default


def run_tuned(data: Path, models: list[str], grid: dict[str, list[str]], work: Path, out: Path, console: Console,
              command: str, sets: dict | None = None, seed: int | None = None,
              splits: tuple[str, ...] = DEFAULT_SPLITS, resume: bool = False) -> Path:
    """Tune each of ``models`` on ``data``'s val split over ``grid`` (one :func:`~bgmrec.tune.run_grid` per model
    into ``work/<model>``; ``sets`` and ``seed`` fixed for every point; ``resume`` finishes stopped grids), rank
    every point on ``splits`` and write the Markdown report ``out``, its JSON figures beside it
    (``out`` with ``.json``). The first model is the baseline of every paired comparison."""
    from bgmrec.data.dataset import load_dataset
    from bgmrec.demo import check_own_folder
    from bgmrec.runs import git_commit, machine, note_on_stop
    from bgmrec.tune import grid_points, output_folder_contents, run_grid, trial_folder

    if len(models) < 2 or len(set(models)) != len(models):
        raise ValueError(f"bench tuned compares at least two distinct models, the first the baseline; got {models}")
    if not splits:
        raise ValueError("bench tuned: name at least one split to compare on")
    ds = load_dataset(data)
    unknown = [s for s in splits if s not in ds.splits]
    if unknown:
        raise ValueError(f"{data}: no split {', '.join(unknown)} (it has {', '.join(ds.splits)})")
    empty = [s for s in splits if not len(ds.splits[s])]
    if empty:
        raise ValueError(f"{data}: split {', '.join(empty)} has no queries to compare on")
    own = (*models, Path(out).name, Path(out).with_suffix(".json").name) \
        if Path(out).resolve().parent == Path(work).resolve() else models
    check_own_folder(work, "--work", "a work folder of bgmrec bench tuned", own)
    earlier = [m for m in models if not resume and output_folder_contents(Path(work) / m)]
    if earlier:
        raise ValueError(f"--work {work}: holds the grid of {', '.join(earlier)} from an earlier run; --resume "
                         "finishes it and reuses its points, or give a new --work")
    points = [trial_folder(p) for p in grid_points(grid)]
    results: list[dict] = []  # every point of every model on every split, ranks kept for the pairings
    chosen: dict[str, str] = {}  # model -> its best point on val
    val: dict[str, dict[str, float]] = {}  # model -> point -> val Recall@10
    again = command if "--resume" in command.split() else f"{command} --resume"
    with note_on_stop(lambda: f"`{again}` continues the benchmark, reusing every point finished"):
        for model in models:
            trials = run_grid(data, model, grid, Path(work) / model, sets, seed, console=console, resume=resume)
            chosen[model] = Path(trials[0].run).name
            val[model] = {Path(t.run).name: t.val_recall_at_10 for t in trials}
            for t in trials:
                results += _point_results(Path(t.run), ds, splits, model, Path(t.run).name)
            console.print(f"{model}: {len(trials)} points ranked on {', '.join(splits)}")
    lines = [TUNED_TITLE, "",
             f"Made by `{command}` at commit {git_commit()} on {machine()}, {time.strftime('%Y-%m-%d')}. Dataset "
             f"`{data}`. Every model was tuned by `bgmrec tune` on val over the same grid "
             f"({_grid_text(grid)}; fixed: {_sets_text(sets, seed)}), each point trained with early stopping on "
             "val and ranked on the whole val split, a model with several inference modes in its default one. "
             f"The baseline is {models[0]}. Full-catalogue Recall@10 throughout; changes are relative, with a 95% "
             "paired bootstrap interval over the queries and a paired randomisation test's p-value (`bgmrec "
             "compare`), given these trained models (one training seed).", ""]
    for split in splits:
        base = next(label(r) for r in results if r["split"] == split and r["label"] == models[0])
        lines += _chosen_section(results, base, chosen, val, split)
        lines += _per_point_section(results, base, points, split)
    figures = {"command": command, "data": str(data), "models": list(models), "grid": grid,
               "sets": dict(sets or {}), "seed": seed, "chosen": chosen, "val_recall_at_10": val,
               "results": without_ranks(results)}
    return write_report(out, lines, console, {Path(out).with_suffix(".json").name: figures})


def _point_results(run: Path, ds, splits: tuple[str, ...], model: str, point: str) -> list[dict]:
    """One grid point's results on ``splits``, each inference mode's, labelled by its model and tagged by point."""
    from bgmrec.demo import evaluate_run

    results = evaluate_run(run, ds, splits=splits, label=model, keep_ranks=True)
    for r in results:
        r["point"] = point
    return results


def _chosen_section(results: list[dict], base: str, chosen: dict[str, str], val: dict[str, dict[str, float]],
                    split: str) -> list[str]:
    """The table of each model's best point on val, ranked on ``split``, paired with the baseline's (``base``, its
    label) best point."""
    picked = [r for r in results if r["split"] == split and r["point"] == chosen[r["label"]]]
    changes = dict(paired_against(picked, base, split))
    rows = [["model", "val's choice", "val R@10", f"{split} R@10", f"vs {base}"]]
    for r in picked:
        name = label(r)
        rows.append([name, chosen[r["label"]], f"{val[r['label']][chosen[r['label']]]:.4f}",
                     f"{r['full']['recall@10']:.4f}", change_cell(changes[name]) if name in changes else ""])
    return [f"## `{split}`: each model at its best point on val", "", markdown_from_rows(rows), ""]


def _per_point_section(results: list[dict], base: str, points: list[str], split: str) -> list[str]:
    """Every grid point's Recall@10 on ``split`` for every model (and mode), its change over the baseline (``base``,
    its label) at the same point, and the changes' mean, median and range over the points."""
    columns = list(dict.fromkeys(label(r) for r in results if r["split"] == split and label(r) != base))
    rows = [["point", base, *columns]]
    gains: dict[str, list[float]] = {c: [] for c in columns}
    for point in points:
        here = [r for r in results if r["split"] == split and r["point"] == point]
        if not any(label(r) == base for r in here):  # the baseline diverged at this point: nothing to pair
            continue
        changes = {name: c.relative_change for name, c in paired_against(here, base, split)}
        recall = {label(r): r["full"]["recall@10"] for r in here}
        cells = []
        for c in columns:
            if c in changes:
                gains[c].append(changes[c])
                cells.append(f"{recall[c]:.4f} ({changes[c]:+.1%})")
            else:
                cells.append("")
        rows.append([point, f"{recall[base]:.4f}", *cells])
    summary = [["model", "points", "mean change", "median", "lowest", "highest", "points above the baseline"]]
    for c, g in gains.items():
        if g:
            summary.append([c, str(len(g)), f"{np.mean(g):+.1%}", f"{np.median(g):+.1%}", f"{min(g):+.1%}",
                            f"{max(g):+.1%}", str(sum(x > 0 for x in g))])
    return [f"## `{split}`: every grid point, the same settings for every model", "",
            f"Recall@10 at each point, and in brackets the change over {base} at the same point (paired on the same "
            "queries). A point where a model diverged is left blank.", "", markdown_from_rows(rows), "",
            markdown_from_rows(summary), ""]


def _grid_text(grid: dict[str, list[str]]) -> str:
    """``lr in {0.001, 0.002}; dropout in {0.1}``."""
    return "; ".join(f"{k} in {{{', '.join(v)}}}" for k, v in grid.items())


def _sets_text(sets: dict | None, seed: int | None) -> str:
    """The fields every point shares, or that none is fixed."""
    fixed = [f"{k}={v}" for k, v in (sets or {}).items()] + ([f"seed={seed}"] if seed is not None else [])
    return ", ".join(fixed) if fixed else "every other field at its default"
