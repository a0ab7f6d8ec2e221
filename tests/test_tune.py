"""Grid search on val (`bgmrec tune`): the grid, one run per point, val-only figures, errors before training."""

from __future__ import annotations

import json

import pytest

from bgmrec.cli import main
from bgmrec.tune import grid_points, parse_grid, run_grid, trial_folder

SMALL_CMVAE = {"epochs": "1", "hidden": "16", "latent_dim": "4"}


def test_parse_grid_collects_repeated_keys_in_order():
    grid = parse_grid(["lr=0.002", "dropout=0.2", "lr = 0.0005", "hidden=[256, 128]"])
    assert grid == {"lr": ["0.002", "0.0005"], "dropout": ["0.2"], "hidden": ["[256, 128]"]}
    assert grid_points({"lr": ["a", "b"], "dropout": ["x", "y"]}) == [
        {"lr": "a", "dropout": "x"}, {"lr": "a", "dropout": "y"}, {"lr": "b", "dropout": "x"},
        {"lr": "b", "dropout": "y"}]  # the first value of every key first: the reference point


@pytest.mark.parametrize("items,words", [(["lr"], "key=value"), (["=1"], "key=value"), (["lr="], "key=value"),
                                         (["lr=1", "lr=1"], "given twice"), ([], "at least one --grid")])
def test_parse_grid_refuses_malformed_items(items, words):
    with pytest.raises(ValueError, match=words):
        parse_grid(items)


def test_trial_folders_are_safe_names():
    assert trial_folder({"lr": "0.002", "hidden": "[256, 128]"}) == "lr=0.002,hidden=_256,_128_"
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
    assert splits == ["val", "val"]  # no test split is read
    assert [t.val_recall_at_10 for t in trials] == sorted((t.val_recall_at_10 for t in trials), reverse=True)
    ds = load_dataset(tiny_dir)
    for t in trials:
        model = load_model(t.run)
        assert (model.config.lr, model.config.seed, model.config.latent_dim) == (float(t.settings["lr"]), 3, 4)
        assert real(model, ds, "val")["full"]["recall@10"] == pytest.approx(t.val_recall_at_10)
    first, other = sorted(trials, key=lambda t: t.settings["lr"] != "0.002")
    assert first.against_first is None
    assert other.against_first.baseline == pytest.approx(first.val_recall_at_10)
    assert other.against_first.candidate == pytest.approx(other.val_recall_at_10)
    saved = json.loads((tmp_path / "tune" / "tuning.json").read_text())
    assert [t["settings"] for t in saved["trials"]] == [t.settings for t in trials]
    table = (tmp_path / "tune" / "tuning.md").read_text()
    assert "| lr | val R@10 | vs the first point | epochs | seconds |" in table and "(the first point)" in table


@pytest.mark.parametrize("grid,sets,words", [
    ({"lr": ["0.002"], "nosuchfield": ["1"]}, {}, "nosuchfield"),
    ({"lr": ["0.002", "fast"]}, {}, "fast"),
    ({"lr": ["0.002"]}, {"lr": "0.001"}, "lr: given both as --set and as --grid"),
])
def test_bad_grids_fail_before_any_training(tiny_dir, tmp_path, grid, sets, words):
    with pytest.raises(ValueError, match=words):
        run_grid(tiny_dir, "cmvae", grid, tmp_path / "tune", {**SMALL_CMVAE, **sets})
    assert not (tmp_path / "tune").exists()


def test_tune_command(tiny_dir, tmp_path, capsys):
    out = tmp_path / "tune"
    assert main(["tune", "--data", str(tiny_dir), "--model", "popularity", "--out", str(out),
                 "--grid", "seed=0", "--grid", "seed=1"]) == 0
    printed = capsys.readouterr().out
    assert "best:" in printed and "(the first point)" in printed
    assert sorted(p.name for p in out.iterdir()) == ["seed=0", "seed=1", "tuning.json", "tuning.md"]
    assert main(["tune", "--data", str(tiny_dir), "--model", "popularity", "--out", str(out), "--grid", "lr"]) == 2
    assert "--grid expects key=value" in capsys.readouterr().err
