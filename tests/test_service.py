"""The HTTP service on the tiny world: answers equal the library's, bad requests get a 422 naming the field,
server faults a 500 with the traceback logged, not shown."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bgmrec.features.audio import Catalog
from bgmrec.features.recommend import ClipFeatures, ClipRecommender, RequestError, open_catalog, recommend_clip
from bgmrec.models.base import FeatureSpec, ModelConfig, MusicCatalog, SplitView, VideoQuery
from bgmrec.models.baselines import PopularityRecommender
from bgmrec.models.registry import build

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

import bgmrec.service as service  # noqa: E402
from bgmrec.service import create_app, taste_vector  # noqa: E402

REFUSING_UPLOADS = service.uploads_refused


@pytest.fixture(scope="module", autouse=True)
def uploads_ranked_by_the_tiny_worlds_models():
    """The tiny world's models (features of other sizes than the video encoders give) take the uploads of these
    tests, whose embedding each test fakes; the service refuses a real upload to such a model (tested below)."""
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(service, "uploads_refused", lambda spec: None)
        yield


def tiny_catalog(ds) -> Catalog:
    """The tiny world's tracks as a catalogue (genre names, features as the dataset's)."""
    return open_catalog(ds.root)


@pytest.fixture(scope="module")
def cmvae(tiny_ds):
    return build("cmvae", FeatureSpec.of(tiny_ds), {"epochs": 1, "batch_size": 256}).fit(
        SplitView(tiny_ds, "train"), None)


@pytest.fixture(scope="module")
def client(tiny_ds, cmvae):
    return TestClient(create_app(ClipRecommender(cmvae, tiny_catalog(tiny_ds))))


def clip_body(ds, video: int, **extra) -> dict:
    text = np.asarray(ds.video_text[video]).tolist() if ds.video_text_mask[video] else None
    return {"visual": np.asarray(ds.video_visual[video]).tolist(), "text": text, **extra}


def clip_of(ds, video: int) -> ClipFeatures:
    return ClipFeatures(np.asarray(ds.video_visual[video]), np.asarray(ds.video_text[video]),
                        bool(ds.video_text_mask[video]))


def test_health_says_what_is_served_and_what_a_request_needs(client, tiny_ds):
    info = client.get("/health").json()
    assert info["status"] == "ok" and info["model"] == "cmvae" and info["tracks"] == tiny_ds.n_tracks
    assert info["features"] == {"visual": tiny_ds.video_visual.shape[1], "text": tiny_ds.video_text.shape[1]}
    assert info["genres"] == list(tiny_ds.genres) and info["index"] == "exact"  # as --index names it
    assert info["warnings"] == []  # the tiny world's own catalogue: nothing to warn of
    head = client.head("/health")  # a load balancer's or monitor's check: it was 405
    assert head.status_code == 200 and head.content == b""


def test_health_carries_the_start_up_warnings_of_a_catalogue_the_model_was_not_trained_on(tiny_ds, cmvae,
                                                                                           tmp_path):
    # serve warned once on stderr at start-up, and /health said "status": "ok" with no flag a probe could see
    from bgmrec.models.base import load_model

    cmvae.save(tmp_path / "run")
    (tmp_path / "run" / "run.json").write_text(json.dumps({"feature_settings": {"music": {"max_seconds": 60.0}}}))
    catalog = tiny_catalog(tiny_ds)
    catalog.root, catalog.manifest = tmp_path / "short", {"settings": {"max_seconds": 1.0}}
    catalog.genre = ["polka"] + list(catalog.genre[1:])
    told = []
    client = TestClient(create_app(ClipRecommender(load_model(tmp_path / "run"), catalog, warn=told.append)))
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["warnings"] == told and len(told) == 2  # one source, said once
    assert told[0].startswith(f"the catalogue {tmp_path / 'short'} was extracted with max_seconds=1.0, the "
                              "model's training music with max_seconds=60.0")
    assert told[1] == (f"1 of {tiny_ds.n_tracks} track(s) (e.g. {catalog.ids[0]!r}) have genre(s) the model was not "
                       "trained on: 'polka'; "
                       f"treated as its genre {tiny_ds.genres[0]!r} (its genres: {', '.join(tiny_ds.genres)})")
    # without warn (the library's own use) the recommender still keeps them
    assert ClipRecommender(load_model(tmp_path / "run"), catalog).warnings == told


def test_an_answer_is_the_recommend_json_object_and_ranks_as_the_model(client, tiny_ds, cmvae):
    catalog = tiny_catalog(tiny_ds)
    for video in (0, int(np.flatnonzero(~np.asarray(tiny_ds.video_text_mask))[0])):  # with and without text
        got = client.post("/recommend", json=clip_body(tiny_ds, video, top=5)).json()
        assert got.pop("served_by")["model"] == "cmvae"
        assert got == json.loads(json.dumps(recommend_clip(cmvae, catalog, clip_of(tiny_ds, video), 5)))
        q = VideoQuery.from_dataset(tiny_ds, np.array([video]))
        scores = cmvae.score(q, MusicCatalog.from_dataset(tiny_ds))[0]
        assert [t["id"] for t in got["tracks"]] == [tiny_ds.track_ids[j] for j in np.argsort(-scores)[:5]]
        assert got["tracks"][0]["score"] == pytest.approx(float(scores.max()), rel=1e-5)
        share = got["modality_share"]
        assert share["visual"] + share["text"] == pytest.approx(1.0)
        if not tiny_ds.video_text_mask[video]:
            assert share == {"visual": 1.0, "text": 0.0}


def test_each_answer_carries_its_clips_warnings_and_answers_of_features_have_none(client, tiny_ds, cmvae,
                                                                                   monkeypatch):
    # an uploaded clip ranked on its last decoded frame repeated was answered as any other, saying nothing
    from dataclasses import replace

    from bgmrec import service

    note = "kept with repeated frames: only 2 of 4 sample frames decodable"
    answers = ClipRecommender(cmvae, tiny_catalog(tiny_ds)).recommend(
        [clip_of(tiny_ds, 0), replace(clip_of(tiny_ds, 1), warnings=[note]), clip_of(tiny_ds, 2)], 3)
    assert [a["warnings"] for a in answers] == [[], [note], []]
    assert client.post("/recommend", json=clip_body(tiny_ds, 1)).json()["warnings"] == []
    batch = client.post("/recommend/batch", json={"clips": [clip_body(tiny_ds, v) for v in (0, 1)]}).json()
    assert [r["warnings"] for r in batch["results"]] == [[], []]
    monkeypatch.setattr(service._MediaEncoders, "embed",
                        lambda self, path, caption, label: replace(clip_of(tiny_ds, 1), warnings=[note]))
    r = client.post("/recommend/video", files={"video": ("cut.mp4", b"not read", "video/mp4")}, data={"top": "3"})
    assert r.status_code == 200 and r.json()["warnings"] == [note]
    assert [t["id"] for t in r.json()["tracks"]] == [t["id"] for t in answers[1]["tracks"]]  # ranked as before


def test_a_batch_answers_as_single_requests_in_order(client, tiny_ds):
    videos = [3, 1, 4, 1]
    batch = client.post("/recommend/batch", json={"clips": [clip_body(tiny_ds, v) for v in videos], "top": 3})
    singles = [client.post("/recommend", json=clip_body(tiny_ds, v, top=3)).json() for v in videos]
    assert batch.status_code == 200
    for got, want in zip(batch.json()["results"], singles, strict=True):
        assert [t["id"] for t in got["tracks"]] == [t["id"] for t in want["tracks"]]
        assert [t["score"] for t in got["tracks"]] == pytest.approx([t["score"] for t in want["tracks"]], rel=1e-5)


def test_excluded_tracks_are_never_returned(client, tiny_ds):
    first = client.post("/recommend", json=clip_body(tiny_ds, 2, top=4)).json()["tracks"]
    gone = [first[0]["id"], first[2]["id"]]
    again = client.post("/recommend", json=clip_body(tiny_ds, 2, top=4, exclude=gone)).json()["tracks"]
    assert [t["id"] for t in again] == [first[1]["id"], first[3]["id"]] + [t["id"] for t in again[2:]]
    assert not {t["id"] for t in again} & set(gone)


@pytest.mark.parametrize(("change", "words"), [
    ({"visual": [0.1, 0.2]}, "visual: expected"),
    ({"text": [0.0]}, "text: expected"),
    ({"top": 0}, "top: Input should be greater than or equal to 1"),
    ({"top": 1001}, "top: Input should be less than or equal to 1000"),
    ({"taste": {"polka": 1.0}}, "unknown genre(s) polka"),
    ({"taste": {"pop": 0.0}}, "taste: weights must be finite, non-negative and not all zero"),
])
def test_bad_requests_get_a_422_naming_the_field(client, tiny_ds, change, words):
    r = client.post("/recommend", json={**clip_body(tiny_ds, 0), **change})
    assert r.status_code == 422
    assert words in json.dumps(r.json()["detail"])


def test_a_batch_past_its_limits_gets_a_422_naming_them(client, tiny_ds):
    from bgmrec.service import MAX_BATCH

    body = clip_body(tiny_ds, 0)
    r = client.post("/recommend/batch", json={"clips": [body] * (MAX_BATCH + 1), "top": 1})
    assert r.status_code == 422 and f"at most {MAX_BATCH} items" in json.dumps(r.json()["detail"])
    r = client.post("/recommend/batch", json={"clips": [body, body], "top": 1001})
    assert r.status_code == 422 and "top: Input should be less than or equal to 1000" in json.dumps(r.json()["detail"])


def test_an_exclude_id_not_in_the_catalogue_is_passed_over_and_named(client, tiny_ds):
    # an app's stored exclude list naming a track withdrawn from the catalogue since got a 422 on every request
    body = clip_body(tiny_ds, 0)
    first = client.post("/recommend", json=body).json()["tracks"][0]["id"]
    r = client.post("/recommend", json={**body, "exclude": ["gone-1", first, "gone-2"]})
    assert r.status_code == 200
    assert first not in [t["id"] for t in r.json()["tracks"]]
    assert r.json()["warnings"] == ["exclude: 2 track id(s) not in the catalogue, passed over: 'gone-1', 'gone-2'"]
    twice = client.post("/recommend", json={**body, "exclude": ["gone-1", "gone-1"]}).json()["warnings"]
    assert twice == ["exclude: 1 track id(s) not in the catalogue, passed over: 'gone-1'"]  # each id once
    many = [f"gone-{i}" for i in range(5)]
    batch = client.post("/recommend/batch", json={"clips": [body, {**body, "exclude": many}]}).json()["results"]
    assert batch[0]["warnings"] == []  # said of the clip whose list it was
    assert batch[1]["warnings"] == [
        "exclude: 5 track id(s) not in the catalogue, passed over: 'gone-0', 'gone-1', 'gone-2', ..."]


@pytest.mark.parametrize(("k", "exclude", "words"), [
    (0, None, "top must be at least 1"),
    ("5", None, "top must be an integer, got '5'"),
    (2.5, None, "top must be an integer, got 2.5"),
    (3, [[], []], "exclude has 2 lists for 1 clips"),
    (3, ["t00027"], "exclude[0] must be a list of track ids, got str 't00027'"),  # not iterated letter by letter
])
def test_the_library_raises_a_request_error_for_the_callers_mistakes(tiny_ds, cmvae, k, exclude, words):
    with pytest.raises(RequestError, match=re.escape(words)):
        ClipRecommender(cmvae, tiny_catalog(tiny_ds)).recommend([clip_of(tiny_ds, 0)], k, exclude)


def test_clips_of_the_wrong_kind_or_size_name_the_clip_and_the_field(tiny_ds, cmvae):
    recommender = ClipRecommender(cmvae, tiny_catalog(tiny_ds))
    clip = clip_of(tiny_ds, 0)
    narrow = ClipFeatures(clip.visual[:-1], clip.text, True)
    for clips, words in ((clip, "clips must be a non-empty list of ClipFeatures, got ClipFeatures"),
                         ([], "clips must be a non-empty list of ClipFeatures, got list"),
                         ([clip, "x"], "clip 1: expected ClipFeatures, got str"),
                         ([clip, narrow], f"clip 1: visual must have shape [{len(clip.visual)}] (the model's), "
                                          f"got [{len(clip.visual) - 1}]"),
                         # a NaN was a DatasetError naming no clip; strings of digits and has_text="no" were taken
                         ([clip, ClipFeatures(np.where(np.arange(len(clip.visual)) == 3, np.nan, clip.visual),
                                              clip.text, True)],
                          "clip 1: visual has values that are NaN, inf or beyond float32's range (position 3)"),
                         ([ClipFeatures(clip.visual, np.full(len(clip.text), 1e39), True)],
                          "clip 0: text has values that are NaN, inf or beyond float32's range (position 0)"),
                         ([ClipFeatures(clip.visual.astype(str), clip.text, True)],
                          "clip 0: visual must be real numbers, got values of dtype <U"),
                         ([ClipFeatures(clip.visual, clip.text, "no")], "clip 0: has_text must be True or False, "
                                                                         "got 'no'")):
        with pytest.raises(RequestError, match=re.escape(words)):
            recommender.recommend(clips, 3)
    assert recommender.recommend([ClipFeatures(clip.visual, clip.text, np.bool_(True))], 3) == \
        recommender.recommend([clip], 3)  # a NumPy bool, as a text mask gives it, is a bool
    assert recommender.recommend([clip], 3, exclude=[]) == recommender.recommend([clip], 3)  # [] excludes nothing


def test_a_catalogue_from_arrays_answers_as_the_same_catalogue_from_a_folder(tiny_ds, cmvae):
    from bgmrec.data.dataset import DatasetError

    folder = tiny_catalog(tiny_ds)
    memory = Catalog.from_arrays(folder.ids, folder.features, folder.genre, folder.title, folder.artist)
    clips = [clip_of(tiny_ds, v) for v in range(3)]
    assert (ClipRecommender(cmvae, memory).recommend(clips, 5)
            == ClipRecommender(cmvae, folder).recommend(clips, 5))
    with pytest.raises(DatasetError, match=r"^Catalog.from_arrays: ids: id 'a' is on two rows"):
        Catalog.from_arrays(["a", "a"], np.zeros((2, 3), np.float32))
    with pytest.raises(DatasetError, match=r"^Catalog.from_arrays/features: expected shape \[3, \*\]"):
        Catalog.from_arrays(["a", "b", "c"], np.zeros((2, 3), np.float32))
    with pytest.raises(DatasetError, match=r"^Catalog.from_arrays: genres must be 2 strings, one per id"):
        Catalog.from_arrays(["a", "b"], np.zeros((2, 3), np.float32), genres=["pop"])
    with pytest.raises(TypeError, match="catalog must be a bgmrec.features.audio.Catalog"):
        ClipRecommender(cmvae, MusicCatalog.from_dataset(tiny_ds))
    # one made in memory has no folder: named "the catalogue", not "None"
    narrow = Catalog.from_arrays(folder.ids, folder.features[:, :10])
    with pytest.raises(DatasetError, match=r"^the catalogue: tracks have 10 features, but the model was trained on "
                                           rf"music features of dimension {folder.dim};"):
        ClipRecommender(cmvae, narrow)
    assert ClipRecommender(cmvae, memory).recommend(clips[:1], 3, exclude=[["nosuch"]])[0]["warnings"] == [
        "exclude: 1 track id(s) not in the catalogue, passed over: 'nosuch'"]


def test_threads_are_set_in_every_thread_that_asks_for_recommendations(tiny_ds, cmvae, monkeypatch):
    import threading

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append((threading.get_ident(), n)))
    recommender = ClipRecommender(cmvae, tiny_catalog(tiny_ds), threads=1)
    assert calls == [(threading.get_ident(), 1)]  # the catalogue is encoded with it

    def twice():
        recommender.recommend([clip_of(tiny_ds, 0)], 3)
        recommender.recommend([clip_of(tiny_ds, 1)], 3)

    worker = threading.Thread(target=twice)
    worker.start()
    worker.join()
    assert len(calls) == 2 and calls[1][0] != calls[0][0] and calls[1][1] == 1  # once in the worker, not per call
    with pytest.raises(ValueError, match="threads must be a positive integer, got 0"):
        ClipRecommender(cmvae, tiny_catalog(tiny_ds), threads=0)


@pytest.mark.parametrize("fault", [ValueError("boom"), RuntimeError("boom")])
def test_a_server_fault_gets_a_500_and_its_traceback_is_logged_not_shown(tiny_ds, cmvae, monkeypatch, caplog,
                                                                          fault):
    recommender = ClipRecommender(cmvae, tiny_catalog(tiny_ds))

    def search(*args):
        raise fault

    monkeypatch.setattr(recommender.index, "search", search)
    client = TestClient(create_app(recommender))  # raises if the fault reached the server layer (logged twice)
    with caplog.at_level(logging.ERROR, logger="bgmrec.service"):
        r = client.post("/recommend", json=clip_body(tiny_ds, 0))
    assert r.status_code == 500 and r.json() == {"detail": "internal error; see the server log"}
    [record] = [rec for rec in caplog.records if rec.name == "bgmrec.service" and rec.exc_info]
    request_id = r.headers["x-request-id"]  # the traceback names the request whose client got the 500
    assert record.exc_info[1] is fault and record.getMessage() == f"POST /recommend failed (request {request_id})"
    assert "Traceback" in caplog.text and "boom" in caplog.text


def test_the_log_says_what_is_served_at_start_up_and_health_names_the_run_folder(tiny_ds, cmvae, tmp_path, caplog,
                                                                                 monkeypatch):
    # after a switch of model the log could not tie requests to the model then served
    from bgmrec.models.base import load_model

    monkeypatch.setattr(service, "uploads_refused", lambda spec: "no encoders here")  # a start-up warning

    cmvae.save(tmp_path / "week47" / "cmvae")
    recommender = ClipRecommender(load_model(tmp_path / "week47" / "cmvae"), tiny_catalog(tiny_ds))
    with caplog.at_level(logging.INFO, logger="bgmrec.service"), TestClient(create_app(recommender)) as client:
        health = client.get("/health").json()
    assert health["run_folder"] == str((tmp_path / "week47" / "cmvae").resolve())  # served_by names "cmvae" only
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("serving ")]
    assert f"run=cmvae run_sha256={health['served_by']['run_sha256']} " in line and "model=cmvae " in line
    # what start-up warned of is in the log too, with its time (it was printed before the log had times)
    assert health["warnings"] == ["POST /recommend/video will answer 501: no encoders here"]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"start-up: {w}" for w in health["warnings"]]


def test_health_says_how_the_catalogue_differs_from_the_training_dataset_s(tiny_dir, tiny_ds, cmvae, tmp_path):
    # a new model served with last week's catalogue recommended a track withdrawn since, and /health said nothing
    import dataclasses

    from bgmrec.runs import train_model

    model, _ = train_model(tiny_dir, "popularity", tmp_path / "run", progress=False)
    catalog = tiny_catalog(tiny_ds)
    same = TestClient(create_app(ClipRecommender(model, catalog))).get("/health").json()["catalog_against_training"]
    # the world's held-out new music is in its tracks.csv but in no training pair: it counted as "in training"
    trained = set(np.unique(tiny_ds.splits["train"][:, 1]).tolist())
    untrained = [t for j, t in enumerate(catalog.ids) if j not in trained]
    assert 0 < len(untrained) < len(catalog.ids) and set(untrained) >= {
        tiny_ds.track_ids[j] for j in np.flatnonzero(tiny_ds.track_new)}
    assert same == {"training_dataset": str(Path(tiny_dir).resolve()), "not_in_training": len(untrained),
                    "not_in_training_ids": untrained[:3], "not_served": 0, "not_served_ids": []}
    withdrawn = min(trained)  # a trained track swapped for one the dataset never had
    stale = dataclasses.replace(catalog, ids=[*catalog.ids[:withdrawn], "t-withdrawn", *catalog.ids[withdrawn + 1:]])
    health = TestClient(create_app(ClipRecommender(model, stale))).get("/health").json()
    added = [t for t in stale.ids if t == "t-withdrawn" or t in untrained]
    assert health["catalog_against_training"] == {**same, "not_in_training": len(added),
                                                  "not_in_training_ids": added[:3],
                                                  "not_served": 1, "not_served_ids": [catalog.ids[withdrawn]]}
    assert TestClient(create_app(ClipRecommender(cmvae, catalog))).get("/health").json()[
        "catalog_against_training"] is None  # a model not loaded from a run: nothing to compare with


def test_health_does_not_compare_with_a_training_dataset_built_again_since(tiny_ds, tmp_path):
    # rebuilt in place after training, the folder's tracks were taken for the run's: /health gave wrong counts
    from bgmrec.data.dataset import load_dataset, save_dataset
    from bgmrec.runs import train_model

    save_dataset(load_dataset(tiny_ds.root, mmap=False), tmp_path / "data")  # a copy: saving sets the root of
    model, _ = train_model(tmp_path / "data", "popularity", tmp_path / "run", progress=False)  # what it saves
    catalog = tiny_catalog(tiny_ds)
    assert TestClient(create_app(ClipRecommender(model, catalog))).get("/health").json()[
        "catalog_against_training"] is not None  # as trained: compared
    ds = load_dataset(tmp_path / "data", mmap=False)
    save_dataset(ds.with_split("week48", ds.splits["test"], role="test"), tmp_path / "data")  # built again since
    said = []
    health = TestClient(create_app(ClipRecommender(model, catalog), warn=said.append)).get("/health").json()
    assert health["catalog_against_training"] is None
    [message] = [w for w in said if "built again since" in w]
    assert message == (f"{(tmp_path / 'data').resolve()}, the dataset the run was trained on, was built again since: "
                       "which tracks it trained on cannot be read from it now, so /health's "
                       "catalog_against_training is null") and message in health["warnings"]


def test_sighup_drains_unless_ignored_and_is_put_back():
    # nohup's ignored SIGHUP was overridden (the server then stopped with the terminal), and off the main thread
    # setting it failed the command
    import signal
    import threading

    from bgmrec.cli.serve import sighup_as_sigterm

    before = signal.getsignal(signal.SIGHUP)
    try:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        with sighup_as_sigterm():
            assert callable(signal.getsignal(signal.SIGHUP))
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
        stop = lambda signum, frame: None  # noqa: E731  (the command line's own, install_stop_handlers's)
        signal.signal(signal.SIGHUP, stop)
        with sighup_as_sigterm():  # it would raise SystemExit inside uvicorn's loop: the server drains instead
            assert callable(signal.getsignal(signal.SIGHUP)) and signal.getsignal(signal.SIGHUP) is not stop
        assert signal.getsignal(signal.SIGHUP) is stop
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
        with sighup_as_sigterm():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        entered = []

        def elsewhere():
            with sighup_as_sigterm():
                entered.append(True)

        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join()
        assert entered == [True]
    finally:
        signal.signal(signal.SIGHUP, before)


def test_an_embedding_app_s_start_up_handlers_still_run(tiny_ds, cmvae):
    # a lifespan for the start-up log line made Starlette ignore the start-up handlers an embedder added
    app = create_app(ClipRecommender(cmvae, tiny_catalog(tiny_ds)))
    ran = []
    app.router.add_event_handler("startup", lambda: ran.append("embedder"))
    with TestClient(app):
        pass
    assert ran == ["embedder"]


def test_every_request_gets_an_id_a_timing_header_and_a_log_line(tiny_ds, cmvae, caplog):
    # uvicorn's access log gave no latency, and a 500's traceback could not be told from another request's
    client = TestClient(create_app(ClipRecommender(cmvae, tiny_catalog(tiny_ds)), max_batches=1))
    with caplog.at_level(logging.INFO, logger="bgmrec.service"):
        ok = client.post("/recommend", json=clip_body(tiny_ds, 0), headers={"X-Request-ID": "app-42:a.b_c"})
        bad = client.post("/recommend", json={"visual": [1.0]}, headers={"X-Request-ID": "no spaces allowed"})
        large = client.post("/recommend", content=b"{}", headers={"Content-Length": str(2**40),
                                                                  "Content-Type": "application/json"})
    assert ok.status_code == 200 and ok.headers["x-request-id"] == "app-42:a.b_c"  # the caller's own id
    assert re.fullmatch(r"[0-9a-f]{32}", bad.headers["x-request-id"])  # not an id the server takes: a new one
    assert large.status_code == 413 and large.headers["x-request-id"] not in (bad.headers["x-request-id"], "")
    for r in (ok, bad, large):
        assert re.fullmatch(r"app;dur=\d+\.\d", r.headers["server-timing"])
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "bgmrec.service"]
    assert len(lines) == 3
    for line, r, status in zip(lines, (ok, bad, large), (200, 422, 413), strict=True):
        assert re.fullmatch(rf'testclient:\d+ "POST /recommend" {status} \d+\.\d ms id={r.headers["x-request-id"]}',
                            line), line


def test_the_request_log_quotes_the_path_and_says_when_the_client_left(caplog):
    # a path of %0A (a decoded line break) wrote a forged line into the log, and a client that left mid-body was
    # logged with the 400 nobody received
    import asyncio

    from bgmrec.service import RequestLog

    async def app(scope, receive, send):  # reads the body as the framework does, then answers
        message = await receive()
        await send({"type": "http.response.start", "status": 400 if message["type"] == "http.disconnect" else 200,
                    "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def run(path: str, message: dict) -> list[dict]:
        sent = []

        async def receive():
            return message

        async def send(m):
            sent.append(m)

        scope = {"type": "http", "method": "POST", "path": path, "headers": [], "client": ("10.0.0.1", 5)}
        await RequestLog(app)(scope, receive, send)
        return sent

    with caplog.at_level(logging.INFO, logger="bgmrec.service"):
        asyncio.run(run("/health\nINFO: 1.2.3.4 \"GET /admin\" 200", {"type": "http.request", "body": b""}))
        asyncio.run(run("/recommend", {"type": "http.disconnect"}))
    forged, left = [r.getMessage() for r in caplog.records if r.name == "bgmrec.service"]
    assert forged.startswith('10.0.0.1:5 "POST /health%0AINFO%3A%201.2.3.4%20%22GET%20/admin%22%20200" 200 ')
    assert "\n" not in forged
    assert re.fullmatch(r'10\.0\.0\.1:5 "POST /recommend" - \d+\.\d ms id=[0-9a-f]{32} \(the client left before its '
                        r'answer\)', left)


def test_a_request_cancelled_by_the_server_s_stop_gets_a_503_and_a_log_line_not_a_traceback(caplog):
    # stopped with a client still sending (past the 30 s the requests in flight get), uvicorn cancelled the task
    # and logged "Exception in ASGI application" with a CancelledError traceback, and the client got nothing
    import asyncio

    from bgmrec.service import RequestLog

    async def app(scope, receive, send):  # waits for a body that arrives too slowly
        await asyncio.sleep(3600)

    async def run() -> list[dict]:
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": True}

        async def send(m):
            sent.append(m)

        scope = {"type": "http", "method": "POST", "path": "/recommend", "headers": [], "client": ("10.0.0.1", 5)}
        task = asyncio.create_task(RequestLog(app)(scope, receive, send))
        await asyncio.sleep(0.01)
        task.cancel()  # as uvicorn's shutdown does
        await task  # ends, without raising
        return sent

    with caplog.at_level(logging.INFO, logger="bgmrec.service"):
        sent = asyncio.run(run())
    assert sent[0]["status"] == 503 and (b"connection", b"close") in sent[0]["headers"]
    assert json.loads(sent[1]["body"]) == {"detail": "the server stopped before answering; retry"}
    line, = [r.getMessage() for r in caplog.records if r.name == "bgmrec.service"]
    assert re.fullmatch(r'10\.0\.0\.1:5 "POST /recommend" 503 \d+\.\d ms id=[0-9a-f]{32} \(cancelled: the server '
                        r'stopped before its answer\)', line)


def test_a_video_upload_without_the_media_packages_gets_a_501(client, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # "import av" fails, as without the media extra
    r = client.post("/recommend/video", files={"video": ("clip.mp4", b"not read", "video/mp4")})
    assert r.status_code == 501 and r.json()["detail"].startswith(
        "video upload, on the server: this needs bgmrec's media extra (pip install 'bgmrec[media]'): ")


def test_an_upload_whose_video_stream_has_no_decoder_gets_a_422_naming_it(client, monkeypatch, tmp_path):
    # a damaged mp4 (its stream's codec_context None) was an AttributeError: HTTP 500
    pytest.importorskip("av")
    import media_fixtures as mf

    monkeypatch.setattr(service._MediaEncoders, "_load_locked", lambda self: (None, None))  # decoding refuses it first
    bad = mf.without_codec(mf.write_video(tmp_path / "clip.mp4", 1.0, 96, 64, 8), tmp_path / "bad.mp4")
    r = client.post("/recommend/video", files={"video": ("bad.mp4", bad.read_bytes(), "video/mp4")})
    assert r.status_code == 422 and r.json() == {
        "detail": "video bad.mp4: no decoder for its video stream: a damaged header, or a codec FFmpeg does not decode"}


def test_a_batch_gives_taste_for_every_clip_or_for_none(client, tiny_ds):
    mixed = {"clips": [clip_body(tiny_ds, 0, taste={tiny_ds.genres[0]: 1.0}), clip_body(tiny_ds, 1)]}
    r = client.post("/recommend/batch", json=mixed)
    assert r.status_code == 422 and "every clip of a batch or for none" in r.json()["detail"]


def test_a_taste_sent_to_a_model_that_does_not_read_it_is_said_in_the_warnings(client, tiny_ds):
    from bgmrec.features.recommend import TASTE_NOT_READ

    plain = client.post("/recommend", json=clip_body(tiny_ds, 0, top=5)).json()
    tasted = client.post("/recommend", json=clip_body(tiny_ds, 0, top=5, taste={tiny_ds.genres[0]: 1.0})).json()
    assert tasted["tracks"] == plain["tracks"]  # CMVAE ranks without it (it was ignored without a word)
    assert (plain["warnings"], tasted["warnings"]) == ([], [TASTE_NOT_READ])
    batch = {"clips": [clip_body(tiny_ds, i, taste={tiny_ds.genres[1]: 2.0}) for i in range(2)], "top": 3}
    assert [a["warnings"] for a in client.post("/recommend/batch", json=batch).json()["results"]] == [
        [TASTE_NOT_READ]] * 2
    bad = client.post("/recommend", json=clip_body(tiny_ds, 0, taste={"polka": 1.0}))  # still checked
    assert bad.status_code == 422 and "unknown genre(s) polka" in bad.json()["detail"]
    # a model that reads a taste when given, without needing one (reads_taste), is not said to ignore it
    model = _ReadsTasteIfGiven(ModelConfig(), FeatureSpec.of(tiny_ds)).fit(SplitView(tiny_ds, "train"))
    recommender = ClipRecommender(model, tiny_catalog(tiny_ds))
    taste = np.full((1, tiny_ds.n_genres), 1.0)
    assert recommender.recommend([clip_of(tiny_ds, 0)], 3, taste=taste)[0]["warnings"] == []
    assert recommender.recommend([clip_of(tiny_ds, 0)], 3)[0]["warnings"] == []  # and needs none


class _ReadsTasteIfGiven(PopularityRecommender):
    """A plugin reading the uploader's taste when a query has one."""

    name = "reads-taste-if-given"
    reads_taste = True


def test_non_finite_features_are_refused(client, tiny_ds):
    body = clip_body(tiny_ds, 0)
    body["visual"][3] = float("nan")
    r = client.post("/recommend", content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == 422 and "visual: values must be finite" in r.json()["detail"]
    body["visual"][3] = 1e39  # a finite JSON number, but not a float32: still the client's mistake
    r = client.post("/recommend", json=body)
    assert r.status_code == 422 and "visual: values must be finite numbers within float32" in r.json()["detail"]
    bad = {"clips": [clip_body(tiny_ds, 0), {**clip_body(tiny_ds, 1), "visual": [1.0]}]}
    assert "clips[1].visual: expected" in client.post("/recommend/batch", json=bad).json()["detail"]
    one = {"clips": [{**clip_body(tiny_ds, 1), "visual": [1.0]}]}  # a batch of one names its clip too
    assert client.post("/recommend/batch", json=one).json()["detail"].startswith("clips[0].visual: expected")
    wrong_type = client.post("/recommend/batch", json={"clips": [clip_body(tiny_ds, 0)], "top": "many"})
    assert wrong_type.status_code == 422 and wrong_type.json()["detail"].startswith("top: ")


def test_personalised_mode_reads_the_uploaders_taste(tiny_ds):
    model = build("deccm-noteacher", FeatureSpec.of(tiny_ds), {"epochs": 1, "batch_size": 256, "prior_samples": 64})
    model.fit(SplitView(tiny_ds, "train"), None)
    with torch.no_grad():  # a strong taste path, so that taste must move the ranking
        model.module.taste.weight.copy_(3.0 * torch.eye(tiny_ds.n_genres))
    model.set_inference_mode("personalised")
    client = TestClient(create_app(ClipRecommender(model, tiny_catalog(tiny_ds))))
    no_taste = client.post("/recommend", json=clip_body(tiny_ds, 0))
    assert no_taste.status_code == 422 and no_taste.json()["detail"].startswith("taste: required in personalised")
    upload = client.post("/recommend/video", files={"video": ("clip.mp4", b"not read", "video/mp4")})
    assert upload.status_code == 422 and "takes no uploader taste" in upload.json()["detail"]
    genres = list(tiny_ds.genres)
    mixed = {"clips": [clip_body(tiny_ds, 0, taste={genres[0]: 1.0}), clip_body(tiny_ds, 1)]}
    assert client.post("/recommend/batch", json=mixed).json()["detail"].startswith("taste: required in personalised")
    for liked in genres[:2]:
        taste = {g: (0.9 if g == liked else 0.02) for g in genres}
        got = client.post("/recommend", json=clip_body(tiny_ds, 0, top=10, taste=taste)).json()["tracks"]
        share = np.mean([t["genre"] == liked for t in got])
        assert share >= 0.5, (liked, [t["genre"] for t in got])


def test_a_genre_filter_returns_the_best_tracks_of_those_genres(tiny_ds, cmvae, client):
    recommender = ClipRecommender(cmvae, tiny_catalog(tiny_ds))
    assert client.get("/health").json()["catalog_genres"] == sorted(tiny_ds.genres) == recommender.genre_names
    clips = [clip_of(tiny_ds, 0), clip_of(tiny_ds, 1)]
    wanted = sorted(tiny_ds.genres)[:2]
    everything = recommender.recommend(clips, len(recommender.catalog))
    of_wanted = [t["id"] for t in everything[0]["tracks"] if t["genre"] in wanted]
    got = recommender.recommend(clips, 5, genres=[wanted, None], exclude=[[of_wanted[0]], []])
    assert [t["id"] for t in got[0]["tracks"]] == of_wanted[1:6]  # the best of those genres, one excluded
    assert got[1]["tracks"] == everything[1]["tracks"][:5]  # None: every genre
    assert got[0]["warnings"] == got[1]["warnings"] == []
    # every track of the wanted genres excluded: an empty answer that says why (it said nothing)
    from bgmrec.features.recommend import NOTHING_LEFT

    empty = recommender.recommend(clips[:1], 5, genres=[wanted], exclude=[of_wanted])[0]
    assert (empty["tracks"], empty["warnings"]) == ([], [NOTHING_LEFT])
    # an excluded track outside the genres too (its position given twice), and one set of genres for several clips
    # (the tracks outside it found once), exactly and through FAISS alike
    outside = next(t["id"] for t in everything[0]["tracks"] if t["genre"] not in wanted)
    wanted_1 = [t["id"] for t in everything[1]["tracks"] if t["genre"] in wanted]
    for index in ("exact", "faiss"):
        both = ClipRecommender(cmvae, tiny_catalog(tiny_ds), index).recommend(
            clips, 5, genres=[wanted, list(reversed(wanted))], exclude=[[of_wanted[0], outside], []])
        assert [[t["id"] for t in a["tracks"]] for a in both] == [of_wanted[1:6], wanted_1[:5]], index
    answer = client.post("/recommend", json={**clip_body(tiny_ds, 0), "top": 5, "genres": wanted}).json()
    assert [t["id"] for t in answer["tracks"]] == [t["id"] for t in recommender.recommend(
        clips[:1], 5, genres=[wanted])[0]["tracks"]]
    for genres, words in (([["polka"]], "genres: unknown genre(s) polka; the catalogue has"),
                          (["pop"], "genres[0] must be a list of genre names, got str"),
                          ([None, None], "genres has 2 lists for 1 clips")):
        with pytest.raises(RequestError, match=re.escape(words)):
            recommender.recommend(clips[:1], 5, genres=genres)
    r = client.post("/recommend", json={**clip_body(tiny_ds, 0), "genres": ["polka"]})
    assert r.status_code == 422 and "unknown genre(s) polka" in r.json()["detail"]


def test_taste_weights_are_normalised_without_overflow():
    from bgmrec.features.recommend import normalised_taste

    weights = np.stack([taste_vector({"a": 1e308, "b": 1e308}, ["a", "b", "c"]),
                        taste_vector({"a": 3.0, "c": 1.0}, ["a", "b", "c"])])
    np.testing.assert_allclose(normalised_taste(weights), [[0.5, 0.5, 0.0], [0.75, 0.0, 0.25]])
    for bad in ([[0.0, 0.0, 0.0]], [[1.0, -1.0, 1.0]], [[np.nan, 1.0, 1.0]]):
        with pytest.raises(RequestError, match="taste: weights must be finite, non-negative and not all zero"):
            normalised_taste(np.array(bad))


def test_the_library_checks_taste_as_the_service_does(tiny_ds):
    personalised = build("deccm", FeatureSpec.of(tiny_ds), {"epochs": 1, "teacher": False, "batch_size": 256}).fit(
        SplitView(tiny_ds, "train"), None)
    personalised.set_inference_mode("personalised")
    recommender = ClipRecommender(personalised, tiny_catalog(tiny_ds))
    clips = [clip_of(tiny_ds, 0), clip_of(tiny_ds, 1)]
    g = len(tiny_ds.genres)
    with pytest.raises(RequestError, match=r"^taste: required in personalised mode"):
        recommender.recommend(clips, 3)
    with pytest.raises(RequestError, match=rf"^taste must have shape \[2, {g}\] \(one row of genre weights per "
                                           rf"clip, in the model's genre order\), got \[{g}\]"):
        recommender.recommend(clips, 3, taste=np.ones(g))
    scaled = recommender.recommend(clips, 3, taste=np.full((2, g), 5.0))  # weights, normalised per clip
    assert scaled == recommender.recommend(clips, 3, taste=np.full((2, g), 1.0 / g))


def test_faiss_index_serves_the_same_tracks(tiny_ds, cmvae, client):
    approx = TestClient(create_app(ClipRecommender(cmvae, tiny_catalog(tiny_ds), index="faiss")))
    assert approx.get("/health").json()["index"] == "faiss"
    overlap = []
    for video in range(20):
        a = {t["id"] for t in approx.post("/recommend", json=clip_body(tiny_ds, video)).json()["tracks"]}
        b = {t["id"] for t in client.post("/recommend", json=clip_body(tiny_ds, video)).json()["tracks"]}
        overlap.append(len(a & b) / 10)
    assert np.mean(overlap) >= 0.95


def local_client(app) -> TestClient:
    """A client of ``app`` sending what a client of ``bgmrec serve``'s default address does (``Host:
    127.0.0.1:8000``; TestClient's own, ``testserver``, is refused there)."""
    return TestClient(app, base_url="http://127.0.0.1:8000")


def serve_command(ds, model, folder: Path, monkeypatch) -> tuple[list[str], dict]:
    """``bgmrec serve``'s arguments for ``model`` saved in ``folder`` and ``ds``'s catalogue, and the dict
    that receives what it passes to uvicorn.run (patched: nothing listens) and the address it checked first
    (``checked``; patched too: a port of this machine in use elsewhere does not fail these tests)."""
    import uvicorn

    model.save(folder / "run")
    catalog = tiny_catalog(ds)
    monkeypatch.setattr("bgmrec.features.audio.load_catalog", lambda root: catalog)
    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.update(app=app, **kw))
    monkeypatch.setattr("bgmrec.cli.serve.check_can_listen", lambda host, port: started.update(checked=(host, port)))
    import signal

    monkeypatch.setattr(signal, "signal", lambda signum, handler: started.setdefault(f"signal {signum}", handler))
    # started from a terminal (SIGHUP's default action), whatever started the tests: under nohup serve leaves it
    monkeypatch.setattr(signal, "getsignal", lambda signum: signal.SIG_DFL)
    monkeypatch.setattr("bgmrec.service._MediaEncoders.load", lambda self: started.update(encoders_loaded=True))
    return ["serve", "--run", str(folder / "run"), "--catalog", str(folder / "cat")], started


def test_serve_notes_a_stopped_training(tiny_ds, cmvae, tmp_path, monkeypatch, capsys):
    # a RUN.partial (train stopped: its best epoch so far) was served without a word
    from bgmrec.cli import main

    args, _ = serve_command(tiny_ds, cmvae, tmp_path, monkeypatch)
    (tmp_path / "run" / "run.json").write_text(json.dumps({"stopped_at_epoch": 3, "of_epochs": 5, "best_epoch": 2}))
    capsys.readouterr()
    assert main(args) == 0
    assert (f"note: {tmp_path / 'run'} is a training stopped at epoch 3 of 5: its best epoch so far (2), not a "
            "finished training") in capsys.readouterr().err


def test_serve_command_loads_the_run_and_catalogue_and_starts_uvicorn(tiny_ds, cmvae, tmp_path, monkeypatch):
    from bgmrec.cli import main

    args, started = serve_command(tiny_ds, cmvae, tmp_path, monkeypatch)
    assert main([*args, "--port", "8123"]) == 0
    assert started["port"] == 8123 and started["host"] == "127.0.0.1"
    assert started["timeout_graceful_shutdown"] == 30  # a client keeping its connection open kept the server up
    # the service's request log (with latency and request id) replaces uvicorn's access log, through its handler
    assert started["access_log"] is False
    assert started["log_config"]["loggers"]["bgmrec.service"] == {"handlers": ["default"], "level": "INFO",
                                                                  "propagate": False}
    assert started["log_config"]["formatters"]["default"]["fmt"].startswith("%(asctime)s ")  # when it was served
    import signal

    assert callable(started[f"signal {signal.SIGHUP}"])  # a closed terminal stops it as SIGTERM does, not at once
    assert started["checked"] == ("127.0.0.1", 8123)
    assert main([*args, "--stop-seconds", "8"]) == 0 and started["timeout_graceful_shutdown"] == 8  # docker stop: 10
    assert local_client(started["app"]).get("/health").json()["tracks"] == tiny_ds.n_tracks
    assert main([*args, "--index", "annoy"]) == 2
    assert main([*args, "--max-upload-mb", "0.5"]) == 0
    health = local_client(started["app"]).get("/health").json()
    assert health["max_upload_bytes"] == 2**19 and health["served_by"]["run"] == "run"
    assert main([*args, "--max-upload-mb", "0"]) == 2
    assert health["video_frames"] == 8  # extract-videos' default: the run records no training frames
    record = tmp_path / "run" / "run.json"  # one that does: uploads are sampled as its training videos were
    record.write_text(json.dumps({"feature_settings": {"videos": {"frames": 4}}}))
    assert main(args) == 0
    assert local_client(started["app"]).get("/health").json()["video_frames"] == 4
    assert main([*args, "--frames", "6"]) == 0
    assert local_client(started["app"]).get("/health").json()["video_frames"] == 6


def test_serve_loads_the_video_encoders_at_start_up_unless_told_to_wait_for_the_first_upload(tiny_ds, cmvae, tmp_path,
                                                                                             monkeypatch):
    # the first upload to a server waited 3.8 s for the encoders while the others took 0.3 s
    from bgmrec.cli import main

    args, started = serve_command(tiny_ds, cmvae, tmp_path, monkeypatch)
    assert main(args) == 0 and started.pop("encoders_loaded")
    assert main([*args, "--lazy-encoders"]) == 0 and "encoders_loaded" not in started


def test_a_server_without_the_media_packages_says_at_start_up_that_video_uploads_get_a_501(tiny_ds, cmvae,
                                                                                            monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # "import av" fails, as without the media extra
    said = []
    recommender = ClipRecommender(cmvae, tiny_catalog(tiny_ds))
    health = TestClient(create_app(recommender, load_video_encoders=True, warn=said.append)).get("/health").json()
    assert health["status"] == "ok" and health["warnings"] == said
    assert said[0].startswith("POST /recommend/video will answer 501: the encoders of uploaded videos: this needs "
                              "bgmrec's media extra (pip install 'bgmrec[media]'): ")
    assert TestClient(create_app(recommender)).get("/health").json()["warnings"] == []  # not loaded: not checked


@pytest.mark.parametrize("module", ["av", "efficientnet_lite_pytorch", "sentence_transformers"])
def test_a_missing_media_module_is_advised_once(tiny_ds, cmvae, monkeypatch, module):
    # the server's words around the extras' own said "pip install" twice for every module but av
    monkeypatch.setitem(sys.modules, module, None)
    said = []
    create_app(ClipRecommender(cmvae, tiny_catalog(tiny_ds)), load_video_encoders=True, warn=said.append)
    assert len(said) == 1 and said[0].count("pip install") == 1 and module in said[0]


@pytest.mark.media
def test_loading_the_video_encoders_loads_both_networks():
    from bgmrec.service import _MediaEncoders

    encoders = _MediaEncoders(frames=4)
    encoders.load()
    frame_encoder, text_encoder = encoders._loaded
    assert frame_encoder._net is not None and text_encoder._model is not None
    encoders.load()
    assert encoders._loaded[0] is frame_encoder  # once


def test_serve_takes_a_dataset_folder_as_its_catalogue(tiny_ds, cmvae, tmp_path, monkeypatch):
    """A model trained on a simulated world is served on that world's tracks, with their ids."""
    import uvicorn

    from bgmrec.cli import main

    cmvae.save(tmp_path / "run")
    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.update(app=app))
    monkeypatch.setattr("bgmrec.cli.serve.check_can_listen", lambda host, port: None)
    assert main(["serve", "--run", str(tmp_path / "run"), "--catalog", str(tiny_ds.root)]) == 0
    served = local_client(started["app"]).post("/recommend", json=clip_body(tiny_ds, 5)).json()["tracks"]
    top, _ = cmvae.recommend(VideoQuery.from_dataset(tiny_ds, [5]), MusicCatalog.from_dataset(tiny_ds), 10)
    assert [t["id"] for t in served] == [tiny_ds.track_ids[j] for j in top[0]]


def test_serve_on_an_address_it_cannot_listen_on_fails_naming_it_before_anything_is_loaded(tmp_path, monkeypatch,
                                                                                             capsys):
    # the model and the catalogue were loaded first, then uvicorn exited with code 3: "[Errno 98] address already
    # in use"
    import socket

    import uvicorn

    from bgmrec.cli import main

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: pytest.fail("uvicorn.run was called"))
    args = ["serve", "--run", str(tmp_path / "no-run"), "--catalog", str(tmp_path / "no-catalog")]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        capsys.readouterr()
        assert main([*args, "--port", str(port)]) == 2  # the run and catalogue do not exist: never read
        assert capsys.readouterr().err == (f"error: --host 127.0.0.1 --port {port}: cannot listen there (Address "
                                           "already in use); choose another --port or stop what listens there\n")
    assert main([*args, "--host", "no-such-host.invalid"]) == 2
    assert capsys.readouterr().err.startswith("error: --host no-such-host.invalid --port 8000: cannot listen there (")
    from bgmrec.cli.serve import check_can_listen

    with socket.socket() as free:  # a port nothing listens on passes (and is not kept)
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    check_can_listen("127.0.0.1", port)
    check_can_listen("127.0.0.1", port)
    # as uvicorn's asyncio server, an IPv6 address is bound IPv6-only: a listener on IPv4's 0.0.0.0 leaves :: free
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return  # no IPv6 on this machine
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        check_can_listen("::", port)
        with pytest.raises(ValueError, match="Address already in use"):
            check_can_listen("0.0.0.0", port)


def test_serve_sets_the_faiss_search_breadth_and_health_reports_it(tiny_ds, cmvae, tmp_path, monkeypatch):
    from bgmrec.cli import main

    args, started = serve_command(tiny_ds, cmvae, tmp_path, monkeypatch)
    assert main([*args, "--index", "faiss", "--ef-search", "64"]) == 0
    health = local_client(started["app"]).get("/health").json()
    assert health["index"] == "faiss" and health["index_settings"]["ef_search"] == 64
    assert main([*args, "--index", "faiss"]) == 0
    assert local_client(started["app"]).get("/health").json()["index_settings"] == {
        "m": 32, "ef_search": 256, "ef_construction": 100}
    assert main(args) == 0
    assert local_client(started["app"]).get("/health").json()["index_settings"] == {}
    assert main([*args, "--ef-search", "64"]) == 2  # read by the faiss index only


@pytest.fixture
def torch_threads():
    """Puts back torch's intra-op threads, which ``bgmrec serve`` sets for its whole process."""
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


def test_serve_sets_torchs_threads_and_health_reports_them(tiny_ds, cmvae, tmp_path, monkeypatch, torch_threads):
    # every request used torch's default, all the machine's cores, however many requests ran at once
    from bgmrec.cli import main

    args, started = serve_command(tiny_ds, cmvae, tmp_path, monkeypatch)
    default = torch.get_num_threads()
    assert main(args) == 0  # torch's own count, reported
    assert local_client(started["app"]).get("/health").json()["threads"] == default
    for n in (default + 1, 1):
        assert main([*args, "--threads", str(n)]) == 0
        assert torch.get_num_threads() == n
        assert local_client(started["app"]).get("/health").json()["threads"] == n  # as a request's thread sees it
    assert main([*args, "--threads", "0"]) == 2


def test_unknown_fields_are_refused_naming_the_field(client, tiny_ds):
    r = client.post("/recommend", json=clip_body(tiny_ds, 0, top_k=3))
    assert r.status_code == 422 and r.json()["detail"].startswith("top_k: unknown field")
    batch = {"clips": [clip_body(tiny_ds, 0), clip_body(tiny_ds, 1, exlude=["x"])], "top": 2}
    r = client.post("/recommend/batch", json=batch)
    assert r.status_code == 422 and r.json()["detail"].startswith("clips[1].exlude: unknown field")
    r = client.post("/recommend/batch", json={"clips": [clip_body(tiny_ds, 0)], "k": 2})
    assert r.status_code == 422 and r.json()["detail"].startswith("k: unknown field")


def test_features_whose_scores_overflow_are_refused(client, tiny_ds):
    huge = {**clip_body(tiny_ds, 0), "visual": [3e38] * tiny_ds.video_visual.shape[1]}
    r = client.post("/recommend", json=huge)
    assert r.status_code == 422, r.json()
    assert r.json()["detail"].startswith("visual/text: the model's scores for these features are not finite")
    r = client.post("/recommend/batch", json={"clips": [clip_body(tiny_ds, 0), huge]})
    assert r.status_code == 422 and r.json()["detail"].startswith("clips[1]: the model's scores")


def test_a_clip_the_index_finds_a_nan_score_for_is_refused_naming_it(tiny_ds, cmvae, monkeypatch):
    """Finite video encodings whose inner products overflow to inf - inf: the index refuses the query (its
    NaNScoreError), which the server answers with 422 naming the clip, not a 500."""
    from bgmrec.index import NaNScoreError

    recommender = ClipRecommender(cmvae, tiny_catalog(tiny_ds))

    def refused(queries, k, exclude=None):
        raise NaNScoreError(1, 0)

    monkeypatch.setattr(recommender.index, "search", refused)
    r = TestClient(create_app(recommender)).post("/recommend/batch", json={
        "clips": [clip_body(tiny_ds, 0), clip_body(tiny_ds, 1)]})
    assert r.status_code == 422 and r.json()["detail"].startswith("clips[1]: the model's scores for these "
                                                                  "features are not finite")



def test_a_clip_far_from_the_training_videos_is_warned_of_in_its_answer(tiny_ds, cmvae):
    """Tracks so far out were named at start-up; a clip so far out got its extrapolated scores without a word."""
    clip = clip_body(tiny_ds, 0)
    far = {**clip, "visual": (np.asarray(clip["visual"]) + 1000.0 * np.asarray(tiny_ds.video_visual).std(0)).tolist()}
    client = TestClient(create_app(ClipRecommender(cmvae, tiny_catalog(tiny_ds))))
    r = client.post("/recommend/batch", json={"clips": [clip, far]})
    assert r.status_code == 200
    near, out = (a["warnings"] for a in r.json()["results"])
    assert near == []
    [said] = out
    assert re.fullmatch(r"its features lie up to \S+ standard deviations from the model's training videos \(more than "
                        r"20\): its scores can be out of all proportion; give clips like the training videos, "
                        r"extracted with the same extractor and settings", said)
    assert float(said.split()[5]) > 900
    # a model that keeps no statistics of its training videos says nothing
    popularity = build("popularity", FeatureSpec.of(tiny_ds)).fit(SplitView(tiny_ds, "train"))
    r = TestClient(create_app(ClipRecommender(popularity, tiny_catalog(tiny_ds)))).post("/recommend", json=far)
    assert r.status_code == 200 and r.json()["warnings"] == []


def test_a_model_whose_embeddings_differ_in_width_is_refused_at_start_up(tiny_ds, tmp_path, monkeypatch, capsys):
    """serve started, /health answered, then every request was a 500 (torch: shapes cannot be multiplied)."""
    from bgmrec.cli import main
    from bgmrec.models.baselines import PopularityRecommender

    popularity = build("popularity", FeatureSpec.of(tiny_ds)).fit(SplitView(tiny_ds, "train"))
    args, started = serve_command(tiny_ds, popularity, tmp_path, monkeypatch)
    wider = PopularityRecommender._encode_music
    monkeypatch.setattr(PopularityRecommender, "_encode_music", lambda self, c: np.hstack([wider(self, c)] * 2))
    message = ("popularity: encode_videos gives 1 columns, encode_music 2; they must match (the score is their inner "
               "product)")
    with pytest.raises(ValueError, match=re.escape(message)):
        ClipRecommender(popularity, tiny_catalog(tiny_ds))
    capsys.readouterr()
    assert main(args) == 2
    assert "app" not in started and capsys.readouterr().err.strip().endswith(message)  # uvicorn never ran

def test_every_answer_says_which_run_and_catalogue_answered(tiny_ds, cmvae, tmp_path, monkeypatch):
    import hashlib

    import bgmrec
    import bgmrec.data.dataset as cache  # where sha256_file lives
    from bgmrec.models.base import load_model

    cmvae.save(tmp_path / "run-7")
    catalog = tiny_catalog(tiny_ds)
    catalog.root, catalog.manifest = tmp_path / "catalogue", {"content_hash": "c0ffee"}
    hashed = []
    real = cache.sha256_file
    monkeypatch.setattr(cache, "sha256_file", lambda p: hashed.append(p.name) or real(p))
    client = TestClient(create_app(ClipRecommender(load_model(tmp_path / "run-7"), catalog)))
    files = "".join(real(tmp_path / "run-7" / n) for n in ("config.json", "weights.safetensors"))
    want = {"model": "cmvae", "inference_mode": None, "bgmrec_version": bgmrec.__version__, "run": "run-7",
            "run_sha256": hashlib.sha256(files.encode()).hexdigest(), "catalog": "catalogue",
            "catalog_hash": "c0ffee"}
    health = client.get("/health").json()
    assert health["served_by"] == want and health["model"] == "cmvae"  # the old fields stay
    one = client.post("/recommend", json=clip_body(tiny_ds, 0, top=2)).json()
    assert one["served_by"] == want and len(one["tracks"]) == 2
    batch = client.post("/recommend/batch", json={"clips": [clip_body(tiny_ds, 0)], "top": 2}).json()
    assert batch["served_by"] == want and len(batch["results"]) == 1
    assert hashed == ["config.json", "weights.safetensors"]  # once, at start-up


@pytest.mark.parametrize("content_type, body, reason", [
    ("multipart/form-data; boundary=XYZ", b'--ABC\r\nContent-Disposition: form-data; name="video"; filename="a.mp4"'
     b"\r\n\r\nxx\r\n--ABC--\r\n", "Invalid multipart data"),  # another boundary than declared
    ("multipart/form-data", b"--XYZ\r\n", "Missing boundary in multipart"),
    ("multipart/form-data; boundary=XYZ", b'--XYZ\r\nContent-Disposition: form-data; filename="a.mp4"\r\n\r\nxx\r\n'
     b"--XYZ--\r\n", 'The Content-Disposition header field "name" must be provided'),
], ids=["other boundary", "no boundary", "part without a name"])
def test_a_form_the_framework_cannot_read_gets_a_422_saying_so(client, content_type, body, reason):
    # they got the framework's bare 400 ("Invalid multipart data."), unlike every other body the client must fix
    r = client.post("/recommend/video", content=body, headers={"content-type": content_type})
    assert r.status_code == 422
    assert r.json() == {"detail": f"body: not a readable multipart/form-data body ({reason}); send the video as the "
                                  "form field 'video' (curl -F video=@clip.mp4)"}


def test_a_body_of_the_other_kind_than_the_endpoint_reads_is_named(client, tiny_ds):
    # JSON sent to /recommend/video was "video: Field required"; a form sent to /recommend "body: Input should be a
    # valid dictionary ... got bytes"
    for headers, sent in (({"content-type": "application/json"}, "application/json"),
                          ({}, "a body without a Content-Type")):
        r = client.post("/recommend/video", content=json.dumps(clip_body(tiny_ds, 0)).encode(), headers=headers)
        assert r.status_code == 422
        assert r.json() == {"detail": "body: POST /recommend/video reads a multipart/form-data form (curl -F "
                                      f"video=@clip.mp4), not {sent}; a clip's features as JSON go to POST /recommend"}
    for path in ("/recommend", "/recommend/batch"):
        r = client.post(path, files={"video": ("clip.mp4", b"x", "video/mp4")})
        assert r.status_code == 422
        assert r.json() == {"detail": f"body: POST {path} reads JSON (Content-Type: application/json), not "
                                      "multipart/form-data; a video file goes to POST /recommend/video as a multipart "
                                      "form"}
    for headers, sent in (({"content-type": "text/plain"}, "text/plain"), ({}, "without a Content-Type")):
        r = client.post("/recommend", content=json.dumps(clip_body(tiny_ds, 0)).encode(), headers=headers)
        assert (r.status_code, r.json()) == (422, {"detail": "body: POST /recommend reads JSON: send it with "
                                                             f"Content-Type: application/json, not {sent}"})
    r = client.post("/recommend", json={**clip_body(tiny_ds, 0), "top": "many"})  # JSON to JSON: as before
    assert r.status_code == 422 and r.json()["detail"].startswith("top: ")
    from fastapi import FastAPI

    outer = FastAPI()
    outer.mount("/bgm", client.app)  # under a prefix: the endpoint is known by its own path
    r = TestClient(outer).post("/bgm/recommend/video", json=clip_body(tiny_ds, 0))
    assert r.status_code == 422 and r.json()["detail"].startswith("body: POST /recommend/video reads a multipart")


def test_a_compressed_body_gets_a_415_saying_so(client, tiny_ds):
    # gzip was not read: a gzipped JSON body was "not valid JSON", a plain one labelled gzip answered as if read
    import gzip

    plain = json.dumps(clip_body(tiny_ds, 0)).encode()
    for body, encoding in ((gzip.compress(plain), "gzip"), (plain, "gzip"), (plain, " Deflate")):
        r = client.post("/recommend", content=body, headers={"content-type": "application/json",
                                                            "content-encoding": encoding})
        assert r.status_code == 415 and r.headers["accept-encoding"] == "identity"
        assert r.json() == {"detail": f"body: Content-Encoding {encoding.strip().lower()!r} is not read by this "
                                      "server; send it uncompressed"}
    r = client.post("/recommend/video", files={"video": ("clip.mp4", b"x", "video/mp4")},
                    headers={"content-encoding": "gzip"})
    assert r.status_code == 415
    for identity in ("identity", "", "Identity, identity"):  # as none
        assert client.post("/recommend", content=plain, headers={"content-type": "application/json",
                                                                   "content-encoding": identity}).status_code == 200
    two = [("content-type", "application/json"), ("content-encoding", "identity"), ("content-encoding", "gzip")]
    r = client.post("/recommend", content=plain, headers=two)
    assert r.status_code == 415  # a second header is read too


def test_video_uploads_past_the_limit_get_a_413(tiny_ds, cmvae):
    client = TestClient(create_app(ClipRecommender(cmvae, tiny_catalog(tiny_ds)), max_upload=1000))
    assert client.get("/health").json()["max_upload_bytes"] == 1000
    for size in (1001, 3 * 2**20):  # counted while streamed to disk / refused from its Content-Length
        r = client.post("/recommend/video", files={"video": ("clip.mp4", b"x" * size, "video/mp4")})
        assert r.status_code == 413, r.json()
        assert r.json()["detail"].startswith("video: the upload is larger than this server's limit of 1000 bytes")


def test_json_bodies_past_the_limit_get_a_413_before_they_are_read(tiny_ds, cmvae, monkeypatch):
    import bgmrec.service

    monkeypatch.setattr(bgmrec.service, "json_limit", lambda spec, clips=1024: 5000)
    client = TestClient(create_app(ClipRecommender(cmvae, tiny_catalog(tiny_ds))))
    assert client.get("/health").json()["max_json_bytes"] == 5000
    assert len(json.dumps(clip_body(tiny_ds, 0))) < 5000
    assert client.post("/recommend", json=clip_body(tiny_ds, 0)).status_code == 200
    for path, body in (("/recommend", clip_body(tiny_ds, 0, top=2) | {"visual": [0.5] * 2000}),
                       ("/recommend/batch", {"clips": [clip_body(tiny_ds, i) for i in range(20)], "top": 2})):
        assert len(json.dumps(body)) > 5000
        r = client.post(path, json=body)
        assert r.status_code == 413 and re.match(r"body: \d+ bytes is larger than this server's limit of 5000 "
                                                 r"bytes for JSON", r.json()["detail"]), r.json()


def test_one_clips_body_has_a_lower_limit_than_a_batchs(client):
    from bgmrec.service import MAX_CLIP_JSON

    health = client.get("/health").json()
    assert health["max_clip_json_bytes"] == MAX_CLIP_JSON == 8 * 2**20 < health["max_json_bytes"]
    body = b"x" * (MAX_CLIP_JSON + 1)  # refused from its Content-Length, unread
    r = client.post("/recommend", content=body, headers={"content-type": "application/json"})
    assert (r.status_code, r.json()) == (413, {"detail": f"body: {MAX_CLIP_JSON + 1} bytes is larger than this "
                                                         f"server's limit of {MAX_CLIP_JSON} bytes for JSON (8 MB)"})
    r = client.post("/recommend/batch", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422  # read, and refused as the JSON it is not


def _post_in_chunks(app, path: str, content_type: str, head: bytes, chunks: int, size: int = 2**16,
                    stall: bool = False, pause: float = 0.0):
    """POST ``head`` then ``chunks`` blocks of ``size`` bytes to the ASGI ``app`` without a Content-Length, as a
    server hands a chunked body on (``pause`` seconds before each block), then the body's end, or (``stall``)
    nothing more, the connection kept open; (status, JSON answer, body bytes the app pulled)."""
    import asyncio

    blocks = iter([head] + [b"x" * size] * chunks)
    pulled, sent = [], []

    async def receive():
        await asyncio.sleep(pause)
        block = next(blocks, None)
        if block is None and stall:
            await asyncio.Event().wait()
        pulled.append(len(block or b""))
        return {"type": "http.request", "body": block or b"", "more_body": block is not None}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
             "headers": [(b"content-type", content_type.encode()), (b"transfer-encoding", b"chunked")],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    answer = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(answer), sum(pulled)


def test_bodies_sent_without_a_length_are_counted_and_refused_past_the_limit(tiny_ds, cmvae, monkeypatch):
    # only a declared Content-Length was checked: a chunked 400 MB upload to a 1 MB server was spooled to disk
    # whole, a chunked 100 MB JSON body read into memory, before any answer
    import bgmrec.service

    monkeypatch.setattr(bgmrec.service, "json_limit", lambda spec, clips=1024: 5000)
    app = create_app(ClipRecommender(cmvae, tiny_catalog(tiny_ds)), max_upload=1000)
    head = (b'--b0undary\r\ncontent-disposition: form-data; name="video"; filename="clip.mp4"\r\n'
            b"content-type: video/mp4\r\n\r\n")
    status, answer, pulled = _post_in_chunks(app, "/recommend/video", "multipart/form-data; boundary=b0undary",
                                             head, chunks=1000)  # 64 MB offered
    assert status == 413 and answer["detail"].startswith("video: the upload is larger than this server's limit "
                                                         "of 1000 bytes")
    assert pulled <= 1000 + bgmrec.service.FORM_SLACK + 2**16  # stopped at the limit
    status, answer, pulled = _post_in_chunks(app, "/recommend", "application/json", b'{"visual": "', chunks=1000)
    assert (status, answer) == (413, {"detail": "body: the request is larger than this server's limit of 5000 "
                                                "bytes for JSON (0 MB)"})
    assert pulled <= 5000 + 2**16
    client = TestClient(app)
    r = client.post("/recommend", content=iter([json.dumps(clip_body(tiny_ds, 0, top=2)).encode()]),
                    headers={"content-type": "application/json"})
    assert r.status_code == 200 and len(r.json()["tracks"]) == 2  # a small chunked body is read as before


def test_a_body_that_stalls_gets_a_408_and_frees_its_batch_slot(tiny_ds, cmvae, monkeypatch):
    # four clients that sent part of a batch and then nothing, their connections open, kept every batch out with
    # 503 for as long as they stayed
    monkeypatch.setattr(service, "BODY_IDLE_SECONDS", 0.2)
    app = create_app(ClipRecommender(cmvae, tiny_catalog(tiny_ds)), max_batches=1)
    for path, content_type, head in (("/recommend/batch", "application/json", b'{"clips": ['),
                                     ("/recommend", "application/json", b'{"visual": ['),
                                     ("/recommend/video", "multipart/form-data; boundary=b0undary",
                                      b'--b0undary\r\ncontent-disposition: form-data; name="video"; '
                                      b'filename="clip.mp4"\r\ncontent-type: video/mp4\r\n\r\n')):
        status, answer, pulled = _post_in_chunks(app, path, content_type, head, chunks=2, stall=True)
        assert (status, answer) == (408, {"detail": f"body: nothing of it arrived for 0.2 s after {pulled} bytes; "
                                                    "send the request again"}), path
    batch = {"clips": [clip_body(tiny_ds, i) for i in range(2)], "top": 2}
    assert TestClient(app).post("/recommend/batch", json=batch).status_code == 200  # its one slot is free


def test_a_body_that_trickles_gets_a_408_and_frees_its_batch_slot(tiny_ds, cmvae, monkeypatch):
    # a byte every few seconds never tripped the idle limit: four such clients held every batch slot for good
    monkeypatch.setattr(service, "BODY_IDLE_SECONDS", 0.2)
    monkeypatch.setattr(service, "MIN_BODY_RATE", 1000)
    app = create_app(ClipRecommender(cmvae, tiny_catalog(tiny_ds)), max_batches=1)
    status, answer, pulled = _post_in_chunks(app, "/recommend/batch", "application/json", b'{"clips": [', chunks=100,
                                             size=1, pause=0.05)
    assert status == 408 and pulled < 20
    assert re.fullmatch(rf"body: {pulled} bytes arrived in 0 s of waiting for it, slower than this server's minimum "
                        r"of 1000 bytes/s; send the request again", answer["detail"]), answer
    batch = {"clips": [clip_body(tiny_ds, i) for i in range(2)], "top": 2}
    assert TestClient(app).post("/recommend/batch", json=batch).status_code == 200  # its one slot is free
    status, _, _ = _post_in_chunks(app, "/recommend", "application/json", b'{"visual": [', chunks=6, size=500,
                                   pause=0.05)  # as slowly, but at the minimum rate: read whole (and refused as JSON)
    assert status == 422


def test_a_batch_slot_is_free_once_the_answer_is_handed_on(tiny_ds, cmvae):
    # freed only after the client had the whole answer, a client sending batches one after another found its own
    # slot still taken: 49 of 200 answers were 503 with two clients and two slots
    import asyncio

    app = create_app(ClipRecommender(cmvae, tiny_catalog(tiny_ds)), max_batches=1)
    body = json.dumps({"clips": [clip_body(tiny_ds, 0)], "top": 2}).encode()
    statuses = []

    async def one_after_another():
        async def send(message):  # each answer's last part starts the next request, as a fast client does
            if message["type"] == "http.response.start":
                statuses.append(message["status"])
            if message["type"] == "http.response.body" and not message.get("more_body") and len(statuses) < 3:
                await post()

        async def post():
            sent = iter([{"type": "http.request", "body": body, "more_body": False}])

            async def receive():
                return next(sent, None) or await asyncio.Event().wait()

            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                     "scheme": "http", "path": "/recommend/batch", "raw_path": b"/recommend/batch", "root_path": "",
                     "query_string": b"", "headers": [(b"content-type", b"application/json")],
                     "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
            await app(scope, receive, send)

        await post()

    asyncio.run(one_after_another())
    assert statuses == [200, 200, 200]


def test_the_json_limit_holds_a_full_batch_of_the_widest_values():
    from types import SimpleNamespace

    from bgmrec.service import FORM_SLACK, MAX_BATCH, MAX_CLIP_JSON, MAX_JSON, json_limit

    assert json_limit(SimpleNamespace(video_visual=32, video_text=16)) == MAX_JSON  # the floor
    # one clip's body has its own, lower floor: 6 million excludes in 57 MB took the server from 329 to 964 MB
    assert json_limit(SimpleNamespace(video_visual=32, video_text=16), clips=1) == MAX_CLIP_JSON < MAX_JSON
    wide = SimpleNamespace(video_visual=2048, video_text=768)  # TT-150k's ResNet + BERT widths
    longest = json.dumps({"visual": [-0.12345678901234568] * 2048, "text": [-1.2345678901234567e-05] * 768,
                          "exclude": [], "taste": None})
    assert json_limit(wide) >= MAX_BATCH * (len(longest) + 2) + FORM_SLACK  # a full batch of those clips


def test_copy_limited_streams_in_chunks_and_stops_past_the_limit():
    import io

    from bgmrec.service import copy_limited

    class Source(io.BytesIO):
        reads: list[int] = []

        def read(self, n=-1):
            self.reads.append(n)
            return super().read(n)

    dst = io.BytesIO()
    assert copy_limited(Source(b"abcdefghij"), dst, limit=10, chunk=4) and dst.getvalue() == b"abcdefghij"
    assert Source.reads == [4, 4, 4, 4]  # never the whole file at once
    dst = io.BytesIO()
    assert not copy_limited(Source(b"abcdefghijk"), dst, limit=10, chunk=4)
    assert dst.getvalue() == b"abcdefgh"


@pytest.mark.parametrize("name, suffix", [("clip.MOV", ".mov"), ("a.mp4", ".mp4"), ("clip", ""), ("a.gif", ""),
                                          ("a." + "b" * 300, ""), ("x." + "é" * 200, "")])
def test_an_uploads_file_name_gives_its_temporary_file_a_video_extension_at_most(client, tiny_ds, monkeypatch,
                                                                                name, suffix):
    # a 300-character extension made the temporary file's name too long: HTTP 500
    from bgmrec import service

    seen = []

    def embed(self, path, caption, label):
        seen.append(path.suffix)
        return clip_of(tiny_ds, 0)

    monkeypatch.setattr(service._MediaEncoders, "embed", embed)
    r = client.post("/recommend/video", files={"video": (name, b"not read", "video/mp4")})
    assert r.status_code == 200, r.json()
    assert seen == [suffix]


def test_an_upload_s_decode_ends_when_the_server_stops(tiny_ds, cmvae, monkeypatch):
    # a decode in progress when the server stopped ran on to its 60-s deadline, past --stop-seconds (and a server
    # killed then left the upload's temporary file behind)
    import time

    import bgmrec.features.video as video
    from bgmrec.features.cache import MediaError

    limits = []

    def embed_clip(path, caption, frames, text, config, limit):
        limits.append(limit)
        limit.check(0.0)  # as the decode does at each packet
        clip = clip_of(tiny_ds, 0)
        return clip.visual, clip.text, clip.has_text, []

    monkeypatch.setattr(service._MediaEncoders, "_load_locked", lambda self: (None, None))
    monkeypatch.setattr(video, "embed_clip", embed_clip)
    upload = {"video": ("clip.mp4", b"not read", "video/mp4")}
    with TestClient(create_app(ClipRecommender(cmvae, tiny_catalog(tiny_ds)))) as client:  # started, then stopped
        before = time.monotonic()
        assert client.post("/recommend/video", files=upload).status_code == 200
        assert before + service.DECODE_SECONDS <= limits[0].deadline <= time.monotonic() + service.DECODE_SECONDS
        assert not limits[0].stop.is_set()
        r = client.post("/recommend/video", files=upload)
        assert r.status_code == 200 and limits[1].stop is limits[0].stop  # one server's uploads: one stop
    assert limits[0].stop.is_set()  # the server stopped: a decode still running ends at its next packet
    with pytest.raises(MediaError, match="^the server stopped while this video was decoded"):
        limits[0].check(0.0)
    # a decode ended so is the server's 503, not the video's 422 (an embedding app's client sees it; under uvicorn
    # the requests still in flight are cancelled before the app stops, and RequestLog answers them 503)
    app = create_app(ClipRecommender(cmvae, tiny_catalog(tiny_ds)))
    with TestClient(app) as client:
        app.router.on_shutdown[-1]()  # stopping: the requests still in flight
        r = client.post("/recommend/video", files=upload)
        assert (r.status_code, r.headers["connection"]) == (503, "close")
        assert r.json()["detail"] == ("video clip.mp4: the server stopped while this video was decoded (at 0.0 s of "
                                      "it); send it again")

        def corrupt(*args):
            raise MediaError("corrupt video: invalid data")

        monkeypatch.setattr(video, "embed_clip", corrupt)  # the video's own fault, while stopping: still a 422
        assert client.post("/recommend/video", files=upload).status_code == 422
    monkeypatch.setattr(video, "embed_clip", embed_clip)
    with TestClient(app) as client:  # the same app started again: its uploads are decoded again
        assert client.post("/recommend/video", files=upload).status_code == 200


def test_an_upload_s_spooled_copy_is_freed_before_its_decode(client, tiny_ds, monkeypatch):
    # the framework's spooled file stayed open (on disk past 1 MB) beside the decoder's copy until the answer:
    # two copies of every upload on disk while it was decoded
    spooled, open_at_embed = [], []
    real_copy = service.copy_limited
    monkeypatch.setattr(service, "copy_limited",
                        lambda src, dst, limit: spooled.append(src) or real_copy(src, dst, limit))

    def embed(self, path, caption, label):
        open_at_embed.append((not spooled[-1].closed, path.stat().st_size))
        return clip_of(tiny_ds, 0)

    monkeypatch.setattr(service._MediaEncoders, "embed", embed)
    r = client.post("/recommend/video", files={"video": ("clip.mp4", b"x" * (2 * 2**20), "video/mp4")})
    assert r.status_code == 200 and open_at_embed == [(False, 2 * 2**20)]  # closed; the decoder's copy whole


def test_a_body_that_is_not_json_or_an_upload_without_a_file_gets_a_422_saying_so(client):
    # these were "[0]: JSON decode error" and "video: Value error, Expected UploadFile, received: <class 'str'>"
    r = client.post("/recommend", content=b'{"visual": [1,,2]}', headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["detail"] == "body: not valid JSON at character 14 (Expecting value)"
    for files in ({"video": ("", b"abc", "video/mp4")}, {"video": (None, b"abc")}):  # no file name: a text part
        r = client.post("/recommend/video", files=files)
        assert r.status_code == 422
        assert r.json()["detail"] == "video: expected a file (a multipart part with a file name), got a text value"


def test_an_unknown_field_of_a_video_upload_is_refused_naming_it(client, tiny_ds, monkeypatch):
    # the form's unknown fields were ignored: top_k=3 answered 10 tracks
    from bgmrec import service

    monkeypatch.setattr(service._MediaEncoders, "embed", lambda self, path, caption, label: clip_of(tiny_ds, 0))
    video = {"video": ("clip.mp4", b"not read", "video/mp4")}
    r = client.post("/recommend/video", files=video, data={"top_k": "3"})
    assert r.status_code == 422
    assert r.json()["detail"] == "top_k: unknown field (the form's fields are video, caption, top, exclude, genres)"
    r = client.post("/recommend/video", files={**video, "thumbnail": ("t.png", b"x", "image/png")})
    assert r.status_code == 422 and r.json()["detail"].startswith("thumbnail: unknown field")
    r = client.post("/recommend/video", files=video, data={"caption": "beach #sun", "top": "3"})
    assert r.status_code == 200 and len(r.json()["tracks"]) == 3
    # a field read once, sent twice: its last value was used without a word (the answer was the second video's)
    two_videos = [("video", ("a.mp4", b"first", "video/mp4")), ("video", ("b.mp4", b"second", "video/mp4"))]
    r = client.post("/recommend/video", files=two_videos)
    assert r.status_code == 422 and r.json()["detail"] == (
        "video: sent 2 times; the form takes one (one video a request: POST /recommend/batch for many clips' "
        "features; only exclude and genres repeat, a field per value)")
    for field in ("top", "caption"):
        r = client.post("/recommend/video", files=[("video", video["video"]), (field, (None, b"1")),
                                                   (field, (None, b"3"))])
        assert r.status_code == 422 and r.json()["detail"].startswith(f"{field}: sent 2 times"), field
    r = client.post("/recommend/video", files=[("video", video["video"]), ("exclude", (None, tiny_ds.track_ids[0])),
                                               ("exclude", (None, tiny_ds.track_ids[1]))])
    assert r.status_code == 200  # a field per value


def test_a_video_upload_excludes_tracks_and_keeps_genres_as_a_features_request_does(client, tiny_ds, monkeypatch):
    # the form took video, caption and top only: "music for this video, minus the tracks already used" needed
    # the features extracted by the app and POST /recommend
    from bgmrec import service

    monkeypatch.setattr(service._MediaEncoders, "embed", lambda self, path, caption, label: clip_of(tiny_ds, 0))
    video = {"video": ("clip.mp4", b"not read", "video/mp4")}
    ids = lambda r: [t["id"] for t in r.json()["tracks"]]  # noqa: E731
    plain = client.post("/recommend/video", files=video, data={"top": "5"})
    assert plain.status_code == 200 and len(ids(plain)) == 5
    used = ids(plain)[:2]
    r = client.post("/recommend/video", files=video, data={"top": "5", "exclude": used})  # one field per id
    want = client.post("/recommend", json={**clip_body(tiny_ds, 0, top=5), "exclude": used})
    assert r.status_code == 200 and ids(r) == ids(want) and not set(used) & set(ids(r))
    genre = plain.json()["tracks"][0]["genre"]
    r = client.post("/recommend/video", files=video, data={"top": "5", "genres": [genre]})
    want = client.post("/recommend", json={**clip_body(tiny_ds, 0, top=5), "genres": [genre]})
    assert r.status_code == 200 and ids(r) == ids(want) and {t["genre"] for t in r.json()["tracks"]} == {genre}
    r = client.post("/recommend/video", files=video, data={"exclude": "", "genres": ""})  # -F exclude= -F genres=
    assert r.status_code == 200 and ids(r) == ids(client.post("/recommend/video", files=video))
    r = client.post("/recommend/video", files=video, data={"exclude": ["no-such-track"]})  # passed over, as in JSON
    assert r.status_code == 200 and r.json()["warnings"] == [
        "exclude: 1 track id(s) not in the catalogue, passed over: 'no-such-track'"]
    embedded = []
    monkeypatch.setattr(service._MediaEncoders, "embed", lambda *args: embedded.append(1) or clip_of(tiny_ds, 0))
    r = client.post("/recommend/video", files=video, data={"genres": ["no-such-genre"]})
    assert r.status_code == 422 and "no-such-genre" in r.json()["detail"]
    assert embedded == []  # refused before the upload was embedded


@pytest.mark.parametrize(("change", "detail"), [
    ({"top": "5"}, "top: Input should be a valid integer, got a string"),
    ({"top": True}, "top: Input should be a valid integer, got a boolean"),
    ({"top": 5.0}, "top: Input should be a valid integer, got a number with a decimal point"),
    ({"visual": ["0.5"]}, "visual[0]: Input should be a valid number, got a string"),
    ({"text": [False]}, "text[0]: Input should be a valid number, got a boolean"),
    ({"taste": {"pop": "1"}}, "taste.pop: Input should be a valid number, got a string"),
    ({"exclude": [7]}, "exclude[0]: Input should be a valid string, got an integer"),
])
def test_numbers_sent_as_strings_are_refused_not_converted(client, tiny_ds, change, detail):
    # pydantic's lax mode read "top": "5" as 5 (and true as 1, "0.5" as a feature value)
    r = client.post("/recommend", json={**clip_body(tiny_ds, 0), **change})
    assert r.status_code == 422 and r.json()["detail"] == detail
    clip = clip_body(tiny_ds, 0) | ({} if "top" in change else change)
    r = client.post("/recommend/batch", json={"clips": [clip], "top": change.get("top", 2)})
    assert r.status_code == 422 and r.json()["detail"] == (detail if "top" in change else f"clips[0].{detail}")


def test_integer_features_are_numbers_and_a_form_still_parses_its_top(client, tiny_ds, monkeypatch):
    from bgmrec import service

    body = clip_body(tiny_ds, 0, top=3)
    body["visual"] = [round(x) for x in body["visual"]]  # JSON integers are valid feature values
    assert client.post("/recommend", json=body).status_code == 200
    monkeypatch.setattr(service._MediaEncoders, "embed", lambda self, path, caption, label: clip_of(tiny_ds, 0))
    video = {"video": ("clip.mp4", b"not read", "video/mp4")}
    r = client.post("/recommend/video", files=video, data={"top": "4"})  # a form's values are text
    assert r.status_code == 200 and len(r.json()["tracks"]) == 4
    r = client.post("/recommend/video", files=video, data={"top": "four"})
    assert r.status_code == 422 and r.json()["detail"].startswith("top: Input should be a valid integer")


@pytest.mark.parametrize(("body", "detail"), [
    (b'{"visual": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
     'body: JSON nested too deeply to parse (a request nests 4 levels at most: {"clips": [{"visual": [...]}]})'),
    (b'{"visual": [0.5], "text": "caf\xe9"}',
     "body: not valid JSON: not utf-8 text at byte 30 (invalid continuation byte)"),
    (b'{"top": ' + b"9" * 5000 + b"}",
     "body: not valid JSON (Exceeds the limit (4300 digits) for integer string conversion: value has 5000 digits)"),
])
def test_json_the_framework_cannot_parse_gets_a_422_saying_why(client, body, detail):
    # these were FastAPI's bare 400 "There was an error parsing the body"
    for path in ("/recommend", "/recommend/batch"):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json() == {"detail": detail}


def test_a_bare_400_of_another_cause_is_not_called_bad_json():
    from starlette.exceptions import HTTPException

    from bgmrec.service import body_refusal

    exc = HTTPException(400, "There was an error parsing the body")
    exc.__cause__ = ValueError("some other parser's complaint")
    assert body_refusal(exc) is None
    exc.__cause__ = ValueError("Exceeds the limit (4300 digits) for integer string conversion: value has 4301 "
                               "digits; use sys.set_int_max_str_digits() to increase the limit")
    assert body_refusal(exc) == (422, "body: not valid JSON (Exceeds the limit (4300 digits) for integer string "
                                      "conversion: value has 4301 digits)")


def test_a_text_field_past_the_forms_limit_gets_a_413_saying_so(client, tiny_ds, monkeypatch):
    # the framework's multipart parser answered 400 "Part exceeded maximum size of 1024KB."
    from bgmrec import service

    seen = []
    monkeypatch.setattr(service._MediaEncoders, "embed",
                        lambda self, path, caption, label: seen.append(len(caption)) or clip_of(tiny_ds, 0))
    assert client.get("/health").json()["max_caption_bytes"] == service.MAX_CAPTION == 2**20
    video = {"video": ("clip.mp4", b"not read", "video/mp4")}
    r = client.post("/recommend/video", files=video, data={"caption": "é" * (2**19)})  # 2**20 bytes in UTF-8
    assert r.status_code == 200 and seen == [2**19]
    r = client.post("/recommend/video", files=video, data={"caption": "x" * (2**20 + 1), "top": "3"})
    too_large = {"detail": "a text field of the form is larger than this server's limit of 1048576 bytes (1 MB): a "
                           "caption holds at most that, and a video must be sent as a file part (with a file name)"}
    assert r.status_code == 413 and r.json() == too_large
    r = client.post("/recommend/video", files={"video": (None, b"v" * (2**20 + 1))})  # a video sent as text
    assert r.status_code == 413 and r.json() == too_large
    assert seen == [2**19]
    r = client.post("/recommend/video", content=b"\r\n", headers={"content-type": "multipart/form-data"})
    assert r.status_code == 422 and r.json()["detail"].startswith("body: not a readable multipart/form-data body (")


def test_a_form_of_too_many_fields_gets_a_422_saying_which_fields_count(client, tiny_ds, monkeypatch):
    # the framework's multipart parser answered 400 "Too many fields. Maximum number of fields is 1000."
    from bgmrec import service

    monkeypatch.setattr(service._MediaEncoders, "embed", lambda self, path, caption, label: clip_of(tiny_ds, 0))
    video = {"video": ("clip.mp4", b"not read", "video/mp4")}
    ids = list(tiny_ds.track_ids[:3])
    fields = [("exclude", ids[i % 3]) for i in range(service.MAX_FORM_FIELDS)]
    r = client.post("/recommend/video", files=[("video", video["video"]), *((k, (None, v)) for k, v in fields)])
    assert r.status_code == 200, r.json()  # 1,000 text fields and the video
    r = client.post("/recommend/video", files=[("video", video["video"]), ("top", (None, "3")),
                                                *((k, (None, v)) for k, v in fields)])
    assert r.status_code == 422 and r.json() == {"detail": service.TOO_MANY_FIELDS}
    assert service.TOO_MANY_FIELDS.startswith("form: more than 1,000 text fields")


def test_catalogue_tracks_far_from_the_training_music_are_named_at_start_up(tiny_ds, cmvae):
    """Tracks unlike any training track got scores 10^5 times the others' and topped every list, unannounced."""
    said = []
    ClipRecommender(cmvae, tiny_catalog(tiny_ds), warn=said.append)
    assert said == []  # the training world's own tracks
    catalog = tiny_catalog(tiny_ds)
    catalog.features = catalog.features.copy()
    catalog.features[3] *= 1000.0  # a hum among songs
    recommender = ClipRecommender(cmvae, catalog, warn=said.append)
    assert len(said) == 1 and said == recommender.warnings
    assert re.fullmatch(rf"1 catalogue track\(s\) have features more than 20 standard deviations from the model's "
                        rf"training music \(up to \S+, track '{catalog.ids[3]}'\): their scores can be out of all "
                        r"proportion and top every list; .*", said[0]), said[0]


def test_a_model_trained_on_features_of_other_sizes_than_the_encoders_refuses_uploads_at_start_up(tiny_ds, cmvae,
                                                                                                   monkeypatch):
    # a simulated world's model loaded the encoders (300 MB), embedded every upload, then answered 422 "visual must
    # have shape [32]": the server's configuration, which no client can fix
    monkeypatch.setattr(service, "uploads_refused", REFUSING_UPLOADS)
    monkeypatch.setattr(service._MediaEncoders, "load", lambda self: pytest.fail("the encoders were loaded"))
    said = []
    client = TestClient(create_app(ClipRecommender(cmvae, tiny_catalog(tiny_ds)), load_video_encoders=True,
                                   warn=said.append))
    refusal = (f"the model was trained on video features of sizes {tiny_ds.dims()['video_visual']} (visual) and "
               f"{tiny_ds.dims()['video_text']} (text), not those extract-videos gives a video file (1280, 384); POST "
               "/recommend takes features of the model's sizes")
    assert said == [f"POST /recommend/video will answer 501: {refusal}"]
    assert client.get("/health").json()["warnings"] == said
    r = client.post("/recommend/video", files={"video": ("clip.mp4", b"not read", "video/mp4")})
    assert r.status_code == 501 and r.json() == {"detail": f"video upload: {refusal}"}


def test_batches_past_the_limit_get_a_503_while_the_others_are_answered(tiny_ds, cmvae, monkeypatch):
    # nothing limited the batches answered at once: eight of 1,024 clips took a server from 0.6 to 2.9 GB
    import threading

    recommender = ClipRecommender(cmvae, tiny_catalog(tiny_ds))
    client = TestClient(create_app(recommender, max_batches=1))
    inside, go_on = threading.Event(), threading.Event()
    answer = recommender.recommend

    def slow(*args, **kwargs):  # the first call (the first batch) waits until told to go on
        if not inside.is_set():
            inside.set()
            go_on.wait(30)
        return answer(*args, **kwargs)

    monkeypatch.setattr(recommender, "recommend", slow)
    body = {"clips": [clip_body(tiny_ds, 0)], "top": 3}
    first = {}
    worker = threading.Thread(target=lambda: first.update(r=client.post("/recommend/batch", json=body)))
    worker.start()
    assert inside.wait(30)
    busy = client.post("/recommend/batch", json=body)
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    assert busy.json()["detail"] == ("busy: this server answers at most 1 batch requests at once (bgmrec serve "
                                     "--max-batches); retry shortly")
    assert client.get("/health").status_code == 200 and client.post("/recommend", json=clip_body(tiny_ds, 0)).is_success
    go_on.set()
    worker.join(30)
    assert first["r"].status_code == 200 and len(first["r"].json()["results"][0]["tracks"]) == 3
    assert client.post("/recommend/batch", json=body).status_code == 200  # its slot given back
    with pytest.raises(ValueError, match="max_batches must be a positive integer, got 0"):
        create_app(recommender, max_batches=0)


def test_a_batchs_bad_taste_or_genres_is_named_by_its_clip(client, tiny_ds):
    # one bad clip refused the batch saying only "genres: unknown genre(s) polka", of which clip it did not say
    def detail(clips):
        r = client.post("/recommend/batch", json={"clips": clips})
        assert r.status_code == 422
        return r.json()["detail"]

    good = clip_body(tiny_ds, 0)
    assert detail([good, {**good, "genres": ["polka"]}]).startswith("genres[1]: unknown genre(s) polka")
    assert detail([{**good, "taste": {tiny_ds.genres[0]: 1.0}}, {**good, "taste": {"polka": 1.0}}]).startswith(
        "taste[1]: unknown genre(s) polka")
    assert detail([{**good, "taste": {tiny_ds.genres[0]: 1.0}}, {**good, "taste": {tiny_ds.genres[0]: 0.0}}]) == (
        "taste[1]: weights must be finite, non-negative and not all zero")
    # and an empty list of genres keeps no track: refused, not answered with no track at all
    r = client.post("/recommend", json={**good, "genres": []})
    assert r.status_code == 422 and r.json()["detail"] == ("genres: an empty list keeps no track; give at least one "
                                                           "genre, or null for every genre")


@pytest.mark.parametrize(("page", "script"), [("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")])
def test_the_api_pages_load_their_scripts_from_the_server(client, page, script):
    # FastAPI's /docs loaded Swagger UI from a public CDN: a blank page on a machine without internet
    html = client.get(page)
    assert html.status_code == 200 and "cdn.jsdelivr" not in html.text and "unpkg" not in html.text
    url = next(part.split('"')[0] for part in html.text.split('src="')[1:] if script in part.split('"')[0])
    assert url.startswith("/")
    served = client.get(url)
    assert served.status_code == 200 and "javascript" in served.headers["content-type"] and len(served.content) > 1e5
    assert client.get("/openapi.json").json()["info"]["title"] == "bgmrec"


def test_a_server_stopped_by_ctrl_c_exits_130_saying_so(tiny_dir, tmp_path):
    # uvicorn.run swallowed the KeyboardInterrupt it raises once stopped: Ctrl-C ended serve with exit code 0 and
    # no line, where every other command exits 130 with "stopped (SIGINT)"
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from bgmrec.runs import train_model

    train_model(tiny_dir, "popularity", tmp_path / "run", progress=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "bgmrec", "serve", "--run", str(tmp_path / "run"), "--catalog",
                             str(tiny_dir), "--port", str(port), "--lazy-encoders"],
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # a terminal's Ctrl-C
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except OSError:
                time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=60)[1]
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert err.rstrip().splitlines()[-1] == "stopped (SIGINT)"


def test_video_uploads_past_their_slots_get_a_503_at_once(tiny_ds, cmvae, monkeypatch):
    # a security review: uploads queued behind one long decode held every worker thread, and a JSON request sent
    # meanwhile waited 37 s
    monkeypatch.setattr(service, "UPLOAD_SLOTS", 0)  # every slot taken
    app = TestClient(create_app(ClipRecommender(cmvae, tiny_catalog(tiny_ds))))
    r = app.post("/recommend/video", files={"video": ("clip.mp4", b"not read", "video/mp4")})
    assert (r.status_code, r.headers["retry-after"]) == (503, "1")
    assert r.json()["detail"] == "busy: this server embeds at most 0 video uploads at once; retry shortly"
    assert app.get("/health").status_code == 200


def test_serve_on_a_public_address_says_to_put_a_proxy_in_front(tiny_ds, cmvae, tmp_path, monkeypatch, capsys):
    from bgmrec.cli import main
    from bgmrec.cli.serve import public_address_note

    assert public_address_note("127.0.0.1") is None and public_address_note("localhost") is None
    assert public_address_note("0.0.0.0").startswith("--host 0.0.0.0 is reachable from other machines")
    args, started = serve_command(tiny_ds, cmvae, tmp_path, monkeypatch)
    capsys.readouterr()
    assert main([*args, "--lazy-encoders"]) == 0 and "reachable from other machines" not in capsys.readouterr().err
    assert main([*args, "--lazy-encoders", "--host", "0.0.0.0"]) == 0
    assert ("warning: --host 0.0.0.0 is reachable from other machines, and answers requests of any Host header (a "
            "page served by DNS rebinding can read its answers; --allowed-host names the ones to answer): put a "
            "reverse proxy in front of it (docs/serving.md, Video uploads)") in capsys.readouterr().err
    assert TestClient(started["app"], base_url="http://203.0.113.7:8000").get("/health").status_code == 200  # any Host
    assert main([*args, "--lazy-encoders", "--host", "0.0.0.0", "--allowed-host", "api.example.com"]) == 0
    assert ("warning: --host 0.0.0.0 is reachable from other machines: put a reverse proxy in front of it "
            "(docs/serving.md, Video uploads)") in capsys.readouterr().err
    for anyone in ("*", " * "):  # any Host, said so (as the server reads the name)
        assert main([*args, "--lazy-encoders", "--host", "0.0.0.0", "--allowed-host", anyone]) == 0
        assert "and answers requests of any Host header" in capsys.readouterr().err


@pytest.mark.parametrize(("value", "name"), [("localhost", "localhost"), ("LocalHost:8000", "localhost"),
                                             ("[::1]:8000", "::1"), ("[::1]", "::1"), ("::1", "::1"),
                                             ("Example.COM.:443", "example.com"), ("127.0.0.1:80", "127.0.0.1")])
def test_a_host_header_names_its_host_without_port_brackets_or_trailing_dot(value, name):
    assert service.host_name(value) == name


def test_a_request_to_a_host_not_answered_gets_a_400_and_one_from_another_site_s_page_a_403(tiny_ds, cmvae, caplog):
    # every web page a visitor opened could post to the server, and one served by DNS rebinding read /health
    app = create_app(ClipRecommender(cmvae, tiny_catalog(tiny_ds)),
                     allowed_hosts=["LOCALHOST", "[::1]", "127.0.0.1:8000", "*.example.com"])
    for base in ("http://localhost:8000", "http://localhost.", "http://[::1]:8000", "http://127.0.0.1",
                 "https://api.example.com", "http://a.b.example.com:81"):
        assert TestClient(app, base_url=base).get("/health").status_code == 200, base
    for base in ("http://testserver", "http://example.com", "http://evil.example:8000", "http://127.0.0.2:8000",
                 "http://localhost.evil.example", "http://notexample.com"):
        r = TestClient(app, base_url=base).get("/health")
        host = base.split("//")[1]
        assert (r.status_code, r.json()) == (400, {"detail": f"Host: {host!r} is not a name this server answers to "
                                                             "(bgmrec serve --allowed-host)"}), base
    local = TestClient(app, base_url="http://localhost:8000")
    body = clip_body(tiny_ds, 5)
    assert local.post("/recommend", json=body).status_code == 200  # no Origin: curl, an app's backend
    # the page's own origin (the service's /docs page sends it on POST), in either case, with a trailing slash
    for own in ("http://localhost:8000", "HTTP://LOCALHOST:8000/"):
        assert local.post("/recommend", json=body, headers={"Origin": own}).status_code == 200, own
    r = local.get("/health", headers={"Origin": "http://evil.example"})  # a script's GET: refused as a POST is
    assert r.status_code == 403 and r.json()["detail"].startswith("Origin: 'http://evil.example'")
    with caplog.at_level(logging.INFO, logger="bgmrec.service"):
        for other in ("http://evil.example", "null", "http://localhost:8001", "https://localhost:8000.evil.example"):
            # a body the service would refuse (422) if it were read: refused before
            r = local.post("/recommend", content=b"{", headers={"Origin": other, "Content-Type": "application/json"})
            assert (r.status_code, r.json()) == (403, {"detail": f"Origin: {other!r}: this server answers no "
                                                                 "requests from pages of that origin (bgmrec serve "
                                                                 "--allow-origin)"}), other
            assert "access-control-allow-origin" not in r.headers
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "bgmrec.service"]
    assert len(lines) == 4 and all('"POST /recommend" 403 ' in line for line in lines)  # in the request log


def test_an_allowed_origin_s_pages_are_answered_with_cors_headers(tiny_ds, cmvae):
    recommender = ClipRecommender(cmvae, tiny_catalog(tiny_ds))
    client = TestClient(create_app(recommender, allowed_origins=["https://App.example.com/"]))
    body = clip_body(tiny_ds, 5)
    r = client.post("/recommend", json=body, headers={"Origin": "https://app.example.com"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example.com"
    assert {"x-request-id", "server-timing"} <= set(r.headers["access-control-expose-headers"].split(", "))
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    r = client.options("/recommend", headers={"Origin": "https://app.example.com", **preflight})  # before JSON's POST
    assert r.status_code == 200 and "POST" in r.headers["access-control-allow-methods"]
    assert r.headers["access-control-allow-origin"] == "https://app.example.com"
    r = client.options("/health", headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "GET",
                                           "Access-Control-Request-Headers": "x-request-id"})  # a caller's own id
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example.com"
    # an allowed origin given with its default port is the origin browsers send without it
    told_443 = TestClient(create_app(recommender, allowed_origins=["https://app.example.com:443"]))
    r = told_443.post("/recommend", json=body, headers={"Origin": "https://app.example.com"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example.com"
    for other in ("http://app.example.com", "https://app.example.com:8443", "https://other.example"):
        assert client.options("/recommend", headers={"Origin": other, **preflight}).status_code == 403, other
        assert client.post("/recommend", json=body, headers={"Origin": other}).status_code == 403, other
    anyone = TestClient(create_app(recommender, allowed_origins=["*"]))
    r = anyone.post("/recommend", json=body, headers={"Origin": "https://other.example"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"
    plain = TestClient(create_app(recommender)).post("/recommend", json=body)
    assert plain.status_code == 200 and "access-control-allow-origin" not in plain.headers


@pytest.mark.parametrize(("value", "origin"), [
    ("https://app.example.com", "https://app.example.com"), (" HTTPS://App.Example.com:443/ ", "https://app.example.com"),
    ("http://localhost:80", "http://localhost"), ("http://localhost:8000", "http://localhost:8000"),
    ("https://app.example.com:80", "https://app.example.com:80"), ("http://[::1]:8000", "http://[::1]:8000"),
    ("null", None), ("app.example.com", None), ("ftp://app.example.com", None), ("https://app.example.com/page", None),
    ("https://app.example.com?q", None), ("http://user@app.example.com", None), ("http://:pw@app.example.com", None),
    ("http://app.example.com:99999", None), ("http://[::1", None), ("https://", None)])
def test_an_origin_is_read_as_browsers_send_it_or_not_at_all(value, origin):
    assert service.origin_of(value) == origin


def test_a_page_s_own_origin_is_the_host_it_posted_to_on_any_port_and_scheme_a_proxy_passes():
    same = service.AllowedCallers.of(None, []).origin_allowed
    assert same("http://localhost:8000", "LocalHost:8000") and same(" http://localhost:8000 ", "localhost:8000")
    # a TLS proxy passing the page's Host on: the page's origin is https, the Host has no scheme and maybe no port
    assert same("https://api.example.com", "api.example.com") and same("https://api.example.com", "api.example.com:443")
    assert same("http://api.example.com", "api.example.com:80")
    assert not same("http://api.example.com", "api.example.com:443")
    assert not same("http://localhost:8000", "localhost:8001") and not same("http://localhost", "localhost:8000")
    for host in ("", "localhost"):  # no Host (HTTP/1.0): no page is its own; null is no origin
        assert not same("null", host) and not same("http://[::1", "[::1]")
    assert not same("http://localhost:8000", "")


@pytest.mark.parametrize(("hosts", "origins", "words"), [
    (None, ["app.example.com"], "allowed origin 'app.example.com' is not scheme://host[:port]"),
    (None, ["https://app.example.com/page"], "allowed origin 'https://app.example.com/page' is not"),
    (None, ["ftp://app.example.com"], "allowed origin 'ftp://app.example.com' is not"),
    (None, "https://app.example.com", "lists of names, not one string"),
    ("localhost", [], "lists of names, not one string"),
    (["localhost", ""], [], "allowed hosts: an empty name in ['localhost', '']"),
    (["http://api.example.com"], [], "allowed host 'http://api.example.com' is not a name or an address"),
    (["api.example.com/x"], [], "allowed host 'api.example.com/x' is not a name or an address"),
    (["user@api.example.com"], [], "allowed host 'user@api.example.com' is not a name or an address"),
    (None, ["http://:pw@app.example.com"], "allowed origin 'http://:pw@app.example.com' is not"),
    (None, ["http://app.example.com:99999"], "allowed origin 'http://app.example.com:99999' is not"),
    (None, ["http://[::1"], "allowed origin 'http://[::1' is not"),
])
def test_bad_allowed_hosts_or_origins_are_refused_naming_them(tiny_ds, cmvae, hosts, origins, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        create_app(ClipRecommender(cmvae, tiny_catalog(tiny_ds)), allowed_hosts=hosts, allowed_origins=origins)


def test_serve_on_a_loopback_address_answers_loopback_names_unless_told_others(tiny_ds, cmvae, tmp_path, monkeypatch,
                                                                              capsys, caplog):
    from bgmrec.cli import main

    args, started = serve_command(tiny_ds, cmvae, tmp_path, monkeypatch)
    assert main([*args, "--lazy-encoders"]) == 0  # on 127.0.0.1 by default
    for base, status in (("http://127.0.0.1:8000", 200), ("http://localhost:8000", 200), ("http://[::1]:8000", 200),
                         ("http://testserver", 400), ("http://rebound.example:8000", 400)):
        assert TestClient(started["app"], base_url=base).get("/health").status_code == status, base
    with caplog.at_level(logging.INFO, logger="bgmrec.service"), TestClient(started["app"]):  # its start-up log
        pass
    assert "answering Host 127.0.0.1, localhost, ::1; Origin its own or none" in caplog.messages
    assert main([*args, "--lazy-encoders", "--host", "127.0.0.2"]) == 0  # another loopback address: its own name too
    for base, status in (("http://127.0.0.2:8000", 200), ("http://localhost:8000", 200), ("http://testserver", 400)):
        assert TestClient(started["app"], base_url=base).get("/health").status_code == status, base
    args_told = [*args, "--lazy-encoders", "--allowed-host", "api.example.com", "--allowed-host", "*.internal",
                 "--allow-origin", "https://app.example.com"]
    assert main(args_told) == 0
    for base, status in (("http://api.example.com", 200), ("http://gpu1.internal:8000", 200),
                         ("http://127.0.0.1:8000", 400)):  # the names told replace the loopback ones
        assert TestClient(started["app"], base_url=base).get("/health").status_code == status, base
    r = TestClient(started["app"], base_url="http://api.example.com").get(
        "/health", headers={"Origin": "https://app.example.com"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example.com"
    started.clear()
    capsys.readouterr()
    assert main([*args, "--allow-origin", "app.example.com"]) == 2
    assert "allowed origin 'app.example.com' is not scheme://host[:port]" in capsys.readouterr().err
    assert started == {}  # refused before the model, the catalogue and the server
