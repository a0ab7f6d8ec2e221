"""``bgmrec demo``: simulate the default world, train every model, evaluate, report.

Application code (it writes files and prints); the library parts it uses take explicit arguments.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from bgmrec.data.dataset import load_dataset, read_json, write_files_together, write_json_atomic
from bgmrec.eval.protocol import EVAL_SPLITS, evaluate_run

BASELINE = "cmvae"  # the model every other one is compared with, query by query
DEMO_MODELS = ("random", "popularity", "cca", "twotower-hinge", "twotower-infonce", "cmvae", "cmvae-visual",
               "cmvae-concat", "cmvae-nocrossgen", "cmvae-noprior", "deccm", "deccm-noadjust", "deccm-noteacher",
               "deccm-teachermix", "oracle")

#: what ``bgmrec demo`` writes in its ``--out`` (glob patterns): a folder holding nothing else is a demo's, reused
DEMO_ENTRIES = ("data", "runs", "teachers", "report.md", "results.json", "recall_at_k_*.png", "genre_shares_*.png")


def check_own_folder(out: Path, option: str, what: str, own: Sequence[str]) -> None:
    """Refuse (a ValueError naming ``out``), before any work, an output folder that is not empty and holds
    anything but entries whose names match ``own`` (glob patterns of what the command writes there, so a folder
    ``what`` it wrote before passes, and is reused), as ``tune`` refuses its ``--out`` (the same listing,
    :func:`bgmrec.tune.output_folder_contents`: what a killed write leaves behind does not count). A dataset, a
    model run or another command's folder is never written into, so a later command replacing it whole
    (``simulate`` into a dataset folder) cannot delete this command's output with it."""
    from fnmatch import fnmatchcase

    from bgmrec.data.dataset import describe_folder
    from bgmrec.tune import output_folder_contents

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{option} {out}: exists and is not a folder; give a new or empty folder")
    foreign = sorted(p.name for p in output_folder_contents(out)
                     if not any(fnmatchcase(p.name, pattern) for pattern in own))
    if not foreign:
        return
    described = describe_folder(out, "manifest.json", "a dataset")
    if not described.startswith("it is "):  # no bgmrec folder of another kind: what is there
        described = f"it holds {', '.join(foreign[:3])}" + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
    raise ValueError(f"{option} {out}: the folder is not empty and is not {what} ({described}); refusing to write "
                     "into it (give a new or empty folder)")


def check_world_folder(folder: Path, option: str) -> None:
    """Refuse (a ValueError naming ``folder``), before any work, a demo's or bench world's folder whose ``data`` is
    not a simulated world (a dataset of the user's, which simulating there would replace) or whose ``runs`` and
    ``teachers`` hold a run trained on other data (which training there would replace): the names alone, ``data``
    and ``runs``, are those of a project's own layout too."""
    from bgmrec.data.dataset import dataset_fingerprint
    from bgmrec.models.base import read_run_record

    folder = Path(folder)
    data = folder / "data"
    manifest = data / "manifest.json"
    occupied = any(data.iterdir()) if data.is_dir() else data.exists()
    world = manifest.is_file() and isinstance(read_json(manifest).get("provenance", {}).get("world"), dict)
    if occupied and not world:
        raise ValueError(f"{option}: {data} is not a simulated world (a dataset of yours?), which the command would "
                         "replace; give a new or empty folder")
    fingerprint = dataset_fingerprint(data) if world else None
    for kind in ("runs", "teachers"):
        for run in sorted((folder / kind).iterdir()) if (folder / kind).is_dir() else []:
            record = read_run_record(run) if run.is_dir() else {}
            trained_on = record.get("data")
            here = trained_on is None or isinstance(trained_on, str) and (
                Path(trained_on) == data.resolve() or (  # the folder moved since: its world
                    fingerprint is not None and record.get("data_fingerprint") == fingerprint))
            if not here:
                raise ValueError(f"{option}: {run} was trained on {trained_on}, not on this folder's world, and the "
                                 "command would replace it; give a new or empty folder")


def world_parameters(scale: str, seed: int, world: dict[str, str] | None = None):
    """The :class:`~bgmrec.data.simulate.WorldConfig` of preset ``scale`` at ``seed`` with the parameters
    ``world`` changed (values as given on the command line); a ValueError naming a bad one, or ``seed``."""
    from bgmrec.data.simulate import world_config
    from bgmrec.models.base import with_overrides

    if "seed" in (world or {}):
        raise ValueError("--world seed=...: a benchmark's seeds are its --seeds")
    return with_overrides(world_config(scale, seed=seed), world or {})


def ensure_world(scale: str, seed: int, data: Path, console: Console, world: dict[str, str] | None = None) -> None:
    """Simulate the world (:func:`world_parameters`) into ``data`` unless the same world is already there."""
    from bgmrec.data.simulate import simulate_and_save
    from bgmrec.features.cache import progress_steps

    cfg = world_parameters(scale, seed, world)
    manifest = data / "manifest.json"
    if manifest.is_file() and read_json(manifest).get("provenance", {}).get("world") == cfg.to_json():
        console.print(f"reusing the {scale} world in {data}")
        return
    t0 = time.perf_counter()
    with progress_steps(f"simulating the {scale} world (seed {seed})", not console.quiet) as step:  # on stderr
        simulate_and_save(cfg, data, step)
    console.print(f"simulated the {scale} world into {data} ({time.perf_counter() - t0:.1f} s)")


def run_demo(scale: str, out: Path, seed: int, models: list[str] | None, console: Console) -> list[dict]:
    """``bgmrec demo``: simulate the ``scale`` world with ``seed`` into ``out`` (reused when it matches), train
    ``models`` (None: :data:`DEMO_MODELS`) beside one shared teacher, evaluate every mode of each on the
    evaluation splits, print the tables and write ``out``'s report; returns one result object per evaluation.
    ``results.json`` and ``report.md`` are renamed into place together
    (:func:`~bgmrec.data.dataset.write_files_together`): a stop before leaves an earlier demo's pair as it was."""
    from bgmrec.eval import report
    from bgmrec.models.packages import model_package, packages_note
    from bgmrec.models.registry import model_class
    from bgmrec.runs import TEACHERS, SharedTeachers, git_commit, machine, train_model

    for name in models or DEMO_MODELS:  # a typo or an unusable class fails now, not after the world and the
        model_class(name)  # models trained before it
    check_own_folder(out, "--out", "a folder of bgmrec demo", DEMO_ENTRIES)
    check_world_folder(out, f"--out {out}")
    t_start = time.perf_counter()
    out = Path(out)
    data = out / "data"
    ensure_world(scale, seed, data, console)
    ds = load_dataset(data)
    results: list[dict] = []
    timings = {}
    teachers = SharedTeachers(out / TEACHERS, ds, console, progress=True)  # DecCM and its ablations share one teacher
    for name in models or DEMO_MODELS:
        run = out / "runs" / name
        _, seconds = train_model(data, name, run, seed=seed, teacher=teachers.for_model(name, {"seed": seed}),
                                 progress=True)
        timings[name] = seconds
        console.print(f"trained {name} in {seconds:.1f} s")
        results.extend({**r, "seed": seed} for r in evaluate_run(run, ds, label=name, keep_ranks=True))
    paired = {split: report.paired_against(results, BASELINE, split) for split in EVAL_SPLITS}
    results = report.without_ranks(results)
    for table in report.rich_tables(results):
        console.print(table)
    for split, comps in paired.items():
        if comps:
            console.print(report.paired_rich({f"seed {seed}": comps}, BASELINE,
                                      f"{split}: change of Recall@10 over {BASELINE}, 95% paired interval, p-value"))
    plots = []
    for split in EVAL_SPLITS:
        if any(r["split"] == split for r in results):
            plots.append(report.plot_recall_curves(results, split, out / f"recall_at_k_{split}.png"))
    for split in ("test", "test_unbiased"):
        if any(r["split"] == split for r in results):
            plots.append(report.plot_genre_shares(results, split, out / f"genre_shares_{split}.png"))
    wall = time.perf_counter() - t_start
    command = shlex.join(["bgmrec", "demo", "--scale", scale, "--seed", str(seed), "--out", str(out),
                          *(["--models", ",".join(models)] if models else [])])
    lines = [
        f"# bgmrec demo: the `{scale}` simulated world, seed {seed}",
        "",
        f"Made by `{command}` at commit {git_commit()} on "
        f"{machine()}; wall time {wall:.0f} s{packages_note({m: model_package(m) for m in models or DEMO_MODELS})}.",
        "",
        "Full-catalogue figures rank each query's positive among all of the split's candidate tracks "
        "(existing music for `test`/`test_unbiased`, the held-out tracks for `test_new_music`); `s-` "
        "figures are the papers' sampled protocol (1 positive + the frozen negatives); IPW weights each "
        "query by 1 / (1 + the training count of its track). DecCM rows name their inference mode: "
        "`backdoor` (the paper's estimand), `content` (taste path off), `personalised` (the uploader's own taste). "
        "`test_unbiased` has the same videos as `test` with the positive redrawn without taste or popularity.",
        "",
    ]
    for split in EVAL_SPLITS:
        if any(r["split"] == split for r in results):
            lines += [f"## {split}", "", report.markdown_table(results, split), ""]
            if paired[split]:
                lines += [report.paired_note(BASELINE), "",
                          report.paired_markdown({f"seed {seed}": paired[split]}, BASELINE), ""]
            lines += [report.PER_GENRE_NOTE, "", report.per_genre_markdown(results, split), ""]
    lines += ["## Training time (seconds)", "",
              report.markdown_from_rows([["model", "seconds"], *([k, f"{v:.1f}"] for k, v in timings.items())])]
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    write_files_together(out, {"results.json": lambda tmp: write_json_atomic(tmp, results),
                               "report.md": lambda tmp: tmp.write_text("\n".join(lines), encoding="utf-8")})
    console.print(f"wrote {out / 'report.md'}, {len(plots)} plots and results.json; demo wall time {wall:.0f} s")
    return results

