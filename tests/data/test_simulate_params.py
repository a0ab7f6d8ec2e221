"""The simulated world's parameters act as documented at values other than the defaults the other tests use:
the choice logits' weights, the split shares, the genre's weight in the audio, the tastes' Dirichlet, the
Gumbel-max draw, and ``bgmrec simulate``'s options. Expected values come from the definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bgmrec.data.simulate import SplitProcess, WorldTruth, gumbel_max_choice, simulate, world_config

# ---- the choice logits ---------------------------------------------------------------------------------------


def test_logits_weigh_the_taste_by_gamma_and_popularity_by_delta_by_hand():
    # guards against a weight dropped from the choice logits (e.g. gamma: --gamma 3 silently simulating gamma = 1)
    rng = np.random.default_rng(4)
    d, n_tracks, n_videos = 3, 5, 2
    video_content = rng.normal(size=(n_videos, d)).astype(np.float32)
    track_content = rng.normal(size=(n_tracks, d)).astype(np.float32)
    popularity = np.array([0.1, 0.2, 0.3, 0.15, 0.25])
    genre = np.array([0, 1, 2, 1, 0])
    pref = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    beta, gamma, delta = 3.0, 2.0, 0.5
    truth = WorldTruth(world_config("tiny"), video_content, track_content, popularity,
                       np.zeros(n_videos, np.int8), {"s": SplitProcess(beta, gamma, delta)})
    got = truth.logits("s", np.arange(n_videos), pref, genre)
    assert got.shape == (n_videos, n_tracks)
    for v in range(n_videos):
        for m in range(n_tracks):
            match = sum(float(video_content[v, k]) * float(track_content[m, k]) for k in range(d)) / math.sqrt(d)
            want = beta * match + gamma * math.log(pref[v, genre[m]]) + delta * math.log(popularity[m])
            assert got[v, m] == pytest.approx(want, rel=1e-9, abs=1e-12), (v, m)
    # a subset of tracks: the same logits, in the subset's order
    np.testing.assert_allclose(truth.logits("s", np.arange(n_videos), pref, genre, np.array([4, 1])),
                               got[:, [4, 1]], rtol=1e-12)


def _taste_of_choices(gamma: float) -> float:
    """Mean log pi_u[genre of the chosen track] over the uploads of a tiny world at ``gamma``."""
    ds, truth = simulate(world_config("tiny", gamma=gamma))
    rows = np.concatenate([ds.splits[s] for s in ("train", "val", "test", "test_new_music")])
    pref = truth.uploader_pref[rows[:, 2], np.asarray(ds.track_genre)[rows[:, 1]]]
    return float(np.log(pref).mean())


def test_choices_follow_the_uploader_s_taste_more_at_larger_gamma():
    # guards against gamma ignored (or acting as 1) when the uploads choose their music
    g0, g1, g3 = (_taste_of_choices(g) for g in (0.0, 1.0, 3.0))
    assert g0 < g1 - 0.1 and g1 < g3 - 0.1, (g0, g1, g3)


# ---- the Gumbel-max draw ------------------------------------------------------------------------------------


def test_gumbel_max_choices_follow_the_softmax_of_the_logits():
    # guards against the Gumbel noise's sign (or form) changed: the choices would no longer be softmax draws
    logits = np.array([0.0, 1.0, 2.0, -1.0, 0.5])
    n = 40_000
    picked = gumbel_max_choice(np.random.default_rng(7), lambda rows: np.tile(logits, (len(rows), 1)), n)
    p = np.exp(logits) / np.exp(logits).sum()
    observed = np.bincount(picked, minlength=len(logits))
    chi2 = float(((observed - n * p) ** 2 / (n * p)).sum())
    assert chi2 < 18.47, (chi2, observed / n, p)  # chi-square, 4 degrees of freedom: P(> 18.47) = 0.001


# ---- the uploaders' tastes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("concentration", [0.6, 2.0])
def test_tastes_spread_as_a_dirichlet_of_concentration_times_genres_times_shares(concentration):
    # guards against the Dirichlet's concentration missing its factor G (the number of genres): tastes too peaky
    cfg = world_config("tiny", n_uploaders=6000, n_videos=200, n_pgc_videos=0, pref_concentration=concentration)
    _, truth = simulate(cfg)
    pref = truth.uploader_pref.astype(np.float64)
    shares = np.asarray(cfg.genre_shares)
    a0 = concentration * len(shares)  # Dir(a0 * shares): mean shares, var_i = s_i (1 - s_i) / (a0 + 1)
    np.testing.assert_allclose(pref.mean(0), shares, atol=0.02)
    total_var = pref.var(0).sum()
    want = (1 - (shares**2).sum()) / (a0 + 1)
    assert total_var == pytest.approx(want, rel=0.08), (total_var, want)


# ---- the splits -------------------------------------------------------------------------------------------------


def test_unequal_val_and_test_shares_size_each_split_by_its_own_share():
    # guards against val_share and test_share swapped (the other tests use equal shares)
    ds, _ = simulate(world_config("tiny", val_share=0.05, test_share=0.25))
    sizes = {s: len(ds.splits[s]) for s in ("train", "val", "test")}
    existing = sum(sizes.values())  # the uploads of existing music
    assert sizes["val"] == int(0.05 * existing)
    assert sizes["test"] == int(0.25 * existing)
    assert sizes["train"] == existing - sizes["val"] - sizes["test"]
    assert sizes["val"] < sizes["test"] / 4


# ---- the audio features -------------------------------------------------------------------------------------


def _genre_share_of_music_variance(weight: float) -> float:
    """R^2 of the genre on the music features: the between-genre share of their total variance."""
    ds, _ = simulate(world_config("tiny", n_tracks=1000, music_genre_weight=weight))
    music, genre = np.asarray(ds.music, np.float64), np.asarray(ds.track_genre)
    centred = music - music.mean(0)
    between = sum((genre == g).sum() * ((music[genre == g].mean(0) - music.mean(0)) ** 2).sum()
                  for g in np.unique(genre))
    return float(between / (centred**2).sum())


def test_music_genre_weight_makes_the_genre_show_more_in_the_audio_features():
    # guards against music_genre_weight ignored (the other tests use only its default, 1)
    r0, r1, r4 = (_genre_share_of_music_variance(w) for w in (0.0, 1.0, 4.0))
    assert r0 < r1 - 0.03 and r1 < r4 - 0.03, (r0, r1, r4)


# ---- bgmrec simulate --------------------------------------------------------------------------------------------


def test_cli_simulate_builds_the_scale_it_is_given_with_its_options(tmp_path):
    # guards against --scale ignored by `bgmrec simulate` (every world tiny), and --gamma / --seed not passed on
    from bgmrec.cli import main
    from bgmrec.data.dataset import load_dataset

    small = ["--set", "n_videos=300", "--set", "n_tracks=50", "--set", "n_pgc_videos=20"]  # sizes kept cheap
    assert main(["simulate", str(tmp_path / "small"), "--scale", "small", "--gamma", "3", "--seed", "2",
                 *small]) == 0
    ds = load_dataset(tmp_path / "small")
    # the small preset's feature widths and uploader count (tiny's: 32, 16, 24 and 300)
    assert (ds.video_visual.shape[1], ds.video_text.shape[1], ds.music.shape[1]) == (128, 64, 96)
    assert ds.n_uploaders == 3000 and ds.n_tracks == 50
    world = ds.provenance["world"]
    assert world["gamma"] == 3.0 and world["seed"] == 2 and world["n_videos"] == 300
    assert main(["simulate", str(tmp_path / "tiny"), "--scale", "tiny", *small]) == 0
    tiny = load_dataset(tmp_path / "tiny")
    assert (tiny.video_visual.shape[1], tiny.video_text.shape[1], tiny.music.shape[1]) == (32, 16, 24)
    assert tiny.n_uploaders == 300
