"""The track prior log Q(m): training shares by hand, exact for known tracks, predicted for the others,
one column of the inner product, and what it is for (in-batch softmax learns log P(m | v) - log Q(m))."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from bgmrec.models.base import FeatureSpec, MusicCatalog, SplitView, VideoQuery
from bgmrec.models.cmvae import CMVAEConfig
from bgmrec.models.layers import symmetric_info_nce
from bgmrec.models.neural import TrackPrior
from bgmrec.models.registry import build
from unfitted import as_fitted

MUSIC = np.arange(12, dtype=np.float32).reshape(4, 3)  # 4 tracks, 3 features


def _prior(tracks=(0, 0, 1, 3, 0, 1)) -> TrackPrior:
    prior = TrackPrior()
    prior.set_shares(np.array(tracks), MUSIC)
    return prior


def test_shares_by_hand():
    prior = _prior()  # counts 3, 2, 0, 1 of 6
    found, log_share = prior.exact(MUSIC)
    assert found.tolist() == [True, True, False, True]
    assert log_share[[0, 1, 3]] == pytest.approx(np.log([3 / 6, 2 / 6, 1 / 6]))
    assert prior.y_mean.item() == pytest.approx(np.log([3 / 6, 2 / 6, 1 / 6]).mean())


def test_training_tracks_are_recognised_by_their_features_in_any_catalogue():
    prior = _prior()
    emb, genre = np.zeros((4, 2)), np.zeros(4, np.int64)
    mean = prior.y_mean.item()
    for catalog in (MusicCatalog(MUSIC, genre, np.arange(4)), MusicCatalog(MUSIC, genre),  # with or without index
                    MusicCatalog(MUSIC.astype(np.float64), genre)):  # float64 copies of the same tracks
        log_q = prior.log_q(catalog, emb, 1)
        assert log_q[[0, 1, 3]] == pytest.approx(np.log([3 / 6, 2 / 6, 1 / 6]))
        assert log_q[2] == pytest.approx(mean)  # in the catalogue but never chosen in training
    shuffled = MUSIC[::-1].copy()  # other order: rows 3, 2, 1, 0
    expected = [np.log(1 / 6), mean, np.log(2 / 6), np.log(3 / 6)]
    assert prior.log_q(MusicCatalog(shuffled, genre), emb, 1) == pytest.approx(expected)
    reversed_features = MUSIC[:, ::-1].copy()  # same sums, other tracks
    assert prior.log_q(MusicCatalog(reversed_features, genre), emb, 1) == pytest.approx(np.full(4, mean))


def test_regression_predicts_a_linear_log_share():
    rng = np.random.default_rng(0)
    n, d = 400, 3
    music = rng.normal(size=(n, 5)).astype(np.float32)
    emb = rng.normal(size=(n, d))
    share = np.exp(emb @ np.array([0.5, -1.0, 0.25]))
    counts = rng.multinomial(2_000_000, share / share.sum())
    counts[-50:] = 0  # these never appear in training
    prior = TrackPrior()
    prior.set_shares(np.repeat(np.arange(n), counts), music)
    genre = np.zeros(n, np.int64)
    prior.fit_regression(music, emb, genre, 1)
    pred = prior.log_q(MusicCatalog(music, genre), emb, 1)
    err = (pred - np.log(share))[-50:]  # log Q of the unseen tracks, up to the normalisation constant
    assert np.abs(err - err.mean()).max() < 0.05
    assert np.corrcoef(pred[-50:], np.log(share[-50:]))[0, 1] > 0.999


def test_a_genre_absent_from_training_still_gets_a_finite_prediction():
    rng = np.random.default_rng(0)
    music = rng.normal(size=(30, 4)).astype(np.float32)
    genre = np.repeat([0, 1, 2], 10)
    prior = TrackPrior()
    prior.set_shares(rng.integers(0, 20, size=200), music)  # genre 2 (tracks 20-29) never chosen
    prior.fit_regression(music, music.astype(np.float64), genre, 3)
    log_q = prior.log_q(MusicCatalog(music, genre), music, 3)
    assert np.isfinite(log_q).all()
    # its one-hot column never varies over the training tracks: the ridge gives it no weight, so its tracks are
    # predicted by the regression on the embedding and the other genres alone, worked out here by its definition
    assert prior.coef[-1] == 0
    found, log_share = prior.exact(music)
    assert found[:20].all() and not found[20:].any()
    x = np.hstack([music[:20].astype(np.float64), np.eye(2)[genre[:20]]])
    coef = np.linalg.solve((x - x.mean(0)).T @ (x - x.mean(0)) + prior.ridge * np.eye(x.shape[1]),
                           (x - x.mean(0)).T @ (log_share[:20] - log_share[:20].mean()))
    unseen = np.hstack([music[20:].astype(np.float64), np.zeros((10, 2))])
    np.testing.assert_allclose(log_q[20:], log_share[:20].mean() + (unseen - x.mean(0)) @ coef, rtol=1e-10)


def test_in_batch_infonce_learns_log_p_minus_log_q():
    """The reason for the prior: fit free logits f(v, m) by in-batch InfoNCE on pairs drawn from P(v, m);
    at the optimum f(v, m) - f(v, m') = [log P(m | v) - log Q(m)] - [log P(m' | v) - log Q(m')]."""
    rng = np.random.default_rng(0)
    n_v, n_m, b = 4, 30, 128
    p_m_given_v = rng.dirichlet(np.ones(n_m), size=n_v) * 0.5 + rng.dirichlet(np.ones(n_m) * 0.3) * 0.5
    q = p_m_given_v.mean(0)  # videos uniform
    cum = p_m_given_v.cumsum(1)
    f = torch.zeros(n_v, n_m, requires_grad=True)
    opt = torch.optim.Adam([f], lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 if step < 1500 else 0.1)
    for _ in range(3000):
        v = rng.integers(n_v, size=b)
        m = np.minimum((rng.random(b)[:, None] > cum[v]).sum(1), n_m - 1)
        vt, mt = torch.from_numpy(v), torch.from_numpy(m)
        loss = symmetric_info_nce(f[vt[:, None], mt[None, :]], mt[:, None] == mt[None, :])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()

    def centre(a):
        return a - a.mean(1, keepdims=True)

    learned = centre(f.detach().numpy())
    pmi, log_p = centre(np.log(p_m_given_v) - np.log(q)), centre(np.log(p_m_given_v))
    assert np.abs(learned - pmi).mean() < 0.1  # close to the PMI ...
    assert np.abs(learned - log_p).mean() > 3 * np.abs(learned - pmi).mean()  # ... not to log P(m | v)
    restored = centre(learned + np.log(q)[None, :])  # adding log Q back: log P(m | v) up to a constant
    assert np.abs(restored - log_p).mean() < 0.1


def test_score_is_similarity_plus_temperature_times_log_q(tiny_ds):
    spec = FeatureSpec.of(tiny_ds)
    model = build("cmvae", spec, {"epochs": 1, "hidden": "16", "latent_dim": 8})
    model.fit(SplitView(tiny_ds, "train"))
    catalog = MusicCatalog.from_dataset(tiny_ds)
    q = VideoQuery.from_dataset(tiny_ds, np.arange(6))
    tau = model.config.temperature
    with torch.no_grad():
        e_v = model.video_embedding(torch.from_numpy(q.visual), torch.from_numpy(q.text),
                                    torch.from_numpy(q.text_mask), None).numpy()
    e_m = model._music_embedding(catalog)
    rows = np.asarray(tiny_ds.splits["train"])[:, 1]
    counts = np.bincount(rows, minlength=tiny_ds.n_tracks)
    seen = counts > 0
    scores = model.score(q, catalog)
    log_q = (scores - e_v @ e_m.T) / tau
    assert np.ptp(log_q, axis=0).max() < 1e-3  # one value per track, the same for every video
    assert np.allclose(log_q[0, seen], np.log(counts[seen] / counts.sum()), atol=1e-3)
    assert np.isfinite(log_q).all()  # tracks never chosen in training get a prediction


def test_the_prior_is_an_option_and_needs_infonce(tiny_ds):
    spec = FeatureSpec.of(tiny_ds)
    with_prior = as_fitted(build("cmvae", spec, {"hidden": "16", "latent_dim": 8}))
    without = as_fitted(build("cmvae-noprior", spec, {"hidden": "16", "latent_dim": 8}))
    catalog = MusicCatalog.from_dataset(tiny_ds)
    assert with_prior.encode_music(catalog).shape[1] == 9 and without.encode_music(catalog).shape[1] == 8
    hinge = build("twotower-hinge", spec, {})
    assert hinge.prior_scale() is None and not hasattr(hinge.module, "track_prior")
    with pytest.raises(ValueError, match="track_prior"):
        CMVAEConfig(matching="hinge")
    assert CMVAEConfig(matching="hinge", track_prior=False).matching == "hinge"


def test_a_checkpoint_saved_without_the_prior_ranks_by_similarity(tiny_ds, tmp_path):
    from safetensors.numpy import load_file, save_file

    from bgmrec.models.base import load_model

    spec = FeatureSpec.of(tiny_ds)
    model = build("cmvae", spec, {"epochs": 1, "hidden": "16", "latent_dim": 8})
    model.fit(SplitView(tiny_ds, "train"))
    folder = model.save(tmp_path / "run")
    weights = load_file(str(folder / "weights.safetensors"))
    save_file({k: v for k, v in weights.items() if not k.startswith("track_prior.")},
              str(folder / "weights.safetensors"))  # as written before the track prior existed
    old = load_model(folder)
    catalog = MusicCatalog.from_dataset(tiny_ds)
    q = VideoQuery.from_dataset(tiny_ds, np.arange(6))
    plain = as_fitted(build("cmvae-noprior", spec, {"hidden": "16", "latent_dim": 8}))  # given the fitted weights:
    plain.module.load_state_dict({k: v for k, v in model.module.state_dict().items()
                                  if not k.startswith("track_prior.")})
    assert np.allclose(old.score(q, catalog), plain.score(q, catalog), atol=1e-5)


def test_a_checkpoint_whose_prior_arrays_disagree_is_refused_naming_them(tiny_ds, tmp_path):
    # a log_share one shorter than digest failed with an IndexError deep in numpy at the first ranking, a y_mean of
    # two values with a RuntimeError of torch, coef and x_mean of other lengths in a matmul error naming no file;
    # an unsorted digest was accepted and found the wrong tracks
    from safetensors.numpy import load_file, save_file

    from bgmrec.models.base import load_model

    model = build("cmvae", FeatureSpec.of(tiny_ds), {"epochs": 1, "hidden": "16", "latent_dim": 8})
    folder = model.fit(SplitView(tiny_ds, "train")).save(tmp_path / "run")
    weights = load_file(str(folder / "weights.safetensors"))
    n, w = len(weights["track_prior.digest"]), len(weights["track_prior.coef"])
    assert n > 2 and w > 2 and load_model(folder).fitted  # as saved: loads
    for key, damaged, words in (
            ("log_share", weights["track_prior.log_share"][:-1],
             rf"track_prior.log_share has shape \[{n - 1}\], track_prior.digest \[{n}\]: one log share per track hash"),
            ("digest", weights["track_prior.digest"][::-1].copy(), r"track_prior.digest is not sorted"),
            ("y_mean", np.zeros(2), r"track_prior.y_mean has shape \[2\]: one mean log share, or none"),
            ("coef", weights["track_prior.coef"][:-1],
             rf"track_prior.coef has shape \[{w - 1}\], track_prior.x_mean \[{w}\]: one regression weight per input")):
        save_file({**weights, f"track_prior.{key}": damaged}, str(folder / "weights.safetensors"))
        with pytest.raises(ValueError, match=rf"weights\.safetensors: {words}"):
            load_model(folder)
    # and a model whose prior disagrees is not saved (its check runs on save as on load)
    model.module.track_prior.y_mean = torch.zeros(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="track_prior.y_mean has shape"):
        model.save(tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_sorted_hashes_further_apart_than_int64_s_range_are_sorted():
    # np.diff of these two sorted hashes overflows (their gap passes 2**63) and read as unsorted: a model of two
    # training tracks was refused on save one time in four
    from bgmrec.models.base import ModelConfig
    from bgmrec.models.baselines import PopularityRecommender

    digest = np.array([-7860621194675835947, 3484575789291753508], np.int64)
    assert (np.diff(digest) < 0).all()  # the overflow the check avoided
    arrays = {"digest": digest, "log_share": np.log([0.5, 0.5]), "x_mean": np.zeros(0), "coef": np.zeros(0),
              "y_mean": np.zeros(1)}
    TrackPrior.check_arrays(arrays, "track_prior")
    spec = FeatureSpec(4, 2, 3, ("a", "b"))
    PopularityRecommender(ModelConfig(), spec).check_state_arrays({"counts": np.ones(2), "digest": digest})
    with pytest.raises(ValueError, match="digest is not sorted"):
        PopularityRecommender(ModelConfig(), spec).check_state_arrays({"counts": np.ones(2), "digest": digest[::-1]})


def test_popularity_recognises_its_training_tracks_in_a_catalogue_of_any_order(tiny_ds, tmp_path):
    # it took a track's count by catalogue position: served with the catalogue folder (extract-music's path order)
    # of a dataset listing tracks by id, or with a catalogue grown since, it ranked other tracks first, silently
    from safetensors.numpy import save_file

    from bgmrec.models.base import load_model

    model = build("popularity", FeatureSpec.of(tiny_ds)).fit(SplitView(tiny_ds, "train"))
    counts = np.bincount(np.asarray(tiny_ds.splits["train"])[:, 1], minlength=tiny_ds.n_tracks)
    music = np.asarray(tiny_ds.music, np.float32)
    order = np.random.default_rng(0).permutation(tiny_ds.n_tracks)
    new = np.random.default_rng(1).standard_normal((1, music.shape[1])).astype(np.float32)
    served = MusicCatalog(np.vstack([music[order], new]), np.zeros(tiny_ds.n_tracks + 1, np.int64))
    np.testing.assert_allclose(model.encode_music(served)[:, 0], np.log1p(np.append(counts[order], 0)))
    # tracks of identical features cannot be told apart: they share their summed count
    twins = dataclasses.replace(tiny_ds, music=np.vstack([music[:1], music[1:]]).copy())
    twins.music[1] = twins.music[0]
    paired = build("popularity", FeatureSpec.of(tiny_ds)).fit(SplitView(twins, "train"))
    both = paired.encode_music(MusicCatalog(twins.music[:2], np.zeros(2, np.int64)))[:, 0]
    np.testing.assert_allclose(both, np.log1p([counts[0] + counts[1]] * 2))
    # a catalogue of none of its training tracks (extracted again otherwise): a tie, said so
    with pytest.warns(UserWarning, match=r"^popularity: none of the 3 tracks has the features of a training track"):
        model.encode_music(MusicCatalog(music[:3] + 1.0, np.zeros(3, np.int64)))
    # a run without the hashes (tracks known by dataset position, as the first runs were) is refused by name: a
    # model is never given dataset positions (reads_dataset_rows), which it was for these runs' sake
    assert not model.reads_dataset_rows
    folder = model.save(tmp_path / "run")
    save_file({"counts": counts.astype(np.float64)}, str(folder / "weights.safetensors"))
    with pytest.raises(ValueError, match=r"weights\.safetensors: missing keys digest: a run saved before 2026-11-23, "
                       r"which knew its tracks by dataset position only; train it again$"):
        load_model(folder)
    save_file({"counts": counts.astype(np.float64), "digest": model.digest[::-1].copy()},
              str(folder / "weights.safetensors"))  # unsorted: it found the wrong tracks
    with pytest.raises(ValueError, match=r"weights\.safetensors: digest is not sorted"):
        load_model(folder)
