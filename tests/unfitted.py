"""Tests of a model's encoding algebra (fusion, masks, offsets, shapes) on its initial weights."""

from __future__ import annotations

from bgmrec.models.base import Recommender


def as_fitted(model: Recommender) -> Recommender:
    """``model``, never fitted, marked fitted: its encoders' algebra shows on its initial weights as on trained
    ones, and encoding refuses a model never fitted (:meth:`~bgmrec.models.base.Recommender.check_fitted`)."""
    model.fitted = True
    return model


def forgetful_model() -> type[Recommender]:
    """A popularity model that learns its counts in fit and saves none of them (``state_arrays`` empty): loaded
    back, it scores as one never fitted. Made on call, as the ``--model`` name ``forgetful`` tests register."""
    from bgmrec.models.baselines import PopularityRecommender

    class Forgetful(PopularityRecommender):
        name = "forgetful"

        def state_arrays(self):
            return {}

        def load_state_arrays(self, arrays):
            pass

    return Forgetful
