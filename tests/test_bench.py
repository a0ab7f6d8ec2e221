"""``bench quality --resume``: a finished run of the same commit is reused, anything else is retrained."""

from __future__ import annotations

import numpy as np
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
