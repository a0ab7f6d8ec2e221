"""The comparison tables: cells as written, labels that cannot break a Markdown table."""

from __future__ import annotations

from bgmrec.eval.report import headers, markdown_table


def _result(model: str, median: float) -> dict:
    return {"model": model, "split": "test", "full": {"recall@10": 0.5, "median_rank": median}}


def test_median_ranks_are_written_as_they_are_not_rounded_to_even():
    table = markdown_table([_result("a", 96.5), _result("b", 89.5), _result("c", 7.0), _result("d", 1234567.0)],
                           "test")
    medians = [line.split(" | ")[headers().index("med.rank")] for line in table.splitlines()[2:]]
    assert medians == ["96.5", "89.5", "7", "1234567"]


def test_a_pipe_in_a_label_is_escaped():
    line = markdown_table([_result("left|right", 3.0)], "test").splitlines()[2]
    assert line.startswith("| left\\|right | ")
    assert line.replace("\\|", "").count("|") == len(headers()) + 1
