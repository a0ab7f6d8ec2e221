"""Plumbing shared by the PyTorch models: construction under a seed, input standardisation, the
track prior of in-batch softmax models, ``fit`` through the shared training loop, batched no-grad
encoding, state as safetensors arrays."""

from __future__ import annotations

import dataclasses
from abc import abstractmethod

import numpy as np
import torch
from torch import nn

from bgmrec.models.base import (
    FeatureSpec,
    MusicCatalog,
    Recommender,
    SplitView,
    VideoQuery,
    check_bounds,
    feature_digests,
    find_by_features,
)
from bgmrec.models.layers import Standardizer
from bgmrec.train import Batch, FeatureTensors, TrainConfig, fit_torch

MAX_LAYERS = 16  # hidden layers a network config may list (each up to 8,192 wide)


def check_network(config) -> None:
    """Range checks of the fields every network config has: ``latent_dim``, ``hidden`` (at most
    :data:`MAX_LAYERS` widths) and ``dropout``."""
    check_bounds(config, latent_dim="in [1, 4096]", hidden="in [1, 8192]", dropout="in [0, 1)")
    if len(config.hidden) > MAX_LAYERS:
        raise ValueError(f"hidden must list at most {MAX_LAYERS} widths (hidden layers), got {len(config.hidden)}")


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


def _largest(z: torch.Tensor) -> torch.Tensor:
    """[n] the largest |value| of each row of ``z`` [n, d] (0 for rows of no values)."""
    return z.abs().amax(dim=1) if z.shape[1] else torch.zeros(len(z))


class TrackPrior(nn.Module):
    """log Q(m), each track's share of the training interactions, added back to in-batch softmax scores.

    In-batch negatives are the other rows' positives, so they are drawn in proportion to Q; a model
    trained by in-batch InfoNCE therefore learns logit(v, m) = log P(m | v) - log Q(m) + const(v)
    (the sampling bias corrected by Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large
    Corpus Item Recommendations", RecSys 2019). Ranking by logit + log Q(m) ranks by log P(m | v).

    A track with the features of a training track (recognised by a hash of its float32 features, in
    any catalogue) gets that track's exact share. Any other track (new music) gets log Q predicted by a
    ridge regression from its embedding and genre, refitted on the training tracks after every epoch;
    before the first fit, the mean log share. An empty prior (a checkpoint from before the prior
    existed) gives every track the same value, i.e. ranks by the similarity alone. ``set_log_shares``
    gives the tracks any other log shares (DecCM's content mode uses one for shares by content alone).
    """

    ridge = 1.0  # L2 penalty of the regression (embeddings are O(1); the intercept is not penalised)

    def __init__(self) -> None:
        super().__init__()
        # every buffer is sized by the data (empty until ``set_shares`` or ``set_log_shares``)
        self.register_buffer("digest", torch.zeros(0, dtype=torch.int64))  # [S] sorted feature hashes of seen tracks
        self.register_buffer("log_share", torch.zeros(0, dtype=torch.float64))  # [S] their log training share
        self.register_buffer("x_mean", torch.zeros(0, dtype=torch.float64))  # [d + G] regression input mean
        self.register_buffer("coef", torch.zeros(0, dtype=torch.float64))  # [d + G] regression weights
        self.register_buffer("y_mean", torch.zeros(0, dtype=torch.float64))  # [1] mean log share of seen tracks

    def set_shares(self, tracks: np.ndarray, music: np.ndarray) -> None:
        """Count the training interactions' ``tracks`` (row indices of ``music``, the dataset's features)."""
        counts = np.bincount(tracks, minlength=len(music)).astype(np.float64)
        seen = np.flatnonzero(counts > 0)
        self.set_log_shares(music[seen], np.log(counts[seen] / counts.sum()))

    def set_log_shares(self, features: np.ndarray, log_share: np.ndarray) -> None:
        """Give the tracks of ``features`` [S, d] these log shares [S]; the regression is cleared until refitted."""
        digest = feature_digests(features)
        order = np.argsort(digest, kind="stable")
        log_share = np.asarray(log_share, np.float64)
        self.digest = torch.from_numpy(digest[order])
        self.log_share = torch.from_numpy(log_share[order])
        self.y_mean = torch.tensor([log_share.mean()], dtype=torch.float64)
        self.x_mean = torch.zeros(0, dtype=torch.float64)
        self.coef = torch.zeros(0, dtype=torch.float64)

    @staticmethod
    def check_arrays(arrays: dict[str, np.ndarray], name: str) -> None:
        """Raise ValueError, naming the arrays ``name.KEY``, unless the saved buffers ``arrays`` agree: one log share
        per hash, the hashes sorted (they are searched by bisection), at most one mean, and as many regression
        weights as input means (a damaged checkpoint failed deep inside numpy, or scored wrong)."""
        digest, log_share, x_mean, coef, y_mean = (np.asarray(arrays[k]) for k in
                                                   ("digest", "log_share", "x_mean", "coef", "y_mean"))
        if log_share.shape != digest.shape:
            raise ValueError(f"{name}.log_share has shape {list(log_share.shape)}, {name}.digest "
                             f"{list(digest.shape)}: one log share per track hash")
        if (digest[1:] < digest[:-1]).any():  # not np.diff: hashes 2**63 apart overflow it
            raise ValueError(f"{name}.digest is not sorted (the track hashes are searched by bisection)")
        if len(y_mean) > 1:
            raise ValueError(f"{name}.y_mean has shape {list(y_mean.shape)}: one mean log share, or none")
        if coef.shape != x_mean.shape:
            raise ValueError(f"{name}.coef has shape {list(coef.shape)}, {name}.x_mean {list(x_mean.shape)}: one "
                             "regression weight per input")

    def exact(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found [M] bool, log share [M], NaN where not found) of tracks given by their features."""
        found, pos = find_by_features(self.digest.numpy(), features)
        log_share = self.log_share.numpy()
        return found, np.where(found, log_share[pos] if len(log_share) else np.nan, np.nan)

    @staticmethod
    def _inputs(embedding: np.ndarray, genre: np.ndarray, n_genres: int) -> np.ndarray:
        return np.hstack([np.asarray(embedding, np.float64), np.eye(n_genres)[np.asarray(genre)]])

    def fit_regression(self, features: np.ndarray, embedding: np.ndarray, genre: np.ndarray, n_genres: int) -> None:
        """Ridge regression of log Q on [embedding, one-hot genre] over the tracks of ``features`` seen in training."""
        found, log_share = self.exact(features)
        x = self._inputs(embedding[found], genre[found], n_genres)
        y = log_share[found]
        x_mean = x.mean(0)
        xc = x - x_mean
        coef = np.linalg.solve(xc.T @ xc + self.ridge * np.eye(x.shape[1]), xc.T @ (y - y.mean()))
        self.x_mean, self.coef = torch.from_numpy(x_mean), torch.from_numpy(coef)

    def log_q(self, catalog: MusicCatalog, embedding: np.ndarray, n_genres: int) -> np.ndarray:
        """[M] log Q of each catalogue track: exact for training tracks, predicted for the others."""
        if not len(self.y_mean):
            return np.zeros(len(catalog))
        out = np.full(len(catalog), self.y_mean.item())
        if len(self.coef):
            out = out + (self._inputs(embedding, catalog.genre, n_genres) - self.x_mean.numpy()) @ self.coef.numpy()
        found, log_share = self.exact(catalog.features)
        out[found] = log_share[found]
        return out


class TorchRecommender(Recommender):
    """A recommender whose state is one ``nn.Module`` (``self.module``) trained by :func:`fit_torch`."""

    config_class = TrainConfig
    encode_chunk = 8192  # rows encoded per no-grad forward pass
    progress_label = ""  # what training's progress lines call the model ("" for its name; a teacher says whose)

    def __init__(self, config: TrainConfig, spec: FeatureSpec) -> None:
        super().__init__(config, spec)
        if getattr(config, "track_prior", False) and not isinstance(getattr(config, "temperature", None), int | float):
            raise ValueError(f"{type(self).__qualname__} ({self.name!r}): its config's track_prior=true adds "
                             "temperature * log Q(m) to the scores, so the config needs a numeric field temperature "
                             "(the InfoNCE temperature)")
        self.module = self.initial_module()
        self.reads_genre = self.prior_scale() is not None  # the prior's regression reads the genre

    @abstractmethod
    def build_module(self) -> nn.Module:
        """Build the layers from ``self.config`` and ``self.spec`` (must contain ``norms: InputNorms``). Called by
        :meth:`initial_module`, at construction and again by every ``fit``: the module must hold everything
        training starts from (nothing attached to it afterwards in ``__init__`` survives a fit)."""

    def initial_module(self) -> nn.Module:
        """The network as initialised for the config's seed, in eval mode: :meth:`build_module` under that seed,
        with the track prior (:class:`TrackPrior`, saved with the module) when the model ranks with one. The
        constructor builds it, and every ``fit`` starts again from it: a second fit of one model trains what a
        first fit trains (as scikit-learn's estimators), not the already trained network further."""
        with torch.random.fork_rng():
            torch.manual_seed(self.config.seed)
            module = self.build_module()
        if not isinstance(getattr(module, "norms", None), InputNorms):
            raise ValueError(f"{type(self).__qualname__} ({self.name!r}): build_module must return a module with "
                             "an attribute norms = bgmrec.models.neural.InputNorms(spec): the training loop fits the "
                             "input standardisation into it (see examples/torch_model.py)")
        if self.prior_scale() is not None:
            module.track_prior = TrackPrior()
        return module.eval()

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

    def prior_scale(self) -> float | None:
        """Weight of log Q(m) in the score (the InfoNCE temperature), or None to rank without :class:`TrackPrior`.

        Only models trained by in-batch softmax learn log P(m | v) - log Q(m): their configs have a
        ``track_prior`` field (and a ``temperature``), which switches it on.
        """
        return self.config.temperature if getattr(self.config, "track_prior", False) else None

    def param_groups(self) -> list[dict]:
        """Optimiser parameter groups (one group at the config's learning rate by default)."""
        return [{"params": [p for p in self.module.parameters() if p.requires_grad]}]

    def prepare(self, feats: FeatureTensors, rows: np.ndarray) -> None:
        """Called by the training loop before the first step: fit input standardisation, count track shares."""
        self.module.norms.fit(feats, rows)
        if self.prior_scale() is not None:
            self.module.track_prior.set_shares(rows[:, 1], feats.music.numpy())

    def end_epoch(self, feats: FeatureTensors) -> None:
        """Called by the training loop after each epoch, before validation: refit the track prior's regression."""
        if self.prior_scale() is not None:
            catalog = MusicCatalog(feats.music.numpy(), feats.genre.numpy())
            self.refit_priors(feats, catalog, self.prior_embedding(self._music_embedding(catalog)))

    def prior_embedding(self, e_m: np.ndarray) -> np.ndarray:
        """What the track prior's regression reads of the music encodings ``e_m`` (the regression adds the genre)."""
        return e_m

    def refit_priors(self, feats: FeatureTensors, catalog: MusicCatalog, e_m: np.ndarray) -> None:
        """Refit what depends on the music embeddings ``e_m`` (:meth:`prior_embedding`) of the dataset's ``catalog``."""
        self.module.track_prior.fit_regression(catalog.features, e_m, catalog.genre, len(self.spec.genres))

    def fit(self, train: SplitView, val: SplitView | None = None, progress: bool = False) -> TorchRecommender:
        """Train from the network's initialisation for the config's seed (:meth:`initial_module`; a model fitted
        before starts over) by :func:`~bgmrec.train.fit_torch`, early-stopped on ``val``."""
        self.check_fit_data(train, val)
        self.module = self.initial_module()
        self.history = fit_torch(self, train, val, progress)
        return self

    @property
    def learned_text(self) -> bool:
        """Whether the model learned from captions: False when none of its training videos had one (its text
        standardisation was fitted on none), and then every query's caption is left out, as if it had none:
        an encoder that never trained would add its initial weights' output to every score."""
        return self.module.norms.text.fitted_on_rows

    @property
    def reads_captions(self) -> bool:
        """Whether the model's scores read a clip's caption (what an application says of the captions it is given):
        :attr:`learned_text`."""
        return self.learned_text

    def without_unlearned_text(self, q: VideoQuery) -> VideoQuery:
        """``q`` as the model reads it: its captions left out when the model learned from none
        (:attr:`learned_text`)."""
        return q if self.learned_text else dataclasses.replace(q, text_mask=np.zeros(len(q.text_mask), bool))

    @torch.no_grad()
    def _encode_videos(self, q: VideoQuery) -> np.ndarray:
        self.module.eval()
        q = self.without_unlearned_text(q)

        def encode(rows: slice) -> torch.Tensor:
            part = q.subset(rows)
            conf = None if part.confounder is None else torch.from_numpy(np.asarray(part.confounder, np.float32))
            return self.video_embedding(torch.from_numpy(part.visual), torch.from_numpy(part.text),
                                        torch.from_numpy(np.asarray(part.text_mask, bool)), conf)

        e_v = self._in_chunks(len(q), encode, "video_embedding")
        scale = self.prior_scale()
        if scale is None:
            return e_v
        return np.hstack([e_v, np.full((len(e_v), 1), scale, e_v.dtype)])  # times the music side's log Q

    @torch.no_grad()
    def _music_embedding(self, c: MusicCatalog) -> np.ndarray:
        """The music side's layers on the catalogue, ``encode_chunk`` tracks per pass (memory bounded
        whatever the catalogue's size: the whole of 100,000 tracks in one pass took about 480 MB more)."""
        self.module.eval()
        return self._in_chunks(len(c.features), lambda rows: self.music_embedding(
            torch.from_numpy(np.array(c.features[rows], np.float32)),
            torch.from_numpy(np.array(c.genre[rows], np.int64))), "music_embedding")

    def _in_chunks(self, n: int, encode, method: str) -> np.ndarray:
        """``encode(rows)`` over ``n`` rows, ``encode_chunk`` rows (a slice) per call, concatenated; no rows
        still give [0, d]. A chunk that is not a tensor [rows, d] is refused naming ``method``, the model's
        encoding method ``encode`` calls (a numpy array failed in torch.cat)."""
        chunks = []
        for s in range(0, max(n, 1), self.encode_chunk):
            rows = slice(s, s + self.encode_chunk)
            chunk, expected = encode(rows), len(range(n)[rows])
            if not isinstance(chunk, torch.Tensor) or chunk.ndim != 2 or len(chunk) != expected:
                got = (f"a tensor of shape {list(chunk.shape)}" if isinstance(chunk, torch.Tensor)
                       else f"{type(chunk).__module__}.{type(chunk).__qualname__}".removeprefix("builtins."))
                raise ValueError(f"{type(self).__qualname__}.{method} must return a torch.Tensor [n, d], a row per "
                                 f"input row; given {expected} rows it returned {got}")
            chunks.append(chunk)
        return torch.cat(chunks).numpy()

    def video_distance_from_training(self, q: VideoQuery) -> np.ndarray:
        """The largest |standardised feature| of each video's frames and, where it has one, caption, by the input
        standardisation fitted on the training videos (:class:`InputNorms`)."""
        self.spec.check_videos(q, self.source)
        q = self.without_unlearned_text(q)
        norms = self.module.norms
        with torch.no_grad():
            visual, text = (_largest(norm(torch.from_numpy(np.array(x, np.float32))))
                            for norm, x in ((norms.visual, q.visual), (norms.text, q.text)))
        text = torch.where(torch.from_numpy(np.asarray(q.text_mask, bool)), text, torch.zeros(()))
        return torch.maximum(visual, text).numpy().astype(np.float64)

    def music_distance_from_training(self, c: MusicCatalog) -> np.ndarray:
        """The largest |standardised feature| of each track, by the input standardisation fitted on the
        training tracks (:class:`InputNorms`)."""
        self.spec.check_music(c, self.source)
        with torch.no_grad():
            z = self.module.norms.music(torch.from_numpy(np.array(c.features, np.float32)))  # a copy: writable
        return z.abs().amax(dim=1).numpy().astype(np.float64) if len(z) else np.zeros(0)

    def _encode_music(self, c: MusicCatalog) -> np.ndarray:
        e_m = self._music_embedding(c)
        if self.prior_scale() is None:
            return e_m
        with np.errstate(over="ignore", invalid="ignore"):  # a weight past float32's range: refused by row, by name
            log_q = self._track_log_q(c, self.prior_embedding(e_m))[:, None].astype(e_m.dtype)
        return np.hstack([e_m, log_q])

    def _track_log_q(self, c: MusicCatalog, e_m: np.ndarray) -> np.ndarray:
        """[M] the log Q column of the catalogue's music encodings (``e_m``: their :meth:`prior_embedding`)."""
        return self.module.track_prior.log_q(c, e_m, len(self.spec.genres))

    def state_arrays(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in self.module.state_dict().items()}

    def _with_missing_priors(self, arrays: dict) -> dict:
        """``arrays`` plus the empty state of each :class:`TrackPrior` they lack (saved before it existed)."""
        out = dict(arrays)
        for name, sub in self.module.named_modules():
            if isinstance(sub, TrackPrior) and not any(k.startswith(name + ".") for k in arrays):
                out.update({f"{name}.{k}": v for k, v in sub.state_dict().items()})
        return out

    def check_state_arrays(self, arrays: dict) -> None:
        arrays = self._with_missing_priors(arrays)
        super().check_state_arrays(arrays)
        for name, sub in self.module.named_modules():
            if isinstance(sub, TrackPrior):
                TrackPrior.check_arrays({k: arrays[f"{name}.{k}"] for k in sub.state_dict()}, name)

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        tensors = self._with_missing_priors({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})
        for name, buf in self.module.named_buffers():  # buffers registered empty are sized by the data
            if name in tensors and buf.numel() == 0:
                owner, _, attr = name.rpartition(".")
                setattr(self.module.get_submodule(owner), attr, torch.zeros_like(tensors[name]))
        self.module.load_state_dict(tensors)
        self.module.eval()
