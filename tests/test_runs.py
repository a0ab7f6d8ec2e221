"""``bgmrec.runs``: training into a run folder from Python, and the layering of library and application."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import bgmrec
from bgmrec.data.dataset import dataset_fingerprint, features_fingerprint
from bgmrec.runs import train_model, warn_if_trained_on_other_data

PACKAGE = Path(bgmrec.__file__).resolve().parent
APPLICATION = {PACKAGE / "cli", PACKAGE / "__main__.py"}  # the command line: what no library module may import


def imported_modules(source: Path) -> set[str]:
    """Every module an ``import`` or ``from ... import`` of ``source`` names, at any depth (lazy imports too)."""
    names = set()
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_no_library_module_imports_the_command_line():
    library = [p for p in PACKAGE.rglob("*.py") if not any(p == a or a in p.parents for a in APPLICATION)]
    assert PACKAGE / "runs.py" in library and PACKAGE / "bench.py" in library
    offenders = {str(p.relative_to(PACKAGE)): sorted(m for m in imported_modules(p)
                                                     if m == "bgmrec.cli" or m.startswith(("bgmrec.cli.", "typer")))
                 for p in library}
    assert {p: m for p, m in offenders.items() if m} == {}


def test_the_core_library_imports_no_application_module():
    # the README's layering: data, features, models and eval (and runs, train, index, testing, bounds, extras) are the
    # library; demo, the benches, tune, service and the command line are built on it (features/bench.py, importing
    # the service, sat in the library)
    application = ("bgmrec.cli", "bgmrec.demo", "bgmrec.bench", "bgmrec.bench_media", "bgmrec.bench_tuned",
                   "bgmrec.tune", "bgmrec.service")
    core = [p for part in ("data", "features", "models", "eval") for p in (PACKAGE / part).rglob("*.py")]
    core += [PACKAGE / f"{name}.py" for name in ("runs", "train", "index", "testing", "bounds", "extras")]
    layers = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in PACKAGE.rglob("*.py")}
    assert layers - {"__init__", "__main__"} == {a.removeprefix("bgmrec.") for a in application} | {
        "data", "features", "models", "eval", "runs", "train", "index", "testing", "bounds",
        "extras"}  # every module placed
    offenders = {str(p.relative_to(PACKAGE)): sorted(m for m in imported_modules(p)
                                                     if any(m == a or m.startswith(a + ".") for a in application))
                 for p in core}
    assert {p: m for p, m in offenders.items() if m} == {}


def test_imported_modules_finds_lazy_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from bgmrec.cli.core import train\n    import typer\n")
    assert {"bgmrec.cli.core", "bgmrec.cli.core.train", "typer"} <= imported_modules(source)


def test_train_model_from_python_writes_the_run_and_its_record(tiny_dir, tmp_path, capsys):
    run = tmp_path / "runs" / "popularity"
    model, seconds = train_model(str(tiny_dir), "popularity", str(run), progress=False)  # paths as strings
    assert model.name == "popularity" and seconds >= 0
    assert {"config.json", "run.json"} <= {p.name for p in run.iterdir()}
    record = json.loads((run / "run.json").read_text())
    assert record["model"] == "popularity"
    assert record["data"] == str(Path(tiny_dir).resolve())
    assert record["data_fingerprint"] == dataset_fingerprint(tiny_dir)
    assert record["features_fingerprint"] == features_fingerprint(tiny_dir)
    warn_if_trained_on_other_data(run, tiny_dir)  # its own dataset: nothing to say
    assert capsys.readouterr().err == ""


def test_the_code_fingerprint_ignores_comments_docstrings_and_layout_not_code(tmp_path):
    # a docstring edit made bench quality --resume retrain every run (a contributor audit)
    from bgmrec.runs import code_digest

    def package(name: str, source: str) -> Path:
        root = tmp_path / name
        (root / "sub").mkdir(parents=True)
        (root / "sub" / "m.py").write_text(source)
        return root

    base = code_digest(package("a", '"""Module."""\n\ndef f(x):\n    """Doc."""\n    return x + 1  # one\n'))
    assert code_digest(package("b", '"""Other words."""\ndef f(x):\n    """Said otherwise."""\n\n\n'
                                    '    return (x +\n            1)  # more\n')) == base
    assert code_digest(package("c", '"""Module."""\n\ndef f(x):\n    return x + 2\n')) != base
    assert code_digest(package("d", '"""Module."""\n\ndef f(x):\n    """Doc."""\n    raise ValueError("x")\n'
                                    '\ndef g():\n    "a message"\n')) != code_digest(
        package("e", '"""Module."""\n\ndef f(x):\n    """Doc."""\n    raise ValueError("y")\n\ndef g():\n'
                     '    "a message"\n'))  # messages are code
    moved = package("f", '"""Module."""\n\ndef f(x):\n    """Doc."""\n    return x + 1  # one\n')
    (moved / "sub" / "m.py").rename(moved / "m.py")
    assert code_digest(moved) != base  # a module moved is another module
    unfinished = package("g", '"""Module."""\n\ndef f(x):\n    """Doc."""\n    return x + 1  # one\n')
    (unfinished / "wip.py").write_text("def f(:\n")  # a work in progress: it failed every train's save
    (unfinished / "latin1.py").write_bytes(b"s = '\xe9'\n")
    assert code_digest(unfinished) not in (base, code_digest(package("h", (unfinished / "sub" / "m.py").read_text())))
    (unfinished / "wip.py").write_text("def f(:\n    pass\n")
    assert code_digest.__wrapped__(unfinished) != code_digest(unfinished)  # its bytes count
    before = code_digest.__wrapped__(unfinished)
    (unfinished / ".#emacs-lock.py").symlink_to("user@host.1234")  # dangling, named *.py: no code, no failure
    assert code_digest.__wrapped__(unfinished) == before


def test_a_second_training_into_the_same_folder_is_refused_while_the_first_runs(tiny_dir, tmp_path):
    # two train --out RUN at once each trained, and the last to end replaced the other's run without a word
    import fcntl
    import os

    from bgmrec.data.dataset import DatasetError, writing_lock

    run = tmp_path / "runs" / "popularity"
    run.parent.mkdir()
    with writing_lock(run):  # the first, here as this process holding the lock
        holder = os.open(run.parent / ".popularity.lock", os.O_RDONLY)
        with pytest.raises(BlockingIOError):  # held, as another process would find it
            fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(holder)
        with pytest.raises(DatasetError, match=rf"^--out {run}: another bgmrec \(process {os.getpid()}\) is writing "
                                               "it now; wait for it to end, or choose another folder$"):
            train_model(str(tiny_dir), "popularity", str(run), progress=False)
        assert not run.exists()
    assert sorted(p.name for p in run.parent.iterdir()) == []  # the lock file removed with the lock
    train_model(str(tiny_dir), "popularity", str(run), progress=False)  # free again
    assert sorted(p.name for p in run.parent.iterdir()) == ["popularity"]
    fresh = tmp_path / "new" / "run"  # a first run into a folder not made yet went unlocked (a review)
    with writing_lock(fresh), pytest.raises(DatasetError, match="is writing it now"):
        train_model(str(tiny_dir), "popularity", str(fresh), progress=False)
    (run.parent / ".popularity.lock").write_text("12345")  # a killed holder's: its lock went with it
    from bgmrec.data.dataset import is_leftover

    assert is_leftover(run.parent / ".popularity.lock")  # tune's "empty folder" check looks past it
    target = tmp_path / "elsewhere"
    link = tmp_path / "linked"
    link.symlink_to(target, target_is_directory=True)
    target.mkdir()
    train_model(str(tiny_dir), "popularity", str(link), progress=False)  # a 40-line traceback, a link left aside
    assert link.is_symlink() and (target / "run.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_git_commit_defaults_to_this_package_s_checkout():
    from bgmrec.runs import git_commit

    assert git_commit() == git_commit(PACKAGE)  # the default is this package, src/bgmrec, not its parent


TINY_DECCM = {"epochs": "1", "hidden": "16", "latent_dim": "4", "prior_samples": "16", "batch_size": "256"}


def test_a_teacher_trained_for_a_run_that_fails_to_save_is_kept_beside_it(tiny_dir, tmp_path, monkeypatch, capsys):
    from bgmrec.models.base import load_model
    from bgmrec.models.deccm import DecCM

    def full_disk(self, out):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(DecCM, "save", full_disk)
    run = tmp_path / "deccm"
    with pytest.raises(OSError, match="No space left"):
        train_model(tiny_dir, "deccm", run, sets=TINY_DECCM, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deccm.teacher"]
    assert load_model(tmp_path / "deccm.teacher").name == "cmvae"
    assert "is kept at" in capsys.readouterr().err


def test_a_teacher_that_cannot_be_kept_leaves_the_original_error_to_the_caller(tiny_dir, tmp_path, monkeypatch,
                                                                                 capsys):
    from bgmrec.models.deccm import DecCM

    def stopped(self, *args, **kwargs):
        raise KeyboardInterrupt

    real_rename = Path.rename

    def no_rename(self, target):
        if Path(target).name.endswith(".teacher"):
            raise OSError(18, "Invalid cross-device link")
        return real_rename(self, target)

    monkeypatch.setattr(DecCM, "fit", stopped)
    monkeypatch.setattr(Path, "rename", no_rename)
    with pytest.raises(KeyboardInterrupt):  # the stop, not the failed move
        train_model(tiny_dir, "deccm", tmp_path / "deccm", sets=TINY_DECCM, progress=False)
    assert list(tmp_path.iterdir()) == []
    assert "could not be kept (" in capsys.readouterr().err


def test_a_model_whose_state_arrays_leave_out_what_fit_learns_is_not_saved(tiny_dir, tmp_path):
    """Loaded back without what fit learned, it would score by its initialisation, at random: train compares
    the saved model's scores with the fitted one's and refuses, leaving --out as it was (nothing, or the run
    there before)."""
    from bgmrec.models.base import load_model
    from bgmrec.models.registry import register_model, unregister_model
    from unfitted import forgetful_model

    Forgetful = forgetful_model()  # learns counts in fit, saves none of them

    refused = (r"^forgetful \(Forgetful\): loaded back from the folder it was saved to, it scores 32 val queries "
               r"otherwise \(by up to [\d.]+, scores up to [\d.]+\): state_arrays\(\) must return every array fit "
               r"learns \(and load_state_arrays restore it\); not saved$")
    earlier = tmp_path / "earlier"
    train_model(tiny_dir, "popularity", earlier, progress=False)
    register_model("forgetful", Forgetful)
    try:
        for out in (tmp_path / "new", earlier):
            with pytest.raises(ValueError, match=refused):
                train_model(tiny_dir, "forgetful", out, progress=False)
    finally:
        unregister_model("forgetful")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier"]
    assert load_model(earlier).name == "popularity"


def test_a_run_of_a_dataset_built_again_in_its_folder_is_told_so_not_as_another_dataset(tiny_copy, tmp_path, capsys):
    """The warning named the same folder twice ('trained on another dataset (X) than X')."""
    run = tmp_path / "run"
    train_model(tiny_copy, "popularity", run, progress=False)
    record = json.loads((run / "run.json").read_text())
    record["data_fingerprint"] = "0" * len(record["data_fingerprint"])  # as if the folder was built again since
    (run / "run.json").write_text(json.dumps(record))
    capsys.readouterr()
    said = warn_if_trained_on_other_data(run, tiny_copy)
    assert said == (f"{run} was trained on {tiny_copy} as it was before it was built again (its splits or manifest "
                    "changed since)")
    assert capsys.readouterr().err == f"warning: {said}\n"


def test_a_trained_model_that_scores_every_track_alike_is_warned_of(tiny_dir, tiny_ds, tmp_path, capsys):
    # every upload choosing one track, or tracks of one feature vector: models trained to all ties, without a word
    import dataclasses

    import numpy as np

    from bgmrec.data.dataset import save_dataset
    from bgmrec.runs import warn_if_every_track_ties

    flat = tmp_path / "flat"
    save_dataset(dataclasses.replace(tiny_ds, music=np.full_like(np.asarray(tiny_ds.music), 0.5)), flat)
    for model in ("popularity", "cca"):
        train_model(flat, model, tmp_path / model, progress=False)
        assert (f"warning: {model} scores every track alike for each of 32 val queries: its rankings are a random "
                "order, chance level") in capsys.readouterr().err
    train_model(tiny_dir, "cca", tmp_path / "cca-tiny", progress=False)
    assert "alike" not in capsys.readouterr().err  # scores that vary: nothing said
    assert warn_if_every_track_ties("m", np.array([[2.0, 2.0, 2.0], [-1.0, -1.0, -1.0]]), "val") is not None
    assert warn_if_every_track_ties("m", np.array([[2.0, 2.0, 2.0], [-1.0, -1.0, -0.5]]), "val") is None  # one varies
    assert warn_if_every_track_ties("m", np.array([[1e9, 1e9 + 1e-3]]), "val") is not None  # rounding, not a spread
    assert warn_if_every_track_ties("m", np.array([[1e-3, 2e-3, 1.5e-3]]), "val") is None  # small scores that vary
    assert warn_if_every_track_ties("m", np.zeros((2, 3)), "val") is not None
    capsys.readouterr()


def test_training_on_features_a_few_rows_far_out_set_the_spread_of_is_warned_of(tiny_ds, tmp_path, capsys):
    # one video of 300 at 1e6 took a two-tower model below chance, and build, train and evaluate said nothing
    import dataclasses

    import numpy as np

    from bgmrec.data.dataset import save_dataset
    from bgmrec.runs import warn_about_features

    visual = np.array(tiny_ds.video_visual)
    visual[7] = 1e6
    far = tmp_path / "far"
    save_dataset(dataclasses.replace(tiny_ds, video_visual=visual), far)
    train_model(far, "popularity", tmp_path / "run", progress=False)
    said = capsys.readouterr().err
    assert (f"warning: {far}/features/video_visual.npy: {visual.shape[1]} of {visual.shape[1]} features have a "
            "standard deviation over 100 times their typical spread (median absolute deviation), set by 1 row(s) "
            f"more than 10000 typical spreads from the rest (first {tiny_ds.video_ids[7]!r}, ") in said
    assert warn_about_features(tiny_ds, tmp_path) == []  # the simulated world's features: nothing said


def test_training_on_features_too_narrow_for_the_standardisation_is_warned_of(tiny_ds, tmp_path, capsys):
    # a file of features in small units (std 1e-5): every network took them for constants, learned nothing from
    # them, and said nothing (a correctness audit)
    import dataclasses

    import numpy as np

    from bgmrec.data.dataset import save_dataset
    from bgmrec.runs import warn_about_features

    music = np.array(tiny_ds.music)
    small = tmp_path / "small"
    save_dataset(dataclasses.replace(tiny_ds, music=music * 1e-5), small)
    train_model(small, "popularity", tmp_path / "run", progress=False)
    assert (f"warning: {small}/features/music.npy: {music.shape[1]} of {music.shape[1]} features vary, but with a "
            "standard deviation of at most 0.0001, which the networks take for a constant") in capsys.readouterr().err
    few = music.copy()
    few[:, :2] *= 1e-6  # two narrow features of many: not worth a word
    constant = music.copy()
    constant[:, :] = constant[0] + np.float32(0)  # constant features, whatever their magnitude, are not narrow
    for features in (few, constant, np.full_like(music, 1e3) + np.float32(1e-4) * (np.arange(len(music)) % 2)[:, None]):
        assert warn_about_features(dataclasses.replace(tiny_ds, music=features), tmp_path) == []



def _dead_pid() -> int:
    """A process id that no longer runs."""
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return dead.pid


def test_a_killed_training_s_finished_teacher_is_kept_by_the_next_write(tiny_dir, tmp_path, monkeypatch, capsys):
    """kill -9 (the OOM killer) while DecCM's student trained left its finished teacher in .RUN.tmp-PID-*/teacher,
    and the next write to RUN deleted it without a word (and trained another): it is kept as a stopped training
    keeps it, at RUN.teacher, and reused; a teacher killed before it finished (no record) is removed with the
    folder."""
    import shutil

    from bgmrec.models.base import load_model
    from bgmrec.models.deccm import DecCM

    run = tmp_path / "deccm"
    real_fit = DecCM.fit

    def stopped(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(DecCM, "fit", stopped)
    with pytest.raises(KeyboardInterrupt):
        train_model(tiny_dir, "deccm", run, sets=TINY_DECCM, progress=False)
    monkeypatch.setattr(DecCM, "fit", real_fit)
    pid = _dead_pid()
    killed = tmp_path / f".deccm.tmp-{pid}-abcd1234"  # what the killed process left: a run half made, its teacher
    killed.mkdir()
    shutil.move(run.with_name("deccm.teacher"), killed / "teacher")
    weights = (killed / "teacher" / "weights.safetensors").read_bytes()
    unfinished = tmp_path / f".deccm.tmp-{_dead_pid()}-ef567890"  # killed while its teacher trained: no record
    shutil.copytree(killed, unfinished)
    (unfinished / "teacher" / "run.json").unlink()
    capsys.readouterr()

    train_model(tiny_dir, "deccm", run, sets=TINY_DECCM, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deccm", "deccm.teacher"]
    kept = run.with_name("deccm.teacher")
    assert (kept / "weights.safetensors").read_bytes() == weights and load_model(kept).name == "cmvae"
    err = capsys.readouterr().err
    assert (f"a training of {run} was killed (process {pid}, which no longer runs) after its teacher was trained; "
            f"the teacher trained for it is kept at {kept}") in err
    assert f"reusing the teacher kept at {kept}" in err  # not trained again
    assert load_model(run).teacher_dir == str(kept.resolve()) and not (run / "teacher").exists()


def test_training_a_deccm_into_its_own_folder_again_reuses_its_teacher_when_it_matches(tiny_dir, tmp_path, monkeypatch,
                                                                                       capsys):
    # trained again into --out (another student setting, more epochs), DecCM trained its teacher again from scratch,
    # and --teacher OUT/teacher was refused (inside --out, replaced whole)
    import bgmrec.models.deccm as deccm
    from bgmrec.models.base import load_model

    run = tmp_path / "deccm"
    train_model(tiny_dir, "deccm", run, sets=TINY_DECCM, progress=False)
    weights = (run / "teacher" / "weights.safetensors").read_bytes()
    capsys.readouterr()
    trained = []
    real_train = deccm.train_teacher
    monkeypatch.setattr(deccm, "train_teacher", lambda *a, **k: trained.append(1) or real_train(*a, **k))
    train_model(tiny_dir, "deccm", run, sets={**TINY_DECCM, "alpha": "0.25"}, progress=False)  # a student setting
    assert trained == [] and (run / "teacher" / "weights.safetensors").read_bytes() == weights
    assert f"note: reusing the teacher of the run at {run}, trained on this data by this code with this teacher " \
           "config (copied into the new run)" in capsys.readouterr().err
    student = load_model(run)
    assert student.config.alpha == 0.25 and student.teacher_dir == str((run / "teacher").resolve())
    assert json.loads((run / "teacher" / "run.json").read_text())["teacher_config"]  # its record came along
    train_model(tiny_dir, "deccm", run, sets={**TINY_DECCM, "seed": "1"}, progress=False)  # the teacher's seed too
    assert trained == [1] and (run / "teacher" / "weights.safetensors").read_bytes() != weights
    assert (f"note: the teacher of the run at {run} is not reused: it was trained with another config; a new "
            "one is trained") in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deccm"]
    # stopped after taking it over: the run there is left whole, and no copy is kept beside it as "trained for it"
    weights = (run / "teacher" / "weights.safetensors").read_bytes()

    def stopped(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(deccm.DecCM, "fit", stopped)
    capsys.readouterr()
    with pytest.raises(KeyboardInterrupt):
        train_model(tiny_dir, "deccm", run, sets={**TINY_DECCM, "seed": "1", "alpha": "0.25"}, progress=False)
    assert "kept at" not in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deccm"]
    assert (run / "teacher" / "weights.safetensors").read_bytes() == weights
    assert load_model(run).config.alpha == 0.5  # the run before the stopped one: alpha as its default


@pytest.mark.filterwarnings("ignore::bgmrec.models.baselines.NoTrainingTrackWarning")  # popularity's, of that world
def test_evaluating_a_saved_run_on_another_dataset_from_python_warns_as_the_commands_do(tiny_dir, tmp_path):
    # evaluate(load_model(run), other world) scored at chance without a word; the command line warned
    import warnings

    from bgmrec.cli import main
    from bgmrec.data.dataset import load_dataset
    from bgmrec.eval.protocol import EvaluationWarning, compare, evaluate, evaluate_run
    from bgmrec.models.base import load_model

    run = tmp_path / "popularity"
    train_model(tiny_dir, "popularity", run, progress=False)
    assert main(["simulate", str(tmp_path / "seed1"), "--scale", "tiny", "--seed", "1"]) == 0
    model, other = load_model(run), load_dataset(tmp_path / "seed1")
    with pytest.warns(EvaluationWarning) as said:  # and popularity's own warning: no training track's features
        evaluate(model, other, "test")
    assert [str(w.message) for w in said if str(w.message).startswith(str(run))] == [
        f"{run} was trained on another dataset ({Path(tiny_dir).resolve()}) than {tmp_path / 'seed1'}: 0 of the 173 "
        "test queries' videos were in its training data (their figures are not held out), and 173 have a track it "
        "never trained on"]
    with pytest.warns(EvaluationWarning) as said:
        compare(model, load_model(run), other, "test", resamples=100)
    assert len([w for w in said if str(w.message).startswith(f"{run} was trained on another dataset")]) == 1  # once
    with pytest.warns(EvaluationWarning) as said:
        evaluate_run(run, other)  # every split: checked once
    assert len([w for w in said if str(w.message).startswith(f"{run} was trained on another dataset")]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", EvaluationWarning)
        evaluate(model, load_dataset(tiny_dir), "test")  # its own dataset: nothing to say
    with pytest.warns(EvaluationWarning, match=f"^{run} was trained on another dataset .* than {tmp_path / 'seed1'}$"):
        evaluate(model, other.with_split("mine", other.splits["test"][:5]), "mine")  # a split added in memory


def test_an_option_and_a_set_of_one_number_in_two_spellings_agree():
    """--seed 7 with --set seed=7.0 (or " 7") say the same: numbers are compared as numbers, not as text."""
    from bgmrec.runs import option_into_sets

    for spelling in ("7", "7.0", " 7", "7e0"):
        sets = {"seed": spelling}
        option_into_sets(sets, "seed", 7)
        assert sets == {"seed": 7}
    with pytest.raises(ValueError, match=r"^--seed 7 and --set seed=7.5 disagree; give seed once$"):
        option_into_sets({"seed": "7.5"}, "seed", 7)
    sets = {"inference": "content"}
    option_into_sets(sets, "inference", "content")  # words compared as words
    assert sets == {"inference": "content"}
