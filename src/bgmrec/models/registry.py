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
    "oracle": "bgmrec.models.oracle:Oracle",
}


def model_names() -> list[str]:
    return list(MODEL_PATHS)


def model_class(name: str) -> type[Recommender]:
    if name not in MODEL_PATHS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_PATHS)}")
    module, cls = MODEL_PATHS[name].split(":")
    return getattr(importlib.import_module(module), cls)
