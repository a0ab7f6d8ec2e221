"""The track prior log Q(m): training shares by hand, exact for known tracks, predicted for the others,
one column of the inner product, and what it is for (in-batch softmax learns log P(m | v) - log Q(m))."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bgmrec.models.base import FeatureSpec, MusicCatalog, SplitView, VideoQuery
from bgmrec.models.cmvae import CMVAEConfig
from bgmrec.models.layers import symmetric_info_nce
from bgmrec.models.neural import TrackPrior
from bgmrec.models.registry import build

MUSIC = np.arange(12, dtype=np.float32).reshape(4, 3)  # 4 tracks, 3 features


def _prior(tracks=(0, 0, 1, 3, 0, 1)) -> TrackPrior:
    prior = TrackPrior()
    prior.set_shares(np.array(tracks), MUSIC)
    return prior


def test_shares_by_hand():
    prior = _prior()  # counts 3, 2, 0, 1 of 6
    expected = np.array([np.log(3 / 6), np.log(2 / 6), -np.inf, np.log(1 / 6)])
    assert np.allclose(prior.log_share.numpy(), expected)
    assert prior.y_mean.item() == pytest.approx(np.log([3 / 6, 2 / 6, 1 / 6]).mean())


def test_known_tracks_get_their_exact_share_others_the_mean_before_any_regression():
    prior = _prior()
    emb = np.zeros((4, 2))
    genre = np.zeros(4, np.int64)
    exact = prior.log_q(MusicCatalog(MUSIC, genre, np.arange(4)), emb, 1)
    assert exact[[0, 1, 3]] == pytest.approx(np.log([3 / 6, 2 / 6, 1 / 6]))
    assert exact[2] == pytest.approx(prior.y_mean.item())  # in the catalogue but never chosen in training
    no_index = prior.log_q(MusicCatalog(MUSIC, genre), emb, 1)
    assert no_index == pytest.approx(np.full(4, prior.y_mean.item()))
    moved = MUSIC.copy()
    moved[0] += 1.0  # same index, other features: another dataset's track 0, not ours
    other = prior.log_q(MusicCatalog(moved, genre, np.arange(4)), emb, 1)
    assert other[0] == pytest.approx(prior.y_mean.item()) and other[1] == pytest.approx(np.log(2 / 6))


def test_regression_predicts_a_linear_log_share():
    rng = np.random.default_rng(0)
    n, d = 400, 3
    music = rng.normal(size=(n, 5)).astype(np.float32)
    emb = rng.normal(size=(n, d))
    w = np.array([0.5, -1.0, 0.25])
    share = np.exp(emb @ w)
    counts = rng.multinomial(2_000_000, share / share.sum())
    counts[-50:] = 0  # these never appear in training
    prior = TrackPrior()
    prior.set_shares(np.repeat(np.arange(n), counts), music)
    genre = np.zeros(n, np.int64)
    prior.fit_regression(emb, genre, 1)
    pred = prior.log_q(MusicCatalog(music, genre), emb, 1)
    truth = np.log(share)  # log Q up to the normalisation constant
    centred = (pred - truth)[-50:] - (pred - truth)[-50:].mean()
    assert np.abs(centred).max() < 0.05  # the unseen tracks' log Q, up to the normalisation constant
    assert np.corrcoef(pred[-50:], truth[-50:])[0, 1] > 0.999


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
    plain = model.score(q, catalog)
    tau = model.config.temperature
    with torch.no_grad():
        e_v = model.video_embedding(torch.from_numpy(q.visual), torch.from_numpy(q.text),
                                    torch.from_numpy(q.text_mask), None).numpy()
    e_m = model._music_embedding(catalog)
    log_q = model.module.track_prior.log_q(catalog, e_m, len(spec.genres))
    assert np.allclose(plain, e_v @ e_m.T + tau * log_q[None, :], atol=1e-4)
    train_tracks = np.unique(np.asarray(tiny_ds.splits["train"])[:, 1])
    counts = np.bincount(np.asarray(tiny_ds.splits["train"])[:, 1], minlength=tiny_ds.n_tracks)
    assert np.allclose(log_q[train_tracks], np.log(counts[train_tracks] / counts.sum()))


def test_the_prior_is_an_option_and_needs_infonce(tiny_ds):
    spec = FeatureSpec.of(tiny_ds)
    with_prior = build("cmvae", spec, {"hidden": "16", "latent_dim": 8})
    without = build("cmvae-noprior", spec, {"hidden": "16", "latent_dim": 8})
    catalog = MusicCatalog.from_dataset(tiny_ds)
    assert with_prior.encode_music(catalog).shape[1] == 9 and without.encode_music(catalog).shape[1] == 8
    assert build("twotower-hinge", spec, {}).prior_scale() is None
    with pytest.raises(ValueError, match="track_prior"):
        CMVAEConfig(matching="hinge")
    assert CMVAEConfig(matching="hinge", track_prior=False).matching == "hinge"
