"""The command line. Only this package (and the service) reads argv, files and the environment."""

from __future__ import annotations

import os
import sys
import threading
import time

# numpy's OpenBLAS workers spin for about 2**28 cycles after each call before they sleep: between the track prior's
# small solves of every epoch they held the core a torch thread shares (--threads 1), and `bgmrec demo --scale tiny
# --threads 1` took 30 s of CPU for 19 s of wall time (17 s and 18 s with 2**4 cycles). Read once, when numpy loads
# OpenBLAS (imported below): the number of threads, so every result, is unchanged; a value the user set is kept.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from bgmrec.cli import core, interop, media, serve  # noqa: E402, F401  (modules register their commands)
from bgmrec.cli.app import STOP_NOTES, app, hangup_signal

INTERRUPTED = 130  # exit code of a command stopped by Ctrl-C (128 + SIGINT), as shells report it


def entry() -> int:
    """The ``bgmrec`` console script: :func:`main`, with SIGTERM (a scheduler's or ``timeout``'s stop) and SIGHUP (a
    closed terminal or ssh session) ending the command as Ctrl-C does, through its clean-up (a run or dataset half
    built under a temporary name is removed), with exit code 143 and 129 (:func:`install_stop_handlers`)."""
    install_stop_handlers()
    return main()


class StoppedBySignal(SystemExit):
    """SIGTERM's or SIGHUP's stop: the SystemExit of code 128 + the signal's number that
    :func:`install_stop_handlers` raises, which :func:`main` tells from any other exit."""


def install_stop_handlers() -> None:
    """SIGTERM, and SIGHUP unless ignored (``nohup``; :func:`~bgmrec.cli.app.hangup_signal`), raise
    :class:`StoppedBySignal` (a SystemExit of code 128 + the signal's number), and Ctrl-C (SIGINT, unless
    ignored, as in a shell's background job) KeyboardInterrupt, each outside imports
    (:func:`stop_outside_imports`). A SIGHUP killed a command at once: its temporary folders were left behind."""
    import signal

    def stop(signum, frame) -> None:
        silence_lost_outputs()  # an ssh session's end: its terminal gone before its SIGHUP
        stop_outside_imports(signum, frame, StoppedBySignal(128 + signum))

    signal.signal(signal.SIGTERM, stop)
    hup = hangup_signal()
    if hup is not None:
        signal.signal(hup, stop)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, lambda signum, frame: stop_outside_imports(signum, frame, KeyboardInterrupt()))


def silence_lost_outputs() -> None:
    """Point standard output and error at the null device where they can no longer be written (:func:`lost`: the
    terminal of an ssh session that ended, or a pipe to a ``tee`` that ended with it): the clean-up a stop runs
    then ends as it should, its notes unseen, where its first note or progress line raised that error instead of
    the stop (exit code 1, the best epoch so far not saved). Outputs that work are left alone."""
    for fd in (1, 2):
        if lost(fd):
            try:
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, fd)
                os.close(null)
            except OSError:  # nothing more to do: the stop itself must go on
                pass


def lost(fd: int) -> bool:
    """True when writing to ``fd`` would fail: an empty write fails (a hung-up terminal: EIO), or the descriptor
    reports an error or hang-up (a pipe whose reader has gone, where an empty write still succeeds)."""
    import select

    try:
        os.write(fd, b"")
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP | select.POLLNVAL) for _, events in poller.poll(0))
    except OSError:
        return True


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
    STOP_NOTES.clear()
    try:
        with running_command(args):  # what records keep as the command's arguments
            code = app(args=args, prog_name="bgmrec", standalone_mode=False)
    except StoppedBySignal as e:  # SIGTERM, SIGHUP
        return say_stopped(int(e.code))
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
        return say_stopped(code)
    return code if type(code) is int else 0


def say_stopped(code: int) -> int:
    """Print the line a command stopped by the signal of exit code ``code`` (128 + its number) ends with, on stderr:
    ``stopped (SIGINT)``, then what the command said of its stop (:data:`~bgmrec.cli.app.STOP_NOTES`: what it
    kept, how to continue); return ``code``."""
    import signal

    try:
        name = signal.Signals(code - 128).name
    except ValueError:
        name = f"exit code {code}"
    print(f"stopped ({name})" + "".join(f": {note}" for note in STOP_NOTES[:1])
          + "".join(f"; {note}" for note in STOP_NOTES[1:]), file=sys.stderr)
    return code
