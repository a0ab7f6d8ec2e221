"""Every registered model passes the recommender contract (see :mod:`bgmrec.testing` for how to add one)."""

from __future__ import annotations

import numpy as np
import pytest

from bgmrec.models.base import SplitView
from bgmrec.models.registry import MODEL_PATHS, VARIANTS
from bgmrec.testing import SMALL_NET, RecommenderContractMixin


class TestRandom(RecommenderContractMixin):
    model_name = "random"


class TestPopularity(RecommenderContractMixin):
    model_name = "popularity"


class TestCCA(RecommenderContractMixin):
    model_name = "cca"
    overrides = {"dim": 8}


class TestOracle(RecommenderContractMixin):
    model_name = "oracle"


class TestTwoTowerHinge(RecommenderContractMixin):
    model_name = "twotower-hinge"
    overrides = {"epochs": 2, **SMALL_NET}


class TestTwoTowerInfoNCE(RecommenderContractMixin):
    model_name = "twotower-infonce"
    overrides = {"epochs": 2, **SMALL_NET}


class TestCMVAE(RecommenderContractMixin):
    model_name = "cmvae"
    overrides = {"epochs": 2, **SMALL_NET}

    def test_modality_shares(self, model, queries):
        shares = model.modality_shares(queries)
        assert shares.shape == (len(queries), 2)
        np.testing.assert_allclose(shares.sum(1), 1.0, rtol=1e-6)
        no_text = ~np.asarray(queries.text_mask)
        assert no_text.any()
        np.testing.assert_allclose(shares[no_text], np.tile([1.0, 0.0], (int(no_text.sum()), 1)))


class TestDecCMNoTeacher(RecommenderContractMixin):
    model_name = "deccm-noteacher"
    overrides = {"epochs": 2, "prior_samples": 64, **SMALL_NET}

    @pytest.mark.parametrize("mode", ["backdoor", "content", "personalised"])
    def test_every_inference_mode_keeps_the_contract(self, model, queries, catalog, mode):
        before = model.inference_mode
        try:
            model.set_inference_mode(mode)
            s = model.score(queries, catalog)
            assert s.shape == (len(queries), len(catalog)) and np.isfinite(s).all()
            five = queries.subset(slice(0, 5))
            alone = np.vstack([model.encode_videos(five.subset(slice(i, i + 1))) for i in range(5)])
            np.testing.assert_allclose(model.encode_videos(five), alone, rtol=1e-5, atol=1e-6)
        finally:
            model.set_inference_mode(before)

    def test_personalised_needs_the_uploader(self, model, queries):
        before = model.inference_mode
        try:
            model.set_inference_mode("personalised")
            with pytest.raises(ValueError, match="confounder"):
                model.encode_videos(queries.subset(slice(0, 3)).__class__(
                    queries.visual[:3], queries.text[:3], queries.text_mask[:3]))
        finally:
            model.set_inference_mode(before)

    def test_adjustment_is_a_genre_offset_that_changes_rankings(self, model, queries, catalog, tiny_ds):
        """Backdoor scores = content scores + an offset h(v, genre(m)): the same for every track of a genre,
        different across genres (unlike the public code's constant vector, which cannot change a ranking)."""
        before = model.inference_mode
        try:
            model.set_inference_mode("content")
            content = model.score(queries, catalog)
            model.set_inference_mode("backdoor")
            backdoor = model.score(queries, catalog)
        finally:
            model.set_inference_mode(before)
        d = backdoor - content
        genre = np.asarray(tiny_ds.track_genre)
        spread = []
        for g in range(tiny_ds.n_genres):
            dg = d[:, genre == g]
            np.testing.assert_allclose(dg, np.repeat(dg[:, :1], dg.shape[1], 1), atol=1e-5)
            spread.append(dg[:, 0])
        spread = np.stack(spread, 1)
        assert (spread.max(1) - spread.min(1)).max() > 1e-4
        top = lambda s: np.argsort(-s, 1)[:, :10]  # noqa: E731
        assert any(set(a) != set(b) for a, b in zip(top(backdoor), top(content), strict=True))
    def test_save_load_keeps_the_inference_mode(self, model, queries, catalog, tmp_path):
        from bgmrec.models.base import load_model

        before = model.inference_mode
        try:
            model.set_inference_mode("content")
            want = model.score(queries, catalog)
            folder = model.save(tmp_path / "run")
        finally:
            model.set_inference_mode(before)
        loaded = load_model(folder)
        assert loaded.inference_mode == "content"
        np.testing.assert_array_equal(loaded.score(queries, catalog), want)

    def test_unknown_mode_raises(self, model):
        with pytest.raises(ValueError, match="nosuchmode"):
            model.set_inference_mode("nosuchmode")


class TestDecCMWithTeacher(RecommenderContractMixin):
    model_name = "deccm"
    overrides = {"epochs": 2, "prior_samples": 64, **SMALL_NET}
    teacher = True

    def test_teacher_is_frozen_and_not_saved(self, model, tmp_path):
        assert model.teacher is not None
        assert not model.teacher.module.training
        assert not any(p.requires_grad for p in model.teacher.module.parameters())
        model.teacher.module.train()  # a training loop switching modes must not unfreeze it
        assert not model.teacher.module.training
        from safetensors.numpy import load_file

        weights = load_file(str(model.save(tmp_path / "run") / "weights.safetensors"))
        assert set(weights) == set(model.module.state_dict())
        assert model.history and "teacher_kl" in model.history[0]


class TestDecCMNoAdjustment(RecommenderContractMixin):
    model_name = "deccm-noadjust"
    overrides = {"epochs": 2, "teacher": False, "prior_samples": 64, **SMALL_NET}

    def test_only_content_mode(self, model):
        assert model.inference_mode == "content"
        with pytest.raises(ValueError, match="only mode 'content'"):
            model.set_inference_mode("backdoor")


class TestDecCMTeacherMixture(RecommenderContractMixin):
    model_name = "deccm-teachermix"
    overrides = {"epochs": 2, "prior_samples": 64, **SMALL_NET}
    teacher = True

    def test_mixes_the_teacher_into_its_only_mode(self, model):
        assert model.inference_mode == "content" and model.mixes_teacher()
        assert model.history and "teacher_kl" not in model.history[0]  # alpha = 0: no KL term


class TestCMVAEConcat(RecommenderContractMixin):
    model_name = "cmvae-concat"
    overrides = {"epochs": 2, **SMALL_NET}


class TestCMVAEVisual(RecommenderContractMixin):
    model_name = "cmvae-visual"
    overrides = {"epochs": 2, **SMALL_NET}

    def test_text_is_ignored(self, model, queries):
        blank = queries.subset(slice(0, 5))
        blank = type(blank)(blank.visual, np.zeros_like(blank.text), np.zeros(5, bool), blank.confounder,
                            blank.index, blank.split)
        np.testing.assert_array_equal(model.encode_videos(blank), model.encode_videos(queries.subset(slice(0, 5))))


class TestCMVAENoCrossGeneration(RecommenderContractMixin):
    model_name = "cmvae-nocrossgen"
    overrides = {"epochs": 2, **SMALL_NET}


class TestCMVAENoPrior(RecommenderContractMixin):
    model_name = "cmvae-noprior"  # no track prior: it reads no genre and saves no prior arrays
    overrides = {"epochs": 2, **SMALL_NET}


def test_every_registered_model_and_ablation_has_a_contract_class():
    tested = {cls.model_name for cls in RecommenderContractMixin.__subclasses__()}
    assert set(MODEL_PATHS) | set(VARIANTS) <= tested, (set(MODEL_PATHS) | set(VARIANTS)) - tested
def test_save_over_an_old_run_leaves_no_stale_history(tiny_ds, tiny_spec, tmp_path):
    from bgmrec.models.base import load_model
    from bgmrec.models.registry import build

    run = tmp_path / "run"
    run.mkdir()
    (run / "history.json").write_text('[{"epoch": 1, "val_recall@10": 0.9}]')
    build("popularity", tiny_spec).fit(SplitView(tiny_ds, "train")).save(run)
    assert load_model(run).history == []


def test_saved_weights_are_as_readable_as_the_runs_other_files(tiny_ds, tiny_spec, tmp_path):
    # safetensors' save_file made weights.safetensors readable by its owner only (0600) whatever the umask, beside a
    # 0644 config.json: a server running as another account could read the run's config but not its weights
    import os

    from bgmrec.models.registry import build

    old = os.umask(0o022)
    try:
        run = build("popularity", tiny_spec).fit(SplitView(tiny_ds, "train")).save(tmp_path / "run")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in run.iterdir()}
    assert modes["weights.safetensors"] == modes["config.json"] == 0o644, modes
