"""Comparison tables (Rich and Markdown) and plots of evaluation results."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bgmrec.eval.protocol import RANK_KEYS

if TYPE_CHECKING:
    from bgmrec.eval.significance import PairedComparison

# (header, path into an evaluate() result). These nine figures of five characters fill an 80-column terminal:
# there Rich folds the headers and wraps the labels to fit them (test_a_narrow_terminal_folds_headers_and_keeps_
# every_figure_whole), and a tenth column is cut off whole. Show a new figure in place of one, or in the JSON only.
COLUMNS = (
    ("R@10", ("full", "recall@10")),
    ("NDCG@10", ("full", "ndcg@10")),
    ("MRR", ("full", "mrr")),
    ("med.rank", ("full", "median_rank")),
    ("s-R@10", ("sampled", "recall@10")),
    ("s-NDCG@10", ("sampled", "ndcg@10")),
    ("IPW s-R@10", ("ipw", "recall@10")),
    ("TVD@10", ("bias", "exposure_tvd@10")),
    ("cov@10", ("bias", "coverage@10")),
)


def metric_at(result: dict | None, path: tuple[str, ...]):
    """The value at ``path`` in an evaluate() result, or None where any level is missing."""
    for key in path:
        if result is None:
            return None
        result = result.get(key)
    return result


def label(result: dict) -> str:
    """Row label: the run's label (or model name), with the inference mode when it has one."""
    name = result.get("label", result["model"])
    mode = result.get("inference_mode")
    return f"{name} [{mode}]" if mode and f"[{mode}]" not in name else name


def rows_for_split(results: list[dict], split: str) -> list[list[str]]:
    """The header and one row per result of one split: label, metrics, and the ratio of R@10 to the
    oracle's when the split has an oracle result."""
    subset = [r for r in results if r["split"] == split]
    oracle = next((r for r in subset if r["model"] == "oracle"), None)
    base = metric_at(oracle, ("full", "recall@10")) if oracle else None
    out = [["model"] + [h for h, _ in COLUMNS] + (["R@10 / oracle"] if oracle else [])]
    for r in subset:
        cells = [label(r)]
        for _, path in COLUMNS:
            v = metric_at(r, path)
            if v is None:
                cells.append("-")
            else:  # a median rank is a whole or a half number, written as such
                cells.append(f"{v:.1f}".removesuffix(".0") if path[-1] == "median_rank" else f"{v:.3f}")
        if oracle:
            ratio = metric_at(r, ("full", "recall@10"))
            cells.append(f"{ratio / base:.2f}" if base and ratio is not None else "-")
        out.append(cells)
    return out


def rich_tables(results: list[dict]):
    """One Rich table per split."""
    from rich.markup import escape
    from rich.table import Table

    tables = []
    for split in dict.fromkeys(r["split"] for r in results):
        n = next(r["n_queries"] for r in results if r["split"] == split)
        t = Table(title=f"split {split} ({n} queries)", caption=fewer_negatives_note(results, split))
        head, *rows = rows_for_split(results, split)
        for i, h in enumerate(head):  # figures keep their width, headers fold: a narrow terminal cut 0.41 to 0.4…
            t.add_column(h, justify="left" if h == "model" else "right", overflow="fold",
                         min_width=None if h == "model" else max(len(row[i]) for row in rows))
        for row in rows:
            t.add_row(*map(escape, row))  # labels hold "[mode]", which Rich would read as markup
        tables.append(t)
    return tables


def fewer_negatives_note(results: list[dict], split: str) -> str | None:
    """What the ``s-`` figures of ``split`` are when its queries have fewer frozen negatives than the papers'
    100 (a split with few candidates, such as new music on a small world), else None."""
    from bgmrec.eval.protocol import PAPERS_NEGATIVES

    negatives = {r["n_negatives"] for r in results if r["split"] == split and r.get("n_negatives") is not None}
    if not negatives or min(negatives) >= PAPERS_NEGATIVES:
        return None
    return (f"s- figures: 1 positive + {min(negatives)} frozen negatives, not the papers' {PAPERS_NEGATIVES} "
            "(the split has fewer candidates)")


def markdown_table(results: list[dict], split: str) -> str:
    """The Markdown table of ``split`` from :func:`~bgmrec.eval.protocol.evaluate` results (one row each)."""
    return markdown_from_rows(rows_for_split(results, split))


PER_GENRE_NOTE = ("Full-catalogue Recall@10 by the genre of each query's positive track; the first row is each "
                  "genre's share of the positives.")


def per_genre_markdown(results: list[dict], split: str) -> str:
    """Recall@10 per genre of the positive track, one row per model (the mean of its results on ``split``,
    e.g. over seeds), under a first row with each genre's share of the split's positives."""
    subset = [r for r in results if r["split"] == split]
    genres = list(subset[0]["per_genre_recall@10"])
    by_label: dict[str, list[dict]] = {}
    for r in subset:
        by_label.setdefault(label(r), []).append(r)

    def mean(values) -> str:
        vals = [v for v in values if v is not None]
        return f"{np.mean(vals):.3f}" if vals else "-"

    first = next(iter(by_label.values()))  # the same positives for every model
    rows = [["share of positives", *(mean(r["bias"]["truth_genre_share"][g] for r in first) for g in genres)]]
    rows += [[name, *(mean(r["per_genre_recall@10"][g] for r in rs) for g in genres)] for name, rs in by_label.items()]
    return markdown_from_rows([["model", *genres], *rows])


def results_report(named: list[tuple[str, dict]], baseline: str | None = None, metric: str = "recall@10",
                   resamples: int = 10_000, level: float = 0.95) -> str:
    """A Markdown report of ``evaluate --json`` results ((file name, result) pairs), for a paper: a table per split
    (:func:`markdown_table`), then what a reviewer checks the figures against: the dataset's fingerprints, each
    row's source (a run folder with the commit and code that trained it, or a score file's SHA-256) and its
    warnings. Rows of one label from different sources (last week's run and this week's, two seeds) are told
    apart by their folder or file. ValueError naming the file for none given, a file that is not such a result,
    results of different datasets (by their fingerprints), and one source's figures on one split given twice.

    With ``baseline`` (a row's label as the tables show it), each split that has it gets a table of every other
    row's change of ``metric`` over it on the same queries, with its paired bootstrap interval and randomisation
    p-value (:func:`~bgmrec.eval.significance.paired_comparison`, as ``bgmrec compare``), from the per-query
    ranks that ``evaluate --json FILE --ranks CSV`` wrote and recorded (:func:`ranks_of`); rows evaluated
    without ``--ranks`` are named as not compared."""
    from bgmrec.data.dataset import FINGERPRINTS

    if not named:
        raise ValueError("give at least one result of bgmrec evaluate --json")
    if baseline is not None:
        report_metric(metric)
    for name, r in named:
        _check_result(name, r)
    first_name, first = named[0]
    data = {k: first["provenance"].get(k) for k in FINGERPRINTS}
    seen: dict[tuple, str] = {}
    for name, r in named:
        other = {k: r["provenance"].get(k) for k in FINGERPRINTS}
        if other != data:
            differ = next(k for k in FINGERPRINTS if other[k] != data[k])
            raise ValueError(f"{name}: figures of another dataset than {first_name}'s ({differ} {other[differ]}, "
                             f"not {data[differ]}): one table holds one dataset's figures")
        key = (_source(r).get("folder") or _source(r).get("sha256"), r.get("inference_mode"), r["split"])
        if key in seen:
            raise ValueError(f"{name}: {label(r)} on {r['split']}, from the same run or file, is already given by "
                             f"{seen[key]}")
        seen[key] = name
    results = [{**r, "label": shown, "inference_mode": None}
               for (_, r), shown in zip(named, _shown_labels([r for _, r in named]), strict=True)]
    shown_names = [r["label"] for r in results]
    if baseline is not None and baseline not in shown_names:
        raise ValueError(f"--baseline {baseline!r}: no row has this label (the rows: "
                         f"{', '.join(dict.fromkeys(shown_names))})")
    lines = []
    for split in dict.fromkeys(r["split"] for r in results):
        n = {r["n_queries"] for r in results if r["split"] == split}
        lines += [f"### `{split}` ({', '.join(map(str, sorted(n)))} queries)", "", markdown_table(results, split), ""]
        if baseline is not None:
            lines += _paired_section([(name, shown) for (name, _), shown in zip(named, results, strict=True)
                                      if shown["split"] == split], baseline, metric, resamples, level)
    lines += ["Dataset `" + str(first["provenance"].get("data")) + "`, " + ", ".join(
        f"{k} {v}" for k, v in data.items()) + ".", ""]
    for (name, r), shown in zip(named, results, strict=True):
        source = _source(r)
        trained = source.get("trained") or {}
        made = (f"score file `{source['scores']}` (SHA-256 {source.get('sha256')})" if "scores" in source else
                f"run `{source.get('folder')}` (trained at commit {trained.get('commit')}, code "
                f"{trained.get('code', 'unrecorded')})")
        if isinstance(r.get("ranks_file"), dict):
            made += f"; per-query ranks `{r['ranks_file'].get('path')}`"
        lines.append(f"- {shown['label']} on `{r['split']}`: {made}; from `{name}`, computed by bgmrec "
                     f"{r['provenance'].get('bgmrec_version')} at commit {r['provenance'].get('commit')}; "
                     f"warnings: {'; '.join(r.get('warnings') or []) or 'none'}")
    return "\n".join(lines) + "\n"


def _shown_labels(results: list[dict]) -> list[str]:
    """Each result's label in the report: :func:`label`, and where two results of one split share it (two seeds, last
    week's run and this week's), the end of each one's source path that tells them apart (``cmvae (s0/cmvae)``,
    ``cmvae (s1/cmvae)``; the folder's name alone named both ``cmvae (cmvae)``)."""
    shown = [label(r) for r in results]
    groups: dict[tuple[str, str], list[int]] = {}
    for i, r in enumerate(results):
        groups.setdefault((shown[i], r["split"]), []).append(i)
    for rows in (rows for rows in groups.values() if len(rows) > 1):
        paths = [Path(_source(results[i]).get("folder") or _source(results[i]).get("scores") or "").parts
                 for i in rows]
        depth = next((d for d in range(1, max(map(len, paths)) + 1) if len({p[-d:] for p in paths}) == len(paths)),
                     None)
        for i, parts in zip(rows, paths, strict=True):
            where = str(Path(*parts[-depth:])) if depth is not None and parts else \
                f"{Path(*parts) if parts else 'no path'}, SHA-256 {str(_source(results[i]).get('sha256'))[:12]}"
            shown[i] = f"{shown[i]} ({where})"
    return shown


def report_metric(metric: str) -> tuple[str, str]:
    """(protocol, rank metric) of a metric a report's paired table can compare, protocol "full" or "sampled": one
    :func:`~bgmrec.eval.metrics.compared_protocol` names, but not an IPW one, since the ranks files hold no IPW
    weights (:class:`~bgmrec.data.dataset.FieldError` naming ``metric``; an IPW figure had been paired on the full
    ranks and labelled IPW)."""
    from bgmrec.data.dataset import FieldError
    from bgmrec.eval.metrics import compared_protocol

    protocol, rank_metric = compared_protocol(metric)
    if protocol == "ipw":
        raise FieldError(f"{{metric}} {metric}: the ranks files evaluate --ranks writes hold no IPW weights; bgmrec "
                         f"compare --metric {metric} pairs it on the dataset", "metric")
    return protocol, rank_metric


def _paired_section(named: list[tuple[str, dict]], baseline: str, metric: str, resamples: int,
                    level: float) -> list[str]:
    """The lines of one split's paired table against the row labelled ``baseline`` (none when the split lacks it)."""
    from bgmrec.eval.metrics import query_gains
    from bgmrec.eval.significance import paired_comparison

    base = next(((name, r) for name, r in named if r["label"] == baseline), None)
    if base is None:
        return [f"No paired comparison on this split: it has no row {baseline}.", ""]
    if base[1].get("ranks_file") is None:
        raise ValueError(f"{base[0]}: the baseline {baseline} was evaluated without --ranks; a paired comparison "
                         "needs its per-query ranks (bgmrec evaluate ... --json FILE --ranks CSV)")
    protocol, rank_metric = report_metric(metric)
    queries, ranks = ranks_of(*base, protocol)
    gains = query_gains(ranks, rank_metric)
    compared, without = [], []
    for name, r in named:
        if r is base[1]:
            continue
        if r["model"] == "oracle":  # the upper bound, not a contender
            without.append(f"{r['label']} (the upper bound)")
            continue
        if r.get("ranks_file") is None:
            without.append(f"{r['label']} (evaluated without --ranks)")
            continue
        their_queries, their_ranks = ranks_of(name, r, protocol)
        if their_queries != queries:
            raise ValueError(f"{r['ranks_file']['path']}: not the queries of the baseline's ranks "
                             f"({base[1]['ranks_file']['path']}) in the same order; pairs need the same queries")
        compared.append((r["label"], paired_comparison(gains, query_gains(their_ranks, rank_metric), metric,
                                                       resamples, level)))
    lines = [paired_note(baseline, metric, level), ""]
    if compared:
        lines += [paired_markdown({metric: compared}, baseline), ""]
    if without:
        lines += [f"Not compared: {', '.join(without)}.", ""]
    return lines


def ranks_of(name: str, result: dict, protocol: str = "full") -> tuple[list[tuple[str, str, str]], np.ndarray]:
    """(the queries as (video, track, uploader), their ranks in ``protocol``: "full" (the full catalogue) or
    "sampled" (the 1+K protocol)) from the CSV that ``evaluate --ranks`` wrote for ``result`` (the result file
    ``name``), found at the path the result records or, moved together, beside the result file. ValueError naming
    the file when it is missing, has changed since (its SHA-256), is not such a CSV, or has no sampled ranks (a
    split without frozen negatives)."""
    import csv
    import hashlib
    import io

    if protocol not in ("full", "sampled"):
        raise ValueError(f"protocol must be 'full' or 'sampled' (the ranks files' columns), got {protocol!r}")

    recorded = result["ranks_file"]
    if not (isinstance(recorded, dict) and isinstance(recorded.get("path"), str)
            and isinstance(recorded.get("sha256"), str)):
        raise ValueError(f"{name}: field ranks_file should hold the path and sha256 of evaluate's --ranks CSV")
    places = list(dict.fromkeys([Path(recorded["path"]), Path(name).parent / Path(recorded["path"]).name]))
    found = [(path, path.read_bytes()) for path in places if path.is_file()]  # where written, or moved beside
    if not found:
        raise ValueError(f"{name}: its ranks file {recorded['path']} is missing (nor is "
                         f"{places[-1].name} beside it)")
    path, data = next(((p, d) for p, d in found if hashlib.sha256(d).hexdigest() == recorded["sha256"]), found[0])
    if hashlib.sha256(data).hexdigest() != recorded["sha256"]:
        raise ValueError(f"{path}: has changed since bgmrec evaluate wrote it for {name} (another SHA-256); "
                         "evaluate again with --ranks")
    try:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8"))))
        if not rows or ",".join(rows[0]) != RANKS_HEADER or any(len(row) != 5 for row in rows[1:]):
            raise ValueError
        column = [row[4 if protocol == "sampled" else 3] for row in rows[1:]]
        ranks = None if "" in column and protocol == "sampled" else np.array([int(c) for c in column], np.int64)
    except (ValueError, csv.Error):  # also undecodable bytes and a rank that is no integer
        raise ValueError(f"{path}: not a ranks file of bgmrec evaluate (columns {RANKS_HEADER})") from None
    if ranks is None:
        raise ValueError(f"{path}: no sampled ranks (its split has no frozen negatives); compare full-catalogue ranks")
    return [tuple(row[:3]) for row in rows[1:]], ranks


def _source(result: dict) -> dict:
    """The run folder or score file a result's figures come from, as its provenance records it."""
    return next(iter(result["provenance"]["runs"].values()))


def _check_result(name: str, r) -> None:
    """ValueError naming ``name`` unless ``r`` has the fields of an ``evaluate --json`` result that a report reads."""
    def typed(value, kind) -> bool:
        return isinstance(value, kind) and not isinstance(value, bool)

    runs = r.get("provenance", {}).get("runs") if isinstance(r, dict) and isinstance(r.get("provenance"), dict) \
        else None
    problems = [field for field, ok in (
        ("split", isinstance(r, dict) and typed(r.get("split"), str)),
        ("model", isinstance(r, dict) and typed(r.get("model"), str)),
        ("n_queries", isinstance(r, dict) and typed(r.get("n_queries"), int)),
        ("full", isinstance(r, dict) and isinstance(r.get("full"), dict)),
        ("provenance.runs", isinstance(runs, dict) and len(runs) == 1
         and all(isinstance(v, dict) and (typed(v.get("folder"), str) or typed(v.get("scores"), str))
                 for v in runs.values())),
        ("warnings", isinstance(r, dict) and (r.get("warnings") is None or (
            isinstance(r.get("warnings"), list) and all(isinstance(w, str) for w in r["warnings"]))))) if not ok]

    def number_or_none(path: tuple[str, ...]) -> bool:  # a figure the tables show ("x" failed in its formatting)
        value = r
        for key in path:
            if value is None:
                return True
            if not isinstance(value, dict):
                return False
            value = value.get(key)
        return value is None or typed(value, int | float)

    if not problems and isinstance(r, dict):
        problems = [".".join(path) for _, path in COLUMNS if not number_or_none(path)]
    if problems:
        raise ValueError(f"{name}: not a result of bgmrec evaluate --json (field {problems[0]} is missing or of "
                         "another type)")
    # an edited figure went into the paper's table as it was (7.500, a heading of -5 queries)
    if r["n_queries"] < 1:
        raise ValueError(f"{name}: field n_queries is {r['n_queries']}; evaluate ranks at least one query")
    for _, path in COLUMNS:
        value = metric_at(r, path)
        lowest, highest = (1, math.inf) if path[-1] == "median_rank" else (0, 1)
        slack = 1e-9  # a weighted mean of hits and misses can round past 1 (1 + 2**-52)
        if value is not None and not (math.isfinite(value) and lowest - slack <= value <= highest + slack):
            raise ValueError(f"{name}: field {'.'.join(path)} is {value!r}, which evaluate never gives (a "
                             + ("rank, at least 1)" if lowest == 1 else "rate, from 0 to 1)"))


def markdown_from_rows(rows: list[list[str]]) -> str:
    """A Markdown table from its header row and its rows (pipes in cells escaped)."""
    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in body]
    return "\n".join(lines)


RANKS_HEADER = "video,track,uploader,full_rank,sampled_rank"  # evaluate --ranks's columns


def paired_note(baseline: str, metric: str = "Recall@10", level: float = 0.95) -> str:
    """What a paired table's cells are: the sentence above it."""
    from bgmrec.eval.metrics import compared_protocol

    protocol, rank_metric = compared_protocol(metric)
    return (f"Change of {'sampled (1+K)' if protocol == 'sampled' else 'full-catalogue'} {rank_metric} "
            f"over {baseline} on the same queries, with its "
            f"{level * 100:.10g}% paired bootstrap interval and the p-value of a paired "
            "randomisation test (`bgmrec compare`): how sure each figure is given these trained models and queries, "
            "not how it varies over training seeds.")


def paired_against(results: list[dict], baseline: str, split: str, metric: str = "recall@10",
                   resamples: int = 10_000, level: float = 0.95) -> list[tuple[str, PairedComparison]]:
    """(label, paired comparison with ``baseline``) for every other model of ``split``, on the same queries.

    The results must come from ``evaluate(..., keep_ranks=True)`` (their ``"full_ranks"``); the oracle
    and the baseline itself are skipped; empty when the baseline has no result on ``split``.
    """
    from bgmrec.eval.metrics import query_gains
    from bgmrec.eval.significance import paired_comparison

    subset = [r for r in results if r["split"] == split]
    base = next((r for r in subset if label(r) == baseline), None)
    if base is None:
        return []
    gains = query_gains(base["full_ranks"], metric)
    return [(label(r), paired_comparison(gains, query_gains(r["full_ranks"], metric), metric, resamples, level))
            for r in subset if r is not base and r["model"] != "oracle"]


def without_ranks(results: list[dict]) -> list[dict]:
    """The results without their per-query ranks (``"full_ranks"``, ``"sampled_ranks"``): what is written as JSON."""
    return [{k: v for k, v in r.items() if k not in RANK_KEYS} for r in results]


def change_cell(c: PairedComparison) -> str:
    """A relative change with its interval and p-value, e.g. "+4.0% [+1.1%, +6.9%] p=0.006"."""
    lo, hi = c.relative_change_ci
    if np.isnan(c.relative_change):
        return "-"
    interval = "" if np.isnan(lo) else f" [{lo:+.1%}, {hi:+.1%}]"
    return f"{c.relative_change:+.1%}{interval} {p_value_text(c.p_value, c.resamples)}"


def p_value_text(p: float, resamples: int) -> str:
    """"p=0.033"; the smallest p-value a Monte Carlo test can give, 1 / (1 + B), as a bound rounded up
    ("p<1e-04" for B = 10,000; "p≤1e-03" for B = 999, whose bound is exactly 1e-3)."""
    floor = 1 / (1 + resamples)
    if p > floor:
        return f"p={p:.2g}"
    mantissa, exponent = f"{floor:.6e}".split("e")
    shown = math.ceil(float(mantissa) - 1e-9) * 10.0 ** int(exponent)  # one significant digit, rounded up
    return f"p{'<' if shown > floor * (1 + 1e-9) else '≤'}{shown:.0e}"


def paired_rows(columns: dict[str, list[tuple[str, PairedComparison]]], baseline: str) -> list[list[str]]:
    """Header and rows: one row per model, one column per set of comparisons (e.g. per seed), each cell
    the model's change over ``baseline`` (:func:`change_cell`)."""
    names = list(dict.fromkeys(name for comps in columns.values() for name, _ in comps))
    cells = {(col, name): c for col, comps in columns.items() for name, c in comps}
    rows = [["model", *(f"vs {baseline}, {col}" for col in columns)]]
    rows += [[name, *(change_cell(cells[col, name]) if (col, name) in cells else "-" for col in columns)]
             for name in names]
    return rows


def paired_markdown(columns: dict[str, list[tuple[str, PairedComparison]]], baseline: str) -> str:
    """:func:`paired_rows` as a Markdown table."""
    return markdown_from_rows(paired_rows(columns, baseline))


def paired_rich(columns: dict[str, list[tuple[str, PairedComparison]]], baseline: str, title: str):
    """:func:`paired_rows` as a Rich table."""
    from rich.markup import escape
    from rich.table import Table

    head, *rows = paired_rows(columns, baseline)
    t = Table(title=title)
    for i, h in enumerate(head):
        t.add_column(h, justify="left" if i == 0 else "right")
    for row in rows:
        t.add_row(*map(escape, row))
    return t


def plot_recall_curves(results: list[dict], split: str, out: Path) -> Path:
    """Full-catalogue Recall@K against K for every model of one split (oracle dashed)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.set_prop_cycle(color=plt.cm.tab20.colors)  # up to 20 distinguishable series
    for r in (r for r in results if r["split"] == split):
        ks = [int(k) for k in r["full_recall_curve"]]
        ax.plot(ks, list(r["full_recall_curve"].values()), "--" if r["model"] == "oracle" else "-",
                marker="o", ms=3, label=label(r))
    ax.set_xscale("log")
    ax.set_xlabel("K (log scale)")
    ax.set_ylabel("full-catalogue Recall@K")
    ax.set_title(f"Recall@K on {split}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return save_figure(fig, out, dpi=110)


def plot_genre_shares(results: list[dict], split: str, out: Path) -> Path:
    """Genre shares of each model's top-10 lists beside the genre shares of the true positives."""
    plt = pyplot()
    subset = [r for r in results if r["split"] == split]
    genres = list(subset[0]["bias"]["truth_genre_share"])
    series = [("truth (positives)", subset[0]["bias"]["truth_genre_share"])]
    series += [(label(r), r["bias"]["genre_share@10"]) for r in subset]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(7, 1.2 * len(genres) + 0.25 * len(series)), 4.5))
    x = np.arange(len(genres))
    colors = ["black", *plt.cm.tab20.colors]
    for i, (name, shares) in enumerate(series):
        ax.bar(x + i * width, [shares[g] for g in genres], width, label=name, color=colors[i % len(colors)])
    ax.set_xticks(x + 0.4 - width / 2, genres)
    ax.set_ylabel("share of top-10 slots")
    ax.set_title(f"Genre exposure in top-10 lists vs the truth, {split}")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return save_figure(fig, out, dpi=110)


def save_figure(fig, out: Path, dpi: int) -> Path:
    """Write the matplotlib figure ``fig`` to ``out`` (its format by the suffix) through a temporary file renamed
    into place (:func:`~bgmrec.data.dataset.replace_atomically`): a stop or failure while it is drawn leaves the
    earlier plot whole, never a truncated one, and no temporary file; then close it."""
    from bgmrec.data.dataset import replace_atomically

    try:
        replace_atomically(Path(out), lambda tmp: fig.savefig(tmp, dpi=dpi, format=Path(out).suffix.lstrip(".")))
    finally:
        pyplot().close(fig)
    return Path(out)


def pyplot():
    """matplotlib's pyplot drawing to files only (the Agg backend: no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
