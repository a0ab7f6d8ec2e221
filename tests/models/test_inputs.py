"""Config values out of range are refused by name, with the allowed range, when a model is built."""

from __future__ import annotations

import dataclasses

import pytest

from bgmrec.models.registry import build, model_names

# ---- config ranges ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,field,value,message", [
    ("twotower-infonce", "batch_size", 0, "batch_size must be >= 2, got 0"),  # was ZeroDivisionError
    ("twotower-hinge", "batch_size", -5, "batch_size must be >= 2, got -5"),
    ("cmvae", "latent_dim", -3, "latent_dim must be >= 1, got -3"),  # was a torch RuntimeError
    ("twotower-infonce", "latent_dim", 0, "latent_dim must be >= 1, got 0"),
    ("cmvae", "val_queries", 0, "val_queries must be >= 1, got 0"),
    ("cmvae", "epochs", 0, "epochs must be >= 1, got 0"),
    ("deccm", "epochs", -1, "epochs must be >= 1, got -1"),
    ("cmvae", "patience", 0, "patience must be >= 1, got 0"),
    ("cmvae", "lr", "nan", "lr must be > 0, got nan"),
    ("cmvae", "dropout", 1, "dropout must be in [0, 1), got 1.0"),
    ("twotower-hinge", "hidden", "32,0", "each of hidden must be >= 1, got (32, 0)"),
    ("twotower-hinge", "margin", -0.1, "margin must be >= 0, got -0.1"),
    ("twotower-infonce", "temperature", 0, "temperature must be > 0, got 0.0"),
    ("cmvae", "kl_weight", -1, "kl_weight must be >= 0, got -1.0"),
    ("deccm", "prior_samples", 0, "prior_samples must be >= 1, got 0"),
    ("cca", "dim", 0, "dim must be >= 1, got 0"),
    ("cca", "ridge", -1, "ridge must be >= 0, got -1.0"),
    ("random", "dim", 0, "dim must be >= 1, got 0"),
    ("popularity", "seed", -1, "seed must be >= 0, got -1"),
])
def test_config_values_out_of_range_are_refused_by_name(tiny_spec, name, field, value, message):
    with pytest.raises(ValueError) as e:
        build(name, tiny_spec, {field: value})
    assert str(e.value) == message


@pytest.mark.parametrize("name", model_names())
def test_every_model_builds_with_its_defaults_and_the_smallest_allowed_values(tiny_spec, name):
    config = type(build(name, tiny_spec).config)
    smallest = {"epochs": 1, "batch_size": 2, "val_queries": 1, "patience": 1, "latent_dim": 1, "dropout": 0,
                "weight_decay": 0, "dim": 1, "ridge": 0, "seed": 0, "prior_samples": 1, "reference_tracks": 1,
                "kl_anneal_epochs": 0, "margin": 0}
    known = {f.name for f in dataclasses.fields(config)}
    model = build(name, tiny_spec, {k: v for k, v in smallest.items() if k in known})
    assert all(getattr(model.config, k) == v for k, v in smallest.items() if k in known)
