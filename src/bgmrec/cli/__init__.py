"""The command line. Only this package (and the service) reads argv, files and the environment."""

from __future__ import annotations

import os
import sys
import threading
import time

from bgmrec.cli import core, interop, media, serve  # noqa: F401  (modules register their commands)
from bgmrec.cli.app import app

INTERRUPTED = 130  # exit code of a command stopped by Ctrl-C (128 + SIGINT), as shells report it


def entry() -> int:
    """The ``bgmrec`` console script: :func:`main`, with SIGTERM (a scheduler's or ``timeout``'s stop) ending
    the command as Ctrl-C does, through its clean-up (a run or dataset half built under a temporary name is
    removed), with exit code 143 (:func:`install_stop_handlers`)."""
    install_stop_handlers()
    return main()


def install_stop_handlers() -> None:
    """SIGTERM raises SystemExit(143) and Ctrl-C (SIGINT, unless ignored, as in a shell's background job)
    KeyboardInterrupt, each outside imports (:func:`stop_outside_imports`)."""
    import signal

    signal.signal(signal.SIGTERM, lambda signum, frame: stop_outside_imports(signum, frame, SystemExit(128 + signum)))
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, lambda signum, frame: stop_outside_imports(signum, frame, KeyboardInterrupt()))


_DEFERRED: dict[int, float] = {}  # signal -> when it first arrived inside an import (a stop put off)
_RESENDING: set[int] = set()  # signals whose resend is scheduled


def stop_outside_imports(signum: int, frame, stop: BaseException, retry: float = 0.05, patience: float = 2.0) -> None:
    """Raise ``stop`` for the signal ``signum`` that interrupted ``frame``, unless ``frame`` is inside an
    import: then send the signal again ``retry`` seconds later (one resend at a time, however often it
    arrives meanwhile), and raise anyway once ``patience`` seconds have passed since it first arrived (an
    import that never ends must not make a stop wait forever). An exception raised while an extension
    module initialises can be swallowed there, and the stop lost: a command went on training after SIGTERM
    or Ctrl-C had arrived during numpy.random's first import (it is imported lazily, as training starts).
    (Its modules are imported with this one: a handler run inside an import imports nothing.)"""
    now = time.monotonic()
    first = _DEFERRED.setdefault(signum, now)
    if now - first < patience and _inside_import(frame):
        if signum not in _RESENDING:
            _RESENDING.add(signum)

            def resend() -> None:
                _RESENDING.discard(signum)
                os.kill(os.getpid(), signum)

            threading.Timer(retry, resend).start()
        return
    _DEFERRED.pop(signum, None)
    raise stop


def _inside_import(frame) -> bool:
    """True when ``frame`` or one of its callers is the import system's (``importlib._bootstrap``, frozen or not)."""
    while frame is not None:
        if str(frame.f_globals.get("__name__", "")).startswith(("importlib._bootstrap", "_frozen_importlib")):
            return True
        frame = frame.f_back
    return False


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` (tests call this directly); returns the exit code."""
    import typer

    from bgmrec.runs import running_command

    args = sys.argv[1:] if argv is None else list(argv)
    try:
        with running_command(args):  # what records keep as the command's arguments
            code = app(args=args, prog_name="bgmrec", standalone_mode=False)
    except SystemExit as e:  # --help and similar exits
        return int(e.code or 0)
    except typer.TyperException as e:  # usage errors: missing option, unknown command, bad value
        e.show()
        return e.exit_code
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - the CLI turns known errors into one line
        from bgmrec.cli.core import report_error

        return report_error(e)
    # in this mode typer returns an exit code it would raise (130 for Ctrl-C); the commands themselves return None
    if code == INTERRUPTED:
        print("aborted (interrupted)", file=sys.stderr)
    return code if type(code) is int else 0
