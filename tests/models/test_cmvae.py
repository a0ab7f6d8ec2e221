"""CMVAE specifics: PoE weighting follows text quality, masks, ablations, explanations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bgmrec.data.simulate import simulate, world_config
from bgmrec.models.base import FeatureSpec, SplitView, VideoQuery
from bgmrec.models.cmvae import CMVAE, CMVAEConfig
from bgmrec.models.registry import build


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
    model = build("cmvae", FeatureSpec.of(tiny_ds), {})  # untrained weights are enough for the algebra
    q = VideoQuery.from_dataset(tiny_ds, np.arange(8))
    q.text_mask[:] = False
    shares = model.modality_shares(q)
    assert np.array_equal(shares, np.tile([1.0, 0.0], (8, 1)))
    emb = model.encode_videos(q)
    q.text = q.text + 100.0  # text of a masked video must not move its embedding
    assert np.allclose(model.encode_videos(q), emb)


def test_visual_only_ablation_ignores_text(tiny_ds):
    model = build("cmvae-visual", FeatureSpec.of(tiny_ds), {})
    assert not hasattr(model.module, "text_enc")
    q = VideoQuery.from_dataset(tiny_ds, np.arange(8))
    emb = model.encode_videos(q)
    q.text = -q.text
    assert np.allclose(model.encode_videos(q), emb)


def test_concat_ablation_has_one_video_encoder_and_no_shares(tiny_ds):
    model = build("cmvae-concat", FeatureSpec.of(tiny_ds), {})
    assert hasattr(model.module, "video_enc") and not hasattr(model.module, "visual_enc")
    with pytest.raises(ValueError, match="poe"):
        model.modality_shares(VideoQuery.from_dataset(tiny_ds, np.arange(3)))


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
