"""Grid search on val (`bgmrec tune`): the grid, one run per point, val-only figures, errors before training."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from bgmrec.cli import main
from bgmrec.tune import grid_points, parse_grid, run_grid, trial_folder

SMALL_CMVAE = {"epochs": "1", "hidden": "16", "latent_dim": "4"}


@pytest.fixture(autouse=True)
def committed_code(monkeypatch):
    """A clean commit id, whatever state the checkout running the tests is in (resume needs one)."""
    import bgmrec.runs

    monkeypatch.setattr(bgmrec.runs, "git_commit", lambda: "abc1234")


def test_parse_grid_collects_repeated_keys_in_order():
    grid = parse_grid(["lr=0.002", "dropout=0.2", "lr = 0.0005", "hidden=256,128"])
    assert grid == {"lr": ["0.002", "0.0005"], "dropout": ["0.2"], "hidden": ["256,128"]}
    assert grid_points({"lr": ["a", "b"], "dropout": ["x", "y"]}) == [
        {"lr": "a", "dropout": "x"}, {"lr": "a", "dropout": "y"}, {"lr": "b", "dropout": "x"},
        {"lr": "b", "dropout": "y"}]  # the first value of every key first: the reference point


@pytest.mark.parametrize("items,words", [(["lr"], "key=value"), (["=1"], "key=value"), (["lr="], "key=value"),
                                         (["lr=1", "lr=1"], "given twice"), ([], "at least one --grid")])
def test_parse_grid_refuses_malformed_items(items, words):
    with pytest.raises(ValueError, match=words):
        parse_grid(items)


def test_a_shared_teacher_is_named_by_its_backbone_values_not_by_the_first_point():
    from bgmrec.tune import shared_teacher_folder

    assert shared_teacher_folder({"alpha": "0.5", "teacher_mix": "0.3"}) == "shared"  # DecCM's own fields
    assert shared_teacher_folder({"alpha": "0.5", "latent_dim": "8", "seed": "1"}) == "shared-latent_dim=8,seed=1"


def test_trial_folders_are_safe_names():
    assert trial_folder({"lr": "0.002", "hidden": "256, 128"}) == "lr=0.002,hidden=256,_128"
    assert "/" not in trial_folder({"note": "a/b"})


def test_every_point_is_trained_and_ranked_on_val_only(tiny_dir, tmp_path, monkeypatch):
    import bgmrec.eval.protocol as P
    from bgmrec.data.dataset import load_dataset
    from bgmrec.models.base import load_model

    splits = []
    real = P.evaluate

    def recording(model, ds, split, *args, **kwargs):
        splits.append(split)
        return real(model, ds, split, *args, **kwargs)

    monkeypatch.setattr(P, "evaluate", recording)
    trials = run_grid(tiny_dir, "cmvae", {"lr": ["0.002", "0.0005"]}, tmp_path / "tune", SMALL_CMVAE, seed=3)
    assert splits == ["val", "val"]  # no test split is scored
    assert [t.val_recall_at_10 for t in trials] == sorted((t.val_recall_at_10 for t in trials), reverse=True)
    ds = load_dataset(tiny_dir)
    for t in trials:
        model = load_model(t.run)
        assert (model.config.lr, model.config.seed, model.config.latent_dim) == (float(t.settings["lr"]), 3, 4)
        figures = real(model, ds, "val")["full"]
        assert (figures["recall@10"], figures["mrr"]) == pytest.approx((t.val_recall_at_10, t.val_mrr))
    first, other = sorted(trials, key=lambda t: t.settings["lr"] != "0.002")
    assert first.against_first is None
    assert other.against_first.baseline == pytest.approx(first.val_recall_at_10)
    assert other.against_first.candidate == pytest.approx(other.val_recall_at_10)
    saved = json.loads((tmp_path / "tune" / "tuning.json").read_text())
    assert [t["settings"] for t in saved["trials"]] == [t.settings for t in trials]
    table = (tmp_path / "tune" / "tuning.md").read_text()
    assert "| lr | val R@10 | val MRR | vs the first point | epochs | seconds |" in table
    assert "(the first point)" in table
    from bgmrec.data.dataset import dataset_fingerprint
    from bgmrec.runs import git_commit

    assert saved["data_fingerprint"] == dataset_fingerprint(tiny_dir) and saved["commit"] == git_commit()
    assert f"Dataset `{tiny_dir.resolve()}` (fingerprint {saved['data_fingerprint']}), commit {git_commit()}." in table


def test_every_point_is_compared_with_the_first_and_ranked_best_first(tiny_dir, tmp_path):
    # the first point (an lr too small to learn in one epoch) is the worst: ranking must move it
    trials = run_grid(tiny_dir, "cmvae", {"lr": ["0.000001", "0.01", "0.003"]}, tmp_path / "tune",
                      {**SMALL_CMVAE, "epochs": "3", "patience": "3"})
    first = next(t for t in trials if t.against_first is None)
    assert first.settings == {"lr": "0.000001"} and trials[-1] is first
    for t in trials:
        if t is not first:
            assert t.against_first.baseline == pytest.approx(first.val_recall_at_10)
            assert t.against_first.candidate == pytest.approx(t.val_recall_at_10)
    saved = json.loads((tmp_path / "tune" / "tuning.json").read_text())
    assert saved["complete"] and [t["settings"]["lr"] for t in saved["trials"]] == [t.settings["lr"] for t in trials]


@pytest.mark.parametrize("grid,sets,seed,words", [
    ({"lr": ["0.002"], "nosuchfield": ["1"]}, {}, None, "nosuchfield"),
    ({"lr": ["0.002", "fast"]}, {}, None, "fast"),
    ({"lr": ["0.002"]}, {"lr": "0.001"}, None, "lr: given both as --set and as --grid"),
    ({"lr": ["0.001", "1e-3"]}, {}, None, "lr=1e-3 and lr=0.001 give the same config"),
    ({"seed": ["0", "1"]}, {}, 2, "seed: given both as --seed and as --grid"),
])
def test_bad_grids_fail_before_any_training(tiny_dir, tmp_path, grid, sets, seed, words):
    with pytest.raises(ValueError, match=words):
        run_grid(tiny_dir, "cmvae", grid, tmp_path / "tune", {**SMALL_CMVAE, **sets}, seed=seed)
    assert not (tmp_path / "tune").exists()


def test_an_out_folder_that_holds_anything_is_refused(tiny_dir, tmp_path):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "seed=1").write_text("an earlier grid's")
    for out in (tmp_path / "a-file", tmp_path / "full"):
        with pytest.raises(ValueError, match="exists and is not an empty folder"):
            run_grid(tiny_dir, "popularity", {"seed": ["0", "1"]}, out)
    assert (tmp_path / "full" / "seed=1").read_text() == "an earlier grid's"
    (tmp_path / "empty").mkdir()
    assert len(run_grid(tiny_dir, "popularity", {"seed": ["0", "1"]}, tmp_path / "empty")) == 2


def test_two_points_in_one_folder_are_refused(tiny_dir, tmp_path):
    from dataclasses import dataclass

    from bgmrec.models.baselines import RandomConfig, RandomRecommender
    from bgmrec.models.registry import register_model, unregister_model

    @dataclass
    class NotedConfig(RandomConfig):
        note: str = ""  # a free-text field, as a plugin may have

    noted = type("Noted", (RandomRecommender,), {"name": "noted-random", "config_class": NotedConfig})
    register_model("noted-random", noted)
    try:
        with pytest.raises(ValueError, match="share the folder name 'note=a_b'"):
            run_grid(tiny_dir, "noted-random", {"note": ["a/b", "a b"]}, tmp_path / "tune")
    finally:
        unregister_model("noted-random")


def test_the_summary_is_kept_after_every_point(tiny_dir, tmp_path, stop_training):
    stop_training(2)
    with pytest.raises(KeyboardInterrupt):
        run_grid(tiny_dir, "popularity", {"seed": ["0", "1"]}, tmp_path / "tune")
    saved = json.loads((tmp_path / "tune" / "tuning.json").read_text())
    assert not saved["complete"] and [t["settings"] for t in saved["trials"]] == [{"seed": "0"}]


def test_a_stopped_grid_says_how_many_points_are_done_and_how_to_finish_it(tiny_dir, tmp_path, stop_training,
                                                                          capsys):
    """tune stopped printed only "aborted (interrupted)": it now says how many points are done and the command
    that finishes the grid, which reuses them."""
    import shlex

    calls = stop_training(2)
    out = tmp_path / "tune"
    assert main(["tune", "--data", str(tiny_dir), "--model", "popularity", "--out", str(out),
                 "--grid", "seed=0", "--grid", "seed=1", "--grid", "seed=2"]) == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    resumed = (f"bgmrec tune --data {tiny_dir} --model popularity --out {out} --grid seed=0 --grid seed=1 "
               "--grid seed=2 --resume")
    assert last == (f"stopped (SIGINT): 1 of 3 points of the grid finished; `{resumed}` finishes it without "
                    "training them again")
    assert main(shlex.split(resumed)[1:]) == 0
    assert [Path(args[2]).name for args in calls] == ["seed=0", "seed=1", "seed=1", "seed=2"]  # the first not again


def test_tune_s_epochs_are_lines_on_stderr_in_a_log_as_train_s_are(tiny_dir, tmp_path, capsys):
    """tune drew epochs only when stdout was a terminal: in a CI log or a file nothing showed a point's
    training, nor its shared teacher's, where train prints a line per epoch on stderr; --no-progress, as
    train's, turns them off."""
    small = ["--set", "epochs=2", "--set", "hidden=16", "--set", "latent_dim=4"]
    assert main(["tune", "--data", str(tiny_dir), "--model", "deccm", "--out", str(tmp_path / "shown"), "--grid",
                 "alpha=0.5", "--grid", "alpha=1.0", *small]) == 0  # not a backbone field: one teacher for both
    said = capsys.readouterr()
    epochs = re.findall(r"^(deccm|deccm's teacher \(cmvae\)) epoch \d+ loss .* val R@10 ", said.err, re.MULTILINE)
    assert epochs.count("deccm") == 4, said.err  # two epochs of each of the two points
    assert len(list((tmp_path / "shown" / "teachers").iterdir())) == 1  # the teacher both points share
    assert epochs.count("deccm's teacher (cmvae)") >= 1
    assert "[1/2] deccm alpha=0.5" in said.out and "best: " in said.out
    assert main(["tune", "--data", str(tiny_dir), "--model", "deccm", "--out", str(tmp_path / "quiet"), "--grid",
                 "lr=0.002", *small, "--no-progress"]) == 0  # its teacher trained silently too
    said = capsys.readouterr()
    assert " epoch " not in said.err and "[1/1] deccm lr=0.002" in said.out
    # a library caller sees no training unless it asks, whatever console it gives for the points' lines
    from rich.console import Console

    run_grid(tiny_dir, "deccm", {"lr": ["0.002"]}, tmp_path / "library",
             {"epochs": "1", "hidden": "16", "latent_dim": "4"}, console=Console(file=sys.stdout))
    said = capsys.readouterr()
    assert " epoch " not in said.err and "[1/1] deccm lr=0.002" in said.out


def test_resume_loads_a_point_trained_whole_whose_ranking_was_stopped(tiny_dir, tmp_path, monkeypatch):
    """Stopped while the 2nd point was ranked on val, its run was complete but not in tuning.json, and --resume
    trained it again; it is now loaded when its run.json and config say this grid made it, else trained again."""
    import io

    from rich.console import Console

    import bgmrec.eval.protocol as P
    import bgmrec.runs
    from bgmrec.data.dataset import write_json_atomic

    real_evaluate, real_train, ranked, trained = P.evaluate, bgmrec.runs.train_model, [], []

    def stopped_at_the_second(*args, **kwargs):
        ranked.append(True)
        if len(ranked) == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    def counted(*args, **kwargs):
        trained.append(Path(args[2]).name)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(P, "evaluate", stopped_at_the_second)
    monkeypatch.setattr(bgmrec.runs, "train_model", counted)
    out, grid = tmp_path / "tune", {"seed": ["0", "1", "2"]}
    with pytest.raises(KeyboardInterrupt):
        run_grid(tiny_dir, "popularity", grid, out)
    assert len(json.loads((out / "tuning.json").read_text())["trials"]) == 1 and (out / "seed=1" / "run.json").exists()
    monkeypatch.setattr(P, "evaluate", real_evaluate)
    said = io.StringIO()
    trials = run_grid(tiny_dir, "popularity", grid, out, console=Console(file=said, width=200), resume=True)
    assert trained == ["seed=0", "seed=1", "seed=2"] and len(trials) == 3  # seed=1 not trained again
    assert "trained before, its ranking stopped: loaded, not retrained" in said.getvalue()

    record = json.loads((out / "seed=1" / "run.json").read_text())
    write_json_atomic(out / "seed=1" / "run.json", {**record, "data_fingerprint": "0" * 16})  # another world's
    tuning = json.loads((out / "tuning.json").read_text())
    write_json_atomic(out / "tuning.json", {**tuning, "complete": False,
                                            "trials": [t for t in tuning["trials"] if "seed=1" not in t["run"]]})
    run_grid(tiny_dir, "popularity", grid, out, resume=True)
    assert trained == ["seed=0", "seed=1", "seed=2", "seed=1"]
    # a stopped training's record (its best epoch so far, saved as if whole) is no finished point either
    record = json.loads((out / "seed=1" / "run.json").read_text())
    write_json_atomic(out / "seed=1" / "run.json", {**record, "stopped_at_epoch": 1})
    write_json_atomic(out / "tuning.json", {**tuning, "complete": False,
                                            "trials": [t for t in tuning["trials"] if "seed=1" not in t["run"]]})
    run_grid(tiny_dir, "popularity", grid, out, resume=True)
    assert trained == ["seed=0", "seed=1", "seed=2", "seed=1", "seed=1"]


def test_deccm_points_share_one_teacher_per_backbone_config_apart_from_their_folders(tiny_dir, tmp_path):
    from bgmrec.models.base import load_model
    from bgmrec.runs import train_model

    sets = {**SMALL_CMVAE, "prior_samples": "32"}
    fixed = {k: v for k, v in sets.items() if k != "latent_dim"}
    trials = run_grid(tiny_dir, "deccm", {"alpha": ["0.5", "0.1"], "latent_dim": ["4", "8"]}, tmp_path / "tune",
                      fixed)
    teachers = {t.settings["latent_dim"] + "/" + t.settings["alpha"]: load_model(t.run).teacher_dir for t in trials}
    shared = tmp_path / "tune" / "teachers"
    # named as shared by the points of one backbone config (latent_dim), not after the first (alpha=0.5,...)
    assert teachers["4/0.1"] == teachers["4/0.5"] == str(shared / "shared-latent_dim=4")
    assert teachers["8/0.1"] == teachers["8/0.5"] == str(shared / "shared-latent_dim=8")  # another latent size
    assert sorted(p.name for p in shared.iterdir()) == ["shared-latent_dim=4", "shared-latent_dim=8"]
    assert not list((tmp_path / "tune").glob("*/teacher"))
    # retraining one point by hand gives it a teacher of its own and leaves the one the others share
    train_model(tiny_dir, "deccm", tmp_path / "tune" / "alpha=0.5,latent_dim=4",
                sets={**sets, "alpha": "0.5", "seed": "3"}, progress=False)
    assert load_model(tmp_path / "tune" / "alpha=0.1,latent_dim=4").teacher_dir == teachers["4/0.1"]


def test_a_given_teacher_must_fit_every_point_before_any_training(tiny_dir, tmp_path):
    from bgmrec.runs import train_model

    train_model(tiny_dir, "cmvae", tmp_path / "teacher", sets=SMALL_CMVAE, progress=False)
    with pytest.raises(ValueError, match="latent_dim"):
        run_grid(tiny_dir, "deccm", {"latent_dim": ["4", "8"]}, tmp_path / "tune",
                 {"epochs": "1", "hidden": "16"}, teacher=tmp_path / "teacher")
    with pytest.raises(ValueError, match="lr=0.002: --teacher .* model 'cmvae' with this config takes no teacher"):
        run_grid(tiny_dir, "cmvae", {"lr": ["0.002"]}, tmp_path / "tune", SMALL_CMVAE, teacher=tmp_path / "teacher")
    assert not (tmp_path / "tune").exists()


def test_tuning_md_says_the_command_the_fixed_settings_the_seed_and_the_mode(tiny_dir, tmp_path, monkeypatch):
    import shlex

    out = tmp_path / "tune dec"  # a space: the command must quote it
    monkeypatch.chdir(tmp_path)
    assert main(["tune", "--data", str(tiny_dir), "--model", "deccm", "--out", "tune dec", "--grid", "alpha=0.5",
                 "--grid", "alpha=1.0", "--set", "epochs=1", "--set", "hidden=16", "--set", "latent_dim=4",
                 "--set", "prior_samples=16", "--set", "inference=content"]) == 0
    md = (out / "tuning.md").read_text()
    command = next(line for line in md.splitlines() if line.startswith("Made by `"))[len("Made by `"):-len("`.")]
    assert shlex.split(command) == ["bgmrec", "tune", "--data", str(tiny_dir), "--model", "deccm", "--out",
                                    "tune dec", "--grid", "alpha=0.5", "--grid", "alpha=1.0", "--set", "epochs=1",
                                    "--set", "hidden=16", "--set", "latent_dim=4", "--set", "prior_samples=16",
                                    "--set", "inference=content"]  # pastes back as it was run
    assert ("Fixed for every point: epochs=1, hidden=16, latent_dim=4, prior_samples=16, inference=content (--set; "
            "other fields at the model's defaults); seed 0.") in md  # the seed as used: no --seed is seed 0
    assert "Every point was ranked on val in inference mode `content`." in md
    assert "The dataset was loaded whole, but no test split was scored" in md
    assert "| alpha | mode | val R@10 |" in md and md.count("| content |") == 2
    saved = json.loads((out / "tuning.json").read_text())
    assert saved["command"] == command and saved["seed"] == 0 and [t["inference_mode"] for t in saved["trials"]] \
        == ["content", "content"]


def test_tuning_md_of_a_gridded_mode_or_seed_and_of_a_model_of_one_mode(tiny_dir, tmp_path):
    small = {**SMALL_CMVAE, "prior_samples": "16"}
    trials = run_grid(tiny_dir, "deccm", {"inference": ["content", "backdoor"]}, tmp_path / "modes", small, seed=2)
    assert {t.settings["inference"]: t.inference_mode for t in trials} == {"content": "content",
                                                                           "backdoor": "backdoor"}
    md = (tmp_path / "modes" / "tuning.md").read_text()
    assert "; seed 2." in md and "Each point was ranked on val in its own inference mode (column *mode*)." in md
    assert "--seed 2" in md
    run_grid(tiny_dir, "popularity", {"seed": ["0", "1"]}, tmp_path / "one")
    md = (tmp_path / "one" / "tuning.md").read_text()
    assert ("Fixed for every point: no --set (every field outside the grid at the model's default); seed: each "
            "point's own (a grid key).") in md
    assert "inference mode" not in md and "| seed | val R@10 |" in md  # popularity has one mode: no column


@pytest.mark.parametrize("first,then", [
    ((None, {}), (0, {})),  # the reviewer's: --seed 0 (the documented default) after no --seed
    ((0, {}), (None, {})),
    ((None, {"seed": "3"}), (3, {})),  # --set seed=3 and --seed 3 are one seed
    ((3, {}), (None, {"seed": "3"})),
])
def test_resume_takes_the_seed_as_used_however_it_is_given(tiny_dir, tmp_path, first, then):
    out = tmp_path / "g"
    run_grid(tiny_dir, "cmvae", {"lr": ["0.002"]}, out, {**SMALL_CMVAE, **first[1]}, seed=first[0])
    [trial] = run_grid(tiny_dir, "cmvae", {"lr": ["0.002"]}, out, {**SMALL_CMVAE, **then[1]}, seed=then[0],
                       resume=True)
    assert trial.run == str(out / "lr=0.002")
    with pytest.raises(ValueError, match=r"records another seed than given now \(seed: \d\)"):
        run_grid(tiny_dir, "cmvae", {"lr": ["0.002"]}, out, SMALL_CMVAE, seed=5, resume=True)


def test_resume_of_a_grid_recorded_with_the_seed_as_given(tiny_dir, tmp_path):
    # an older bgmrec recorded --seed as given (None: the default) and --set seed among the sets
    for i, (given, sets, now) in enumerate([(None, {}, 0), (None, {"seed": "4"}, 4), (4, {}, 4)]):
        out = tmp_path / f"g{i}"
        run_grid(tiny_dir, "cmvae", {"lr": ["0.002"]}, out, {**SMALL_CMVAE, **sets}, seed=given)
        record = json.loads((out / "tuning.json").read_text())
        record["seed"] = given  # as it was recorded then
        (out / "tuning.json").write_text(json.dumps(record))
        run_grid(tiny_dir, "cmvae", {"lr": ["0.002"]}, out, SMALL_CMVAE, seed=now, resume=True)
        with pytest.raises(ValueError, match="records another seed"):
            run_grid(tiny_dir, "cmvae", {"lr": ["0.002"]}, out, SMALL_CMVAE, seed=now + 1, resume=True)


def test_resume_names_the_fields_that_differ_as_the_options(tiny_dir, tmp_path):
    run_grid(tiny_dir, "cmvae", {"lr": ["0.002"]}, tmp_path / "g", SMALL_CMVAE)
    with pytest.raises(ValueError, match=r"records another set of --set values than given now \(--set values: "
                                         r"\{'epochs': '1', 'hidden': '16', 'latent_dim': '4'\}\)"):
        run_grid(tiny_dir, "cmvae", {"lr": ["0.002"]}, tmp_path / "g", {**SMALL_CMVAE, "epochs": "2"}, resume=True)
    with pytest.raises(ValueError, match=r"records another grid, set of --set values and seed than given now"):
        run_grid(tiny_dir, "cmvae", {"lr": ["0.001"]}, tmp_path / "g", {**SMALL_CMVAE, "epochs": "2"}, seed=1,
                 resume=True)


def test_tune_command(tiny_dir, tmp_path, capsys):
    out = tmp_path / "tune"
    assert main(["tune", "--data", str(tiny_dir), "--model", "popularity", "--out", str(out),
                 "--grid", "seed=0", "--grid", "seed=1"]) == 0
    printed = capsys.readouterr().out
    assert "best:" in printed and "(the first point)" in printed
    assert sorted(p.name for p in out.iterdir()) == ["seed=0", "seed=1", "tuning.json", "tuning.md"]
    assert main(["tune", "--data", str(tiny_dir), "--model", "popularity", "--out", str(out), "--grid", "lr"]) == 2
    assert "--grid expects key=value" in capsys.readouterr().err
    assert main(["tune", "--data", str(tiny_dir), "--model", "popularity", "--out", str(out),
                 "--grid", "seed=0", "--grid", "seed=1", "--resume"]) == 0
    assert capsys.readouterr().out.count("finished before: loaded, not retrained") == 2


def test_resume_loads_the_finished_points_and_trains_the_rest(tiny_dir, tmp_path, monkeypatch):
    import shutil

    import bgmrec.runs as runs

    grid = {"lr": ["0.002", "0.0005", "0.001"]}
    whole = run_grid(tiny_dir, "cmvae", grid, tmp_path / "whole", SMALL_CMVAE)
    out = tmp_path / "moved"
    shutil.move(tmp_path / "whole", out)  # the grid's folder moved: tuning.json names the old place
    saved = json.loads((out / "tuning.json").read_text())
    # stopped while training the third point: tuning.json lists two, the third folder is partial
    saved["trials"] = [t for t in saved["trials"] if not t["run"].endswith("lr=0.001")]
    saved["complete"] = False
    (out / "tuning.json").write_text(json.dumps(saved))
    (out / "lr=0.001" / "run.json").unlink()
    trained = []
    real = runs.train_model
    monkeypatch.setattr(runs, "train_model", lambda data, model, run, **kw: trained.append(run.name) or real(
        data, model, run, **kw))
    resumed = run_grid(tiny_dir, "cmvae", grid, out, SMALL_CMVAE, resume=True)
    assert trained == ["lr=0.001"]
    def summary(trials):  # all but the time, which differs for the retrained point
        return [(t.settings, t.val_recall_at_10, t.epochs, t.against_first and t.against_first.to_json())
                for t in trials]

    assert summary(resumed) == summary(whole)  # the same figures, ranking and comparisons with the first point
    assert {t.settings["lr"]: t.seconds for t in resumed if t.settings["lr"] != "0.001"} == {
        t.settings["lr"]: t.seconds for t in whole if t.settings["lr"] != "0.001"}  # loaded points keep their time
    assert json.loads((out / "tuning.json").read_text())["complete"] is True


def test_resume_with_the_grid_keys_in_another_order_loads_the_finished_points(tiny_dir, tmp_path, monkeypatch):
    # the grids compared equal, but the points' folders were named in the new order: all of them trained again
    import bgmrec.runs as runs

    run_grid(tiny_dir, "cmvae", {"lr": ["0.002"], "dropout": ["0.1", "0.2"]}, tmp_path / "g", SMALL_CMVAE)
    trained = []
    monkeypatch.setattr(runs, "train_model", lambda data, model, run, **kw: trained.append(run.name))
    for grid in ({"dropout": ["0.1", "0.2"], "lr": ["0.002"]}, {"lr": ["0.002"], "dropout": ["0.1", "0.2"]}):
        resumed = run_grid(tiny_dir, "cmvae", grid, tmp_path / "g", SMALL_CMVAE, resume=True)  # twice: as recorded
        assert trained == [] and [Path(t.run).name for t in resumed] == ["lr=0.002,dropout=0.1",
                                                                          "lr=0.002,dropout=0.2"]


def test_resume_refuses_another_grid_or_a_folder_without_one(tiny_dir, tmp_path):
    run_grid(tiny_dir, "popularity", {"seed": ["0"]}, tmp_path / "tune")
    with pytest.raises(ValueError, match=r"--resume: .*tuning.json records another grid"):
        run_grid(tiny_dir, "popularity", {"seed": ["0", "1"]}, tmp_path / "tune", resume=True)
    with pytest.raises(ValueError, match=r"records another model, grid and seed than given now \(model: 'popularity'; "
                                         r"grid: \{'seed': \['0'\]\}; seed: each point's own \(a grid key\)\)"):
        run_grid(tiny_dir, "random", {"lr": ["1"]}, tmp_path / "tune", resume=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"--resume: .*other holds no grid of `bgmrec tune` to resume"):
        run_grid(tiny_dir, "popularity", {"seed": ["0"]}, tmp_path / "other", resume=True)
    with pytest.raises(ValueError, match="or --resume to finish a stopped grid there"):
        run_grid(tiny_dir, "popularity", {"seed": ["0"]}, tmp_path / "tune")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    fresh = run_grid(tiny_dir, "popularity", {"seed": ["0"]}, tmp_path / "new", resume=True)  # nothing to resume
    assert len(fresh) == 1


def test_resume_refuses_features_extracted_again(tiny_copy, tmp_path):
    import numpy as np

    run_grid(tiny_copy, "popularity", {"seed": ["0"]}, tmp_path / "tune")
    visual = tiny_copy / "features" / "video_visual.npy"
    np.save(visual, np.load(visual) + 1.0)  # the same splits, other features
    with pytest.raises(ValueError, match="records another features_fingerprint"):
        run_grid(tiny_copy, "popularity", {"seed": ["0"]}, tmp_path / "tune", resume=True)
    record = json.loads((tmp_path / "tune" / "tuning.json").read_text())
    del record["features_fingerprint"]  # a grid tuned before the key was recorded
    (tmp_path / "tune" / "tuning.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"features_fingerprint: not recorded \(an older bgmrec\)"):
        run_grid(tiny_copy, "popularity", {"seed": ["0"]}, tmp_path / "tune", resume=True)


def test_resume_refuses_another_teacher_other_code_or_a_changed_run(tiny_dir, tmp_path, monkeypatch):
    import bgmrec.runs as runs
    from bgmrec.runs import train_model

    for name in ("t1", "t2"):
        train_model(tiny_dir, "cmvae", tmp_path / name, sets=SMALL_CMVAE, progress=False)
    small = {**SMALL_CMVAE, "prior_samples": "16"}
    run_grid(tiny_dir, "deccm", {"alpha": ["0.5", "0.1"]}, tmp_path / "g", small, teacher=tmp_path / "t1")
    with pytest.raises(ValueError, match="records another teacher"):
        run_grid(tiny_dir, "deccm", {"alpha": ["0.5", "0.1"]}, tmp_path / "g", small, teacher=tmp_path / "t2",
                 resume=True)
    real_code = runs.code_fingerprint
    monkeypatch.setattr(runs, "code_fingerprint", lambda: "0.1.0+other")  # edited sources, committed or not
    with pytest.raises(ValueError, match=r"was tuned by another bgmrec \(code 0\.1\.0\+\w+, now 0\.1\.0\+other\), "
                                         r"whose finished points cannot be reused: tune into a new --out$"):
        run_grid(tiny_dir, "deccm", {"alpha": ["0.5", "0.1"]}, tmp_path / "g", small, teacher=tmp_path / "t1",
                 resume=True)
    monkeypatch.setattr(runs, "code_fingerprint", real_code)
    config = tmp_path / "g" / "alpha=0.1" / "config.json"
    config.write_text(config.read_text().replace('"alpha": 0.1', '"alpha": 0.3'))
    with pytest.raises(ValueError, match=r"alpha=0.1 holds a run of another config than this point's"):
        run_grid(tiny_dir, "deccm", {"alpha": ["0.5", "0.1"]}, tmp_path / "g", small, teacher=tmp_path / "t1",
                 resume=True)


def test_a_grid_stopped_in_its_first_point_after_its_teacher_resumes(tiny_dir, tmp_path, monkeypatch):
    import bgmrec.runs

    small = {**SMALL_CMVAE, "prior_samples": "16"}
    real = bgmrec.runs.train_model

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt  # the teacher is trained, the first point's student not

    monkeypatch.setattr(bgmrec.runs, "train_model", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_grid(tiny_dir, "deccm", {"alpha": ["0.5", "0.1"]}, tmp_path / "g", small)
    assert (tmp_path / "g" / "teachers" / "shared" / "config.json").is_file()
    assert json.loads((tmp_path / "g" / "tuning.json").read_text())["trials"] == []
    monkeypatch.setattr(bgmrec.runs, "train_model", real)
    trials = run_grid(tiny_dir, "deccm", {"alpha": ["0.5", "0.1"]}, tmp_path / "g", small, resume=True)
    assert len(trials) == 2 and {t.settings["alpha"] for t in trials} == {"0.5", "0.1"}


def test_a_grid_that_failed_before_its_first_point_finished_leaves_the_folder_to_a_new_grid(tiny_dir, tmp_path):
    small = {**SMALL_CMVAE, "epochs": "2"}
    with pytest.raises(ValueError, match="training diverged"):
        run_grid(tiny_dir, "cmvae", {"lr": ["1e30", "1e31"]}, tmp_path / "g", small)
    assert json.loads((tmp_path / "g" / "tuning.json").read_text())["trials"] == []
    with pytest.raises(ValueError, match="records another grid"):  # a mistyped --resume is still caught
        run_grid(tiny_dir, "cmvae", {"lr": ["0.002"]}, tmp_path / "g", small, resume=True)
    trials = run_grid(tiny_dir, "cmvae", {"lr": ["0.002"]}, tmp_path / "g", small)  # not --resume: a new grid
    assert len(trials) == 1
    assert json.loads((tmp_path / "g" / "tuning.json").read_text())["grid"] == {"lr": ["0.002"]}


def test_a_killed_training_s_leftovers_block_neither_a_new_grid_nor_a_resume(tiny_dir, tmp_path):
    out = tmp_path / "g"
    (out / ".seed=0.tmp-abcd").mkdir(parents=True)  # what a kill during the first point leaves
    trials = run_grid(tiny_dir, "popularity", {"seed": ["0"]}, out)
    assert [(t.settings, Path(t.run)) for t in trials] == [({"seed": "0"}, out / "seed=0")]
    assert (out / "seed=0" / "config.json").is_file()  # the point trained into its own folder, beside the leftover
    (out / ".seed=1.tmp-efgh").mkdir()
    resumed = run_grid(tiny_dir, "popularity", {"seed": ["0"]}, out, resume=True)
    assert [(t.settings, t.run, t.val_recall_at_10) for t in resumed] == [
        (t.settings, t.run, t.val_recall_at_10) for t in trials]  # the finished point, as it was


def test_resume_names_a_damaged_tuning_json(tiny_dir, tmp_path):
    out = tmp_path / "g"
    run_grid(tiny_dir, "popularity", {"seed": ["0"]}, out)
    saved = json.loads((out / "tuning.json").read_text())
    saved["trials"] = [{"run": str(out / "seed=0")}]
    (out / "tuning.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="tuning.json: field 'trials' must be a list of objects"):
        run_grid(tiny_dir, "popularity", {"seed": ["0"]}, out, resume=True)
    del saved["code"]  # as written before --resume existed
    (out / "tuning.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="written by a bgmrec before --resume existed"):
        run_grid(tiny_dir, "popularity", {"seed": ["0"]}, out, resume=True)
    for emptied in ({}, {"trials": []}):  # was said to be an older bgmrec's (a fuzz audit)
        (out / "tuning.json").write_text(json.dumps(emptied))
        with pytest.raises(ValueError, match=r"tuning.json is no record of a tune grid \(no field 'model'.*\): "
                                             r"damaged or replaced; tune into a new --out$"):
            run_grid(tiny_dir, "popularity", {"seed": ["0"]}, out, resume=True)


def test_resume_refuses_a_teacher_retrained_in_place_or_gone(tiny_dir, tmp_path, monkeypatch):
    import shutil

    from bgmrec.runs import train_model

    small = {**SMALL_CMVAE, "prior_samples": "16"}
    train_model(tiny_dir, "cmvae", tmp_path / "t", sets=SMALL_CMVAE, progress=False)
    run_grid(tiny_dir, "deccm", {"alpha": ["0.5"]}, tmp_path / "g", small, teacher=tmp_path / "t")
    train_model(tiny_dir, "cmvae", tmp_path / "t", sets={**SMALL_CMVAE, "seed": "9"}, progress=False)
    with pytest.raises(ValueError, match="records another teacher_weights_sha256"):
        run_grid(tiny_dir, "deccm", {"alpha": ["0.5"]}, tmp_path / "g", small, teacher=tmp_path / "t", resume=True)
    run_grid(tiny_dir, "deccm", {"alpha": ["0.5"]}, tmp_path / "own", small)  # trains its own teacher
    shared = tmp_path / "own" / "teachers" / "shared"
    original = (shared / "weights.safetensors").read_bytes()
    shutil.rmtree(shared)
    shutil.copytree(tmp_path / "t", shared)  # another teacher in its place, without the grid's record of it
    run_grid(tiny_dir, "deccm", {"alpha": ["0.5"]}, tmp_path / "own", small, resume=True)  # trained again
    assert (shared / "weights.safetensors").read_bytes() == original  # the same seed: the point is kept
    shutil.copy(tmp_path / "t" / "weights.safetensors", shared)  # other weights under the grid's record
    with pytest.raises(ValueError, match="alpha=0.5's teacher is missing or was retrained"):
        run_grid(tiny_dir, "deccm", {"alpha": ["0.5"]}, tmp_path / "own", small, resume=True)
    shutil.rmtree(shared)  # gone: trained again, with the same seed the same weights, so the point is kept
    run_grid(tiny_dir, "deccm", {"alpha": ["0.5"]}, tmp_path / "own", small, resume=True)
    shutil.rmtree(shared)  # gone, and its training again diverges: the finished point cannot keep it
    from bgmrec.runs import SharedTeachers
    from bgmrec.train import TrainingDiverged

    def diverges(*args, **kwargs):
        raise TrainingDiverged("cmvae: training diverged at epoch 1")

    monkeypatch.setattr(SharedTeachers, "for_model", diverges)  # an AttributeError on the divergence before
    with pytest.raises(ValueError, match="alpha=0.5's teacher is missing or was retrained"):
        run_grid(tiny_dir, "deccm", {"alpha": ["0.5"]}, tmp_path / "own", small, resume=True)


def test_points_of_equal_val_recall_are_ranked_by_val_mrr():
    # a small catalogue saturates Recall@10: every point tied and the grid's first one won, whatever its MRR
    from bgmrec.tune import Trial, _ranked

    trials = [Trial({"lr": lr}, f"runs/{lr}", recall, mrr, None, 5, 1.0)
              for lr, recall, mrr in [("a", 1.0, 0.4), ("b", 1.0, 0.6), ("c", 0.9, 0.9), ("d", 1.0, 0.6)]]
    assert [t.settings["lr"] for t in _ranked(trials)] == ["b", "d", "a", "c"]  # equal in both: the grid's order


def test_the_complete_record_and_the_summary_are_written_together(tiny_dir, tmp_path, monkeypatch):
    # a stop between them left tuning.json marked complete and no tuning.md (or an earlier grid's)
    import bgmrec.tune

    real = bgmrec.tune.tuning_markdown

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bgmrec.tune, "tuning_markdown", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_grid(tiny_dir, "popularity", {"seed": ["0", "1"]}, tmp_path / "tune")
    saved = json.loads((tmp_path / "tune" / "tuning.json").read_text())
    assert not saved["complete"] and len(saved["trials"]) == 2  # every point kept for --resume
    assert not (tmp_path / "tune" / "tuning.md").exists()
    monkeypatch.setattr(bgmrec.tune, "tuning_markdown", real)
    run_grid(tiny_dir, "popularity", {"seed": ["0", "1"]}, tmp_path / "tune", resume=True)
    assert json.loads((tmp_path / "tune" / "tuning.json").read_text())["complete"]
    assert (tmp_path / "tune" / "tuning.md").is_file()


def test_a_point_whose_training_diverges_is_recorded_and_the_grid_goes_on(tiny_dir, tmp_path, monkeypatch):
    # one lr too high ended the whole grid with the point's error, and no --resume or new grid could finish it
    import bgmrec.runs as runs

    grid = {"lr": ["1e6", "0.002", "0.001"]}
    out = tmp_path / "tune"
    trials = run_grid(tiny_dir, "cmvae", grid, out, SMALL_CMVAE)  # lr=1e6 really diverges on the tiny world
    assert [t.settings["lr"] for t in trials] in (["0.002", "0.001"], ["0.001", "0.002"])
    saved = json.loads((out / "tuning.json").read_text())
    [diverged] = saved["diverged"]
    assert saved["complete"] and diverged["settings"] == {"lr": "1e6"} and not (out / "lr=1e6").exists()
    assert diverged["diverged"].startswith("cmvae: training diverged at epoch 1")
    summary = (out / "tuning.md").read_text()
    assert ("Diverged, not ranked (their training's loss or weights stopped being finite); *vs the first point* "
            "compares with the first point that trained:\n\n- lr=1e6: cmvae: training diverged") in summary
    assert next(t for t in trials if t.settings["lr"] == "0.002").against_first is None  # the reference
    monkeypatch.setattr(runs, "train_model", lambda *a, **kw: pytest.fail("a point was trained again"))
    resumed = run_grid(tiny_dir, "cmvae", grid, out, SMALL_CMVAE, resume=True)
    assert [t.settings for t in resumed] == [t.settings for t in trials]
    assert json.loads((out / "tuning.json").read_text())["diverged"] == [diverged]


def test_a_deccm_point_whose_teacher_diverges_is_recorded_as_that_point_s(tiny_dir, tmp_path):
    # the teacher takes the point's lr and was trained outside the point's handling: the grid still ended
    sets = {**SMALL_CMVAE, "batch_size": "64"}  # more steps: lr=1e6 diverges in the first epoch
    trials = run_grid(tiny_dir, "deccm", {"lr": ["0.002", "1e6"]}, tmp_path / "tune", sets)
    assert [t.settings for t in trials] == [{"lr": "0.002"}]
    [diverged] = json.loads((tmp_path / "tune" / "tuning.json").read_text())["diverged"]
    assert diverged["settings"] == {"lr": "1e6"}
    assert diverged["diverged"].startswith("its teacher: cmvae: training diverged at epoch 1")


def test_a_grid_whose_every_point_diverges_fails_saying_so(tiny_dir, tmp_path):
    from bgmrec.train import TrainingDiverged

    with pytest.raises(TrainingDiverged, match=r"every point of the grid diverged \(cmvae: training diverged .*\); "
                                               r"lower the learning rate \(--grid or --set lr\)"):
        run_grid(tiny_dir, "cmvae", {"lr": ["1e6", "1e7"]}, tmp_path / "tune", SMALL_CMVAE)
    assert not json.loads((tmp_path / "tune" / "tuning.json").read_text())["complete"]


def test_a_second_grid_into_the_same_folder_is_refused_while_the_first_runs(tiny_dir, tmp_path):
    # two tune --resume of one grid at once each trained the same points, and DecCM's shared teachers (a review)
    from bgmrec.data.dataset import DatasetError, writing_lock

    out = tmp_path / "grid"
    with writing_lock(out), pytest.raises(DatasetError, match=r"is writing it now"):
        run_grid(tiny_dir, "popularity", {"seed": ["0", "1"]}, out)
    assert not out.exists()


def test_a_resumed_grid_keeps_the_command_that_started_it(tiny_dir, tmp_path, stop_training):
    # tune --resume recorded itself (with --resume) as the command that made the grid, in tuning.md and tuning.json
    import shlex

    calls = stop_training(2)
    out = tmp_path / "tune"
    started = ["tune", "--data", str(tiny_dir), "--model", "popularity", "--out", str(out), "--grid", "seed=0",
               "--grid", "seed=1"]
    assert main(started) == 130
    assert main([*started, "--resume"]) == 0  # finishes it
    assert main([*started, "--resume"]) == 0  # a finished grid, resumed again: nothing trained, written again
    assert len(calls) == 3
    original, resumed = shlex.join(["bgmrec", *started]), shlex.join(["bgmrec", *started, "--resume"])
    saved = json.loads((out / "tuning.json").read_text())
    assert saved["complete"] and saved["command"] == original and saved["resumed_by"] == [resumed, resumed]
    md = (out / "tuning.md").read_text()
    assert f"Made by `{original}`, resumed by `{resumed}`.\n" in md and md.count("resumed by") == 1
