"""Model names for ``--model`` and the factories that build them."""

from __future__ import annotations

import importlib

from bgmrec.models.base import Recommender

# name -> "module:Class"; imported lazily so that listing models stays cheap
MODEL_PATHS: dict[str, str] = {
    "random": "bgmrec.models.baselines:RandomRecommender",
    "popularity": "bgmrec.models.baselines:PopularityRecommender",
    "cca": "bgmrec.models.baselines:CCARecommender",
    "twotower-hinge": "bgmrec.models.twotower:TwoTowerHinge",
    "twotower-infonce": "bgmrec.models.twotower:TwoTowerInfoNCE",
    "cmvae": "bgmrec.models.cmvae:CMVAE",
    "deccm": "bgmrec.models.deccm:DecCM",
    "oracle": "bgmrec.models.oracle:Oracle",
}


# named ablations: a model with config overrides (the papers' comparisons, reproducible by name)
VARIANTS: dict[str, tuple[str, dict]] = {
    "cmvae-visual": ("cmvae", {"fusion": "visual"}),
    "cmvae-concat": ("cmvae", {"fusion": "concat"}),
    "cmvae-nocrossgen": ("cmvae", {"cross_generation": False}),
    "cmvae-noprior": ("cmvae", {"track_prior": False}),
    "deccm-noadjust": ("deccm", {"adjustment": False}),
    "deccm-noteacher": ("deccm", {"teacher": False}),
    # CMVAE trained on the uploads, its content mode mixed with the PGC teacher; nothing else of DecCM
    "deccm-teachermix": ("deccm", {"adjustment": False, "alpha": 0.0, "content_share": False}),
}


def model_names(include_variants: bool = True) -> list[str]:
    return list(MODEL_PATHS) + (list(VARIANTS) if include_variants else [])


def resolve(name: str) -> tuple[str, dict]:
    """``--model`` name -> (base model name, config overrides)."""
    if name in VARIANTS:
        return VARIANTS[name]
    if name not in MODEL_PATHS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(model_names())}")
    return name, {}


def model_class(name: str) -> type[Recommender]:
    module, cls = MODEL_PATHS[resolve(name)[0]].split(":")
    return getattr(importlib.import_module(module), cls)


def build(name: str, spec, overrides: dict | None = None) -> Recommender:
    """An untrained model by ``--model`` name, with ``--set`` overrides applied to its config."""
    from bgmrec.models.base import with_overrides

    base, variant = resolve(name)
    cls = model_class(base)
    return cls(with_overrides(cls.config_class(), {**variant, **(overrides or {})}), spec)


def prepare_teacher(model: Recommender, ds, out, teacher_dir=None, progress: bool = False) -> None:
    """Factory step before ``fit``: give a teacher-guided model its frozen teacher (trained if not given)."""
    if model.uses_teacher:
        from bgmrec.models.deccm import attach_teacher

        attach_teacher(model, ds, out, teacher_dir, progress)
