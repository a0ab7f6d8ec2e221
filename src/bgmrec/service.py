"""The HTTP service: "music for this video" for an app's backend (``bgmrec serve``; needs the ``serve`` extra).

:func:`create_app` wraps a :class:`~bgmrec.features.recommend.ClipRecommender` (a trained model and a
catalogue, encoded and indexed once at start-up) in a FastAPI application:

- ``GET /health``: the model, its inference mode, the catalogue size, the index (``exact`` or ``faiss``, as
  ``bgmrec serve --index`` names it) and its settings, the feature sizes a request must have, the largest
  video upload, JSON body and caption, torch's intra-op ``threads``,
  ``served_by`` (below) and ``warnings``: what the recommender warned of at start-up (a catalogue extracted
  with other settings than the model's training music, genres the model does not know; [] when none), which
  leave ``status`` "ok" (the service answers) but tell a monitoring probe its scores can mean little;
- ``POST /recommend``: one clip's features (``visual``, optional ``text``; optional ``taste``, the
  uploader's genre preferences, read in personalised mode or by a model that needs them; optional ``exclude``,
  track ids) and ``top``; the answer is the object ``bgmrec recommend --json`` prints;
- ``POST /recommend/batch``: ``{"clips": [...], "top": k}``, one matrix product for all clips, the
  answers in order under ``results``; at most ``max_batches`` at once, more get 503 (:class:`BatchSlots`);
- ``POST /recommend/video``: a video file (multipart field ``video``) and its ``caption``, embedded
  as ``extract-videos`` does (needs the ``media`` extra; ``bgmrec serve`` loads the encoders at start-up,
  ``--lazy-encoders`` on the first such request); a clip
  cut off after at least half its sample frames is ranked with its last decoded frame repeated, and its
  answer's ``warnings`` say so (``[]`` in every other answer).
  The upload is streamed to a temporary file; one larger than ``max_upload`` bytes gets HTTP 413, as
  do a caption over :data:`MAX_CAPTION` bytes (1 MB) and a JSON body larger than :func:`json_limit`
  (a batch's: 64 MB, more for wider features; one clip's: 8 MB), declared so or counted while it arrives
  (:class:`BodyLimit`); a body of which nothing arrives for :data:`BODY_IDLE_SECONDS` (30 s) gets 408.

Every answer also carries ``served_by``: the model's name, its inference mode, the bgmrec version, the
run folder's name and a SHA-256 of its ``config.json`` and ``weights.safetensors``, and the catalogue
folder's name and content hash (from its manifest), so a logged answer says exactly what produced it.
They are computed once, at start-up.

A request the caller must fix (a wrong size, a non-finite value, features for which the model's scores
are not finite, an unknown field, a value of the wrong JSON type, an unknown genre, no ``taste``
in personalised mode, an unreadable video or an image, which ``extract-videos`` refuses too) gets HTTP 422
with a one-line ``detail`` naming the field (in a batch, the clip: ``genres[1]``); an ``exclude`` id the
catalogue has not is passed over and named in the answer's ``warnings``; a video upload to a server
installed without the ``media`` extra, or serving a model of other feature sizes than the encoders give
(:func:`uploads_refused`), gets 501. JSON fields are read strictly: ``"top": "5"``, ``true`` or ``5.0`` is
not a count and ``"0.5"`` is not a feature value (pydantic's lax mode would convert them); only the video form's ``top``
is text, parsed as an integer. A body the JSON parser cannot read gets 422 with a ``body: ...`` detail
saying why (:func:`validation_detail`, :func:`body_refusal`). Any other error is the server's: HTTP 500
with a generic ``detail``, the traceback logged (logger ``bgmrec.service``).

Every answer carries ``X-Request-ID`` and ``Server-Timing``, and the same logger has a line per request with
its status, time and id (:class:`RequestLog`).

Requests a web page makes a visitor's browser send are refused (:class:`HostOriginCheck`): one carrying another
site's ``Origin`` gets 403 unless ``allowed_origins`` names it (and then gets CORS headers), and with
``allowed_hosts`` a ``Host`` header naming none of them gets 400 (``bgmrec serve`` on a loopback address
answers only loopback names, which a page served by DNS rebinding does not send).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, urlsplit

import numpy as np

from bgmrec.extras import ExtraError, MissingExtraError, extra_modules
from bgmrec.features.recommend import ClipFeatures, ClipRecommender, RequestError, taste_vector

with extra_modules():  # the serve extra
    from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
    from fastapi.exception_handlers import http_exception_handler
    from fastapi.exceptions import RequestValidationError
    from fastapi.middleware.cors import CORSMiddleware
    from fastapi.responses import JSONResponse, Response
    from fastapi_offline import FastAPIOffline
    from pydantic import BaseModel, ConfigDict, Field
    from pydantic_core import to_json
    from starlette.datastructures import Headers, MutableHeaders
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.formparsers import MultiPartException

MAX_BATCHES = 4  # batch requests answered at once by default (each can hold hundreds of MB; bgmrec serve --max-batches)
UPLOAD_SLOTS = 2  # video uploads taken at once (decoded one at a time): one more gets 503, not a worker thread
DECODE_SECONDS = 60.0  # one upload's decoding at most: a small file of huge frames or timestamps took minutes
MAX_TOP = 1000  # the most tracks one answer may hold
MAX_BATCH = 1024  # the most clips one batch request may hold
MAX_UPLOAD = 200 * 2**20  # default largest video upload (bytes); bgmrec serve --max-upload-mb
FORM_SLACK = 2**20  # a request body may exceed the video's limit by this much (caption, top, multipart framing)
MAX_JSON = 64 * 2**20  # largest JSON body (bytes) of a batch at least; more for wide features (json_limit)
MAX_CLIP_JSON = 8 * 2**20  # largest JSON body of one clip (POST /recommend; its exclude list ~500,000 ids) at least
JSON_BYTES_PER_VALUE = 32  # room for one feature value in a JSON body ("-0.12345678901234568, " is 22)
BODY_IDLE_SECONDS = 30.0  # a request body of which nothing arrives for this long gets 408 (BodyLimit)
MIN_BODY_RATE = 1024  # bytes/s: past BODY_IDLE_SECONDS, a body arriving more slowly on average gets 408 (BodyLimit)
VIDEO_FORM_FIELDS = ("video", "caption", "top", "exclude", "genres")  # the multipart fields of POST /recommend/video
REPEATABLE_FORM_FIELDS = ("exclude", "genres")  # of those, the ones sent once per value (a field per track id or genre)
MAX_CAPTION = 2**20  # the most bytes a text field of that form holds: Starlette's multipart parser's limit
CAPTION_TOO_LARGE = (f"a text field of the form is larger than this server's limit of {MAX_CAPTION} bytes "
                     f"({MAX_CAPTION / 2**20:g} MB): a caption holds at most that, and a video must be sent as a "
                     "file part (with a file name)")
MAX_FORM_FIELDS = 1000  # the text fields a form may have besides its files (Starlette's multipart limit)
TOO_MANY_FIELDS = (f"form: more than {MAX_FORM_FIELDS:,} text fields (one per caption, top, and each track id of "
                   "exclude or genre of genres); send fewer ids, or extract the clip's features and POST /recommend, "
                   "whose exclude list has no such limit")

REQUEST_ID_HEADER = "x-request-id"  # a request's id, the caller's or the server's (RequestLog)
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # a caller's id the server takes as its own

logger = logging.getLogger(__name__)


class Clip(BaseModel):
    """One clip's content features, as ``extract-videos`` writes them (``GET /health`` gives the sizes)."""

    # a misspelt field (top_k) is an error, not silently ignored; strict: a number sent as a string ("5"), a
    # boolean or 5.0 for an integer is an error too, not converted (pydantic's lax mode read "top": "5" as 5)
    model_config = ConfigDict(extra="forbid", strict=True)
    visual: list[float] = Field(description="frame features")
    text: list[float] | None = Field(None, description="caption features; null: no usable caption")
    taste: dict[str, float] | None = Field(None, description="the uploader's genre preferences, genre -> "
                                                             "weight (read in personalised mode)")
    exclude: list[str] = Field(default_factory=list, description="track ids never to return")
    genres: list[str] | None = Field(None, description="only tracks of these catalogue genres (GET /health's "
                                                       "catalog_genres; default: every genre)")


class OneClip(Clip):
    """The body of ``POST /recommend``: one clip and how many tracks."""

    top: int = Field(10, ge=1, le=MAX_TOP, description="how many tracks")


class Batch(BaseModel):
    """The body of ``POST /recommend/batch``: clips answered in order, the same number of tracks each."""

    model_config = ConfigDict(extra="forbid", strict=True)  # as Clip's
    clips: list[Clip] = Field(min_length=1, max_length=MAX_BATCH)
    top: int = Field(10, ge=1, le=MAX_TOP, description="how many tracks per clip")


def create_app(recommender: ClipRecommender, frames: int = 8, max_upload: int = MAX_UPLOAD,
               load_video_encoders: bool = False, warn: Callable[[str], None] | None = None,
               max_batches: int = MAX_BATCHES, allowed_hosts: Sequence[str] | None = None,
               allowed_origins: Sequence[str] = ()) -> FastAPI:
    """The FastAPI application answering with ``recommender``; ``frames`` sampled per uploaded video, uploads
    of at most ``max_upload`` bytes, at most ``max_batches`` batch requests answered at once (503 past them).
    Requests whose ``Host`` header names none of ``allowed_hosts`` (None: any) get 400, and those carrying an
    ``Origin`` header other than their own or one of ``allowed_origins`` get 403 (:class:`HostOriginCheck`); an
    allowed origin's browser requests get CORS headers.
    With ``load_video_encoders`` the frame and caption encoders are loaded here, not on the first video upload.
    A start-up warning (``warn``, and ``/health``'s ``warnings``) says when video uploads will get 501: a model
    trained on features of other sizes than the encoders' (a simulated world's), or, when the encoders are
    loaded here, no ``media`` extra."""
    if max_upload < 1:
        raise ValueError(f"max_upload must be at least 1 byte, got {max_upload}")
    if isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1:
        raise ValueError(f"max_batches must be a positive integer, got {max_batches!r}")
    allowed = AllowedCallers.of(allowed_hosts, allowed_origins)  # a bad name refused before any work
    spec = recommender.model.spec
    encoders = _MediaEncoders(frames, uploads_refused(spec))
    startup_warnings = list(recommender.warnings)

    def said(message: str) -> None:
        startup_warnings.append(message)
        if warn is not None:
            warn(message)

    if encoders.refused is not None:
        said(f"POST /recommend/video will answer 501: {encoders.refused}")
    elif load_video_encoders:
        try:
            encoders.load()
        except ImportError as e:
            said(f"POST /recommend/video will answer 501: the encoders of uploaded videos: {media_advice(e)}")

    personalised = recommender.model.needs_taste  # DecCM's personalised mode, or a model that always reads taste
    identity = served_by(recommender)
    source = getattr(recommender.model, "source", None)  # the run's full path, in /health (answers name its folder)
    run_folder = str(Path(source).resolve().parent) if source else None
    against_training = catalog_against_training(recommender, said)
    max_json, max_clip_json = json_limit(spec), json_limit(spec, clips=1)
    too_large = (f"video: the upload is larger than this server's limit of {max_upload} bytes "
                 f"({max_upload / 2**20:g} MB; bgmrec serve --max-upload-mb)")

    # /docs and /redoc from the scripts fastapi-offline ships (FastAPI's load them from a CDN: blank offline)
    app = FastAPIOffline(title="bgmrec", summary="background music for micro-videos",
                         version=_version(), description=__doc__)

    def say_what_is_served() -> None:  # at start-up, once the server's logging is set up: its log says what answers
        logger.info("serving %s", " ".join(f"{k}={v}" for k, v in identity.items()))
        if against_training is not None:
            logger.info("catalogue against the training dataset's: %s",
                        " ".join(f"{k}={v}" for k, v in against_training.items()))
        logger.info("answering %s", allowed)
        for message in startup_warnings:  # said as they were met too, before the log had its times
            logger.warning("start-up: %s", message)

    # a start-up handler, not a lifespan: a lifespan replaces the start-up handlers an embedding app adds
    app.router.add_event_handler("startup", say_what_is_served)
    # stopping (once the requests in flight had their time): a decode still running is abandoned at its next packet;
    # started again (the same app served anew, or in a test client's second context): uploads decoded again
    app.router.add_event_handler("shutdown", encoders.stop.set)
    app.router.add_event_handler("startup", encoders.stop.clear)

    @app.exception_handler(RequestError)
    def bad_input(_: Request, exc: RequestError):
        return JSONResponse(status_code=422, content={"detail": str(exc).splitlines()[0]})

    @app.middleware("http")
    async def server_fault(request: Request, call_next):
        # any error no handler claimed is the server's: logged here once, answered as a plain 500; caught
        # in a middleware (not an exception handler, after which Starlette re-raises to the server, whose
        # log would show the traceback a second time)
        try:
            return await call_next(request)
        except BodyRefused:  # the client's, answered by BodyLimit
            raise
        except Exception:
            logger.exception("%s %s failed (request %s)", request.method, request.url.path,
                             request.scope.get("state", {}).get("request_id"))
            return JSONResponse(status_code=500, content={"detail": "internal error; see the server log"})

    def json_too_large(limit: int) -> Callable[[int | None], str]:
        return lambda size: (f"body: {f'{size} bytes is' if size is not None else 'the request is'} larger than "
                             f"this server's limit of {limit} bytes for JSON ({limit / 2**20:.0f} MB)")

    app.add_middleware(BatchSlots, path="/recommend/batch", slots=max_batches)
    app.add_middleware(BodyLimit, limits={"/recommend/video": (max_upload + FORM_SLACK, lambda size: too_large),
                                          "/recommend": (max_clip_json, json_too_large(max_clip_json)),
                                          "/recommend/batch": (max_json, json_too_large(max_json))})
    if allowed.origins:  # an allowed page's script may read the answers (and send JSON: a preflight)
        app.add_middleware(CORSMiddleware, allow_origins=list(allowed.origins), allow_methods=["GET", "POST"],
                           allow_headers=["content-type", REQUEST_ID_HEADER],
                           expose_headers=[REQUEST_ID_HEADER, "server-timing"])
    app.add_middleware(HostOriginCheck, allowed=allowed)  # before any body is read
    app.add_middleware(RequestLog)  # added last: outermost, so that it times and logs the 400s, 403s, 413s and 503s

    @app.exception_handler(RequestValidationError)
    def bad_request(request: Request, exc: RequestValidationError):
        route = request.scope.get("route")  # its path as declared, under whatever prefix the app is mounted
        detail = wrong_body_kind(getattr(route, "path", request.url.path), request.headers.get("content-type", ""))
        return JSONResponse(status_code=422, content={"detail": detail or validation_detail(exc.errors()[0])})

    @app.exception_handler(StarletteHTTPException)
    async def unparsed_body(request: Request, exc: StarletteHTTPException):
        # a body the framework refused before validation (a bare 400) gets the service's own answer; every
        # other HTTP error (the 413s and the 501 raised here) is answered as FastAPI does
        refused = body_refusal(exc)
        if refused is None:
            return await http_exception_handler(request, exc)
        return refusal(*refused)

    def answer(clips: list[Clip], top: int, batch: bool = False) -> list[dict]:
        features = [clip_features(c.visual, c.text, spec, f"clips[{i}]" if batch else "")
                    for i, c in enumerate(clips)]
        given = [c.taste is not None for c in clips]
        if any(given) and not all(given) and not personalised:  # in personalised mode: required of every clip
            raise RequestError("taste: give it for every clip of a batch or for none")
        taste = np.stack([taste_vector(c.taste, spec.genres, f"taste[{i}]" if len(clips) > 1 else "taste")
                          for i, c in enumerate(clips)]) if all(given) else None
        labels = [f"clips[{i}]" for i in range(len(clips))] if batch else ["visual/text"]
        return recommender.recommend(features, top, [c.exclude for c in clips], taste, labels,
                                     [c.genres for c in clips])

    @app.head("/health", include_in_schema=False)  # the load balancers' and monitors' check (it was 405)
    @app.get("/health")
    async def health() -> dict:  # on the event loop: answered while every worker thread is busy
        """The model and catalogue being served, and the feature sizes a request must have."""
        import torch  # loaded with the model

        return {"status": "ok", "model": recommender.model.name,
                "inference_mode": getattr(recommender.model, "inference_mode", None),
                "tracks": len(recommender.catalog), "index": recommender.index_kind,
                "index_settings": index_settings(recommender.index),
                "features": {"visual": spec.video_visual, "text": spec.video_text}, "genres": list(spec.genres),
                "catalog_genres": recommender.genre_names,
                "max_upload_bytes": max_upload, "max_json_bytes": max_json,
                "max_clip_json_bytes": max_clip_json, "max_caption_bytes": MAX_CAPTION,
                "video_frames": frames,  # sampled from each uploaded video (/recommend/video)
                "threads": torch.get_num_threads(),  # torch's count (bgmrec serve --threads sets it in each thread)
                "run_folder": run_folder, "catalog_against_training": against_training,
                "served_by": identity, "warnings": startup_warnings}

    @app.post("/recommend")
    def recommend(body: OneClip) -> AnswerJSON:
        """The top tracks for one clip's features."""
        return AnswerJSON({**answer([body], body.top)[0], "served_by": identity})  # rendered in this thread

    @app.post("/recommend/batch")
    def recommend_batch(body: Batch) -> AnswerJSON:
        """The top tracks for each of many clips, in order (503 past ``max_batches`` at once: :class:`BatchSlots`)."""
        # rendered here, not on the event loop (1,024 clips of 1,000 tracks: 112 MB of JSON)
        return AnswerJSON({"results": answer(body.clips, body.top, batch=True), "served_by": identity})

    @app.post("/recommend/video", dependencies=[Depends(known_form_fields)])
    def recommend_video(video: UploadFile = File(...), caption: str = Form(""),
                        top: int = Form(10, ge=1, le=MAX_TOP), exclude: list[str] = Form([]),
                        genres: list[str] | None = Form(None)) -> AnswerJSON:
        """The top tracks for an uploaded video file and its caption (embedded as ``extract-videos`` does);
        ``exclude`` and ``genres`` as in ``POST /recommend``, one form field per track id or genre (no
        ``genres`` field: every genre; empty values are skipped), checked before the video is read."""
        if personalised:
            raise RequestError("POST /recommend/video takes no uploader taste, which this model needs (personalised "
                               "mode, or a model that reads it): extract the clip's features and POST /recommend "
                               "with 'taste'")
        if encoders.refused is not None:  # the server's configuration, not the client's input: before reading it
            raise HTTPException(501, f"video upload: {encoders.refused}")
        exclude = [t for t in exclude if t.strip()]
        genres = [g for g in genres or [] if g.strip()] or None
        recommender.excluded_positions([exclude], [genres], 1)  # a bad genre before the upload's embedding
        with encoders.slot(), tempfile.NamedTemporaryFile(suffix=upload_suffix(video.filename)) as f:
            if not copy_limited(video.file, f, max_upload):
                raise HTTPException(413, too_large)
            f.flush()
            video.file.close()  # the framework's spooled copy: one copy on disk while it is decoded, not two
            clip = encoders.embed(Path(f.name), caption, video.filename or "video")
        return AnswerJSON({**recommender.recommend([clip], top, [exclude], genres=[genres])[0],
                           "served_by": identity})

    return app


class AnswerJSON(Response):
    """An answer rendered as JSON by pydantic's serializer (written in Rust), where it is made: in the request's
    worker thread, not on the event loop, three times as fast as the standard library's (0.37 s against 1.2 s
    for a batch of 1,024 clips of 1,000 tracks), so that the other requests wait less for the interpreter."""

    media_type = "application/json"

    def render(self, content) -> bytes:
        return to_json(content, inf_nan_mode="null")


def refusal(status: int, detail: str) -> JSONResponse:
    """The answer to a body refused (:func:`body_refusal`, :class:`BodyLimit`): ``{"detail": ...}``, and for a
    408 ``Connection: close`` (RFC 9110: the client may be gone, and what it still sends is not a request)."""
    return JSONResponse(status_code=status, content={"detail": detail},
                        headers={"Connection": "close"} if status == 408 else None)


class BodyRefused(StarletteHTTPException):
    """A request body refused while it was read: past its limit (HTTP 413), or stalled (408), with ``detail``."""


class RequestLog:
    """ASGI middleware: every HTTP request gets an id, its answer the headers ``X-Request-ID`` (that id) and
    ``Server-Timing: app;dur=MS`` (milliseconds from the request's arrival to its answer's headers), and the
    log (logger ``bgmrec.service``, level INFO) one line once the answer is sent or abandoned: client, method,
    path (percent-encoded, as uvicorn's access log has it: a decoded line break would forge a log line),
    status (``-``: none was sent, or the client left before its answer began, which the line then says),
    milliseconds to the answer's last byte, and the id, which the traceback of a server fault names too. A request
    cancelled by the server's stop (its time for requests in flight run out) gets 503 if nothing was sent, and
    its line says so (uvicorn logged the cancelled task's traceback). The
    id is the request's own ``X-Request-ID`` when that is 1 to 128 letters, digits or ``._:-`` (so a caller
    can follow one request through its own logs), else a new one."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        given = Headers(scope=scope).get(REQUEST_ID_HEADER, "")
        request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status, gone = "-", False

        async def receiving():
            nonlocal gone
            message = await receive()
            gone = gone or (message["type"] == "http.disconnect" and status == "-")  # before any answer began
            return message

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start" and not gone:
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = request_id
                headers["server-timing"] = f"app;dur={(time.perf_counter() - start) * 1000:.1f}"
            await send(message)

        stopped = False
        try:
            await self.app(scope, receiving, sending)
        except asyncio.CancelledError:  # the server stopped (its graceful shutdown's time ran out) mid-request:
            stopped = True  # said in its line, and a 503 sent if nothing was, not as uvicorn's traceback of the task
            if status == "-" and not gone:
                with contextlib.suppress(Exception, asyncio.CancelledError):  # gone already, or cancelled again
                    await JSONResponse(status_code=503, headers={"Connection": "close"}, content={
                        "detail": "the server stopped before answering; retry"})(scope, receiving, sending)
        finally:
            client = scope.get("client")
            logger.info('%s "%s %s" %s %.1f ms id=%s%s', f"{client[0]}:{client[1]}" if client else "-",
                        scope["method"], quote(scope["path"]), status, (time.perf_counter() - start) * 1000,
                        request_id, " (the client left before its answer)" if gone else
                        " (cancelled: the server stopped before its answer)" if stopped else "")


class BatchSlots:
    """ASGI middleware: at most ``slots`` requests to ``path`` at once, from before their body is read until the
    last part of their answer is handed to the server (a batch of 1,024 clips holds its parsed body, its scores and
    up to 112 MB of answer; freed only once the app had returned, a fast client's next batch raced that release and
    found the slot still taken); one more gets HTTP 503 with ``Retry-After: 1`` at once, its body unread."""

    def __init__(self, app, path: str, slots: int) -> None:
        self.app, self.path, self.slots, self.limit = app, path, threading.BoundedSemaphore(slots), slots

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        if not self.slots.acquire(blocking=False):
            busy = JSONResponse(status_code=503, headers={"Retry-After": "1"}, content={
                "detail": f"busy: this server answers at most {self.limit} batch requests at once (bgmrec serve "
                          "--max-batches); retry shortly"})
            return await busy(scope, receive, send)
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                self.slots.release()

        async def sending(message):
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                release()  # the answer's last bytes: freed before the client has them, to send its next batch
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:  # sent, failed or abandoned
            release()


@dataclass(frozen=True)
class AllowedCallers:
    """Whom the service answers (:class:`HostOriginCheck`): requests whose ``Host`` header names one of ``hosts``
    (None: any host; an entry ``*.example.com`` matches its subdomains, ``*`` any), and whose ``Origin``, when
    they carry one, is their own (the ``Host`` they were sent to) or one of ``origins`` (``*``: any). Build it
    with :meth:`of`, which normalises the names."""

    hosts: tuple[str, ...] | None  # names or addresses, lower case, IPv6 without brackets, no port or trailing dot
    origins: tuple[str, ...]  # scheme://host[:port] as browsers send it (origin_of), or "*"

    @classmethod
    def of(cls, hosts: Sequence[str] | None, origins: Sequence[str]) -> AllowedCallers:
        """``hosts`` (names or addresses; a port is dropped) and ``origins`` (``scheme://host[:port]``), normalised;
        a bad entry raises ValueError naming it."""
        if isinstance(hosts, str) or isinstance(origins, str):
            raise ValueError("allowed hosts and origins are lists of names, not one string")
        for h in hosts or ():
            if "/" in h or "@" in h:
                raise ValueError(f"allowed host {h!r} is not a name or an address (api.example.com, 10.0.0.5, ::1, "
                                 "*.example.com): no scheme, path or user")
        names = None if hosts is None else tuple(host_name(h) for h in hosts)
        if names is not None and not all(names):
            raise ValueError(f"allowed hosts: an empty name in {list(hosts)}")
        kept = []
        for origin in origins:
            kept.append("*" if origin.strip() == "*" else origin_of(origin))
            if kept[-1] is None:
                raise ValueError(f"allowed origin {origin!r} is not scheme://host[:port] (e.g. https://app.example.com)"
                                 " or *")
        return cls(names, tuple(kept))

    def __str__(self) -> str:
        hosts = "any Host" if self.hosts is None or "*" in self.hosts else f"Host {', '.join(self.hosts)}"
        origins = ("any Origin" if "*" in self.origins else
                   f"Origin its own, {', '.join(self.origins)} or none" if self.origins else "Origin its own or none")
        return f"{hosts}; {origins}"

    def host_allowed(self, host: str) -> bool:
        """Whether a request whose ``Host`` header is ``host`` is answered."""
        name = host_name(host)
        return self.hosts is None or any(h == "*" or h == name or (h.startswith("*.") and name.endswith(h[1:]))
                                         for h in self.hosts)

    def origin_allowed(self, origin: str, host: str) -> bool:
        """Whether a request whose ``Origin`` header is ``origin``, sent to ``host``, is answered: ``null`` or
        anything else not an origin (:func:`origin_of`) only when any is."""
        own = origin_of(origin)
        if "*" in self.origins or own in self.origins:
            return True
        if own is None:
            return False
        scheme, authority = own.split("://")
        host = host.strip().lower()
        return host in (authority, f"{authority}:{DEFAULT_PORTS[scheme]}")  # as the Host it was sent to


DEFAULT_PORTS = {"http": 80, "https": 443}  # the schemes of an origin the service answers, and their ports


def origin_of(value: str) -> str | None:
    """``value`` as browsers send an ``Origin``: ``scheme://host[:port]``, lower case, without the scheme's default
    port (``HTTPS://App.example.com:443/`` is ``https://app.example.com``); None when it is not one of http or
    https (``null``, a path, a user name, a port past 65535)."""
    try:
        parts = urlsplit(value.strip().lower())
        port = parts.port
    except ValueError:  # a bad port, an unclosed IPv6 bracket
        return None
    if (parts.scheme not in DEFAULT_PORTS or not parts.hostname or "@" in parts.netloc
            or parts.path not in ("", "/") or parts.query or parts.fragment):
        return None
    name = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{name}" + ("" if port in (None, DEFAULT_PORTS[parts.scheme]) else f":{port}")


class HostOriginCheck:
    """ASGI middleware against requests a web page makes its visitor's browser send. Any page may post to any
    address (a form or a plain ``fetch`` asks no permission), and one served by DNS rebinding reads the answers
    of an address it names as its own host. A request whose ``Host`` header ``allowed`` does not answer gets HTTP
    400; one whose ``Origin`` it does not answer gets 403; both before the body is read. Browsers send ``Origin``
    on every POST and every script's request to another origin (the service's own ``/docs`` page sends its own);
    a request without one (curl, an app's backend, an HTTP library, a page's image) passes that check."""

    def __init__(self, app, allowed: AllowedCallers) -> None:
        self.app, self.allowed = app, allowed

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        host, origin = headers.get("host", ""), headers.get("origin")
        if not self.allowed.host_allowed(host):
            refused = JSONResponse(status_code=400, content={
                "detail": f"Host: {host!r} is not a name this server answers to (bgmrec serve --allowed-host)"})
            return await refused(scope, receive, send)
        if origin is not None and not self.allowed.origin_allowed(origin, host):
            refused = JSONResponse(status_code=403, content={
                "detail": f"Origin: {origin!r}: this server answers no requests from pages of that origin "
                          "(bgmrec serve --allow-origin)"})
            return await refused(scope, receive, send)
        await self.app(scope, receive, send)


def host_name(value: str) -> str:
    """The name or address a ``Host`` header's value names, lower case, without its port, an IPv6 address's
    brackets or a trailing dot: ``[::1]:8000`` is ``::1``, ``Example.COM.:443`` is ``example.com``."""
    value = value.strip().lower()
    if value.startswith("["):
        value = value[1:value.find("]")] if "]" in value else value
    elif value.count(":") == 1:
        value = value.split(":")[0]
    return value.rstrip(".")


class BodyLimit:
    """ASGI middleware: a request body larger than its path's limit gets HTTP 413, whether its size is declared
    (``Content-Length``: refused before a byte is read) or not (chunked: counted as it arrives, and refused as
    soon as it passes the limit, so an upload without a length never fills the disk or the memory); one of which
    nothing arrives for :data:`BODY_IDLE_SECONDS`, or that arrives more slowly than :data:`MIN_BODY_RATE` on
    average after that, gets 408, so that a stalled, vanished or trickling client does not hold its request's
    thread and batch slot (:class:`BatchSlots`) for as long as its connection stays open.

    A body with a ``Content-Encoding`` (gzip, ...) gets 415 at once: it is not decompressed (a gzipped JSON body
    was refused as invalid JSON, a plain body labelled gzip answered).

    ``limits`` maps a path to (bytes, detail), ``detail(size)`` giving the answer's one-line ``detail`` (``size``:
    the declared length, None for a body counted while read)."""

    def __init__(self, app, limits: dict[str, tuple[int, Callable[[int | None], str]]]) -> None:
        self.app, self.limits = app, limits

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.limits:
            return await self.app(scope, receive, send)
        limit, detail = self.limits[scope["path"]]
        headers = Headers(scope=scope)
        encoding = next((e for value in headers.getlist("content-encoding") for e in (
            part.strip().lower() for part in value.split(",")) if e not in ("", "identity")), None)
        if encoding is not None:  # a gzipped JSON body was "not valid JSON", a plain one labelled gzip answered
            return await JSONResponse(status_code=415, headers={"Accept-Encoding": "identity"}, content={
                "detail": f"body: Content-Encoding {encoding!r} is not read by this server; send it uncompressed"})(
                scope, receive, send)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return await JSONResponse(status_code=413, content={"detail": detail(int(declared))})(scope, receive, send)
        seen, started, whole, waited = 0, False, False, 0.0

        async def counted():
            nonlocal seen, whole, waited
            if whole:  # once the body is in, the app may wait on for a disconnect as long as it likes
                return await receive()
            asked = time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), BODY_IDLE_SECONDS)
            except TimeoutError:  # re-raised by FastAPI's body parsing as the HTTP error it is, as below
                raise BodyRefused(408, f"body: nothing of it arrived for {BODY_IDLE_SECONDS:g} s after "
                                       f"{seen} bytes; send the request again") from None
            waited += time.monotonic() - asked  # the time the body kept the app waiting, not the app's own pauses
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                whole = not message.get("more_body", False)
                if seen > limit:
                    raise BodyRefused(413, detail(None))
                if not whole and waited > BODY_IDLE_SECONDS and seen < MIN_BODY_RATE * waited:
                    # a byte every few seconds never tripped the idle limit, and four such held every batch slot
                    raise BodyRefused(408, f"body: {seen} bytes arrived in {waited:.0f} s of waiting for it, slower "
                                           f"than this server's minimum of {MIN_BODY_RATE} bytes/s; send the request "
                                           "again")
            return message

        async def sending(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, sending)
        except BodyRefused as e:  # raised where no exception handler answers it
            if started:
                raise
            await refusal(e.status_code, e.detail)(scope, receive, send)


def index_settings(index) -> dict:
    """The search settings of a FAISS index (links per node, ef_search, ef_construction); {} for exact search."""
    if not hasattr(index, "ef_search"):
        return {}
    return {"m": index.m, "ef_search": index.ef_search, "ef_construction": index.index.hnsw.efConstruction}


def json_limit(spec, clips: int = MAX_BATCH) -> int:
    """The largest JSON body of ``clips`` clips a server of a model with feature sizes ``spec`` reads: a batch's
    (``clips`` :data:`MAX_BATCH`) :data:`MAX_JSON`, one clip's :data:`MAX_CLIP_JSON` (a 57 MB body of one clip's
    excludes took 635 MB more to answer), or room for that many clips, every value at its longest, when that is more."""
    floor = MAX_JSON if clips > 1 else MAX_CLIP_JSON
    return max(floor, clips * (spec.video_visual + spec.video_text) * JSON_BYTES_PER_VALUE + FORM_SLACK)


def upload_suffix(filename: str | None) -> str:
    """The extension an uploaded video's temporary file gets: the client's, lower-cased, when it is one of
    ``extract-videos``' (:data:`~bgmrec.features.video.VIDEO_EXTENSIONS`), else none (the decoder reads the
    content; a client's name, e.g. with a 300-character extension, never reaches the file system)."""
    from bgmrec.features.video import VIDEO_EXTENSIONS

    suffix = Path(filename or "").suffix.lower()
    return suffix if suffix in VIDEO_EXTENSIONS else ""


async def known_form_fields(request: Request) -> None:
    """Refuse a multipart field ``POST /recommend/video`` does not read (``top_k``), as the JSON endpoints refuse
    unknown fields, instead of answering as if it had not been sent; and a field it reads once (``video``,
    ``caption``, ``top``) sent twice, whose last value was used without a word (the answer was for the second
    video)."""
    form = await request.form()  # the form FastAPI parsed
    unknown = sorted(set(form.keys()) - set(VIDEO_FORM_FIELDS))
    if unknown:
        raise RequestError(f"{unknown[0]}: unknown field (the form's fields are {', '.join(VIDEO_FORM_FIELDS)})")
    repeated = [k for k in VIDEO_FORM_FIELDS if k not in REPEATABLE_FORM_FIELDS and len(form.getlist(k)) > 1]
    if repeated:
        raise RequestError(f"{repeated[0]}: sent {len(form.getlist(repeated[0]))} times; the form takes one (one "
                           f"video a request: POST /recommend/batch for many clips' features; only "
                           f"{' and '.join(REPEATABLE_FORM_FIELDS)} repeat, a field per value)")


def body_refusal(exc: StarletteHTTPException) -> tuple[int, str] | None:
    """HTTP status and one-line ``detail`` for a request body the framework refused before validation with a
    bare HTTP 400, named as the service names a body that is not JSON (422), too large (413) or stalled (408);
    None for any other HTTP error.

    FastAPI answers "There was an error parsing the body" to JSON that :func:`json.loads` refuses with anything
    but a ``JSONDecodeError`` (the cause is kept): nesting deeper than Python's recursion limit, bytes that are
    not UTF-8, an integer of more digits than Python converts; any other cause keeps the framework's 400 rather
    than be called bad JSON. Starlette's multipart parser refuses a text field over :data:`MAX_CAPTION` bytes
    ("Part exceeded maximum size") without saying which field: most often the caption, or a video sent as a
    text part (no file name), so :data:`CAPTION_TOO_LARGE` names both; it refuses more than 1,000 text fields
    ("Too many fields"), which only long ``exclude`` or ``genres`` lists reach (:data:`TOO_MANY_FIELDS`); any other
    multipart body it cannot read (no boundary, a broken part header, a part without a name) gets 422 saying so,
    with the framework's reason (a bare 400 before). A body
    :class:`BodyLimit` refused while the framework parsed it is answered as the 413 or 408 it is.
    """
    if exc.status_code != 400:
        return None
    cause = exc.__cause__
    while isinstance(cause, BaseExceptionGroup) and len(cause.exceptions) == 1:  # a middleware's task group
        cause = cause.exceptions[0]
    if isinstance(cause, BodyRefused):  # FastAPI's parsing wrapped it as a body it could not parse
        return cause.status_code, cause.detail
    if isinstance(cause, RecursionError):
        return 422, ('body: JSON nested too deeply to parse (a request nests 4 levels at most: '
                     '{"clips": [{"visual": [...]}]})')
    if isinstance(cause, UnicodeDecodeError):
        return 422, f"body: not valid JSON: not {cause.encoding} text at byte {cause.start} ({cause.reason})"
    if isinstance(cause, ValueError) and "integer string conversion" in str(cause):
        # its advice (sys.set_int_max_str_digits) is for the server, not the client
        return 422, f"body: not valid JSON ({str(cause).splitlines()[0].split(';')[0]})"
    if isinstance(exc.__context__, MultiPartException) and "exceeded maximum size" in str(exc.detail):
        return 413, CAPTION_TOO_LARGE
    if isinstance(exc.__context__, MultiPartException) and str(exc.detail).startswith("Too many fields"):
        return 422, TOO_MANY_FIELDS
    if isinstance(exc.__context__, MultiPartException):
        return 422, (f"body: not a readable multipart/form-data body ({str(exc.detail).rstrip('.')}); send the "
                     "video as the form field 'video' (curl -F video=@clip.mp4)")
    return None


def wrong_body_kind(path: str, content_type: str) -> str | None:
    """The ``detail`` of a request whose body is of the other kind than its endpoint reads: JSON (or anything but a
    form) sent to ``POST /recommend/video``, which was answered "video: Field required", or a form, or a body not
    labelled JSON, sent to an endpoint of JSON, answered "body: Input should be a valid dictionary"; None when the
    kind is the right one."""
    kind = content_type.split(";")[0].strip().lower()
    form = kind in ("multipart/form-data", "application/x-www-form-urlencoded")
    if path == "/recommend/video" and kind != "multipart/form-data":
        return (f"body: POST /recommend/video reads a multipart/form-data form (curl -F video=@clip.mp4), not "
                f"{kind or 'a body without a Content-Type'}; a clip's features as JSON go to POST /recommend")
    if path in ("/recommend", "/recommend/batch") and form:
        return (f"body: POST {path} reads JSON (Content-Type: application/json), not {kind}; a video file goes to "
                "POST /recommend/video as a multipart form")
    if path in ("/recommend", "/recommend/batch") and kind != "application/json" and not kind.endswith("+json"):
        return (f"body: POST {path} reads JSON: send it with Content-Type: application/json, not "
                f"{kind or 'without a Content-Type'}")
    return None


def validation_detail(error: dict) -> str:
    """The one-line ``detail`` of a request FastAPI could not parse (its first error): the field named as
    ``clips[1].top``, then what is wrong with it."""
    if error["type"] == "json_invalid":  # FastAPI's location is ("body", character offset)
        offset = error["loc"][-1]
        reason = (error.get("ctx") or {}).get("error", error["msg"])
        return f"body: not valid JSON at character {offset} ({reason})"
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"] if p != "body")
    where = where.lstrip(".") or "body"
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown field ({error['msg']})"
    if "Expected UploadFile" in error["msg"]:  # a text field, or a file part without a file name
        return f"{where}: expected a file (a multipart part with a file name), got a text value"
    if error["type"].endswith("_type") and "input" in error:  # the wrong JSON type: say which it was
        return f"{where}: {error['msg']}, got {json_type(error['input'])}"
    return f"{where}: {error['msg']}"


def json_type(value) -> str:
    """What a parsed JSON value is, for an error message: ``a string``, ``a boolean``, ``null``..."""
    if value is None:
        return "null"
    names = {bool: "a boolean", str: "a string", int: "an integer", float: "a number with a decimal point",
             list: "an array", dict: "an object"}
    return next((name for kind, name in names.items() if isinstance(value, kind)), type(value).__name__)


def copy_limited(src: BinaryIO, dst: BinaryIO, limit: int, chunk: int = 1 << 20) -> bool:
    """Copy ``src`` to ``dst`` in chunks (never the whole file in memory); False, and the copy stopped, as soon
    as more than ``limit`` bytes have been read."""
    total = 0
    while block := src.read(chunk):
        total += len(block)
        if total > limit:
            return False
        dst.write(block)
    return True


def served_by(recommender: ClipRecommender) -> dict:
    """What answers: model name, inference mode, bgmrec version, run and catalogue identifiers (see the module
    docstring). The run's files are hashed here, so call it once (at start-up)."""
    model, cat = recommender.model, recommender.catalog
    run = Path(model.source).parent if getattr(model, "source", None) else None
    run_hash = None
    if run is not None:  # one hash of the two files' hashes
        from bgmrec.data.dataset import sha256_file

        both = "".join(sha256_file(run / name) for name in ("config.json", "weights.safetensors"))
        run_hash = hashlib.sha256(both.encode()).hexdigest()
    return {"model": model.name, "inference_mode": getattr(model, "inference_mode", None),
            "bgmrec_version": _version(), "run": run.name if run is not None else None, "run_sha256": run_hash,
            "catalog": Path(cat.root).name if cat.root is not None else None,
            "catalog_hash": cat.manifest.get("content_hash")}


def catalog_against_training(recommender: ClipRecommender, warn: Callable[[str], None] | None = None) -> dict | None:
    """How the served catalogue's track ids differ from those of the dataset the model was trained on (its run's
    ``run.json`` names the folder): ``not_in_training`` (served tracks in no training pair of the dataset, which the
    model ranks as new music: a catalogue's additions, the dataset's held-out new music) and ``not_served`` (tracks
    of its dataset the catalogue lacks), each a count with up to three ids. A catalogue grown since has the first,
    one shrunk the second; a stale copy (last week's, serving a track withdrawn since) often both. None when the
    run names no dataset, or it cannot be read any more, or it was built again since the run trained on it (its
    fingerprint, recorded in ``run.json``, differs: ``warn`` is told)."""
    import csv

    from bgmrec.data.dataset import DatasetError, dataset_fingerprint, load_npy
    from bgmrec.models.base import read_run_record

    source = getattr(recommender.model, "source", None)
    record = read_run_record(Path(source).parent) if source else {}
    data = record.get("data")
    try:
        if record.get("data_fingerprint") not in (None, dataset_fingerprint(Path(data))):
            if warn is not None:
                warn(f"{data}, the dataset the run was trained on, was built again since: which tracks it trained on "
                     "cannot be read from it now, so /health's catalog_against_training is null")
            return None
        with open(Path(data) / "tracks.csv", newline="", encoding="utf-8") as f:
            listed = [row["id"] for row in csv.DictReader(f)]
        train = load_npy(Path(data) / "splits" / "train.npy")
        trained = {listed[j] for j in np.unique(np.asarray(train)[:, 1]).tolist()}
    except (TypeError, OSError, KeyError, csv.Error, UnicodeDecodeError, DatasetError, IndexError):
        return None
    served = list(recommender.catalog.ids)
    served_set = set(served)
    new, gone = [t for t in served if t not in trained], [t for t in listed if t not in served_set]
    return {"training_dataset": str(data), "not_in_training": len(new), "not_in_training_ids": new[:3],
            "not_served": len(gone), "not_served_ids": gone[:3]}


def clip_features(visual: list[float], text: list[float] | None, spec, where: str = "") -> ClipFeatures:
    """One clip's request fields as :class:`ClipFeatures`, checked against the model's feature sizes."""
    prefix = f"{where}." if where else ""
    v = _vector(visual, spec.video_visual, prefix + "visual")
    if text is None:
        return ClipFeatures(v, np.zeros(spec.video_text, np.float32), False)
    return ClipFeatures(v, _vector(text, spec.video_text, prefix + "text"), True)


def _vector(values: list[float], size: int, field: str) -> np.ndarray:
    if len(values) != size:
        raise RequestError(f"{field}: expected {size} values (the model's feature size), got {len(values)}")
    with np.errstate(over="ignore"):
        out = np.asarray(values, np.float32)
    if not np.isfinite(out).all():  # after the cast: 1e39 is a finite float but not a finite float32
        raise RequestError(f"{field}: values must be finite numbers within float32 range (|x| < 3.4e38)")
    return out


def uploads_refused(spec) -> str | None:
    """Why a model of feature sizes ``spec`` cannot rank an uploaded video (trained on features of other sizes
    than the encoders of ``extract-videos`` give: a simulated world's), None when it can."""
    from bgmrec.features.recommend import video_files_refused

    why = video_files_refused(spec)
    return None if why is None else f"{why}; POST /recommend takes features of the model's sizes"


class _MediaEncoders:
    """The frame and caption encoders of ``extract-videos``, loaded once (at start-up, or on the first upload) and
    shared by requests; ``refused``: why uploads cannot be ranked at all (:func:`uploads_refused`); ``stop``: set
    when the server stops, which ends a decode in progress (:class:`~bgmrec.features.video.DecodeLimit`)."""

    def __init__(self, frames: int, refused: str | None = None) -> None:
        self.frames, self.refused = frames, refused
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._loaded = None
        self._slots = threading.BoundedSemaphore(UPLOAD_SLOTS)

    @contextlib.contextmanager
    def slot(self):
        """One of :data:`UPLOAD_SLOTS` for an upload whose body has arrived, from its copy to its embedding, else
        HTTP 503 with ``Retry-After: 1`` at once: queued behind one long decode, uploads had held every worker
        thread, and a JSON request waited 37 s for one (taken once the body is read, so that a client trickling
        its body holds no slot)."""
        if not self._slots.acquire(blocking=False):
            raise HTTPException(503, f"busy: this server embeds at most {UPLOAD_SLOTS} video uploads at once; retry "
                                     "shortly", headers={"Retry-After": "1"})
        try:
            yield
        finally:
            self._slots.release()

    def load(self) -> None:
        """Load both encoders' networks now (about 4 s), so that the first upload is answered as fast as the
        others; ImportError without the ``media`` extra."""
        with self._lock:
            self._load_locked()

    def _load_locked(self):
        with extra_modules():
            import av  # noqa: F401  (decodes the uploads: missing, the server says so at start-up)

        from bgmrec.features.text import TextEncoder
        from bgmrec.features.video import FrameEncoder

        if self._loaded is None:
            frame_encoder, text_encoder = FrameEncoder(), TextEncoder()
            text_encoder.model()
            frame_encoder.embed(np.zeros((frame_encoder.threads, 64, 64, 3), np.uint8))  # its network, its threads
            self._loaded = frame_encoder, text_encoder
        return self._loaded

    def embed(self, path: Path, caption: str, name: str) -> ClipFeatures:
        """One uploaded clip's features; the media packages are imported here, on first use.

        :class:`RequestError` (422) if the file is not a usable video; HTTP 501 if the media packages are missing.
        """
        from bgmrec.features.cache import MediaError

        with self._lock:
            try:
                from bgmrec.features.video import DecodeLimit, DecodeStopped, VideoConfig, embed_clip

                frame_encoder, text_encoder = self._load_locked()
                limit = DecodeLimit(time.monotonic() + DECODE_SECONDS, self.stop)
                features = embed_clip(path, caption or None, frame_encoder, text_encoder,
                                      VideoConfig(frames=self.frames), limit)
            except DecodeStopped as e:  # the server's, not the video's (seen by a client only of an embedding app:
                # uvicorn cancels the requests still in flight before it stops the app, and RequestLog answers them)
                raise HTTPException(503, f"video {name}: {e}", headers={"Connection": "close"}) from None
            except MediaError as e:
                raise RequestError(f"video {name}: {e}") from None
            except ImportError as e:
                raise HTTPException(501, f"video upload, on the server: {media_advice(e)}") from None
        return ClipFeatures(*features)


def media_advice(e: ImportError) -> str:
    """What a missing or mismatched media extra needs, in one line (:mod:`bgmrec.extras`' words when it said)."""
    return str(e if isinstance(e, ExtraError) else MissingExtraError("media", str(e), e.name))


def _version() -> str:
    import bgmrec

    return bgmrec.__version__
