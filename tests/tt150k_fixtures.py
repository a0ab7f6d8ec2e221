"""Builders of small folders in the DecCM reference layout (``data_matching/``, ``data_pgc/``).

Written the way the authors' files are: ``np.save(..., allow_pickle=True)`` of object arrays, train rows
``[video, music, genre string, genre distribution, propensity]``, evaluation rows
``[video, music, ndarray of 100 negatives]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

N_NEG = 100


def _object_rows(rows: list[list]) -> np.ndarray:
    out = np.empty((len(rows), len(rows[0])), object)
    for i, r in enumerate(rows):
        for j, x in enumerate(r):
            out[i, j] = x
    return out


def build_reference(root: Path, *, n_videos: int = 60, n_tracks: int = 150, n_genres: int = 6,
                    n_train: int = 120, n_val: int = 20, n_test: int = 20, dv: int = 16,
                    nested: bool = True, text: bool = False, pgc: bool = True, pgc_own_music: bool = False,
                    extra_test: bool = False, seed: int = 0) -> Path:
    """Write a consistent reference-layout folder under ``root`` and return ``root``."""
    rng = np.random.default_rng(seed)
    m = root / "data_matching"
    (m / "100neg").mkdir(parents=True, exist_ok=True)
    np.save(m / "visual_features_resnet_V.npy", rng.normal(size=(n_videos, dv)).astype(np.float32))
    np.save(m / "music_features.npy", rng.normal(size=(n_tracks, 128)).astype(np.float32))
    np.save(m / "new_music_smile_features_norm.npy", rng.normal(size=(n_tracks, 128)).astype(np.float32))
    if text:
        t = rng.normal(size=(n_videos, 8)).astype(np.float32)
        t[::5] = 0.0  # every fifth video has no text
        np.save(m / "text_features.npy", t)
    track_genre = rng.integers(0, n_genres, n_tracks)
    priors = rng.dirichlet(np.ones(n_genres), size=8)  # 8 distinct uploaders
    held_out = n_videos - n_videos * 3 // 5  # splits by video: val and test videos never in train
    rows = []
    for _ in range(n_train):
        v, t = int(rng.integers(n_videos - held_out)), int(rng.integers(n_tracks))
        p = priors[rng.integers(len(priors))]
        if nested:
            rows.append([v, t, str(track_genre[t]), p.astype(np.float32), float(rng.random())])
        else:
            rows.append([v, t, str(track_genre[t]), *[float(x) for x in p], float(rng.random())])
    np.save(m / "train.npy", _object_rows(rows), allow_pickle=True)
    np.save(m / "user_prior_mean.npy", priors.mean(axis=0))
    splits = {"val": n_val, "test": n_test, **({"test_cold": 10} if extra_test else {})}
    for name, n in splits.items():
        ev = []
        for _ in range(n):
            v, t = n_videos - held_out + int(rng.integers(held_out)), int(rng.integers(n_tracks))
            others = np.setdiff1d(np.arange(n_tracks), [t])
            ev.append([v, t, rng.choice(others, N_NEG, replace=False).astype(np.int64)])
        np.save(m / "100neg" / f"{name}.npy", _object_rows(ev), allow_pickle=True)
        w = rng.random(n)
        np.save(m / f"video_popularity_{name}.npy", w / w.sum())
    if pgc:
        p = root / "data_pgc"
        p.mkdir(parents=True, exist_ok=True)
        n_pgc, n_pm = 30, (40 if pgc_own_music else n_tracks)
        np.save(p / "mv_video_resnet_features.npy", rng.normal(size=(n_pgc, dv)).astype(np.float32))
        if pgc_own_music:
            np.save(p / "vggish_features.npy", rng.normal(size=(n_pm, 128)).astype(np.float32))
            np.save(p / "opensmile_features_norm.npy", rng.normal(size=(n_pm, 128)).astype(np.float32))
        else:
            np.save(p / "vggish_features.npy", np.load(m / "music_features.npy"))
            np.save(p / "opensmile_features_norm.npy", np.load(m / "new_music_smile_features_norm.npy"))
        pairs = np.stack([rng.integers(0, n_pgc, 50), rng.integers(0, n_pm, 50)], axis=1).astype(np.int64)
        np.save(p / "train.npy", pairs[:40])
        np.save(p / "val.npy", pairs[40:])
    return root
