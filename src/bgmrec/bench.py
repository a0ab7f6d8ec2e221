"""Benchmarks: the quality report (``docs/benchmarks.md``) and speed figures. Not tests: long runs.

``bgmrec bench quality`` trains and evaluates every model on simulated worlds over several seeds and
writes mean and spread; ``bgmrec bench speed`` measures simulation, training epochs and scoring;
``bgmrec bench gamma`` sweeps the confounding strength; ``bgmrec bench ceiling`` tells, from the
world's truth, how much of each model's error is in its per-track term and how much in its similarity;
both set the models beside CMVAE trained on the intervened world (the confounding removed from its data).
"""

from __future__ import annotations

import glob
import json
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console

from bgmrec.data.dataset import FINGERPRINTS
from bgmrec.demo import (
    BASELINE,
    DEMO_MODELS,
    check_own_folder,
    check_world_folder,
    ensure_world,
    world_parameters,
)
from bgmrec.eval.protocol import EVAL_SPLITS, evaluate_run
from bgmrec.eval.report import markdown_from_rows, pyplot, save_figure

if TYPE_CHECKING:
    from bgmrec.models.base import Recommender
    from bgmrec.models.deccm import TeacherMixture

QUALITY_METRICS = (  # (header, path)
    ("R@10", ("full", "recall@10")),
    ("NDCG@10", ("full", "ndcg@10")),
    ("s-R@10", ("sampled", "recall@10")),
    ("s-R@15", ("sampled", "recall@15")),
    ("s-R@20", ("sampled", "recall@20")),
    ("s-R@25", ("sampled", "recall@25")),
    ("IPW s-R@10", ("ipw", "recall@10")),
    ("TVD@10", ("bias", "exposure_tvd@10")),
)

PAPER_TABLE = """\
The CMVAE paper's own figures on TT-150k (Yi et al., arXiv 2107.07268, sampled protocol: 1 positive +
100 negatives, existing music; Recall@10/15/20/25), **cited for orders of magnitude only: the data
differ** (real uploads and real features there, a simulated world here):

| model | R@10 | R@15 | R@20 | R@25 |
|---|---|---|---|---|
| CMVAE | 0.2606 | 0.3684 | 0.4489 | 0.5137 |
| Cross-VAE | 0.2584 | 0.3590 | 0.4360 | 0.5077 |
| DA-VAE | 0.1645 | 0.2390 | 0.3063 | 0.3698 |
| Dual-VAE | 0.1607 | 0.2272 | 0.2897 | 0.3514 |
| Random | 0.0959 | 0.1398 | 0.1788 | 0.2191 |
| PopularRank | 0.0689 | 0.1030 | 0.1390 | 0.1766 |
| CCA | 0.0465 | 0.0640 | 0.0934 | 0.1278 |
| CMVAE, new music | 0.1610 | 0.2274 | 0.2881 | 0.3479 |
"""

#: what the bench commands write in their ``--work`` (glob patterns: the worlds of ``quality`` and ``gamma``, the
#: tt150k world of ``speed``, the default reports of ``quality``, ``gamma``, ``ceiling`` and ``bench-media`` and what
#: goes beside them): a folder holding nothing else is a bench work folder, reused (``--resume``)
BENCH_ENTRIES = ("*-seed[0-9]*", "tt150k-speed", "benchmarks*.md", "benchmarks_*.json", "bench_*.png", "bench_media.md",
                 "track_term_ceiling.md", "intervened_*.md", "gamma_sweep.md", "gamma_sweep.png")


QUALITY_TITLE = "# Benchmarks: quality on the simulated worlds"  # the first line of a bench quality report
CEILING_TITLES = ("# The models against the learners trained on the intervened world (",  # --no-fit
                  "# How much of each model's error is in its per-track term (")  # the first lines of its reports
GAMMA_TITLE = "# DecCM vs CMVAE as confounding grows ("
MEDIA_TITLE = "# Media benchmark"  # bench-media's
REPORT_TITLES = (QUALITY_TITLE, *CEILING_TITLES, GAMMA_TITLE, MEDIA_TITLE)  # how the bench reports begin


def check_work_folder(work: Path, out: Path) -> None:
    """Refuse (ValueError), before any work, a ``--work`` folder that is not empty and not a bench work folder
    (:data:`BENCH_ENTRIES`, the report ``out`` when it is written there, and the quality reports an earlier
    ``--out`` wrote there): a dataset, a model run, a demo's folder or any other
    (:func:`~bgmrec.demo.check_own_folder`)."""
    reports = [p for p in Path(work).glob("*.md") if first_line(p).startswith(REPORT_TITLES)] \
        if Path(work).is_dir() else []
    own = [name for p in reports for name in (p.name, p.with_suffix(".png").name)]  # gamma's plot beside its report
    if Path(out).resolve().parent == Path(work).resolve():
        own += [Path(out).name, Path(out).with_suffix(".png").name]
    check_own_folder(work, "--work", "a work folder of bgmrec bench", BENCH_ENTRIES + tuple(map(glob.escape, own)))
    for world in sorted(Path(work).glob("*-seed[0-9]*")) if Path(work).is_dir() else []:
        check_world_folder(world, f"--work {work}")


def check_report_file(out: Path, titles: str | tuple[str, ...], beside: Sequence[Path] = (),
                      shared: bool = False) -> None:
    """Refuse (ValueError), before any work, a report path ``out`` that is not a Markdown file, or that exists and
    is not an earlier report of the same bench (empty, or its first line one of ``titles``): a report and the
    figures written beside it replaced whatever ``--out`` named (a dataset's ``videos.csv``, a user's notes).
    The files written ``beside`` it (figures, plots) may be replaced only along with an earlier report (with
    ``shared``, named by the world, not the report: any report of this bench in that folder, except a file
    another report names, as a second report of one world replaced the first's JSON and plots): beside a new
    one, a file of that name is refused too (``--out notes.md`` replaced the user's ``notes.png``)."""
    out = Path(out)
    if out.suffix != ".md":
        raise ValueError(f"--out {out}: the report is Markdown (a .md file); its figures go beside it")
    if out.exists() and not (out.is_file() and (out.stat().st_size == 0 or first_line(out).startswith(titles))):
        raise ValueError(f"--out {out}: exists and is not a report of this bench; refusing to replace it (choose "
                         "another --out, or remove the file)")
    others = [p for p in out.parent.glob("*.md") if p.name != out.name and first_line(p).startswith(titles)]
    earlier = out.is_file() and out.stat().st_size > 0 or shared and bool(others)
    taken = [Path(p) for p in beside if Path(p).exists()] if not earlier else []
    if taken:
        raise ValueError(f"--out {out}: a new report, whose {taken[0].name} would replace the file of that name "
                         f"beside it; refusing (choose another {'folder for ' if shared else ''}--out, or remove "
                         f"{taken[0]})")
    for p in (Path(p) for p in beside if shared and Path(p).exists()):
        owner = next((r for r in others if p.name in r.read_text(encoding="utf-8", errors="replace")), None)
        if owner is not None:  # a second report of one world in the folder replaced the first's JSON and plots
            raise ValueError(f"--out {out}: its {p.name} would replace the one of the report {owner.name} beside "
                             f"it (the figures are named by the world, not the report); refusing (choose another "
                             f"folder for --out, or remove {owner})")


def first_line(path: Path) -> str:
    """The file's first line (how a report is known by its title), empty when it cannot be read as text."""
    try:
        with path.open(encoding="utf-8") as f:
            return f.readline()
    except (OSError, UnicodeDecodeError):
        return ""


def command_line(argv: Sequence[str], default: str, cwd: Path | None = None) -> str:
    """The command a report's "Made by" line names: ``bgmrec`` and ``argv`` (the arguments of a ``bench``
    command, as the shell passed them), each quoted as the shell needs (an empty value as ``''``, a path
    with a space), so that pasting the line runs the same command; ``default`` when ``argv`` is not a
    ``bench`` command (the report made from Python). An absolute path inside ``cwd`` (default: the working
    folder) is written relative to it, so the line pastes back in another clone of the checkout too."""
    if list(argv[:1]) != ["bench"]:
        return default
    here = (cwd or Path.cwd()).resolve()

    def portable(arg: str) -> str:
        if arg.startswith("--") and "=" in arg:  # --work=/path
            option, _, value = arg.partition("=")
            return f"{option}={portable(value)}"
        path = Path(arg)
        if not path.is_absolute() or not path.resolve().is_relative_to(here) or path.resolve() == here:
            return arg
        return path.resolve().relative_to(here).as_posix()

    return shlex.join(["bgmrec", *map(portable, argv)])


def aggregate(results: list[dict]) -> dict[tuple[str, str], dict[str, tuple[float, float, int]]]:
    """(label, split) -> metric header -> (mean, std, n) over seeds."""
    from bgmrec.eval.report import label, metric_at

    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((label(r), r["split"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        cells = {}
        for header, path in QUALITY_METRICS:
            vals = [v for v in (metric_at(r, path) for r in rs) if v is not None]
            if vals:
                cells[header] = (float(np.mean(vals)), float(np.std(vals)), len(vals))
        out[key] = cells
    return out


def markdown(agg: dict, split: str) -> str:
    """The Markdown table of ``split`` from :func:`aggregate`'s means and deviations over seeds, each model's
    Recall@10 also as a share of the oracle's."""
    rows = [["model"] + [h for h, _ in QUALITY_METRICS] + ["R@10 / oracle"]]
    oracle = agg.get(("oracle", split), {}).get("R@10", (None,))[0]
    for (name, s), cells in agg.items():
        if s != split:
            continue
        row = [name]
        for h, _ in QUALITY_METRICS:
            m = cells.get(h)
            row.append("-" if m is None else (f"{m[0]:.3f} ± {m[1]:.3f}" if m[2] > 1 else f"{m[0]:.3f}"))
        r10 = cells.get("R@10", (None,))[0]
        row.append(f"{r10 / oracle:.2f}" if oracle and r10 is not None else "-")
        rows.append(row)
    return markdown_from_rows(rows)


def plot(agg: dict, split: str, title: str, out: Path, over: str = "mean ± std over seeds") -> Path:
    """A bar chart of each model's mean Recall@10 on ``split`` with its deviation over seeds, written to ``out``
    (``over``: what the figures are, in the axis label; "seed 0" for one seed)."""
    plt = pyplot()
    items = [(name, cells["R@10"]) for (name, s), cells in agg.items() if s == split and "R@10" in cells]
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(items) + 1.5))
    ax.barh([n for n, _ in items], [m for _, (m, _, _) in items], xerr=[sd for _, (_, sd, _) in items],
            color=["black" if n == "oracle" else "tab:blue" for n, _ in items])
    ax.invert_yaxis()
    ax.set_xlabel(f"full-catalogue Recall@10 ({over})")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out, dpi=100)


def reusable_run(run: Path, name: str, seed: int, code: str,
                 data: dict | None = None) -> tuple[float | None, str | None]:
    """What ``--resume`` does with the folder ``run``: (training seconds, None) for a complete run of ``name``
    at ``seed`` made by bgmrec's sources ``code`` (:func:`~bgmrec.runs.code_fingerprint`: the same whether it
    runs from a git checkout, uncommitted, or installed from a wheel; and, for a model of another package, by
    its code as installed now), and, when ``data`` (the world's :func:`~bgmrec.runs.dataset_record`) is given,
    trained on that world's splits and features, which it reuses; else (None, why the complete run there is
    trained again), or (None, None) when the folder holds no complete run (never trained, or stopped before
    it finished)."""
    from bgmrec.data.dataset import read_json
    from bgmrec.models.packages import describe_package, model_package

    if not all((run / f).exists() for f in ("run.json", "config.json", "weights.safetensors")):
        return None, None
    info, config = read_json(run / "run.json"), read_json(run / "config.json")
    if info.get("model") != name or config["config"].get("seed") != seed:
        return None, (f"the run there is of model {info.get('model')!r}, seed {config['config'].get('seed')}, "
                      f"not of {name!r}, seed {seed}")
    if info.get("code") != code:
        then = (f"bgmrec {info['code']}" if info.get("code") else
                f"commit {info.get('commit', 'unknown')}, by a bgmrec that recorded no hash of its sources")
        return None, f"the run there was trained by other code ({then}; this is bgmrec {code})"
    if data is not None and any(info.get(f) != data[f] for f in FINGERPRINTS):
        return None, "the run there was trained on another world (simulated again since, with other parameters?)"
    now = model_package(name)
    if info.get("model_package") != now:
        return None, (f"the model's code changed since the run there was trained (then: "
                      f"{describe_package(info.get('model_package'))}; installed now: {describe_package(now)})")
    return float(info["seconds"]), None


def world_label(scale: str, world: dict[str, str]) -> str:
    """The name of a benchmark's world in its folders and files: the preset, then each world parameter
    set by ``--world`` as key=value (:func:`canonical_world`), in key order ("small", "small+delta=0.8+gamma=2")."""
    return "+".join([scale] + [f"{k}={v}" for k, v in canonical_world(world).items()])


def canonical_world(world: dict[str, str]) -> dict[str, str]:
    """``--world`` values as one spelling each, in key order: converted to the parameter's type, then written
    back (gamma=2 and gamma=2.0 are "2"; genre_shares "0.5, 0.5" is "0.5,0.5"); a ValueError for a bad one."""
    from bgmrec.data.simulate import WorldConfig
    from bgmrec.models.base import with_overrides

    def spelled(value) -> str:
        if isinstance(value, tuple):
            return ",".join(map(spelled, value))
        return f"{value:g}" if isinstance(value, float) else str(value)

    config = with_overrides(WorldConfig(), world)
    return {k: spelled(getattr(config, k)) for k in sorted(world)}


def run_quality(scales: list[str], seeds: list[int], out: Path, work: Path, models: list[str] | None,
                console: Console, command: str, resume: bool = False, world: dict[str, str] | None = None) -> Path:
    """Train and evaluate ``models`` on each scale and seed; write the Markdown report at ``out``, and its JSON
    figures beside it, after each scale (saying which scales are still to run until the last is done: a stop
    during a long scale keeps the ones before).

    ``resume`` reuses the runs in ``work`` that the same code trained on the same world (seeds can then
    run as separate processes, and an interrupted benchmark continues where it stopped). ``world`` changes
    world parameters of every preset (``--world key=value``; not ``seed``, which ``seeds`` gives): the
    worlds, runs, JSON and plots are then named by :func:`world_label`, apart from the presets' own.

    Stopped (Ctrl-C, SIGTERM), the stop is raised on with a note (:func:`~bgmrec.runs.note_on_stop`) saying how
    many of the runs ``resume`` would reuse are done (:func:`quality_resume_note`).
    """
    from bgmrec.runs import note_on_stop

    with note_on_stop(lambda: quality_resume_note(scales, seeds, work, models or DEMO_MODELS, dict(world or {}),
                                                  command)):
        return _run_quality(scales, seeds, out, work, models, console, command, resume, world)


def quality_resume_note(scales: list[str], seeds: list[int], work: Path, models: Sequence[str],
                        world: dict[str, str], command: str) -> str:
    """What a stopped ``bench quality`` of ``models`` on ``scales`` and ``seeds`` has done, as its stop's note: how
    many of its runs in ``work`` are complete and made by this code (:func:`reusable_run`, whose worlds
    ``--resume`` then checks too), and ``command`` with ``--resume``, which continues it reusing them."""
    from bgmrec.runs import code_fingerprint

    code = code_fingerprint()
    runs = [(Path(work) / f"{world_label(scale, world)}-seed{seed}" / "runs" / name, name, seed)
            for scale in scales for seed in seeds for name in models]
    done = sum(reusable_run(run, name, seed, code)[0] is not None for run, name, seed in runs)
    return f"{done} of {len(runs)} runs finished in {work}; `{with_resume(command)}` continues, reusing them"


def with_resume(command: str) -> str:
    """``command`` with ``--resume``, which a stopped benchmark's note gives as the command that continues it."""
    return command if "--resume" in shlex.split(command) else f"{command} --resume"


def _run_quality(scales: list[str], seeds: list[int], out: Path, work: Path, models: list[str] | None,
                 console: Console, command: str, resume: bool, world: dict[str, str] | None) -> Path:
    """:func:`run_quality`'s work."""
    from bgmrec.eval.report import paired_against, without_ranks

    if not scales or not seeds:
        raise ValueError(f"bench quality needs at least one scale and one seed, got scales {scales}, seeds {seeds}")
    world = dict(world or {})
    for scale in scales:  # a bad parameter fails now, not after the worlds and models before it
        world_parameters(scale, 0, world)
    labels = [world_label(scale, world) for scale in scales]
    check_report_file(out, QUALITY_TITLE, [Path(out).parent / name for label in labels for name in (
        f"benchmarks_{label}.json", *(f"bench_{label}_{split}.png" for split in EVAL_SPLITS))], shared=True)
    check_work_folder(work, out)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sections = _quality_preamble(seeds, models, command, world)
    figures: dict[str, list[dict]] = {}  # JSON file -> its results, written with the report
    for done_scales, scale in enumerate(scales, 1):
        label = world_label(scale, world)
        results: list[dict] = []
        seconds: dict[str, list[float]] = {}
        paired: dict[str, dict[str, list]] = {split: {} for split in EVAL_SPLITS}  # split -> "seed s" -> comparisons
        for seed in seeds:
            seed_results = _quality_world(scale, label, seed, work, models, console, resume, world, seconds)
            for split in EVAL_SPLITS:
                paired[split][f"seed {seed}"] = paired_against(seed_results, BASELINE, split)
            results.extend(without_ranks(seed_results))
        figures[f"benchmarks_{label}.json"] = results
        sections += _quality_world_sections(label, seeds, results, paired, seconds, out)
        still = scales[done_scales:]
        partial = [f"*Worlds still to run when this report was written: {', '.join(still)}.*", ""] if still else []
        written = write_report(out, sections + partial + ["## The papers' figures", "", PAPER_TABLE], console,
                               figures)
    return written


def _quality_preamble(seeds: list[int], models: list[str] | None, command: str, world: dict[str, str]) -> list[str]:
    """The quality report's title and the paragraph on how it was made and what its figures are."""
    from bgmrec.models.packages import model_package, packages_note
    from bgmrec.runs import git_commit, machine

    return [
        QUALITY_TITLE,
        "",
        f"Regenerate with `{command}` (commit {git_commit()}, {machine()}, "
        f"{time.strftime('%Y-%m-%d')}{packages_note({m: model_package(m) for m in models or DEMO_MODELS})}). "
        + (f"Each figure is the mean ± population standard deviation over seeds {', '.join(map(str, seeds))} "
           "where more than one seed ran; each seed is a new world (same parameters), new splits and new "
           "initialisations. " if len(seeds) > 1 else f"One seed, {seeds[0]}: each figure is that world's. ")
        + "Full-catalogue ranking is the main protocol; `s-` figures are the "
        "papers' sampled protocol (1 positive + 100 frozen negatives, or every other candidate of a split that "
        "has fewer, as the tiny world's test_new_music); IPW weights queries by 1 / (1 + the "
        "training count of their track); TVD@10 is the total variation distance between the genre shares of "
        "the top-10 lists and of the split's true positives. DecCM rows name their inference mode."
        + (" World parameters changed from the presets in every world: "
           f"{', '.join(f'{k}={v}' for k, v in canonical_world(world).items())}." if world else ""),
        "",
    ]


def _quality_world(scale: str, label: str, seed: int, work: Path, models: list[str] | None, console: Console,
                   resume: bool, world: dict[str, str], seconds: dict[str, list[float]]) -> list[dict]:
    """One seed's world of the quality benchmark: made (or reused), every model trained (or its run reused with
    ``resume``; its training seconds added to ``seconds``) and evaluated; the results, ranks kept."""
    from bgmrec.data.dataset import load_dataset
    from bgmrec.runs import TEACHERS, SharedTeachers, code_fingerprint, dataset_record, train_model

    data = Path(work) / f"{label}-seed{seed}" / "data"
    ensure_world(scale, seed, data, console, world)
    ds = load_dataset(data)
    if not queried_splits(ds):
        raise ValueError(f"{data}: the {label} world (seed {seed}) has no queries in any split the benchmark "
                         f"reports ({in_words(EVAL_SPLITS, 'or')}): nothing to report; give --world values "
                         "that leave some (test_share, new_track_share)")
    made = dataset_record(data)  # each row of the JSON names its world's fingerprints; --resume compares them
    world_fingerprints = {key: made[key] for key in FINGERPRINTS}
    seed_results: list[dict] = []
    # DecCM and its ablations share one teacher
    teachers = SharedTeachers(data.parent / TEACHERS, ds, console, made, progress=True)
    for name in models or DEMO_MODELS:
        run = data.parent / "runs" / name
        teacher = teachers.for_model(name, {"seed": seed})  # for a finished run too: the same folder
        sec, why = reusable_run(run, name, seed, code_fingerprint(), made) if resume else (None, None)
        if sec is not None:
            done = f"reused from {run} (trained in {sec:.0f} s)"
        else:
            if why:
                console.print(f"{scale} seed {seed}: {name} is trained again, not reused: {why}",
                              markup=False)
            _, sec = train_model(data, name, run, seed=seed, teacher=teacher, progress=True)
            done = f"trained in {sec:.0f} s"
        seconds.setdefault(name, []).append(sec)
        res = evaluate_run(run, ds, label=name, keep_ranks=True)
        for r in res:
            r.update(seed=seed, **world_fingerprints)
        seed_results.extend(res)
        console.print(f"{scale} seed {seed}: {name} {done}", markup=False)
    return seed_results


def _quality_world_sections(label: str, seeds: list[int], results: list[dict], paired: dict[str, dict[str, list]],
                            seconds: dict[str, list[float]], out: Path) -> list[str]:
    """A world's part of the quality report: per split its table, plot, paired changes and per-genre table, then
    the training seconds (the plots written beside ``out``)."""
    from bgmrec.eval.report import PER_GENRE_NOTE, paired_markdown, paired_note, per_genre_markdown

    agg = aggregate(results)
    sections = [f"## World `{label}` (seeds {', '.join(map(str, seeds))})", "",
                f"Every result of this world, per seed, as JSON: [benchmarks_{label}.json](benchmarks_{label}.json).",
                ""]
    shown = [split for split in EVAL_SPLITS if any(r["split"] == split for r in results)]
    if len(shown) < len(EVAL_SPLITS):  # a world whose shares leave a split empty (--world new_track_share=0)
        empty = [f"`{split}`" for split in EVAL_SPLITS if split not in shown]
        sections += [f"{in_words(empty)} {'has' if len(empty) == 1 else 'have'} no queries in this world: left "
                     "out of the tables and plots.", ""]
    for split in shown:
        png = plot(agg, split, f"{label}, {split}", out.parent / f"bench_{label}_{split}.png",
                   "mean ± std over seeds" if len(seeds) > 1 else f"seed {seeds[0]}")
        sections += [f"### {label}: `{split}`", "", markdown(agg, split), "", f"![{png.stem}]({png.name})", ""]
        if any(paired[split].values()):
            sections += [paired_note(BASELINE), "", paired_markdown(paired[split], BASELINE), ""]
        sections += [PER_GENRE_NOTE + (" Means over seeds." if len(seeds) > 1 else f" Seed {seeds[0]} alone."),
                     "", per_genre_markdown(results, split), ""]
    sections += [f"Training seconds per model ({'mean over seeds' if len(seeds) > 1 else f'seed {seeds[0]}'}): "
                 + ", ".join(f"{k} {np.mean(v):.0f}" for k, v in seconds.items()), ""]
    return sections


def queried_splits(ds) -> list[str]:
    """The splits of :data:`~bgmrec.eval.protocol.EVAL_SPLITS` that hold queries in ``ds`` (the ones evaluated)."""
    return [split for split in EVAL_SPLITS if split in ds.splits and len(ds.splits[split])]


def in_words(items: Sequence[object], last: str = "and") -> str:
    """``items`` as a sentence lists them: "a", "a and b", "a, b and c" (``last``: the word before the last)."""
    words = [str(item) for item in items]
    return f" {last} ".join(filter(None, [", ".join(words[:-1]), words[-1]])) if words else ""


#: the models ``bench speed`` times: the two papers' backbones, and popularity, whose scores tie across many tracks
SPEED_MODELS = ("cmvae", "deccm-noteacher", "popularity")


def run_speed(work: Path, console: Console, data: Path | None = None, split: str = "test", epochs: int = 2) -> dict:
    """Seconds per training epoch of :data:`SPEED_MODELS` on ``data``'s train split and the seconds of their
    full-catalogue ranking of ``split`` (popularity's tied scores take the ranking's tie-breaking path), with
    the peak memory. Without ``data``, the ``tt150k`` world is simulated into ``work`` first and that is timed
    too; with it, an engineer's own dataset is timed as it is (nothing is written)."""
    from bgmrec.data.dataset import DatasetError, dataset_fingerprint, load_dataset
    from bgmrec.data.simulate import WORLD_SPLITS, save_world, simulate, world_config
    from bgmrec.eval.protocol import full_ranks
    from bgmrec.features.cache import progress_steps
    from bgmrec.models.base import FeatureSpec, SplitView
    from bgmrec.models.registry import build
    from bgmrec.runs import peak_rss_mb

    figures: dict = {}
    if data is None and split not in WORLD_SPLITS:  # before a minute of simulating
        raise ValueError(f"--split {split!r}: the simulated world has no such split (it has "
                         f"{', '.join(WORLD_SPLITS)})")
    with progress_steps("bench speed") as step:
        if data is None:
            data = Path(work) / "tt150k-speed"
            step("simulating the tt150k world")
            t0 = time.perf_counter()
            save_world(*simulate(world_config("tt150k")), data)
            figures.update(world="tt150k", simulate_seconds=time.perf_counter() - t0,
                           peak_rss_mb_after_simulate=peak_rss_mb())
        step(f"reading {data}")
        ds = load_dataset(data)
        if split not in ds.splits or not len(ds.splits[split]):
            held = ", ".join(s for s in ds.splits if len(ds.splits[s])) or "none"
            raise DatasetError(f"{data}: no rows in split {split!r} to rank (splits with rows: {held})")
        figures.update(data=str(Path(data).resolve()), data_fingerprint=dataset_fingerprint(data), split=split,
                       n_train_pairs=int(len(ds.splits["train"])), n_queries=int(len(ds.splits[split])),
                       n_candidates=int(len(ds.candidate_tracks(split))))
        spec = FeatureSpec.of(ds)
        for name in SPEED_MODELS:
            trained = name != "popularity"
            step(f"training {name} for {epochs} epoch{'s' if epochs > 1 else ''}" if trained else f"fitting {name}")
            model = build(name, spec, {"epochs": epochs, "val_queries": 1} if trained else {})
            model.fit(SplitView(ds, "train"), None)
            if trained:
                figures[f"{name}_seconds_per_epoch"] = float(np.median([h["seconds"] for h in model.history]))
            step(f"ranking {split} by {name}")
            t0 = time.perf_counter()
            full_ranks(model, ds, split)
            figures[f"{name}_full_ranking_seconds"] = time.perf_counter() - t0
    figures["peak_rss_mb"] = peak_rss_mb()
    console.print_json(json.dumps(figures))
    return figures


def fit_oracle(ds):
    """The simulated world's oracle (its true selection logits), fitted on the dataset's train split."""
    from bgmrec.models.base import FeatureSpec, ModelConfig, SplitView
    from bgmrec.models.oracle import Oracle

    return Oracle(ModelConfig(), FeatureSpec.of(ds)).fit(SplitView(ds, "train"))


class TruthRanker:
    """Reference rankings from a simulated world's truth, to tell how much deconfounding can gain.

    Both rank by the training process's true logits (the oracle's, popularity included) with the
    uploader's taste term gamma log c[g(m)] either marginalised over ``n_confounders`` training uploads
    (``backdoor``: log P(m | do(v)), what a perfect taste-marginalising model ranks by) or removed
    (``content``: what a content mode that drops the taste but keeps the uploads' popularity ranks by).
    On ``test_unbiased`` (positives drawn by content alone) neither is the ceiling -- the oracle is, and
    DecCM's content mode, whose content share drops popularity too, aims at it -- but their difference
    is the gain that removing the taste is worth when both models are perfect.
    """

    name = "truth-reference"

    def __init__(self, ds, mode: str, n_confounders: int = 512, seed: int = 0) -> None:
        import torch

        from bgmrec.models.base import MusicCatalog

        self.mode, self.n_genres = mode, len(ds.genres)
        self.oracle = fit_oracle(ds)
        train = self.oracle.processes["train"]
        self.oracle.processes["content"] = {**train, "gamma": 0.0}  # the training process without taste
        rows = np.asarray(ds.splits["train"])
        pick = np.random.default_rng(seed).choice(len(rows), n_confounders, replace=len(rows) < n_confounders)
        taste = self.oracle.video_taste[rows[pick, 0]] if len(self.oracle.video_taste) else \
            ds.confounder(rows[pick, 2])  # the true tastes (a world saved before truth/ kept them: the dataset's)
        self.taste = torch.from_numpy(train["gamma"] * np.log(np.maximum(taste, 1e-12)))
        ref = np.flatnonzero(~np.asarray(ds.track_new))  # the training catalogue
        self.ref_music = self.oracle.encode_music(MusicCatalog.from_dataset(ds))[ref].astype(np.float64)
        self.ref_genre = torch.from_numpy(np.asarray(ds.track_genre, np.int64)[ref])

    def encode_videos(self, q) -> np.ndarray:
        import torch

        from bgmrec.models.layers import backdoor_genre_offsets

        e = self.oracle.encode_videos(replace(q, split="content", confounder=None)).astype(np.float64)
        if self.mode == "backdoor":  # taste columns: the genre offsets of the backdoor marginal
            d = e.shape[1] - self.n_genres - 1
            e[:, d:d + self.n_genres] = backdoor_genre_offsets(torch.from_numpy(e @ self.ref_music.T),
                                                               self.ref_genre, self.taste).numpy()
        return e.astype(np.float32)

    def encode_music(self, c) -> np.ndarray:
        return self.oracle.encode_music(c)


@dataclass
class ChoiceTruth:
    """True choice probabilities of a split's process for a set of videos (simulated worlds only)."""

    query: object  # VideoQuery: the videos, with their uploaders' tastes and the split whose process applies
    catalog: object  # MusicCatalog: the dataset's tracks
    candidates: np.ndarray  # [C] indices of the tracks the split ranks
    probabilities: np.ndarray  # [n, C] P(m | v) of the split's process over the candidates


def choice_truth(ds, split: str, oracle, videos: str = "val", max_videos: int = 4000, seed: int = 0) -> ChoiceTruth:
    """The oracle's P(m | v) under ``split``'s process for the videos of split ``videos`` (untrained, untested)."""
    from bgmrec.models.base import MusicCatalog, VideoQuery

    rows = np.asarray(ds.splits[videos])
    if len(rows) > max_videos:  # a seeded sample bounds the fit's memory and time
        rows = rows[np.sort(np.random.default_rng(seed).choice(len(rows), max_videos, replace=False))]
    cand = ds.candidate_tracks(split)
    logits = choice_logits(ds, oracle, rows, split, cand)
    p = np.exp(logits - logits.max(1, keepdims=True))
    q = VideoQuery.from_dataset(ds, rows[:, 0], rows[:, 2], split)
    return ChoiceTruth(q, MusicCatalog.from_dataset(ds), cand, p / p.sum(1, keepdims=True))


def choice_logits(ds, oracle, rows: np.ndarray, split: str, tracks: np.ndarray) -> np.ndarray:
    """float64 [len(rows), len(tracks)]: the true choice logits of ``split``'s process for the videos of
    ``rows`` (video, track, uploader), with their uploaders' tastes, over ``tracks`` (the oracle's scores)."""
    from bgmrec.models.base import MusicCatalog, VideoQuery

    q = VideoQuery.from_dataset(ds, rows[:, 0], rows[:, 2], split)
    music = oracle.encode_music(MusicCatalog.from_dataset(ds))[tracks]
    return oracle.encode_videos(q).astype(np.float64) @ music.T.astype(np.float64)


class TrackTermFit:
    """A model's scores with a per-track term fitted to a split's true choice probabilities (simulated worlds only).

    Every model here scores as similarity(v, m) plus a per-track term (its track prior), and the two
    can fail apart. This diagnostic keeps the model's scores s(v, m) and fits a scale kappa and a term
    a(m) per candidate track minimising the cross-entropy between the true P(m | v) of ``truth`` (the
    split's process, on videos the model neither trained on nor is tested on) and
    softmax_m(kappa s(v, m) + a(m)). Ranking by kappa s + a is ranking by s + a / kappa: only the
    per-track term changes. The fit minimises cross-entropy, not Recall@10, so it is a strong
    per-track correction, not provably the best one for every metric.
    """

    name = "track-term-fit"

    def __init__(self, model, kappa: float, term: np.ndarray) -> None:
        self.model = model  # the model whose scores are kept
        self.kappa = kappa  # the scale of its scores
        self.term = term  # [M] the per-track term of each track of the catalogue (0 outside the candidates)

    @classmethod
    def fit(cls, model, truth: ChoiceTruth) -> TrackTermFit:
        """Fit kappa and the per-track term of ``model``'s scores to ``truth`` (L-BFGS on the cross-entropy)."""
        import torch

        scores = model.score(truth.query, truth.catalog)[:, truth.candidates].astype(np.float64)
        if not np.isfinite(scores).all():
            raise ValueError(f"{getattr(model, 'name', 'model')}: scores are not finite")
        scores = torch.from_numpy(scores - scores.mean(1, keepdims=True))  # softmax ignores a per-row shift
        target = torch.from_numpy(truth.probabilities)
        kappa = torch.ones((), dtype=torch.float64, requires_grad=True)
        term = torch.zeros(len(truth.candidates), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([kappa, term], max_iter=500, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = -(target * torch.log_softmax(kappa * scores + term, 1)).sum(1).mean()
            loss.backward()
            return loss

        opt.step(closure)
        every_track = np.zeros(len(truth.catalog))  # only the split's candidates are ever ranked
        every_track[truth.candidates] = term.detach().numpy()
        return cls(model, float(kappa.detach()), every_track)

    def encode_videos(self, q) -> np.ndarray:
        e = self.model.encode_videos(q).astype(np.float64)
        return np.hstack([self.kappa * e, np.ones((len(e), 1))]).astype(np.float32)

    def encode_music(self, c) -> np.ndarray:
        e = self.model.encode_music(c).astype(np.float64)
        index = np.arange(len(c)) if c.index is None else c.index
        return np.hstack([e, self.term[index][:, None]]).astype(np.float32)

    def score(self, q, c) -> np.ndarray:
        return self.encode_videos(q) @ self.encode_music(c).T


def intervened_dataset(ds, oracle, seed: int = 0, splits: tuple[str, ...] = ("train", "val"),
                       process: str = "test_unbiased"):
    """The same simulated world with the uploads of ``splits`` choosing their music by content alone.

    Each row keeps its video and uploader; its track is redrawn, by Gumbel-max with ``seed``, from the
    true choice probabilities of split ``process``'s process (``test_unbiased``: gamma = delta = 0, no
    taste and no popularity) over the split's candidates: the intervention do(M) that DecCM (Yi and
    Chen, ACM TIST 2024) approximates, done exactly on the training data. The frozen negatives and
    weights of the redrawn splits are dropped (they belonged to the old positives). Simulated worlds
    only: it needs the truth (``oracle``, from :func:`fit_oracle`).
    """
    from bgmrec.data.simulate import gumbel_max_choice

    p = oracle.processes.get(process, {})
    if p.get("gamma", 1.0) or p.get("delta", 1.0):
        raise ValueError(f"split {process!r}: its process is not content alone (gamma and delta must be 0, "
                         f"got {p or 'no process'})")
    rng = np.random.default_rng(seed)
    new_splits = dict(ds.splits)
    for split in splits:
        rows = np.array(ds.splits[split], np.int64)
        cand = ds.candidate_tracks(split)
        draw = gumbel_max_choice(rng, lambda r, rows=rows, cand=cand: choice_logits(ds, oracle, rows[r], process,
                                                                                     cand), len(rows))
        rows[:, 1] = cand[draw]
        new_splits[split] = rows
    return replace(ds, splits=new_splits, negatives={k: v for k, v in ds.negatives.items() if k not in splits},
                   weights={k: v for k, v in ds.weights.items() if k not in splits})


def fit_on_intervened_world(ds, oracle, name: str, seed: int, professional: bool, redraw: int = 0) -> Recommender:
    """Model ``name`` (default config, ``seed``) trained on :func:`intervened_dataset`'s train and val splits.

    ``redraw`` seeds the redrawn choices (with ``seed``). With ``professional`` the professional
    videos' rows (chosen by content alone already) join the training rows: the data a teacher-guided
    model sees, all of it unconfounded. Models that need a teacher are not supported.
    """
    from bgmrec.models.base import FeatureSpec, SplitView
    from bgmrec.models.deccm import professional_split
    from bgmrec.models.registry import build

    check_intervened_models([name])
    model = build(name, FeatureSpec.of(ds), {"seed": seed})
    world = intervened_dataset(ds, oracle, int(np.random.SeedSequence([seed, redraw]).generate_state(1)[0]))
    pro = professional_split(ds) if professional else None
    if pro is not None:
        world.splits["train"] = np.vstack([world.splits["train"], np.asarray(ds.splits[pro])])
    return model.fit(SplitView(world, "train"), SplitView(world, "val"))


def fit_intervened_draws(ds, oracle, name: str, seed: int, professional: bool, redraws: int) -> list[Recommender]:
    """``redraws`` models ``name`` trained by :func:`fit_on_intervened_world`, one per draw of the world."""
    return [fit_on_intervened_world(ds, oracle, name, seed, professional, r) for r in range(redraws)]


def full_recall_at_10(model, ds, split: str = "test_unbiased") -> float:
    """Full-catalogue Recall@10 of ``model`` on ``split`` of ``ds``."""
    from bgmrec.eval.metrics import recall_at_k
    from bgmrec.eval.protocol import full_ranks

    return recall_at_k(full_ranks(model, ds, split).ranks, 10)


Learners = dict[str, dict[int, list[float]]]  # row label -> seed -> Recall@10 of each draw


def add_learner(learners: Learners, label: str, seed: int, r10: list[float]) -> None:
    """Record the Recall@10 of ``seed``'s draws (one per draw) for the row ``label``."""
    learners.setdefault(label, {})[seed] = [float(v) for v in r10]


@dataclass(frozen=True)
class RunTeacher:
    """The frozen teacher that a saved run mixes into its content mode, and with what weight."""

    run: str  # the run's model name, e.g. "deccm"
    teacher: Recommender  # its teacher as the run loads it (``DecCM.after_load``)
    weight: float  # its ``teacher_mix``

    @classmethod
    def of(cls, run: str, model: Recommender) -> RunTeacher | None:
        """The teacher ``model`` (loaded from run ``run``) mixes in, or None when it mixes none."""
        teacher = getattr(model, "teacher", None)  # attached on load only when content mode mixes it
        return None if teacher is None else cls(run, teacher, float(model.config.teacher_mix))

    def mix(self, model: Recommender) -> TeacherMixture:
        """``model``'s scores mixed with this teacher's, as the run's content mode mixes its student's."""
        from bgmrec.models.deccm import TeacherMixture

        return TeacherMixture(model, self.teacher, self.weight)


def check_model_names(names) -> None:
    """Refuse names the registry does not know, all at once, then a class the registry refuses
    (:func:`~bgmrec.models.registry.model_class`), before anything is trained."""
    from bgmrec.models.registry import model_class, model_names

    unknown = [name for name in names if name not in model_names()]
    if unknown:
        raise ValueError(f"unknown model {', '.join(map(repr, unknown))}; choose among {', '.join(model_names())}")
    for name in names:
        model_class(name)


def check_intervened_models(names) -> None:
    """Refuse unknown models and those that need a teacher (:func:`fit_on_intervened_world` trains none)."""
    from bgmrec.models.base import with_overrides
    from bgmrec.models.registry import model_class, resolve, takes_teacher

    check_model_names(names)
    for name in names:
        cls = model_class(name)
        if takes_teacher(cls, with_overrides(cls.config_class(), resolve(name)[1])):
            raise ValueError(f"{name}: a teacher-guided model cannot be trained on the intervened world here; "
                             "pick a model without a teacher (e.g. cmvae)")


def intervened_section(cells: dict, learners: Learners, seeds: list[int], redraws: int) -> list[str]:
    """The report's table of ``test_unbiased`` R@10 per seed: the benchmarked runs (``cells``), the
    same learners trained on the intervened world and the teacher-mixed references (``learners``; a
    seed without a value shows "–")."""
    spreads = [np.std(r10) for per_seed in learners.values() for r10 in per_seed.values() if len(r10) > 1]
    draws = (f"; the mean of {redraws} draws per seed, whose standard deviation is {np.mean(spreads):.3f} on average"
             if spreads else "; one draw per seed")
    mixed = ("" if not any(", mixed with " in label for label in learners) else
             " DecCM's content mode mixes its teacher's score into its student's (`teacher_mix`); the rows "
             "*mixed with ...'s teacher* mix that same teacher, with the same weight, into the benchmarked and "
             "the intervened learner (`TeacherMixture`): the like-for-like references for that content mode.")
    lines = ["## `test_unbiased`: the learners trained on the intervened world", "",
             "Each model's full Recall@10 on `test_unbiased`, per seed: as benchmarked (trained on the uploads, "
             "whose choices carry the uploaders' taste and the tracks' popularity) and trained on the "
             "intervened world (`intervened_dataset`: the same videos, uploaders and splits, every train and "
             "val upload's track redrawn from the world's true choice by content alone, so neither taste nor "
             "popularity is left; in the rows *+ professional videos*, with the professional videos' rows added "
             f"too, the data a teacher-guided model sees{draws}). It is a reference point, not a ceiling: the "
             "same learner and config trained on "
             "the distribution it is tested on, early-stopped on a val split of that distribution too, which "
             "no deconfounding method has. What it gains over the benchmarked run is about what removing the "
             "confounding from the training data is worth to that learner." + mixed, ""]
    rows = [(label, cell["ranked"]) for (label, split), cell in cells.items() if split == "test_unbiased"]
    rows += [(label, [float(np.mean(per_seed[s])) if s in per_seed else None for s in seeds])
             for label, per_seed in learners.items()]
    table = [["model", *(f"seed {s}" for s in seeds), "mean"]]
    table += [[label, *("–" if v is None else f"{v:.3f}" for v in values),
               f"{np.mean([v for v in values if v is not None]):.3f}"] for label, values in rows]
    return lines + [markdown_from_rows(table), ""]


CEILING_MODELS = ("twotower-infonce", "cmvae", "cmvae-noprior", "deccm", "deccm-noadjust", "deccm-noteacher")


def run_track_term_ceiling(scale: str, seeds: list[int], work: Path, out: Path, console: Console, command: str,
                           models: tuple[str, ...] = CEILING_MODELS, splits=("test", "test_unbiased"),
                           intervened: tuple[str, ...] = ("cmvae",), redraws: int = 3,
                           fit_track_terms: bool = True) -> Path:
    """R@10 of the quality benchmark's saved runs as they rank and with :class:`TrackTermFit`, and of the
    ``intervened`` models trained on :func:`intervened_dataset` (mean of ``redraws`` draws; Markdown report).
    When one of the runs mixes a teacher into its content mode (DecCM), that teacher is also mixed into the
    benchmarked and the intervened ``intervened`` models (:class:`RunTeacher`), the like-for-like references.

    Without ``fit_track_terms`` (the fits take minutes per model at ``tt150k``) the report holds the
    intervened world's table alone, on ``test_unbiased``.
    """
    from bgmrec.runs import git_commit, machine

    if not models:
        raise ValueError("no quality-benchmark runs to read: name at least one model")
    check_model_names(models)
    check_intervened_models(intervened)
    if intervened and "test_unbiased" not in splits:
        raise ValueError("the intervened world's models are reported on test_unbiased: add it to the splits")
    worlds = {seed: Path(work) / f"{scale}-seed{seed}" for seed in seeds}
    if not fit_track_terms:
        if not intervened:
            raise ValueError("nothing to report without the per-track fits (--no-fit) and with no model for the "
                             "intervened world: name one (--intervened cmvae)")
        splits = ("test_unbiased",)
    check_report_file(out, CEILING_TITLES)
    _check_ceiling_runs(worlds, seeds, models, scale, work)
    plan = _CeilingPlan(scale, models, tuple(splits), intervened, redraws, fit_track_terms)
    figures = _CeilingFigures()
    for seed, world in worlds.items():
        _score_ceiling_world(plan, seed, world, figures, console)
    cells, learners, commits, n_videos = figures.cells, figures.learners, figures.commits, figures.n_videos
    now = git_commit()
    made = (f"Made by `{command}` at commit {now} on {machine()}, {time.strftime('%Y-%m-%d')}, from the runs of "
            f"`bgmrec bench quality` trained at commit {', '.join(sorted(commits))}"
            + ("" if commits == {now} else f" (scored with the code of commit {now})") + ". ")
    seed_list = ", ".join(map(str, seeds))
    if not fit_track_terms:
        lines = [f"{CEILING_TITLES[0]}{scale} world, seeds "
                 f"{seed_list})", "", made + "Without the per-track fits (`--no-fit`).", "",
                 *intervened_section(cells, learners, seeds, redraws)]
        return write_report(out, lines, console)
    lines = [f"{CEILING_TITLES[1]}{scale} world, seeds {seed_list})", "",
             made + "Full-catalogue Recall@10, mean ± population standard deviation over seeds. *ranked*: the model as "
             "it ranks. "
             "*fitted track term*: the same scores with a scale and a per-track term fitted to the split's true "
             "choice probabilities by cross-entropy, on the val videos "
             f"({counts_per_world(n_videos, list(worlds))}; `TrackTermFit`: the truth of a simulated "
             "world, so a diagnostic, not a method). *change*: the relative change of the mean. What the fitted "
             "term gains is what the model's own per-track term (its track prior) loses; on `test_unbiased` "
             "(choice by content alone) the gap left to the oracle is in the similarity itself, on `test` it "
             "also holds the uploader's taste, which only a model told the uploader can see.", ""]

    def cell_text(values: list[float]) -> str:
        return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"

    for split in splits:
        table = [["model", "ranked", "fitted track term", "change"]]
        for (label, sp), cell in cells.items():
            if sp != split:
                continue
            ranked, fitted = cell["ranked"], cell.get("fitted")
            change = ("" if not fitted or not np.mean(ranked)
                      else f"{100 * (np.mean(fitted) / np.mean(ranked) - 1):+.1f}%")
            table.append([label, cell_text(ranked), cell_text(fitted) if fitted else "", change])
        lines += [f"## `{split}`", "", markdown_from_rows(table), ""]
    if intervened and "test_unbiased" in splits:
        lines += intervened_section(cells, learners, seeds, redraws)
    return write_report(out, lines, console)


def _check_ceiling_runs(worlds: dict[int, Path], seeds: list[int], models: tuple[str, ...], scale: str,
                        work: Path) -> None:
    """Refuse, with the command that makes them, a world or a quality-benchmark run the ceiling report reads."""
    run_files = ("run.json", "config.json", "weights.safetensors")
    missing = []
    for seed, world in worlds.items():
        if not (world / "data" / "truth").is_dir():
            missing.append(f"seed {seed}: the world")
        missing += [f"seed {seed}: {name}" for name in models
                    if not all((world / "runs" / name / f).is_file() for f in run_files)]
    if missing:
        make = command_line(["bench", "quality", "--scales", scale, "--seeds", ",".join(map(str, seeds)), "--models",
                             ",".join(models), "--work", str(work), "--resume", "--out", "REPORT.md"], "")
        raise ValueError(f"{work}: the quality benchmark's runs are missing ({'; '.join(missing)}); make them with "
                         f"`{make}`")


@dataclass(frozen=True)
class _CeilingPlan:
    """What the ceiling report scores in each world: :func:`run_track_term_ceiling`'s arguments of that name."""

    scale: str
    models: tuple[str, ...]
    splits: tuple[str, ...]
    intervened: tuple[str, ...]
    redraws: int
    fit_track_terms: bool


@dataclass
class _CeilingFigures:
    """The ceiling report's figures, filled world by world (:func:`_score_ceiling_world`)."""

    cells: dict[tuple[str, str], dict[str, list[float]]] = field(default_factory=dict)  # (label, split) ->
    #  "ranked" / "fitted" -> each seed's Recall@10
    learners: Learners = field(default_factory=dict)  # models trained on the intervened world, and the
    #  teacher-mixed references
    commits: set[str] = field(default_factory=set)  # the commits the runs were trained at
    n_videos: list[int] = field(default_factory=list)  # each world's queries the per-track terms were fitted on


def _score_ceiling_world(plan: _CeilingPlan, seed: int, world: Path, figures: _CeilingFigures,
                         console: Console) -> None:
    """Add one seed's world to ``figures``: each run's Recall@10 as it ranks and with :class:`TrackTermFit`, and
    the intervened world's models and the teacher-mixed references."""
    from bgmrec.data.dataset import load_dataset, read_json
    from bgmrec.eval.protocol import evaluation_modes
    from bgmrec.models.base import load_model

    models, splits, intervened, redraws = plan.models, plan.splits, plan.intervened, plan.redraws
    cells, learners = figures.cells, figures.learners
    ds = load_dataset(world / "data")
    oracle = fit_oracle(ds)
    truths = {split: choice_truth(ds, split, oracle, seed=seed) for split in splits} if plan.fit_track_terms else {}
    for split in splits:
        cells.setdefault(("oracle", split), {}).setdefault("ranked", []).append(
            full_recall_at_10(oracle, ds, split))
    loaded, mixing = {}, None  # the runs, and the first one mixing a teacher into its content mode
    for name in models:
        run = world / "runs" / name
        figures.commits.add(read_json(run / "run.json").get("commit", "unknown"))
        model = load_model(run)
        loaded[name] = model
        mixing = mixing or RunTeacher.of(name, model)
        for mode in evaluation_modes(model):
            if mode is not None:
                model.set_inference_mode(mode)
            label = f"{name} [{model.inference_mode}]" if model.inference_mode else name
            for split in splits:
                cell = cells.setdefault((label, split), {})
                cell.setdefault("ranked", []).append(full_recall_at_10(model, ds, split))
                if not plan.fit_track_terms:
                    continue
                fitted = TrackTermFit.fit(model, truths[split])
                cell.setdefault("fitted", []).append(full_recall_at_10(fitted, ds, split))
        console.print(f"{plan.scale} seed {seed}: {name} done")
    for name in intervened:
        if mixing is not None and name in loaded:
            if "content" in loaded[name].inference_modes:
                loaded[name].set_inference_mode("content")  # the mode DecCM mixes its teacher into
            add_learner(learners, f"{name} (benchmarked), mixed with {mixing.run}'s teacher", seed,
                        [full_recall_at_10(mixing.mix(loaded[name]), ds)])
        for professional in (False, True):
            label = f"{name}, trained on the intervened world" + (" + professional videos" if professional else "")
            fits = fit_intervened_draws(ds, oracle, name, seed, professional, redraws)
            add_learner(learners, label, seed, [full_recall_at_10(m, ds) for m in fits])
            if mixing is not None and not professional:
                add_learner(learners, f"{label}, mixed with {mixing.run}'s teacher", seed,
                            [full_recall_at_10(mixing.mix(m), ds) for m in fits])
        console.print(f"{plan.scale} seed {seed}: {name} on the intervened world done")
    figures.n_videos += [len(truth.query) for truth in truths.values()][:1]


def counts_per_world(counts: Sequence[int], seeds: Sequence[int]) -> str:
    """How many of something each seed's world has, in seed order: "184 per world" when every seed's is the same,
    else "184 and 173 for seeds 0 and 1"."""
    if len(set(counts)) == 1:
        return f"{counts[0]} per world"
    return f"{in_words(counts)} for seeds {in_words(seeds)}"


def write_report(out: Path, lines: list[str], console: Console, figures: dict[str, object] | None = None) -> Path:
    """Write a Markdown report and the JSON files ``figures`` names beside it ({file name: its object}), all
    renamed into place together (:func:`bgmrec.data.dataset.write_files_together`): a stop or a failure while
    they are written leaves the earlier report and figures as they were, never a report beside another
    run's figures."""
    from bgmrec.data.dataset import write_files_together, write_json_atomic

    out = Path(out)
    writers = {name: (lambda tmp, obj=obj: write_json_atomic(tmp, obj)) for name, obj in (figures or {}).items()}
    writers[out.name] = lambda tmp: tmp.write_text("\n".join(lines), encoding="utf-8")
    write_files_together(out.parent, writers)
    console.print(f"wrote {out}")
    return Path(out)


def run_gamma_sweep(gammas: list[float], scale: str, seed: int, work: Path, out: Path, console: Console,
                    command: str, redraws: int = 3) -> Path:
    """CMVAE vs DecCM on ``test_unbiased`` as the confounding strength gamma grows (Markdown + plot), with
    CMVAE trained on each world's intervened version (:func:`intervened_dataset`, mean of ``redraws``) and
    CMVAE with DecCM's teacher mixed in (:class:`RunTeacher`)."""
    check_report_file(out, GAMMA_TITLE, [Path(out).with_suffix(".png")])
    check_work_folder(work, out)
    rows = []
    for gamma in gammas:
        rows += _gamma_rows(gamma, scale, seed, work, redraws)
        console.print(f"gamma {gamma}: done")
    png = Path(out).with_suffix(".png")
    _plot_gamma_sweep(rows, png)
    return write_report(out, _gamma_sweep_lines(rows, scale, seed, command, redraws, png), console)


def _gamma_rows(gamma: float, scale: str, seed: int, work: Path, redraws: int) -> list[dict]:
    """One world of confounding strength ``gamma``: CMVAE and DecCM trained and ranked on ``test_unbiased``, the
    truth's references and CMVAE with DecCM's teacher mixed in; a row per DecCM mode (backdoor, content,
    personalised), each carrying the columns shared by the gamma."""
    from bgmrec.data.dataset import load_dataset
    from bgmrec.data.simulate import save_world, simulate, world_config
    from bgmrec.eval.protocol import evaluate
    from bgmrec.eval.report import change_cell, paired_against
    from bgmrec.models.base import load_model
    from bgmrec.runs import train_model

    data = Path(work) / f"gamma{gamma:g}-{scale}-seed{seed}" / "data"
    save_world(*simulate(world_config(scale, seed=seed, gamma=gamma)), data)
    ds = load_dataset(data)
    res, evaluated = {}, []
    for name in ("cmvae", "deccm"):
        run = data.parent / "runs" / name
        train_model(data, name, run, seed=seed, progress=True)
        evaluated += evaluate_run(run, ds, splits=("test_unbiased",), label=name, keep_ranks=True)
    for r in evaluated:
        res[(r["label"], r.get("inference_mode"))] = r
    paired = dict(paired_against(evaluated, "cmvae", "test_unbiased"))
    base = res[("cmvae", None)]
    mixing = RunTeacher.of("deccm", load_model(data.parent / "runs" / "deccm"))
    if mixing is None:
        raise ValueError(f"{data.parent / 'runs' / 'deccm'}: the DecCM run mixes no teacher into its content "
                         "mode (teacher=false or teacher_mix=0, or its teacher folder is missing)")
    mixed = evaluate(mixing.mix(load_model(data.parent / "runs" / "cmvae")), ds, "test_unbiased")
    reference = {mode: full_recall_at_10(TruthRanker(ds, mode, seed=seed), ds) for mode in ("backdoor", "content")}
    oracle = fit_oracle(ds)
    reference["oracle"] = full_recall_at_10(oracle, ds)
    for professional in (False, True):
        reference["intervened" + ("_professional" if professional else "")] = float(np.mean([
            full_recall_at_10(m, ds) for m in fit_intervened_draws(ds, oracle, "cmvae", seed, professional,
                                                                   redraws)]))
    rows = []
    for mode in ("backdoor", "content", "personalised"):
        r = res[("deccm", mode)]
        rows.append({"gamma": gamma, "mode": mode, "change": change_cell(paired[f"deccm [{mode}]"]),
                     "cmvae_r10": base["full"]["recall@10"], "deccm_r10": r["full"]["recall@10"],
                     "cmvae_tvd": base["bias"]["exposure_tvd@10"], "deccm_tvd": r["bias"]["exposure_tvd@10"],
                     "mixed_r10": mixed["full"]["recall@10"], "mixed_tvd": mixed["bias"]["exposure_tvd@10"],
                     **{f"truth_{k}_r10": v for k, v in reference.items()}})
    return rows


def _plot_gamma_sweep(rows: list[dict], png: Path) -> None:
    """DecCM's Recall@10 gain and TVD@10 reduction over CMVAE by gamma, per mode, beside the intervened CMVAE and
    CMVAE with DecCM's teacher mixed in."""
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for mode in ("backdoor", "content", "personalised"):
        sub = [r for r in rows if r["mode"] == mode]
        a1.plot([r["gamma"] for r in sub], [100 * (r["deccm_r10"] / r["cmvae_r10"] - 1) for r in sub], "o-", label=mode)
        a2.plot([r["gamma"] for r in sub], [100 * (1 - r["deccm_tvd"] / r["cmvae_tvd"]) for r in sub], "o-", label=mode)
    content = [r for r in rows if r["mode"] == "content"]  # one per gamma; the CMVAE and truth columns are shared
    a1.plot([r["gamma"] for r in content], [100 * (r["truth_intervened_r10"] / r["cmvae_r10"] - 1) for r in content],
            "k--", label="CMVAE on the intervened world")
    for axis, gain in ((a1, lambda r: 100 * (r["mixed_r10"] / r["cmvae_r10"] - 1)),
                       (a2, lambda r: 100 * (1 - r["mixed_tvd"] / r["cmvae_tvd"]))):
        axis.plot([r["gamma"] for r in content], [gain(r) for r in content], "k:", label="CMVAE + DecCM's teacher")
    a1.set(xlabel="gamma (confounding strength)", ylabel="DecCM R@10 gain over CMVAE (%)", title="test_unbiased")
    a2.set(xlabel="gamma (confounding strength)", ylabel="exposure TVD@10 reduction (%)", title="test_unbiased")
    for a in (a1, a2):
        a.axhline(0, color="grey", lw=0.8)
        a.legend()
        a.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, png, dpi=100)


def _gamma_sweep_lines(rows: list[dict], scale: str, seed: int, command: str, redraws: int,
                       png: Path) -> list[str]:
    """The gamma sweep's Markdown report, line by line."""
    from bgmrec.runs import git_commit, machine

    content = [r for r in rows if r["mode"] == "content"]  # one per gamma; the CMVAE and truth columns are shared
    lines = [f"{GAMMA_TITLE}{scale} world, seed {seed})", "",
             f"Made by `{command}` at commit {git_commit()} on {machine()}, {time.strftime('%Y-%m-%d')}. "
             "Full-catalogue Recall@10 and exposure TVD@10 on `test_unbiased` (positives drawn without taste or "
             "popularity); one world per gamma, everything else at its default.", "",
             "*gain*: DecCM's change over CMVAE, its 95% paired bootstrap interval over the queries and the p-value "
             "of a paired randomisation test (`bgmrec compare`; given these trained models).", "",
             markdown_from_rows([
                 ["gamma", "DecCM mode", "CMVAE R@10", "DecCM R@10", "gain", "CMVAE TVD@10", "DecCM TVD@10",
                  "TVD reduction"],
                 *([f"{r['gamma']:g}", r["mode"], f"{r['cmvae_r10']:.3f}", f"{r['deccm_r10']:.3f}", r["change"],
                    f"{r['cmvae_tvd']:.3f}", f"{r['deccm_tvd']:.3f}",
                    f"{100 * (1 - r['deccm_tvd'] / r['cmvae_tvd']):+.0f}%"] for r in rows)])]
    lines += ["", "What deconfounding can gain, from the world's truth (`TruthRanker`): Recall@10 on `test_unbiased` "
              "of the training process's true logits with the uploader's taste marginalised (log P(m | do(v)), what a "
              "perfect taste-marginalising model such as CMVAE ranks by) and with the taste removed (popularity stays "
              "in both), and of the oracle (`test_unbiased`'s own process: content alone, what a perfect DecCM "
              "content mode ranks by, its content share dropping popularity as well). The first gain is what "
              "removing the taste is worth when both models are perfect; the second adds removing popularity.", ""]
    table = [["gamma", "taste marginalised", "taste removed", "oracle", "gain of removing taste", "gain of the oracle"]]
    for r in rows[::3]:
        b, c, o = r["truth_backdoor_r10"], r["truth_content_r10"], r["truth_oracle_r10"]
        table.append([f"{r['gamma']:g}", f"{b:.3f}", f"{c:.3f}", f"{o:.3f}", f"{100 * (c / b - 1):+.1f}%",
                      f"{100 * (o / b - 1):+.1f}%"])
    lines.append(markdown_from_rows(table))
    lines += ["", "What removing the confounding from the training data gives the learner itself: CMVAE trained on "
              "the intervened world (`intervened_dataset`: the same world with every train and val upload's track "
              "redrawn by content alone, neither taste nor popularity left; also with the professional videos' rows; "
              f"the mean of {redraws} draws), against the CMVAE trained on the uploads and DecCM's content mode. A "
              "reference point, not a ceiling: it is trained and early-stopped on the distribution it is tested on.",
              ""]
    table = [["gamma", "CMVAE", "CMVAE on the intervened world", "+ professional videos", "DecCM content",
              "gain of the intervened world", "gain of DecCM content"]]
    for r in content:
        base, dec = r["cmvae_r10"], r["deccm_r10"]
        i, ip = r["truth_intervened_r10"], r["truth_intervened_professional_r10"]
        table.append([f"{r['gamma']:g}", f"{base:.3f}", f"{i:.3f}", f"{ip:.3f}", f"{dec:.3f}",
                      f"{100 * (i / base - 1):+.1f}%", f"{100 * (dec / base - 1):+.1f}%"])
    lines.append(markdown_from_rows(table))
    lines += ["", "What DecCM's teacher alone gives: CMVAE trained on the uploads, its scores mixed with DecCM's "
              "teacher as content mode mixes the student's (`TeacherMixture`, the same weight), with no taste path, "
              "KL term or content share, against DecCM's content mode.", "",
              markdown_from_rows([
                  ["gamma", "CMVAE + teacher R@10", "DecCM content R@10", "CMVAE + teacher TVD@10",
                   "DecCM content TVD@10", "gain of CMVAE + teacher", "TVD reduction of CMVAE + teacher"],
                  *([f"{r['gamma']:g}", f"{r['mixed_r10']:.3f}", f"{r['deccm_r10']:.3f}", f"{r['mixed_tvd']:.3f}",
                     f"{r['deccm_tvd']:.3f}", f"{100 * (r['mixed_r10'] / r['cmvae_r10'] - 1):+.1f}%",
                     f"{100 * (1 - r['mixed_tvd'] / r['cmvae_tvd']):+.0f}%"] for r in content)])]
    lines += ["", f"![gamma sweep]({png.name})", ""]
    return lines
