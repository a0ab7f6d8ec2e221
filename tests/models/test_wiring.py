"""Wiring of the models that no other test pins down: which encoders the matching term trains, what the
cosine matching reads, DecCM's sample of P(c), the text standardiser's rows, and masked captions in the
non-neural baselines. Each expected value is computed here from its definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bgmrec.models.base import FeatureSpec, MusicCatalog, SplitView, VideoQuery
from bgmrec.models.registry import build
from bgmrec.train import FeatureTensors


def _distinct_track_rows(ds, n: int = 10) -> np.ndarray:
    """The first ``n`` training rows of pairwise different tracks (no row is another's false negative)."""
    rows = np.asarray(ds.splits["train"])
    _, first = np.unique(rows[:, 1], return_index=True)
    return rows[np.sort(first)[:n]]


def _small_cmvae(ds, **overrides):
    torch.manual_seed(0)
    model = build("cmvae", FeatureSpec.of(ds), {"hidden": "16", "latent_dim": 4, "dropout": 0.0, **overrides})
    model.module.eval()
    return model


# ---- CMVAE: the matching term ------------------------------------------------------------------------------


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_matching_term_alone_trains_both_the_music_and_the_video_encoders(tiny_ds, similarity):
    # guards against music (or video) posterior means detached in the matching term: that encoder would learn nothing
    model = _small_cmvae(tiny_ds, recon_weight=0.0, kl_weight=0.0, similarity=similarity)
    feats, rows = FeatureTensors(tiny_ds), _distinct_track_rows(tiny_ds)
    model.prepare(feats, rows)
    model.module.zero_grad(set_to_none=True)
    loss, logs = model.training_loss(feats.batch(rows), step=100, steps_per_epoch=10)
    assert loss.item() == pytest.approx(logs["match"], rel=1e-6)  # nothing but the matching term
    loss.backward()
    for part in ("music_enc", "visual_enc", "text_enc"):
        params = dict(getattr(model.module, part).named_parameters())
        assert params
        for name, p in params.items():
            assert p.grad is not None and p.grad.abs().max().item() > 0, f"{part}.{name} gets no gradient"


def test_cosine_matching_term_is_infonce_on_cosines_of_posterior_means_by_hand(tiny_ds):
    # guards against the video (or music) means left unnormalised in training with similarity="cosine"
    tau = 0.3
    model = _small_cmvae(tiny_ds, similarity="cosine", temperature=tau)
    feats, rows = FeatureTensors(tiny_ds), _distinct_track_rows(tiny_ds)
    batch = feats.batch(rows)
    model.prepare(feats, rows)
    with torch.no_grad():
        _, logs = model.training_loss(batch, step=0, steps_per_epoch=10)
        mu_v = model.module.video_posterior(batch.visual, batch.text, batch.text_mask)[0].double().numpy()
        mu_m = model.module.music_posterior(batch.music)[0].double().numpy()
    # the untrained means are far from unit length: normalising them matters to the value
    assert np.abs(np.linalg.norm(mu_v, axis=1) - 1).max() > 0.05
    cos = (mu_v / np.linalg.norm(mu_v, axis=1, keepdims=True)) @ (mu_m / np.linalg.norm(mu_m, axis=1,
                                                                                         keepdims=True)).T
    logits = cos / tau
    b = len(rows)

    def ce(row: np.ndarray, target: int) -> float:
        return float(np.log(np.exp(row).sum()) - row[target])

    by_row = np.mean([ce(logits[i], i) for i in range(b)])
    by_col = np.mean([ce(logits[:, j], j) for j in range(b)])
    assert logs["match"] == pytest.approx(0.5 * (by_row + by_col), rel=1e-5)


# ---- DecCM: the backdoor's sample of the confounder ---------------------------------------------------------


def _deccm(ds, seed: int = 0):
    return build("deccm", FeatureSpec.of(ds), {"teacher": False, "prior_samples": 64, "hidden": "16",
                                               "latent_dim": 4, "epochs": 1, "batch_size": 256, "seed": seed})


def test_deccm_prior_c_holds_training_uploaders_tastes_drawn_by_the_seed(tiny_ds):
    # guards against P(c)'s samples filled with one uploader's taste (or anything but training uploaders' tastes)
    train = np.asarray(tiny_ds.splits["train"])
    model = _deccm(tiny_ds).fit(SplitView(tiny_ds, "train"))
    prior = model.module.prior_c.numpy()
    assert prior.shape == (64, tiny_ds.n_genres)
    tastes = np.asarray(tiny_ds.uploader_pref)[np.unique(train[:, 2])]  # every training uploader's taste
    for row in prior:
        assert (np.abs(tastes - row).max(axis=1) == 0).any(), row  # exactly some training uploader's
    distinct = np.unique(prior, axis=0)
    assert len(distinct) > 20  # 64 draws among ~300 uploaders: many different ones, not one repeated
    # drawn as the seed says: the same seed draws the same rows, another seed others
    again = _deccm(tiny_ds)
    again.prepare(FeatureTensors(tiny_ds), train)
    np.testing.assert_array_equal(again.module.prior_c.numpy(), prior)
    other = _deccm(tiny_ds, seed=1)
    other.prepare(FeatureTensors(tiny_ds), train)
    assert not np.array_equal(other.module.prior_c.numpy(), prior)


# ---- the input standardisation of the captions ---------------------------------------------------------------


def test_text_standardiser_is_fitted_on_captioned_training_videos_only(tiny_ds):
    # guards against the zeros stored for videos without a caption counted in the text mean and spread
    model = _small_cmvae(tiny_ds)
    train = np.asarray(tiny_ds.splits["train"])
    model.prepare(FeatureTensors(tiny_ds), train)
    videos = np.unique(train[:, 0])
    mask = np.asarray(tiny_ds.video_text_mask)[videos]
    assert 0 < (~mask).sum() < len(videos)  # some training videos have no caption
    text = np.asarray(tiny_ds.video_text, np.float64)[videos][mask]
    norm = model.module.norms.text
    np.testing.assert_allclose(norm.mean.numpy(), text.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(norm.std.numpy(), text.std(0), rtol=1e-4, atol=1e-5)
    visual = np.asarray(tiny_ds.video_visual, np.float64)[videos]  # the frames: every training video
    np.testing.assert_allclose(model.module.norms.visual.mean.numpy(), visual.mean(0), rtol=1e-4, atol=1e-5)


# ---- the non-neural baselines: a masked caption is not read ----------------------------------------------------


@pytest.mark.parametrize("name", ["random", "cca"])
def test_baseline_scores_ignore_the_text_of_a_video_without_caption(tiny_ds, name):
    # guards against masked-out captions no longer zeroed (the simulated worlds store zeros, hiding it)
    model = build(name, FeatureSpec.of(tiny_ds), {}).fit(SplitView(tiny_ds, "train"))
    videos = np.arange(12)
    q = VideoQuery.from_dataset(tiny_ds, videos)
    q.text_mask[:6] = False
    q.text[:6] = 0.0
    catalog = MusicCatalog.from_dataset(tiny_ds)
    zeros = model.score(q, catalog)
    q.text[:6] = np.random.default_rng(0).normal(3.0, 2.0, q.text[:6].shape).astype(np.float32)
    moved = model.score(q, catalog)
    np.testing.assert_array_equal(moved[:6], zeros[:6])
    q.text[6:] += 3.0  # a caption the video has is read
    assert not np.allclose(model.score(q, catalog)[6:], zeros[6:])
