"""The shared training loop (bgmrec.train.fit_torch) does what its docstring says: each epoch is a fresh shuffle
of every training row (seeded), the network trains in train mode and is scored in eval mode, the optimiser gets
the config's learning rate and weight decay, early stopping counts epochs without gain in a row and keeps the best
one, the history holds per-step means, non-finite weights are refused, and a fit is the same whatever torch's
global generator held before it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import bgmrec.train
from bgmrec.models.base import FeatureSpec, SplitView
from bgmrec.models.registry import build
from bgmrec.train import TrainingDiverged

BATCH = 64  # the tiny world's 1474 training rows: 23 steps an epoch, 1472 rows of them used


def _build(ds, name="twotower-infonce", **overrides):
    return build(name, FeatureSpec.of(ds), {"batch_size": BATCH, **overrides})


def _recorded(model) -> list[dict]:
    """Wrap ``model.training_loss``: each call's batch (video, track pairs), mode and logged terms, in order."""
    calls, real = [], model.training_loss

    def spy(batch, step, steps_per_epoch):
        out = real(batch, step, steps_per_epoch)
        calls.append({"pairs": np.stack([batch.video.numpy(), batch.track.numpy()], 1).copy(), "step": step,
                      "steps": steps_per_epoch, "training": model.module.training,
                      "every_part_training": all(m.training for m in model.module.modules()),
                      "logs": {k: float(v) for k, v in out[1].items()}})
        return out

    model.training_loss = spy
    return calls


def _row_index(ds) -> dict[tuple[int, int], int]:
    rows = np.array(SplitView(ds, "train").rows)
    index = {(int(v), int(t)): i for i, (v, t) in enumerate(rows[:, :2])}
    assert len(index) == len(rows)  # (video, track) names a training row in the tiny world
    return index


def _epoch_rows(calls, index, epoch: int) -> list[int]:
    """The training-row indices of one epoch's steps (0-based epoch), in the order they were trained on."""
    steps = calls[0]["steps"]
    return [index[(int(v), int(t))] for c in calls[epoch * steps:(epoch + 1) * steps] for v, t in c["pairs"]]


def _fake_validation(monkeypatch, recalls, states=None, modes=None):
    """Validation Recall@10 per epoch taken from ``recalls`` (MRR 0); the weights and mode seen at each."""
    values = iter(recalls)

    def fake(model, val, n_queries, seed):
        if states is not None:
            states.append({k: v.clone() for k, v in model.module.state_dict().items()})
        if modes is not None:
            modes.append(model.module.training)
        return next(values), 0.0

    monkeypatch.setattr(bgmrec.train, "validation_scores", fake)


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.module.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_patience_counts_epochs_without_gain_in_a_row_and_the_best_epoch_is_kept(tiny_ds, monkeypatch):
    # guards: the patience counter not reset by a better epoch (stopping after `patience` bad epochs in all)
    states = []
    _fake_validation(monkeypatch, [0.1, 0.2, 0.1, 0.3, 0.1, 0.1, 0.9, 0.9, 0.9, 0.9], states)
    model = _build(tiny_ds, epochs=10, patience=2).fit(SplitView(tiny_ds, "train"), SplitView(tiny_ds, "val"))
    assert [h["val_recall@10"] for h in model.history] == [0.1, 0.2, 0.1, 0.3, 0.1, 0.1]
    assert [h["epoch"] for h in model.history] == [1, 2, 3, 4, 5, 6]
    assert _same(_weights(model), states[3])  # the 4th epoch's weights, the best
    assert not _same(_weights(model), states[5])  # not the last epoch's


def test_an_epoch_trains_on_distinct_rows_covering_every_full_batch(tiny_ds):
    # guards: every step of an epoch gathering the same batch (order[:batch_size])
    model = _build(tiny_ds, epochs=2)
    calls = _recorded(model)
    model.fit(SplitView(tiny_ds, "train"))
    index = _row_index(tiny_ds)
    steps = len(index) // BATCH
    assert steps == 23 and len(calls) == 2 * steps and all(c["steps"] == steps for c in calls)
    assert [c["step"] for c in calls] == list(range(2 * steps))
    for epoch in (0, 1):
        rows = _epoch_rows(calls, index, epoch)
        assert len(rows) == steps * BATCH
        assert len(set(rows)) == steps * BATCH  # no row twice in an epoch: the batches do not overlap


def test_each_epoch_is_a_new_shuffle_repeated_by_the_same_seed_and_not_by_another(tiny_ds):
    # guards: no shuffling (np.arange instead of rng.permutation): every epoch, every seed, in file order
    def orders(seed):
        model = _build(tiny_ds, epochs=2, seed=seed)
        calls = _recorded(model)
        model.fit(SplitView(tiny_ds, "train"))
        return [_epoch_rows(calls, index, e) for e in (0, 1)]

    index = _row_index(tiny_ds)
    first, again, other = orders(0), orders(0), orders(1)
    assert first[0] != first[1]  # each epoch drawn anew
    assert first[0] != sorted(first[0])  # shuffled, not in file order
    assert first == again  # the same seed, the same batches
    assert other[0] != first[0] and other[1] != first[1]  # another seed, other batches


def test_the_network_trains_in_train_mode_and_is_validated_and_left_in_eval_mode(tiny_ds, monkeypatch):
    # guards: the module never put in train mode (dropout off during training), or left in it for scoring
    modes = []
    _fake_validation(monkeypatch, [0.1, 0.2], modes=modes)
    model = _build(tiny_ds, epochs=2)
    assert model.config.dropout > 0  # train mode matters: its dropout is on only then
    calls = _recorded(model)
    model.fit(SplitView(tiny_ds, "train"), SplitView(tiny_ds, "val"))
    assert len(calls) == 46 and all(c["training"] and c["every_part_training"] for c in calls)
    assert modes == [False, False]
    assert not any(m.training for m in model.module.modules())


@pytest.mark.parametrize("name", ["twotower-infonce", "cmvae"])
def test_a_fit_is_the_same_whatever_torchs_global_generator_held_before(tiny_ds, name):
    # guards: torch.manual_seed(config.seed) removed from fit_torch (dropout, sampling) or from initial_module
    def fitted(global_seed, config_seed=0):
        torch.manual_seed(global_seed)
        model = _build(tiny_ds, name, epochs=1, batch_size=256, seed=config_seed)
        state = torch.get_rng_state()
        model.fit(SplitView(tiny_ds, "train"))
        assert torch.equal(torch.get_rng_state(), state)  # the caller's generator given back as it was
        return _weights(model)

    first = fitted(123)
    assert _same(first, fitted(456))
    assert not _same(first, fitted(123, config_seed=1))  # the config's seed does choose the weights


def _spy_optimisers(monkeypatch, nan_after_step: int | None = None) -> list:
    """Replace torch.optim.AdamW by a subclass recording each instance; with ``nan_after_step``, that step (1-based)
    leaves the first parameter NaN (its loss was finite)."""
    made = []

    class Spied(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.steps = 0
            made.append(self)

        def step(self, closure=None):
            out = super().step(closure)
            self.steps += 1
            if self.steps == nan_after_step:
                with torch.no_grad():
                    self.param_groups[0]["params"][0].fill_(float("nan"))
            return out

    monkeypatch.setattr(torch.optim, "AdamW", Spied)
    return made


def test_the_optimiser_gets_the_configs_learning_rate_and_weight_decay(tiny_ds, monkeypatch):
    # guards: the configured weight_decay (or lr) not passed to AdamW
    made = _spy_optimisers(monkeypatch)
    model = _build(tiny_ds, epochs=1, lr=3e-3, weight_decay=0.05)
    model.fit(SplitView(tiny_ds, "train"))
    [opt] = made
    [group] = opt.param_groups
    assert (group["lr"], group["weight_decay"]) == (3e-3, 0.05)
    assert {id(p) for p in group["params"]} == {id(p) for p in model.module.parameters() if p.requires_grad}


def test_deccm_taste_path_trains_at_its_scaled_rate_without_weight_decay(tiny_ds, monkeypatch):
    # guards: DecCM's groups losing the config's lr / weight decay (rest) or taste_lr_scale / no decay (taste)
    made = _spy_optimisers(monkeypatch)
    model = _build(tiny_ds, "deccm-noteacher", epochs=1, lr=3e-3, weight_decay=0.05, taste_lr_scale=7.0)
    model.fit(SplitView(tiny_ds, "train"))
    [opt] = made
    rest, taste = opt.param_groups
    assert (rest["lr"], rest["weight_decay"]) == (3e-3, 0.05)
    assert taste["lr"] == pytest.approx(3e-3 * 7.0) and taste["weight_decay"] == 0.0
    taste_ids = {id(p) for p in model.module.taste.parameters()}
    assert taste_ids and {id(p) for p in taste["params"]} == taste_ids
    assert not taste_ids & {id(p) for p in rest["params"]}


def test_weights_left_not_finite_by_an_epochs_last_step_are_a_divergence(tiny_ds, monkeypatch):
    # guards: the end-of-epoch check of non-finite weights removed (NaN weights validated and saved)
    _spy_optimisers(monkeypatch, nan_after_step=23)  # the last step of epoch 1 (its loss was finite)
    model = _build(tiny_ds, epochs=2)
    with pytest.raises(TrainingDiverged, match=r"^twotower-infonce: training diverged at epoch 1: its last step left "
                                               r"weights that are not finite \(lr=0.002, grad_clip=5.0\)"):
        model.fit(SplitView(tiny_ds, "train"), SplitView(tiny_ds, "val"))


def test_the_history_holds_each_logged_terms_mean_over_the_epochs_steps(tiny_ds):
    # guards: history losses summed over the steps, not averaged
    model = _build(tiny_ds, "cmvae", epochs=2)
    calls = _recorded(model)
    model.fit(SplitView(tiny_ds, "train"))
    steps = calls[0]["steps"]
    assert len(model.history) == 2 and "loss" in calls[0]["logs"]
    for epoch, entry in enumerate(model.history):
        logs = [c["logs"] for c in calls[epoch * steps:(epoch + 1) * steps]]
        for key in logs[0]:
            assert entry[key] == pytest.approx(np.mean([g[key] for g in logs]), rel=1e-9), key


def test_bgmrec_train_says_the_best_val_recall_of_the_history(tiny_dir, tmp_path, monkeypatch, capsys):
    # guards: the "best val Recall@10" of `bgmrec train` taking the worst epoch's (min) or another figure
    from bgmrec.cli import main

    _fake_validation(monkeypatch, [0.3, 0.5, 0.4])
    assert main(["train", "--data", str(tiny_dir), "--model", "twotower-infonce", "--out", str(tmp_path / "r"),
                 "--epochs", "3", "--set", "batch_size=256", "--no-progress"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    history = json.loads((tmp_path / "r" / "history.json").read_text())
    assert [h["val_recall@10"] for h in history] == [0.3, 0.5, 0.4]
    assert "3 epochs, best val Recall@10 0.500)" in out
