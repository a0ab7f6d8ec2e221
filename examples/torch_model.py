"""A PyTorch model for bgmrec written from scratch: what a :class:`~bgmrec.models.neural.TorchRecommender`
must give, in one file (docs/extending.md, "A PyTorch model", points here; bgmrec's suite runs the
model contract on it).

``bilinear-bpr`` embeds each side with one linear map and trains with BPR (Rendle et al., UAI 2009)
on the other rows of each batch as negatives: the score of a (video, track) pair is the inner product
of the two embeddings, and the loss is mean -log sigmoid(s(v, m+) - s(v, m-)) over the negatives.

Use it in a process with ``register_model("bilinear-bpr", BilinearBPR)``, or declare it in the entry-point
group ``bgmrec.models`` of a package as ``examples/plugin_model`` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bgmrec.models.neural import InputNorms, TorchRecommender
from bgmrec.train import Batch, TrainConfig


@dataclass
class BilinearBPRConfig(TrainConfig):  # TrainConfig: epochs, batch size, learning rate, early stopping, seed
    latent_dim: int = 32  # size of the shared embedding space
    # an in-batch softmax model would add ``temperature`` and ``track_prior: bool = True`` here to rank
    # with log Q(m) as bgmrec's InfoNCE models do (see TorchRecommender.prior_scale); BPR learns no log Q

    def __post_init__(self) -> None:
        super().__post_init__()  # the inherited fields' checks
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {self.latent_dim}")


class BilinearModule(nn.Module):
    """All the model's state (saved as its weights): the input standardisation and the two maps."""

    def __init__(self, cfg: BilinearBPRConfig, spec) -> None:
        super().__init__()
        self.norms = InputNorms(spec)  # required: the training loop fits it on the training rows
        self.video = nn.Linear(spec.video_visual + spec.video_text + 1, cfg.latent_dim)
        self.music = nn.Linear(spec.music, cfg.latent_dim)

    def encode_video(self, visual, text, text_mask):
        mask = text_mask.to(visual.dtype)[:, None]  # captions may be missing: zeroed and flagged
        return self.video(torch.cat([self.norms.visual(visual), self.norms.text(text) * mask, mask], dim=1))

    def encode_music(self, music):
        return self.music(self.norms.music(music))


class BilinearBPR(TorchRecommender):
    """Linear video and music embeddings trained with in-batch BPR (an example of the PyTorch contract)."""

    name = "bilinear-bpr"  # what --model and the saved config.json call it
    config_class = BilinearBPRConfig

    def build_module(self) -> nn.Module:
        return BilinearModule(self.config, self.spec)  # layers only: no data, no files

    def training_loss(self, batch: Batch, step: int, steps_per_epoch: int) -> tuple[torch.Tensor, dict]:
        v = self.module.encode_video(batch.visual, batch.text, batch.text_mask)
        scores = v @ self.module.encode_music(batch.music).T  # [B, B]: row i's positive on the diagonal
        margin = scores.diagonal()[:, None] - scores
        negative = ~batch.same_track  # rows sharing the positive track are not negatives
        loss = -(nn.functional.logsigmoid(margin) * negative).sum() / negative.sum().clamp(min=1)
        return loss, {"loss": loss.item()}

    def video_embedding(self, visual, text, text_mask, confounder):
        return self.module.encode_video(visual, text, text_mask)

    def music_embedding(self, music, genre):
        return self.module.encode_music(music)
