"""Core commands: simulate, models, train, evaluate, demo."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from bgmrec import runs
from bgmrec.cli.app import (
    app,
    flag,
    make_console,
    options_named,
    recorded_warnings,
    said_when_stopped,
    threads_option,
    use_threads,
)
from bgmrec.eval.metrics import expected_metrics
from bgmrec.extras import ExtraError, MissingExtraError, missing_extra

console = make_console()


def report_error(e: Exception) -> int:
    """Known errors (bad data, bad arguments, a module of an extra not installed) become one line on stderr and
    exit code 2."""
    from bgmrec.data.dataset import DatasetError

    extra = missing_extra(e)
    if extra is not None:
        reason = e.reason if isinstance(e, MissingExtraError) else e
        print(f"error: this command needs the {extra} extra (pip install 'bgmrec[{extra}]'): {reason}", file=sys.stderr)
        return 2
    if isinstance(e, ExtraError):  # installed, but another version's or broken: its message says what to do
        print(f"error: {e}", file=sys.stderr)
        return 2
    if isinstance(e, OSError) and e.filename is not None:  # a path the system refused: named, without a traceback
        message = f"{e.filename}: {e.strerror or e}" + (f" ({e.filename2})" if e.filename2 is not None else "")
    elif isinstance(e, DatasetError | ValueError | FileNotFoundError | KeyError):
        message = raised_in_model(e) + str(e)
    else:
        raise e
    print("error: " + " ".join(message.split()), file=sys.stderr)  # one line, printed as is (no markup, no wrapping)
    return 2


def raised_in_model(e: BaseException) -> str:
    """``model 'NAME' (file:line): `` when ``e`` was raised in, or through, the code of a model of another package
    (or one registered in this process): its innermost frame there, the model the method's ``self`` is (of a
    module that holds several, each of them when the frame has none); else "". The one-line message had left a
    plugin's error unattributed, as if bgmrec had said it."""
    import traceback

    from bgmrec.models.base import Recommender
    from bgmrec.models.registry import plugin_modules

    modules = plugin_modules()
    where = ""
    for frame, line in traceback.walk_tb(e.__traceback__):
        names = modules.get(frame.f_globals.get("__name__", ""))
        if names:
            own = frame.f_locals.get("self")
            named = [own.name] if isinstance(own, Recommender) and own.name in names else names
            where = f"model {' or '.join(map(repr, named))} ({frame.f_code.co_filename}:{line}): "
    return where


def parse_sets(items: list[str] | None, option: str = "--set") -> dict[str, str]:
    """``--set key=value`` pairs (of ``option``) -> dict (values converted later to the config's field types)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"{option} expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


@app.command()
def simulate(
    out_dir: Path = typer.Argument(..., help="folder to write the world to (replaced atomically)"),
    scale: str = typer.Option("small", help="preset: tiny | small | tt150k"),
    seed: int | None = typer.Option(None, help="same seed, same world (byte-identical arrays); default 0; same as "
                                    "--set seed=N"),
    gamma: float | None = typer.Option(None, help="confounding strength (weight of the log of the uploader's "
                                       "genre preference); 0 removes it; same as --set gamma=X"),
    delta: float | None = typer.Option(None, help="popularity bias (weight of log pop); 0 removes it; same as "
                                       "--set delta=X"),
    set_: list[str] | None = typer.Option(None, "--set", metavar="KEY=VALUE",
                                          help="any other world parameter, key=value"),
) -> None:
    """Simulate a world (the built-in dataset) with its ground truth in OUT_DIR/truth."""
    from bgmrec.data.dataset import writing_lock
    from bgmrec.data.simulate import simulate_and_save, world_config
    from bgmrec.features.cache import progress_steps
    from bgmrec.models.base import with_overrides

    overrides = parse_sets(set_)
    for name, value in (("seed", seed), ("gamma", gamma), ("delta", delta)):
        runs.option_into_sets(overrides, name, value)
    cfg = with_overrides(world_config(scale), overrides)
    t0 = time.perf_counter()
    with writing_lock(out_dir, ""), progress_steps(f"simulating the {scale} world") as step:  # on stderr
        ds, _ = simulate_and_save(cfg, out_dir, step)  # stdout: the line below alone
    console.print(f"wrote {out_dir}: {ds.n_videos} videos, {ds.n_tracks} tracks, {ds.n_uploaders} uploaders; "
                  + ", ".join(f"{s} {len(r)}" for s, r in ds.splits.items())
                  + f" ({time.perf_counter() - t0:.1f} s)")


@app.command()
def describe(
    data: Path = typer.Argument(..., help="dataset folder"),
    json_out: Path | None = typer.Option(None, "--json", help="write the description to this file (- for stdout)"),
) -> None:
    """What a dataset holds (counts, features, genres, splits, origin) and its fingerprints, which runs and
    figures record: the same three mean the same data."""
    from rich.table import Table

    from bgmrec.data.dataset import load_dataset

    json_out = check_result_file(json_out, "describe")
    with result_on_stdout(json_out):
        summary = load_dataset(data).summary()
        record = runs.dataset_record(data)
        console.print(f"{data}: {summary['videos']:,} videos ({summary['professional_videos']:,} professional, "
                      f"{summary['captioned_videos']:,} with a caption), {summary['tracks']:,} tracks "
                      f"({summary['new_tracks']:,} new), {summary['uploaders']:,} uploaders; features "
                      + ", ".join(f"{k} {v}" for k, v in summary["features"].items())
                      + f"; made by {summary['made_by']}", markup=False, highlight=False)
        splits = Table(title="splits", caption="IPW weights: counted, 1 / (1 + the training count of the row's "
                       "track), or stored in the dataset; untrained positives: rows whose track no training row has "
                       "(new music to a model, whatever the split's candidates)")
        for h in ("split", "role", "rows", "candidates", "negatives", "IPW weights", "known uploaders",
                  "untrained positives"):
            splits.add_column(h, justify="left" if h in ("split", "role") else "right")
        for name, s in summary["splits"].items():
            weights = "-" if not s["negatives"] else "stored" if s["weights"] else "counted"  # only sampled figures
            splits.add_row(name, s["role"], f"{s['rows']:,}", f"{s['candidate_tracks']:,} ({s['candidates']})",
                           str(s["negatives"] or "-"), weights, f"{s['known_uploaders']:,}",
                           f"{s['untrained_positives']:,}")
        genres = Table(title="genres")
        for h in ("genre", "tracks", "share of training positives"):
            genres.add_column(h, justify="left" if h == "genre" else "right")
        for name, g in summary["genres"].items():
            genres.add_row(name, f"{g['tracks']:,}", f"{g['train_share']:.1%}")
        console.print(splits, genres)
        for key in runs.FINGERPRINTS:
            console.print(f"{key}: {record[key]}", markup=False, highlight=False)
    write_result(json_out, {"describe": summary, **record})


@app.command()
def report(
    results: list[Path] = typer.Argument(..., help="result files of bgmrec evaluate --json"),
    out: Path | None = typer.Option(None, help="write the Markdown here (default: print it)"),
    baseline: str | None = typer.Option(None, help="a row's label (as the tables show it): under each split's "
                                        "table, every other row's paired change over it (needs the results' "
                                        "evaluate --ranks files)"),
    metric: str = typer.Option("recall@10", help=f"the metric the paired table compares: {expected_metrics()} "
                                                 "(full-catalogue), or one of them after sampled_ (the 1+K protocol)"),
    resamples: int = typer.Option(10_000, help="bootstrap resamples and randomisation permutations"),
    level: float = typer.Option(0.95, help="the interval's confidence level"),
) -> None:
    """A table for a paper from evaluate --json results of one dataset, with what a reviewer checks them
    against: the dataset's fingerprints, each row's run or score file, commit and warnings; with --baseline,
    each row's change over it with a paired interval and p-value."""
    from bgmrec.data.dataset import parse_json_file, write_text_atomic
    from bgmrec.eval.report import report_metric, results_report
    from bgmrec.eval.significance import check_settings

    if baseline is not None:
        with options_named(metric="--metric"):
            report_metric(metric)
        check_settings(resamples, level)
    else:
        given = [f"--{name}" for name, value, default in (("metric", metric, "recall@10"), ("resamples", resamples,
                 10_000), ("level", level, 0.95)) if value != default]
        if given:
            raise ValueError(f"{', '.join(given)}: read by the paired table alone; give --baseline LABEL too")
    text = results_report([(str(p), parse_json_file(p, str(p))) for p in results], baseline, metric, resamples,
                          level)
    if out is None:
        print(text, end="")
    else:
        earlier = out.is_file() and (out.stat().st_size == 0 or out.read_text(
            encoding="utf-8", errors="replace").startswith("### `"))  # empty, or a report this command wrote
        if out.exists() and not earlier:
            raise ValueError(f"--out {out}: exists and is not a report of bgmrec report; refusing to replace it "
                             "(choose another path, or remove the file)")
        write_text_atomic(out, text)
        console.print(f"wrote {out}")


@app.command("models")
def list_models(
    name: str | None = typer.Argument(None, help="a model name: list its config fields (what --set takes)"),
) -> None:
    """List the model names accepted by --model (built-in, ablations, and models of installed packages); with a
    NAME, that model's config fields, their defaults and what each does."""
    import inspect

    from rich.table import Table
    from rich.text import Text

    from bgmrec.models.registry import VARIANTS, config_fields, model_class, model_names

    if name is not None:
        t = Table("field", "type", "default", "what it does", title=f"{name}: --set KEY=VALUE")
        for f in config_fields(name):
            default = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else str(f.default).lower() \
                if isinstance(f.default, bool) else str(f.default)
            t.add_row(*map(Text, (f.name, f.type, default,  # as plain text: tuple[int, ...] is no markup
                                  f.comment + (f" (fixed: {name} is this setting)" if f.fixed else ""))))
        console.print(t)
        return
    t = Table("name", "what it is")
    for name in model_names():
        if name in VARIANTS:
            base, ov = VARIANTS[name]
            t.add_row(name, f"ablation of {base}: " + ", ".join(f"{k}={v}" for k, v in ov.items()))
            continue
        try:  # the class's own docstring (not one inherited from the base contract), as plain text
            doc = Text(inspect.cleandoc(model_class(name).__dict__.get("__doc__") or "").partition("\n")[0])
        except ValueError as e:  # a broken plugin is listed with why, not a crash of the whole listing
            doc = Text.assemble(("cannot be used: ", "red"), str(e))
        t.add_row(name, doc)
    console.print(t)
    console.print("bgmrec models NAME lists a model's config fields (--set KEY=VALUE)")


@app.command()
def train(
    data: Path = typer.Option(..., help="dataset folder"),
    model: str = typer.Option(..., help="model name (see `bgmrec models`)"),
    out: Path = typer.Option(..., help="run folder to write (config.json, weights.safetensors, run.json; "
                             "history.json of a model trained in epochs)"),
    epochs: int | None = typer.Option(None, min=1, help="maximum epochs (trainable models; the others ignore it, "
                                      "with a warning); same as --set epochs=N"),
    seed: int | None = typer.Option(None, min=0, help="seed for initialisation and batching (default 0); same as "
                                    "--set seed=N"),
    set_: list[str] | None = typer.Option(None, "--set", metavar="KEY=VALUE",
                                          help="config field override, key=value (repeatable)"),
    teacher: Path | None = typer.Option(None, help="DecCM: reuse this teacher run instead of training one"),
    progress: bool = flag(True, help="show each epoch on stderr (a bar on a terminal, else a line each)"),
    threads: int | None = threads_option(),
) -> None:
    """Train a model on the dataset's train split (early stopping on val) and save it. Stopped (Ctrl-C, SIGTERM,
    SIGHUP) after a validated epoch, the best epoch so far is saved as a run at OUT.partial."""
    use_threads(threads)
    from bgmrec.models.base import read_run_record

    sets = parse_sets(set_)
    epochs = runs.epochs_if_trained_in_epochs(model, epochs, sets)
    before = read_run_record(out) if (out / "config.json").is_file() else None
    with said_when_stopped():  # what the stop kept: the best epoch so far, at OUT.partial
        rec, seconds = runs.train_model(data, model, out, epochs, seed, sets, teacher, progress,
                                        partial=runs.partial_run_folder(out))
    if before is not None:  # a weekly retrain into one folder lost last week's run, the rollback, without a word
        print(f"note: replaced the run that was at {out} ({before.get('model', 'a model')} trained on "
              f"{before.get('data', 'an unrecorded dataset')}, data fingerprint "
              f"{before.get('data_fingerprint', 'unrecorded')}); to keep runs to roll back to, train each into a "
              "folder of its own", file=sys.stderr)
    runs.warn_if_seed_unused(model, seed, sets)
    partial = runs.partial_run_folder(out)
    if "stopped_at_epoch" in read_run_record(partial):  # finished now: the stopped one is kept until removed
        print(f"note: {partial}, the best epoch of an earlier stopped training of {out}, is left as it was; remove it "
              "when it is no longer needed", file=sys.stderr)
    best = max((h["val_recall@10"] for h in rec.history if "val_recall@10" in h), default=None)  # none: no val
    epochs_run = len(rec.history)
    console.print(f"saved {model} to {out} ({seconds:.1f} s, {epochs_run} epoch{'s' if epochs_run != 1 else ''}"
                  + (f", best val Recall@10 {best:.3f})" if best is not None else ")"))


@app.command()
def tune(
    data: Path = typer.Option(..., help="dataset folder (its val split chooses; loaded whole, but no test split "
                              "is scored)"),
    model: str = typer.Option(..., help="model name (see `bgmrec models`)"),
    out: Path = typer.Option(..., help="folder for one run per grid point, tuning.json and tuning.md"),
    grid: list[str] = typer.Option(..., metavar="KEY=VALUE",
                                   help="key=value to try; repeat a key for each of its values"),
    set_: list[str] | None = typer.Option(None, "--set", metavar="KEY=VALUE",
                                          help="config field fixed for every point, key=value"),
    seed: int | None = typer.Option(None, min=0, help="seed of every point, same as --set seed=N (default 0: --seed 0 "
                                    "resumes a grid started without one)"),
    teacher: Path | None = typer.Option(None, help="DecCM: one teacher run for every point (else one is trained "
                                        "per backbone config and shared)"),
    resume: bool = flag(False, help="finish a stopped grid in --out (same arguments): its finished points "
                                "are loaded, not retrained"),
    progress: bool = flag(True, help="show each point's epochs, and its shared teacher's, on stderr (a bar on a "
                               "terminal, else a line each)"),
    threads: int | None = threads_option(),
) -> None:
    """Grid search on val: train every combination of --grid values, rank each on val, compare with the first."""
    use_threads(threads)
    from rich.table import Table

    from bgmrec.tune import parse_grid, run_grid, tuning_rows

    with said_when_stopped():  # how many points are done, and the command that finishes the grid
        trials = run_grid(data, model, parse_grid(grid), out, parse_sets(set_), seed, teacher, console, resume,
                          progress=progress)
    head, *rows = tuning_rows(trials)
    t = Table(title=f"{model} on val, best first (written to {out / 'tuning.md'})")
    for i, h in enumerate(head):
        t.add_column(h, justify="right" if i >= head.index("val R@10") else "left")  # settings and mode: text
    for row in rows:
        t.add_row(*row)
    console.print(t)
    console.print(f"best: {trials[0].run}")


@app.command()
def evaluate(
    run: Path = typer.Option(..., help="run folder written by `bgmrec train`, or a score file (.npz, .npy) of a "
                                       "model computed elsewhere (README: a model of another codebase)"),
    data: Path = typer.Option(..., help="dataset folder"),
    split: str = typer.Option("test", help="split to evaluate (test, test_new_music, test_unbiased, ...)"),
    json_out: Path | None = typer.Option(None, "--json", help="write the full result object to this file (- for "
                                                              "stdout)"),
    mode: str | None = typer.Option(None, help="inference mode for models that have several (DecCM)"),
    ranks_out: Path | None = typer.Option(None, "--ranks", help="write each query's ranks to this CSV (video, track, "
                                                                "uploader, full_rank, sampled_rank), in the split's "
                                                                "order: for paired tests of your own"),
    threads: int | None = threads_option(),
) -> None:
    """Evaluate a trained model: full-catalogue ranking, sampled 1+K, IPW and bias figures."""
    use_threads(threads)
    import hashlib

    from bgmrec.data.dataset import load_dataset, write_text_atomic
    from bgmrec.eval.protocol import RANK_KEYS, EvaluationWarning
    from bgmrec.eval.protocol import evaluate as run_eval
    from bgmrec.eval.report import rich_tables

    json_out = check_result_file(json_out, "evaluate")
    with result_on_stdout(json_out):
        ranks_out = check_ranks_file(ranks_out)
        if ranks_out is not None and json_out is not None and ranks_out.resolve() == json_out.resolve():
            raise ValueError(f"--ranks {ranks_out} and --json name the same file; give each its own")
        ds = load_dataset(data)
        rec = load_scorer(run, ds, mode)
        with recorded_warnings(EvaluationWarning) as evaluated:  # for the JSON too (a trivial Recall@K, ...)
            result = run_eval(rec, ds, split, keep_ranks=ranks_out is not None, label=runs.run_label(run, rec))
        ranks = tuple(result.pop(key) for key in RANK_KEYS) if ranks_out is not None else None
        said = evaluated + run_warnings({run: rec})  # once the figures exist: an error says nothing more
        said += [m for m in (note_if_not_held_out(ds, split),) if m]
        for t in rich_tables([result]):
            console.print(t)
        if ranks is not None:  # its note on stderr with --json -: stdout is the JSON alone
            text = ranks_csv(ds, split, *ranks)
            write_text_atomic(ranks_out, text)
            console.print(f"wrote {ranks_out}", markup=False, highlight=False)
            # recorded for `report --baseline`, which pairs the queries by it
            result["ranks_file"] = {"path": str(ranks_out.resolve()),
                                    "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
    write_result(json_out, {**result, "warnings": said, "provenance": runs.provenance(data, {"run": run})})


def ranks_csv(ds, split: str, full, sampled) -> str:
    """``evaluate --ranks``'s CSV: a line per query of ``split``, in its order (the ids of videos.csv and
    tracks.csv, the uploader's row of uploaders.npy or -1), its full-catalogue rank and its sampled rank
    (empty for a split without frozen negatives)."""
    import numpy as np

    from bgmrec.eval.report import RANKS_HEADER

    rows = np.asarray(ds.splits[split])
    sampled = [""] * len(rows) if sampled is None else sampled.tolist()
    lines = [RANKS_HEADER, *(f"{_csv_field(ds.video_ids[v])},{_csv_field(ds.track_ids[t])},{u},{f},{s}"
                             for (v, t, u), f, s in zip(rows.tolist(), full.tolist(), sampled, strict=True))]
    return "\n".join(lines) + "\n"


def _csv_field(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n\r') else text


def check_ranks_file(path: Path | None) -> Path | None:
    """The file an ``evaluate --ranks`` path writes to (:func:`check_output_file`): an earlier ``--ranks`` CSV may be
    replaced, and ``-`` is refused (stdout is the result's JSON, with ``--json -``)."""
    if path == STDOUT:
        raise ValueError("--ranks -: give the path of a CSV file to write the ranks to (--json - prints the result "
                         "on stdout)")
    from bgmrec.eval.report import RANKS_HEADER

    def earlier_ranks(file: Path) -> bool:
        with open(file, "rb") as f:
            return f.readline(len(RANKS_HEADER) + 2).decode("utf-8", "replace").strip() == RANKS_HEADER

    return check_output_file(path, "--ranks", "the ranks", "a ranks file of bgmrec evaluate", earlier_ranks,
                             "CSV file")


def load_scorer(run: Path, ds, mode: str | None):
    """What ``evaluate`` and ``compare`` rank by: the model of the run folder ``run`` (in inference ``mode`` when
    given), or the scores of a model computed elsewhere when ``run`` is a score file
    (:func:`~bgmrec.eval.scores.load_scores`, checked against ``ds``)."""
    from bgmrec.eval.scores import is_score_file, load_scores
    from bgmrec.models.base import load_model

    if is_score_file(run):
        if mode is not None:
            raise ValueError(f"{run}: a score file has one way of scoring, so no inference mode (--mode "
                             f"{mode}) applies")
        return load_scores(run, ds)
    rec = load_model(run)
    if mode is not None:
        rec.set_inference_mode(mode)
    return rec


def run_warnings(loaded: dict[Path, object]) -> list[str]:
    """The warnings of ``evaluate`` and ``compare`` on each run folder's loaded model (a run given twice: once)
    besides the library's (a run trained on other data than the dataset's is an
    :class:`~bgmrec.eval.protocol.EvaluationWarning` of the evaluation itself): its model's code changed, or its
    training stopped (a ``train`` stopped keeps its best epoch at ``OUT.partial``). Printed on stderr, and returned
    for the result's JSON (``warnings``), where a reader of the figures alone sees them too."""
    from bgmrec.eval.scores import is_score_file

    said = [[runs.warn_if_model_code_changed(folder, rec), runs.note_if_stopped(folder)]
            if not is_score_file(folder) else rec.notes  # a score file's: said when it was read
            for folder, rec in loaded.items()]
    return [m for pair in said for m in pair if m is not None]


def note_if_not_held_out(ds, split: str) -> str | None:
    """A note on stderr when ``split`` is one models are fitted on (role train or teacher), as ``evaluate`` and
    ``compare`` print it: its figures measure the fit, not how a model generalises; or the validation split
    (role val), on which training early-stops and ``tune`` picks its settings, so its figures are optimistic.
    Returns it (for the JSON's ``warnings``), None when silent."""
    role = ds.split_info[split].role
    if role == "val":
        note = (f"{split} is the validation split, by which models trained in epochs early-stop and tune chooses "
                "settings: their figures on it are optimistic; report a test split's")
    elif role == "train":
        note = f"{split} is a training split (role {role}): its figures measure the fit, not how the model generalises"
    elif role == "teacher":  # only a teacher-guided model's teacher trains on it (CMVAE never sees it)
        note = (f"{split} is the teachers' training split (role {role}): a teacher-guided model's (DecCM's) figures "
                "on it measure its teacher's fit; a model without a teacher never saw it")
    else:
        return None
    print(f"note: {note}", file=sys.stderr)
    return note


@app.command()
def compare(
    baseline: Path = typer.Option(..., help="run folder of the model compared against (e.g. CMVAE's), or a score "
                                            "file (.npz, .npy) of a model computed elsewhere"),
    run: Path = typer.Option(..., help="run folder of the model compared with it (e.g. DecCM's), or a score file"),
    data: Path = typer.Option(..., help="dataset folder"),
    split: str = typer.Option("test", help="split whose queries both models rank"),
    mode: str | None = typer.Option(None, help="inference mode of --run, for models that have several (DecCM)"),
    baseline_mode: str | None = typer.Option(None, help="inference mode of --baseline"),
    metric: str = typer.Option("recall@10", help=f"per-query metric: {expected_metrics()} (full-catalogue), or "
                                                 "one of them after sampled_ or ipw_ (the sampled 1+K protocol)"),
    resamples: int = typer.Option(10_000, help="bootstrap resamples (and at most as many sign vectors)"),
    level: float = typer.Option(0.95, help="confidence level of the intervals"),
    json_out: Path | None = typer.Option(None, "--json", help="write the comparison to this file (- for stdout)"),
    threads: int | None = threads_option(),
) -> None:
    """Is --run better than --baseline on the same queries? Paired bootstrap interval and randomisation test."""
    use_threads(threads)
    from rich.markup import escape
    from rich.table import Table

    from bgmrec.data.dataset import load_dataset
    from bgmrec.eval.protocol import COMPARED_PROTOCOLS, EvaluationWarning, compared_protocol
    from bgmrec.eval.protocol import compare as paired
    from bgmrec.eval.report import change_cell, label
    from bgmrec.eval.significance import check_settings

    protocol, rank_metric = compared_protocol(metric)
    with options_named(resamples="--resamples", level="--level"):
        check_settings(resamples, level)
    json_out = check_result_file(json_out, "compare")
    with result_on_stdout(json_out):
        ds = load_dataset(data)
        models = [load_scorer(folder, ds, m) for folder, m in ((baseline, baseline_mode), (run, mode))]
        with recorded_warnings(EvaluationWarning) as evaluated:  # for the JSON too (a trivial Recall@K, ...)
            c = paired(*models, ds, split, metric, resamples, level)
        said = evaluated + run_warnings(dict(zip((baseline, run), models, strict=True)))
        said += [m for m in (note_if_not_held_out(ds, split),) if m]
        names = [label({"model": runs.run_label(folder, rec), "inference_mode": rec.inference_mode})
                 for folder, rec in zip((baseline, run), models, strict=True)]
        described = f"{COMPARED_PROTOCOLS[protocol]} {rank_metric}"
        t = Table(title=f"{split}: {c.n_queries} queries, {described}, {level:.0%} intervals")
        for h in ("baseline", "run", "baseline value", "run value", "difference", "change"):
            t.add_column(h, justify="left" if h in ("baseline", "run") else "right")
        lo, hi = c.difference_ci
        shown = names if names[0] != names[1] or baseline == run else [  # two runs of one model: which is which
            f"{name} ({folder})" for name, folder in zip(names, (baseline, run), strict=True)]
        t.add_row(*(escape(x) for x in shown), f"{c.baseline:.4f}", f"{c.candidate:.4f}",
                  f"{c.difference:+.4f} [{lo:+.4f}, {hi:+.4f}]", change_cell(c))
        console.print(t)
    write_result(json_out, {"split": split, "baseline_run": str(baseline.resolve()),
                            "candidate_run": str(run.resolve()), "baseline_model": names[0],
                            "candidate_model": names[1], **c.to_json(), "warnings": said,
                            "provenance": runs.provenance(data, {"baseline": baseline, "candidate": run})})


@app.command()
def demo(
    scale: str = typer.Option("small", help="world preset: tiny | small | tt150k"),
    out: Path = typer.Option(Path("runs/demo"), help="folder for data, runs, report.md and plots"),
    seed: int = typer.Option(0, help="world and training seed"),
    models: str | None = typer.Option(None, help="comma-separated model names (default: all)"),
    threads: int | None = threads_option(),
) -> None:
    """Simulate a world, train every model, evaluate them, print the table, write report.md and plots."""
    use_threads(threads)
    from bgmrec.demo import run_demo

    run_demo(scale, out, seed, models.split(",") if models else None, console)



bench_app = typer.Typer(help="Benchmarks (long runs; not part of the test suite).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("quality")
def bench_quality(
    out: Path | None = typer.Option(None, help="Markdown report to write, plots and JSON beside it (default: "
                                    "WORK/benchmarks.md, with --world WORK/benchmarks+KEY=VALUE....md; the "
                                    "committed reports are docs/benchmarks.md and docs/benchmarks_tt150k.md)"),
    scales: str = typer.Option("small", help="comma-separated world presets (tiny, small, tt150k), e.g. small,tt150k"),
    seeds: str = typer.Option("0,1,2", help="comma-separated seeds (one world per seed)"),
    models: str | None = typer.Option(None, help="comma-separated models (default: every demo model)"),
    work: Path = typer.Option(Path("runs/bench"), help="folder for worlds and runs"),
    resume: bool = flag(False, help="reuse runs in WORK trained by the same code (a hash of bgmrec's "
                                            "sources) instead of retraining"),
    world: list[str] | None = typer.Option(None, "--world", metavar="KEY=VALUE",
                                           help="a world parameter changed from the presets, "
                                           "key=value as for simulate --set (repeatable; not seed)"),
    threads: int | None = threads_option(),
) -> None:
    """Every model on every split of simulated worlds, mean and spread over seeds -> a Markdown report."""
    use_threads(threads)
    from bgmrec.bench import command_line, run_quality, world_label

    command = command_line(runs.command_argv(), "bgmrec bench quality")
    changed = parse_sets(world, "--world")
    with said_when_stopped():  # how many runs are done, and the command that continues
        run_quality(scales.split(","), numbers(seeds, "--seeds", int),
                    out or Path(work) / f"benchmarks{world_label('', changed)}.md", work,
                    models.split(",") if models else None, console, command, resume, changed)


@bench_app.command("speed")
def bench_speed(
    data: Path | None = typer.Option(None, help="a dataset of your own to time (default: simulate the tt150k world "
                                     "into WORK and time that, its simulation too)"),
    split: str = typer.Option("test", help="the split whose queries are ranked"),
    epochs: int = typer.Option(2, min=1, help="training epochs per model (the median epoch's seconds is reported)"),
    work: Path = typer.Option(Path("runs/bench"), help="folder for the tt150k world (unused with --data)"),
    json_out: Path | None = typer.Option(None, "--json", help="write the figures to this file (- for stdout)"),
    threads: int | None = threads_option(),
) -> None:
    """Seconds per training epoch (CMVAE, DecCM without teacher) and of full-catalogue ranking (those and
    popularity), peak memory; of the simulated tt150k world (and its simulation), or of --data."""
    use_threads(threads)
    from bgmrec.bench import run_speed

    json_out = check_result_file(json_out, "bench speed")
    with result_on_stdout(json_out):
        figures = run_speed(work, console, data, split, epochs)
        figures["machine"] = runs.machine()
        figures["commit"] = runs.git_commit()
    write_result(json_out, figures)


@bench_app.command("ceiling")
def bench_ceiling(
    out: Path | None = typer.Option(None, help="Markdown report to write (default: WORK/track_term_ceiling.md, "
                                    "with --no-fit WORK/intervened_SCALE.md; the committed ones are in docs/)"),
    scale: str = typer.Option("small", help="world preset of the quality benchmark's runs: tiny | small | tt150k"),
    seeds: str = typer.Option("0,1,2", help="comma-separated seeds whose runs to read"),
    work: Path = typer.Option(Path("runs/bench"), help="the quality benchmark's folder for worlds and runs"),
    redraws: int = typer.Option(3, min=1, help="draws of the intervened world per seed (a training for each)"),
    models: str | None = typer.Option(None, help="comma-separated quality-benchmark runs to read (default: "
                                      "twotower-infonce, cmvae, cmvae-noprior, deccm, deccm-noadjust, "
                                      "deccm-noteacher)"),
    intervened: str = typer.Option("cmvae", help="comma-separated models to train on the intervened world "
                                   "('' for none); each is also reported mixed with the teacher of the first "
                                   "run that mixes one into its content mode (deccm)"),
    fit: bool = flag(True, help="fit the per-track terms (minutes per model at tt150k); --no-fit "
                             "reports the intervened world's table alone"),
    threads: int | None = threads_option(),
) -> None:
    """Each quality-benchmark model as it ranks and with a per-track term fitted to the world's truth,
    against the --intervened models trained on the intervened world (choices redrawn by content alone)."""
    use_threads(threads)
    from bgmrec.bench import CEILING_MODELS, command_line, run_track_term_ceiling

    command = command_line(runs.command_argv(), "bgmrec bench ceiling")
    if out is None:
        out = Path(work) / ("track_term_ceiling.md" if fit else f"intervened_{scale}.md")
    run_track_term_ceiling(scale, numbers(seeds, "--seeds", int), work, out, console, command,
                           models=CEILING_MODELS if models is None else comma_list(models),
                           intervened=comma_list(intervened), redraws=redraws, fit_track_terms=fit)


def comma_list(text: str) -> tuple[str, ...]:
    """``"a, b,"`` -> ``("a", "b")``: a comma-separated option's names, stripped, empty ones left out."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def numbers(text: str, option: str, kind: type[int] | type[float]) -> list:
    """A comma-separated ``option``'s numbers (``"0, 1,2"`` -> ``[0, 1, 2]``), refused in words naming it: ``--seeds
    0,x`` said "invalid literal for int() with base 10"."""
    try:
        values = [kind(item) for item in comma_list(text)]
    except ValueError:
        raise ValueError(f"{option} {text}: expected comma-separated {'integers' if kind is int else 'numbers'}, "
                         "e.g. 0,1,2") from None
    if not values:
        raise ValueError(f"{option}: give at least one value, e.g. 0,1,2")
    twice = next((v for i, v in enumerate(values) if v in values[:i]), None)
    if twice is not None:  # --gammas 1,1.0 ran gamma 1 twice, each table row doubled
        raise ValueError(f"{option} {text}: {twice:g} is given twice")
    return values


@bench_app.command("gamma")
def bench_gamma(
    out: Path | None = typer.Option(None, help="Markdown report, plot beside it (default: WORK/gamma_sweep.md; the "
                                    "committed one is docs/gamma_sweep.md)"),
    gammas: str = typer.Option("0,1,2", help="comma-separated confounding strengths"),
    scale: str = typer.Option("small", help="world preset: tiny | small | tt150k"),
    seed: int = typer.Option(0, help="world and training seed"),
    work: Path = typer.Option(Path("runs/bench"), help="folder for worlds and runs"),
    threads: int | None = threads_option(),
) -> None:
    """DecCM's gain over CMVAE on test_unbiased as the confounding strength gamma grows."""
    use_threads(threads)
    from bgmrec.bench import command_line, run_gamma_sweep

    run_gamma_sweep(numbers(gammas, "--gammas", float), scale, seed, work, out or Path(work) / "gamma_sweep.md",
                    console,
                    command_line(runs.command_argv(), "bgmrec bench gamma"))


@bench_app.command("tuned")
def bench_tuned(
    data: Path = typer.Option(..., help="dataset folder: val chooses each model's settings, the --splits compare"),
    models: str = typer.Option("cmvae,deccm", help="comma-separated models, the first the baseline"),
    grid: list[str] = typer.Option(..., metavar="KEY=VALUE",
                                   help="key=value to try, the same for every model; repeat a key for each value"),
    set_: list[str] | None = typer.Option(None, "--set", metavar="KEY=VALUE",
                                          help="config field fixed for every point of every model, key=value; "
                                          "model.key=value for one model's (deccm.inference=content)"),
    seed: int | None = typer.Option(None, min=0, help="seed of every point (default 0)"),
    splits: str = typer.Option("test_unbiased,test", help="comma-separated test splits to compare on"),
    work: Path = typer.Option(Path("runs/bench-tuned"), help="folder for each model's grid (WORK/MODEL)"),
    out: Path | None = typer.Option(None, help="Markdown report, its JSON beside it (default: WORK/tuned.md)"),
    resume: bool = flag(False, help="finish stopped grids in WORK and reuse their finished points"),
    threads: int | None = threads_option(),
) -> None:
    """Models tuned alike on val (one grid, `bgmrec tune` each), compared on the test splits at val's choice and
    at every grid point."""
    use_threads(threads)
    from bgmrec.bench import command_line
    from bgmrec.bench_tuned import run_tuned
    from bgmrec.tune import parse_grid

    with said_when_stopped():  # the stop's note: the command that continues the benchmark
        run_tuned(data, list(comma_list(models)), parse_grid(grid), work, out or Path(work) / "tuned.md", console,
                  command_line(runs.command_argv(), "bgmrec bench tuned"), parse_sets(set_), seed,
                  comma_list(splits), resume, progress=True)


#: keys by which a command knows its own ``--json`` result, which it may replace (and nothing else): each tuple
#: is one way of writing it (compare named the candidate ``run`` before it was ``candidate_run``; bench speed's keys
#: named the tt150k world before it timed any dataset)
RESULT_KEYS = {"evaluate": [("model", "split", "full")],
               "compare": [("baseline_run", "candidate_run"), ("baseline_run", "run")],
               "bench speed": [("cmvae_seconds_per_epoch",), ("simulate_tt150k_seconds",)],
               "describe": [("describe", "data_fingerprint")]}
RESULT_BYTES = 64 * 2**20  # no result is this large: a larger file is refused unread


STDOUT = Path("-")  # --json -: the result on stdout (for a pipe), the command's tables and notes on stderr


def check_result_file(path: Path | None, command: str) -> Path | None:
    """The file a ``--json`` path of ``command`` writes to (:func:`check_output_file`; :data:`STDOUT` for ``-``):
    an earlier result of the same command may be replaced, not a dataset's manifest.json, a run's config.json
    or a features array (replacing it would break what it belongs to)."""
    if path == STDOUT:
        return path

    def earlier_result(file: Path) -> bool:
        try:
            found = json.loads(file.read_text(encoding="utf-8")) if file.stat().st_size <= RESULT_BYTES else None
        except (OSError, ValueError, RecursionError):
            return False
        return isinstance(found, dict) and any(all(key in found for key in keys) for keys in RESULT_KEYS[command])

    return check_output_file(path, "--json", "the result", f"a result of bgmrec {command} --json", earlier_result)


def check_output_file(path: Path | None, option: str, what: str, earlier: str, is_earlier: Callable[[Path], bool],
                      kind: str = "file") -> Path | None:
    """The file an output ``option`` names writes to (a symbolic link's target: replaced atomically, a link would
    become a file), refused before any work when it is a folder, something other than a regular file (a pipe
    or a device: reading one to check it waited for ever), in a folder that cannot be made or written
    (:func:`check_parent_folders`), or an existing file that is neither empty (as ``mktemp`` makes) nor
    ``earlier``, an output of the same kind (``is_earlier``): replacing another file would lose it."""
    if path is None:
        return None
    if path.is_dir():
        raise ValueError(f"{option} {path}: is a folder; give the path of a {kind} to write {what} to")
    if path.exists() and not path.is_file():
        raise ValueError(f"{option} {path}: is not a regular file (a pipe, a socket or a device); give the path of "
                         "a file" + (", or - for stdout" if option != "--ranks" else ""))
    try:
        path = path.resolve() if path.is_symlink() else path
    except (RuntimeError, OSError):  # a link loop: resolve() raised "Symlink loop from ..."
        raise ValueError(f"{option} {path}: is a symbolic link loop; give the path of a file") from None
    check_parent_folders(path, option)
    if path.is_file() and path.stat().st_size and not is_earlier(path):
        raise ValueError(f"{option} {path}: exists and is not {earlier}; refusing to replace it (choose another "
                         "path, or remove the file)")
    from bgmrec.data.dataset import remove_killed_temporaries

    if path.parent.is_dir() and (removed := remove_killed_temporaries(path)):
        print(f"note: {option} {path}: removed {removed} temporary file(s) that killed writes of it left",
              file=sys.stderr)
    return path


def check_parent_folders(path: Path, option: str) -> None:
    """Refuse, before any work, an output ``path`` of ``option`` whose nearest existing parent is not a folder (a
    file where a folder must be: the write failed with a traceback once the work was done) or cannot be written
    (its error came once the work was done)."""
    parent = Path(path).absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{option} {path}: cannot be made: {parent} is a file, where a folder must be")
    if not os.access(parent, os.W_OK | os.X_OK):  # a read-only file system or folder: said after all the work
        raise ValueError(f"{option} {path}: cannot be written: {parent} is not writable (read-only?)")


@contextmanager
def result_on_stdout(path: Path | None) -> Iterator[None]:
    """With ``--json -`` (:data:`STDOUT`) the command's tables and notes go to stderr while it runs, so that
    stdout holds its JSON result only."""
    if path != STDOUT:
        yield
        return
    console.file = sys.stderr
    try:
        yield
    finally:
        console.file = None  # stdout again, whatever sys.stdout is then


def write_result(path: Path | None, obj) -> None:
    """Write a command's ``--json`` result: to stdout for :data:`STDOUT`, else atomically to the file, saying so."""
    from bgmrec.data.dataset import strict_json, write_json_atomic

    if path == STDOUT:
        sys.stdout.write(json.dumps(strict_json(obj), indent=2, allow_nan=False) + "\n")
        sys.stdout.flush()
    elif path is not None:
        write_json_atomic(path, obj)
        console.print(f"wrote {path}", markup=False, highlight=False)
