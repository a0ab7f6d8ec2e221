"""The oracle: ranks by the true selection logits of each split's own process (simulated worlds only).

For a query of split s it scores track m by beta_s <z_v, z_m> / sqrt(d) + gamma_s log pi_u[g(m)]
+ delta_s log pop(m), written as an inner product of two encodings so it is served like any model.
It is the upper bound every model is reported against. It holds the truth of one world, whose parameters
(seed included) it records: a dataset recording another world's (``provenance["world"]``) is refused, by
:meth:`Oracle.fit` and by the evaluation protocol, even when its sizes are the same.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from bgmrec.models.base import ModelConfig, MusicCatalog, Recommender, SplitView, VideoQuery

if TYPE_CHECKING:
    from bgmrec.data.dataset import Dataset
    from bgmrec.data.simulate import WorldTruth


class Oracle(Recommender):
    """The simulated world's true selection logits for each split's own process (upper bound)."""

    name = "oracle"
    uses_seed = False  # the world's own logits: nothing is drawn
    reads_dataset_rows = True  # the world's truth, by video and track index and the split's process

    def __init__(self, config: ModelConfig, spec, truth: WorldTruth | None = None) -> None:
        super().__init__(config, spec)
        self.truth = truth  # the world's truth as simulate() returned it (None: read from the dataset's truth/)
        self.video_content = np.zeros((0, 1), np.float32)
        self.track_content = np.zeros((0, 1), np.float32)
        self.track_popularity = np.zeros(0)
        self.video_taste = self._no_taste()  # [N, G] each video's uploader's true taste
        #  (empty for a world saved before truth/ kept the tastes: the queries' own, the dataset's, are read)
        self.processes: dict[str, dict] = {}
        self.world: dict | None = None  # the parameters of the world whose truth it holds (None: not recorded)

    def fit(self, train: SplitView, val: SplitView | None = None, progress: bool = False) -> Oracle:
        """Take the world's truth: the one given to the constructor (a world simulated in memory), else the
        dataset folder's ``truth/``."""
        from bgmrec.data.simulate import load_truth

        self.check_fit_data(train, val)
        ds = train.dataset
        truth = self.truth
        if truth is None:
            if ds.root is None or not (ds.root / "truth").is_dir():
                raise ValueError(f"the oracle needs a simulated dataset with truth/ (got {ds.root}), or the world's "
                                 "truth given as Oracle(config, spec, truth) for a world simulated in memory")
            truth = load_truth(ds.root)
        if (len(truth.video_content), len(truth.track_content)) != (ds.n_videos, ds.n_tracks):
            raise ValueError(f"the truth is of a world of {len(truth.video_content)} videos and "
                             f"{len(truth.track_content)} tracks, the dataset has {ds.n_videos} and {ds.n_tracks}")
        world = truth.config.to_json()
        _refuse_other_world(world, ds)
        self.world = world
        self.video_content, self.track_content = truth.video_content, truth.track_content
        self.track_popularity = truth.track_popularity
        self.video_taste = self._no_taste()
        if truth.uploader_pref is not None:  # a video without an uploader (a professional one) gets the prior
            uploader = np.asarray(ds.video_uploader)
            self.video_taste = np.where((uploader >= 0)[:, None], np.asarray(truth.uploader_pref, np.float32)[
                np.maximum(uploader, 0)], ds.confounder_prior()[None, :]).astype(np.float32)
        self.processes = {s: vars(p) for s, p in truth.processes.items()}
        return self

    def check_dataset(self, ds: Dataset) -> None:
        """A ValueError when the dataset ``ds`` records (``provenance["world"]``) a simulated world other than the
        one whose truth the oracle holds (another seed or other parameters, maybe of the same sizes): its
        figures there would be meaningless. Silent when either is not recorded (an oracle saved before it
        recorded its world); parameters only one of the two records are not compared."""
        _refuse_other_world(self.world, ds)

    def _process(self, split: str | None) -> dict:
        if split is not None and split not in self.processes:
            raise ValueError(f"the oracle knows no selection process for split {split!r}")
        return self.processes[split or "train"]

    def _encode_videos(self, q: VideoQuery) -> np.ndarray:
        if q.index is None:
            raise ValueError("the oracle scores dataset videos only (VideoQuery.index is required)")
        p = self._process(q.split)
        self._check_in_world(np.asarray(q.index), len(self.video_content), "video")
        z = self.video_content[q.index].astype(np.float64)
        if len(self.video_taste):  # the true taste, whatever the dataset gives models (an estimate, maybe)
            conf = self.video_taste[q.index]
        elif q.confounder is None and p["gamma"]:
            raise ValueError("the oracle needs the uploaders' genre preferences (VideoQuery.confounder)")
        else:
            conf = np.full((len(q), len(self.spec.genres)), 1.0) if q.confounder is None else q.confounder
        taste = p["gamma"] * np.log(np.maximum(conf, 1e-12)) if p["gamma"] else np.zeros(conf.shape)
        return np.hstack([p["beta"] * z / math.sqrt(z.shape[1]), taste, np.full((len(q), 1), p["delta"])])

    def _encode_music(self, c: MusicCatalog) -> np.ndarray:
        idx = np.arange(len(c)) if c.index is None else np.asarray(c.index)
        self._check_in_world(idx, len(self.track_content), "track")
        onehot = np.eye(len(self.spec.genres))[c.genre]
        return np.hstack([self.track_content[idx], onehot, np.log(self.track_popularity[idx])[:, None]])

    @staticmethod
    def _check_in_world(index: np.ndarray, size: int, what: str) -> None:
        """ValueError unless every index names one of the ``size`` videos (tracks) of the oracle's world."""
        if len(index) and index.max() >= size:  # never negative (VideoQuery and MusicCatalog refuse it)
            raise ValueError(f"the oracle holds the truth of a world of {size} {what}s, and {what} index "
                             f"{index.max()} is outside it: an oracle scores only the world it was fitted to (fit it "
                             "on this one)")

    def state_arrays(self) -> dict[str, np.ndarray]:
        return {"video_content": self.video_content, "track_content": self.track_content,
                "track_popularity": self.track_popularity, "video_taste": self.video_taste}

    def check_state_arrays(self, arrays: dict) -> None:
        if "video_taste" not in arrays:  # an oracle saved before truth/ kept the tastes: it reads the queries'
            arrays = {**arrays, "video_taste": self._no_taste()}
        super().check_state_arrays(arrays)

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.video_content, self.track_content = arrays["video_content"], arrays["track_content"]
        self.track_popularity = arrays["track_popularity"]
        self.video_taste = arrays.get("video_taste", self._no_taste())

    def _no_taste(self) -> np.ndarray:
        """The video tastes of an oracle whose world kept none in truth/ (it reads the queries' own)."""
        return np.zeros((0, len(self.spec.genres)), np.float32)

    def extra_config(self) -> dict:
        return {"processes": self.processes, "world": self.world}

    def load_extra_config(self, extra: dict) -> None:
        self.processes = extra.get("processes", {})
        world = extra.get("world")
        self.world = world if isinstance(world, dict) else None


def _refuse_other_world(world: dict | None, ds: Dataset) -> None:
    """A ValueError naming the parameters (up to three) in which the world ``ds`` records differs from ``world``."""
    theirs = ds.provenance.get("world")
    if world is None or not isinstance(theirs, dict):
        return
    differ = [k for k in world if k in theirs and world[k] != theirs[k]]
    if differ:
        where = f"{ds.root}/manifest.json" if ds.root is not None else "the dataset's"
        raise ValueError(f"{where} provenance.world: another simulated world than the oracle's ("
                         + ", ".join(f"{k} {theirs[k]!r}, the oracle's {world[k]!r}" for k in differ[:3])
                         + (", ..." if len(differ) > 3 else "")
                         + "); an oracle scores only the world it was fitted to (fit it on this one)")
