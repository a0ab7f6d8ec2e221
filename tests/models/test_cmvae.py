"""CMVAE specifics: PoE weighting follows text quality, masks, ablations, explanations; its objective and the
two-tower baselines' losses recomputed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bgmrec.data.simulate import simulate, world_config
from bgmrec.models.base import FeatureSpec, SplitView, VideoQuery
from bgmrec.models.cmvae import CMVAE, CMVAEConfig
from bgmrec.models.registry import build
from unfitted import as_fitted


def _trained(ds, **overrides) -> CMVAE:
    model = build("cmvae", FeatureSpec.of(ds), {"epochs": 6, "batch_size": 256, **overrides})
    return model.fit(SplitView(ds, "train"), SplitView(ds, "val"))


def _mean_text_share(model: CMVAE, ds) -> float:
    has_text = np.flatnonzero(np.asarray(ds.video_text_mask)[: 2000])
    shares = model.modality_shares(VideoQuery.from_dataset(ds, has_text))
    assert np.allclose(shares.sum(1), 1.0)
    return float(shares[:, 1].mean())


def test_text_expert_gets_less_precision_when_text_is_noise():
    clean, _ = simulate(world_config("tiny", text_noise=0.05, text_unrelated_share=0.0, visual_noise=1.5))
    noisy, _ = simulate(world_config("tiny", text_noise=4.0, text_unrelated_share=0.6, visual_noise=1.5))
    share_clean = _mean_text_share(_trained(clean), clean)
    share_noisy = _mean_text_share(_trained(noisy), noisy)
    assert share_noisy < share_clean - 0.05, (share_noisy, share_clean)


def test_video_without_text_uses_frames_only(tiny_ds):
    model = as_fitted(build("cmvae", FeatureSpec.of(tiny_ds), {}))  # untrained weights are enough for the algebra
    q = VideoQuery.from_dataset(tiny_ds, np.arange(8))
    q.text_mask[:] = False
    shares = model.modality_shares(q)
    assert np.array_equal(shares, np.tile([1.0, 0.0], (8, 1)))
    emb = model.encode_videos(q)
    q.text = q.text + 100.0  # text of a masked video must not move its embedding
    assert np.allclose(model.encode_videos(q), emb)


def test_visual_only_ablation_ignores_text(tiny_ds):
    model = as_fitted(build("cmvae-visual", FeatureSpec.of(tiny_ds), {}))
    assert not hasattr(model.module, "text_enc")
    q = VideoQuery.from_dataset(tiny_ds, np.arange(8))
    emb = model.encode_videos(q)
    q.text = -q.text
    assert np.allclose(model.encode_videos(q), emb)


def test_concat_ablation_has_one_video_encoder_and_no_shares(tiny_ds):
    model = as_fitted(build("cmvae-concat", FeatureSpec.of(tiny_ds), {}))
    assert hasattr(model.module, "video_enc") and not hasattr(model.module, "visual_enc")
    with pytest.raises(ValueError, match="poe"):
        model.modality_shares(VideoQuery.from_dataset(tiny_ds, np.arange(3)))


def test_a_subclass_fusing_by_its_own_video_posterior_reports_no_poe_shares(tiny_ds):
    """A researcher's fusion (here: the frames' posterior alone) inherits no product-of-experts shares."""
    from bgmrec.features.recommend import modality_shares
    from bgmrec.models.cmvae import CMVAEModule

    class OwnFusion(CMVAEModule):
        def video_posterior(self, visual, text, text_mask):
            return self.visual_enc(self.norms.visual(visual))

    class OwnFusionCMVAE(CMVAE):
        def build_module(self):
            return OwnFusion(self.config, self.spec)

    model = as_fitted(OwnFusionCMVAE(CMVAEConfig(), FeatureSpec.of(tiny_ds)))
    q = VideoQuery.from_dataset(tiny_ds, np.flatnonzero(np.asarray(tiny_ds.video_text_mask))[:3])
    with pytest.raises(ValueError, match="fuses by a video_posterior of its own: override modality_shares"):
        model.modality_shares(q)
    assert modality_shares(model, q) == [{"visual": None, "text": None}] * 3  # what recommend and serve report


def test_an_answer_s_shares_are_null_only_for_a_model_without_them_not_for_an_error(tiny_ds):
    """A model without shares (the base contract's default) answers null shares; any other error in a model's
    ``modality_shares`` is raised, not turned into null shares (it was: every ValueError, a wrong width among them)."""
    from bgmrec.features.recommend import modality_shares
    from bgmrec.models.base import NoModalityShares

    q = VideoQuery(np.array(tiny_ds.video_visual[:3]), np.array(tiny_ds.video_text[:3]), np.array([False, True, True]))
    popularity = as_fitted(build("popularity", FeatureSpec.of(tiny_ds), {}))
    with pytest.raises(NoModalityShares, match="'popularity' does not weigh the frames against the caption"):
        popularity.modality_shares(q)
    assert modality_shares(popularity, q) == [{"visual": 1.0, "text": 0.0}] + [{"visual": None, "text": None}] * 2

    class Broken(CMVAE):
        def modality_shares(self, q):
            raise ValueError("a bug of its own")

    with pytest.raises(ValueError, match="a bug of its own"):
        modality_shares(as_fitted(Broken(CMVAEConfig(), FeatureSpec.of(tiny_ds))), q)

def test_no_cross_generation_ablation_has_no_decoders_and_no_recon_term(tiny_ds):
    from bgmrec.train import FeatureTensors

    model = build("cmvae-nocrossgen", FeatureSpec.of(tiny_ds), {})
    assert not hasattr(model.module, "video_to_music")
    feats = FeatureTensors(tiny_ds)
    rows = np.asarray(tiny_ds.splits["train"])[:64]
    model.prepare(feats, rows)
    _, logs = model.training_loss(feats.batch(rows), step=0, steps_per_epoch=10)
    assert "recon" not in logs and "kl" in logs


def test_loss_terms_are_finite_and_cross_generation_logged(tiny_ds):
    from bgmrec.train import FeatureTensors

    model = build("cmvae", FeatureSpec.of(tiny_ds), {})
    feats = FeatureTensors(tiny_ds)
    rows = np.asarray(tiny_ds.splits["train"])[:64]
    model.prepare(feats, rows)
    loss, logs = model.training_loss(feats.batch(rows), step=0, steps_per_epoch=10)
    assert torch.isfinite(loss) and {"match", "kl", "recon"} <= set(logs)
    # at step 0 the KL weight is annealed to 0: the loss is the matching term plus the reconstruction
    assert loss.item() == pytest.approx(logs["match"] + logs["recon"], rel=1e-5)


@pytest.mark.parametrize("field,value", [("fusion", "sum"), ("matching", "bpr"), ("similarity", "l1")])
def test_config_rejects_unknown_choices(field, value):
    with pytest.raises(ValueError, match=field):
        CMVAEConfig(**{field: value})


# ---- the objective and the scores, recomputed from their definitions --------------------------------------


def _ce(logits: np.ndarray, keep: np.ndarray, target: int) -> float:
    """Cross-entropy of ``target`` over the entries of ``logits`` that ``keep`` leaves in."""
    row = logits[keep]
    return float(np.log(np.exp(row - row.max()).sum()) + row.max() - logits[target])


def _loss_batch(tiny_ds):
    """A training batch whose rows 0, 1 and 2 share one track (each other's false negatives), the others not."""
    from bgmrec.train import FeatureTensors

    rows = np.asarray(tiny_ds.splits["train"])
    track = np.bincount(rows[:, 1]).argmax()
    same = rows[rows[:, 1] == track][:3]
    others = rows[rows[:, 1] != track]
    _, first = np.unique(others[:, 1], return_index=True)
    rows = np.vstack([same, others[np.sort(first)[:9]]])
    assert len(rows) == 12 and (rows[:3, 1] == track).all() and len(np.unique(rows[3:, 1])) == 9
    feats = FeatureTensors(tiny_ds)
    return feats, rows, feats.batch(rows)


def _small(tiny_ds, name="cmvae", **overrides) -> CMVAE:
    torch.manual_seed(0)
    model = build(name, FeatureSpec.of(tiny_ds), {"hidden": "16", "latent_dim": 4, "dropout": 0.0, **overrides})
    model.module.eval()
    return model


def _posteriors_by_hand(model: CMVAE, batch):
    """The PoE of N(0, 1), the visual and the (masked) text expert, and the music posterior, in float64."""
    mod = model.module
    with torch.no_grad():
        mu_v, lv_v = (x.double() for x in mod.visual_enc(mod.norms.visual(batch.visual)))
        mu_t, lv_t = (x.double() for x in mod.text_enc(mod.norms.text(batch.text)))
        mu_m, lv_m = (x.double() for x in mod.music_enc(mod.norms.music(batch.music)))
    has_text = batch.text_mask.double()[:, None]
    prec_v, prec_t = torch.exp(-lv_v), has_text * torch.exp(-lv_t)
    precision = 1.0 + prec_v + prec_t  # the prior expert's precision is 1
    mu = (prec_v * mu_v + prec_t * mu_t) / precision  # the prior's mean is 0
    return (mu, -torch.log(precision)), (mu_m, lv_m), (prec_v, prec_t)


def test_video_posterior_is_the_product_of_prior_frames_and_text(tiny_ds):
    model = _small(tiny_ds)
    feats, rows, batch = _loss_batch(tiny_ds)
    batch.text_mask[1] = False  # one video without text: the product of the prior and the frames only
    model.prepare(feats, rows)
    (mu, lv), _, _ = _posteriors_by_hand(model, batch)
    with torch.no_grad():
        got_mu, got_lv = model.module.video_posterior(batch.visual, batch.text, batch.text_mask)
    torch.testing.assert_close(got_mu.double(), mu, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_lv.double(), lv, rtol=1e-5, atol=1e-6)


def test_modality_shares_are_each_expert_s_share_of_the_data_precision(tiny_ds):
    model = as_fitted(_small(tiny_ds))
    feats, rows, batch = _loss_batch(tiny_ds)
    model.prepare(feats, rows)
    q = VideoQuery.from_dataset(tiny_ds, rows[:, 0])
    q.text_mask[1] = False
    batch.text_mask[1] = False
    _, _, (prec_v, prec_t) = _posteriors_by_hand(model, batch)
    frames, text = prec_v.sum(1), prec_t.sum(1)
    want = torch.stack([frames, text], 1) / (frames + text)[:, None]
    np.testing.assert_allclose(model.modality_shares(q), want.numpy(), rtol=1e-5)
    assert np.array_equal(model.modality_shares(q)[1], [1.0, 0.0])


@pytest.mark.parametrize("matching", ["infonce", "hinge"])
def test_training_loss_is_the_weighted_sum_of_its_terms_by_hand(tiny_ds, matching):
    """Past the KL warm-up: match_weight * matching + kl_weight * KL / latent_dim + recon_weight * NLL per
    feature, each term recomputed here from its definition (float64, numpy loops for the matching term)."""
    extra = {"temperature": 0.25} if matching == "infonce" else {"margin": 0.3, "track_prior": False}
    model = _small(tiny_ds, matching=matching, match_weight=0.7, kl_weight=0.3, recon_weight=0.4,
                   kl_anneal_epochs=1.0, **extra)
    feats, rows, batch = _loss_batch(tiny_ds)
    model.prepare(feats, rows)
    torch.manual_seed(5)
    with torch.no_grad():
        loss, logs = model.training_loss(batch, step=10, steps_per_epoch=10)  # anneal weight 10 / 10 = 1
    torch.manual_seed(5)  # the same draws: video latent first, then music latent
    (mu_v, lv_v), (mu_m, lv_m), _ = _posteriors_by_hand(model, batch)
    eps_v, eps_m = torch.randn(mu_v.shape), torch.randn(mu_m.shape)

    # KL of each posterior to N(0, I), summed over dimensions, averaged over the batch and the 4 dimensions
    kl_v = 0.5 * (lv_v.exp() + mu_v**2 - 1 - lv_v).sum(1)
    kl_m = 0.5 * (lv_m.exp() + mu_m**2 - 1 - lv_m).sum(1)
    kl = ((kl_v + kl_m).mean() / 4).item()

    # cross-generation: a sample of the video latent -> music features, of the music latent -> frames
    mod, spec = model.module, model.spec
    with torch.no_grad():
        z_v = (mu_v + torch.exp(0.5 * lv_v) * eps_v).float()
        z_m = (mu_m + torch.exp(0.5 * lv_m) * eps_m).float()
        err_m = (mod.norms.music(batch.music) - mod.video_to_music(z_v)).double()
        err_v = (mod.norms.visual(batch.visual) - mod.music_to_visual(z_m)).double()
    recon = (0.5 * (err_m**2).sum(1) / spec.music + 0.5 * (err_v**2).sum(1) / spec.video_visual).mean().item()

    # matching on the dot products of posterior means; rows 0-2 share a track: not each other's negatives
    sim = (mu_v @ mu_m.T).numpy()
    track = rows[:, 1]
    b = len(rows)
    if matching == "infonce":
        lg = sim / 0.25
        keep = [track != track[i] for i in range(b)]
        for i in range(b):
            keep[i][i] = True
        by_row = np.mean([_ce(lg[i], keep[i], i) for i in range(b)])
        by_col = np.mean([_ce(lg[:, j], keep[j], j) for j in range(b)])
        match = 0.5 * (by_row + by_col)
    else:
        neg = track[:, None] != track[None, :]
        hardest_track = [max(sim[i, j] for j in range(b) if neg[i, j]) for i in range(b)]
        hardest_video = [max(sim[j, i] for j in range(b) if neg[j, i]) for i in range(b)]
        match = np.mean([max(0.0, 0.3 + hardest_track[i] - sim[i, i]) for i in range(b)]) + np.mean(
            [max(0.0, 0.3 + hardest_video[i] - sim[i, i]) for i in range(b)])
        assert match > 0.05  # an untrained model violates the margin: the term is not trivially 0
    assert logs["kl"] == pytest.approx(kl, rel=1e-4)
    assert logs["recon"] == pytest.approx(recon, rel=1e-4)
    assert logs["match"] == pytest.approx(match, rel=1e-4)
    assert loss.item() == pytest.approx(0.7 * match + 0.3 * kl + 0.4 * recon, rel=1e-4)
    # half-way through the warm-up the KL term weighs half as much (the same draws: the same reconstruction)
    torch.manual_seed(5)
    with torch.no_grad():
        half, _ = model.training_loss(batch, step=5, steps_per_epoch=10)
    assert half.item() == pytest.approx(0.7 * match + 0.3 * 0.5 * kl + 0.4 * recon, rel=1e-4)


def test_cosine_similarity_scores_unit_posterior_means(tiny_ds):
    for similarity in ("cosine", "dot"):
        model = as_fitted(_small(tiny_ds, similarity=similarity, track_prior=False))
        feats, rows, batch = _loss_batch(tiny_ds)
        model.prepare(feats, rows)
        (mu_v, _), (mu_m, _), _ = _posteriors_by_hand(model, batch)
        if similarity == "cosine":
            mu_v, mu_m = mu_v / mu_v.norm(dim=1, keepdim=True), mu_m / mu_m.norm(dim=1, keepdim=True)
        q = VideoQuery.from_dataset(tiny_ds, rows[:, 0])
        np.testing.assert_allclose(model.encode_videos(q), mu_v.numpy(), rtol=1e-4, atol=1e-6)
        from bgmrec.models.base import MusicCatalog

        music = model.encode_music(MusicCatalog.from_dataset(tiny_ds))[rows[:, 1]]
        np.testing.assert_allclose(music, mu_m.numpy(), rtol=1e-4, atol=1e-6)


def test_concat_ablation_ignores_the_text_of_a_video_without_text(tiny_ds):
    model = as_fitted(build("cmvae-concat", FeatureSpec.of(tiny_ds), {}))
    q = VideoQuery.from_dataset(tiny_ds, np.arange(8))
    q.text_mask[:] = False
    emb = model.encode_videos(q)
    q.text = q.text + 100.0
    np.testing.assert_allclose(model.encode_videos(q), emb, rtol=1e-6)


# ---- the two-tower baselines share these losses: their wiring, by hand -----------------------------------


def _towers_by_hand(model, batch):
    """Unit video and music tower outputs, the text (and its slot) zeroed for a video without text."""
    mod = model.module
    m = batch.text_mask.float()[:, None]
    with torch.no_grad():
        x = torch.cat([mod.norms.visual(batch.visual), mod.norms.text(batch.text) * m, m], 1)
        v, t = mod.video(x).double(), mod.music(mod.norms.music(batch.music)).double()
    return v / v.norm(dim=1, keepdim=True), t / t.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("name", ["twotower-infonce", "twotower-hinge"])
def test_two_tower_losses_by_hand(tiny_ds, name):
    extra = {"temperature": 0.2} if name == "twotower-infonce" else {"margin": 0.3}
    torch.manual_seed(0)
    model = build(name, FeatureSpec.of(tiny_ds), {"hidden": "16", "latent_dim": 4, "dropout": 0.0, **extra})
    model.module.eval()
    feats, rows, batch = _loss_batch(tiny_ds)
    model.prepare(feats, rows)
    with torch.no_grad():
        loss, _ = model.training_loss(batch, step=0, steps_per_epoch=10)
    v, t = _towers_by_hand(model, batch)
    sim, track, b = (v @ t.T).numpy(), rows[:, 1], len(rows)
    if name == "twotower-infonce":
        lg = sim / 0.2
        keep = [(track != track[i]) | (np.arange(b) == i) for i in range(b)]
        want = 0.5 * (np.mean([_ce(lg[i], keep[i], i) for i in range(b)])
                      + np.mean([_ce(lg[:, j], keep[j], j) for j in range(b)]))
    else:
        neg = track[:, None] != track[None, :]
        want = (np.mean([max(0.0, 0.3 + sim[i][neg[i]].max() - sim[i, i]) for i in range(b)])
                + np.mean([max(0.0, 0.3 + sim[:, i][neg[:, i]].max() - sim[i, i]) for i in range(b)]))
    assert loss.item() == pytest.approx(want, rel=1e-4)


def test_two_tower_embeddings_are_unit_and_ignore_absent_text(tiny_ds):
    from bgmrec.models.base import MusicCatalog

    model = as_fitted(build("twotower-hinge", FeatureSpec.of(tiny_ds), {"hidden": "16", "latent_dim": 4}))
    q = VideoQuery.from_dataset(tiny_ds, np.arange(8))
    q.text_mask[:4] = False
    emb = model.encode_videos(q)
    music = model.encode_music(MusicCatalog.from_dataset(tiny_ds))
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(music, axis=1), 1.0, rtol=1e-5)
    q.text = q.text + 100.0
    moved = model.encode_videos(q)
    np.testing.assert_allclose(moved[:4], emb[:4], rtol=1e-6)  # no text: its features are not read
    assert not np.allclose(moved[4:], emb[4:])


@pytest.mark.parametrize("name", ["cmvae", "twotower-hinge"])
def test_hinge_leaves_a_row_s_copies_out_of_its_negatives(tiny_ds, name):
    """A row repeated twice more, whose positive beats the rest of its row: with its copies left out that hinge
    is (0.3 + hardest other - positive)_+ < 0.3; counted as negatives they would make it 0.3 exactly."""
    extra = {"matching": "hinge", "track_prior": False} if name == "cmvae" else {}
    torch.manual_seed(0)
    model = build(name, FeatureSpec.of(tiny_ds), {"hidden": "16", "latent_dim": 4, "dropout": 0.0, "margin": 0.3,
                                                   **extra})
    model.module.eval()
    feats, rows, batch = _loss_batch(tiny_ds)
    model.prepare(feats, rows)
    train = np.asarray(tiny_ds.splits["train"])
    pool = train[np.sort(np.unique(train[:, 1], return_index=True)[1])[:40]]  # 40 distinct tracks

    def sims(r):
        b = feats.batch(r)
        with torch.no_grad():
            return (model.video_embedding(*_inputs(b)) @ model.music_embedding(b.music, None).T).double().numpy()

    s40 = sims(pool)
    off40 = s40 + np.diag(np.full(40, -np.inf))
    best = int((np.diag(s40) - np.sort(off40, axis=1)[:, 6]).argmax())  # a video ahead of 6 of the tracks
    rows = pool[[best, *np.argsort(off40[best])[1:7]]]  # with those 6 (argsort's first is itself, -inf)
    sim = sims(rows)
    off = sim + np.diag(np.full(len(rows), -np.inf))
    assert sim[0, 0] > off[0].max()  # row 0's positive beats the rest of its row
    i = 0
    dup = np.vstack([rows, rows[[i, i]]])
    with torch.no_grad():
        loss, logs = model.training_loss(feats.batch(dup), step=0, steps_per_epoch=10)
    loss = logs.get("match", loss.item())
    hinge = np.maximum(0.0, 0.3 + np.stack([off.max(1), off.max(0)]) - np.diag(sim))  # [2, 9] rows, columns
    per_row = np.concatenate([hinge, hinge[:, [i, i]]], axis=1)  # the copies are each other's positives only
    assert per_row[:, i].sum() < 0.6
    assert loss == pytest.approx(per_row.mean(1).sum(), rel=1e-4)


def _inputs(batch):
    return batch.visual, batch.text, batch.text_mask, None
