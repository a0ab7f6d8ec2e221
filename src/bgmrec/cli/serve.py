"""``bgmrec serve``: the HTTP service of :mod:`bgmrec.service` (needs the ``serve`` extra)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import typer

from bgmrec.cli.app import app, flag, hangup_signal, options_named
from bgmrec.extras import extra_modules

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")  # the Host names a loopback server answers by default


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` resolves to is a loopback one (False when it does not resolve)."""
    import ipaddress
    import socket

    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None, socket.AF_UNSPEC, socket.SOCK_STREAM)}
        return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)
    except (OSError, ValueError):
        return False


def hosts_to_answer(host: str, allowed_hosts: list[str] | None) -> list[str] | None:
    """The ``Host`` names a server listening on ``host`` answers: ``--allowed-host``'s when given; else, on a
    loopback address, that address and :data:`LOOPBACK_NAMES` (a page served by DNS rebinding names its own
    host, so it is refused); else None, any name (a public server's names are not known here)."""
    if allowed_hosts:
        return allowed_hosts
    return list(dict.fromkeys([host, *LOOPBACK_NAMES])) if is_loopback(host) else None


def public_address_note(host: str, hosts_checked: bool = False) -> str | None:
    """What a server listening on ``host`` needs said when that is not a loopback address (reachable from other
    machines: docs/serving.md), and, unless ``hosts_checked``, that it answers any ``Host``; else None."""
    if is_loopback(host):
        return None
    unchecked = ("" if hosts_checked else ", and answers requests of any Host header (a page served by DNS "
                 "rebinding can read its answers; --allowed-host names the ones to answer)")
    return (f"--host {host} is reachable from other machines{unchecked}: put a reverse proxy in front of it "
            "(docs/serving.md, Video uploads)")


def check_can_listen(host: str, port: int) -> None:
    """Refuse, in one line naming ``--host`` and ``--port``, an address the server could not listen on (a port
    in use, an address not of this machine, a name that does not resolve). Bound as uvicorn's asyncio server
    binds it: every address ``host`` resolves to, together, with SO_REUSEADDR and IPv6 sockets IPv6-only; then
    closed."""
    import contextlib
    import errno
    import socket

    try:
        addresses = set(socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE))
        with contextlib.ExitStack() as stack:
            for family, kind, proto, _, address in addresses:
                sock = stack.enter_context(socket.socket(family, kind, proto))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
    except OSError as e:
        hint = "; choose another --port or stop what listens there" if e.errno == errno.EADDRINUSE else ""
        raise ValueError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e}){hint}") from None


SHUTDOWN_SECONDS = 30.0  # what requests in flight get to finish once the server is stopped (--stop-seconds)


@app.command("serve")
def serve_cmd(
    run: Path = typer.Option(..., help="run folder of a trained model"),
    catalog: Path = typer.Option(..., help="catalogue folder written by extract-music, or a dataset folder "
                                           "(its tracks)"),
    host: str = typer.Option("127.0.0.1", help="address to listen on (0.0.0.0: every interface)"),
    port: int = typer.Option(8000, min=1, max=65535, help="TCP port"),
    index: str = typer.Option("exact", help="top-k search: exact, or faiss (approximate, for large catalogues)"),
    ef_search: int | None = typer.Option(None, min=1, help="faiss only: candidates the graph search keeps "
                                                           "(default 256; more: higher recall, slower)"),
    mode: str | None = typer.Option(None, help="inference mode of models that have several (DecCM: backdoor, "
                                               "content, personalised: requests then carry the uploader's taste)"),
    frames: int | None = typer.Option(None, min=1, help="frames sampled from uploaded videos (default: as the "
                                                       "model's training videos were, else extract-videos' 8)"),
    max_upload_mb: float = typer.Option(200.0, help="largest video upload (MB, 2**20 bytes); larger ones get HTTP 413"),
    threads: int | None = typer.Option(None, min=1, help="torch's intra-op threads of each request (default: "
                                                         "torch's, the cores this one server process may use, or "
                                                         "OMP_NUM_THREADS); concurrent requests each use this "
                                                         "many, so fewer contend less under load"),
    lazy_encoders: bool = flag(False, "--lazy-encoders", help="load the video encoders on the first "
                                                                      "video upload (about 4 s), not at start-up"),
    max_batches: int = typer.Option(4, min=1, help="batch requests answered at once (each can hold hundreds of MB); "
                                                   "more get 503 with Retry-After"),
    stop_seconds: float = typer.Option(SHUTDOWN_SECONDS, min=0, help="once stopped (SIGTERM, Ctrl-C), what requests "
                                       "in flight get to finish before the server exits; keep it below your "
                                       "supervisor's kill deadline (docker stop: 10 s)"),
    allowed_host: list[str] | None = typer.Option(None, "--allowed-host", help="a name (or address) requests' Host "
                                                  "header may give, others get 400; repeat for more; *.example.com "
                                                  "its subdomains, * any (default: on a loopback --host, the loopback "
                                                  "names, which these replace: add localhost for local health checks; "
                                                  "else any)"),
    allow_origin: list[str] | None = typer.Option(None, "--allow-origin", help="a web page's origin "
                                                  "(https://app.example.com) whose browser requests are answered, "
                                                  "with CORS headers; repeat for more; * any (default: none, so "
                                                  "requests with another site's Origin header get 403)"),
) -> None:
    """Serve "music for this video" over HTTP: POST /recommend, /recommend/batch, /recommend/video; GET /health."""
    with extra_modules():  # missing: one line naming the extra (report_error)
        import uvicorn

        from bgmrec.service import AllowedCallers, create_app
    if not 0 < max_upload_mb < float("inf") or max_upload_mb * 2**20 < 1:
        raise ValueError(f"--max-upload-mb must be a positive number (at least one byte), got {max_upload_mb}")
    from bgmrec.features.recommend import (
        ClipRecommender,
        check_search,
        frames_to_sample,
        open_catalog,
        warn_on_stderr,
    )

    with options_named(index="--index", ef_search="--ef-search"):  # before the model and the catalogue are loaded
        check_search(index, ef_search)
    hosts = hosts_to_answer(host, allowed_host)
    allowed = AllowedCallers.of(hosts, allow_origin or [])  # a bad --allowed-host or --allow-origin before loading
    check_can_listen(host, port)  # before the model and the catalogue are loaded, not after (uvicorn's exit 3)
    note = public_address_note(host, hosts_checked=allowed.hosts is not None and "*" not in allowed.hosts)
    if note:
        print(f"warning: {note}", file=sys.stderr)
    import torch

    from bgmrec.features.video import VideoConfig
    from bgmrec.models.base import load_model
    from bgmrec.runs import note_if_stopped, warn_if_model_code_changed

    # one process serves (uvicorn.run with the app object: no worker processes), each request in a thread of its
    # pool: set here for the loading, and by the recommender in each request's thread (it holds per thread)
    if threads is not None:
        torch.set_num_threads(threads)
    model = load_model(run)
    warn_if_model_code_changed(run, model)
    note_if_stopped(run)  # a RUN.partial: its best epoch so far, not a finished training
    if mode is not None:
        model.set_inference_mode(mode)
    if frames is None:
        frames = frames_to_sample(model, VideoConfig.frames)
    recommender = ClipRecommender(model, open_catalog(catalog), index, warn=warn_on_stderr, frames=frames,
                                  ef_search=ef_search, threads=threads)
    app = create_app(recommender, frames, max_upload=int(max_upload_mb * 2**20), load_video_encoders=not lazy_encoders,
                     warn=warn_on_stderr, max_batches=max_batches, allowed_hosts=hosts,
                     allowed_origins=allow_origin or [])
    # stopped (Ctrl-C, SIGTERM): requests in flight get stop_seconds to finish, then the server exits even if a
    # client keeps its connection open (it kept the server up for as long as that client did)
    with sighup_as_sigterm(), interrupt_raised_on():
        # uvicorn's access log is replaced by the service's (RequestLog: the same and the time taken, the request id)
        uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=stop_seconds,
                    access_log=False, log_config=log_config())


@contextlib.contextmanager
def sighup_as_sigterm():
    """Within: SIGHUP (a closed terminal, a supervisor's reload) stops the server as SIGTERM does, finishing the
    requests in flight (by default it killed the server at once, and the batches being answered got connection
    resets; the command line's own handler, :func:`bgmrec.cli.install_stop_handlers`, would raise inside uvicorn's
    loop). Only where a command may handle SIGHUP (:func:`~bgmrec.cli.app.hangup_signal`): ``nohup``'s ignored
    SIGHUP stays ignored, and a server started from another thread (where signals cannot be set) runs as before.
    The handler before is put back on leaving."""
    import os
    import signal

    hup = hangup_signal()
    if hup is None:
        yield
        return
    before = signal.signal(hup, lambda signum, frame: os.kill(os.getpid(), signal.SIGTERM))
    try:
        yield
    finally:
        signal.signal(hup, before)


@contextlib.contextmanager
def interrupt_raised_on():
    """Within: a Ctrl-C (SIGINT) that stopped the server is raised on as KeyboardInterrupt once the block ends.
    uvicorn stops on it, raises it again through the handler it found, and then ``uvicorn.run`` swallows the
    KeyboardInterrupt: the command exited 0, without the "stopped (SIGINT)" line and exit code 130 of every other
    command stopped by Ctrl-C. Only where SIGINT has a handler of Python's (not ignored, as in a background job),
    from the main thread; the handler before is put back on leaving."""
    import signal
    import threading

    before = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    if not callable(before):
        yield
        return
    caught: list[int] = []

    def noted(signum, frame) -> None:
        caught.append(signum)
        before(signum, frame)

    signal.signal(signal.SIGINT, noted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)
    if caught:
        raise KeyboardInterrupt


def log_config() -> dict:
    """uvicorn's logging configuration, with the service's logger (``bgmrec.service``: what is served, a line per
    request, the traceback of a server fault) at INFO through uvicorn's own handler and format, so that both
    read alike, each line with its time (uvicorn's had none: a request could not be tied to the model then served)."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["default"].update(fmt="%(asctime)s %(levelprefix)s %(message)s",
                                           datefmt="%Y-%m-%dT%H:%M:%S%z")
    config["loggers"]["bgmrec.service"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config
