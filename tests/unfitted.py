"""Tests of a model's encoding algebra (fusion, masks, offsets, shapes) on its initial weights."""

from __future__ import annotations

from bgmrec.models.base import Recommender


def as_fitted(model: Recommender) -> Recommender:
    """``model``, never fitted, marked fitted: its encoders' algebra shows on its initial weights as on trained
    ones, and encoding refuses a model never fitted (:meth:`~bgmrec.models.base.Recommender.check_fitted`)."""
    model.fitted = True
    return model
