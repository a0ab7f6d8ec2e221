"""`bgmrec bench tuned`: models tuned alike on val, compared at val's choice and at every grid point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from bgmrec.bench_tuned import run_tuned
from bgmrec.cli import main
from bgmrec.data.dataset import load_dataset
from bgmrec.eval.protocol import evaluate
from bgmrec.models.base import load_model

SMALL = {"epochs": "1", "hidden": "16", "latent_dim": "4"}  # every point cheap
GRID = {"lr": ["0.001", "0.004"]}


@pytest.fixture(autouse=True)
def committed_code(monkeypatch):
    """A clean commit id, whatever state the checkout running the tests is in (resume needs one)."""
    import bgmrec.runs

    monkeypatch.setattr(bgmrec.runs, "git_commit", lambda: "abc1234")


def table_rows(text: str, heading: str) -> list[list[str]]:
    """The body rows of the first table after ``heading``, and of the table right after it, as cells."""
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| ") and not line.startswith(("| point", "| model"))]


def test_each_model_is_tuned_on_val_and_compared_on_the_test_splits(tiny_copy, tmp_path):
    work = tmp_path / "work"
    out = run_tuned(tiny_copy, ["cmvae", "deccm"], GRID, work, work / "tuned.md", Console(quiet=True), "cmd",
                    sets=SMALL, splits=("test_unbiased",))
    text = out.read_text()
    figures = json.loads(out.with_suffix(".json").read_text())
    ds = load_dataset(tiny_copy)
    for model in ("cmvae", "deccm"):  # val's choice is the grid's best on val, as tune recorded it
        tuning = json.loads((work / model / "tuning.json").read_text())
        assert figures["chosen"][model] == Path(tuning["trials"][0]["run"]).name
    assert "test" not in {r["split"] for r in figures["results"]}  # only the splits asked for
    # the chosen table: every row's figure is its run's, ranked on test_unbiased
    chosen = {row[0]: row for row in table_rows(text, "## `test_unbiased`: each model at its best point on val")}
    assert list(chosen) == ["cmvae", "deccm [backdoor]", "deccm [content]", "deccm [personalised]"]
    for name, row in chosen.items():
        model = load_model(work / name.split()[0] / row[1])
        if "[" in name:
            model.set_inference_mode(name.split("[")[1].rstrip("]"))
        assert float(row[3]) == pytest.approx(evaluate(model, ds, "test_unbiased")["full"]["recall@10"], abs=5e-5)
    assert chosen["cmvae"][4] == ""
    assert all("%" in row[4] and " p" in row[4] for name, row in chosen.items() if name != "cmvae")
    # every point: the same settings for both, the change the ratio of the two figures at that point
    section = text.split("## `test_unbiased`: every grid point", 1)[1]
    points, summary = table_rows(section, "\n| point")[:2], table_rows(section, "\n| model")
    assert [row[0] for row in points] == ["lr=0.001", "lr=0.004"]
    changes = []
    for row in points:
        base = float(row[1])
        assert base == pytest.approx(evaluate(load_model(work / "cmvae" / row[0]), ds, "test_unbiased")["full"]
                                     ["recall@10"], abs=5e-5)
        value, change = row[3].split(" (")  # deccm [content]
        assert float(change.rstrip("%)")) / 100 == pytest.approx(float(value) / base - 1, abs=2e-3)
        changes.append(float(value) / base - 1)
    content = next(row for row in summary if row[0] == "deccm [content]")
    assert content[1] == "2"
    assert float(content[2].rstrip("%")) / 100 == pytest.approx(np.mean(changes), abs=2e-3)
    assert float(content[4].rstrip("%")) / 100 == pytest.approx(min(changes), abs=2e-3)
    assert int(content[6]) == sum(c > 0 for c in changes)


def test_a_second_run_needs_resume_which_reuses_every_point(tiny_copy, tmp_path, monkeypatch):
    import bgmrec.runs

    work, console = tmp_path / "work", Console(quiet=True)
    first = run_tuned(tiny_copy, ["cmvae", "twotower-infonce"], GRID, work, work / "tuned.md", console, "cmd",
                      sets={"epochs": "1"}, splits=("test",))
    before = json.loads(first.with_suffix(".json").read_text())
    with pytest.raises(ValueError, match="holds the grid of cmvae, twotower-infonce from an earlier run; --resume"):
        run_tuned(tiny_copy, ["cmvae", "twotower-infonce"], GRID, work, work / "tuned.md", console, "cmd",
                  sets={"epochs": "1"}, splits=("test",))

    def no_training(*args, **kwargs):
        raise AssertionError("a finished point was trained again")

    monkeypatch.setattr(bgmrec.runs, "train_model", no_training)
    again = run_tuned(tiny_copy, ["cmvae", "twotower-infonce"], GRID, work, work / "tuned.md", console, "cmd",
                      sets={"epochs": "1"}, splits=("test",), resume=True)
    after = json.loads(again.with_suffix(".json").read_text())
    assert after["chosen"] == before["chosen"]
    assert [r["full"] for r in after["results"]] == [r["full"] for r in before["results"]]


@pytest.mark.parametrize("models, splits, words", [
    (["cmvae"], ("test",), "at least two distinct models"),
    (["cmvae", "cmvae"], ("test",), "at least two distinct models"),
    (["cmvae", "deccm"], ("test", "nope"), "no split nope"),
    (["cmvae", "deccm"], (), "at least one split"),
])
def test_refusals_come_before_any_training(tiny_copy, tmp_path, models, splits, words):
    with pytest.raises(ValueError, match=words):
        run_tuned(tiny_copy, models, GRID, tmp_path / "work", tmp_path / "t.md", Console(quiet=True), "cmd",
                  splits=splits)
    assert not (tmp_path / "work").exists()


def test_a_folder_of_something_else_is_not_a_work_folder(tiny_copy, tmp_path):
    with pytest.raises(ValueError, match="is not a work folder of bgmrec bench tuned .*it is a dataset"):
        run_tuned(tiny_copy, ["cmvae", "deccm"], GRID, tiny_copy, tmp_path / "t.md", Console(quiet=True), "cmd")


def test_the_command_writes_the_report_into_its_work_folder(tiny_copy, tmp_path):
    work = tmp_path / "w"
    code = main(["bench", "tuned", "--data", str(tiny_copy), "--models", "cmvae,twotower-infonce", "--grid",
                 "lr=0.001", "--grid", "lr=0.004", "--set", "epochs=1", "--splits", "test", "--work", str(work)])
    assert code == 0
    text = (work / "tuned.md").read_text()
    assert text.startswith("# Models tuned alike on val")
    assert "Made by `bgmrec bench tuned --data" in text and "(lr in {0.001, 0.004}; fixed: epochs=1)" in text
