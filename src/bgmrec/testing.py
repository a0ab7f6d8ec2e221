"""The recommender contract as a test mixin, for bgmrec's models and any other package's (needs pytest).

After implicit's ``RecommenderBaseTestMixin`` and scikit-learn's ``check_estimator``: a model's test
class inherits :class:`RecommenderContractMixin` and names the model; the mixin fits it once per
class on the tiny simulated world (:func:`tiny_world_folder`, fixtures ``contract_ds`` and
``contract_spec``) and checks what :class:`bgmrec.models.base.Recommender` promises:

* encoder shapes and dtypes, ``score`` shape ``[n, M]`` equal to the inner product of the encodings;
* ``recommend`` returns valid, distinct ids with scores sorted best first;
* a batch of videos is encoded exactly as each video alone;
* excluded ids never come back (one array for every query, or one list per query);
* a track is encoded alike in any catalogue (a subset of it too);
* ``fit`` refuses a test split (it must call ``check_fit_data``) and a config changed since the model was built;
* two fits with the same seed give identical scores, and so does a second fit of one model (every fit starts
  from the model's initialisation, not from what an earlier fit trained), which leaves the global random
  generators (Python's, NumPy's, torch's) as it found them; another seed scores otherwise exactly when the
  model says it uses its seed (``uses_seed``);
* ``music_distance_from_training`` gives None or one finite distance per track;
* ``save`` then :func:`bgmrec.models.base.load_model` gives identical scores, and the folder holds
  only ``config.json``, ``weights.safetensors`` (and ``history.json``) -- no pickle; a model saved in any of
  its inference modes loads in that mode;
* features of the wrong width raise :class:`bgmrec.data.dataset.DatasetError` with a clear message.

What the mixin cannot see is refused where models are called instead: the encoders get no dataset row indices
and no split (``Recommender.reads_dataset_rows``: no model can look the held-out answers up by them), and a
query without an uploader's taste is refused by a model that needs one (``Recommender.needs_taste``).

Testing a model
---------------
For pytest's detailed assertion messages in these tests, call
``pytest.register_assert_rewrite("bgmrec.testing")`` in your ``conftest.py`` before importing this module.
Make the model a ``--model`` name (an entry point of group ``bgmrec.models``, or
:func:`bgmrec.models.registry.register_model`; bgmrec's own models are in the registry), then::

    from bgmrec.testing import RecommenderContractMixin

    class TestMyModel(RecommenderContractMixin):
        model_name = "my-model"  # the --model name
        overrides = {"epochs": 2, "batch_size": 256, "val_queries": 100}  # --set overrides: a quick fit

A subclass of bgmrec's networks (CMVAE, DecCM, the two towers) takes ``{"epochs": 2, **SMALL_NET}``, which also
sets their ``hidden`` and ``latent_dim``; a ``TrainConfig`` of your own has no such fields (an unknown field is an
error).

A contract test that one model is known to fail is recorded, not hidden: list it in ``known_bugs``
(test name -> reason, with file:line) and the mixin marks it ``xfail(strict=True)`` for that class only,
so the suite turns red the day the bug is fixed and the entry must go::

        known_bugs = {"test_empty_batch": "neural.py:85 returns [0, 1] for an empty batch"}

Set ``teacher = True`` when the model needs a frozen teacher (it is prepared with
:func:`bgmrec.models.registry.prepare_teacher` before ``fit``), and override :meth:`make` for any other
factory step. Model-specific tests go in the same class and may use the ``model`` fixture (the
fitted model, shared by the class -- do not mutate it; ``fresh_model`` gives a private copy).
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path
from typing import ClassVar

import numpy as np

from bgmrec.data.dataset import Dataset, DatasetError, load_dataset
from bgmrec.extras import extra_modules
from bgmrec.models.base import FeatureSpec, MusicCatalog, Recommender, SplitView, VideoQuery, load_model
from bgmrec.models.registry import build, prepare_teacher

with extra_modules():  # the dev extra
    import pytest

#: overrides that make every network of bgmrec's (and a subclass of one) small and quick on the tiny world; a
#: config without ``hidden`` and ``latent_dim`` (a ``TrainConfig`` of a plugin's own) is refused them, naming them
SMALL_NET = {"hidden": "32", "latent_dim": 16, "batch_size": 256, "val_queries": 100}

N_QUERIES = 24  # queries of the contract tests: the first rows of the class's ``split``
PICKLE_MAGIC = b"\x80"  # the first byte of every pickle (protocol 2 and later): no saved file may start with it


@functools.cache
def tiny_world_folder() -> Path:
    """The ``tiny`` simulated world (seed 0) saved with its truth, once per process, in a temporary folder
    removed at exit. Never modify it: copy it first."""
    from bgmrec.data.simulate import save_world, simulate, world_config

    root = Path(tempfile.mkdtemp(prefix="bgmrec-tiny-"))
    atexit.register(shutil.rmtree, root, True)
    return save_world(*simulate(world_config("tiny")), root / "tiny")


def known_bug(test, reason: str):
    """A copy of the test method ``test`` marked ``xfail(strict=True)`` (the original stays unmarked)."""

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        return test(*args, **kwargs)

    return pytest.mark.xfail(strict=True, reason=reason)(wrapper)


class RecommenderContractMixin:
    """Contract tests shared by every model; subclasses set ``model_name`` (and ``overrides``)."""

    model_name: ClassVar[str]
    overrides: ClassVar[dict] = {}
    known_bugs: ClassVar[dict[str, str]] = {}  # test name -> reason: strict xfail for this class only
    teacher: ClassVar[bool] = False  # prepare a frozen teacher before fit (DecCM)
    split: ClassVar[str] = "test"  # where the queries come from

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        for name, reason in cls.__dict__.get("known_bugs", {}).items():
            if not name.startswith("test_") or not callable(getattr(cls, name, None)):
                raise AttributeError(f"{cls.__name__}.known_bugs names {name!r}, which is none of its tests")
            setattr(cls, name, known_bug(getattr(cls, name), reason))

    # ---- building ------------------------------------------------------------------------------
    @classmethod
    def make(cls, ds, spec, workdir: Path) -> Recommender:
        """Build and fit the model under test (the factory steps the CLI's ``train`` would run)."""
        model = build(cls.model_name, spec, dict(cls.overrides))
        if cls.teacher:
            prepare_teacher(model, ds, workdir)
        return model.fit(SplitView(ds, "train"), SplitView(ds, "val"))

    @pytest.fixture(scope="class")
    @classmethod
    def contract_ds(cls) -> Dataset:
        """The world the model is fitted and queried on: the tiny world of :func:`tiny_world_folder`."""
        return load_dataset(tiny_world_folder())

    @pytest.fixture(scope="class")
    @classmethod
    def contract_spec(cls, contract_ds) -> FeatureSpec:
        """The feature sizes and genres of ``contract_ds``."""
        return FeatureSpec.of(contract_ds)

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls, contract_ds, contract_spec, tmp_path_factory) -> Recommender:
        """The model fitted once for the class by :meth:`make` (shared: do not mutate it)."""
        return cls.make(contract_ds, contract_spec, tmp_path_factory.mktemp("fit"))

    @pytest.fixture
    def fresh_model(self, contract_ds, contract_spec, tmp_path) -> Recommender:
        """A private model fitted by :meth:`make` for one test (same seed: it must equal ``model``)."""
        return self.make(contract_ds, contract_spec, tmp_path / "fit")

    @pytest.fixture(scope="class")
    @classmethod
    def queries(cls, contract_ds) -> VideoQuery:
        """The first :data:`N_QUERIES` queries of the class's ``split``, with their uploaders."""
        rows = np.asarray(contract_ds.splits[cls.split])[:N_QUERIES]
        return VideoQuery.from_dataset(contract_ds, rows[:, 0], rows[:, 2], cls.split)

    @pytest.fixture(scope="class")
    @classmethod
    def catalog(cls, contract_ds) -> MusicCatalog:
        """Every track of ``contract_ds``."""
        return MusicCatalog.from_dataset(contract_ds)

    # ---- the contract --------------------------------------------------------------------------
    def test_encode_shapes(self, model, queries, catalog):
        v = model.encode_videos(queries)
        m = model.encode_music(catalog)
        assert v.ndim == 2 and v.shape[0] == len(queries)
        assert m.ndim == 2 and m.shape[0] == len(catalog)
        assert v.shape[1] == m.shape[1] >= 1
        assert v.dtype == np.float32 and m.dtype == np.float32
        assert np.isfinite(v).all() and np.isfinite(m).all()

    def test_score_shape_and_definition(self, model, queries, catalog):
        s = model.score(queries, catalog)
        assert s.shape == (len(queries), len(catalog))
        np.testing.assert_allclose(s, model.encode_videos(queries) @ model.encode_music(catalog).T,
                                   rtol=1e-5, atol=1e-5)

    def test_scores_are_not_constant(self, model, queries, catalog):
        s = model.score(queries, catalog)
        assert (s.max(axis=1) > s.min(axis=1)).all()

    def test_recommend_sorted_and_valid(self, model, queries, catalog):
        k = 15
        ids, scores = model.recommend(queries, catalog, k=k)
        assert ids.shape == scores.shape == (len(queries), k)
        assert ((ids >= 0) & (ids < len(catalog))).all()
        assert all(len(set(r)) == k for r in ids.tolist())
        assert (np.diff(scores, axis=1) <= 1e-6).all()
        full = model.score(queries, catalog)
        np.testing.assert_allclose(scores, np.take_along_axis(full, ids, 1), rtol=1e-5, atol=1e-5)
        # nothing outside the list scores higher than its last entry
        # (within float32 rounding of scores that may be large: the index and score() sum in different orders)
        assert (full.max(axis=1) <= scores[:, 0] + 1e-5 * (1 + np.abs(scores[:, 0]))).all()
        kth = np.sort(full, axis=1)[:, -k]
        np.testing.assert_allclose(scores[:, -1], kth, rtol=1e-5, atol=1e-5)

    def test_recommend_k_larger_than_catalogue(self, model, queries, catalog):
        ids, scores = model.recommend(queries.subset(slice(0, 3)), catalog, k=len(catalog) + 50)
        assert ids.shape == scores.shape == (3, len(catalog))
        assert all(sorted(r) == list(range(len(catalog))) for r in ids.tolist())

    def test_empty_batch(self, model, queries, catalog):
        empty = queries.subset(slice(0, 0))
        d = model.encode_music(catalog).shape[1]
        assert model.encode_videos(empty).shape == (0, d)
        assert model.score(empty, catalog).shape == (0, len(catalog))
        ids, scores = model.recommend(empty, catalog, k=5)
        assert ids.shape == scores.shape == (0, 5)

    def test_batch_equals_one_by_one(self, model, queries):
        five = queries.subset(slice(0, 5))
        together = model.encode_videos(five)
        alone = np.vstack([model.encode_videos(five.subset(slice(i, i + 1))) for i in range(5)])
        np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)
        # and the order of the batch does not matter
        rev = model.encode_videos(five.subset(np.arange(4, -1, -1)))
        np.testing.assert_allclose(rev[::-1], together, rtol=1e-5, atol=1e-6)

    def test_excluded_ids_absent(self, model, queries, catalog):
        best, _ = model.recommend(queries, catalog, k=5)
        exclude = np.unique(best[:, :3])  # the favourites of every query
        ids, scores = model.recommend(queries, catalog, k=10, exclude=exclude)
        assert ids.shape == (len(queries), 10)
        assert not np.isin(ids, exclude).any()
        assert np.isfinite(scores).all()
        per_query = [row[:2] for row in best]
        ids, _ = model.recommend(queries, catalog, k=10, exclude=per_query)
        for row, ex in zip(ids, per_query, strict=True):
            assert not np.isin(row, ex).any()
        # a per-query list only removes that query's ids: the rest of the ranking is unchanged
        full = model.score(queries, catalog)
        for i, ex in enumerate(per_query):
            allowed = np.setdiff1d(np.arange(len(catalog)), ex)
            np.testing.assert_allclose(np.sort(full[i, ids[i]]), np.sort(np.sort(full[i, allowed])[-10:]),
                                       rtol=1e-5, atol=1e-5)

    def test_fit_refuses_a_test_split(self, contract_ds, contract_spec):
        """Training or early stopping on a test split is refused, naming the split, before any training
        (:meth:`~bgmrec.models.base.Recommender.check_fit_data`, which ``fit`` must call first)."""
        for train, val in (("test", "val"), ("train", "test_unbiased")):
            unfitted = build(self.model_name, contract_spec, dict(self.overrides))
            culprit = train if train != "train" else val
            try:
                unfitted.fit(SplitView(contract_ds, train), SplitView(contract_ds, val))
            except ValueError as e:
                assert f"'{culprit}'" in str(e), f"fit refused split {culprit!r} without naming it: {e}"
            else:
                pytest.fail(f"{self.model_name}: fit(train={train!r}, val={val!r}) accepted the test split "
                            f"{culprit!r}: fit must call self.check_fit_data(train, val) first")

    def test_fit_refuses_a_config_changed_after_the_model_was_built(self, contract_ds, contract_spec):
        """``fit`` refuses a config changed since the model was built (here its seed), naming the field, before any
        training (:meth:`~bgmrec.models.base.Recommender.check_config_unchanged`)."""
        unfitted = build(self.model_name, contract_spec, dict(self.overrides))
        seed = unfitted.config.seed
        unfitted.config.seed = seed + 1
        with pytest.raises(ValueError, match=rf"config changed after the model was built \(seed {seed} -> {seed + 1}"):
            unfitted.fit(SplitView(contract_ds, "train"), SplitView(contract_ds, "val"))
        assert not unfitted.fitted

    def test_music_distance_from_training_is_none_or_one_per_track(self, model, catalog):
        distance = model.music_distance_from_training(catalog)
        if distance is not None:  # a model that keeps its training music's statistics
            assert distance.shape == (len(catalog),) and np.isfinite(distance).all() and (distance >= 0).all()

    def test_seeded_determinism(self, model, fresh_model, queries, catalog):
        np.testing.assert_array_equal(fresh_model.score(queries, catalog), model.score(queries, catalog))

    def test_a_second_fit_starts_afresh(self, model, fresh_model, contract_ds, queries, catalog):
        """``fit`` on a fitted model trains from the model's initialisation for its seed, as its first fit did (a
        notebook cell run again gives the same figures), not the already trained model further; and it leaves
        the caller's random generators (Python's, NumPy's and torch's global ones) as it found them."""
        import random

        import torch

        states = random.getstate(), np.random.get_state()[1].copy(), torch.random.get_rng_state()  # noqa: NPY002
        fresh_model.fit(SplitView(contract_ds, "train"), SplitView(contract_ds, "val"))
        after = random.getstate(), np.random.get_state()[1], torch.random.get_rng_state()  # noqa: NPY002
        assert states[0] == after[0] and np.array_equal(states[1], after[1]) and torch.equal(states[2], after[2]), (
            f"{self.model_name}: fit changed a global random generator (seed a generator of its own: "
            "np.random.default_rng(config.seed), torch.Generator)")
        again, once = fresh_model.state_arrays(), model.state_arrays()
        assert sorted(again) == sorted(once)
        for key, value in once.items():
            np.testing.assert_array_equal(again[key], value, err_msg=f"{self.model_name}: {key} after a second fit")
        np.testing.assert_array_equal(fresh_model.score(queries, catalog), model.score(queries, catalog))

    def test_another_seed_scores_otherwise_exactly_when_the_model_uses_its_seed(self, model, contract_ds,
                                                                               contract_spec, queries, catalog,
                                                                               tmp_path):
        other = build(self.model_name, contract_spec, {**self.overrides, "seed": model.config.seed + 1})
        if self.teacher:
            prepare_teacher(other, contract_ds, tmp_path)
        other.fit(SplitView(contract_ds, "train"), SplitView(contract_ds, "val"))
        alike = np.array_equal(other.score(queries, catalog), model.score(queries, catalog))
        if type(model).uses_seed:
            assert not alike, (f"{self.model_name}: another seed scores alike; a model that draws nothing sets "
                               "uses_seed = False (train then says --seed changes nothing), unless the class's "
                               "overrides leave the seed unused (no epoch trained, say)")
        else:
            assert alike, f"{self.model_name} sets uses_seed = False, but another seed scores otherwise"

    def test_music_encoding_does_not_depend_on_the_rest_of_the_catalogue(self, model, catalog):
        """A track's embedding is the same in any catalogue (a served catalogue, a subset, new tracks added):
        a model standardising by the catalogue it is given ranked a track otherwise in each."""
        some = np.arange(0, len(catalog), 7)
        part = MusicCatalog(catalog.features[some], catalog.genre[some],
                            None if catalog.index is None else catalog.index[some], catalog.genres)
        np.testing.assert_allclose(model.encode_music(part), model.encode_music(catalog)[some], rtol=1e-5,
                                   atol=1e-6, err_msg=f"{self.model_name}: a track's embedding depends on the "
                                                      "catalogue it is encoded in")

    def test_every_inference_mode_survives_save_and_load(self, model, tmp_path):
        """A model saved in any of its inference modes loads in that mode (a plugin's mode was lost: keep it in
        the saved config, as DecCM's ``inference`` field, or in ``extra_config``)."""
        loaded = load_model(model.save(tmp_path / "run"))
        for mode in model.modes_to_evaluate():  # the modes it offers (an ablation may offer fewer)
            loaded.set_inference_mode(mode)
            assert load_model(loaded.save(tmp_path / mode)).inference_mode == mode, (
                f"{self.model_name}: saved in mode {mode!r}, loaded in another")

    def test_save_load_round_trip(self, model, queries, catalog, tmp_path):
        folder = model.save(tmp_path / "run")
        files = sorted(p.name for p in folder.iterdir())
        assert set(files) <= {"config.json", "weights.safetensors", "history.json"}
        assert {"config.json", "weights.safetensors"} <= set(files)
        for p in folder.iterdir():
            head = p.read_bytes()[:2]
            assert not head.startswith(PICKLE_MAGIC), f"{p.name} looks like a pickle"
        meta = json.loads((folder / "config.json").read_text())
        assert meta["model"] == model.name
        assert {"config", "spec", "bgmrec_version"} <= set(meta)
        loaded = load_model(folder)
        assert type(loaded) is type(model)
        assert loaded.config == model.config
        np.testing.assert_array_equal(loaded.score(queries, catalog), model.score(queries, catalog), err_msg=(
            f"{model.name}: loaded back, it scores otherwise: state_arrays() must return every array fit learns (and "
            "load_state_arrays restore it)"))
        assert loaded.history == json.loads(json.dumps(model.history))

    def test_wrong_feature_width_raises(self, model, queries, catalog):
        wide = VideoQuery(np.hstack([queries.visual, queries.visual[:, :1]]), queries.text, queries.text_mask,
                          queries.confounder, queries.index, queries.split)
        with pytest.raises(DatasetError, match=rf"visual features: expected shape \[n, {model.spec.video_visual}\]"):
            model.encode_videos(wide)
        narrow = VideoQuery(queries.visual, queries.text[:, :-1], queries.text_mask, queries.confounder,
                            queries.index, queries.split)
        with pytest.raises(DatasetError, match="text features"):
            model.score(narrow, catalog)
        bad_music = MusicCatalog(catalog.features[:, :-2], catalog.genre, catalog.index)
        with pytest.raises(DatasetError, match=rf"music features: expected shape \[M, {model.spec.music}\]"):
            model.encode_music(bad_music)
        nan = VideoQuery(queries.visual.copy(), queries.text, queries.text_mask, queries.confounder,
                         queries.index, queries.split)
        nan.visual[0, 0] = np.nan
        with pytest.raises(DatasetError, match="NaN"):
            model.encode_videos(nan)
