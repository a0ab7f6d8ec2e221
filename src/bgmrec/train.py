"""The one training loop, shared by every trainable neural model.

Batches are gathered straight from feature tensors held in memory (no DataLoader, no per-sample
Python); after every epoch the model is scored on the validation split (full-catalogue Recall@10, ties
broken by MRR; never test) and the best state is kept; training stops after ``patience`` epochs without gain.
"""

from __future__ import annotations

import contextlib
import copy
import numbers
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from bgmrec.data.dataset import Dataset
from bgmrec.models.base import STOPS, ModelConfig, SplitView, StoppedFit, check_bounds


@dataclass
class TrainConfig(ModelConfig):
    """Training fields every neural model's config inherits."""

    epochs: int = 40  # upper bound on passes over the training interactions
    batch_size: int = 512  # interactions per step; the other rows of a batch are the in-batch negatives
    lr: float = 2e-3  # AdamW learning rate
    weight_decay: float = 1e-4  # AdamW weight decay
    grad_clip: float = 5.0  # gradient-norm clip
    patience: int = 6  # epochs without a better validation Recall@10 (ties: MRR) before stopping
    val_queries: int = 4000  # validation queries scored per epoch (a fixed seeded subset)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bounds(self, epochs=">= 1", batch_size=">= 2", lr="> 0", weight_decay=">= 0", grad_clip="> 0",
                     patience=">= 1", val_queries=">= 1")


@dataclass
class Batch:
    """One training batch as tensors, gathered from :class:`FeatureTensors`."""

    video: torch.Tensor  # int64 [B] video indices
    track: torch.Tensor  # int64 [B] track indices
    visual: torch.Tensor  # [B, Dv]
    text: torch.Tensor  # [B, Dt]
    text_mask: torch.Tensor  # bool [B]
    music: torch.Tensor  # [B, Dm]
    genre: torch.Tensor  # int64 [B] genre of each positive track
    confounder: torch.Tensor  # [B, G] uploader genre preferences (uniform for PGC rows)

    @property
    def same_track(self) -> torch.Tensor:
        """[B, B] True where rows i and j share their positive track."""
        return self.track[:, None] == self.track[None, :]


class FeatureTensors:
    """All feature matrices of a dataset as tensors, built once per ``fit``."""

    def __init__(self, ds: Dataset) -> None:
        self.visual = torch.from_numpy(np.array(ds.video_visual, np.float32))
        self.text = torch.from_numpy(np.array(ds.video_text, np.float32))
        self.text_mask = torch.from_numpy(np.array(ds.video_text_mask, bool))
        self.music = torch.from_numpy(np.array(ds.music, np.float32))
        self.genre = torch.from_numpy(np.array(ds.track_genre, np.int64))
        self.dataset = ds

    def batch(self, rows: np.ndarray) -> Batch:
        """The :class:`Batch` of split ``rows`` [B, 3] (video, track, uploader), features gathered by index."""
        v = torch.from_numpy(np.array(rows[:, 0], np.int64))
        t = torch.from_numpy(np.array(rows[:, 1], np.int64))
        return Batch(v, t, self.visual[v], self.text[v], self.text_mask[v], self.music[t], self.genre[t],
                     torch.from_numpy(self.dataset.confounder(rows[:, 2])))


def validation_scores(model, val: SplitView, n_queries: int, seed: int) -> tuple[float, float]:
    """(full-catalogue Recall@10, MRR) on a fixed seeded subset of the validation split: early stopping
    keeps the epoch best by Recall@10, ties broken by MRR (a small catalogue's Recall@10 reaches 1 in an
    epoch, and without the tie-break no later epoch could beat the first)."""
    from bgmrec.eval.metrics import mrr, recall_at_k
    from bgmrec.eval.protocol import full_ranks

    rows = val.rows
    if len(rows) > n_queries:
        rows = rows[np.sort(np.random.default_rng(seed).choice(len(rows), n_queries, replace=False))]
    ranks = full_ranks(model, val.dataset, val.name, rows=rows).ranks
    return recall_at_k(ranks, 10), mrr(ranks)


class TrainingDiverged(ValueError):
    """Training whose loss or weights stopped being finite (the learning rate is too high for the data): the
    command's one-line error; ``bgmrec tune`` records such a point and goes on with the others."""


def _diverged(model, where: str) -> TrainingDiverged:
    cfg = model.config
    return TrainingDiverged(f"{model.name}: training diverged at {where} (lr={cfg.lr}, grad_clip={cfg.grad_clip}); "
                            f"train again with a lower learning rate, e.g. --set lr={cfg.lr / 10:g}")


def check_training_loss(model, out: object) -> None:
    """Refuse what ``model.training_loss`` returned unless it is (a scalar float tensor with grad, a dict of
    numbers): a ValueError naming the method and what it returned, not the error torch raises further on (a
    float, an unreduced vector of losses, the loss without its logs)."""
    loss, logs = out if isinstance(out, tuple) and len(out) == 2 else (None, None)
    if not (isinstance(loss, torch.Tensor) and loss.ndim == 0 and loss.is_floating_point() and loss.requires_grad
            and isinstance(logs, dict) and all(_is_log(k, v) for k, v in logs.items())):
        raise ValueError(f"{type(model).__qualname__}.training_loss must return (a scalar tensor, a dict of floats); "
                         f"got {_returned(out)}")


def _is_log(key: object, value: object) -> bool:
    """True for a logged term the loop can average: a name and a number (a one-element tensor too)."""
    return isinstance(key, str) and (isinstance(value, numbers.Real) or
                                     isinstance(value, torch.Tensor) and value.numel() == 1)


def _returned(value: object) -> str:
    """What a training_loss returned, as :func:`check_training_loss` names it."""
    if isinstance(value, torch.Tensor):
        if value.ndim:
            return f"an unreduced tensor of shape {list(value.shape)}"
        if not value.is_floating_point():
            return f"a scalar {str(value.dtype).removeprefix('torch.')} tensor"
        return "a scalar tensor" + ("" if value.requires_grad else " that requires no grad (detached from the model)")
    if isinstance(value, tuple):
        return f"a tuple ({', '.join(map(_returned, value))})"
    if isinstance(value, dict):
        bad = next(((k, v) for k, v in value.items() if not _is_log(k, v)), None)
        return "a dict of floats" if bad is None else f"a dict whose {bad[0]!r} is {_returned(bad[1])}"
    return type(value).__name__


def fit_torch(model, train: SplitView, val: SplitView | None, progress: bool = False) -> list[dict]:
    """Train ``model`` (a :class:`bgmrec.models.neural.TorchRecommender`) with early stopping on ``val``.

    Returns the per-epoch history (loss terms, validation Recall@10 and MRR, seconds) and leaves the model
    in eval mode holding its best validation state. Torch's global generator is seeded from the config
    for the training and given back to the caller as it was.

    A stop (Ctrl-C's KeyboardInterrupt, SIGTERM's SystemExit: :data:`~bgmrec.models.base.STOPS`) is raised on,
    after at least one validated epoch with the model as if training had ended there: holding its best epoch so
    far, in eval mode, its ``history`` the epochs finished, and its ``stopped`` saying where
    (:class:`~bgmrec.models.base.StoppedFit`; ``fit`` then marks it fitted). Before any, it is left as it was.
    """
    with torch.random.fork_rng():
        torch.manual_seed(model.config.seed)
        return _fit_torch(model, train, val, progress)


def _fit_torch(model, train: SplitView, val: SplitView | None, progress: bool) -> list[dict]:
    cfg: TrainConfig = model.config
    rng = np.random.default_rng(cfg.seed)
    feats = FeatureTensors(train.dataset)
    rows = np.array(train.rows)  # a private, writable copy (the split may be memory-mapped)
    if len(rows) == 0:
        raise ValueError(f"split {train.name!r} has no interactions to train on")
    model.prepare(feats, rows)
    groups = model.param_groups()
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(rows) // cfg.batch_size)
    best, best_state, since_best, history = (-1.0, -1.0), None, 0, []
    best_epoch = 0  # the epoch of best_state (1-based)
    step, label = 0, model.progress_label or model.name
    try:
        with _progress(progress, cfg.epochs, label) as (show, within):  # closed however training ends
            for epoch in range(cfg.epochs):
                t0 = time.perf_counter()
                model.module.train()
                order = rng.permutation(len(rows))
                sums: dict[str, float] = {}
                for b in range(steps_per_epoch):
                    batch = feats.batch(rows[order[b * cfg.batch_size:(b + 1) * cfg.batch_size]])
                    out = model.training_loss(batch, step, steps_per_epoch)
                    if step == 0:
                        check_training_loss(model, out)
                    loss, logs = out
                    if not torch.isfinite(loss):
                        raise _diverged(model, f"epoch {epoch + 1}, step {b + 1}: the loss is {loss.item()}")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                    opt.step()
                    step += 1
                    for k, v in logs.items():
                        sums[k] = sums.get(k, 0.0) + float(v)
                    within(epoch, b + 1, steps_per_epoch)
                model.module.eval()
                if not all(bool(torch.isfinite(p).all()) for p in params):
                    raise _diverged(model, f"epoch {epoch + 1}: its last step left weights that are not finite")
                model.end_epoch(feats)
                entry = {"epoch": epoch + 1, "seconds": time.perf_counter() - t0,
                         **{k: v / steps_per_epoch for k, v in sums.items()}}
                if val is not None and len(val.rows):
                    with torch.no_grad():
                        scores = validation_scores(model, val, cfg.val_queries, cfg.seed)
                    entry["val_recall@10"], entry["val_mrr"] = scores
                    if scores > best:  # the copy first: a stop during it must not name this epoch the best kept
                        state = copy.deepcopy(model.module.state_dict())
                        best, since_best, best_epoch, best_state = scores, 0, epoch + 1, state
                    else:
                        since_best += 1
                history.append(entry)
                show(f"{label} epoch {epoch + 1} loss {entry.get('loss', 0):.3f}"
                     + (f" val R@10 {entry['val_recall@10']:.3f}" if "val_recall@10" in entry else ""))
                if val is not None and since_best >= cfg.patience:
                    break
    except STOPS:  # ended here as if training had: the best epoch so far, when one was validated
        if best_state is not None:
            model.module.load_state_dict(best_state)
            model.module.eval()
            model.history = history
            model.stopped = StoppedFit(min(len(history) + 1, cfg.epochs), cfg.epochs, best_epoch, best[0])
        raise
    if best_state is not None:
        model.module.load_state_dict(best_state)
    model.module.eval()
    return history


HEARTBEAT_SECONDS = 60.0  # in a log, a line within an epoch at most this often (an epoch can take minutes)


@contextlib.contextmanager
def _progress(enabled: bool, total: int, name: str) -> Iterator:
    """A bar of ``total`` epochs on stderr; yields ``(show, within)``: ``show(description)`` ends an epoch,
    ``within(epoch, step, steps)`` says how far the epoch (0-based) is. Stopped (the terminal's cursor given
    back) however the block ends: Ctrl-C and SIGTERM too. Where stderr is not a terminal (a CI log, a file) each
    epoch is a plain line there instead (a bar drew nothing until its end), and a line every
    :data:`HEARTBEAT_SECONDS` within one: at a large dataset's size the first line came only after minutes."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if not enabled:  # the library's default: nothing drawn, nothing done at each step
        yield (lambda description: None), (lambda epoch, step, steps: None)
        return
    console = Console(stderr=True)
    if not console.is_terminal:
        t0 = time.perf_counter()
        said = [t0, 0]  # when the last line was printed; epochs ended

        def line(text: str) -> None:
            said[0] = time.perf_counter()
            print(text.replace("{seconds}", f"{said[0] - t0:.0f} s"), file=sys.stderr, flush=True)

        def show(description: str) -> None:
            said[1] += 1
            line(f"{description} ({said[1]}/{total}, {{seconds}})")

        def within(epoch: int, step: int, steps: int) -> None:
            if step < steps and time.perf_counter() - said[0] >= HEARTBEAT_SECONDS:
                line(f"{name} epoch {epoch + 1}: step {step} of {steps} ({{seconds}})")
        yield show, within
        return
    ended = [0]
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        task = bar.add_task(name, total=total)

        def show_on_bar(description: str) -> None:
            ended[0] += 1
            bar.update(task, completed=ended[0], description=description)
        yield show_on_bar, lambda epoch, step, steps: bar.update(task, completed=epoch + step / steps)
