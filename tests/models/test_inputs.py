"""Bad input to the models: damaged checkpoints, edited config.json files, a dataset listing its genres
otherwise, and config values out of range all raise one clear ValueError naming the file, the field and
what was expected -- never a traceback from safetensors, torch or numpy."""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from bgmrec.data.dataset import DatasetError
from bgmrec.models.base import ModelConfig, MusicCatalog, NonFiniteEmbeddingError, SplitView, VideoQuery, load_model
from bgmrec.models.baselines import PopularityRecommender
from bgmrec.models.cmvae import CMVAE
from bgmrec.models.deccm import teacher_config
from bgmrec.models.registry import build, model_names
from unfitted import as_fitted

SMALL = {"hidden": "16", "latent_dim": 8}
TINY_TRACKS = 200  # the tiny world's


@pytest.fixture(scope="module")
def runs(tiny_ds, tiny_spec, tmp_path_factory) -> dict[str, Path]:
    """Saved runs, pristine: a test damages a copy (:func:`_copy`). Unfitted where fitting adds nothing."""
    root = tmp_path_factory.mktemp("runs")
    out = {name: _as_fitted(build(name, tiny_spec, SMALL)).save(root / name) for name in ("cmvae", "deccm")}
    out["cca"] = build("cca", tiny_spec).fit(SplitView(tiny_ds, "train")).save(root / "cca")
    out["popularity"] = build("popularity", tiny_spec).fit(SplitView(tiny_ds, "train")).save(root / "popularity")
    return out


def _as_fitted(model):
    """``model`` marked fitted without fitting it (save refuses a model never fitted): the tests damage its files."""
    model.fitted = True
    return model


def _copy(runs, name: str, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(runs[name], tmp_path / name))


def _edit_weights(folder: Path, change) -> None:
    arrays = load_file(str(folder / "weights.safetensors"))
    change(arrays)
    save_file(arrays, str(folder / "weights.safetensors"))


def _edit_config(folder: Path, change) -> None:
    meta = json.loads((folder / "config.json").read_text())
    change(meta)
    (folder / "config.json").write_text(json.dumps(meta))


def _load_error(folder: Path) -> str:
    with pytest.raises(DatasetError) as e:
        load_model(folder)
    message = str(e.value)
    assert "\n" not in message
    return message


# ---- weights.safetensors ------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", [
    lambda b: b[: len(b) // 2],  # truncated
    lambda b: b"",  # empty
    lambda b: b"not a safetensors file at all" * 4,  # garbage
], ids=["truncated", "empty", "garbage"])
def test_unreadable_weights_name_the_file(runs, tmp_path, damage):
    folder = _copy(runs, "cmvae", tmp_path)
    path = folder / "weights.safetensors"
    path.write_bytes(damage(path.read_bytes()))
    assert _load_error(folder).startswith(f"{path}: not a safetensors file (")


def test_a_folder_where_a_run_file_belongs_is_named_as_one(runs, tmp_path):
    # it was said to be a missing file
    folder = _copy(runs, "cmvae", tmp_path)
    for name in ("weights.safetensors", "config.json"):
        (folder / name).rename(folder / f"{name}.kept")
        (folder / name).mkdir()
        assert _load_error(folder) == f"{folder / name}: is a folder, not a file"
        (folder / name).rmdir()
        (folder / f"{name}.kept").rename(folder / name)
    (folder / "config.json").unlink()
    assert _load_error(folder) == f"{folder / 'config.json'}: file is missing (not a saved model folder)"


def test_a_weight_of_another_shape_names_the_key_and_both_shapes(runs, tmp_path):
    folder = _copy(runs, "cmvae", tmp_path)
    _edit_weights(folder, lambda a: a.update({"music_enc.net.0.weight": a["music_enc.net.0.weight"][:, :-1].copy()}))
    assert _load_error(folder) == (f"{folder}/weights.safetensors: music_enc.net.0.weight has shape [16, 23], "
                                   "config.json implies [16, 24]")


@pytest.mark.parametrize("name,change,message", [
    ("cmvae", lambda a: a.pop("music_enc.net.0.bias"), "missing keys music_enc.net.0.bias"),
    ("cmvae", lambda a: a.update(junk=np.zeros(3, np.float32)), "unexpected keys junk"),
    ("cca", lambda a: a.update(spec=np.zeros(3)), "unexpected keys spec"),  # was set as an attribute
    ("cca", lambda a: a.pop("proj_m"), "missing keys proj_m"),  # was silently left at zeros
    ("cca", lambda a: a.update(mean_m=np.zeros(5)), "mean_m has shape [5], config.json implies [24]"),
    ("cca", lambda a: a.update(proj_m=a["proj_m"][:, :-1].copy()),
     "proj_v and proj_m must have the same number of columns"),
    ("popularity", lambda a: a.update(counts=np.zeros((2, 3))), "counts has shape [2, 3], config.json implies [n]"),
    ("popularity", lambda a: a.update(digest=a["digest"][:-1].copy()),
     f"digest has shape [{TINY_TRACKS - 1}], counts [{TINY_TRACKS}]: one hash per track"),
    ("cmvae", lambda a: a.update({k: v.astype(bool) for k, v in a.items()}), "has dtype bool, expected float values"),
    ("cmvae", lambda a: a.update({"music_enc.net.0.bias": a["music_enc.net.0.bias"].astype(np.int32)}),
     "music_enc.net.0.bias has dtype int32, expected float values"),
    ("cmvae", lambda a: a["music_enc.net.0.weight"].__setitem__((0, 0), np.nan),
     "music_enc.net.0.weight holds NaN or inf (a diverged or damaged model)"),
    ("cca", lambda a: a.update(mean_m=np.full_like(a["mean_m"], np.inf)), "mean_m holds NaN or inf"),
])
def test_wrong_keys_and_shapes_are_refused(runs, tmp_path, name, change, message):
    folder = _copy(runs, name, tmp_path)
    _edit_weights(folder, change)
    error = _load_error(folder)
    assert error.startswith(f"{folder}/weights.safetensors: ") and message in error, error


def test_a_save_that_fails_midway_leaves_the_run_there_as_it_was(runs, tmp_path, monkeypatch):
    folder = _copy(runs, "cca", tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    other = load_model(runs["popularity"])

    def full_disk(path, obj):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("bgmrec.models.base.write_json_atomic", full_disk)  # the weights are written first
    with pytest.raises(OSError, match="No space left"):
        other.save(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no new weights, no temporary file
    assert load_model(folder).name == "cca"


def test_a_model_with_nan_weights_is_not_saved_over_a_good_run(runs, tmp_path):
    folder = _copy(runs, "cca", tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    diverged = load_model(runs["cca"])
    arrays = diverged.state_arrays()
    arrays["mean_m"] = np.full_like(arrays["mean_m"], np.nan)
    diverged.load_state_arrays(arrays)
    with pytest.raises(ValueError,
                       match=r"^cca \(CCARecommender\): mean_m holds NaN or inf \(training diverged\); not saved$"):
        diverged.save(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


class _IntCounts(PopularityRecommender):
    """Unfitted, its counts are an integer array; fitted, floats: load_model would refuse what it saves."""

    name = "int-counts"

    def __init__(self, config, spec) -> None:
        super().__init__(config, spec)
        self.counts = np.zeros(0, np.int64)


class _WithNote(PopularityRecommender):
    """Its state holds an array of strings, which safetensors cannot store."""

    name = "with-note"

    def state_arrays(self):
        return {**super().state_arrays(), "note": np.array(["a", "b"])}


@pytest.mark.parametrize("cls, message", [
    (_IntCounts, r"^int-counts \(_IntCounts\): state_arrays\(\) gives what load_model would refuse \(counts has dtype "
                 r"float64, expected signed integer values\); not saved$"),
    (_WithNote, r"^with-note \(_WithNote\): state_arrays\(\) gives 'note' of dtype <U1, which safetensors cannot store "
                r"\(bool, integer and float arrays only\); not saved$")])
def test_state_that_load_model_would_refuse_is_not_saved(tiny_ds, tiny_spec, tmp_path, cls, message):
    """Saved, the first did not load back (its dtype is not the unfitted model's) and the second failed in
    safetensors (a traceback: 'Unknown dtype "str32"'); both are refused before anything is written."""
    model = cls(ModelConfig(), tiny_spec).fit(SplitView(tiny_ds, "train"))
    with pytest.raises(ValueError, match=message):
        model.save(tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("method, value", [("encode_videos", 1e300), ("encode_videos", np.nan),
                                           ("encode_music", -np.inf)])
def test_encodings_holding_nan_or_inf_are_refused_naming_the_first_row(tiny_ds, tiny_spec, monkeypatch, method,
                                                                       value):
    """1e300 (inf as a float32) was evaluated without a word but numpy's overflow warning (R@10 0.103); NaN
    was refused only as scores, by the metrics, and inf nowhere."""
    from bgmrec.eval.protocol import evaluate

    model = build("popularity", tiny_spec).fit(SplitView(tiny_ds, "train"))
    encode = getattr(model, f"_{method}")

    def spoiled(batch):
        out = np.array(encode(batch), np.float64)
        out[2:] = value
        return out

    monkeypatch.setattr(model, f"_{method}", spoiled)
    rows = len(tiny_ds.splits["val"]) if method == "encode_videos" else tiny_ds.n_tracks
    message = (rf"^popularity: {method} gives NaN or inf in row 2 \({rows - 2} of {rows} rows\): a diverged model, "
               r"or input features far outside its training range$")
    with pytest.raises(NonFiniteEmbeddingError, match=message) as refused, warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning of the cast to float32 before the error
        evaluate(model, tiny_ds, "val")
    assert refused.value.row == 2


def test_weights_past_float32s_range_are_refused_without_numpys_warning(tiny_ds, tiny_spec, tmp_path):
    # finite but huge track-prior weights printed "RuntimeWarning: invalid value encountered in matmul" from
    # neural.py before the error naming the encoding (a fuzz audit)
    folder = build("cmvae", tiny_spec, {**SMALL, "epochs": 1}).fit(SplitView(tiny_ds, "train")).save(tmp_path / "r")
    huge = np.finfo(np.float64).max / 2  # of both signs: the product overflows to inf - inf
    _edit_weights(folder, lambda a: a.__setitem__("track_prior.coef",
                                                  np.resize([huge, -huge], a["track_prior.coef"].shape)))
    model = load_model(folder)
    with pytest.raises(NonFiniteEmbeddingError, match="encode_music gives NaN or inf"), warnings.catch_warnings():
        warnings.simplefilter("error")
        model.score(VideoQuery.from_dataset(tiny_ds, np.arange(3)), MusicCatalog.from_dataset(tiny_ds))


@pytest.mark.parametrize("name", ["popularity", "cmvae"])
def test_a_model_never_fitted_is_not_saved(tiny_ds, tiny_spec, tmp_path, name):
    """It was saved, and loaded back it ranked by its initial weights (CMVAE: at random; popularity: all tied)."""
    model = build(name, tiny_spec, {} if name == "popularity" else {**SMALL, "epochs": 1})
    assert not model.fitted
    with pytest.raises(ValueError, match=rf"^{name} \(\w+\): not fitted, so its weights are its initialisation and "
                                         r"would load as a model scoring at random; call fit before save$"):
        model.save(tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="never a test split"):  # a fit that fails leaves it unfitted
        model.fit(SplitView(tiny_ds, "test"))
    assert not model.fitted
    assert model.fit(SplitView(tiny_ds, "train")).fitted
    assert load_model(model.save(tmp_path / "run")).fitted  # a loaded model is fitted: saved again as it is


@pytest.mark.parametrize("name", ["popularity", "cmvae"])
def test_a_model_never_fitted_is_not_scored(tiny_ds, tiny_spec, name):
    """evaluate, score and recommend ranked by its initialisation without a word (CMVAE: near chance)."""
    from bgmrec.eval.protocol import evaluate

    model = build(name, tiny_spec, {} if name == "popularity" else {**SMALL, "epochs": 1})
    q, catalog = VideoQuery.from_dataset(tiny_ds, np.arange(4)), MusicCatalog.from_dataset(tiny_ds)
    message = (rf"^{name} \(\w+\): not fitted, so its scores would come from its initialisation \(near chance\); call "
               r"fit first, or load a fitted model with load_model$")
    calls = [lambda: evaluate(model, tiny_ds, "test"), lambda: model.score(q, catalog),
             lambda: model.recommend(q, catalog, k=5), lambda: model.encode_videos(q),
             lambda: model.encode_music(catalog)]
    if name == "cmvae":
        calls.append(lambda: model.modality_shares(q))
    for call in calls:
        with pytest.raises(ValueError, match=message):
            call()
    model.fit(SplitView(tiny_ds, "train"))  # its validation scores it while it is being fitted
    assert model.score(q, catalog).shape == (4, tiny_ds.n_tracks)
    assert 0 <= evaluate(model, tiny_ds, "test")["full"]["recall@10"] <= 1


@pytest.mark.parametrize("change,said", [
    ({"latent_dim": 4}, "latent_dim 16 -> 4"),  # was ignored: the network was built with 16
    ({"dropout": 0.9}, "dropout 0.2 -> 0.9"),  # was trained with 0.2, and config.json said 0.9
    ({"lr": "fast"}, "lr 0.002 -> 'fast'"),  # was a TypeError deep in the optimiser
    ({"latent_dim": 4, "seed": 3}, "seed 0 -> 3; latent_dim 16 -> 4"),  # in the config's order
])
def test_fit_refuses_a_config_changed_after_the_model_was_built(tiny_ds, tiny_spec, change, said):
    model = build("cmvae", tiny_spec, {"hidden": "16", "latent_dim": 16, "epochs": 1})
    built = {key: getattr(model.config, key) for key in change}
    for key, value in change.items():
        setattr(model.config, key, value)
    with pytest.raises(ValueError, match="^" + re.escape(
            f"cmvae: config changed after the model was built ({said}); fit trains the model its config was built "
            "as: build a new model with these values (bgmrec.models.registry.build(name, spec, {field: value, "
            "...}))") + "$"):
        model.fit(SplitView(tiny_ds, "train"))
    assert not model.fitted
    for key, value in built.items():  # put back as built: accepted
        setattr(model.config, key, value)
    assert model.fit(SplitView(tiny_ds, "train")).fitted
    random = build("random", tiny_spec, {"dim": 8})  # a model without a network: its projections were drawn at dim 8
    random.config.dim = 4
    with pytest.raises(ValueError, match=r"^random: config changed after the model was built \(dim 8 -> 4\)"):
        random.fit(SplitView(tiny_ds, "train"))


class _FailsAfterItsParent(PopularityRecommender):
    """A subclass whose fit fails after its parent's fit returned."""

    name = "fails-after-parent"

    def fit(self, train, val=None, progress=False):
        super().fit(train, val, progress)
        raise ValueError("the subclass's own step failed")


def test_a_fit_that_fails_after_its_parent_s_fit_leaves_the_model_unfitted(tiny_ds, tiny_spec, tmp_path):
    """Only the class's own fit returning marks it fitted (the parent's wrapper returning marked it), and a failed
    refit unmarks a model fitted before: save would have written what the failed fit left."""
    model = _FailsAfterItsParent(PopularityRecommender.config_class(), tiny_spec)
    with pytest.raises(ValueError, match="own step failed"):
        model.fit(SplitView(tiny_ds, "train"))
    assert not model.fitted
    fitted = build("popularity", tiny_spec).fit(SplitView(tiny_ds, "train"))
    assert fitted.fitted
    with pytest.raises(ValueError, match="never a test split"):
        fitted.fit(SplitView(tiny_ds, "test"))
    assert not fitted.fitted
    with pytest.raises(ValueError, match="not fitted"):
        fitted.save(tmp_path / "run")


class _FlatVideos(PopularityRecommender):
    """Gives one number per video, not a row."""

    name = "flat-videos"

    def _encode_videos(self, q):
        return np.zeros(len(q))


def test_an_encoding_that_is_not_a_matrix_is_refused_naming_the_method(tiny_ds, tiny_spec):
    model = _FlatVideos(PopularityRecommender.config_class(), tiny_spec).fit(SplitView(tiny_ds, "train"))
    with pytest.raises(ValueError, match=r"^flat-videos: encode_videos must give \[n, d\] embeddings, a row per "
                                         r"input \(3\); got shape \[3\]$"):
        model.score(VideoQuery.from_dataset(tiny_ds, [0, 1, 2]), MusicCatalog.from_dataset(tiny_ds))


class _RowShort(PopularityRecommender):
    """A plugin's encoders one row short."""

    name = "row-short"

    def _encode_videos(self, q):
        return super()._encode_videos(q)[:-1]

    def _encode_music(self, c):
        return super()._encode_music(c)[:-1]


def test_an_encoding_of_another_row_count_is_refused_naming_the_method(tiny_ds, tiny_spec):
    # one row short: evaluate failed with "positive columns must be 183 integers", the service with a 500
    model = _RowShort(PopularityRecommender.config_class(), tiny_spec).fit(SplitView(tiny_ds, "train"))
    with pytest.raises(ValueError, match=r"^row-short: encode_videos must give \[n, d\] embeddings, a row per "
                                         r"input \(3\); got shape \[2, 1\]$"):
        model.encode_videos(VideoQuery.from_dataset(tiny_ds, [0, 1, 2]))
    with pytest.raises(ValueError, match=rf"^row-short: encode_music must give \[n, d\] embeddings, a row per "
                                         rf"input \({tiny_ds.n_tracks}\); got shape \[{tiny_ds.n_tracks - 1}, 1\]$"):
        model.encode_music(MusicCatalog.from_dataset(tiny_ds))


def test_a_damaged_teacher_of_a_student_names_the_teacher_file(runs, tiny_spec, tmp_path):
    folder = _copy(runs, "deccm", tmp_path)
    student = load_model(folder)
    _as_fitted(CMVAE(teacher_config(student.config), tiny_spec)).save(folder / "teacher")
    assert load_model(folder).teacher is not None
    path = folder / "teacher" / "weights.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    assert _load_error(folder).startswith(f"{path}: not a safetensors file")


# ---- config.json and history.json ---------------------------------------------------------------------

def _five_genres(meta):
    meta["spec"]["genres"] = meta["spec"]["genres"][:5]


CONFIG_EDITS = {
    "spec-field-missing": ("cmvae", lambda m: m["spec"].pop("music"), "config.json: spec: missing field(s) music"),
    "spec-field-a-string": ("cmvae", lambda m: m["spec"].update(music="24"),
                            "config.json: spec.music must be a non-negative integer (a feature dimension), got '24'"),
    "spec-genres-a-string": ("cmvae", lambda m: m["spec"].update(genres="pop"),
                             "config.json: spec.genres must be a list of genre names (strings)"),
    "spec-other-width": ("cmvae", lambda m: m["spec"].update(music=25),
                         "weights.safetensors: norms.music.mean has shape [24], config.json implies [25]"),
    "five-genres": ("deccm", _five_genres, "weights.safetensors: prior_c has shape [512, 6], config.json implies "
                                           "[512, 5]"),
    "config-null": ("cmvae", lambda m: m.update(config=None), "config.json: field 'config' must be an object, "
                                                               "found null"),
    "model-a-number": ("cmvae", lambda m: m.update(model=3), "config.json: field 'model' must be a string, found 3"),
    "learned-a-list": ("deccm", lambda m: m.update(learned=[1]), "config.json: field 'learned' must be an object"),
    "teacher-run-a-number": ("deccm", lambda m: m["learned"].update(teacher_run=3),
                             "config.json: learned.teacher_run must be a folder path (string) or null, got 3"),
    "config-field-a-word": ("cmvae", lambda m: m["config"].update(latent_dim="x"),
                            "config.json: CMVAEConfig.latent_dim: cannot use 'x' as int"),
    "config-field-a-fraction": ("cmvae", lambda m: m["config"].update(latent_dim=2.5),
                                "config.json: CMVAEConfig.latent_dim: cannot use 2.5 as int (expected an integer)"),
    "config-flag-a-list": ("cmvae", lambda m: m["config"].update(track_prior=[]),  # was read as False
                           "config.json: CMVAEConfig.track_prior: cannot use [] as bool (expected a boolean, got "
                           "list [])"),
    "config-flag-a-number": ("cmvae", lambda m: m["config"].update(track_prior=2),
                             "config.json: CMVAEConfig.track_prior: cannot use 2 as bool"),
    # text a JSON type is written without: "false" was read as false, and the weights' keys were blamed (a fuzz
    # audit: "weights.safetensors: unexpected keys track_prior.coef, ..."); a number as text was read as the number
    "config-flag-as-text": ("cmvae", lambda m: m["config"].update(track_prior="false"),
                            "config.json: CMVAEConfig.track_prior: cannot use 'false' as bool (text, where JSON writes "
                            "this type without quotes)"),
    "config-sizes-as-text": ("cmvae", lambda m: m["config"].update(hidden=["16"]),  # in a list too (a review)
                             "config.json: CMVAEConfig.hidden: cannot use ['16'] as tuple[int, ...] (text, where"),
    "config-number-as-text": ("cmvae", lambda m: m["config"].update(latent_dim="8"),
                              "config.json: CMVAEConfig.latent_dim: cannot use '8' as int (text, where JSON"),
    "config-field-out-of-range": ("cmvae", lambda m: m["config"].update(batch_size=0),
                                  "config.json: batch_size must be >= 2, got 0"),
}


@pytest.mark.parametrize("case", list(CONFIG_EDITS))
def test_an_edited_config_names_the_file_and_the_field(runs, tmp_path, case):
    name, change, message = CONFIG_EDITS[case]
    folder = _copy(runs, name, tmp_path)
    _edit_config(folder, change)
    error = _load_error(folder)
    assert error.startswith(str(folder)) and message in error, error


@pytest.mark.parametrize("file,content,message", [
    ("config.json", b'"a JSON string"', "config.json: expected a JSON object"),
    ("config.json", b'{"model": "\xff"}', "config.json: not valid JSON ("),
    ("history.json", b"[{", "history.json: not valid JSON ("),
    ("history.json", b"\xff\xfe", "history.json: not valid JSON ("),
    ("history.json", b'{"epoch": 1}', "history.json: expected a JSON list with one object per epoch"),
])
def test_an_unreadable_json_file_is_named(runs, tmp_path, file, content, message):
    folder = _copy(runs, "cmvae", tmp_path)
    (folder / file).write_bytes(content)
    error = _load_error(folder)
    assert error.startswith(f"{folder}/{message}"), error


# ---- the genre list -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reordered(tiny_ds):
    """The tiny world with its genres listed in reverse order (ids, tracks and uploaders' tastes remapped)."""
    new_id = np.arange(tiny_ds.n_genres)[::-1]  # new id of old genre id g
    old_of_new = np.argsort(new_id)
    return dataclasses.replace(tiny_ds, genres=[tiny_ds.genres[g] for g in old_of_new],
                               track_genre=new_id[np.asarray(tiny_ds.track_genre)],
                               uploader_pref=np.asarray(tiny_ds.uploader_pref)[:, old_of_new])


def _queries(ds, n=16) -> VideoQuery:
    rows = np.asarray(ds.splits["test"])[:n]
    return VideoQuery.from_dataset(ds, rows[:, 0], rows[:, 2], "test")


@pytest.mark.parametrize("name", ["deccm", "cmvae"])  # the genre one-hot and the taste; the track prior's regression
def test_a_model_reading_genre_ids_maps_a_dataset_listing_genres_otherwise_by_name(runs, tiny_ds, reordered, name):
    # a run could not be evaluated on a dataset rebuilt with a genre more (build-dataset sorts the genre names, so
    # every id moved): an app comparing last month's run with this month's on this month's data was refused
    model = load_model(runs[name])
    for mode in model.modes_to_evaluate() if name == "cmvae" else ("backdoor", "personalised"):
        if name == "deccm":
            model.set_inference_mode(mode)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the same genres in another order: nothing lost, nothing to say
            got = model.score(_queries(reordered), MusicCatalog.from_dataset(reordered))
        np.testing.assert_allclose(got, model.score(_queries(tiny_ds), MusicCatalog.from_dataset(tiny_ds)),
                                   rtol=1e-5, atol=1e-5)


def test_tracks_and_tastes_of_a_genre_the_model_does_not_know_count_as_its_fallback_genre(runs, tiny_ds):
    from bgmrec.models.base import GenreMappingWarning

    model = load_model(runs["deccm"])
    model.set_inference_mode("personalised")
    known = MusicCatalog.from_dataset(tiny_ds)
    genres = (*tiny_ds.genres, "blues")
    blues = known.genre.copy()
    blues[:3] = len(tiny_ds.genres)  # three tracks of a genre the model was not trained on
    blues[3] = len(tiny_ds.genres) + 1  # and one of its second name in the list below
    as_first = known.genre.copy()
    as_first[:4] = 0  # the model has no "unknown": its first genre
    with pytest.warns(GenreMappingWarning) as told:
        got = model.encode_music(MusicCatalog(known.features, blues, known.index, (*genres, "blues")))
    assert [str(w.message) for w in told] == [  # "blues" twice in the list: both ids' tracks counted
        f"4 of {tiny_ds.n_tracks} track(s) have genre(s) the model was not trained on: 'blues'; treated as its genre "
        f"{tiny_ds.genres[0]!r} (its genres: {', '.join(tiny_ds.genres)})"]
    np.testing.assert_array_equal(got, model.encode_music(MusicCatalog(known.features, as_first, known.index)))
    q = _queries(tiny_ds)
    wider = dataclasses.replace(q, confounder=np.hstack([q.confounder * 0.5, np.full((len(q), 1), 0.5)]),
                                genres=genres)  # half of each uploader's taste is for blues: left out
    with pytest.warns(GenreMappingWarning) as told:
        got = model.encode_videos(wider)
    assert [str(w.message) for w in told] == ["the uploaders' tastes for genre(s) the model was not trained on "
                                              "('blues') are left out (it has no genre 'unknown')"]
    np.testing.assert_allclose(got, model.encode_videos(q), rtol=1e-5, atol=1e-6)
    bad = dataclasses.replace(wider, confounder=np.hstack([q.confounder, -np.ones((len(q), 1))]))
    with pytest.raises(DatasetError, match=r"^confounder: row 0 is not an uploader's genre preferences"):
        model.encode_videos(bad)  # checked as given, not repaired by the mapping


def test_genre_positions_and_tastes_by_hand():
    from bgmrec.models.base import MIN_TASTE, genre_positions, taste_in_model_genres

    positions, unknown = genre_positions(["b", " ", "x", "a"], ("a", "b", "unknown"))
    assert positions.tolist() == [1, 2, 2, 0] and unknown == ["x"]  # blank: "unknown"; unknown names go there too
    assert genre_positions(["x"], ("a", "b"))[0].tolist() == [0]  # without "unknown": the first genre
    taste, note = taste_in_model_genres(np.array([[0.5, 0.3, 0.2]]), ("b", "a", "x"), ("a", "b", "c"))
    np.testing.assert_allclose(taste, [[0.3, 0.5, 0.3]] / np.float64(1.1), rtol=1e-6)  # x left out, c the least
    assert note == ("the uploaders' tastes for genre(s) the model was not trained on ('x') are left out (it has no "
                    "genre 'unknown'); the model's genre(s) 'c', which the data does not name, get each uploader's "
                    "smallest share")
    taste, note = taste_in_model_genres(np.array([[0.5, 0.3, 0.2], [0.0, 0.0, 1.0]]), ("b", "a", "x"),
                                        ("a", "b", "unknown"))
    np.testing.assert_allclose(taste, [[0.3, 0.5, 0.2], [MIN_TASTE, MIN_TASTE, 1.0]], rtol=1e-5, atol=1e-9)
    assert note == "the uploaders' tastes for genre(s) the model was not trained on ('x') count as its genre 'unknown'"
    assert taste_in_model_genres(np.array([[1.0]]), ("x",), ("a", "b"))[0].tolist() == [[0.5, 0.5]]  # nothing known
    assert taste_in_model_genres(np.array([[0.25, 0.75]]), ("b", "a"), ("a", "b"))[1] == ""


@pytest.mark.parametrize("name", ["random", "popularity", "cca", "twotower-hinge", "cmvae-noprior"])
def test_a_model_not_reading_genre_ids_scores_a_reordered_dataset_alike(tiny_ds, tiny_spec, reordered, name):
    if name in ("random", "popularity", "cca"):
        model = build(name, tiny_spec).fit(SplitView(tiny_ds, "train"))
    else:  # whether its encoders read the genre shows on its initial weights
        model = as_fitted(build(name, tiny_spec, SMALL))
    q = VideoQuery.from_dataset(tiny_ds, np.arange(8), np.zeros(8, np.int64))
    np.testing.assert_array_equal(model.score(q, MusicCatalog.from_dataset(reordered)),
                                  model.score(q, MusicCatalog.from_dataset(tiny_ds)))
    known = MusicCatalog.from_dataset(tiny_ds)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a genre it was not trained on changes nothing here: nothing to say
        blues = MusicCatalog(known.features, np.full(len(known), tiny_ds.n_genres), known.index,
                             (*tiny_ds.genres, "blues"))
        np.testing.assert_array_equal(model.score(q, blues), model.score(q, known))


def test_a_feature_width_error_names_the_run_it_came_from(runs, tiny_ds):
    model = load_model(runs["popularity"])
    narrow = MusicCatalog(np.asarray(tiny_ds.music)[:, :20], np.asarray(tiny_ds.track_genre))
    with pytest.raises(DatasetError, match=r"^music features: expected shape \[M, 24\], found \[200, 20\] "
                                           rf"\(the model's spec in {runs['popularity']}/config.json\)$"):
        model.encode_music(narrow)


# ---- config ranges ------------------------------------------------------------------------------------

def test_an_integer_too_large_for_a_float_is_in_range(tiny_spec):
    # the check for infinities raised OverflowError (a traceback) on it
    assert build("cmvae", tiny_spec, {"epochs": "1" + "0" * 400}).config.epochs == 10 ** 400


@pytest.mark.parametrize("name,field,value,message", [
    ("twotower-infonce", "batch_size", 0, "batch_size must be >= 2, got 0"),  # was ZeroDivisionError
    ("twotower-hinge", "batch_size", -5, "batch_size must be >= 2, got -5"),
    ("cmvae", "latent_dim", -3, "latent_dim must be in [1, 4096], got -3"),  # was a torch RuntimeError
    ("twotower-infonce", "latent_dim", 0, "latent_dim must be in [1, 4096], got 0"),
    # sizes no network needs ended in a 75-GB allocation's traceback (the track prior's regression), or torch's
    ("cmvae", "latent_dim", 100_000, "latent_dim must be in [1, 4096], got 100000"),
    ("deccm", "hidden", "10000000", "each of hidden must be in [1, 8192], got (10000000,)"),
    ("cmvae", "val_queries", 0, "val_queries must be >= 1, got 0"),
    ("cmvae", "epochs", 0, "epochs must be >= 1, got 0"),
    ("deccm", "epochs", -1, "epochs must be >= 1, got -1"),
    ("cmvae", "patience", 0, "patience must be >= 1, got 0"),
    ("cmvae", "lr", "nan", "lr must be > 0, got nan"),
    ("cmvae", "dropout", 1, "dropout must be in [0, 1), got 1.0"),
    ("twotower-hinge", "hidden", "32,0", "each of hidden must be in [1, 8192], got (32, 0)"),
    ("twotower-hinge", "margin", -0.1, "margin must be >= 0, got -0.1"),
    ("twotower-infonce", "temperature", 0, "temperature must be > 0, got 0.0"),
    ("cmvae", "kl_weight", -1, "kl_weight must be >= 0, got -1.0"),
    ("deccm", "prior_samples", 0, "prior_samples must be >= 1, got 0"),
    ("cca", "dim", 0, "dim must be >= 1, got 0"),
    ("cca", "ridge", -1, "ridge must be >= 0, got -1.0"),
    ("random", "dim", 0, "dim must be in [1, 4096], got 0"),
    ("twotower-hinge", "hidden", ",".join(["64"] * 17), "hidden must list at most 16 widths (hidden layers), got 17"),
    ("popularity", "seed", -1, "seed must be in [0, 2**63), got -1"),
    ("cmvae", "seed", 2**70, "seed must be in [0, 2**63), got 1180591620717411303424"),  # was an error of torch's
    # infinities: lr=inf diverged with advice to lower lr to inf, temperature=inf trained to chance and was saved
    ("cmvae", "lr", "inf", "lr must be finite and > 0, got inf"),
    ("twotower-infonce", "temperature", "inf", "temperature must be finite and > 0, got inf"),
    ("cmvae", "kl_weight", "inf", "kl_weight must be finite and >= 0, got inf"),
    ("cmvae", "match_weight", "-inf", "match_weight must be finite and >= 0, got -inf"),
    ("deccm", "alpha", "nan", "alpha must be >= 0, got nan"),  # NaN passed `alpha < 0`
    ("deccm", "alpha", "inf", "alpha must be finite and >= 0, got inf"),
])
def test_config_values_out_of_range_are_refused_by_name(tiny_spec, name, field, value, message):
    with pytest.raises(ValueError) as e:
        build(name, tiny_spec, {field: value})
    assert str(e.value) == message


@pytest.mark.parametrize("name", model_names())
def test_every_model_builds_with_its_defaults_and_the_smallest_allowed_values(tiny_spec, name):
    config = type(build(name, tiny_spec).config)
    smallest = {"epochs": 1, "batch_size": 2, "val_queries": 1, "patience": 1, "latent_dim": 1, "dropout": 0,
                "weight_decay": 0, "dim": 1, "ridge": 0, "seed": 0, "prior_samples": 1, "reference_tracks": 1,
                "kl_anneal_epochs": 0, "margin": 0}
    known = {f.name for f in dataclasses.fields(config)}
    model = build(name, tiny_spec, {k: v for k, v in smallest.items() if k in known})
    assert all(getattr(model.config, k) == v for k, v in smallest.items() if k in known)


def test_library_calls_name_what_is_wrong(tiny_ds, tiny_spec):
    with pytest.raises(ValueError, match=r"the dataset has no split 'nope'; it has .*train"):
        SplitView(tiny_ds, "nope")
    with pytest.raises(ValueError, match=r"^videos must be ids in \[0, 2600\), got -1 \(1 of 2 out of range\)$"):
        VideoQuery.from_dataset(tiny_ds, [3, -1])  # numpy would have taken the last video
    with pytest.raises(TypeError, match=r"spec must be a FeatureSpec \(FeatureSpec.of\(dataset\)\), got Dataset"):
        build("cmvae", tiny_ds)
    for name in ("cca", "cmvae"):
        with pytest.raises(ValueError, match=rf"^{name}: fit's train must be a SplitView \(SplitView\(dataset, "
                                             r"split_name\)\), got str$"):
            build(name, tiny_spec).fit("train")
        with pytest.raises(ValueError, match=rf"^{name}: fit's val must be a SplitView .*, got str$"):
            build(name, tiny_spec).fit(SplitView(tiny_ds, "train"), "val")


@pytest.mark.parametrize("name", ["cmvae", "cca", "popularity"])
def test_fit_names_data_the_model_was_not_built_for_and_a_test_split_given_as_val(tiny_ds, tiny_spec, name):
    other = dataclasses.replace(tiny_spec, video_visual=tiny_spec.video_visual + 1)
    with pytest.raises(ValueError, match=rf"{name}: built for features .* but the training dataset has"):
        build(name, other).fit(SplitView(tiny_ds, "train"))
    with pytest.raises(ValueError, match=rf"{name}: split 'test' has role 'test'; fit takes a training split and "
                                         "a validation split, never a test split"):
        build(name, tiny_spec).fit(SplitView(tiny_ds, "train"), SplitView(tiny_ds, "test"))


def test_the_catalogue_is_encoded_in_chunks_as_the_whole(tiny_ds, tiny_spec, monkeypatch):
    """A neural model's music side runs on at most encode_chunk tracks per pass (the whole of 100,000
    tracks at once took about 480 MB more at a service's start-up), with the same embeddings."""
    model = build("cmvae", tiny_spec, {"epochs": "1", "hidden": "16", "latent_dim": "4"})
    model.fit(SplitView(tiny_ds, "train"))
    catalog = MusicCatalog.from_dataset(tiny_ds)
    whole = model.encode_music(catalog)
    real, sizes = model.music_embedding, []
    monkeypatch.setattr(model, "music_embedding", lambda music, genre: sizes.append(len(music)) or real(music, genre))
    monkeypatch.setattr(model, "encode_chunk", 7)
    np.testing.assert_allclose(model.encode_music(catalog), whole, rtol=1e-5, atol=1e-6)
    assert max(sizes) == 7 and sum(sizes) == tiny_ds.n_tracks


def test_video_indices_must_be_integers_in_range(tiny_ds):
    """A mask was read as the indices 0 and 1 (2,600 queries of two videos), 1.7 as 1, 0.4 as True."""
    n = tiny_ds.n_videos
    for videos, words in ((np.arange(n) < 2, "videos must be integer ids (int64), got booleans (a mask? give the "
                                             "indices of its True entries: np.flatnonzero(mask))"),
                          (np.array([1.7]), "videos must be integer ids (int64), got float64 values"),
                          ([0, n], f"videos must be ids in [0, {n}), got {n} (1 of 2 out of range)")):
        with pytest.raises(ValueError, match="^" + re.escape(words) + "$"):
            VideoQuery.from_dataset(tiny_ds, videos)
    with pytest.raises(ValueError, match=re.escape(f"uploaders must be ids in [-1, {tiny_ds.n_uploaders}), got -2")):
        VideoQuery.from_dataset(tiny_ds, [0, 1], [-2, 0])
    with pytest.raises(ValueError, match=r"^uploaders must give one uploader per video: 1 for 2 videos$"):
        VideoQuery.from_dataset(tiny_ds, [0, 1], [0])
    assert len(VideoQuery.from_dataset(tiny_ds, np.flatnonzero(np.arange(n) < 2))) == 2
    assert len(VideoQuery.from_dataset(tiny_ds, [])) == 0  # an empty list (float64 to numpy) is no ids
    q = VideoQuery.from_dataset(tiny_ds, [0, 1])
    with pytest.raises(ValueError, match=re.escape("VideoQuery.text_mask must be booleans (True, False, or 1 and 0), "
                                                   "got [0.4, 2.0]")):
        VideoQuery(q.visual, q.text, np.array([0.4, 2]))
    assert VideoQuery(q.visual, q.text, np.array([1.0, 0.0])).text_mask.tolist() == [True, False]
    with pytest.raises(ValueError, match=r"^VideoQuery.index must be integer ids \(int64\), got float64 values$"):
        VideoQuery(q.visual, q.text, q.text_mask, index=np.array([0.5, 1.0]))


def test_music_catalogue_genres_must_be_integer_ids_of_known_genres(tiny_ds, tiny_spec):
    """Float genre ids were cut (2.7 read as 2), and an id past the model's genres failed in numpy ("index 99 is out
    of bounds for axis 0")."""
    model = build("popularity", tiny_spec).fit(SplitView(tiny_ds, "train"))
    cat = MusicCatalog.from_dataset(tiny_ds)
    with pytest.raises(ValueError, match=r"^MusicCatalog.genre must be integer ids \(int64\), got float64 values$"):
        MusicCatalog(cat.features, cat.genre + 0.7)
    with pytest.raises(ValueError, match=re.escape(f"MusicCatalog.genre must be ids in [0, {tiny_ds.n_genres}), got "
                                                   "99")):
        MusicCatalog(cat.features, np.full(len(cat), 99), genres=cat.genres)  # names given: bounded by them
    with pytest.raises(ValueError, match=r"^MusicCatalog.genre must have one id per track, shape \[200\], got \[3\]$"):
        MusicCatalog(cat.features, cat.genre[:3])
    unnamed = MusicCatalog(cat.features, np.full(len(cat), 99))  # ids in the model's genres: bounded by them
    with pytest.raises(DatasetError, match=re.escape(f"MusicCatalog.genre: ids must be in [0, {tiny_ds.n_genres}) (the "
                                                     f"model's genres: {', '.join(tiny_ds.genres)}), got 99; give the "
                                                     "catalogue's genre names as MusicCatalog.genres")):
        model.encode_music(unnamed)
    with pytest.raises(ValueError, match=r"^MusicCatalog.features must have 2 dimensions \(\[M, D\]\), got shape"):
        MusicCatalog(cat.features[0], cat.genre[:1])
    assert MusicCatalog(cat.features.astype(np.float64), cat.genre.astype(np.int32)).features.dtype == np.float32


def test_a_video_query_takes_lists_and_float64_and_names_a_field_of_the_wrong_shape(runs, tiny_ds):
    model = load_model(runs["cca"])
    q = VideoQuery.from_dataset(tiny_ds, np.arange(3))
    as_given = VideoQuery(q.visual.astype(np.float64).tolist(), q.text.astype(np.float64), q.text_mask.tolist())
    assert as_given.visual.dtype == np.float32 and as_given.text_mask.dtype == bool
    assert np.array_equal(model.encode_videos(as_given), model.encode_videos(q))
    for fields, words in (({"visual": q.visual[0]}, "VideoQuery.visual must have 2 dimension(s) ([n, D]), got shape"),
                          ({"text_mask": q.text_mask[:2]}, "VideoQuery.text_mask has 2 rows, visual has 3"),
                          ({"visual": [["a"] * q.visual.shape[1]] * 3}, "VideoQuery.visual must be a float32 array"),
                          ({"confounder": np.ones(3)}, "VideoQuery.confounder must have 2 dimension(s)")):
        with pytest.raises(ValueError, match=re.escape(words)):
            VideoQuery(**{"visual": q.visual, "text": q.text, "text_mask": q.text_mask, **fields})


class _Recording(PopularityRecommender):
    """Popularity scores, recording what its encoders are given (a plugin that would look the answers up)."""

    name = "recording"
    seen: list

    def _encode_videos(self, q):
        self.seen.append(("videos", q.index, q.split))
        return super()._encode_videos(q)

    def _encode_music(self, c):
        self.seen.append(("music", c.index, None))
        return super()._encode_music(c)


def test_no_model_but_the_oracle_is_told_which_dataset_rows_it_scores(tiny_ds, tiny_spec):
    # evaluation handed every model the queries' video indices and split, and the tracks' indices: a plugin keyed
    # a lookup of the test splits by them and scored Recall@10 1.000, passing every contract test
    from bgmrec.eval.protocol import evaluate

    model = _Recording(ModelConfig(), tiny_spec).fit(SplitView(tiny_ds, "train"))
    model.seen = []
    honest = evaluate(model, tiny_ds, "test")
    assert model.seen and all(index is None and split is None for _, index, split in model.seen)
    plain = PopularityRecommender(ModelConfig(), tiny_spec).fit(SplitView(tiny_ds, "train"))
    assert evaluate(plain, tiny_ds, "test")["full"] == honest["full"]  # the same scores without the rows
    assert build("oracle", tiny_spec).reads_dataset_rows and not plain.reads_dataset_rows
    assert [name for name in model_names() if build(name, tiny_spec).reads_dataset_rows] == ["oracle"]


class _TasteReader(PopularityRecommender):
    """A single-mode model that always reads the uploader's taste (a plugin's)."""

    name = "taste-reader"
    needs_taste = True

    def _encode_videos(self, q):
        return np.ones((len(q), 1)) * q.confounder[:, :1]


def test_a_model_that_always_reads_the_taste_refuses_a_query_without_one(tiny_ds, tiny_spec):
    # the service answered such a plugin's request without a taste with a 500 (it asked only DecCM's personalised
    # mode for one); encode_videos now refuses, the service says 422 and recommend refuses the model in words
    from fastapi.testclient import TestClient

    from bgmrec.features.recommend import ClipRecommender, open_catalog
    from bgmrec.service import create_app

    model = _TasteReader(ModelConfig(), tiny_spec).fit(SplitView(tiny_ds, "train"))
    q = VideoQuery.from_dataset(tiny_ds, np.arange(3))
    with pytest.raises(ValueError, match=r"taste-reader ranks by the uploader's taste: give each query's genre "
                                         r"preferences \(VideoQuery.confounder\)"):
        model.encode_videos(q)
    assert model.encode_videos(VideoQuery.from_dataset(tiny_ds, np.arange(3), np.arange(3))).shape == (3, 1)
    client = TestClient(create_app(ClipRecommender(model, open_catalog(tiny_ds.root)), load_video_encoders=False))
    body = {"visual": np.asarray(tiny_ds.video_visual[0]).tolist(), "text": None}
    answer = client.post("/recommend", json=body)
    assert answer.status_code == 422 and answer.json()["detail"].startswith("taste: required by taste-reader")
