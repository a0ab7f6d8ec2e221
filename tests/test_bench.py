"""``bench quality --resume``: a finished run of the same commit is reused, anything else is retrained."""

from __future__ import annotations

from rich.console import Console

import bgmrec.cli.core
from bgmrec.bench import finished_run, run_quality


def test_resume_reuses_finished_runs_of_the_same_commit(tmp_path, monkeypatch):
    console = Console(quiet=True)
    work, out = tmp_path / "work", tmp_path / "report.md"
    run_quality(["tiny"], [0], out, work, ["random", "popularity"], console, "cmd", resume=True)
    run = work / "tiny-seed0" / "runs" / "popularity"
    commit = bgmrec.cli.core.git_commit()
    assert finished_run(run, "popularity", 0, commit) is not None
    assert finished_run(run, "popularity", 1, commit) is None  # another seed
    assert finished_run(run, "random", 0, commit) is None  # another model
    assert finished_run(run, "popularity", 0, commit + "x") is None  # another commit
    report = out.read_text()
    real_train = bgmrec.cli.core.train_model

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was retrained")

    monkeypatch.setattr(bgmrec.cli.core, "train_model", no_training)
    run_quality(["tiny"], [0], out, work, ["random", "popularity"], console, "cmd", resume=True)
    assert out.read_text().split("\n", 3)[3] == report.split("\n", 3)[3]  # the same tables
    (run / "weights.safetensors").unlink()  # an interrupted run is trained again
    called = []

    def counted(*args, **kwargs):
        called.append(args[1])
        return real_train(*args, **kwargs)

    monkeypatch.setattr(bgmrec.cli.core, "train_model", counted)
    run_quality(["tiny"], [0], out, work, ["random", "popularity"], console, "cmd", resume=True)
    assert called == ["popularity"]
