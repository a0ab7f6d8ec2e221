"""The comparison tables: cells as written, labels that cannot break a Markdown table."""

from __future__ import annotations

from pathlib import Path

import pytest

from bgmrec.eval.report import COLUMNS, markdown_table


def _result(model: str, median: float, recall: float = 0.5) -> dict:
    return {"model": model, "split": "test", "full": {"recall@10": recall, "median_rank": median}}


def test_median_ranks_are_written_as_they_are_not_rounded_to_even():
    table = markdown_table([_result("a", 96.5), _result("b", 89.5), _result("c", 7.0), _result("d", 1234567.0)],
                           "test")
    column = 1 + [h for h, _ in COLUMNS].index("med.rank")
    medians = [line.split(" | ")[column] for line in table.splitlines()[2:]]
    assert medians == ["96.5", "89.5", "7", "1234567"]


def test_a_pipe_in_a_label_is_escaped():
    line = markdown_table([_result("left|right", 3.0)], "test").splitlines()[2]
    assert line.startswith("| left\\|right | ")
    assert line.replace("\\|", "").count("|") == len(COLUMNS) + 2  # label and metrics: no oracle, no ratio


def test_the_ratio_to_the_oracle_shows_only_beside_an_oracle():
    alone = markdown_table([_result("a", 3.0)], "test").splitlines()
    assert "oracle" not in alone[0]
    both = markdown_table([_result("a", 3.0, recall=0.2), _result("oracle", 1.0, recall=0.8)], "test").splitlines()
    assert both[0].endswith("| R@10 / oracle |") and both[2].endswith("| 0.25 |") and both[3].endswith("| 1.00 |")


def test_one_run_s_results_in_two_inference_modes_are_two_rows():
    """evaluate --json of one DecCM run in backdoor and in content mode, on one split: two rows, not the second
    refused as the same source's figures given twice."""
    from bgmrec.eval.report import results_report

    def result(mode: str, recall: float) -> dict:
        return {**_result("deccm", 2.0, recall), "n_queries": 4, "inference_mode": mode,
                "provenance": {"runs": {"run": {"folder": "/runs/deccm"}}}}

    report = results_report([("b.json", result("backdoor", 0.5)), ("c.json", result("content", 0.75))])
    assert "| deccm [backdoor] | " in report and "| deccm [content] | " in report
    with pytest.raises(ValueError, match=r"^c.json: deccm \[content\] on test, from the same run or file, is "
                                         r"already given by b.json$"):
        results_report([("b.json", result("content", 0.5)), ("c.json", result("content", 0.75))])


def test_paired_against_compares_every_other_model_with_the_baseline_on_its_queries():
    import numpy as np

    from bgmrec.eval.report import paired_against, paired_markdown, without_ranks

    def res(model, ranks, split="test", mode=None):
        r = {"model": model, "split": split, "full_ranks": np.array(ranks)}
        return r | ({"inference_mode": mode} if mode else {})

    results = [res("cmvae", [1, 20, 3, 30]), res("deccm", [1, 2, 3, 30], mode="content"),
               res("oracle", [1, 1, 1, 1]), res("deccm", [1, 2, 3, 4], split="val")]
    comps = paired_against(results, "cmvae", "test", resamples=500)
    assert [name for name, _ in comps] == ["deccm [content]"]  # not the baseline, the oracle or another split
    c = comps[0][1]
    assert (c.baseline, c.candidate, c.relative_change) == (0.5, 0.75, 0.5)  # recall@10: 2/4 -> 3/4
    assert paired_against(results, "cmvae", "val") == []  # no baseline there
    table = paired_markdown({"seed 0": comps, "seed 1": []}, "cmvae").splitlines()
    assert table[0] == "| model | vs cmvae, seed 0 | vs cmvae, seed 1 |"
    assert table[2].startswith("| deccm [content] | +50.0% ") and table[2].endswith(" p=1 | - |")
    assert all("full_ranks" not in r for r in without_ranks(results)) and "full_ranks" in results[0]
    assert without_ranks([{"model": "m", "sampled_ranks": np.array([1])}]) == [{"model": "m"}]


def test_change_cell_writes_the_smallest_monte_carlo_p_value_as_a_bound():
    import numpy as np

    from bgmrec.eval.report import change_cell
    from bgmrec.eval.significance import paired_comparison

    c = paired_comparison(np.full(400, 0.5), np.ones(400), resamples=999)  # p = 1 / (1 + 999) exactly
    assert change_cell(c) == "+100.0% [+100.0%, +100.0%] p≤1e-03"
    c = paired_comparison(np.full(400, 0.5), np.ones(400), resamples=300)  # p = 1/301 = 0.00332
    assert change_cell(c).endswith(" p<4e-03")  # a bound rounded up, never down
    assert change_cell(paired_comparison(np.zeros(3), np.ones(3))) == "-"


def test_per_genre_table_averages_each_models_results_and_skips_empty_genres():
    from bgmrec.eval.report import per_genre_markdown

    def res(model, recalls, shares=(0.75, 0.25), split="test"):
        return {"model": model, "split": split, "per_genre_recall@10": dict(zip(("pop", "folk"), recalls, strict=True)),
                "bias": {"truth_genre_share": dict(zip(("pop", "folk"), shares, strict=True))}}

    results = [res("cmvae", (0.5, None)), res("cmvae", (1.0, 0.25), shares=(0.5, 0.5)), res("random", (0.0, 0.0)),
               res("cmvae", (0.0, 0.0), split="val")]
    assert per_genre_markdown(results, "test").splitlines() == [
        "| model | pop | folk |", "|---|---|---|",
        "| share of positives | 0.625 | 0.375 |",  # the mean over cmvae's two seeds
        "| cmvae | 0.750 | 0.250 |",  # a seed without a folk query is left out of folk's mean
        "| random | 0.000 | 0.000 |"]


def test_a_split_with_fewer_negatives_than_the_papers_says_so_under_its_table():
    from bgmrec.eval.report import fewer_negatives_note, rich_tables

    results = [{**_result("a", 3.0), "n_queries": 5, "n_negatives": 29},
               {**_result("a", 3.0), "split": "val", "n_queries": 5, "n_negatives": 100}]
    assert fewer_negatives_note(results, "test") == ("s- figures: 1 positive + 29 frozen negatives, not the papers' "
                                                     "100 (the split has fewer candidates)")
    assert fewer_negatives_note(results, "val") is None
    assert [t.caption for t in rich_tables(results)] == [fewer_negatives_note(results, "test"), None]


def test_a_narrow_terminal_folds_headers_and_keeps_every_figure_whole(tiny_ds):
    # in an 80-column terminal evaluate's table showed cov@10 as "0.4…" and two columns both as "s-R@…"
    import io

    from rich.console import Console

    from bgmrec.eval.protocol import evaluate
    from bgmrec.eval.report import rich_tables, rows_for_split
    from bgmrec.models.base import FeatureSpec, SplitView
    from bgmrec.models.registry import build

    model = build("popularity", FeatureSpec.of(tiny_ds), {}).fit(SplitView(tiny_ds, "train"))
    results = [{**evaluate(model, tiny_ds, "test"), "label": "popularity"}]
    out = io.StringIO()
    Console(file=out, width=80).print(*rich_tables(results))
    text = out.getvalue()
    assert "…" not in text
    head, row = rows_for_split(results, "test")
    assert all(cell in text for cell in row[1:])
    assert max(len(line) for line in text.splitlines()) <= 80 or len(" ".join(row)) > 80


def test_every_column_of_the_tables_names_a_figure_evaluate_reports(tiny_ds):
    """evaluate's tables (COLUMNS) and the benchmark's (bench.QUALITY_METRICS) read figures by path: each path is
    a figure of an evaluate() result (a renamed or dropped figure showed as "-" in every row)."""
    from bgmrec.bench import QUALITY_METRICS
    from bgmrec.eval.protocol import evaluate
    from bgmrec.eval.report import metric_at
    from bgmrec.models.base import FeatureSpec, SplitView
    from bgmrec.models.registry import build

    model = build("popularity", FeatureSpec.of(tiny_ds), {}).fit(SplitView(tiny_ds, "train"))
    result = evaluate(model, tiny_ds, "test")
    for header, path in (*COLUMNS, *QUALITY_METRICS):
        assert isinstance(metric_at(result, path), float), (header, path)


def test_ranks_of_reads_the_protocol_s_column_and_names_a_split_without_sampled_ranks(tmp_path):
    import hashlib

    from bgmrec.eval.report import RANKS_HEADER, ranks_of

    def result(text: str) -> dict:
        (tmp_path / "r.csv").write_text(text)
        return {"ranks_file": {"path": str(tmp_path / "r.csv"),
                               "sha256": hashlib.sha256(text.encode()).hexdigest()}}

    both = result(f"{RANKS_HEADER}\nv0,t1,3,17,2\nv1,t0,-1,1,1\n")
    assert ranks_of("r.json", both)[1].tolist() == [17, 1]
    queries, sampled = ranks_of("r.json", both, "sampled")
    assert queries == [("v0", "t1", "3"), ("v1", "t0", "-1")] and sampled.tolist() == [2, 1]
    full_only = result(f"{RANKS_HEADER}\nv0,t1,3,17,\n")
    assert ranks_of("r.json", full_only)[1].tolist() == [17]
    with pytest.raises(ValueError, match=r"r\.csv: no sampled ranks \(its split has no frozen negatives\); compare "
                                         r"full-catalogue ranks$"):
        ranks_of("r.json", full_only, "sampled")


def test_the_plots_draw_each_result_s_own_figures(tmp_path, monkeypatch):
    """The plot tests checked only that a PNG was written: here the drawn series are read back (the truth's bars
    are the positives' shares, each model's its top-10 shares; the recall curves are each model's, the oracle
    dashed)."""
    import numpy as np

    from bgmrec.eval import report

    drawn = []
    monkeypatch.setattr(report, "save_figure", lambda fig, out, dpi: (drawn.append(fig), out)[1])
    truth = {"pop": 0.6, "rock": 0.3, "folk": 0.1}
    results = [{"model": m, "split": "test", "inference_mode": mode,
                "full_recall_curve": {"1": r1, "10": r1 + 0.2, "100": r1 + 0.4},
                "bias": {"truth_genre_share": truth, "genre_share@10": shares}}
               for m, mode, r1, shares in (("cmvae", None, 0.1, {"pop": 0.8, "rock": 0.15, "folk": 0.05}),
                                           ("deccm", "content", 0.2, {"pop": 0.5, "rock": 0.3, "folk": 0.2}),
                                           ("oracle", None, 0.3, {"pop": 0.55, "rock": 0.3, "folk": 0.15}))]
    results.append({**results[0], "split": "val", "model": "other"})  # another split's: not drawn

    report.plot_genre_shares(results, "test", tmp_path / "g.png")
    bars = drawn[-1].axes[0].containers
    assert [c.get_label() for c in bars] == ["truth (positives)", "cmvae", "deccm [content]", "oracle"]
    for c, shares in zip(bars, [truth, *(r["bias"]["genre_share@10"] for r in results[:3])], strict=True):
        np.testing.assert_allclose([b.get_height() for b in c], list(shares.values()))

    report.plot_recall_curves(results, "test", tmp_path / "r.png")
    lines = drawn[-1].axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["cmvae", "deccm [content]", "oracle"]
    for line, r in zip(lines, results[:3], strict=True):
        np.testing.assert_allclose(line.get_xdata(), [1, 10, 100])
        np.testing.assert_allclose(line.get_ydata(), list(r["full_recall_curve"].values()))
    assert [line.get_linestyle() for line in lines] == ["-", "-", "--"]
    for fig in drawn:
        report.pyplot().close(fig)


def _ranked(folder: Path, model: str, ranks: list[int], order: list[int] | None = None) -> tuple[str, dict]:
    """(file name, result) of ``model`` evaluated with ``--ranks``: its ranks CSV (the queries v0, v1, ... in
    ``order``) written in ``folder`` and recorded with its SHA-256."""
    import hashlib

    from bgmrec.eval.report import RANKS_HEADER

    path = folder / f"{model}.csv"
    path.write_text(RANKS_HEADER + "\n" + "".join(f"v{i},t{i},u,{ranks[i]},{ranks[i]}\n"
                                                  for i in order or range(len(ranks))))
    return f"{model}.json", {
        **_result(model, 2.0, sum(r <= 10 for r in ranks) / len(ranks)), "n_queries": len(ranks),
        "provenance": {"runs": {"run": {"folder": f"/runs/{model}"}}},
        "ranks_file": {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}}


def test_an_oracle_evaluated_with_ranks_is_not_paired_as_a_contender(tmp_path):
    """The oracle is the upper bound: named as not compared, however it was evaluated."""
    from bgmrec.eval.report import results_report

    named = [_ranked(tmp_path, m, ranks) for m, ranks in (("cmvae", [1, 20, 3, 30]), ("deccm", [1, 2, 3, 30]),
                                                          ("oracle", [1, 1, 1, 1]))]
    paired = results_report(named, baseline="cmvae", resamples=500).split("Change of full-catalogue")[1]
    assert "| deccm | +50.0% " in paired and "| oracle |" not in paired
    assert "Not compared: oracle (the upper bound)." in paired


def test_ranks_of_the_same_queries_in_another_order_are_refused_not_paired_row_by_row(tmp_path):
    from bgmrec.eval.report import results_report

    named = [_ranked(tmp_path, "cmvae", [1, 20, 3, 30]), _ranked(tmp_path, "deccm", [1, 2, 3, 30], [1, 0, 2, 3])]
    with pytest.raises(ValueError, match=r"deccm.csv: not the queries of the baseline's ranks \(.*cmvae.csv\) in the "
                                         r"same order; pairs need the same queries"):
        results_report(named, baseline="cmvae", resamples=500)
