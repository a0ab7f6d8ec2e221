"""A PyTorch model's common mistakes are named by the method to fix, not by the torch error they caused further
on: a training_loss that returns a float, an unreduced vector or the loss alone, an embedding that is no tensor."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from bgmrec.models.base import MusicCatalog, SplitView, VideoQuery
from bgmrec.models.neural import InputNorms, TorchRecommender
from bgmrec.train import TrainConfig
from unfitted import as_fitted


@dataclass
class SmallConfig(TrainConfig):
    latent_dim: int = 4  # width of both encodings


class Bilinear(TorchRecommender):
    """Two linear maps trained by in-batch softmax: the model every mistake below is made in."""

    name = "bilinear-mistakes"
    config_class = SmallConfig

    def build_module(self) -> nn.Module:
        module = nn.Module()
        module.norms = InputNorms(self.spec)
        module.video = nn.Linear(self.spec.video_visual, self.config.latent_dim)
        module.music = nn.Linear(self.spec.music, self.config.latent_dim)
        return module

    def losses(self, batch) -> torch.Tensor:
        sim = self.module.video(batch.visual) @ self.module.music(batch.music).T
        return nn.functional.cross_entropy(sim, torch.arange(len(sim)), reduction="none")

    def training_loss(self, batch, step, steps_per_epoch):
        loss = self.losses(batch).mean()
        return loss, {"loss": loss.item(), "as_tensor": loss.detach()}

    def video_embedding(self, visual, text, text_mask, confounder):
        return self.module.video(visual)

    def music_embedding(self, music, genre):
        return self.module.music(music)


def _fit(cls: type[Bilinear], tiny_ds, tiny_spec) -> Bilinear:
    return cls(SmallConfig(epochs=1, batch_size=256), tiny_spec).fit(SplitView(tiny_ds, "train"))


def _subclass(method: str, body) -> type[Bilinear]:
    return type("Mistaken", (Bilinear,), {method: body})


@pytest.mark.parametrize("returns,got", [
    # was: TypeError isfinite(): argument 'input' must be Tensor, not float (train.py)
    (lambda self, b: (self.losses(b).mean().item(), {}), "a tuple (float, a dict of floats)"),
    # was: RuntimeError Boolean value of Tensor with more than one value is ambiguous
    (lambda self, b: (self.losses(b), {}), "a tuple (an unreduced tensor of shape [256], a dict of floats)"),
    # was: TypeError iteration over a 0-d tensor
    (lambda self, b: self.losses(b).mean(), "a scalar tensor"),
    (lambda self, b: (self.losses(b).mean().detach(), {}),
     "a tuple (a scalar tensor that requires no grad (detached from the model), a dict of floats)"),
    (lambda self, b: (self.losses(b).mean(), {"loss": "low"}), "a tuple (a scalar tensor, a dict whose 'loss' is str)"),
])
def test_a_training_loss_of_the_wrong_kind_is_named_before_the_first_step(tiny_ds, tiny_spec, returns, got):
    mistaken = _subclass("training_loss", lambda self, batch, step, steps: returns(self, batch))
    with pytest.raises(ValueError, match="^" + re.escape("Mistaken.training_loss must return (a scalar tensor, a dict "
                                                         f"of floats); got {got}") + "$"):
        _fit(mistaken, tiny_ds, tiny_spec)


def test_a_training_loss_as_the_contract_says_trains(tiny_ds, tiny_spec):
    model = _fit(Bilinear, tiny_ds, tiny_spec)
    assert model.fitted and set(model.history[0]) >= {"loss", "as_tensor"}


@pytest.mark.parametrize("method,returns,got", [
    # was: TypeError expected Tensor as element 0 in argument 0, but got numpy.ndarray (torch.cat)
    ("video_embedding", lambda e: e.detach().numpy(), "numpy.ndarray"),
    ("music_embedding", lambda e: e.detach().numpy(), "numpy.ndarray"),
    ("video_embedding", lambda e: e[0], "a tensor of shape [4]"),
])
def test_an_embedding_that_is_not_a_tensor_of_a_row_per_input_is_named(tiny_ds, tiny_spec, method, returns, got):
    real = getattr(Bilinear, method)
    model = as_fitted(_subclass(method, lambda self, *inputs: returns(real(self, *inputs)))(SmallConfig(), tiny_spec))
    videos, catalog = VideoQuery.from_dataset(tiny_ds, np.arange(5)), MusicCatalog.from_dataset(tiny_ds)
    rows = 5 if method == "video_embedding" else tiny_ds.n_tracks
    with pytest.raises(ValueError, match="^" + re.escape(f"Mistaken.{method} must return a torch.Tensor [n, d], a row "
                                                         f"per input row; given {rows} rows it returned {got}") + "$"):
        model.score(videos, catalog)
