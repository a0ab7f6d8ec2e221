"""Plumbing shared by the PyTorch models: construction under a seed, input standardisation,
``fit`` through the shared training loop, batched no-grad encoding, state as safetensors arrays."""

from __future__ import annotations

from abc import abstractmethod

import numpy as np
import torch
from torch import nn

from bgmrec.models.base import FeatureSpec, MusicCatalog, Recommender, SplitView, VideoQuery
from bgmrec.models.layers import Standardizer
from bgmrec.train import Batch, FeatureTensors, TrainConfig, fit_torch


class InputNorms(nn.Module):
    """Per-feature standardisation of the three inputs, fitted on the training interactions."""

    def __init__(self, spec: FeatureSpec) -> None:
        super().__init__()
        self.visual = Standardizer(spec.video_visual)
        self.text = Standardizer(spec.video_text)
        self.music = Standardizer(spec.music)

    def fit(self, feats: FeatureTensors, rows: np.ndarray) -> None:
        videos = torch.from_numpy(np.unique(rows[:, 0]))
        tracks = torch.from_numpy(np.unique(rows[:, 1]))
        self.visual.fit(feats.visual[videos])
        self.text.fit(feats.text[videos], feats.text_mask[videos].float())
        self.music.fit(feats.music[tracks])


class TorchRecommender(Recommender):
    """A recommender whose state is one ``nn.Module`` (``self.module``) trained by :func:`fit_torch`."""

    config_class = TrainConfig
    encode_chunk = 8192  # rows encoded per no-grad forward pass

    def __init__(self, config: TrainConfig, spec: FeatureSpec) -> None:
        super().__init__(config, spec)
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            self.module = self.build_module()
        self.module.eval()

    @abstractmethod
    def build_module(self) -> nn.Module:
        """Build the layers from ``self.config`` and ``self.spec`` (must contain ``norms: InputNorms``)."""

    @abstractmethod
    def training_loss(self, batch: Batch, step: int, steps_per_epoch: int) -> tuple[torch.Tensor, dict]:
        """The loss of one batch and a dict of its logged terms."""

    @abstractmethod
    def video_embedding(self, visual: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                        confounder: torch.Tensor | None) -> torch.Tensor:
        """Video encodings for scoring (inputs not yet standardised)."""

    @abstractmethod
    def music_embedding(self, music: torch.Tensor, genre: torch.Tensor) -> torch.Tensor:
        """Music encodings for scoring (inputs not yet standardised)."""

    def param_groups(self) -> list[dict]:
        """Optimiser parameter groups (one group at the config's learning rate by default)."""
        return [{"params": [p for p in self.module.parameters() if p.requires_grad]}]

    def prepare(self, feats: FeatureTensors, rows: np.ndarray) -> None:
        """Called by the training loop before the first step: fit input standardisation."""
        self.module.norms.fit(feats, rows)

    def fit(self, train: SplitView, val: SplitView | None = None, progress: bool = False) -> TorchRecommender:
        self.history = fit_torch(self, train, val, progress)
        return self

    @torch.no_grad()
    def _encode_videos(self, q: VideoQuery) -> np.ndarray:
        self.module.eval()
        out = []
        for s in range(0, max(len(q), 1), self.encode_chunk):  # an empty query still gives [0, d]
            part = q.subset(slice(s, s + self.encode_chunk))
            conf = None if part.confounder is None else torch.from_numpy(np.asarray(part.confounder, np.float32))
            out.append(self.video_embedding(torch.from_numpy(part.visual), torch.from_numpy(part.text),
                                            torch.from_numpy(np.asarray(part.text_mask, bool)), conf))
        return torch.cat(out).numpy()

    @torch.no_grad()
    def _encode_music(self, c: MusicCatalog) -> np.ndarray:
        self.module.eval()
        return self.music_embedding(torch.from_numpy(np.array(c.features, np.float32)),
                                    torch.from_numpy(np.array(c.genre, np.int64))).numpy()

    def state_arrays(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in self.module.state_dict().items()}

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})
        self.module.eval()
