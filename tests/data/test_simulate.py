"""The simulated world: reproducibility, the causal story it claims, and the structure of its splits."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from bgmrec.data.dataset import dataset_fingerprint, features_fingerprint, labels_fingerprint
from bgmrec.data.simulate import WorldConfig, gumbel_max_choice, load_truth, save_world, simulate, world_config


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path, tiny_dir):
    ds, truth = simulate(world_config("tiny"))  # a second, independent run with seed 0
    again = _files(save_world(ds, truth, tmp_path / "again"))
    first = _files(tiny_dir)
    assert set(again) == set(first)
    assert any(name.endswith(".npy") for name in first)
    for name in first:
        assert again[name] == first[name], name


def test_the_tiny_world_at_seed_0_keeps_its_fingerprints(tiny_dir):
    """The worlds every committed figure was measured on (docs/benchmarks_*.json record their fingerprints) stay
    byte for byte: a change to the simulator that moves any of them fails here. If it must change a world, add
    its new randomness from a new stream (append to ``root.spawn`` in ``simulate``, after the eight there, so
    the existing streams draw as before), leaving these values alone; changing a value here makes the committed
    benchmarks describe worlds no one can simulate again, so it takes regenerating them all."""
    assert (dataset_fingerprint(tiny_dir), features_fingerprint(tiny_dir), labels_fingerprint(tiny_dir)) == (
        "f0d979fcb410af74", "f378fa2db9bbe4db", "b7b70ced24dd6549")


def test_gumbel_max_choice_does_not_depend_on_the_block(monkeypatch):
    """Blocks of any size draw the same choices (the noise comes row after row from one generator), so a block
    sized by the catalogue's width leaves the world's bytes alone; a wide catalogue takes fewer rows at once."""
    from bgmrec.data import negatives

    logits = np.random.default_rng(1).normal(size=(500, 300))
    calls = []

    def logits_fn(rows):
        calls.append(len(rows))
        return logits[rows].copy()

    want = gumbel_max_choice(np.random.default_rng(0), logits_fn, len(logits))
    assert calls == [1, 499]  # one row tells the width, then blocks of at most 4,096 rows
    for chunk in (1, 3, 64):
        np.testing.assert_array_equal(gumbel_max_choice(np.random.default_rng(0), logits_fn, len(logits), chunk),
                                      want)
    calls.clear()
    monkeypatch.setattr(negatives, "MAX_BLOCK", 10 * logits.shape[1])  # ten rows' logits at once
    np.testing.assert_array_equal(gumbel_max_choice(np.random.default_rng(0), logits_fn, len(logits)), want)
    assert calls[0] == 1 and max(calls) == 10 and sum(calls) == len(logits)
    assert len(gumbel_max_choice(np.random.default_rng(0), logits_fn, 0)) == 0


def test_different_seed_differs(tiny_world):
    ds0, truth0 = tiny_world
    ds1, truth1 = simulate(world_config("tiny", seed=1))
    assert not np.array_equal(ds0.music, ds1.music)
    assert not np.array_equal(ds0.video_visual, ds1.video_visual)
    assert not np.array_equal(truth0.track_content, truth1.track_content)
    assert not np.array_equal(ds0.splits["train"][:, 1], ds1.splits["train"][:len(ds0.splits["train"]), 1])


def _taste_association(gamma: float) -> float:
    """z-score of mean pi_u[genre(chosen)] against a permutation null that pairs each choice with the
    uploader of another upload.

    The uploader's taste can only be associated with the chosen genre through the taste path (gamma)
    once content does not lean to taste (content_lean = 0). Comparing with a shuffle of the uploads
    (rather than with a random track) keeps the marginal distribution of chosen genres, which content
    match and popularity make different from the catalogue's.
    """
    ds, _ = simulate(world_config("tiny", n_videos=6000, gamma=gamma, content_lean=0.0))
    rows = np.concatenate([ds.splits[s] for s in ("train", "val", "test", "test_new_music")])
    assert len(rows) == 6000
    pi = np.asarray(ds.uploader_pref)[rows[:, 2]]
    genre = ds.track_genre[rows[:, 1]]
    observed = pi[np.arange(len(rows)), genre].mean()
    rng = np.random.default_rng(0)
    null = np.array([pi[rng.permutation(len(rows)), genre].mean() for _ in range(200)])
    return float((observed - null.mean()) / null.std())


def test_without_confounding_genre_is_independent_of_taste():
    assert abs(_taste_association(0.0)) < 4.0


def test_with_confounding_genre_follows_taste():
    assert _taste_association(2.0) > 10.0


def test_content_lean_links_content_to_taste():
    """With gamma = 0, the second confounding path (content leaning to taste) alone associates them."""
    ds, _ = simulate(world_config("tiny", n_videos=6000, gamma=0.0, content_lean=1.0))
    rows = np.concatenate([ds.splits[s] for s in ("train", "val", "test", "test_new_music")])
    pi = np.asarray(ds.uploader_pref)[rows[:, 2]]
    genre = ds.track_genre[rows[:, 1]]
    observed = pi[np.arange(len(rows)), genre].mean()
    rng = np.random.default_rng(0)
    null = np.array([pi[rng.permutation(len(rows)), genre].mean() for _ in range(100)])
    assert (observed - null.mean()) / null.std() > 10.0


def test_unbiased_split_has_the_test_videos(tiny_world):
    ds, truth = tiny_world
    test, unb = ds.splits["test"], ds.splits["test_unbiased"]
    np.testing.assert_array_equal(unb[:, 0], test[:, 0])
    np.testing.assert_array_equal(unb[:, 2], test[:, 2])
    assert not np.array_equal(unb[:, 1], test[:, 1])  # the positives are redrawn
    assert not ds.track_new[unb[:, 1]].any()
    assert truth.processes["test_unbiased"].gamma == 0.0 and truth.processes["test_unbiased"].delta == 0.0
    assert truth.processes["test"].gamma == truth.config.gamma


@pytest.fixture(scope="module")
def strong_world():
    """A world whose taste (gamma 2) and popularity (delta 1) weigh enough to tell the processes apart."""
    return simulate(world_config("tiny", n_videos=10_000, n_pgc_videos=1_500, gamma=2.0, delta=1.0))


def _mean_log_likelihood(ds, truth, rows, process: str, taste: np.ndarray) -> float:
    """Mean log P(chosen track | video) of ``rows`` under the choice process of split ``process`` (the
    world's true logits), normalised over the existing tracks, the uploaders' tastes given as ``taste``."""
    existing = np.flatnonzero(~np.asarray(ds.track_new))
    logits = truth.logits(process, rows[:, 0], taste, ds.track_genre, existing)
    logits = logits - logits.max(1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return float(log_p[np.arange(len(rows)), np.searchsorted(existing, rows[:, 1])].mean())


@pytest.mark.parametrize("split", ["test", "test_unbiased", "pgc"])
def test_each_split_s_choices_follow_its_own_process(strong_world, split):
    """The choices themselves, not only the processes recorded in ``truth``: ``test`` is likelier under the
    uploads' process (content, taste, popularity) than under choice by content alone; ``test_unbiased`` and
    the professional videos the other way round, also against popularity alone (a flat taste). The
    professional videos have no uploader (-1): the uploads' process is scored with uploader 0's taste, the one
    a simulator applying that process to them would read (``np.maximum(uploader, 0)``)."""
    ds, truth = strong_world
    rows = ds.splits[split]
    assert len(rows) > 900
    pi = np.asarray(ds.uploader_pref)
    taste = pi[np.maximum(rows[:, 2], 0)]
    flat = np.full_like(taste, 1.0 / ds.n_genres)
    content = _mean_log_likelihood(ds, truth, rows, "test_unbiased", taste)
    uploads = _mean_log_likelihood(ds, truth, rows, "test", taste)
    popularity = _mean_log_likelihood(ds, truth, rows, "test", flat)
    if split == "test":
        assert uploads > content + 0.5 and uploads > popularity + 0.2
    else:
        assert content > uploads + 0.5 and content > popularity + 0.2


def test_text_is_informative_unrelated_or_empty_in_the_configured_shares(strong_world):
    ds, truth = strong_world
    cfg, kind = truth.config, np.asarray(truth.video_text_kind)
    n = len(kind)
    mask, text = np.asarray(ds.video_text_mask), np.asarray(ds.video_text)
    np.testing.assert_array_equal(mask, kind != 2)
    assert not text[~mask].any() and np.abs(text[mask]).sum(1).min() > 0  # an empty caption is all zeros
    for k, share in ((1, cfg.text_unrelated_share), (2, cfg.text_empty_share)):
        se = np.sqrt(share * (1 - share) / n)
        assert abs((kind == k).mean() - share) < 4 * se, (k, (kind == k).mean(), share)
    # informative text is predicted from the frames (both describe the video's content), unrelated text is not
    visual = np.asarray(ds.video_visual, np.float64)
    fit_rows = np.flatnonzero(kind == 0)[::2]
    x = np.hstack([visual, np.ones((n, 1))])
    coef = np.linalg.lstsq(x[fit_rows], text[fit_rows], rcond=None)[0]

    def r2(rows):
        err = text[rows] - x[rows] @ coef
        return 1 - (err ** 2).sum() / ((text[rows] - text[rows].mean(0)) ** 2).sum()

    informative, unrelated = r2(np.flatnonzero(kind == 0)[1::2]), r2(np.flatnonzero(kind == 1))
    assert informative > 0.3 and unrelated < informative - 0.3, (informative, unrelated)


def test_new_music_is_held_out_of_training(tiny_world):
    ds, _ = tiny_world
    assert ds.track_new.sum() == round(0.15 * ds.n_tracks)
    assert len(ds.splits["test_new_music"]) > 0
    assert ds.track_new[ds.splits["test_new_music"][:, 1]].all()
    for s in ("train", "val", "test", "test_unbiased", "pgc"):
        assert not ds.track_new[ds.splits[s][:, 1]].any(), s
    assert ds.split_info["test_new_music"].candidates == "new"
    # every UGC upload is in exactly one of train / val / test / test_new_music
    ugc = np.concatenate([ds.splits[s][:, 0] for s in ("train", "val", "test", "test_new_music")])
    np.testing.assert_array_equal(np.sort(ugc), np.arange(world_config("tiny").n_videos))


def test_genre_shares_near_configured():
    cfg = world_config("tiny", n_tracks=3000)
    ds, _ = simulate(cfg)
    shares = np.bincount(ds.track_genre, minlength=cfg.n_genres) / ds.n_tracks
    np.testing.assert_allclose(shares, cfg.genre_shares, atol=0.03)
    assert shares.argmax() == 0 and shares[0] > 0.35  # one majority genre near 40%


def test_pgc_rows_have_no_uploader(tiny_world):
    ds, truth = tiny_world
    cfg = truth.config
    pgc = ds.splits["pgc"]
    assert len(pgc) == cfg.n_pgc_videos
    assert (pgc[:, 2] == -1).all()
    assert (ds.video_uploader[pgc[:, 0]] == -1).all()
    assert all(ds.video_source[v] == "pgc" for v in pgc[:, 0])
    assert (ds.video_uploader[: cfg.n_videos] >= 0).all()
    assert ds.video_source[: cfg.n_videos] == ["ugc"] * cfg.n_videos
    assert ds.split_info["pgc"].role == "teacher"
    assert truth.processes["pgc"].gamma == 0.0


def test_negatives_are_frozen_valid_and_exclude_the_positive(tiny_world):
    ds, _ = tiny_world
    for s, neg in ds.negatives.items():
        pos = ds.splits[s][:, 1]
        assert not (neg == pos[:, None]).any(), s
        assert np.isin(neg, ds.candidate_tracks(s)).all(), s
        assert all(len(set(r)) == neg.shape[1] for r in neg.tolist()), s  # distinct per row
    assert ds.negatives["test"].shape[1] == 100
    assert ds.negatives["test_new_music"].shape[1] == int(ds.track_new.sum()) - 1


def test_the_val_and_test_splits_and_no_others_have_frozen_negatives(tiny_world):
    """Which splits get negatives follows the splits' roles (a split added to WORLD_SPLITS with role test gets
    them, one with role train does not), not a list of names; the uploads are drawn once, by one process."""
    from bgmrec.data.simulate import UPLOAD_SPLITS, WORLD_SPLITS

    ds, truth = tiny_world
    assert set(ds.negatives) == {s for s, info in ds.split_info.items() if info.role in ("val", "test")} == {
        "val", "test", "test_new_music", "test_unbiased"}
    assert ds.split_info == {s: split.info for s, split in WORLD_SPLITS.items()} and list(ds.split_info) == list(
        truth.processes)
    assert set(UPLOAD_SPLITS) <= set(WORLD_SPLITS) and len({WORLD_SPLITS[s].process for s in UPLOAD_SPLITS}) == 1


def test_truth_round_trip_and_logits(tiny_world, tiny_dir):
    ds, truth = tiny_world
    back = load_truth(tiny_dir)
    assert back.config == truth.config
    np.testing.assert_array_equal(back.track_content, truth.track_content)
    assert back.processes == truth.processes
    # logits by hand for one video and two tracks
    v, u = ds.splits["test"][0, 0], ds.splits["test"][0, 2]
    pref = np.asarray(ds.uploader_pref)[[u]]
    got = truth.logits("test", np.array([v]), pref, ds.track_genre, np.array([0, 1]))
    c = truth.config
    for j, t in enumerate([0, 1]):
        want = (c.beta * float(truth.video_content[v].astype(np.float64) @ truth.track_content[t])
                / np.sqrt(c.content_dim) + c.gamma * np.log(pref[0, ds.track_genre[t]])
                + c.delta * np.log(truth.track_popularity[t]))
        assert got[0, j] == pytest.approx(want, rel=1e-6)


def test_a_damaged_truth_is_named_by_its_file(tiny_dir, tmp_path):
    # a NaN in the truth made the oracle's fit say "training diverged", naming no file
    import shutil

    from bgmrec.data.dataset import DatasetError

    root = Path(shutil.copytree(tiny_dir, tmp_path / "world"))
    content = np.load(root / "truth/track_content.npy")
    content[3, 1] = np.nan
    np.save(root / "truth/track_content.npy", content)
    with pytest.raises(DatasetError, match=re.escape(f"{root}/truth/track_content.npy: expected finite values (row [3] "
                                                     "has NaN or inf)")):
        load_truth(root)
    np.save(root / "truth/track_content.npy", np.ones(5))
    with pytest.raises(DatasetError, match=re.escape(f"{root}/truth/track_content.npy: expected shape [*, *]")):
        load_truth(root)
    shutil.copy(tiny_dir / "truth/track_content.npy", root / "truth/track_content.npy")
    taste = np.load(root / "truth/uploader_pref.npy")
    taste[0, 0] = np.inf  # the oracle reads the tastes too
    np.save(root / "truth/uploader_pref.npy", taste)
    with pytest.raises(DatasetError, match=re.escape(f"{root}/truth/uploader_pref.npy: expected finite values")):
        load_truth(root)


def test_config_json_round_trip_and_validation():
    cfg = world_config("tiny", gamma=0.5)
    assert WorldConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="unknown world parameters"):
        WorldConfig.from_json({"nosuch": 1})
    with pytest.raises(ValueError, match="unknown scale"):
        world_config("huge")
    with pytest.raises(ValueError, match="sum to 1"):
        simulate(world_config("tiny", genre_shares=(0.5, 0.2)))


@pytest.mark.parametrize("override,words", [
    ({"new_track_share": 1.0}, "new_track_share must be in [0, 1), got 1.0"),
    ({"n_tracks": 10, "new_track_share": 0.99}, "holds out all 10 tracks"),
    ({"n_videos": 0}, "n_videos must be >= 1"),
    ({"video_spread": -0.1}, "video_spread must be >= 0"),
    ({"val_share": 0.5, "test_share": 0.5}, "val_share + test_share must be below 1"),
    ({"genre_shares": (0.5, 0.0, 0.5)}, "genre_shares must be positive"),
    ({"seed": -1}, "seed must be >= 0"),
])
def test_a_world_parameter_out_of_range_is_named(override, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        world_config("tiny", **override)


def test_every_numeric_world_parameter_has_a_range_or_a_reason_it_has_none():
    """A parameter added to WorldConfig without a rule in _WORLD_BOUNDS is not range-checked at all (a bad value
    fails somewhere inside simulate, or makes an odd world without a word): give it one, or say in
    _WORLD_UNBOUNDED why any value will do (every float is checked to be finite whatever it is)."""
    from dataclasses import fields

    from bgmrec.data.simulate import _WORLD_BOUNDS, _WORLD_UNBOUNDED

    bounded = [name for names in _WORLD_BOUNDS.values() for name in names]
    numeric = {f.name for f in fields(WorldConfig) if re.search(r"\b(int|float)\b", str(f.type))}
    assert len(bounded) == len(set(bounded)), "a parameter under two rules"
    assert not set(bounded) & set(_WORLD_UNBOUNDED), "a parameter both bounded and exempt"
    assert set(bounded) | set(_WORLD_UNBOUNDED) == numeric, "bound each, or give the reason it needs none"
    assert all(len(reason) > 20 for reason in _WORLD_UNBOUNDED.values())


def test_val_and_test_take_their_shares_of_the_existing_music_uploads(tiny_world):
    ds, truth = tiny_world
    cfg = truth.config
    existing_uploads = cfg.n_videos - len(ds.splits["test_new_music"])
    assert len(ds.splits["val"]) == int(cfg.val_share * existing_uploads)
    assert len(ds.splits["test"]) == int(cfg.test_share * existing_uploads)
    assert len(ds.splits["train"]) == existing_uploads - len(ds.splits["val"]) - len(ds.splits["test"])


@pytest.mark.parametrize("sigma", [0.5, 1.5])
def test_track_popularity_is_log_normal_with_the_configured_spread(sigma):
    _, truth = simulate(world_config("tiny", n_tracks=4000, popularity_sigma=sigma))
    log_pop = np.log(truth.track_popularity)
    assert truth.track_popularity.sum() == pytest.approx(1.0)
    assert np.std(log_pop) == pytest.approx(sigma, rel=0.05)  # 4,000 draws: the sample sd within ~2%


def test_activity_and_taste_concentration_shape_the_uploaders():
    """A larger activity_sigma concentrates the uploads on fewer uploaders; a smaller pref_concentration makes
    each uploader's genre taste peakier."""
    def top_decile_share(ds) -> float:
        counts = np.sort(np.bincount(ds.video_uploader[ds.video_uploader >= 0], minlength=ds.n_uploaders))
        return counts[-ds.n_uploaders // 10:].sum() / counts.sum()

    even, _ = simulate(world_config("tiny", activity_sigma=0.0))
    skewed, _ = simulate(world_config("tiny", activity_sigma=2.0))
    assert top_decile_share(even) < 0.25 < 0.5 < top_decile_share(skewed)  # measured 0.18 and 0.70
    peaky, _ = simulate(world_config("tiny", pref_concentration=0.2))
    flat, _ = simulate(world_config("tiny", pref_concentration=20.0))
    # mean largest genre share: about 0.68 against 0.40 (the majority genre's population share)
    assert np.max(peaky.uploader_pref, axis=1).mean() > np.max(flat.uploader_pref, axis=1).mean() + 0.2


def test_a_world_can_give_models_the_tastes_its_training_uploads_show_and_keep_the_true_ones_for_the_oracle(
        tiny_world, tmp_path):
    # the simulated dataset gave models each uploader's true taste pi_u, where build-dataset estimates it from the
    # training uploads of real data (an evaluation audit): taste_estimated=True gives them that estimate instead
    import dataclasses

    from bgmrec.data.build import uploader_preferences
    from bgmrec.data.dataset import load_dataset
    from bgmrec.models.base import FeatureSpec, SplitView, VideoQuery
    from bgmrec.models.oracle import Oracle

    ds, truth = tiny_world
    est_ds, est_truth = simulate(world_config("tiny", taste_estimated=True))
    train = np.asarray(est_ds.splits["train"])
    expected = uploader_preferences(train[:, 2], np.asarray(est_ds.track_genre)[train[:, 1]], est_ds.n_uploaders,
                                    len(est_ds.genres))
    assert np.array_equal(est_ds.uploader_pref, expected) and not np.allclose(expected, ds.uploader_pref, atol=0.05)
    assert np.array_equal(est_truth.uploader_pref, ds.uploader_pref) and np.array_equal(truth.uploader_pref,
                                                                                         ds.uploader_pref)
    for f in dataclasses.fields(ds):  # nothing else differs: the estimate draws nothing
        if f.name not in ("uploader_pref", "provenance"):
            a, b = getattr(ds, f.name), getattr(est_ds, f.name)
            assert (a == b) if not isinstance(a, np.ndarray | dict) else (
                all(np.array_equal(a[k], b[k]) for k in a) if isinstance(a, dict) else np.array_equal(a, b)), f.name
    save_world(est_ds, est_truth, tmp_path / "estimated")
    loaded = load_dataset(tmp_path / "estimated")
    assert np.array_equal(loaded.uploader_pref, expected)
    spec = FeatureSpec.of(ds)
    rows = np.asarray(ds.splits["test"])
    scores = []
    for world, world_truth in ((ds, truth), (loaded, None)):  # in memory; from the folder's truth/
        oracle = Oracle(Oracle.config_class(), spec, world_truth).fit(SplitView(world, "train"))
        q = VideoQuery.from_dataset(world, rows[:, 0], rows[:, 2], "test")  # the world's own (given) tastes
        scores.append(oracle.encode_videos(q))
    assert np.array_equal(*scores)  # the oracle ranks by the true tastes either way
    pgc = np.flatnonzero(np.asarray(ds.video_uploader) < 0)  # professional videos: no uploader, the prior
    assert np.array_equal(oracle.video_taste[pgc], np.tile(ds.confounder_prior(), (len(pgc), 1)))
    # a default world's manifest names no taste_estimated, as before it existed (older bgmrec refuses the key)
    assert "taste_estimated" not in world_config("tiny").to_json()
    assert world_config("tiny", taste_estimated=True).to_json()["taste_estimated"] is True
    assert WorldConfig.from_json(world_config("tiny", taste_estimated=True).to_json()).taste_estimated


def test_the_professional_videos_can_choose_by_another_weight_of_content_than_test_unbiased(tiny_world):
    # an evaluation audit: the teacher's data were drawn by exactly test_unbiased's process, so no world could
    # tell how much of content mode's edge survives professionals who choose otherwise
    ds, truth = tiny_world
    loose_ds, loose = simulate(world_config("tiny", pgc_beta_scale=0.5))
    assert loose.processes["pgc"].beta == 0.5 * truth.processes["pgc"].beta == 0.5 * loose.config.beta
    assert loose.processes["test_unbiased"] == truth.processes["test_unbiased"] == truth.processes["pgc"]
    for name in ("train", "val", "test", "test_unbiased", "test_new_music"):  # the uploads' draws are untouched
        assert np.array_equal(loose_ds.splits[name], ds.splits[name]), name
    assert not np.array_equal(loose_ds.splits["pgc"], ds.splits["pgc"])
    assert "pgc_beta_scale" not in truth.config.to_json() and loose.config.to_json()["pgc_beta_scale"] == 0.5
    with pytest.raises(ValueError, match="pgc_beta_scale"):
        world_config("tiny", pgc_beta_scale=-1.0)


def test_simulate_refuses_a_place_it_may_not_write_before_simulating(tmp_path, monkeypatch):
    # a file (or a folder of something else) as the world's folder was refused only after the whole simulation
    import bgmrec.data.simulate as sim
    from bgmrec.data.dataset import DatasetError

    monkeypatch.setattr(sim, "simulate", lambda *a, **k: pytest.fail("simulated before the check"))
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(DatasetError, match="notes.txt: exists and is not a folder; refusing to replace it"):
        sim.simulate_and_save(world_config("tiny"), notes)
    assert notes.read_text() == "mine"


def test_each_video_s_text_noise_is_log_normal_around_text_noise(tiny_world):
    """The per-video text noise level (why the text expert's precision varies, and PoE weighs it). The noise
    draws do not depend on the levels, so the same world without text noise gives each caption's clean features,
    and without spread the same noise at the level text_noise:
    - those residuals are text_noise times standard normals (their root mean square is text_noise);
    - each video's own residual is that one times a single factor exp(text_noise_spread z), the same for every
      feature of the video, whose log has mean 0 and sd text_noise_spread over the videos.
    Each figure within 3 standard errors of its sample statistic."""
    ds, _ = tiny_world
    config = world_config("tiny")
    clean, flat = (simulate(world_config("tiny", **change))[0] for change in ({"text_noise": 0.0},
                                                                             {"text_noise_spread": 0.0}))
    np.testing.assert_array_equal(clean.video_visual, ds.video_visual)  # the same world otherwise
    has_text = np.asarray(ds.video_text_mask, bool)
    clean_text = np.asarray(clean.video_text, np.float64)[has_text]
    at_median = np.asarray(flat.video_text, np.float64)[has_text] - clean_text
    own = np.asarray(ds.video_text, np.float64)[has_text] - clean_text
    assert np.sqrt((at_median**2).mean()) == pytest.approx(config.text_noise, rel=3 / np.sqrt(2 * at_median.size))
    factor = (own * at_median).sum(axis=1) / (at_median**2).sum(axis=1)  # each video's, by least squares
    np.testing.assert_allclose(own, factor[:, None] * at_median, atol=1e-5)  # one factor for all its features
    log_factor, n = np.log(factor), len(factor)
    spread = config.text_noise_spread
    assert log_factor.mean() == pytest.approx(0.0, abs=3 * spread / np.sqrt(n))
    assert log_factor.std() == pytest.approx(spread, rel=3 / np.sqrt(2 * n))
