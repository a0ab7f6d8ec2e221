"""bench-media's service figures: measured on a started service, for every request path."""

from __future__ import annotations

import numpy as np

from bgmrec.bench_media import bench_served
from bgmrec.features.audio import Catalog
from bgmrec.features.recommend import ClipFeatures
from bgmrec.models.base import FeatureSpec
from bgmrec.models.registry import build
from unfitted import as_fitted


def test_served_figures_are_per_request_times_of_each_path():
    rng = np.random.default_rng(0)
    ids = [f"t{j}" for j in range(40)]
    cat = Catalog(ids, ids, ["a"] * 40, ["pop", "rock"] * 20, [""] * 40, [""] * 40,
                  rng.standard_normal((40, 6)).astype(np.float32))
    model = as_fitted(build("cmvae", FeatureSpec(5, 4, 6, ("pop", "rock"))))  # timed: its weights do not matter
    feats = ClipFeatures(rng.standard_normal(5).astype(np.float32), rng.standard_normal(4).astype(np.float32), True)
    res = bench_served(model, cat, feats, repeats=2)
    assert set(res) == {"served_s", "served_batch64_s", "http_s"}
    assert all(0 < v < 10 for v in res.values())
