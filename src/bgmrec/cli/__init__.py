"""The command line. Only this package (and the service) reads argv, files and the environment."""

from __future__ import annotations

import sys

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


def stop_outside_imports(signum: int, frame, stop: BaseException, retry: float = 0.05) -> None:
    """Raise ``stop`` for the signal ``signum`` that interrupted ``frame``, unless ``frame`` is inside an
    import: then send the signal again ``retry`` seconds later. An exception raised while an extension module
    initialises can be swallowed there, and the stop lost: a command went on training after SIGTERM or
    Ctrl-C had arrived during numpy.random's first import (it is imported lazily, as training starts)."""
    import os
    import threading

    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            threading.Timer(retry, os.kill, (os.getpid(), signum)).start()
            return
        frame = frame.f_back
    raise stop


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` (tests call this directly); returns the exit code."""
    import typer

    try:
        code = app(args=sys.argv[1:] if argv is None else argv, prog_name="bgmrec", standalone_mode=False)
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
