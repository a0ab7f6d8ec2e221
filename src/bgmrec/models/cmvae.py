"""CMVAE: the cross-modal variational auto-encoder of Yi, Zhu, Xie and Chen, "Cross-modal Variational
Auto-encoder for Content-based Micro-video Background Music Recommendation" (arXiv 2107.07268, IEEE TMM).

* Gaussian encoders q(z | x) for the video's frames, the video's text and the music.
* The video posterior is the product of the visual expert, the text expert and a standard-normal
  prior expert (precisions add; the mean is precision-weighted), with the text expert masked out
  for videos without text -- so the noisier modality gets less weight.
* Cross-generation: a sample of the video latent reconstructs the music features, a sample of the
  music latent reconstructs the video's visual features (Gaussian likelihood on standardised
  features, linear output layers).
* KL of each posterior to N(0, I) in closed form, linearly annealed.
* A matching term on the posterior means (InfoNCE or the hardest-negative hinge), minimised when
  positives outscore negatives.

Inference ranks tracks by the inner product of posterior means (cosine optional), plus, for
InfoNCE training, the temperature times log Q(m), the track's training share (:class:`TrackPrior`:
in-batch softmax learns log P(m | v) - log Q(m), so this ranks by log P(m | v); ``track_prior=False``
ranks by the similarity alone, as the paper does). Defaults were
chosen on the validation split of the ``small`` world (seed 0), never on test. Ablations: ``fusion="visual"`` (no PoE),
``fusion="concat"`` (one encoder on concatenated features), ``cross_generation=False``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bgmrec.models.base import NoModalityShares, VideoQuery, check_bounds
from bgmrec.models.layers import (
    GaussianEncoder,
    gaussian_nll,
    hardest_negative_hinge,
    kl_standard_normal,
    linear_anneal,
    mlp,
    product_of_experts,
    reparameterize,
    symmetric_info_nce,
)
from bgmrec.models.neural import InputNorms, TorchRecommender, check_network
from bgmrec.train import Batch, TrainConfig

FUSIONS = ("poe", "concat", "visual")
MATCHINGS = ("infonce", "hinge")
SIMILARITIES = ("cosine", "dot")


@dataclass
class CMVAEConfig(TrainConfig):
    """The settings of a CMVAE (``bgmrec models cmvae`` lists them): network, loss weights, inference."""

    latent_dim: int = 64  # size of the shared Gaussian latent space
    hidden: tuple[int, ...] = (512,)  # hidden widths of every encoder and decoder
    dropout: float = 0.2  # dropout in encoders and decoders
    fusion: str = "poe"  # video-side fusion: "poe" (product of experts), "concat", "visual" (frames only)
    cross_generation: bool = True  # video latent -> music features and music latent -> visual features
    recon_weight: float = 1.0  # weight of the cross-generation NLL (per feature, averaged)
    kl_weight: float = 0.5  # weight of the KL terms (per latent dimension, averaged)
    kl_anneal_epochs: float = 3.0  # epochs over which the KL weight rises linearly from 0
    matching: str = "infonce"  # matching term on posterior means: "infonce" or "hinge"
    match_weight: float = 1.0  # weight of the matching term
    similarity: str = "dot"  # score of posterior means: "dot" (keeps the latent norm) or "cosine"
    temperature: float = 0.5  # InfoNCE temperature: logits = similarity / temperature
    margin: float = 0.2  # hinge margin on similarities
    track_prior: bool = True  # add temperature * log Q(m) to scores (InfoNCE learns log P(m|v) - log Q(m))

    def __post_init__(self) -> None:
        super().__post_init__()
        check_network(self)
        check_bounds(self, recon_weight=">= 0", kl_weight=">= 0", kl_anneal_epochs=">= 0", match_weight=">= 0",
                     temperature="> 0", margin=">= 0")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {self.similarity!r}")
        if self.matching not in MATCHINGS:
            raise ValueError(f"matching must be one of {MATCHINGS}, got {self.matching!r}")
        if self.track_prior and self.matching != "infonce":
            raise ValueError("track_prior=true needs matching='infonce' (only its logits estimate log P - log Q); "
                             "set track_prior=false")


class CMVAEModule(nn.Module):
    """The layers of CMVAE; also the backbone of DecCM's student and teacher."""

    def __init__(self, cfg: CMVAEConfig, spec) -> None:
        super().__init__()
        self.fusion = cfg.fusion
        self.norms = InputNorms(spec)
        d, h, p = cfg.latent_dim, cfg.hidden, cfg.dropout
        if cfg.fusion == "concat":
            self.video_enc = GaussianEncoder(spec.video_visual + spec.video_text + 1, h, d, p)
        else:
            self.visual_enc = GaussianEncoder(spec.video_visual, h, d, p)
            if cfg.fusion == "poe":
                self.text_enc = GaussianEncoder(spec.video_text, h, d, p)
        self.music_enc = GaussianEncoder(spec.music, h, d, p)
        if cfg.cross_generation:
            self.video_to_music = mlp(d, h, spec.music, p)
            self.music_to_visual = mlp(d, h, spec.video_visual, p)

    def experts(self, visual, text, text_mask):
        """Means, log-variances [E, B, d] and mask [E, B] of the prior, visual and text experts."""
        mu_v, lv_v = self.visual_enc(self.norms.visual(visual))
        zeros = torch.zeros_like(mu_v)
        mus, lvs = [zeros, mu_v], [zeros, lv_v]
        mask = [torch.ones_like(text_mask), torch.ones_like(text_mask)]
        if self.fusion == "poe":
            mu_t, lv_t = self.text_enc(self.norms.text(text))
            mus.append(mu_t)
            lvs.append(lv_t)
            mask.append(text_mask)
        return torch.stack(mus), torch.stack(lvs), torch.stack(mask)

    def video_posterior(self, visual, text, text_mask):
        """(mu, logvar) of q(z | frames, caption), each [B, latent]: the product of the prior, frames and caption
        experts (a caption's expert only where ``text_mask``), or with ``fusion="concat"``
        one encoder of the concatenated, masked inputs."""
        if self.fusion == "concat":
            m = text_mask.to(visual.dtype)[:, None]
            return self.video_enc(torch.cat([self.norms.visual(visual), self.norms.text(text) * m, m], 1))
        return product_of_experts(*self.experts(visual, text, text_mask))

    def music_posterior(self, music):
        """(mu, logvar) of q(z | music features), each [B, latent]."""
        return self.music_enc(self.norms.music(music))


class CMVAE(TorchRecommender):
    """Cross-modal VAE with product-of-experts video fusion (Yi et al., arXiv 2107.07268)."""

    name = "cmvae"
    config_class = CMVAEConfig

    def build_module(self) -> nn.Module:
        return CMVAEModule(self.config, self.spec)

    def posteriors(self, batch: Batch):
        """(mu, logvar) of the video and of the music posteriors of a batch."""
        return (self.module.video_posterior(batch.visual, batch.text, batch.text_mask),
                self.module.music_posterior(batch.music))

    def vae_terms(self, batch: Batch, video_post, music_post, step: int, steps_per_epoch: int
                  ) -> tuple[torch.Tensor, dict]:
        """Cross-generation NLL + annealed KL: the generative part of the CMVAE objective."""
        cfg: CMVAEConfig = self.config
        (mu_v, lv_v), (mu_m, lv_m) = video_post, music_post
        kl = (kl_standard_normal(mu_v, lv_v) + kl_standard_normal(mu_m, lv_m)).mean() / cfg.latent_dim
        anneal = linear_anneal(step, int(cfg.kl_anneal_epochs * steps_per_epoch))
        loss = cfg.kl_weight * anneal * kl
        logs = {"kl": kl.item()}
        if cfg.cross_generation:
            z_v, z_m = reparameterize(mu_v, lv_v), reparameterize(mu_m, lv_m)
            nll_m = gaussian_nll(self.module.norms.music(batch.music), self.module.video_to_music(z_v))
            nll_v = gaussian_nll(self.module.norms.visual(batch.visual), self.module.music_to_visual(z_m))
            recon = (nll_m / self.spec.music + nll_v / self.spec.video_visual).mean()
            loss = loss + cfg.recon_weight * recon
            logs["recon"] = recon.item()
        return loss, logs

    def matching_loss(self, sim: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The matching term on a [B, B] matrix of similarities (:meth:`embed`'s: inner products, or cosines with
        ``similarity='cosine'``), or logits already including other terms (the track prior, the taste path)."""
        cfg: CMVAEConfig = self.config
        if cfg.matching == "hinge":
            return hardest_negative_hinge(sim, cfg.margin, batch.same_track)
        return symmetric_info_nce(sim / cfg.temperature, batch.same_track)

    def training_loss(self, batch: Batch, step: int, steps_per_epoch: int):
        video_post, music_post = self.posteriors(batch)
        sim = self.match_logits(self.embed(video_post[0]) @ self.embed(music_post[0]).T, batch)
        match = self.matching_loss(sim, batch)
        vae, logs = self.vae_terms(batch, video_post, music_post, step, steps_per_epoch)
        loss = self.config.match_weight * match + vae
        extra = self.extra_loss(batch, video_post, music_post, logs)
        if extra is not None:
            loss = loss + extra
        return loss, {"loss": loss.item(), "match": match.item(), **logs}

    def match_logits(self, sim: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The [B, B] matrix the matching term reads: the similarities (a subclass adds terms, as DecCM's taste)."""
        return sim

    def extra_loss(self, batch: Batch, video_post, music_post, logs: dict) -> torch.Tensor | None:
        """A term a subclass adds to the loss (logging it in ``logs``), e.g. DecCM's teacher KL; None here."""
        return None

    def embed(self, mu: torch.Tensor) -> torch.Tensor:
        """Posterior mean -> scoring embedding (unit-normalised for cosine similarity)."""
        return nn.functional.normalize(mu, dim=-1) if self.config.similarity == "cosine" else mu

    def video_embedding(self, visual, text, text_mask, confounder):
        return self.embed(self.module.video_posterior(visual, text, text_mask)[0])

    def music_embedding(self, music, genre):
        return self.embed(self.module.music_posterior(music)[0])

    @torch.no_grad()
    def modality_shares(self, q: VideoQuery) -> np.ndarray:
        """Share of the fused precision that came from the frames and from the caption, [n, 2].

        Per video: sum over latent dimensions of each expert's precision, divided by the sum over
        both data experts (the prior expert's constant share is left out). A video without text
        gets (1, 0). Only defined for PoE fusion; frames-only fusion gives (1, 0) everywhere. A module
        that fuses by a ``video_posterior`` of its own (a subclass's) has no such shares: NoModalityShares,
        unless the subclass overrides this method too. A model never fitted is refused (``check_fitted``).
        """
        self.check_fitted()
        self.spec.check_videos(q, self.source)
        if self.config.fusion == "concat":
            raise NoModalityShares("modality shares need fusion='poe' (concatenation mixes the modalities)")
        if type(self.module).video_posterior is not CMVAEModule.video_posterior:
            raise NoModalityShares(f"modality shares are the product of experts' precisions, but {self.name}'s "
                                   "module fuses by a video_posterior of its own: override modality_shares to report "
                                   "its shares")
        self.module.eval()
        if self.config.fusion == "visual":
            return np.tile([1.0, 0.0], (len(q), 1))
        q = self.without_unlearned_text(q)
        _, lvs, mask = self.module.experts(torch.from_numpy(q.visual), torch.from_numpy(q.text),
                                           torch.from_numpy(np.asarray(q.text_mask, bool)))
        prec = (torch.exp(-lvs[1:]) * mask[1:].unsqueeze(-1)).sum(-1)  # [2, n]
        return (prec / prec.sum(0, keepdim=True)).T.numpy().astype(np.float64)

