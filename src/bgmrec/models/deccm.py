"""DecCM: deconfounded cross-modal matching of Yi and Chen, "Deconfounded Cross-modal Matching for
Content-based Micro-video Background Music Recommendation" (ACM TIST 15(3), 2024).

The uploader's genre-preference distribution c confounds uploads: it drives both the genre of the
chosen track and the choice. The student models P(Y | V, M, c) explicitly,

    logit(v, m, c) = sim(z_v, z_m) / tau + t(c)[genre(m)],   t(c) = W log c + b,

so the taste signal is absorbed by t instead of leaking into the content embeddings, and it is
fitted on the observed (v, m, c) of each upload (c blocks the backdoor path, which is what makes
P(Y | V, M, c) estimable from observational data). The backdoor adjustment
P(Y | do(V, M)) = sum_c P(Y | V, M, c) P(c) is then evaluated by Monte Carlo over confounder values
sampled from the training uploads, with P(m | v, c) normalised over the training catalogue:

    score(v, m) / tau = log sum_k P(c_k) exp(sim(v, m)/tau + t(c_k)[g(m)] + log Q(m) - log Z(v, c_k)),

where log Q(m), the track's training share, undoes what in-batch training removes (the track prior
of :class:`~bgmrec.models.neural.TrackPrior`): this is log P(m | do(v)).

Three inference modes: ``backdoor`` (the paper's estimand; keeps the population-average taste),
``content`` (the taste path switched off: the world of ``test_unbiased``), ``personalised``
(one uploader's c). Every mode changes the order of tracks through their genre -- unlike the
public code's constant vector added to every music embedding, which cannot change any ranking.

A teacher (the same CMVAE backbone trained on professional music videos, matched by content) is
kept as a frozen copy in eval mode; the student adds alpha * KL(q_student || q_teacher) for the
video and music posteriors (closed form, 0 for identical Gaussians -- the public code has the sign
wrong). The teacher's weights are not saved in the student; the student's config names its folder.

Beyond the paper, content mode also uses the teacher at inference. The teacher was fitted on the
professional videos, whose tracks were chosen by content alone, so its score (with its own track
prior) estimates log P(m | v) of exactly the process content mode targets, from data the student
never saw. Content mode ranks by the geometric mixture of the two estimates,

    score = (1 - w) * student content score + w * teacher score,   w = ``teacher_mix``,

one more block of the inner product, so exact search and FAISS serve it unchanged. The backdoor and
personalised modes keep the uploads' taste and popularity, which the teacher does not model: they
use the student alone.

The professional videos also correct the student's track prior in content mode. log Q(m), the
track's share of the uploads, carries the uploaders' popularity and taste, which content mode must
drop; the professionals' choices of each track estimate its share under choice by content alone,
but from few choices per track. :func:`content_log_share` combines the two by empirical Bayes: the
uploads' share times a per-genre and a shrunk per-track ratio of professional to expected choices.
The teacher's block of the mixture keeps the teacher's own prior (its professional shares).
"""

from __future__ import annotations

import copy
import math
import os
import types
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bgmrec.data.dataset import DatasetError
from bgmrec.models.base import MusicCatalog, Recommender, SplitView, VideoQuery, check_bounds, load_model
from bgmrec.models.cmvae import CMVAE, CMVAEConfig, CMVAEModule
from bgmrec.models.layers import backdoor_genre_offsets, kl_normal
from bgmrec.models.neural import TrackPrior
from bgmrec.train import Batch, FeatureTensors

MODES = ("backdoor", "content", "personalised")
TASTE_TRAINING = ("own", "batch")  # DecCMConfig.taste_training


class SettingWithoutEffectWarning(UserWarning):
    """A DecCM setting the training data leaves without effect (``content_share`` without professional videos
    choosing training tracks). The commands print it as one ``warning: ...`` line, as their own warnings."""


class SmallTeacherSplitWarning(UserWarning):
    """The professional split a teacher is trained on is too small to trust (fewer than
    :data:`MIN_TEACHER_VIDEOS` clips): it early-stops on a holdout of a few clips, and its posteriors can be so far
    from the student's that the KL term outweighs the matching loss."""


MIN_TEACHER_VIDEOS = 100  # below this, train_teacher warns (its holdout, a tenth, would be under 10 clips)
TEACHER_HOLDOUT = 0.1  # share of the professional videos the teacher early-stops on (train_teacher), seeded

# what fixes the scale of the latent space and of the scores (tau * log P), which teacher and student must share
TEACHER_MUST_SHARE = ("latent_dim", "similarity", "temperature", "matching", "track_prior")
_EPS = 1e-6


@dataclass
class DecCMConfig(CMVAEConfig):
    """The settings of a DecCM: CMVAE's, and the adjustment, the teacher and the inference mode's."""

    adjustment: bool = True  # model the taste path t(c)[genre] (False: the "no adjustment" ablation)
    teacher: bool = True  # distil from a frozen PGC teacher (False: the "no teacher" ablation)
    alpha: float = 0.5  # weight of KL(q_student || q_teacher), per latent dimension, video + music (0: none)
    taste_lr_scale: float = 20.0  # learning-rate multiplier of the taste path (few weights, O(1) values)
    taste_training: str = "own"  # the taste term of each training upload: "own" (its uploader's c, fitting
    #   P(Y | V, M, c)) or "batch" (log of the mean of exp t(c_k) over the batch's uploaders: the backdoor sum's
    #   Monte Carlo estimate in training, the same term for every row)
    prior_samples: int = 512  # confounder values sampled from training uploads to estimate P(c)
    reference_tracks: int = 4000  # at most this many training tracks normalise P(m | v, c)
    inference: str = "backdoor"  # default inference mode: "backdoor" | "content" | "personalised"
    teacher_mix: float = 0.5  # content mode: weight w of the teacher's score, (1 - w) the student's (0: student alone)
    content_share: bool = True  # content mode: track shares re-estimated on the professional videos' choices
    #   (needs teacher=true, track_prior=true and a professional split in the dataset; else the uploads' shares)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bounds(self, alpha=">= 0", taste_lr_scale=">= 0", prior_samples=">= 1", reference_tracks=">= 1",
                     teacher_mix="in [0, 1]")
        if self.inference not in MODES:
            raise ValueError(f"inference must be one of {MODES}, got {self.inference!r}")
        if self.taste_training not in TASTE_TRAINING:
            raise ValueError(f"taste_training must be one of {TASTE_TRAINING}, got {self.taste_training!r}")
        if self.adjustment and self.matching != "infonce":
            raise ValueError("DecCM's adjustment needs matching='infonce' (its logits must be log-probabilities)")


class DecCMModule(CMVAEModule):
    """CMVAE backbone + the taste path + what backdoor inference needs (saved as buffers)."""

    def __init__(self, cfg: DecCMConfig, spec) -> None:
        super().__init__(cfg, spec)
        g = len(spec.genres)
        self.taste = nn.Linear(g, g)
        nn.init.zeros_(self.taste.weight)
        nn.init.zeros_(self.taste.bias)
        self.register_buffer("prior_c", torch.full((cfg.prior_samples, g), 1.0 / g))
        self.register_buffer("ref_music", torch.zeros(0, spec.music))
        self.register_buffer("ref_genre", torch.zeros(0, dtype=torch.long))
        self.register_buffer("ref_log_share", torch.zeros(0))  # log Q(r): training share of each reference track

    def taste_logits(self, c: torch.Tensor) -> torch.Tensor:
        """t(c) [n, G]: how the uploader's taste shifts the logit of each genre."""
        return self.taste(torch.log(c + _EPS))


def _stay_in_eval(module: nn.Module, mode: bool = True) -> nn.Module:
    """``train`` of a frozen teacher's module (DecCM's own copy): it stays in eval mode."""
    return module


class DecCM(CMVAE):
    """Deconfounded cross-modal matching with backdoor adjustment and a PGC teacher (Yi & Chen, TIST 2024)."""

    name = "deccm"
    config_class = DecCMConfig
    inference_modes = MODES
    uses_teacher = True

    def __init__(self, config: DecCMConfig, spec) -> None:
        super().__init__(config, spec)
        self.inference_mode = config.inference if config.adjustment else "content"
        self.reads_genre = True  # the music side carries the genre one-hot
        self.teacher: CMVAE | None = None
        self.teacher_dir: str | None = None  # the teacher's folder (absolute while in memory)
        self._teacher_record: dict[str, str | None] = {}  # where config.json says the teacher is (save / load)
        self._teacher_sought: str | None = None  # where a loaded student looked for its teacher in vain
        self._teacher_unusable: str | None = None  # why a loaded student's teacher, found, was not attached
        self.professional_counts: np.ndarray | None = None  # [n_tracks] professional videos' choices (fit only)

    def build_module(self) -> nn.Module:
        return DecCMModule(self.config, self.spec)

    def initial_module(self) -> nn.Module:
        """As :meth:`TorchRecommender.initial_module`, with content mode's track prior (:func:`content_log_share`)
        when the student ranks content mode with the professional videos' shares."""
        module = super().initial_module()
        if self.prior_scale() is not None and self.config.teacher and self.config.content_share:
            module.content_prior = TrackPrior()
        return module

    def set_inference_mode(self, mode: str) -> None:
        if not self.config.adjustment and mode != "content":
            raise ValueError("a DecCM trained without adjustment has no taste path: only mode 'content'")
        super().set_inference_mode(mode)

    def modes_to_evaluate(self) -> list[str]:
        """Every mode, or none for the "no adjustment" ablation, which has content mode only."""
        return list(MODES) if self.config.adjustment else []

    # -- teacher --
    def set_teacher(self, teacher: CMVAE, folder: Path | None) -> None:
        """Attach a frozen copy of ``teacher``: no gradients, eval mode for good, not part of ``self.module``.

        The caller's ``teacher`` is left as it was (its parameters still take gradients, its module's
        ``train`` is its own); the student distils from, and mixes in, the teacher as it was when attached."""
        if not teacher.fitted:  # its KL term and content mode would read a network at its initialisation
            raise ValueError(f"the teacher ({teacher.name}) is not fitted: fit it on the professional videos first "
                             "(bgmrec.models.registry.prepare_teacher does)")
        differ = teacher_scale_mismatch(teacher.config, self.config)
        if differ:
            raise ValueError(differ)
        if (teacher.spec.video_visual, teacher.spec.video_text, teacher.spec.music) != (
                self.spec.video_visual, self.spec.video_text, self.spec.music):
            raise ValueError("the teacher was trained on other feature dimensions than the student")
        frozen = copy.deepcopy(teacher)
        for p in frozen.module.parameters():
            p.requires_grad_(False)
            p.grad = None
        frozen.module.eval()
        for part in frozen.module.modules():  # each submodule too: its own train() would leave eval mode
            part.train = types.MethodType(_stay_in_eval, part)  # (as open_clip's distillation)
        self.teacher = frozen
        self.teacher_dir = None if folder is None else str(Path(folder).resolve())

    # -- training --
    def param_groups(self) -> list[dict]:
        taste = list(self.module.taste.parameters())
        rest = [p for n, p in self.module.named_parameters() if not n.startswith("taste.")]
        return [{"params": rest}, {"params": taste, "lr": self.config.lr * self.config.taste_lr_scale,
                                   "weight_decay": 0.0}]

    def prepare(self, feats: FeatureTensors, rows: np.ndarray) -> None:
        super().prepare(feats, rows)
        cfg: DecCMConfig = self.config
        rng = np.random.default_rng(cfg.seed + 1)
        sample = rows[rng.choice(len(rows), cfg.prior_samples, replace=len(rows) < cfg.prior_samples)]
        self.module.prior_c.copy_(torch.from_numpy(feats.dataset.confounder(sample[:, 2])))
        tracks = np.unique(rows[:, 1])
        if len(tracks) > cfg.reference_tracks:
            tracks = np.sort(rng.choice(tracks, cfg.reference_tracks, replace=False))
        self.module.ref_music = feats.music[torch.from_numpy(tracks)].clone()
        self.module.ref_genre = feats.genre[torch.from_numpy(tracks)].clone()
        counts = np.bincount(rows[:, 1], minlength=feats.dataset.n_tracks)[tracks].astype(np.float64)
        self.module.ref_log_share = torch.from_numpy(np.log(counts / counts.sum())).float()
        if cfg.teacher and self.teacher is None:
            raise ValueError("DecCM with teacher=true needs a teacher before fit: attach one with set_teacher, or "
                             "let bgmrec.models.registry.prepare_teacher load or train one, or set teacher=false")
        self.professional_counts = None
        if hasattr(self.module, "content_prior"):
            ds = feats.dataset
            split = professional_split(ds)
            counts = None if split is None else np.bincount(np.asarray(ds.splits[split])[:, 1], minlength=ds.n_tracks)
            if counts is None or not counts[~np.asarray(ds.track_new)].any():
                warnings.warn("content_share=true has no effect: the dataset has no professional videos choosing "
                              "tracks of the training catalogue; content mode ranks with the uploads' shares",
                              SettingWithoutEffectWarning, stacklevel=2)
            else:
                self.professional_counts = counts

    def refit_priors(self, feats: FeatureTensors, catalog: MusicCatalog, e_m: np.ndarray) -> None:
        """Refit the track prior, then the content share from it and the professional videos' choices."""
        super().refit_priors(feats, catalog, e_m)
        if self.professional_counts is None:
            return
        known = np.flatnonzero(~np.asarray(feats.dataset.track_new))  # the training catalogue
        catalog, e_m = MusicCatalog(catalog.features[known], catalog.genre[known]), e_m[known]
        g = len(self.spec.genres)
        log_share = content_log_share(self.module.track_prior.log_q(catalog, e_m, g),
                                      self.professional_counts[known], catalog.genre, g)
        self.module.content_prior.set_log_shares(catalog.features, log_share)
        self.module.content_prior.fit_regression(catalog.features, e_m, catalog.genre, g)

    def match_logits(self, sim: torch.Tensor, batch: Batch) -> torch.Tensor:
        """logit_ij = sim_ij / tau + t(c_i)[g_j] (times tau, as the matching term divides by it): row i's uploader
        taste applied to column j's genre; the similarities alone without the adjustment. With
        ``taste_training="batch"``, t(c_i) is replaced by log (1/B) sum_k exp t(c_k): the batch's confounder
        values stand in for samples of P(c), the same term for every row."""
        if not self.config.adjustment:
            return sim
        genre = nn.functional.one_hot(batch.genre, len(self.spec.genres)).to(sim.dtype)
        taste = self.module.taste_logits(batch.confounder)  # [B, G]
        if self.config.taste_training == "batch":
            taste = torch.logsumexp(taste, 0, keepdim=True) - math.log(len(taste))  # [1, G]
        return sim + self.config.temperature * taste @ genre.T

    def extra_loss(self, batch: Batch, video_post, music_post, logs: dict) -> torch.Tensor | None:
        """alpha * KL(q_student || q_teacher) of the video and the music posteriors, per latent dimension."""
        cfg: DecCMConfig = self.config
        if not (cfg.teacher and self.teacher is not None and cfg.alpha > 0):
            return None
        with torch.no_grad():
            t_mask = batch.text_mask if self.teacher.learned_text else torch.zeros_like(batch.text_mask)
            t_video = self.teacher.module.video_posterior(batch.visual, batch.text, t_mask)  # as the teacher ranks
            t_music = self.teacher.module.music_posterior(batch.music)
        distil = (kl_normal(*video_post, *t_video) + kl_normal(*music_post, *t_music)).mean() / cfg.latent_dim
        logs["teacher_kl"] = distil.item()
        return cfg.alpha * distil

    # -- scoring --
    def backdoor_offsets(self, e_v: torch.Tensor) -> torch.Tensor:
        """h(v, g) = log sum_k P(c_k) exp(t(c_k)[g] - log Z(v, c_k)) for each genre g, [n, G].

        With these offsets, score(v, m) / tau = log P(m | do(v)) - log Q(m): the backdoor marginal
        divided by the track's training share, the scale on which every in-batch-trained model
        learns; the track prior column (:class:`TrackPrior`) adds log Q(m) back, as for CMVAE.
        """
        mod = self.module
        e_r = self.embed(mod.music_posterior(mod.ref_music)[0])
        # in-batch softmax training learns f = log P(m | v, c) - log Q(m) + const(v, c), Q the training
        # share of m (negatives are other rows' positives); so Z(v, c) = sum_r Q(r) exp(f_vr + t(c)[g_r])
        s = e_v @ e_r.T / self.config.temperature + mod.ref_log_share  # [n, R]
        return backdoor_genre_offsets(s, mod.ref_genre, mod.taste_logits(mod.prior_c))

    def video_embedding(self, visual, text, text_mask, confounder):
        e_v = self.embed(self.module.video_posterior(visual, text, text_mask)[0])
        mode = self.inference_mode
        if mode == "content":
            offsets = torch.zeros(len(e_v), len(self.spec.genres))
        elif mode == "personalised":
            if confounder is None:
                raise ValueError("personalised inference needs the uploader's genre preferences "
                                 "(VideoQuery.confounder)")
            offsets = self.module.taste_logits(confounder)
        else:
            offsets = self.backdoor_offsets(e_v)
        return torch.cat([e_v, self.config.temperature * offsets], dim=1)

    def music_embedding(self, music, genre):
        e_m = self.embed(self.module.music_posterior(music)[0])
        return torch.cat([e_m, nn.functional.one_hot(genre, len(self.spec.genres)).to(e_m.dtype)], dim=1)

    def prior_embedding(self, e_m: np.ndarray) -> np.ndarray:
        """The latent part of the music encodings: without the genre one-hot, which the regression adds itself."""
        g = len(self.spec.genres)
        if len(self.module.track_prior.coef) == e_m.shape[1] + g:  # saved before: its regression read it twice
            return e_m
        return e_m[:, :-g]

    def _track_log_q(self, c: MusicCatalog, e_m: np.ndarray) -> np.ndarray:
        prior = getattr(self.module, "content_prior", None)
        if self.inference_mode == "content" and prior is not None and len(prior.y_mean):
            return prior.log_q(c, e_m, len(self.spec.genres))
        return super()._track_log_q(c, e_m)

    @property
    def reads_captions(self) -> bool:
        """The student's :attr:`learned_text`, or in a mode that mixes in the teacher (:meth:`mixes_teacher`), the
        teacher's: a student trained on uploads without captions still reads them through a teacher trained on
        captioned professional videos."""
        return self.learned_text or (self.mixes_teacher() and self.teacher is not None and self.teacher.learned_text)

    def mixes_teacher(self) -> bool:
        """True when scores mix in the teacher's: content mode of a student trained with a teacher, w > 0.

        Validation during ``fit`` scores the model as it ranks: a student whose default mode is content
        (``deccm-noadjust``) is early-stopped on the mixed score.
        """
        return self.inference_mode == "content" and self._content_mode_mixes_teacher()

    def modality_shares(self, q: VideoQuery) -> np.ndarray:
        """The frames' and the caption's shares (:meth:`CMVAE.modality_shares`); where the scores mix in the
        teacher's (content mode), the student's and the teacher's shares weighted as their scores are,
        (1 - w) and w."""
        own = super().modality_shares(q)
        if not self.mixes_teacher():
            return own
        w = self.config.teacher_mix
        return (1 - w) * own + w * self._require_teacher().modality_shares(q)

    def _content_mode_mixes_teacher(self) -> bool:
        return self.config.teacher and self.config.teacher_mix > 0

    def _require_teacher(self) -> CMVAE:
        if self.teacher is None:
            raise ValueError(self._why_no_teacher())
        return self.teacher

    def _why_no_teacher(self) -> str:
        """One line: content mode mixes in a teacher, but none is attached (where it was sought, and what to do)."""
        way_out = "use another inference mode" if self.config.adjustment else "retrain with teacher_mix=0"
        if self._teacher_unusable:
            return (f"DecCM's content mode mixes its teacher's scores, but {self._teacher_unusable}; {way_out}, or "
                    "retrain the student with a teacher of its settings")
        where = f"no teacher folder at {self._teacher_sought}" if self._teacher_sought else "no teacher attached"
        return (f"DecCM's content mode mixes its teacher's scores (teacher_mix={self.config.teacher_mix}) but there "
                f"is {where}: keep the teacher folder beside the student, or {way_out}")

    def _encode_videos(self, q: VideoQuery) -> np.ndarray:
        e_v = super()._encode_videos(q)
        if not self.mixes_teacher():
            return e_v
        return mix_video_embeddings(e_v, self._require_teacher().encode_videos(q), self.config.teacher_mix)

    def _encode_music(self, c: MusicCatalog) -> np.ndarray:
        e_m = super()._encode_music(c)
        if not self.mixes_teacher():
            return e_m
        return np.hstack([e_m, self._require_teacher().encode_music(c)])

    # -- persistence --
    def save(self, out: Path) -> Path:
        """As :meth:`Recommender.save`; ``config.json`` also records where the teacher is and which it is:
        ``teacher_run_relative`` (relative to ``out``), ``teacher_run`` (relative when inside ``out``, else
        absolute) and ``teacher_weights_sha256``. So the student's folder, or a folder holding both, can be
        moved or copied whole, and a student never picks up another teacher found at the same place."""
        if self.teacher is not None and self.teacher_dir is None and self._content_mode_mixes_teacher():
            raise ValueError("this DecCM's teacher was attached without a folder (set_teacher(teacher, None)), "
                             "and content mode needs it after loading: save the teacher first and attach it "
                             "with its folder")
        self._teacher_record = dict.fromkeys(TEACHER_RECORD)
        if self.teacher_dir is not None:
            relative = os.path.relpath(self.teacher_dir, Path(out).resolve())
            inside = relative != os.pardir and not relative.startswith(os.pardir + os.sep)
            self._teacher_record = {"teacher_run_relative": relative,
                                    "teacher_run": relative if inside else self.teacher_dir,
                                    "teacher_weights_sha256": weights_digest(Path(self.teacher_dir))}
        return super().save(out)

    def extra_config(self) -> dict:
        return {"teacher_run": self.teacher_dir, **self._teacher_record, "inference_mode": self.inference_mode}

    def load_extra_config(self, extra: dict) -> None:
        self._teacher_record = {k: extra.get(k) for k in TEACHER_RECORD}
        for key, value in self._teacher_record.items():
            if value is not None and not isinstance(value, str):
                what = "a SHA-256 hex string" if key == "teacher_weights_sha256" else "a folder path (string)"
                raise ValueError(f"{key} must be {what} or null, got {value!r}")
        if extra.get("inference_mode") in MODES:
            self.inference_mode = extra["inference_mode"]

    def after_load(self, folder: Path) -> None:
        """Find the teacher (:meth:`_find_teacher`). A student whose only mode mixes it in (trained without the
        adjustment, as ``deccm-noadjust``) and finds none usable is refused here, a :class:`DatasetError`
        naming where it was sought, rather than at its first score."""
        if not self.config.teacher:  # trained without one: a teacher/ folder there is not its own
            return
        self._find_teacher(Path(folder))
        if self.teacher is None and not self.config.adjustment and self._content_mode_mixes_teacher():
            raise DatasetError(f"{Path(folder) / 'config.json'}: content mode is this student's only mode "
                               f"(adjustment=false); {self._why_no_teacher()}")

    def _find_teacher(self, folder: Path) -> None:
        """The first of ``config.json``'s relative record, ``folder/teacher`` and the record as written (absolute
        for a teacher outside the student) that holds a run with the recorded weights (any run for students
        saved before that record); attached when content mode mixes it in."""
        relative, written, digest = (self._teacher_record.get(k) for k in TEACHER_RECORD)
        candidates, seen = [], set()  # in this order; one folder named once, however it is recorded
        for p in (relative, "teacher", written):
            if p and (folder / p).resolve() not in seen:
                seen.add((folder / p).resolve())
                candidates.append(folder / p)
        others = []  # teacher folders there, of other weights
        for candidate in candidates:
            if candidate.resolve() == folder.resolve() or not (candidate / "weights.safetensors").is_file():
                continue
            if digest is not None and weights_digest(candidate) != digest:
                others.append(os.path.normpath(candidate))
                continue  # another teacher at the same place (a copied grid, a retrained run), or damaged
            self.teacher_dir = str(candidate.resolve())
            if self._content_mode_mixes_teacher():
                teacher = load_teacher(candidate)
                differ = teacher_scale_mismatch(teacher.config, self.config)
                if differ:  # accepted before the scales were checked: not attached, and only content mode needs it
                    self._teacher_unusable = f"the teacher at {os.path.normpath(candidate)} cannot guide it: {differ}"
                else:
                    self.set_teacher(teacher, candidate)
            return
        if relative or written:  # named by the error content mode raises
            self._teacher_sought = " or ".join(os.path.normpath(c) for c in candidates) + (
                f" with the weights it was trained with (sha256 {digest[:12]}...)" if digest else "") + (
                f" ({' and '.join(others)} hold{'s' if len(others) == 1 else ''} other weights: damaged, or another "
                "teacher's)" if others else "")

    @classmethod
    def from_folder_config(cls, meta: dict) -> DecCM:
        old = {"teacher_mix": 0.0, "content_share": False}  # saved before these existed: rank as then
        meta = {**meta, "config": {**old, **meta["config"]}}
        return super().from_folder_config(meta)


def mix_video_embeddings(model_videos: np.ndarray, teacher_videos: np.ndarray, weight: float) -> np.ndarray:
    """[n, d1 + d2] video side of the geometric mixture (1 - w) * model score + w * teacher score.

    Its inner product with ``hstack([model music, teacher music])`` is the mixed score: one more block
    of the inner product, so exact search and FAISS serve it unchanged.
    """
    return np.hstack([(1.0 - weight) * model_videos, weight * teacher_videos])


class TeacherMixture:
    """Any model's scores mixed with a frozen teacher's as DecCM's content mode mixes its student's.

    score = (1 - w) * model score + w * teacher score. A reference for benchmarks: what mixing in the
    teacher gives a model without DecCM's deconfounding (see ``bgmrec bench ceiling``).
    """

    def __init__(self, model: Recommender, teacher: CMVAE, weight: float) -> None:
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"the teacher's weight must be in [0, 1], got {weight}")
        self.model, self.teacher, self.weight = model, teacher, weight
        self.name = f"{model.name}+teacher"

    def encode_videos(self, q: VideoQuery) -> np.ndarray:
        """[n, d_model + d_teacher]: the weighted video sides (:func:`mix_video_embeddings`)."""
        return mix_video_embeddings(self.model.encode_videos(q), self.teacher.encode_videos(q), self.weight)

    def encode_music(self, c: MusicCatalog) -> np.ndarray:
        """[m, d_model + d_teacher]: the model's and the teacher's music sides side by side."""
        return np.hstack([self.model.encode_music(c), self.teacher.encode_music(c)])


def content_log_share(log_share: np.ndarray, counts: np.ndarray, genre: np.ndarray, n_genres: int,
                      shape: float | None = None) -> np.ndarray:
    """[M] log shares (up to a constant) of tracks chosen by content alone, from uploads' shares and few such choices.

    ``log_share`` is log Q(m), each track's share of the uploads (which popularity and taste inflate or
    deflate); ``counts`` how often the N professional videos (chosen by content) picked each track.
    Poisson-gamma model: counts_m ~ Poisson(e_m theta_m) with e_m = N Q(m) f_g(m) / sum Q, where f_g,
    the genre's ratio of professional to expected choices, is its posterior mean under a Gamma(1, 1)
    prior, (sum n + 1) / (sum e + 1), and theta_m ~ Gamma(k, rate k) is the track's own ratio; k is
    ``shape`` or, if None, the maximum of the negative-binomial marginal likelihood
    (:func:`negative_binomial_shape`). Returns log Q(m) + log f_g + log E[theta_m | counts_m], with
    E[theta | n] = (k + n) / (k + e) (the plug-in that keeps P(m | v), which is linear in theta, unbiased):
    a track expected to be chosen rarely stays near its genre's ratio, a track expected often moves to
    its own.
    """
    log_share, counts = np.asarray(log_share, np.float64), np.asarray(counts, np.float64)
    if not np.isfinite(log_share).all() or (counts < 0).any() or counts.sum() == 0:
        raise ValueError("content_log_share needs finite log shares and non-negative counts, not all 0")
    share = np.exp(log_share - log_share.max())
    expected = counts.sum() * share / share.sum()
    genre_ratio = (np.bincount(genre, counts, n_genres) + 1.0) / (np.bincount(genre, expected, n_genres) + 1.0)
    expected = expected * genre_ratio[genre]
    k = negative_binomial_shape(counts, expected) if shape is None else shape
    return log_share + np.log(genre_ratio[genre]) + np.log(k + counts) - np.log(k + expected)


def negative_binomial_shape(counts: np.ndarray, expected: np.ndarray) -> float:
    """Shape k maximising sum_m log NB(counts_m; mean expected_m, shape k), the Poisson-gamma marginal.

    log NB(n; e, k) = lgamma(n + k) - lgamma(k) - lgamma(n + 1) + k log(k / (k + e)) + n log(e / (k + e)).
    Tracks with e = 0 carry no information on k and are left out. Searched on a log grid over
    [e^-4, e^6], one grid point at a time (memory O(M)); the upper end stands for "no over-dispersion".
    """
    n, e = np.asarray(counts, np.float64), np.asarray(expected, np.float64)
    n, e = torch.from_numpy(n[e > 0]), torch.from_numpy(e[e > 0])
    grid = torch.exp(torch.linspace(-4.0, 6.0, 201, dtype=torch.float64))
    ll = torch.stack([(torch.lgamma(n + k) - torch.lgamma(k) - torch.lgamma(n + 1) + k * torch.log(k / (k + e))
                       + torch.xlogy(n, e / (k + e))).sum() for k in grid])
    if not torch.isfinite(ll).all():
        raise ValueError("negative_binomial_shape: the likelihood is not finite (negative counts or means?)")
    return float(grid[int(torch.argmax(ll))])


TEACHER_RECORD = ("teacher_run_relative", "teacher_run", "teacher_weights_sha256")  # config.json's "learned"


def weights_digest(run: Path) -> str:
    """SHA-256 of a run's ``weights.safetensors``: which teacher a student was trained with."""
    from bgmrec.data.dataset import sha256_file

    return sha256_file(Path(run) / "weights.safetensors")


def teacher_scale_mismatch(teacher: CMVAEConfig, student: CMVAEConfig) -> str | None:
    """Why a teacher of config ``teacher`` cannot guide a student of config ``student`` (the settings of
    :data:`TEACHER_MUST_SHARE` that differ), or None when it can."""
    differ = [f"{k} {getattr(teacher, k)!r} (student: {getattr(student, k)!r})" for k in TEACHER_MUST_SHARE
              if getattr(teacher, k) != getattr(student, k)]
    if not differ:
        return None
    return (f"the teacher was trained with {', '.join(differ)}: its latent space and scores are on another scale "
            "than the student's, so neither the KL term nor content mode's mixture would compare like with like; "
            "train the teacher with the student's backbone settings (bgmrec trains one itself when no teacher is "
            "given)")


def load_teacher(folder: Path) -> CMVAE:
    """Load a saved teacher, which must be a plain CMVAE run (not a DecCM student)."""
    teacher = load_model(folder)
    if not isinstance(teacher, CMVAE) or isinstance(teacher, DecCM):
        raise ValueError(f"{folder}: a teacher must be a cmvae run, found {teacher.name!r}")
    return teacher


def professional_split(ds) -> str | None:
    """The name of the dataset's split of professional music videos (role ``teacher``), or None when it has none."""
    return next((s for s in ds.split_names("teacher") if len(ds.splits[s])), None)


def teacher_config(student: DecCMConfig) -> CMVAEConfig:
    """The teacher's config: the student's backbone fields (same architecture and latent space)."""
    shared = {f.name for f in fields(CMVAEConfig)}
    return CMVAEConfig(**{k: v for k, v in asdict(student).items() if k in shared})


def attach_teacher(model: Recommender, ds, out: Path, teacher_dir: Path | None = None,
                   progress: bool = False) -> None:
    """Factory: load the teacher at ``teacher_dir`` or train one on the PGC split into ``out/teacher``."""
    if not isinstance(model, DecCM):
        raise ValueError(f"model {model.name!r} sets uses_teacher, but bgmrec attaches teachers to DecCM models "
                         "only (a subclass of bgmrec.models.deccm.DecCM)")
    if not model.config.teacher:
        return
    if teacher_dir is not None:
        model.set_teacher(load_teacher(teacher_dir), teacher_dir)
        return
    folder = Path(out) / "teacher"
    model.set_teacher(train_teacher(model, ds, folder, progress), folder)


def train_teacher(student: DecCM, ds, folder: Path, progress: bool = False) -> CMVAE:
    """Train ``student``'s teacher (:func:`teacher_config`) on the dataset's professional music videos and
    save it into ``folder``; early-stopped on a share of them held out (:data:`TEACHER_HOLDOUT`), since the
    uploads' val split carries the taste bias the teacher must not learn."""
    split = professional_split(ds)
    if split is None:
        raise ValueError("the dataset has no teacher split (professional music videos) to train a teacher on: "
                         "give a trained teacher's folder (teacher_dir) or set teacher=false")
    fitted_on, held_out = SplitView(ds, split).holdout(TEACHER_HOLDOUT, student.config.seed)
    n_videos = len(np.unique(np.asarray(ds.splits[split])[:, 0]))  # a video with two tracks counts once
    if n_videos < MIN_TEACHER_VIDEOS:
        warnings.warn(f"the teacher is trained on only {n_videos} professional music videos (split {split!r}; "
                      f"at least {MIN_TEACHER_VIDEOS} advised): it early-stops on a holdout of {len(held_out.rows)}, "
                      "and its KL term can outweigh the student's matching loss; give a teacher trained on more "
                      "videos (teacher_dir, --teacher) or set teacher=false", SmallTeacherSplitWarning, stacklevel=2)
    teacher = CMVAE(teacher_config(student.config), student.spec)
    teacher.progress_label = f"{student.name}'s teacher ({teacher.name})"
    teacher.fit(fitted_on, held_out, progress=progress)
    teacher.save(folder)
    return teacher
