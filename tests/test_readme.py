"""The README's Python API example runs as written (on the tiny world, one epoch per model)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import bgmrec.models.registry

README = Path(__file__).resolve().parents[1] / "README.md"


def python_block_after(heading: str) -> str:
    """The first ```python block of the README after the line ``heading``."""
    text = README.read_text()
    found = re.search(rf"^{re.escape(heading)}$.*?```python\n(.*?)```", text, re.S | re.M)
    assert found, f"no python block after {heading!r} in the README"
    return found.group(1)


def test_the_python_api_example_runs_as_written(tiny_dir, tmp_path, monkeypatch, capsys):
    code = python_block_after("## Python API")
    assert '"data/small"' in code  # the world the text before it says to simulate, here the tiny one
    shutil.copytree(tiny_dir, tmp_path / "data" / "small")
    monkeypatch.chdir(tmp_path)
    real_build = bgmrec.models.registry.build

    def one_epoch(name, spec, overrides=None):  # every model the example trains, as fast as it goes
        return real_build(name, spec, {**(overrides or {}), "epochs": 1, **({"prior_samples": 64} if
                                                                              "deccm" in name else {})})

    monkeypatch.setattr(bgmrec.models.registry, "build", one_epoch)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    printed = capsys.readouterr().out
    assert printed.count("recall@10") >= 2 and "relative" in printed  # two evaluations and the comparison
    assert namespace["rows"].shape == (2, 10) and namespace["shares"].shape == (2, 2)
    ds = namespace["ds"]
    assert namespace["track_ids"] == [[ds.track_ids[t] for t in r] for r in namespace["rows"].tolist()]
    assert namespace["track_ids"][0][0].startswith("t")  # the dataset's ids, as tracks.csv has them
    for run in ("runs/cmvae", "runs/deccm", "runs/deccm2"):
        assert (tmp_path / run / "config.json").is_file(), run
    assert (tmp_path / "runs/deccm/teacher/config.json").is_file()
    assert (tmp_path / "runs/deccm2/run.json").is_file()  # train_model's record; save alone writes none
    assert not (tmp_path / "runs/cmvae/run.json").exists()


def test_the_metrics_compare_accepts_are_listed_from_the_metric_table():
    """The README's and docs/cli.md's compare lines and the --metric help of compare and report list what
    bgmrec.eval.metrics.RANK_METRICS holds (a metric once added still read "expected recall@K, ndcg@K or mrr" in
    them: report's help was written out by hand)."""
    import inspect

    from bgmrec.cli.core import compare, report
    from bgmrec.eval.metrics import expected_metrics, metric_forms

    for page in (README, README.parent / "docs" / "cli.md"):
        assert f"[--metric {' | '.join(metric_forms())}]" in page.read_text(), page
    for command in (compare, report):
        assert expected_metrics() in inspect.signature(command).parameters["metric"].default.help, command
