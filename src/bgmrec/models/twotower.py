"""Two-tower baselines: an MLP per side into one normalised space, trained on in-batch negatives.

* ``twotower-hinge``: the VSE++ max-of-hinges on the hardest in-batch negatives (Faghri et al. 2018);
* ``twotower-infonce``: symmetric InfoNCE, CLIP style (Radford et al. 2021), ranking with the
  track prior log Q(m) as every in-batch softmax model here (:class:`~bgmrec.models.neural.TrackPrior`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bgmrec.models.base import check_bounds
from bgmrec.models.layers import hardest_negative_hinge, mlp, symmetric_info_nce
from bgmrec.models.neural import InputNorms, TorchRecommender, check_network
from bgmrec.train import Batch, TrainConfig


@dataclass
class TwoTowerConfig(TrainConfig):
    """The settings both two-tower baselines share: their towers."""

    latent_dim: int = 64  # size of the shared embedding space
    hidden: tuple[int, ...] = (512,)  # hidden widths of each tower (chosen on val of the small world)
    dropout: float = 0.2  # dropout in the towers

    def __post_init__(self) -> None:
        super().__post_init__()
        check_network(self)


@dataclass
class TwoTowerHingeConfig(TwoTowerConfig):
    """The settings of ``twotower-hinge``."""

    margin: float = 0.2  # hinge margin on cosine similarities

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bounds(self, margin=">= 0")


@dataclass
class TwoTowerInfoNCEConfig(TwoTowerConfig):
    """The settings of ``twotower-infonce``."""

    temperature: float = 0.1  # InfoNCE temperature (logits = cosine / temperature)
    track_prior: bool = True  # add temperature * log Q(m) to scores (InfoNCE learns log P(m|v) - log Q(m))

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bounds(self, temperature="> 0")


class TwoTowerModule(nn.Module):
    """The two towers: an MLP from the standardised video features (frames, caption zeroed when there is none,
    and a has-caption flag) and one from the music features, each to a unit ``latent_dim`` embedding."""

    def __init__(self, cfg: TwoTowerConfig, spec) -> None:
        super().__init__()
        self.norms = InputNorms(spec)
        self.video = mlp(spec.video_visual + spec.video_text + 1, cfg.hidden, cfg.latent_dim, cfg.dropout)
        self.music = mlp(spec.music, cfg.hidden, cfg.latent_dim, cfg.dropout)

    def encode_video(self, visual, text, text_mask):
        """[B, latent] unit vectors: the video tower over the frames, the caption (zero where ``text_mask`` is
        False) and the mask itself."""
        m = text_mask.to(visual.dtype)[:, None]
        x = torch.cat([self.norms.visual(visual), self.norms.text(text) * m, m], dim=1)
        return nn.functional.normalize(self.video(x), dim=-1)

    def encode_music(self, music):
        """[B, latent] unit vectors: the music tower."""
        return nn.functional.normalize(self.music(self.norms.music(music)), dim=-1)


class TwoTower(TorchRecommender):
    """Two MLP towers into one normalised space; a subclass gives the loss (``training_loss``, on
    :meth:`similarity`) and its ``config_class`` (a :class:`TwoTowerConfig`)."""

    def build_module(self) -> nn.Module:
        return TwoTowerModule(self.config, self.spec)

    def similarity(self, batch: Batch) -> torch.Tensor:
        """[B, B] cosine similarity of each batch video (rows) with each batch track (columns); the diagonal
        holds the uploads' own pairs."""
        v = self.module.encode_video(batch.visual, batch.text, batch.text_mask)
        m = self.module.encode_music(batch.music)
        return v @ m.T

    def video_embedding(self, visual, text, text_mask, confounder):
        return self.module.encode_video(visual, text, text_mask)

    def music_embedding(self, music, genre):
        return self.module.encode_music(music)


class TwoTowerHinge(TwoTower):
    """Two towers trained with the hardest-negative hinge of VSE++ (Faghri et al., "VSE++: Improving
    Visual-Semantic Embeddings with Hard Negatives", BMVC 2018)."""

    name = "twotower-hinge"
    config_class = TwoTowerHingeConfig

    def training_loss(self, batch, step, steps_per_epoch):
        loss = hardest_negative_hinge(self.similarity(batch), self.config.margin, batch.same_track)
        return loss, {"loss": loss.item()}


class TwoTowerInfoNCE(TwoTower):
    """Two towers trained with the symmetric InfoNCE of CLIP (Radford et al., "Learning Transferable Visual
    Models From Natural Language Supervision", ICML 2021)."""

    name = "twotower-infonce"
    config_class = TwoTowerInfoNCEConfig

    def training_loss(self, batch, step, steps_per_epoch):
        loss = symmetric_info_nce(self.similarity(batch) / self.config.temperature, batch.same_track)
        return loss, {"loss": loss.item()}
