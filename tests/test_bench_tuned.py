"""`bgmrec bench tuned`: models tuned alike on val, compared at val's choice and at every grid point."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rich.console import Console

from bgmrec.bench_tuned import model_sets, point_name, run_tuned
from bgmrec.cli import main
from bgmrec.data.dataset import load_dataset
from bgmrec.eval.protocol import evaluate
from bgmrec.models.base import load_model

SMALL = {"epochs": "1", "hidden": "16", "latent_dim": "4"}  # every point cheap
GRID = {"lr": ["0.001", "0.004"]}
QUIET = Console(quiet=True)


@pytest.fixture(autouse=True)
def committed_code(monkeypatch):
    """A clean commit id, whatever state the checkout running the tests is in (resume needs one)."""
    import bgmrec.runs

    monkeypatch.setattr(bgmrec.runs, "git_commit", lambda: "abc1234")


def tables(text: str, heading: str) -> list[list[list[str]]]:
    """The tables of the section under ``heading``, each as its body rows of cells (the header row left out)."""
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    found, rows = [], None
    for line in section.splitlines():
        if line.startswith("| ") and rows is None:
            rows = []  # the header row
        elif line.startswith("|---") or (line.startswith("| ") and rows is not None):
            if not line.startswith("|---"):
                rows.append([c.strip() for c in line.strip("|").split("|")])
        elif rows is not None:
            found.append(rows)
            rows = None
    return found + ([rows] if rows is not None else [])


def recall(run, ds, split: str, mode: str | None = None) -> float:
    model = load_model(run)
    if mode:
        model.set_inference_mode(mode)
    return evaluate(model, ds, split)["full"]["recall@10"]


def test_each_model_is_tuned_on_val_and_compared_on_the_test_splits(tiny_copy, tmp_path):
    work = tmp_path / "work"
    sets = {**SMALL, "deccm.prior_samples": "16"}  # a field of DecCM's alone
    out = run_tuned(tiny_copy, ["cmvae", "deccm"], GRID, work, work / "tuned.md", QUIET, "cmd", sets=sets,
                    splits=("test_unbiased",))
    text, figures = out.read_text(), json.loads(out.with_suffix(".json").read_text())
    ds = load_dataset(tiny_copy)
    records = {m: json.loads((work / m / "tuning.json").read_text()) for m in ("cmvae", "deccm")}
    assert "prior_samples" in records["deccm"]["sets"] and "prior_samples" not in records["cmvae"]["sets"]
    assert {r["split"] for r in figures["results"]} == {"test_unbiased"}  # only the splits asked for
    assert figures["baseline"] == "cmvae" and "The baseline is cmvae." in text
    [chosen] = tables(text, "## `test_unbiased`: each model at its best point on val")
    assert [row[0] for row in chosen] == ["cmvae", "deccm [backdoor]", "deccm [content]", "deccm [personalised]"]
    for name, point, val, figure, change in chosen:
        model, mode = name.split(" [")[0], name.split("[")[1].rstrip("]") if "[" in name else None
        assert point == figures["chosen"][model]
        assert float(figure) == pytest.approx(recall(work / model / point, ds, "test_unbiased", mode), abs=5e-5)
        trial = next(t for t in records[model]["trials"] if t["run"].endswith(point))
        assert trial == records[model]["trials"][0]  # val's best
        # the val figure only on the row of the mode tune ranked on val (DecCM's default, backdoor)
        assert val == (f"{trial['val_recall_at_10']:.4f}" if mode in (None, "backdoor") else "")
        assert (change == "") == (name == "cmvae") and (name == "cmvae" or " p" in change)
    # every point: each cell its own run's figure, the change over cmvae's at the same point
    points, summary = tables(text, "## `test_unbiased`: every grid point")
    assert [row[0] for row in points] == ["lr=0.001", "lr=0.004"]
    changes = []
    for point, base, *cells in points:
        base_recall = recall(work / "cmvae" / point, ds, "test_unbiased")
        assert float(base) == pytest.approx(base_recall, abs=5e-5)
        for mode, cell in zip(("backdoor", "content", "personalised"), cells, strict=True):
            value, change = cell.split(" (")
            expected = recall(work / "deccm" / point, ds, "test_unbiased", mode)
            assert float(value) == pytest.approx(expected, abs=5e-5)
            assert float(change.rstrip("%)")) / 100 == pytest.approx(expected / base_recall - 1, abs=2e-3)
            if mode == "content":
                changes.append(expected / base_recall - 1)
    content = next(row for row in summary if row[0] == "deccm [content]")
    assert content[1] == "2"
    assert float(content[2].rstrip("%")) / 100 == pytest.approx(np.mean(changes), abs=2e-3)
    assert float(content[4].rstrip("%")) / 100 == pytest.approx(min(changes), abs=2e-3)
    assert int(content[6]) == sum(c > 0 for c in changes)


def test_resume_reuses_every_point_whatever_the_order_of_the_grid_s_fields(tiny_copy, tmp_path, monkeypatch):
    import bgmrec.runs

    work, grid = tmp_path / "work", {"lr": ["0.001", "0.004"], "dropout": ["0.1", "0.3"]}
    models, sets = ["cmvae", "twotower-infonce"], {"epochs": "1"}
    first = run_tuned(tiny_copy, models, grid, work, work / "tuned.md", QUIET, "cmd", sets=sets, splits=("test",))
    before = json.loads(first.with_suffix(".json").read_text())
    with pytest.raises(ValueError, match="holds the grid of cmvae from an earlier run; --resume"):
        run_tuned(tiny_copy, models, grid, work, work / "tuned.md", QUIET, "cmd", sets=sets, splits=("test",))

    def no_training(*args, **kwargs):
        raise AssertionError("a finished point was trained again")

    monkeypatch.setattr(bgmrec.runs, "train_model", no_training)
    reordered = {"dropout": grid["dropout"], "lr": grid["lr"]}  # the points named in the grids' first order
    again = run_tuned(tiny_copy, models, reordered, work, work / "again.md", QUIET, "cmd", sets=sets,
                      splits=("test",), resume=True)
    after = json.loads(again.with_suffix(".json").read_text())
    assert after["chosen"] == {m: point_name(_settings(p), reordered) for m, p in before["chosen"].items()}
    assert sorted(r["full"]["recall@10"] for r in after["results"]) == sorted(
        r["full"]["recall@10"] for r in before["results"])
    points, _ = tables(again.read_text(), "## `test`: every grid point")
    assert len(points) == 4 and all(cell for row in points for cell in row)  # every point paired


def _settings(name: str) -> dict[str, str]:
    return dict(item.split("=") for item in name.split(","))


def test_a_grid_resume_cannot_finish_is_refused_before_any_training(tiny_copy, tmp_path, monkeypatch):
    import shutil

    import bgmrec.runs

    work = tmp_path / "work"
    run_tuned(tiny_copy, ["cmvae", "twotower-infonce"], GRID, work, work / "t.md", QUIET, "cmd",
              sets={"epochs": "1"}, splits=("test",))
    shutil.rmtree(work / "cmvae")  # cmvae's grid to train again, twotower-infonce's resumed with other --set values

    def no_training(*args, **kwargs):
        raise AssertionError("trained before refusing")

    monkeypatch.setattr(bgmrec.runs, "train_model", no_training)
    with pytest.raises(ValueError, match="twotower-infonce: --resume: .*records another .*give a new --work"):
        run_tuned(tiny_copy, ["cmvae", "twotower-infonce"], GRID, work, work / "t.md", QUIET, "cmd",
                  sets={"epochs": "1", "twotower-infonce.batch_size": "64"}, splits=("test",), resume=True)


def test_a_diverged_point_is_blank_and_listed(tiny_copy, tmp_path):
    work = tmp_path / "work"
    out = run_tuned(tiny_copy, ["cmvae", "twotower-infonce"], {"lr": ["0.002", "1e7"]}, work, work / "t.md", QUIET,
                    "cmd", sets={"epochs": "1", "batch_size": "64"}, splits=("test",))
    text, figures = out.read_text(), json.loads(out.with_suffix(".json").read_text())
    diverged = {m: [point_name(d["settings"], {"lr": []}) for d in
                    json.loads((work / m / "tuning.json").read_text()).get("diverged", [])]
                for m in ("cmvae", "twotower-infonce")}
    assert diverged["cmvae"] == ["lr=1e7"]  # as the tune tests' lr diverges
    assert figures["diverged"] == diverged
    points, summary = tables(text, "## `test`: every grid point")
    row = next(r for r in points if r[0] == "lr=1e7")
    assert row[1] == ""  # the baseline's cell blank, the row kept
    assert row[2] == "" if diverged["twotower-infonce"] else "(" not in row[2]  # nothing to pair with
    assert summary[0][1] == "1"  # the summary is over the point both trained
    assert "Diverged in training, not ranked (their cells are blank): cmvae at lr=1e7" in text


def test_a_baseline_of_several_modes_is_named_by_the_mode_val_chose_in(tiny_copy, tmp_path):
    out = run_tuned(tiny_copy, ["deccm", "cmvae"], {"lr": ["0.002"]}, tmp_path / "w", tmp_path / "w" / "t.md", QUIET,
                    "cmd", sets={**SMALL, "deccm.inference": "content"}, splits=("test",))
    text = out.read_text()
    assert "The baseline is deccm [content]." in text and "; deccm in its `content` mode, its other modes" in text
    assert json.loads(out.with_suffix(".json").read_text())["val_mode"] == {"deccm": "content", "cmvae": None}
    [chosen] = tables(text, "## `test`: each model at its best point on val")
    vals = {row[0]: row[2] for row in chosen}
    assert vals["deccm [content]"] and vals["cmvae"] and not vals["deccm [backdoor]"]
    assert {row[0]: row[4] for row in chosen}["deccm [content]"] == ""  # the baseline itself


@pytest.mark.parametrize("models, sets, splits, words", [
    (["cmvae"], {}, ("test",), "at least two distinct models"),
    (["cmvae", "cmvae"], {}, ("test",), "at least two distinct models"),
    (["cmvae", "deccm"], {}, ("test", "nope"), "no split nope"),
    (["cmvae", "deccm"], {}, ("val",), "val \\(role val\\): not a test split"),
    (["cmvae", "deccm"], {}, (), "at least one"),
    (["cmvae", "deccm"], {}, ("test", "test"), "name each split to compare on once"),
    (["cmvae", "twotower-infonce"], {"kl_weight": "0.5"}, ("test",), "twotower-infonce: .*kl_weight"),
    (["cmvae", "deccm"], {"cmvea.lr": "0.1"}, ("test",), "--set cmvea.lr=0.1: 'cmvea' is not one of the models"),
])
def test_refusals_come_before_any_training(tiny_copy, tmp_path, monkeypatch, models, sets, splits, words):
    import bgmrec.runs

    def no_training(*args, **kwargs):
        raise AssertionError("trained before refusing")

    monkeypatch.setattr(bgmrec.runs, "train_model", no_training)
    with pytest.raises(ValueError, match=words):
        run_tuned(tiny_copy, models, GRID, tmp_path / "work", tmp_path / "t.md", QUIET, "cmd", sets=sets,
                  splits=splits)
    assert not (tmp_path / "work").exists()


def test_model_sets_give_each_model_the_shared_fields_and_its_own():
    assert model_sets({"lr": "0.1", "deccm.alpha": "0.2", "deccm.lr": "0.3"}, ["cmvae", "deccm"]) == {
        "cmvae": {"lr": "0.1"}, "deccm": {"lr": "0.3", "alpha": "0.2"}}


def test_work_folders_of_other_kinds_are_refused_and_its_own_reports_reused(tiny_copy, tmp_path):
    from bgmrec.runs import train_model

    with pytest.raises(ValueError, match="is not a work folder of bgmrec bench tuned .*it is a dataset"):
        run_tuned(tiny_copy, ["cmvae", "deccm"], GRID, tiny_copy, tmp_path / "t.md", QUIET, "cmd")
    work = tmp_path / "work"
    train_model(tiny_copy, "cmvae", work / "cmvae", sets=SMALL, progress=False)  # a run, not a grid
    with pytest.raises(ValueError, match="work/cmvae is not a grid of bgmrec tune"):
        run_tuned(tiny_copy, ["cmvae", "twotower-infonce"], GRID, work, work / "t.md", QUIET, "cmd")
    work = tmp_path / "work2"
    run_tuned(tiny_copy, ["cmvae", "twotower-infonce"], GRID, work, work / "first.md", QUIET, "cmd",
              sets={"epochs": "1"}, splits=("test",))
    # another report into the same folder, beside the earlier one (a name with glob characters too)
    for name in ("run[1].md", "second.md"):
        out = run_tuned(tiny_copy, ["cmvae", "twotower-infonce"], GRID, work, work / name, QUIET, "cmd",
                        sets={"epochs": "1"}, splits=("test",), resume=True)
        assert out.read_text().startswith("# Models tuned alike on val")


@pytest.mark.parametrize("where, words", [
    ("w/r.json", "the report is Markdown"),
    ("w/sub/r.md", "inside a folder of --work"),
    ("data/manifest.md", "manifest.json exists and is not the figures of an earlier bench tuned report"),
])
def test_a_report_that_would_lose_or_replace_something_is_refused(tiny_copy, tmp_path, where, words):
    import shutil

    shutil.copytree(tiny_copy, tmp_path / "data")
    with pytest.raises(ValueError, match=words):
        run_tuned(tmp_path / "data", ["cmvae", "deccm"], GRID, tmp_path / "w", tmp_path / where, QUIET, "cmd")
    assert (tmp_path / "data" / "manifest.json").read_bytes() == (tiny_copy / "manifest.json").read_bytes()


def test_a_file_where_a_model_s_grid_goes_is_refused(tiny_copy, tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "deccm").write_text("")
    with pytest.raises(ValueError, match="is a file, where the grid of deccm goes"):
        run_tuned(tiny_copy, ["cmvae", "deccm"], GRID, tmp_path / "w", tmp_path / "w" / "t.md", QUIET, "cmd")


def test_a_stopped_benchmark_names_its_own_command_to_continue(tiny_copy, tmp_path, monkeypatch):
    import bgmrec.bench_tuned

    def stopped(*args, **kwargs):
        stop = KeyboardInterrupt()
        stop.add_note("`bgmrec tune ... --resume` finishes it")  # the grid's own note
        raise stop

    monkeypatch.setattr(bgmrec.bench_tuned, "run_grid", stopped)
    with pytest.raises(KeyboardInterrupt) as e:
        run_tuned(tiny_copy, ["cmvae", "deccm"], GRID, tmp_path / "w", tmp_path / "t.md", QUIET,
                  "bgmrec bench tuned --data D")
    assert e.value.__notes__ == ["`bgmrec bench tuned --data D --resume` continues the benchmark, reusing every "
                                 "point finished"]


def test_the_command_writes_the_report_into_its_work_folder(tiny_copy, tmp_path):
    work = tmp_path / "w"
    code = main(["bench", "tuned", "--data", str(tiny_copy), "--models", "cmvae,twotower-infonce", "--grid",
                 "lr=0.001", "--grid", "lr=0.004", "--set", "epochs=1", "--splits", "test", "--work", str(work)])
    assert code == 0
    text = (work / "tuned.md").read_text()
    assert text.startswith("# Models tuned alike on val")
    assert "Made by `bgmrec bench tuned --data" in text and "the same grid (lr in {0.001, 0.004})" in text
    assert "cmvae: Fixed for every point: epochs=1" in text


@pytest.mark.parametrize("grid", [{"deccm.alpha": ["0.1", "1"]}, {"alpha": ["0.1", "1"]}])
def test_a_grid_field_one_model_lacks_is_refused_saying_the_grid_is_every_models(tiny_copy, tmp_path, grid):
    # was: "cmvae: CMVAEConfig has no field(s) ['deccm.alpha']; known: [...]", as if --grid took --set's form
    with pytest.raises(ValueError, match=r"^--grid (deccm\.)?alpha: not a config field of cmvae; the grid is every "
                       r"model's, each point paired across them, .*--set MODEL\.FIELD=VALUE"):
        run_tuned(tiny_copy, ["cmvae", "deccm"], grid, tmp_path / "work", tmp_path / "t.md", QUIET, "cmd")
    assert not (tmp_path / "work").exists()


def test_the_per_point_summary_is_the_mean_median_and_range_of_the_changes():
    """Over three points whose changes are -10%, +2% and +30% (where a two-point grid's mean is its median)."""
    from bgmrec.bench_tuned import _per_point_section

    def result(model: str, point: str, hits: int) -> dict:  # 100 queries, ``hits`` of them ranked first
        ranks = np.where(np.arange(100) < hits, 1, 500)
        return {"model": model, "split": "test", "point": point, "full": {"recall@10": hits / 100},
                "full_ranks": ranks}

    results = [r for point, hits in (("a", 45), ("b", 51), ("c", 65))
               for r in (result("cmvae", point, 50), result("deccm", point, hits))]
    lines = _per_point_section(results, "cmvae", ["a", "b", "c"], "test")
    assert "| a | 0.5000 | 0.4500 (-10.0%) |" in lines[4]
    summary = lines[6].splitlines()
    assert summary[0] == ("| model | points | mean change | median | lowest | highest | points above the "
                          "baseline |")
    assert summary[2] == "| deccm | 3 | +7.3% | +2.0% | -10.0% | +30.0% | 2 |"
