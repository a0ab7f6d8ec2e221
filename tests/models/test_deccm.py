"""DecCM specifics: the adjustment changes rankings, the backdoor marginal is computed exactly,
the teacher is frozen and not saved, and deconfounding helps where (and only where) taste confounds."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import warnings

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from bgmrec.data.dataset import DatasetError, load_dataset
from bgmrec.data.simulate import save_world, simulate, world_config
from bgmrec.eval.protocol import evaluate
from bgmrec.features.recommend import normalised_taste
from bgmrec.models.base import FeatureSpec, MusicCatalog, SplitView, VideoQuery, load_model
from bgmrec.models.cmvae import CMVAE
from bgmrec.models.deccm import (
    DecCM,
    TeacherMixture,
    content_log_share,
    negative_binomial_shape,
    professional_split,
    teacher_config,
)
from bgmrec.models.registry import build, prepare_teacher
from bgmrec.train import FeatureTensors
from unfitted import as_fitted


def _with_taste(ds) -> DecCM:
    """An untrained DecCM whose taste path is set by hand: t(c) = 2 log c (as a world with gamma = 2)."""
    model = as_fitted(build("deccm", FeatureSpec.of(ds), {"teacher": False, "prior_samples": 64}))
    model.prepare(FeatureTensors(ds), np.asarray(ds.splits["train"]))
    with torch.no_grad():
        model.module.taste.weight.copy_(2.0 * torch.eye(ds.n_genres))
    return model


def _order(model, ds, videos, confounder=None):
    q = VideoQuery.from_dataset(ds, videos)
    q.confounder = confounder
    return np.argsort(-model.score(q, MusicCatalog.from_dataset(ds)), axis=1)


def test_adjustment_changes_the_order_of_tracks(tiny_ds):
    model = _with_taste(tiny_ds)
    videos = np.arange(20)
    model.set_inference_mode("content")
    content = _order(model, tiny_ds, videos)
    model.set_inference_mode("backdoor")
    backdoor = _order(model, tiny_ds, videos)
    assert (content != backdoor).any(axis=1).mean() > 0.5
    # personalised: two uploaders of opposite taste get different orders for the same videos
    model.set_inference_mode("personalised")
    g = tiny_ds.n_genres
    likes_first = np.tile(np.r_[0.9, np.full(g - 1, 0.1 / (g - 1))], (20, 1)).astype(np.float32)
    likes_last = likes_first[:, ::-1].copy()
    first_fan, last_fan = _order(model, tiny_ds, videos, likes_first), _order(model, tiny_ds, videos, likes_last)
    assert (first_fan != last_fan).any()
    # and in the taste's direction: each fan's top 10 holds more of the genre they like than the other fan's
    genre = np.asarray(tiny_ds.track_genre)

    def top10_share(order, of_genre):
        return (genre[order[:, :10]] == of_genre).mean()

    assert top10_share(first_fan, 0) > top10_share(last_fan, 0)
    assert top10_share(last_fan, g - 1) > top10_share(first_fan, g - 1)


def test_the_adjustment_is_a_genre_offset_not_a_constant_per_query(tiny_ds):
    """The public code's defect: one vector added to every music embedding shifts all of a query's scores by the
    same amount, which cannot change any ranking. Ours, backdoor minus content, is one offset per genre of the
    track (h(v, g)): the same for a query's tracks of one genre, different across genres."""
    model = _with_taste(tiny_ds)
    q, cat = VideoQuery.from_dataset(tiny_ds, np.arange(10)), MusicCatalog.from_dataset(tiny_ds)
    model.set_inference_mode("content")
    content = model.score(q, cat).astype(np.float64)
    model.set_inference_mode("backdoor")
    shift = model.score(q, cat).astype(np.float64) - content
    genre = np.asarray(tiny_ds.track_genre)
    by_genre = np.stack([shift[:, genre == g].mean(1) for g in range(tiny_ds.n_genres)], 1)  # [10, G]
    np.testing.assert_allclose(shift, by_genre[:, genre], atol=1e-4)  # one value per (query, genre)
    assert (np.ptp(by_genre, axis=1) > 0.05).all()  # and not one per query



@pytest.mark.parametrize("taste_training", ["own", "batch"])
def test_training_logits_add_each_row_s_taste_or_the_batch_s_monte_carlo_estimate_by_hand(tiny_ds, taste_training):
    """own: logit_ij = sim_ij + tau t(c_i)[g_j] (P(Y | V, M, c) fitted on each upload's own uploader); batch: the
    issue's reading of the backdoor sum in training, t(c_i) replaced by log (1/B) sum_k exp t(c_k), one term for
    every row, computed here by hand."""
    from bgmrec.models.deccm import DecCMConfig

    model = _with_taste(tiny_ds)
    model.config = DecCMConfig(**{**vars(model.config), "taste_training": taste_training})
    rows = np.asarray(tiny_ds.splits["train"])[:4]
    batch = FeatureTensors(tiny_ds).batch(rows)
    sim = torch.arange(16, dtype=torch.float32).reshape(4, 4) / 10
    got = model.match_logits(sim, batch).detach().double().numpy()
    c = np.asarray(tiny_ds.confounder(rows[:, 2]), np.float64)  # [4, G]: each row's uploader's taste
    t = 2.0 * np.log(c + 1e-6)  # the taste path set by hand: W = 2 I, b = 0
    if taste_training == "batch":
        t = np.tile(np.log(np.exp(t).mean(0)), (4, 1))  # the batch's Monte Carlo estimate, for every row
    genre = np.asarray(tiny_ds.track_genre)[rows[:, 1]]
    want = sim.double().numpy() + model.config.temperature * t[:, genre]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert (taste_training == "batch") == np.allclose(np.diff(got - sim.numpy(), axis=0), 0, atol=1e-6)


def test_taste_training_is_own_or_batch():
    from bgmrec.models.deccm import DecCMConfig

    with pytest.raises(ValueError, match=r"taste_training must be one of \('own', 'batch'\), got 'mean'"):
        DecCMConfig(taste_training="mean")

def test_backdoor_score_is_the_monte_carlo_marginal(tiny_ds):
    """score(v, m) / tau == log P(m | do(v)), by brute force, where
    P(m | v, c) = softmax_r(f_vr + t(c)[g_r] + log Q(r)) (in-batch training learns f up to log Q),
    P(m | do(v)) = (1/K) sum_k P(m | v, c_k), and the track prior adds log Q(m) back."""
    model = _with_taste(tiny_ds)
    model.set_inference_mode("backdoor")
    mod, tau = model.module, model.config.temperature
    tracks = np.unique(np.asarray(tiny_ds.splits["train"])[:, 1])  # tiny: every training track is a reference
    assert np.array_equal(mod.ref_music.numpy(), np.asarray(tiny_ds.music, np.float32)[tracks])
    with torch.no_grad():
        q = VideoQuery.from_dataset(tiny_ds, np.arange(5))
        e_v = model.embed(mod.video_posterior(torch.from_numpy(q.visual), torch.from_numpy(q.text),
                                              torch.from_numpy(q.text_mask))[0]).double()
        e_r = model.embed(mod.music_posterior(mod.ref_music)[0]).double()
        log_q = mod.ref_log_share.double()
        s = e_v @ e_r.T / tau  # [n, R]
        t = mod.taste_logits(mod.prior_c).double()[:, mod.ref_genre]  # [K, R]
        p = torch.softmax(s[:, None, :] + t[None] + log_q, dim=2).mean(1)  # P(m | do(v)) over the reference tracks
        ref = MusicCatalog(mod.ref_music.numpy(), mod.ref_genre.numpy(), tracks)
        ours = model.score(q, ref) / tau
    assert np.allclose(ours, np.log(p.numpy()), atol=2e-4)
    assert np.allclose(np.exp(ours).sum(1), 1.0, atol=1e-3)
    assert np.isclose(np.exp(log_q.numpy()).sum(), 1.0)  # Q is the training share of each reference track


def test_personalised_figures_of_queries_without_an_uploader_say_so(tiny_ds):
    """As on an imported TT-150k, whose val and test rows have uploader -1: ranked with the prior taste."""
    import dataclasses

    from bgmrec.eval.protocol import EvaluationWarning

    model = _with_taste(tiny_ds)
    model.set_inference_mode("personalised")
    test = np.array(tiny_ds.splits["test"])
    test[: len(test) // 2, 2] = -1
    half = dataclasses.replace(tiny_ds, splits={**tiny_ds.splits, "test": test})
    # named by its model: compare evaluates two (it said only "20 of 40 test queries ...")
    with pytest.warns(EvaluationWarning, match=rf"^deccm \[personalised\]: {len(test) // 2} of {len(test)} test "
                                               "queries have no known uploader: it ranks them with the dataset's "
                                               "prior taste, not their uploader's$"):
        assert evaluate(model, half, "test")["queries_without_uploader"] == len(test) // 2
    with pytest.warns(EvaluationWarning, match=r"^s1/deccm \[personalised\]: "):  # a run's label, when given
        assert evaluate(model, half, "test", label="s1/deccm")["label"] == "s1/deccm"
    test[:, 2] = -1
    with pytest.warns(EvaluationWarning, match="; these figures are not personalised$"):
        evaluate(model, half, "test")
    model.set_inference_mode("backdoor")  # the uploader is not read: nothing to say
    with warnings.catch_warnings():
        warnings.simplefilter("error", EvaluationWarning)
        assert "queries_without_uploader" not in evaluate(model, half, "test")


def test_personalised_mode_needs_the_uploader(tiny_ds):
    model = _with_taste(tiny_ds)
    model.set_inference_mode("personalised")
    with pytest.raises(ValueError, match="genre preferences"):
        model.encode_videos(VideoQuery.from_dataset(tiny_ds, np.arange(3)))


@pytest.mark.parametrize(("row", "sums"), [
    (lambda c: -c, "-1"),  # log of a negative taste: NaN scores, ranked arbitrarily
    (lambda c: np.full_like(c, np.nan), "nan"),
    (lambda c: 100 * c, "100"),  # a scaled taste shifts whole genres (the server scales it first)
    (np.zeros_like, "0"),  # read as a taste for nothing: extreme offsets
])
def test_personalised_mode_refuses_a_taste_that_is_not_a_distribution(tiny_ds, row, sums):
    model = _with_taste(tiny_ds)
    model.set_inference_mode("personalised")
    q = VideoQuery.from_dataset(tiny_ds, np.arange(3))
    taste = tiny_ds.uploader_pref[:3].copy()
    q.confounder = taste.copy()
    q.confounder[1] = row(taste[1])
    with pytest.raises(ValueError, match=rf"confounder: row 1 is not an uploader's genre preferences \(finite, "
                                         rf"non-negative, summing to 1\): .*summing to {sums}; scale each row"):
        model.encode_videos(q)
    q.confounder = normalised_taste(np.abs(taste) * 100)  # the same taste, scaled back: accepted
    np.testing.assert_allclose(model.encode_videos(q), model.encode_videos(
        VideoQuery(q.visual, q.text, q.text_mask, taste)), rtol=1e-5, atol=1e-5)


def test_no_adjustment_ablation_offers_content_mode_only(tiny_ds):
    model = build("deccm-noadjust", FeatureSpec.of(tiny_ds), {"teacher": False})
    assert model.inference_mode == "content"
    with pytest.raises(ValueError, match="content"):
        model.set_inference_mode("backdoor")


def _cross_entropy(logits: np.ndarray, keep: np.ndarray, target: int) -> float:
    """Cross-entropy of ``target`` over the entries of ``logits`` that ``keep`` leaves in (float64)."""
    row = logits[keep]
    return float(np.log(np.exp(row - row.max()).sum()) + row.max() - logits[target])


def test_training_loss_adds_the_taste_path_and_the_teacher_kl_by_hand(tiny_ds):
    """match_weight * InfoNCE on sim / tau + t(c_i)[g_j], t(c) = W log c + b, plus the CMVAE terms, plus
    alpha * (KL(q_student || q_teacher) of the video and of the music posterior) / latent_dim, the KL and the
    matching term recomputed here from their definitions in float64 (the CMVAE terms are checked by hand in
    test_cmvae.py)."""
    import dataclasses

    spec = FeatureSpec.of(tiny_ds)
    student = build("deccm", spec, {"hidden": "16", "latent_dim": 4, "dropout": 0.0, "prior_samples": 16,
                                    "temperature": 0.25, "alpha": 0.3, "match_weight": 0.7, "kl_weight": 0.2,
                                    "recon_weight": 0.4, "kl_anneal_epochs": 1.0})
    teacher = as_fitted(CMVAE(dataclasses.replace(teacher_config(student.config), seed=7), spec))  # other weights
    student.set_teacher(teacher, None)
    with torch.no_grad():  # a taste path with every weight in play
        generator = torch.Generator().manual_seed(3)
        student.module.taste.weight.copy_(torch.randn(g := len(spec.genres), g, generator=generator))
        student.module.taste.bias.copy_(torch.randn(g, generator=generator))
    student.module.eval()
    train = np.asarray(tiny_ds.splits["train"])
    _, first = np.unique(train[:, 1], return_index=True)
    rows = train[np.sort(first)[:10]]
    rows = np.vstack([rows, train[(train[:, 1] == rows[0, 1])][1:3]])  # rows 10, 11 share row 0's track
    assert len(rows) == 12 and (rows[10:, 1] == rows[0, 1]).all()
    feats = FeatureTensors(tiny_ds)
    student.prepare(feats, train)
    batch = feats.batch(rows)
    with torch.no_grad():
        loss, logs = student.training_loss(batch, step=10, steps_per_epoch=10)  # past the KL warm-up
        mu_v, lv_v = (x.double().numpy() for x in student.module.video_posterior(batch.visual, batch.text,
                                                                                 batch.text_mask))
        mu_m, lv_m = (x.double().numpy() for x in student.module.music_posterior(batch.music))
        frozen = student.teacher.module
        t_mu_v, t_lv_v = (x.double().numpy() for x in frozen.video_posterior(batch.visual, batch.text,
                                                                             batch.text_mask))
        t_mu_m, t_lv_m = (x.double().numpy() for x in frozen.music_posterior(batch.music))
    w, b = (x.detach().double().numpy() for x in (student.module.taste.weight, student.module.taste.bias))
    taste = np.log(batch.confounder.double().numpy() + 1e-6) @ w.T + b  # [B, G]: t(c_i)
    genre = batch.genre.numpy()
    logits = (mu_v @ mu_m.T) / 0.25 + taste[:, genre]  # [B, B]: row i's taste on column j's genre
    track = rows[:, 1]
    keep = [(track != track[i]) | (np.arange(len(rows)) == i) for i in range(len(rows))]

    def info_nce(lg):
        return 0.5 * (np.mean([_cross_entropy(lg[i], keep[i], i) for i in range(len(rows))])
                      + np.mean([_cross_entropy(lg[:, j], keep[j], j) for j in range(len(rows))]))

    match = info_nce(logits)
    assert abs(match - info_nce((mu_v @ mu_m.T) / 0.25)) > 0.05  # the taste term weighs in this batch

    def kl(mu_q, lv_q, mu_p, lv_p):  # KL(N(mu_q, e^lv_q) || N(mu_p, e^lv_p)), summed over dimensions
        return 0.5 * (lv_p - lv_q + (np.exp(lv_q) + (mu_q - mu_p) ** 2) / np.exp(lv_p) - 1.0).sum(1)

    distil = ((kl(mu_v, lv_v, t_mu_v, t_lv_v) + kl(mu_m, lv_m, t_mu_m, t_lv_m)).mean() / 4)
    assert distil > 0.01  # the teacher differs from the student
    assert logs["match"] == pytest.approx(match, rel=1e-4)
    assert logs["teacher_kl"] == pytest.approx(distil, rel=1e-4)
    assert loss.item() == pytest.approx(0.7 * match + 0.2 * logs["kl"] + 0.4 * logs["recon"] + 0.3 * distil,
                                        rel=1e-4)


def test_teacher_is_frozen_in_eval_mode_and_not_saved(tiny_dir, tmp_path):
    ds = load_dataset(tiny_dir)
    model = build("deccm", FeatureSpec.of(ds), {"epochs": 1, "batch_size": 256})
    prepare_teacher(model, ds, tmp_path / "run", None)
    teacher = model.teacher
    before = {k: v.clone() for k, v in teacher.module.state_dict().items()}
    model.fit(SplitView(ds, "train"), None)
    teacher.module.train()  # a teacher stays in eval mode even when asked to train
    for part in teacher.module.children():  # and so does each of its parts
        part.train()
    assert not any(m.training for m in teacher.module.modules())
    assert all(p.grad is None and not p.requires_grad for p in teacher.module.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.module.state_dict().items())
    assert model.history[0]["teacher_kl"] > 0
    model.save(tmp_path / "run")
    from safetensors.numpy import load_file

    saved = load_file(str(tmp_path / "run" / "weights.safetensors"))
    assert set(saved) == set(model.module.state_dict())
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert meta["learned"]["teacher_run"] == meta["learned"]["teacher_run_relative"] == "teacher"  # inside the run
    again = load_model(tmp_path / "run")
    q = VideoQuery.from_dataset(ds, np.arange(6))
    cat = MusicCatalog.from_dataset(ds)
    assert np.allclose(again.score(q, cat), model.score(q, cat), atol=1e-5)


def test_a_teacher_trained_on_no_captions_is_distilled_from_without_them(tiny_ds, tmp_path):
    # professional videos without text (a TT-150k import without their text file): the teacher ranks without
    # captions, but the KL term read its untrained text expert with the batch's captions (a review)
    import dataclasses

    pgc = np.unique(tiny_ds.splits["pgc"][:, 0])
    mask = np.array(tiny_ds.video_text_mask)
    mask[pgc] = False
    ds = dataclasses.replace(tiny_ds, video_text_mask=mask)
    model = build("deccm", FeatureSpec.of(ds), {"epochs": 1, "batch_size": 256})
    prepare_teacher(model, ds, tmp_path / "run", None)
    model.prepare(FeatureTensors(ds), np.asarray(ds.splits["train"]))
    assert not model.teacher.learned_text and model.learned_text
    batch = FeatureTensors(ds).batch(np.asarray(ds.splits["train"])[:64])
    assert batch.text_mask.any()
    blind = dataclasses.replace(batch, text_mask=torch.zeros_like(batch.text_mask))
    model.module.eval()
    with torch.no_grad():
        post = model.module.video_posterior(batch.visual, batch.text, batch.text_mask)
        music = model.module.music_posterior(batch.music)
        teacher = model.teacher.module
        assert not torch.equal(teacher.video_posterior(batch.visual, batch.text, batch.text_mask)[0],
                               teacher.video_posterior(blind.visual, blind.text, blind.text_mask)[0])  # it would differ
        got, without = ({}, {})
        assert torch.equal(model.extra_loss(batch, post, music, got), model.extra_loss(blind, post, music, without))


def test_a_student_trained_on_no_captions_reads_them_through_a_captioned_teacher(tiny_ds, tmp_path):
    # recommend said the captions were left out while content mode's teacher, trained on captioned professional
    # videos, read them and changed the scores (a review)
    import dataclasses

    mask = np.array(tiny_ds.video_text_mask)
    mask[np.unique(tiny_ds.splits["train"][:, 0])] = False
    ds = dataclasses.replace(tiny_ds, video_text_mask=mask)
    model = build("deccm", FeatureSpec.of(ds), {"epochs": 1, "batch_size": 256})
    prepare_teacher(model, ds, tmp_path / "run", None)
    model.fit(SplitView(ds, "train"), None)
    assert not model.learned_text and model.teacher.learned_text
    model.set_inference_mode("backdoor")
    assert not model.reads_captions
    model.set_inference_mode("content")
    assert model.reads_captions
    q = VideoQuery.from_dataset(tiny_ds, np.arange(8))
    blind = dataclasses.replace(q, text_mask=np.zeros(len(q), bool))
    cat = MusicCatalog.from_dataset(tiny_ds)
    assert not np.allclose(model.score(q, cat), model.score(blind, cat))  # the teacher's share reads them


def test_set_teacher_freezes_its_own_copy_and_leaves_the_callers_teacher_as_it_was(tiny_ds):
    # set_teacher froze the caller's object: requires_grad off, and its module's train() replaced by a no-op
    student = build("deccm", FeatureSpec.of(tiny_ds), {"prior_samples": 64})
    teacher = as_fitted(CMVAE(teacher_config(student.config), student.spec))
    teacher.module.train()
    student.set_teacher(teacher, None)
    assert teacher.module.training and all(p.requires_grad for p in teacher.module.parameters())
    teacher.module.eval()
    teacher.module.train()  # the caller can still train it
    assert teacher.module.training
    frozen = student.teacher.module
    assert student.teacher is not teacher and frozen is not teacher.module
    assert all(torch.equal(a, b) for a, b in zip(teacher.module.state_dict().values(), frozen.state_dict().values(),
                                                 strict=True))
    frozen.train()
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    with torch.no_grad():  # the caller training its teacher further does not change the student's
        next(teacher.module.parameters()).add_(1.0)
    assert not torch.equal(next(teacher.module.parameters()), next(frozen.parameters()))


def _student_with_teacher(ds, folder):
    model = build("deccm", FeatureSpec.of(ds), {"epochs": 1, "batch_size": 256, "prior_samples": 64})
    prepare_teacher(model, ds, folder, None)
    return model.fit(SplitView(ds, "train"), None)


def test_content_mode_is_the_geometric_mixture_of_student_and_teacher(tiny_dir, tmp_path):
    ds = load_dataset(tiny_dir)
    model = _student_with_teacher(ds, tmp_path / "run")
    q, cat = VideoQuery.from_dataset(ds, np.arange(8)), MusicCatalog.from_dataset(ds)
    w = model.config.teacher_mix
    assert 0 < w < 1
    model.set_inference_mode("content")
    mixed = model.score(q, cat)
    backdoor = {}
    for mix in (w, 0.0):
        model.config.teacher_mix = mix
        model.set_inference_mode("backdoor")
        backdoor[mix] = model.score(q, cat)
    model.set_inference_mode("content")
    student = model.score(q, cat)  # teacher_mix = 0: the student alone
    assert np.allclose(mixed, (1 - w) * student + w * model.teacher.score(q, cat), atol=1e-5)
    assert not np.allclose(mixed, student, atol=1e-3)
    assert np.array_equal(backdoor[w], backdoor[0.0])  # the other modes never use the teacher
    # the benchmarks' wrapper around the student alone (teacher_mix = 0, as above) is content mode itself
    assert model.config.teacher_mix == 0.0
    wrapped = TeacherMixture(model, model.teacher, w)
    assert wrapped.name == "deccm+teacher"
    assert np.allclose(wrapped.encode_videos(q) @ wrapped.encode_music(cat).T, mixed, atol=1e-5)
    # ... and around any model it is the weighted sum of the two scores
    popularity = build("popularity", FeatureSpec.of(ds)).fit(SplitView(ds, "train"), None)
    other = TeacherMixture(popularity, model.teacher, 0.3)
    assert np.allclose(other.encode_videos(q) @ other.encode_music(cat).T,
                       0.7 * popularity.score(q, cat) + 0.3 * model.teacher.score(q, cat), atol=1e-5)
    with pytest.raises(ValueError, match=r"weight must be in \[0, 1\], got -0.5"):
        TeacherMixture(model, model.teacher, -0.5)


def test_a_student_whose_teacher_has_no_folder_is_not_saved(tiny_dir, tmp_path):
    ds = load_dataset(tiny_dir)
    model = _student_with_teacher(ds, tmp_path / "run")
    model.set_teacher(model.teacher, None)  # attached in memory only
    with pytest.raises(ValueError, match=r"teacher was attached without a folder .* attach it with its folder"):
        model.save(tmp_path / "student")
    assert not (tmp_path / "student").exists()
    model.config.teacher_mix = 0.0  # a student that ranks alone needs no teacher after loading
    model.save(tmp_path / "student")


def test_modality_shares_follow_the_scores_mixture(tiny_dir, tmp_path):
    ds = load_dataset(tiny_dir)
    model = _student_with_teacher(ds, tmp_path / "run")
    q = VideoQuery.from_dataset(ds, np.arange(8))
    model.config.teacher_mix = w = 0.25  # not the default's 0.5, where the two weights are alike
    model.set_inference_mode("backdoor")
    student = model.modality_shares(q)
    teacher = model.teacher.modality_shares(q)
    assert not np.allclose(student, teacher, atol=1e-3)
    model.set_inference_mode("content")
    shares = model.modality_shares(q)
    assert np.allclose(shares, (1 - w) * student + w * teacher) and np.allclose(shares.sum(axis=1), 1.0)


def test_teachermix_trains_as_cmvae_and_mixes_the_teacher_in(tiny_dir, tmp_path):
    ds = load_dataset(tiny_dir)
    overrides = {"epochs": 2, "batch_size": 256}
    cmvae = build("cmvae", FeatureSpec.of(ds), overrides).fit(SplitView(ds, "train"), None)
    mixed = build("deccm-teachermix", FeatureSpec.of(ds), {**overrides, "prior_samples": 64})
    prepare_teacher(mixed, ds, tmp_path / "run", None)
    mixed.fit(SplitView(ds, "train"), None)
    # the same training as CMVAE: no taste path, no KL term (alpha = 0), the same batches and weights
    assert [h["loss"] for h in mixed.history] == pytest.approx([h["loss"] for h in cmvae.history], rel=1e-5)
    assert "teacher_kl" not in mixed.history[0]
    # every weight and buffer as CMVAE's, the regression that predicts new music's share too: it reads
    # the latent part of DecCM's music side, without the genre one-hot that the regression adds itself
    for key, value in cmvae.module.state_dict().items():
        assert torch.allclose(mixed.module.state_dict()[key], value, atol=1e-5), key
    assert len(mixed.module.track_prior.coef) == mixed.config.latent_dim + ds.n_genres
    # content mode (its only mode) with the uploads' shares, plus the teacher's block, on new music too
    assert mixed.inference_mode == "content" and not hasattr(mixed.module, "content_prior")
    q, cat = VideoQuery.from_dataset(ds, np.arange(8)), MusicCatalog.from_dataset(ds)
    assert np.asarray(ds.track_new).any()
    w = mixed.config.teacher_mix
    expected = (1 - w) * cmvae.score(q, cat) + w * mixed.teacher.score(q, cat)
    assert np.allclose(mixed.score(q, cat), expected, atol=1e-4)


def test_a_loaded_student_finds_its_teacher_or_says_it_is_missing(tiny_dir, tmp_path):
    ds = load_dataset(tiny_dir)
    model = _student_with_teacher(ds, tmp_path / "run")
    model.set_inference_mode("content")
    model.save(tmp_path / "run")
    q, cat = VideoQuery.from_dataset(ds, np.arange(6)), MusicCatalog.from_dataset(ds)
    expected = model.score(q, cat)
    (tmp_path / "run").rename(tmp_path / "moved")  # the recorded teacher path is stale: folder/teacher is used
    again = load_model(tmp_path / "moved")
    assert again.inference_mode == "content" and again.teacher is not None
    assert np.allclose(again.score(q, cat), expected, atol=1e-5)
    shutil.copytree(tmp_path / "moved", tmp_path / "copy")  # a copy uses its own teacher, not the original's
    assert load_model(tmp_path / "copy").teacher_dir == str((tmp_path / "copy" / "teacher").resolve())
    shutil.rmtree(tmp_path / "moved" / "teacher")
    orphan = load_model(tmp_path / "moved")
    with pytest.raises(ValueError, match="teacher"):
        orphan.score(q, cat)
    orphan.set_inference_mode("backdoor")
    assert np.isfinite(orphan.score(q, cat)).all()


def test_a_noadjust_student_whose_teacher_folder_is_gone_is_refused_at_load(tiny_dir, tmp_path):
    """Content mode is its only mode and mixes the teacher in: it loaded, and failed at its first score."""
    ds = load_dataset(tiny_dir)
    model = build("deccm-noadjust", FeatureSpec.of(ds), {"epochs": 1, "batch_size": 256, "prior_samples": 64})
    prepare_teacher(model, ds, tmp_path / "run", None)
    model.fit(SplitView(ds, "train"), None).save(tmp_path / "run")
    assert load_model(tmp_path / "run").teacher is not None
    shutil.rmtree(tmp_path / "run" / "teacher")
    teacher = os.path.normpath(tmp_path / "run" / "teacher")
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(tmp_path / 'run' / 'config.json'))}: content mode is "
                                           r"this student's only mode \(adjustment=false\); DecCM's content mode mixes "
                                           rf"its teacher's scores \(teacher_mix=0.5\) but there is no teacher folder "
                                           rf"at {re.escape(teacher)} with the weights it was trained with"):
        load_model(tmp_path / "run")


def test_a_student_saved_with_a_teacher_of_another_scale_loads_and_only_content_mode_refuses(tiny_dir, tmp_path):
    """Such pairs were accepted before the scales were checked: the modes that never use the teacher still work."""
    ds = load_dataset(tiny_dir)
    _student_with_teacher(ds, tmp_path / "run").save(tmp_path / "run")
    teacher_config = tmp_path / "run" / "teacher" / "config.json"
    meta = json.loads(teacher_config.read_text())
    meta["config"]["temperature"] = 0.2
    teacher_config.write_text(json.dumps(meta))
    old = load_model(tmp_path / "run")
    q, cat = VideoQuery.from_dataset(ds, np.arange(6)), MusicCatalog.from_dataset(ds)
    old.set_inference_mode("backdoor")
    assert np.isfinite(old.score(q, cat)).all()
    old.set_inference_mode("content")
    with pytest.raises(ValueError, match=r"content mode mixes its teacher's scores, but the teacher at .*teacher "
                                         r"cannot guide it: the teacher was trained with temperature 0.2 \(student: "):
        old.score(q, cat)


def test_a_teacher_outside_the_student_is_found_after_moving_either_or_both(tiny_dir, tmp_path):
    ds = load_dataset(tiny_dir)
    grid = tmp_path / "grid"
    first = _student_with_teacher(ds, grid / "first")
    first.save(grid / "first")
    student = build("deccm", FeatureSpec.of(ds), {"epochs": 1, "batch_size": 256, "prior_samples": 64,
                                                 "inference": "content"})
    prepare_teacher(student, ds, grid / "second", grid / "first" / "teacher")  # as tune shares a teacher
    student.fit(SplitView(ds, "train"), None).save(grid / "second")
    meta = json.loads((grid / "second" / "config.json").read_text())["learned"]
    assert meta["teacher_run"] == str((grid / "first" / "teacher").resolve())
    assert meta["teacher_run_relative"] == os.path.join("..", "first", "teacher")
    q, cat = VideoQuery.from_dataset(ds, np.arange(6)), MusicCatalog.from_dataset(ds)
    expected = student.score(q, cat)
    shutil.move(grid / "second", tmp_path / "alone")  # the student alone: the recorded absolute path
    assert load_model(tmp_path / "alone").teacher_dir == str((grid / "first" / "teacher").resolve())
    shutil.move(tmp_path / "alone", grid / "second")
    shutil.move(grid, tmp_path / "moved")  # both: the relative path
    again = load_model(tmp_path / "moved" / "second")
    assert again.teacher_dir == str((tmp_path / "moved" / "first" / "teacher").resolve())
    assert np.allclose(again.score(q, cat), expected, atol=1e-5)
    # copied beside another grid's teacher at the same relative place: not taken (other weights)
    other = build("deccm", FeatureSpec.of(ds), {"epochs": 1, "batch_size": 256, "prior_samples": 64, "seed": 7})
    prepare_teacher(other, ds, tmp_path / "b" / "first", None)
    shutil.copytree(tmp_path / "moved" / "second", tmp_path / "b" / "second")
    lost = load_model(tmp_path / "b" / "second")  # and its own is not at the absolute path: the grid moved
    assert lost.teacher_dir is None
    with pytest.raises(ValueError, match="with the weights it was trained with"):
        lost.score(q, cat)
    # a teacher folder there, damaged: named as one of other weights, not as no folder at all (a fuzz audit)
    shutil.copytree(grid.parent / "moved", tmp_path / "damaged")
    weights = tmp_path / "damaged" / "first" / "teacher" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"with the weights it was trained with \(sha256 [0-9a-f]{12}\.\.\.\) \("
                                         + re.escape(os.path.normpath(tmp_path / "damaged" / "first" / "teacher"))
                                         + r" holds other weights: damaged, or another teacher's\)"):
        load_model(tmp_path / "damaged" / "second").score(q, cat)


def test_a_student_trained_without_a_teacher_takes_none_from_its_folder(tiny_dir, tmp_path):
    ds = load_dataset(tiny_dir)
    model = build("deccm-noteacher", FeatureSpec.of(ds), {"epochs": 1, "batch_size": 256, "prior_samples": 64})
    model.fit(SplitView(ds, "train"), None).save(tmp_path / "run")
    shutil.copytree(_student_with_teacher(ds, tmp_path / "other").teacher_dir, tmp_path / "run" / "teacher")
    again = load_model(tmp_path / "run")
    assert again.teacher_dir is None and again.teacher is None
    assert json.loads((tmp_path / "run" / "config.json").read_text())["learned"]["teacher_run"] is None


def test_a_copy_of_a_student_saved_before_the_teacher_record_uses_its_own_teacher(tiny_dir, tmp_path):
    ds = load_dataset(tiny_dir)
    model = _student_with_teacher(ds, tmp_path / "run")
    model.save(tmp_path / "run")
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    for key in ("teacher_run_relative", "teacher_weights_sha256"):  # as written before: the absolute path only
        del meta["learned"][key]
    meta["learned"]["teacher_run"] = str((tmp_path / "run" / "teacher").resolve())
    (tmp_path / "run" / "config.json").write_text(json.dumps(meta))
    shutil.copytree(tmp_path / "run", tmp_path / "copy")
    assert load_model(tmp_path / "copy").teacher_dir == str((tmp_path / "copy" / "teacher").resolve())
    shutil.rmtree(tmp_path / "copy" / "teacher")
    assert load_model(tmp_path / "copy").teacher_dir == str((tmp_path / "run" / "teacher").resolve())


def test_a_student_saved_before_teacher_mixing_ranks_as_before(tiny_dir, tmp_path):
    ds = load_dataset(tiny_dir)
    model = _student_with_teacher(ds, tmp_path / "run")
    model.config.teacher_mix = 0.0
    model.set_inference_mode("content")
    _as_saved_before_content_share(model, tmp_path / "run")
    del model.module.content_prior  # the student alone, with the uploads' shares
    old = load_model(tmp_path / "run")
    assert old.config.teacher_mix == 0.0 and not old.mixes_teacher()
    q, cat = VideoQuery.from_dataset(ds, np.arange(6)), MusicCatalog.from_dataset(ds)
    assert np.allclose(old.score(q, cat), model.score(q, cat), atol=1e-5)


def _as_saved_before_content_share(model, folder):
    """Save ``model`` as a student was written before teacher mixing and the content share existed."""
    model.save(folder)
    meta = json.loads((folder / "config.json").read_text())
    del meta["config"]["teacher_mix"], meta["config"]["content_share"]
    (folder / "config.json").write_text(json.dumps(meta))
    weights = load_file(folder / "weights.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("content_prior.")}, folder / "weights.safetensors")


def test_content_log_share_by_hand():
    # one genre, k = 1: expected choices 2 and 2, genre ratio (4 + 1) / (4 + 1) = 1,
    # E[theta | n] = (1 + n) / (1 + 2): log 0.5 + log(1/3) and log 0.5 + log(5/3)
    out = content_log_share(np.log([0.5, 0.5]), np.array([0, 4]), np.array([0, 0]), 1, shape=1.0)
    assert np.allclose(out, [-1.7917595, -0.1823216], atol=1e-6)
    # two genres, k = 2: expected 1, 1, 2; genre ratios 5/3 and 1/3; expected after them 5/3, 5/3, 2/3;
    # Q * ratio * (2 + n) / (2 + e) = 0.25 * 5/3 * 15/11, 0.25 * 5/3 * 9/11, 0.5 * 1/3 * 3/4 = 1/8
    out = content_log_share(np.log([0.25, 0.25, 0.5]), np.array([3, 1, 0]), np.array([0, 0, 1]), 2, shape=2.0)
    assert np.allclose(out, np.log([0.25 * 5 / 3 * 15 / 11, 0.25 * 5 / 3 * 9 / 11, 1 / 8]), atol=1e-9)
    with pytest.raises(ValueError, match="not all 0"):
        content_log_share(np.log([0.5, 0.5]), np.array([0, 0]), np.array([0, 0]), 1)
    with pytest.raises(ValueError, match="finite log shares"):
        content_log_share(np.array([np.nan, -1.0]), np.array([1, 1]), np.array([0, 0]), 1)


def test_negative_binomial_shape_recovers_the_gamma_shape():
    rng = np.random.default_rng(0)
    expected = rng.uniform(1.0, 20.0, 20000)
    counts = rng.poisson(expected * rng.gamma(2.0, 1 / 2.0, len(expected)))
    assert 1.6 < negative_binomial_shape(counts, expected) < 2.5
    plain = rng.poisson(expected)  # no over-dispersion: the shape runs to the grid's top
    assert negative_binomial_shape(plain, expected) > 50
    # a track expected never to be chosen says nothing about k (and must not make the likelihood NaN)
    assert negative_binomial_shape(np.append(counts, 0), np.append(expected, 0.0)) == negative_binomial_shape(
        counts, expected)


def test_content_log_share_removes_popularity_and_genre_taste():
    rng = np.random.default_rng(1)
    n_tracks, n_genres = 3000, 3
    genre = rng.integers(0, n_genres, n_tracks)
    log_content = rng.normal(0.0, 1.0, n_tracks)  # the share under choice by content alone (log, unnormalised)
    log_uploads = log_content + 0.8 * rng.normal(0.0, 1.0, n_tracks) + np.array([1.0, 0.0, -1.0])[genre]
    content = np.exp(log_content - log_content.max())
    counts = rng.multinomial(6000, content / content.sum())  # 2 professional choices per track on average
    log_uploads -= np.log(np.exp(log_uploads).sum())
    est = content_log_share(log_uploads, counts, genre, n_genres)

    def corr(x):
        return np.corrcoef(x, log_content)[0, 1]

    assert corr(est) > corr(log_uploads) + 0.1
    assert corr(est) > corr(np.log(counts + 0.5)) + 0.1  # better than the professional counts alone
    genre_only = content_log_share(log_uploads, counts, genre, n_genres, shape=1e12)  # no per-track ratio
    assert corr(est) > corr(genre_only) + 0.05  # the shrunk per-track ratio removes popularity
    for shape in (0.3, 5.0):  # the fitted shrinkage beats too much and too little of it
        assert corr(est) > corr(content_log_share(log_uploads, counts, genre, n_genres, shape=shape)) + 0.01
    bias = [np.mean((est - log_content)[genre == g]) for g in range(n_genres)]
    assert np.ptp(bias) < 0.15  # the genres' taste (a spread of 2 in log share) is gone


def test_content_mode_ranks_with_the_content_share(tiny_dir, tmp_path):
    ds = load_dataset(tiny_dir)
    model = _student_with_teacher(ds, tmp_path / "run")
    model.config.teacher_mix = 0.0
    cat = MusicCatalog.from_dataset(ds)
    known = np.flatnonzero(~np.asarray(ds.track_new))
    model.set_inference_mode("backdoor")
    uploads = model.encode_music(cat)[:, -1]
    model.set_inference_mode("content")
    content = model.encode_music(cat)[:, -1]
    professional = np.asarray(ds.splits[professional_split(ds)])
    assert professional_split(ds) != "train" and len(professional)
    counts = np.bincount(professional[:, 1], minlength=ds.n_tracks)  # the professional videos' choices
    assert np.array_equal(model.professional_counts, counts)
    expected = content_log_share(uploads[known], counts[known], ds.track_genre[known], ds.n_genres)
    assert np.allclose(content[known], expected, atol=1e-5)
    assert not np.allclose(content - content.mean(), uploads - uploads.mean(), atol=1e-2)  # not a constant shift
    assert np.isfinite(content).all()  # new music: predicted from its embedding and genre
    model.save(tmp_path / "run")
    assert np.allclose(load_model(tmp_path / "run").encode_music(cat)[:, -1], content, atol=1e-6)
    plain = build("deccm", FeatureSpec.of(ds), {"content_share": False, "teacher_mix": 0.0, "inference": "content",
                                                "epochs": 1, "batch_size": 256, "prior_samples": 64})
    assert not hasattr(plain.module, "content_prior")


def test_a_student_saved_before_the_content_share_ranks_as_before(tiny_dir, tmp_path):
    ds = load_dataset(tiny_dir)
    model = _student_with_teacher(ds, tmp_path / "run")
    model.config.teacher_mix = 0.0
    _as_saved_before_content_share(model, tmp_path / "run")
    old = load_model(tmp_path / "run")
    assert not old.config.content_share
    cat = MusicCatalog.from_dataset(ds)
    model.set_inference_mode("backdoor")
    old.set_inference_mode("content")
    assert np.allclose(old.encode_music(cat)[:, -1], model.encode_music(cat)[:, -1], atol=1e-6)


def test_a_student_whose_regression_read_the_genre_twice_predicts_new_music_as_before(tiny_dir, tmp_path):
    ds = load_dataset(tiny_dir)
    model = _student_with_teacher(ds, tmp_path / "run")
    model.set_inference_mode("backdoor")
    cat, g = MusicCatalog.from_dataset(ds), ds.n_genres
    music_side = model._music_embedding(cat)  # [latent, genre one-hot]
    prior = model.module.track_prior
    prior.fit_regression(cat.features, music_side, cat.genre, g)  # as fitted before: one-hot read twice
    assert len(prior.coef) == model.config.latent_dim + 2 * g
    model.save(tmp_path / "run")
    new = np.flatnonzero(np.asarray(ds.track_new))
    inputs = np.hstack([music_side, np.eye(g)[cat.genre]])[new]
    expected = prior.y_mean.item() + (inputs - prior.x_mean.numpy()) @ prior.coef.numpy()
    old = load_model(tmp_path / "run")
    old.set_inference_mode("backdoor")
    assert np.allclose(old.encode_music(cat)[new, -1], expected, atol=1e-5)


def test_content_share_without_professional_videos_says_it_has_no_effect(tiny_ds, monkeypatch):
    import bgmrec.models.deccm as deccm

    monkeypatch.setattr(deccm, "professional_split", lambda ds: None)
    model = build("deccm", FeatureSpec.of(tiny_ds), {"prior_samples": 64})
    model.teacher = object()  # as with --teacher RUN_DIR on a dataset without professional videos
    with pytest.warns(deccm.SettingWithoutEffectWarning, match="content_share=true has no effect"):
        model.prepare(FeatureTensors(tiny_ds), np.asarray(tiny_ds.splits["train"]))
    assert model.professional_counts is None


def test_the_commands_show_a_setting_without_effect_on_one_line(capsys):
    from bgmrec.cli.app import library_warnings_on_one_line
    from bgmrec.models.deccm import SettingWithoutEffectWarning

    with library_warnings_on_one_line():
        warnings.warn("content_share=true has no effect", SettingWithoutEffectWarning, stacklevel=1)
    assert capsys.readouterr().err == "warning: content_share=true has no effect\n"


def test_an_ablation_with_content_mode_only_says_how_to_do_without_its_teacher(tiny_ds):
    model = as_fitted(build("deccm-noadjust", FeatureSpec.of(tiny_ds), {"prior_samples": 64}))
    assert model.mixes_teacher()
    with pytest.raises(ValueError, match="retrain with teacher_mix=0$"):  # the field, not "--set teacher_mix=0"
        model.encode_music(MusicCatalog.from_dataset(tiny_ds))


def test_a_missing_teacher_is_explained_with_the_librarys_words_not_the_command_lines(tiny_ds, tmp_path, monkeypatch):
    # these said "pass --teacher RUN_DIR or --set teacher=false" to a Python caller, who has neither
    import bgmrec.models.deccm as deccm

    model = build("deccm", FeatureSpec.of(tiny_ds), {"prior_samples": 64})
    with pytest.raises(ValueError) as err:
        model.prepare(FeatureTensors(tiny_ds), np.asarray(tiny_ds.splits["train"]))  # fit without a teacher
    assert "attach one with set_teacher" in str(err.value) and "set teacher=false" in str(err.value)
    assert "--" not in str(err.value)
    monkeypatch.setattr(deccm, "professional_split", lambda ds: None)
    with pytest.raises(ValueError) as err:
        prepare_teacher(model, tiny_ds, tmp_path / "run", None)  # nothing to train a teacher on
    assert str(err.value).endswith("give a trained teacher's folder (teacher_dir) or set teacher=false")
    assert "--" not in str(err.value)


def test_teacher_mix_must_be_a_weight(tiny_ds):
    with pytest.raises(ValueError, match="teacher_mix"):
        build("deccm", FeatureSpec.of(tiny_ds), {"teacher_mix": 1.5})
    with pytest.raises(ValueError, match="alpha must be >= 0, got -0.1"):
        build("deccm", FeatureSpec.of(tiny_ds), {"alpha": -0.1})


def test_reusing_a_teacher_checks_its_latent_size(tiny_dir, tmp_path):
    ds = load_dataset(tiny_dir)
    teacher = build("cmvae", FeatureSpec.of(ds), {"latent_dim": 16, "epochs": 1})
    teacher.fit(SplitView(ds, "pgc"), None).save(tmp_path / "teacher")
    student = build("deccm", FeatureSpec.of(ds), {})
    with pytest.raises(ValueError, match="latent_dim"):
        prepare_teacher(student, ds, tmp_path / "run", tmp_path / "teacher")


@pytest.mark.parametrize("setting", [{"temperature": 0.2}, {"track_prior": False}, {"similarity": "cosine"},
                                     {"matching": "hinge", "track_prior": False}])
def test_a_teacher_on_another_scale_is_refused(tiny_ds, setting):
    """Content mode mixes tau * log P of both; a teacher whose scores are on another scale (or no log P) is named."""
    key, value = next(iter(setting.items()))
    teacher = as_fitted(build("cmvae", FeatureSpec.of(tiny_ds), setting))
    student = build("deccm", FeatureSpec.of(tiny_ds), {})
    with pytest.raises(ValueError, match=f"^the teacher was trained with {key} {value!r} \\(student: "):
        student.set_teacher(teacher, None)
    assert student.teacher is None
    student.set_teacher(as_fitted(build("cmvae", FeatureSpec.of(tiny_ds), {})), None)  # the student's own: taken
    with pytest.raises(ValueError, match=r"^the teacher \(cmvae\) is not fitted: fit it on the professional videos"):
        build("deccm", FeatureSpec.of(tiny_ds), {}).set_teacher(build("cmvae", FeatureSpec.of(tiny_ds), {}), None)


def test_a_teacher_of_other_feature_widths_is_refused(tiny_ds):
    import dataclasses

    spec = FeatureSpec.of(tiny_ds)
    other = dataclasses.replace(spec, video_visual=spec.video_visual + 1)
    student = build("deccm", spec, {})
    with pytest.raises(ValueError, match="^the teacher was trained on other feature dimensions than the student$"):
        student.set_teacher(as_fitted(build("cmvae", other, {})), None)
    assert student.teacher is None


def test_a_deccm_student_is_refused_as_a_teacher(tiny_dir, tmp_path):
    """A teacher is a CMVAE fitted on the professional videos: a student (a CMVAE subclass) given as one would
    have been distilled from and mixed in."""
    from bgmrec.models.deccm import load_teacher

    ds = load_dataset(tiny_dir)
    _student_with_teacher(ds, tmp_path / "run").save(tmp_path / "student")
    with pytest.raises(ValueError, match=f"^{tmp_path / 'student'}: a teacher must be a cmvae run, found 'deccm'$"):
        load_teacher(tmp_path / "student")
    with pytest.raises(ValueError, match="a teacher must be a cmvae run, found 'deccm'"):
        prepare_teacher(build("deccm", FeatureSpec.of(ds), {}), ds, tmp_path / "again", tmp_path / "student")


def test_a_teacher_given_to_a_model_that_takes_none_is_refused(tiny_dir, tmp_path):
    ds = load_dataset(tiny_dir)
    (tmp_path / "teacher").mkdir()  # refused before the folder is read
    for name, overrides in (("cmvae", {}), ("deccm-noteacher", {}), ("deccm", {"teacher": False})):
        with pytest.raises(ValueError, match=f"^teacher_dir .*: model '{name.split('-')[0]}' with this config takes no "
                                             "teacher"):  # the library's argument, not bgmrec train's --teacher
            prepare_teacher(build(name, FeatureSpec.of(ds), overrides), ds, tmp_path / "run", tmp_path / "teacher")
    assert not (tmp_path / "run").exists()


def _fit_pair(folder, gamma: float):
    save_world(*simulate(world_config("tiny", n_videos=4000, gamma=gamma)), folder)
    ds = load_dataset(folder)
    spec = FeatureSpec.of(ds)
    opts = {"epochs": 12, "batch_size": 256}
    cmvae = build("cmvae", spec, opts).fit(SplitView(ds, "train"), SplitView(ds, "val"))
    deccm = build("deccm", spec, {**opts, "teacher": False}).fit(SplitView(ds, "train"), SplitView(ds, "val"))
    return ds, cmvae, deccm


def test_deconfounding_lowers_genre_exposure_gap_under_strong_confounding(tmp_path):
    ds, cmvae, deccm = _fit_pair(tmp_path / "strong", gamma=2.5)
    deccm.set_inference_mode("content")
    plain, deconfounded = evaluate(cmvae, ds, "test_unbiased"), evaluate(deccm, ds, "test_unbiased")
    tvd_cmvae, tvd_deccm = plain["bias"]["exposure_tvd@10"], deconfounded["bias"]["exposure_tvd@10"]
    assert tvd_deccm < 0.9 * tvd_cmvae, (tvd_deccm, tvd_cmvae)  # measured 0.102 against 0.127
    # by ranking by content, not by spreading its lists over genres at the cost of the right track
    r_plain, r_dec = plain["full"]["recall@10"], deconfounded["full"]["recall@10"]
    assert r_dec >= r_plain - 0.03, (r_dec, r_plain)
    # the taste path learned that uploaders pick their favourite genres: a taste concentrated on genre g
    # raises g above every other genre (t is identified only up to a constant per row, so compare within c)
    g = ds.n_genres
    fans = np.full((g, g), 0.1 / (g - 1), np.float32) + np.eye(g, dtype=np.float32) * (0.9 - 0.1 / (g - 1))
    with torch.no_grad():
        favourite = deccm.module.taste_logits(torch.from_numpy(fans)).argmax(1).numpy()
    assert (favourite == np.arange(g)).sum() >= g - 1, favourite


def test_without_confounding_deconfounded_and_plain_models_agree(tmp_path):
    ds, cmvae, deccm = _fit_pair(tmp_path / "none", gamma=0.0)
    for mode in ("backdoor", "content"):
        deccm.set_inference_mode(mode)
        r_plain = evaluate(cmvae, ds, "test")["full"]["recall@10"]
        r_dec = evaluate(deccm, ds, "test")["full"]["recall@10"]
        assert math.isclose(r_plain, r_dec, abs_tol=0.06), (mode, r_plain, r_dec)


def test_holdout_partitions_a_split_reproducibly(tiny_ds):
    rest, held = SplitView(tiny_ds, "pgc").holdout(0.1, seed=3)
    n = len(tiny_ds.splits["pgc"])
    both = np.concatenate([rest.row_index, held.row_index])
    assert len(held.rows) == round(0.1 * n) and np.array_equal(np.sort(both), np.arange(n))
    again = SplitView(tiny_ds, "pgc").holdout(0.1, seed=3)[1]
    assert np.array_equal(again.row_index, held.row_index)


def test_training_is_deterministic_with_several_threads(tiny_ds):
    """The taste path's batch logits have a backward free of parallel scatter-adds, so threads cannot reorder sums."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        states = [build("deccm", FeatureSpec.of(tiny_ds), {"teacher": False, "epochs": 1, "batch_size": 256,
                                                           "prior_samples": 64}).fit(SplitView(tiny_ds, "train"))
                  .module.state_dict() for _ in range(2)]
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_a_teacher_trained_on_few_professional_videos_is_warned_of(tiny_ds, tmp_path, monkeypatch):
    # an app's 12-clip dataset with 4 professional videos trained a teacher whose KL term was 1.4e5 against a
    # matching loss of 2.5, without a word
    import bgmrec.models.deccm as deccm

    model = build("deccm", FeatureSpec.of(tiny_ds), {"epochs": 1, "batch_size": 256, "prior_samples": 64})
    with warnings.catch_warnings():
        warnings.simplefilter("error", deccm.SmallTeacherSplitWarning)  # tiny's 600 are enough
        deccm.train_teacher(model, tiny_ds, tmp_path / "enough")
    monkeypatch.setattr(deccm, "MIN_TEACHER_VIDEOS", 1_000)
    with pytest.warns(deccm.SmallTeacherSplitWarning, match=r"only 600 professional music videos \(split 'pgc'; "
                      r"at least 1000 advised\): it early-stops on a holdout of 60, .* or set teacher=false$"):
        deccm.train_teacher(model, tiny_ds, tmp_path / "few")
