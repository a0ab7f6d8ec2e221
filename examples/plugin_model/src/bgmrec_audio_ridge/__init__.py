"""An example of a bgmrec model living in its own package (see this folder's README).

:class:`AudioRidge` is a linear cross-modal baseline: a ridge regression from a track's audio
features to the standardised features of the videos that chose it. It implements the
:class:`~bgmrec.models.base.Recommender` contract, so once this package is installed every bgmrec
command takes ``--model audio-ridge`` (the entry point in ``pyproject.toml``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bgmrec.models.base import FeatureSpec, ModelConfig, MusicCatalog, Recommender, SplitView, VideoQuery, check_bounds
from bgmrec.models.baselines import video_input


@dataclass
class AudioRidgeConfig(ModelConfig):
    ridge: float = 1.0  # L2 penalty, relative to the mean variance of the standardised audio features (> 0)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bounds(self, ridge="> 0")


class AudioRidge(Recommender):
    """Ridge regression from a track's audio features to the features of the videos that choose it.

    score(v, m) = <x_v, W^T a_m>, x_v the video's standardised features, a_m the track's. W minimises
    sum over training pairs ||x_v - W^T a_m||^2 + ridge * n * ||W||^2, so W^T a_m estimates the mean
    features of the videos that choose m (popular tracks weigh more), for any track with audio
    features, new music included.
    """

    name = "audio-ridge"
    config_class = AudioRidgeConfig
    reads_genre = False  # scores read the audio features only
    uses_seed = False  # a closed-form ridge regression: nothing is drawn

    def __init__(self, config: AudioRidgeConfig, spec: FeatureSpec) -> None:
        super().__init__(config, spec)
        d_v = spec.video_visual + spec.video_text + 1
        self.video_mean, self.video_scale = np.zeros(d_v), np.ones(d_v)
        self.audio_mean, self.audio_scale = np.zeros(spec.music), np.ones(spec.music)
        self.weights = np.zeros((spec.music, d_v))

    def fit(self, train: SplitView, val: SplitView | None = None, progress: bool = False) -> AudioRidge:
        self.check_fit_data(train, val)
        ds, rows = train.dataset, train.rows
        x = video_input(VideoQuery.from_dataset(ds, rows[:, 0]))
        a = np.asarray(ds.music, np.float64)[rows[:, 1]]
        self.video_mean, self.video_scale = x.mean(0), np.maximum(x.std(0), 1e-6)
        self.audio_mean, self.audio_scale = a.mean(0), np.maximum(a.std(0), 1e-6)
        x, a = (x - self.video_mean) / self.video_scale, (a - self.audio_mean) / self.audio_scale
        gram = a.T @ a + self.config.ridge * len(a) * np.eye(a.shape[1])
        self.weights = np.linalg.solve(gram, a.T @ x)
        return self

    def _encode_videos(self, q: VideoQuery) -> np.ndarray:
        return (video_input(q) - self.video_mean) / self.video_scale

    def _encode_music(self, c: MusicCatalog) -> np.ndarray:
        return ((c.features - self.audio_mean) / self.audio_scale) @ self.weights

    def state_arrays(self) -> dict[str, np.ndarray]:
        return {"video_mean": self.video_mean, "video_scale": self.video_scale, "audio_mean": self.audio_mean,
                "audio_scale": self.audio_scale, "weights": self.weights}

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.video_mean, self.video_scale = arrays["video_mean"], arrays["video_scale"]
        self.audio_mean, self.audio_scale = arrays["audio_mean"], arrays["audio_scale"]
        self.weights = arrays["weights"]
