"""Benchmarks: `bench quality --resume` reuses finished runs of the same commit; the truth-fed diagnostics."""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

import bgmrec.bench
import bgmrec.runs
from bgmrec.bench import reusable_run, run_quality


def test_resume_reuses_finished_runs_of_the_same_code(tmp_path, monkeypatch):
    console = Console(quiet=True)
    work, out = tmp_path / "work", tmp_path / "report.md"
    code = "0.1.0+abc1234"  # whatever the sources of the checkout running the tests hash to
    monkeypatch.setattr(bgmrec.runs, "code_fingerprint", lambda: code)
    run_quality(["tiny"], [0], out, work, ["random", "popularity"], console, "cmd", resume=True)
    header = out.read_text()
    assert "One seed, 0: each figure is that world's." in header and "where more than one seed ran" not in header
    run = work / "tiny-seed0" / "runs" / "popularity"
    assert reusable_run(run, "popularity", 0, code)[0] is not None
    assert reusable_run(run, "popularity", 1, code)[0] is None  # another seed
    assert reusable_run(run, "random", 0, code)[0] is None  # another model
    assert reusable_run(run, "popularity", 0, code + "x")[0] is None  # other sources
    made = bgmrec.runs.dataset_record(work / "tiny-seed0" / "data")
    assert reusable_run(run, "popularity", 0, code, made)[0] is not None
    for fingerprint in ("data_fingerprint", "features_fingerprint"):  # the world was simulated again, otherwise
        sec, why = reusable_run(run, "popularity", 0, code, {**made, fingerprint: "0" * 16})
        assert sec is None and "trained on another world" in why
    report = out.read_text()
    real_train = bgmrec.runs.train_model

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was retrained")

    monkeypatch.setattr(bgmrec.runs, "train_model", no_training)
    run_quality(["tiny"], [0], out, work, ["random", "popularity"], console, "cmd", resume=True)
    assert out.read_text().split("\n", 3)[3] == report.split("\n", 3)[3]  # the same tables
    for commit in ("unknown", "abc1234-dirty"):  # an installed wheel, uncommitted edits: the same sources, reused
        monkeypatch.setattr(bgmrec.runs, "git_commit", lambda commit=commit: commit)
        run_quality(["tiny"], [0], out, work, ["random", "popularity"], console, "cmd", resume=True)
    (run / "weights.safetensors").unlink()  # an interrupted run is trained again
    called = []

    def counted(*args, **kwargs):
        called.append(args[1])
        return real_train(*args, **kwargs)

    monkeypatch.setattr(bgmrec.runs, "train_model", counted)
    run_quality(["tiny"], [0], out, work, ["random", "popularity"], console, "cmd", resume=True)
    assert called == ["popularity"]
    record = json.loads((run / "run.json").read_text())  # as if trained on the world before it was simulated again
    (run / "run.json").write_text(json.dumps({**record, "features_fingerprint": "0" * 16}))
    run_quality(["tiny"], [0], out, work, ["random", "popularity"], console, "cmd", resume=True)
    assert called == ["popularity", "popularity"]


def test_resume_says_which_runs_it_reused_and_why_it_trains_one_again(tmp_path, monkeypatch):
    import io

    work, out = tmp_path / "work", tmp_path / "report.md"
    code = "0.1.0+abc1234"
    monkeypatch.setattr(bgmrec.runs, "code_fingerprint", lambda: code)

    def printed() -> str:
        console = Console(file=io.StringIO(), width=1000)
        run_quality(["tiny"], [0], out, work, ["popularity"], console, "cmd", resume=True)
        return console.file.getvalue()

    run = work / "tiny-seed0" / "runs" / "popularity"
    assert "tiny seed 0: popularity trained in 0 s\n" in printed()  # nothing to reuse: nothing said about it
    assert f"tiny seed 0: popularity reused from {run} (trained in 0 s)\n" in printed()
    code = "0.1.0+def5678"
    said = printed()
    assert ("tiny seed 0: popularity is trained again, not reused: the run there was trained by other code (bgmrec "
            "0.1.0+abc1234; this is bgmrec 0.1.0+def5678)\n") in said
    assert "tiny seed 0: popularity trained in 0 s\n" in said
    record = json.loads((run / "run.json").read_text())  # a run of a bgmrec that recorded only its commit
    del record["code"]
    (run / "run.json").write_text(json.dumps({**record, "commit": "abc1234"}))
    assert ("not reused: the run there was trained by other code (commit abc1234, by a bgmrec that recorded no hash "
            "of its sources; this is bgmrec 0.1.0+def5678)") in printed()


def test_the_command_of_a_report_s_made_by_line_pastes_back_to_the_same_arguments():
    from bgmrec.bench import command_line

    argv = ["bench", "ceiling", "--intervened", "", "--redraws", "1", "--out", "my runs/c.md", "--models", "a;b"]
    line = command_line(argv, "bgmrec bench ceiling")
    assert line == "bgmrec bench ceiling --intervened '' --redraws 1 --out 'my runs/c.md' --models 'a;b'"
    assert shlex.split(line) == ["bgmrec", *argv]  # the empty --intervened kept, not dropped
    assert command_line(["-n", "2", "tests"], "bgmrec bench ceiling") == "bgmrec bench ceiling"  # not a bench argv
    checkout = Path("/home/me/bgmrec")  # absolute paths inside the working folder paste back in any clone
    line = command_line(["bench", "quality", "--work", "/home/me/bgmrec/runs/bench", "--out", "/elsewhere/r.md",
                         "--scales", "small"], "x", cwd=checkout)
    assert line == "bgmrec bench quality --work runs/bench --out /elsewhere/r.md --scales small"
    assert command_line(["bench", "gamma", "--work=/home/me/bgmrec/runs/b"], "x", cwd=checkout) == (
        "bgmrec bench gamma --work=runs/b")


def test_quality_report_compares_each_model_with_the_baseline_per_seed(tmp_path, monkeypatch):
    import json

    monkeypatch.setattr(bgmrec.bench, "BASELINE", "popularity")  # cheap stand-in for CMVAE
    out = tmp_path / "report.md"
    run_quality(["tiny"], [0, 1], out, tmp_path / "work", ["random", "popularity"], Console(quiet=True), "cmd")
    report = out.read_text()
    for split in ("test", "test_new_music", "test_unbiased"):
        section = report.split(f"### tiny: `{split}`")[1].split("###")[0]
        paired = section.split("| model | vs popularity, seed 0 | vs popularity, seed 1 |")[1]
        row = next(line for line in paired.splitlines() if line.startswith("| random |"))
        assert row.count("%") >= 2 * 3  # a change and its interval per seed
        assert "| share of positives |" in section  # and Recall@10 per genre
    saved = json.loads((tmp_path / "benchmarks_tiny.json").read_text())
    assert len(saved) == 2 * 2 * 3 and all("full_ranks" not in r for r in saved)
    for seed in (0, 1):  # each row names its world, so a reviewer can check a world simulated later is the same
        world = bgmrec.runs.dataset_record(tmp_path / "work" / f"tiny-seed{seed}" / "data")
        rows = [r for r in saved if r["seed"] == seed]
        assert rows and all(r[key] == world[key] for r in rows for key in bgmrec.bench.FINGERPRINTS)


def _truth_scores(ds, truth, mode, videos, tracks):
    from bgmrec.bench import TruthRanker
    from bgmrec.models.base import MusicCatalog, VideoQuery

    ranker = TruthRanker(ds, mode, n_confounders=64)
    q = VideoQuery.from_dataset(ds, videos)
    cat = MusicCatalog(np.asarray(ds.music)[tracks], np.asarray(ds.track_genre)[tracks], tracks)
    return ranker.encode_videos(q).astype(np.float64) @ ranker.encode_music(cat).T.astype(np.float64), ranker


def test_truth_bound_backdoor_is_the_interventional_distribution(tiny_ds):
    """exp(score) over the training catalogue is (1/K) sum_k softmax(true logits with c_k): by brute force."""
    from bgmrec.data.simulate import load_truth

    truth = load_truth(tiny_ds.root)
    videos = np.asarray(tiny_ds.splits["test"])[:5, 0]
    ref = np.flatnonzero(~np.asarray(tiny_ds.track_new))
    ours, ranker = _truth_scores(tiny_ds, truth, "backdoor", videos, ref)
    p = truth.processes["train"]
    base = truth.logits("train", videos, np.ones((5, len(tiny_ds.genres))), np.asarray(tiny_ds.track_genre), ref)
    taste = ranker.taste.numpy()[:, np.asarray(tiny_ds.track_genre)[ref]]  # [K, R], gamma log c_k[g]
    logits = base[:, None, :] + taste[None]
    brute = np.exp(logits - logits.max(2, keepdims=True))
    brute = (brute / brute.sum(2, keepdims=True)).mean(1)
    assert p.gamma > 0
    assert np.allclose(np.exp(ours), brute, atol=1e-5)
    content, _ = _truth_scores(tiny_ds, truth, "content", videos, ref)
    assert np.allclose(content, base, atol=1e-4)  # taste removed: beta match + delta log pop


@pytest.mark.parametrize("split", ["test_unbiased", "test"])
def test_track_term_fit_recovers_a_hidden_per_track_term(tiny_ds, split):
    """Scores = the true logits, halved, minus a per-track term: the fit finds both again and ranks as the oracle."""
    from bgmrec.bench import TrackTermFit, choice_truth, fit_oracle
    from bgmrec.eval.metrics import recall_at_k
    from bgmrec.eval.protocol import full_ranks

    oracle = fit_oracle(tiny_ds)
    hidden = np.random.default_rng(0).normal(0.0, 2.0, tiny_ds.n_tracks)

    class Shifted:  # on `test` the uploader's taste comes through the query's confounder, as for the oracle
        name = "shifted"

        def encode_videos(self, q):
            return np.hstack([0.5 * oracle.encode_videos(q), np.ones((len(q), 1))]).astype(np.float32)

        def encode_music(self, c):
            return np.hstack([oracle.encode_music(c), -hidden[c.index][:, None]]).astype(np.float32)

        def score(self, q, c):
            return self.encode_videos(q) @ self.encode_music(c).T

    truth = choice_truth(tiny_ds, split, oracle)
    assert set(truth.query.index) <= set(np.asarray(tiny_ds.splits["val"])[:, 0])  # fitted on val videos
    fitted = TrackTermFit.fit(Shifted(), truth)
    cand = tiny_ds.candidate_tracks(split)
    assert abs(fitted.kappa - 2.0) < 0.05
    # kappa * (-hidden) + term = 0 up to a constant: the hidden term is found again, on the right tracks
    assert np.corrcoef(fitted.term[cand], fitted.kappa * hidden[cand])[0, 1] > 0.99
    r10 = {m.name: recall_at_k(full_ranks(m, tiny_ds, split).ranks, 10) for m in (oracle, Shifted(), fitted)}
    assert r10["shifted"] < r10["oracle"] - 0.05
    assert abs(r10["track-term-fit"] - r10["oracle"]) < 0.01


def _log_choice_probabilities(ds, oracle, rows, split):
    """log P(m | video) [rows, tracks] under ``split``'s true process, over the training catalogue."""
    from bgmrec.bench import choice_logits

    cand = ds.candidate_tracks("train")
    logits = choice_logits(ds, oracle, rows, split, cand)
    return logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)


def test_intervened_dataset_redraws_train_and_val_by_content_alone(tiny_ds):
    from bgmrec.bench import fit_oracle, intervened_dataset

    oracle = fit_oracle(tiny_ds)
    before = {k: np.array(v) for k, v in tiny_ds.splits.items()}
    world = intervened_dataset(tiny_ds, oracle, seed=3)
    assert all(np.array_equal(tiny_ds.splits[k], v) for k, v in before.items())  # the input is untouched
    for split in ("train", "val"):
        old, new = before[split], world.splits[split]
        assert np.array_equal(old[:, [0, 2]], new[:, [0, 2]])  # same videos and uploaders
        assert np.isin(new[:, 1], tiny_ds.candidate_tracks(split)).all()
        assert (old[:, 1] != new[:, 1]).mean() > 0.5
        assert split not in world.negatives  # drawn against the old positives
    for split in set(before) - {"train", "val"}:
        assert np.array_equal(world.splits[split], before[split])
    assert set(world.negatives) == set(tiny_ds.negatives) - {"val"}
    again = intervened_dataset(tiny_ds, oracle, seed=3)
    assert np.array_equal(again.splits["train"], world.splits["train"])
    assert not np.array_equal(intervened_dataset(tiny_ds, oracle, seed=4).splits["train"], world.splits["train"])
    # the redrawn tracks are likelier under the content process, the uploads' under the biased one
    old, new = before["train"], world.splits["train"]
    mean_logp = {}
    for process in ("test_unbiased", "train"):
        logp = _log_choice_probabilities(tiny_ds, oracle, old, process)
        for name, rows in (("old", old), ("new", new)):
            col = np.searchsorted(tiny_ds.candidate_tracks("train"), rows[:, 1])
            mean_logp[process, name] = logp[np.arange(len(rows)), col].mean()
        if process == "test_unbiased":  # sampled, not the argmax nor a sharper softmax: E[log p] = -entropy
            expected = (np.exp(logp) * logp).sum(1).mean()
            assert abs(mean_logp[process, "new"] - expected) < 0.12  # about 3.5 standard errors
    assert mean_logp["test_unbiased", "new"] > mean_logp["test_unbiased", "old"] + 0.1
    assert mean_logp["train", "old"] > mean_logp["train", "new"] + 0.1
    with pytest.raises(ValueError, match="'test': its process is not content alone"):
        intervened_dataset(tiny_ds, oracle, process="test")


def test_fit_on_intervened_world_leaves_the_dataset_and_refuses_a_teacher(tiny_ds):
    from bgmrec.bench import fit_on_intervened_world, fit_oracle

    oracle = fit_oracle(tiny_ds)
    before = {k: np.array(v) for k, v in tiny_ds.splits.items()}
    model = fit_on_intervened_world(tiny_ds, oracle, "popularity", seed=0, professional=True)
    assert model.name == "popularity"
    assert all(np.array_equal(tiny_ds.splits[k], v) for k, v in before.items())
    with pytest.raises(ValueError, match="deccm: a teacher-guided model"):
        fit_on_intervened_world(tiny_ds, oracle, "deccm", seed=0, professional=False)


def test_ceiling_report_reads_the_quality_runs_or_says_which_to_make(tmp_path, monkeypatch):
    from bgmrec.bench import run_track_term_ceiling

    console = Console(quiet=True)
    work = tmp_path / "the work"  # a space: the command to paste quotes it
    with pytest.raises(ValueError, match="seed 0: the world; seed 0: popularity.*bench quality --scales tiny") as e:
        run_track_term_ceiling("tiny", [0], work, tmp_path / "c.md", console, "cmd", models=("popularity",))
    assert shlex.split(str(e.value).split("`")[1]) == [
        "bgmrec", "bench", "quality", "--scales", "tiny", "--seeds", "0", "--models", "popularity", "--work", str(work),
        "--resume", "--out", "REPORT.md"]
    run_quality(["tiny"], [0], tmp_path / "q.md", work, ["popularity"], console, "cmd")
    out = run_track_term_ceiling("tiny", [0], work, tmp_path / "c.md", console, "cmd", models=("popularity",),
                                 intervened=("popularity",), redraws=2)
    sections = {part.split("\n", 1)[0]: part for part in out.read_text().split("## ")[1:]}
    learners = "`test_unbiased`: the learners trained on the intervened world"
    assert set(sections) == {"`test`", "`test_unbiased`", learners}
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in sections.pop(learners).splitlines()
            if line.startswith("| ") and not line.startswith("| model")}
    on_uploads = float(rows["popularity"][1])
    intervened = float(rows["popularity, trained on the intervened world"][1])
    assert set(rows) == {"popularity", "popularity, trained on the intervened world", "oracle",
                         "popularity, trained on the intervened world + professional videos"}
    # the share of choices by content alone is the better popularity for test_unbiased, which chose so
    assert intervened > on_uploads
    def no_fit(*args, **kwargs):
        raise AssertionError("a per-track term was fitted")

    monkeypatch.setattr(bgmrec.bench, "TrackTermFit", no_fit)
    only = run_track_term_ceiling("tiny", [0], work, tmp_path / "i.md", console, "cmd", models=("popularity",),
                                  intervened=("popularity",), redraws=1, fit_track_terms=False).read_text()
    assert only.startswith("# The models against the learners trained on the intervened world")
    assert [line.split(" | ")[0] for line in only.splitlines() if line.startswith("| ")] == [
        "| model", "| oracle", "| popularity", "| popularity, trained on the intervened world",
        "| popularity, trained on the intervened world + professional videos"]
    assert f"| popularity | {rows['popularity'][1]} |" in only  # the same run, ranked alike
    for text in sections.values():
        rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in text.splitlines()
                if line.startswith("| ") and not line.startswith("| model")}
        assert set(rows) == {"popularity", "oracle"}
        ranked, fitted = float(rows["popularity"][1]), float(rows["popularity"][2])
        # log popularity is one per-track term; the one fitted to the truth ranks better
        assert fitted > ranked


def test_ceiling_report_mixes_the_teacher_of_a_benchmarked_student(tmp_path):
    from bgmrec.bench import RunTeacher, full_recall_at_10, run_track_term_ceiling
    from bgmrec.data.dataset import load_dataset
    from bgmrec.models.base import load_model
    from bgmrec.models.deccm import TeacherMixture

    console = Console(quiet=True)
    work = tmp_path / "work"
    run_quality(["tiny"], [0], tmp_path / "q.md", work, ["cmvae", "deccm"], console, "cmd")
    runs = work / "tiny-seed0" / "runs"
    assert RunTeacher.of("cmvae", load_model(runs / "cmvae")) is None  # CMVAE mixes no teacher in
    student = load_model(runs / "deccm")
    assert student.teacher_dir == str((work / "tiny-seed0" / "teachers" / "deccm").resolve())  # shared, apart
    mixing = RunTeacher.of("deccm", student)
    assert mixing.teacher is student.teacher and mixing.weight == student.config.teacher_mix > 0
    teacher, weight = mixing.teacher, mixing.weight

    out = run_track_term_ceiling("tiny", [0], work, tmp_path / "i.md", console, "cmd",
                                 models=("cmvae", "deccm"), intervened=("cmvae",), redraws=1,
                                 fit_track_terms=False).read_text()
    rows = {line.split(" | ")[0].strip("| "): float(line.split(" | ")[1]) for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| model")}
    assert list(rows)[-4:] == ["cmvae (benchmarked), mixed with deccm's teacher",
                               "cmvae, trained on the intervened world",
                               "cmvae, trained on the intervened world, mixed with deccm's teacher",
                               "cmvae, trained on the intervened world + professional videos"]
    assert "the like-for-like references for that content mode" in out
    ds = load_dataset(work / "tiny-seed0" / "data")
    expected = full_recall_at_10(TeacherMixture(load_model(runs / "cmvae"), teacher, weight), ds)
    assert rows["cmvae (benchmarked), mixed with deccm's teacher"] == pytest.approx(expected, abs=5e-4)
    # DecCM's content mode is its student mixed so: the same wrapper around the student alone ranks alike
    student.set_inference_mode("content")
    student.config.teacher_mix = 0.0
    assert rows["deccm [content]"] == pytest.approx(
        full_recall_at_10(TeacherMixture(student, teacher, weight), ds), abs=5e-4)


def test_intervened_section_marks_a_seed_without_a_value():
    from bgmrec.bench import add_learner, intervened_section

    learners = {}
    add_learner(learners, "a", 0, [0.5, 0.7])
    add_learner(learners, "a", 1, [0.8, 0.8])
    add_learner(learners, "b, mixed with deccm's teacher", 1, [0.9])
    cells = {("m", "test_unbiased"): {"ranked": [0.4, 0.6]}, ("m", "test"): {"ranked": [0.1, 0.1]}}
    lines = intervened_section(cells, learners, [0, 1], redraws=2)
    text = "\n".join(lines)
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert rows == ["| m | 0.400 | 0.600 | 0.500 |", "| a | 0.600 | 0.800 | 0.700 |",
                    "| b, mixed with deccm's teacher | – | 0.900 | 0.900 |"]
    assert "standard deviation is 0.050 on average" in text  # of seed 0's draws; seed 1's is 0, one draw none
    assert "the like-for-like references" in text


def test_write_report_replaces_the_old_report_through_a_temporary_file(tmp_path, monkeypatch):
    from bgmrec.bench import write_report

    out = tmp_path / "docs" / "r.md"
    write_report(out, ["# old"], Console(quiet=True))
    write_report(out, ["# new", "", "text"], Console(quiet=True))
    assert out.read_text() == "# new\n\ntext"
    assert [p.name for p in out.parent.iterdir()] == ["r.md"]  # no temporary file left

    def full_disk(src, dst):
        raise OSError("no space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="no space"):
        write_report(out, ["# newer ± 1"], Console(quiet=True))
    assert out.read_text() == "# new\n\ntext"  # the old report is kept
    assert [p.name for p in out.parent.iterdir()] == ["r.md"]


def test_gamma_sweep_reports_the_intervened_world_beside_cmvae_and_deccm(tmp_path):
    from bgmrec.bench import run_gamma_sweep

    out = run_gamma_sweep([2.0], "tiny", 0, tmp_path / "work", tmp_path / "g.md", Console(quiet=True), "cmd",
                          redraws=1).read_text()
    assert (tmp_path / "g.png").is_file()
    table = out.split("| gamma | CMVAE | CMVAE on the intervened world")[1]
    row = next(line for line in table.splitlines() if line.startswith("| 2 |")).split(" | ")
    cmvae, intervened, professional, deccm = map(float, row[1:5])
    assert 0 < cmvae < 1 and 0 < deccm < 1
    # on the world it is tested on's own process, and with strong confounding, the intervened CMVAE is better
    assert intervened > cmvae and professional > cmvae
    # the report's gains come from unrounded figures: compare within the rounding of the table's
    assert float(row[5].rstrip("%")) == pytest.approx(100 * (intervened / cmvae - 1), abs=0.15)
    # CMVAE with DecCM's teacher mixed in, recomputed here from the saved runs
    from bgmrec.data.dataset import load_dataset
    from bgmrec.eval.protocol import evaluate
    from bgmrec.models.base import load_model
    from bgmrec.models.deccm import TeacherMixture

    table = out.split("| gamma | CMVAE + teacher R@10 | DecCM content R@10")[1]
    row = next(line for line in table.splitlines() if line.startswith("| 2 |")).split(" | ")
    mixed, content, mixed_tvd = float(row[1]), float(row[2]), float(row[3])
    assert content == deccm
    assert float(row[5].rstrip("%")) == pytest.approx(100 * (mixed / cmvae - 1), abs=0.15)
    world = tmp_path / "work" / "gamma2-tiny-seed0"
    student = load_model(world / "runs" / "deccm")
    mixture = TeacherMixture(load_model(world / "runs" / "cmvae"), student.teacher, student.config.teacher_mix)
    figures = evaluate(mixture, load_dataset(world / "data"), "test_unbiased")
    assert mixed == pytest.approx(figures["full"]["recall@10"], abs=5e-4)
    assert mixed_tvd == pytest.approx(figures["bias"]["exposure_tvd@10"], abs=5e-4)
    # the first table's gain is the paired comparison of content mode with CMVAE on the same queries
    table = out.split("| gamma | DecCM mode | CMVAE R@10 | DecCM R@10 | gain |")[1]
    row = next(line for line in table.splitlines() if line.startswith("| 2 | content |")).split(" | ")
    change, interval = row[4].split(" [")
    assert float(change.rstrip("%")) == pytest.approx(100 * (deccm / cmvae - 1), abs=0.15)
    lo, hi = (float(x.rstrip("%")) for x in interval.split("]")[0].split(", "))
    assert lo <= float(change.rstrip("%")) <= hi and " p" in row[4]


def test_resume_keeps_the_one_teacher_deccm_and_its_ablation_share(tmp_path, monkeypatch):
    """A resumed benchmark retraining one teacher-guided model loads the teacher the finished ones refer to:
    still one teacher, trained once; the world's fingerprints are taken once for the runs and the teacher."""
    from bgmrec.models import deccm
    from bgmrec.models.base import load_model

    monkeypatch.setattr(bgmrec.runs, "git_commit", lambda: "abc1234")
    trained, records = [], []
    train_teacher, dataset_record = deccm.train_teacher, bgmrec.runs.dataset_record

    def counting(*args, **kwargs):
        trained.append(args[2])
        return train_teacher(*args, **kwargs)

    def recorded(data):
        records.append(data)
        return dataset_record(data)

    monkeypatch.setattr(deccm, "train_teacher", counting)
    monkeypatch.setattr(bgmrec.runs, "dataset_record", recorded)
    work, names = tmp_path / "work", ["deccm", "deccm-noadjust"]
    run_quality(["tiny"], [0], tmp_path / "q.md", work, names, Console(quiet=True), "cmd", resume=True)
    runs = work / "tiny-seed0" / "runs"
    shutil.rmtree(runs / "deccm")  # as if stopped before it finished
    records.clear()
    run_quality(["tiny"], [0], tmp_path / "q.md", work, names, Console(quiet=True), "cmd", resume=True)
    assert len(records) == 2  # the world's, for the finished runs and the teacher; the retrained run's own
    assert len(trained) == 1
    assert [p.name for p in (work / "tiny-seed0" / "teachers").iterdir()] == ["deccm"]
    assert load_model(runs / "deccm").teacher_dir == load_model(runs / "deccm-noadjust").teacher_dir


def test_aggregate_gives_the_mean_and_population_std_over_seeds_and_markdown_the_oracle_ratio():
    from bgmrec.bench import aggregate, markdown

    def result(model, r10, ndcg=None, mode=None):
        full = {"recall@10": r10, **({"ndcg@10": ndcg} if ndcg is not None else {})}
        return {"model": model, "split": "test", "full": full, **({"inference_mode": mode} if mode else {})}

    seeds = [result("cmvae", 0.2, 0.1), result("cmvae", 0.4, 0.3), result("cmvae", 0.9, 0.5),
             result("oracle", 0.9), result("oracle", 1.0), result("oracle", 0.8),
             result("deccm", 0.45, mode="content"), {**result("cmvae", 0.7), "split": "val"}]
    agg = aggregate(seeds)
    mean, std, n = agg[("cmvae", "test")]["R@10"]
    # by hand: mean (0.2 + 0.4 + 0.9) / 3 = 0.5; population variance (0.09 + 0.01 + 0.16) / 3 = 0.08667
    assert (mean, n) == (pytest.approx(0.5), 3) and std == pytest.approx(0.294392, abs=1e-6)
    assert agg[("cmvae", "test")]["NDCG@10"] == (pytest.approx(0.3), pytest.approx(np.sqrt(0.08 / 3)), 3)
    assert agg[("cmvae", "val")]["R@10"] == (0.7, 0.0, 1) and "NDCG@10" not in agg[("oracle", "test")]
    table = markdown(agg, "test").splitlines()
    cmvae = next(line for line in table if line.startswith("| cmvae |"))
    cells = [c.strip() for c in cmvae.strip("|").split("|")]
    assert cells[1:3] == ["0.500 ± 0.294", "0.300 ± 0.163"] and cells[-1] == "0.56"  # 0.5 / 0.9
    deccm = next(line for line in table if line.startswith("| deccm [content] |"))
    assert [c.strip() for c in deccm.strip("|").split("|")][1:3] == ["0.450", "-"]  # one seed: no ±
    assert [c.strip() for c in deccm.strip("|").split("|")][-1] == "0.50"
    assert not any("0.700" in line for line in table)  # another split's rows stay out


def test_a_report_and_its_json_are_replaced_together_or_not_at_all(tmp_path, monkeypatch):
    """A stop after the figures were computed left them in the JSON beside the earlier report (bench quality
    wrote each world's JSON before its plots, the demo results.json before its plots and report.md)."""
    from bgmrec.demo import run_demo
    from bgmrec.eval import report

    console, out, work = Console(quiet=True), tmp_path / "q.md", tmp_path / "work"
    run_quality(["tiny"], [0], out, work, ["popularity"], console, "cmd")
    run_demo("tiny", tmp_path / "demo", 0, ["popularity"], console)
    files = [out, tmp_path / "benchmarks_tiny.json", tmp_path / "demo" / "results.json",
             tmp_path / "demo" / "report.md"]
    before = [p.read_bytes() for p in files]

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bgmrec.bench, "plot", stopped)  # after every figure, before the report
    with pytest.raises(KeyboardInterrupt):
        run_quality(["tiny"], [1], out, work, ["popularity"], console, "cmd")
    monkeypatch.setattr(report, "plot_genre_shares", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_demo("tiny", tmp_path / "demo", 1, ["popularity"], console)
    assert [p.read_bytes() for p in files] == before
    assert not [e.name for d in (tmp_path, tmp_path / "demo") for e in d.iterdir() if ".tmp" in e.name]


def test_quality_over_several_scales_writes_each_scale_when_done(tmp_path, monkeypatch):
    # the report and JSON of every scale were written only after the last: a stop during tt150k's 1.5 h lost small's
    import json

    made = bgmrec.bench.ensure_world

    def stopped_at_small(scale, *args, **kwargs):
        if scale == "small":
            raise KeyboardInterrupt
        return made(scale, *args, **kwargs)

    monkeypatch.setattr(bgmrec.bench, "ensure_world", stopped_at_small)
    out = tmp_path / "report.md"
    with pytest.raises(KeyboardInterrupt):
        run_quality(["tiny", "small"], [0], out, tmp_path / "work", ["popularity"], Console(quiet=True), "cmd")
    report = out.read_text()
    assert "## World `tiny`" in report and "*Worlds still to run when this report was written: small.*" in report
    assert len(json.loads((tmp_path / "benchmarks_tiny.json").read_text())) == 3
    run_quality(["tiny"], [0], out, tmp_path / "work", ["popularity"], Console(quiet=True), "cmd")
    assert "still to run" not in out.read_text()


def test_a_stopped_quality_benchmark_says_how_many_runs_are_done_and_how_to_continue(tmp_path, stop_training,
                                                                                     capsys):
    from bgmrec.cli import main

    calls = stop_training(3)
    work = tmp_path / "work"
    args = ["bench", "quality", "--scales", "tiny", "--seeds", "0,1", "--models", "random,popularity", "--work",
            str(work)]
    assert main(args) == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (f"stopped (SIGINT): 2 of 4 runs finished in {work}; `{shlex.join(['bgmrec', *args])} --resume` "
                    "continues, reusing them")
    assert main([*args, "--resume"]) == 0
    assert [args[1] for args in calls] == ["random", "popularity", "random", "random", "popularity"]  # seed 0's
    #  runs not trained again


def test_a_stop_while_a_plot_is_drawn_leaves_the_earlier_plot_whole(tmp_path, monkeypatch):
    # bench quality's bench_*.png were written by savefig in place: a stop while one was drawn left it truncated
    from matplotlib.figure import Figure

    console, out, work = Console(quiet=True), tmp_path / "q.md", tmp_path / "work"
    run_quality(["tiny"], [0], out, work, ["popularity"], console, "cmd")
    plots = sorted(tmp_path.glob("bench_tiny_*.png"))
    before = [p.read_bytes() for p in plots]
    assert plots and all(b.startswith(b"\x89PNG") for b in before)
    real = Figure.savefig

    def stopped_halfway(self, fname, *args, **kwargs):
        real(self, fname, *args, **kwargs)
        Path(fname).write_bytes(Path(fname).read_bytes()[:100])  # cut short
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", stopped_halfway)
    with pytest.raises(KeyboardInterrupt):
        run_quality(["tiny"], [0], out, work, ["popularity"], console, "cmd", resume=True)
    assert [p.read_bytes() for p in plots] == before
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_a_split_without_queries_is_left_out_of_the_quality_report_with_a_note(tmp_path, monkeypatch, capsys):
    # a world with no new music (or no test videos) trained and evaluated, then failed with an IndexError in the
    # per-genre table, writing no report and leaving a plot of the empty split
    from bgmrec.cli import main

    console, work, out = Console(quiet=True), tmp_path / "work", tmp_path / "q.md"
    label = "tiny+new_track_share=0"
    run_quality(["tiny"], [0], out, work, ["popularity"], console, "cmd", world={"new_track_share": "0"})
    report = out.read_text()
    assert "`test_new_music` has no queries in this world: left out of the tables and plots." in report
    assert f"### {label}: `test_new_music`" not in report and f"bench_{label}_test_new_music" not in report
    for split in ("test", "test_unbiased"):  # the others as ever
        assert f"### {label}: `{split}`" in report and f"![bench_{label}_{split}](bench_{label}_{split}.png)" in report
    assert sorted(p.name for p in tmp_path.glob("bench_*.png")) == [f"bench_{label}_test.png",
                                                                     f"bench_{label}_test_unbiased.png"]
    assert {r["split"] for r in json.loads((tmp_path / f"benchmarks_{label}.json").read_text())} == {
        "test", "test_unbiased"}
    monkeypatch.setattr(bgmrec.runs, "train_model", lambda *a, **k: pytest.fail("a finished run was retrained"))
    run_quality(["tiny"], [0], out, work, ["popularity"], console, "cmd", resume=True, world={"new_track_share": "0"})
    assert out.read_text().split("\n", 3)[3] == report.split("\n", 3)[3]
    monkeypatch.undo()
    run_quality(["tiny"], [0], out, work, ["popularity"], console, "cmd", world={"test_share": "0"})
    assert "`test` and `test_unbiased` have no queries in this world: left out of the tables and plots." in \
        out.read_text()
    # nothing left to report: one line, exit code 2, before any training
    args = ["bench", "quality", "--scales", "tiny", "--seeds", "0", "--models", "popularity", "--work", str(work),
            "--world", "test_share=0", "--world", "new_track_share=0"]
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("simulating ")]
    assert len(err) == 1 and err[0].startswith("error: ") and (
        "world (seed 0) has no queries in any split the benchmark reports (test, test_new_music or "
        "test_unbiased): nothing to report") in err[0]
    assert not (work / "tiny+new_track_share=0+test_share=0-seed0" / "runs").exists()


def test_bench_refuses_a_work_folder_of_another_kind_and_reuses_its_own(tiny_copy, tmp_path, capsys):
    # bench quality wrote its worlds and runs into any --work: a dataset's folder (which a later simulate there
    # replaced whole, the benchmark with it), a trained run's, a demo's
    from bgmrec.bench import run_gamma_sweep
    from bgmrec.cli import main

    def listing(folder):
        return sorted((p.relative_to(folder).as_posix(), p.stat().st_mtime_ns) for p in folder.rglob("*"))

    console = Console(quiet=True)
    demo = tmp_path / "demo"  # as a demo leaves it
    (demo / "runs").mkdir(parents=True)
    (demo / "report.md").write_text("# bgmrec demo")
    before = {folder: listing(folder) for folder in (tiny_copy, demo)}
    with pytest.raises(ValueError, match=r"--work .*tiny: the folder is not empty and is not a work folder of "
                                         r"bgmrec bench \(it is a dataset\); refusing to write into it"):
        run_quality(["tiny"], [0], tmp_path / "q.md", tiny_copy, ["popularity"], console, "cmd")
    with pytest.raises(ValueError, match=r"\(it is a dataset\)"):
        run_gamma_sweep([2.0], "tiny", 0, tiny_copy, tmp_path / "g.md", console, "cmd", redraws=1)
    assert main(["bench", "quality", "--scales", "tiny", "--seeds", "0", "--models", "popularity", "--work", str(demo),
                 "--resume"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: --work {demo}: the folder is not empty and is not a work folder of bgmrec bench (it holds "
                   "report.md, runs); refusing to write into it (give a new or empty folder)\n")
    assert {folder: listing(folder) for folder in (tiny_copy, demo)} == before and not (tmp_path / "q.md").exists()
    # its own folder, with what the other bench commands write there by default and a report of its own, is reused
    work = tmp_path / "work"
    run_quality(["tiny"], [0], work / "mine.md", work, ["popularity"], console, "cmd")
    for name in ("bench_media.md", "track_term_ceiling.md", "intervened_tiny.md", "gamma_sweep.md"):
        (work / name).write_text("# a report")
    (work / "tt150k-speed").mkdir()
    run_quality(["tiny"], [0], work / "mine.md", work, ["popularity"], console, "cmd", resume=True)
    with pytest.raises(ValueError, match=r"its benchmarks_tiny\.json would replace the one of the report mine\.md"):
        run_quality(["tiny"], [0], work / "benchmarks.md", work, ["popularity"], console, "cmd", resume=True)
    # the other bench reports under names of their own (--out): refused by name before (a review)
    (work / "gsweep.md").write_text("# DecCM vs CMVAE as confounding grows (tiny world, seed 0)\n")
    (work / "gsweep.png").write_bytes(b"png")
    (work / "ceil.md").write_text("# How much of each model's error is in its per-track term (tiny world, seeds 0)\n")
    run_quality(["tiny"], [0], work / "mine.md", work, ["popularity"], console, "cmd", resume=True)
    # a world folder whose data is not a simulated world, or whose runs were trained elsewhere: refused
    import shutil

    shutil.copytree(tiny_copy, work / "small-seed9" / "data")
    manifest = work / "small-seed9" / "data" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"world"', '"built_from"'))
    with pytest.raises(ValueError, match=r"small-seed9/data is not a simulated world"):
        run_quality(["tiny"], [0], work / "mine.md", work, ["popularity"], console, "cmd", resume=True)
    shutil.rmtree(work / "small-seed9")
    assert main(["train", "--data", str(tiny_copy), "--model", "popularity", "--out",
                 str(work / "small-seed8" / "runs" / "popularity")]) == 0  # a run of another dataset under runs/
    with pytest.raises(ValueError, match=r"small-seed8/runs/popularity was trained on .*, not on this folder's world"):
        run_quality(["tiny"], [0], work / "mine.md", work, ["popularity"], console, "cmd", resume=True)


def test_a_one_seed_quality_report_words_its_figures_as_one_seed_s(tmp_path, monkeypatch):
    # with --seeds 0 the header said "One seed, 0" while each per-genre table said "Means over seeds.", the
    # training times "(mean over seeds)" and each plot's axis "mean ± std over seeds"
    real, labels = bgmrec.bench.save_figure, []

    def kept(fig, out, dpi):
        labels.append(fig.axes[0].get_xlabel())
        return real(fig, out, dpi)

    monkeypatch.setattr(bgmrec.bench, "save_figure", kept)
    for seeds, caption, seconds, axis in (
            ([0], "Seed 0 alone.", "Training seconds per model (seed 0): popularity ", "(seed 0)"),
            ([0, 1], "Means over seeds.", "Training seconds per model (mean over seeds): popularity ",
             "(mean ± std over seeds)")):
        labels.clear()
        out = run_quality(["tiny"], seeds, tmp_path / "q.md", tmp_path / "work", ["popularity"], Console(quiet=True),
                          "cmd")
        report = out.read_text()
        captions = [line for line in report.splitlines() if line.startswith("Full-catalogue Recall@10 by the genre")]
        assert len(captions) == 3 and all(line.endswith(f"share of the positives. {caption}") for line in captions)
        assert seconds in report
        assert labels == [f"full-catalogue Recall@10 {axis}"] * 3


def test_the_ceiling_report_gives_each_seed_s_count_of_val_videos_in_seed_order(tmp_path):
    # --seeds 0,1 wrote "on the val videos (173, 184 per world)" although seed 0's world has 184 and seed 1's 173:
    # the distinct counts, sorted
    from bgmrec.bench import counts_per_world, run_track_term_ceiling
    from bgmrec.data.dataset import load_dataset

    console, work = Console(quiet=True), tmp_path / "work"
    run_quality(["tiny"], [0, 1], tmp_path / "q.md", work, ["popularity"], console, "cmd")
    counts = [len(load_dataset(work / f"tiny-seed{seed}" / "data").splits["val"]) for seed in (0, 1)]
    assert counts[0] > counts[1]  # what the old sorted list got wrong
    text = run_track_term_ceiling("tiny", [0, 1], work, tmp_path / "c.md", console, "cmd", models=("popularity",),
                                  intervened=()).read_text()
    assert f"on the val videos ({counts[0]} and {counts[1]} for seeds 0 and 1; `TrackTermFit`" in text
    assert counts_per_world([184, 184, 184], [0, 1, 2]) == "184 per world"
    assert counts_per_world([184, 173, 180], [2, 0, 1]) == "184, 173 and 180 for seeds 2, 0 and 1"


@pytest.mark.parametrize("command", [
    ["bench", "quality", "--scales", "tiny", "--seeds", "0", "--models", "popularity"],
    ["bench", "ceiling", "--scale", "tiny", "--seeds", "0", "--models", "popularity", "--no-fit"],
    ["bench", "gamma", "--scale", "tiny", "--gammas", "0"],
    ["bench", "tuned", "--data", "DATA", "--models", "popularity,random", "--grid", "seed=0"],
    ["bench-media"],
])
def test_every_bench_refuses_a_report_path_that_is_another_file_before_any_work(command, tiny_dir, tmp_path, capsys):
    # bench quality --out DATASET/videos.csv replaced the dataset's videos.csv with its report (and dropped its
    # figures and plots beside it); a user's notes.md went the same way
    from bgmrec.cli import main

    command = [str(tiny_dir) if part == "DATA" else part for part in command]
    work = [] if command[0] == "bench-media" else ["--work", str(tmp_path / "work")]
    videos = Path(shutil.copytree(tiny_dir, tmp_path / "data")) / "videos.csv"
    notes = tmp_path / "notes.md"
    notes.write_text("# my notes\n")
    for out, words in ((videos, "the report is Markdown (a .md file)"),
                       (notes, "exists and is not a report of this bench; refusing to replace it"),
                       (tmp_path / "data", "the report is Markdown")):
        before = {p: p.read_bytes() for p in (videos, notes)}
        capsys.readouterr()
        assert main([*command, *work, "--out", str(out)]) == 2
        assert f"--out {out}: {words}" in " ".join(capsys.readouterr().err.split())
        assert {p: p.read_bytes() for p in (videos, notes)} == before
        assert not (tmp_path / "work").exists()  # refused before any work
    (tmp_path / "folder.md").mkdir()
    assert main([*command, *work, "--out", str(tmp_path / "folder.md")]) == 2
    assert "exists and is not a report of this bench" in " ".join(capsys.readouterr().err.split())


def test_a_new_report_does_not_replace_the_files_of_its_figures_names_beside_it(tmp_path, capsys):
    # bench gamma --out notes.md replaced the user's notes.png with its plot; bench quality its JSON and plots
    from bgmrec.cli import main

    for command, beside in ((["bench", "gamma", "--scale", "tiny", "--gammas", "0"], "notes.png"),
                            (["bench", "quality", "--scales", "tiny", "--seeds", "0", "--models", "popularity"],
                             "bench_tiny_test_unbiased.png"),
                            (["bench", "quality", "--scales", "tiny", "--seeds", "0", "--models", "popularity"],
                             "benchmarks_tiny.json")):
        theirs = tmp_path / beside
        theirs.write_bytes(b"mine")
        capsys.readouterr()
        assert main([*command, "--work", str(tmp_path / "work"), "--out", str(tmp_path / "notes.md")]) == 2
        folder = "" if command[1] == "gamma" else "folder for "  # quality's are named by the world, not the report
        assert (f"--out {tmp_path / 'notes.md'}: a new report, whose {beside} would replace the file of that name "
                f"beside it; refusing (choose another {folder}--out, or remove {theirs})") in " ".join(
            capsys.readouterr().err.split())
        assert theirs.read_bytes() == b"mine" and not (tmp_path / "work").exists()
        theirs.unlink()


def test_a_second_report_of_one_world_does_not_replace_the_figures_the_first_names(tmp_path):
    # bench quality --out a.md, then --out b.md of the same world in that folder: b's JSON and plots replaced a's
    from bgmrec.bench import QUALITY_TITLE, check_report_file

    beside = [tmp_path / "benchmarks_tiny.json", tmp_path / "bench_tiny_test.png"]
    for p in beside:
        p.write_text("a's")
    (tmp_path / "a.md").write_text(f"{QUALITY_TITLE}\n\n[benchmarks_tiny.json](benchmarks_tiny.json)\n")
    with pytest.raises(ValueError, match=r"^--out .*b\.md: its benchmarks_tiny\.json would replace the one of the "
                       r"report a\.md beside it \(the figures are named by the world, not the report\); refusing "
                       r"\(choose another folder for --out, or remove .*a\.md\)$"):
        check_report_file(tmp_path / "b.md", QUALITY_TITLE, beside, shared=True)
    check_report_file(tmp_path / "a.md", QUALITY_TITLE, beside, shared=True)  # its own report, made again
    (tmp_path / "a.md").write_text(f"{QUALITY_TITLE}\n\nanother world's figures\n")
    check_report_file(tmp_path / "b.md", QUALITY_TITLE, beside, shared=True)  # named by no report: as before
