"""The Typer application object; command modules register on it."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import typer

app = typer.Typer(
    name="bgmrec",
    help="Background-music recommendation for micro-videos: simulate, train, evaluate, recommend.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},  # every command's and group's too
)


#: what the command being stopped had to say of its stop (what it kept, how to continue), for the one line
#: :func:`bgmrec.cli.main` ends it with; gathered by :func:`said_when_stopped`
STOP_NOTES: list[str] = []


@contextmanager
def said_when_stopped(note: str | None = None) -> Iterator[None]:
    """Within: a stop (Ctrl-C's KeyboardInterrupt; SIGTERM's or SIGHUP's SystemExit) is raised on, its notes kept in
    :data:`STOP_NOTES` for the line :func:`bgmrec.cli.main` prints: the notes the library added to it
    (``BaseException.add_note``: what a stopped training kept, how many points of a grid are done), then ``note``
    (how to continue, in the command's words)."""
    from bgmrec.models.base import STOPS

    try:
        yield
    except STOPS as stop:
        STOP_NOTES.extend([*getattr(stop, "__notes__", ()), *([note] if note else [])])
        raise


def hangup_signal() -> int | None:
    """SIGHUP (a closed terminal or ssh session) when a command may handle it: on a system that has it, from the
    main thread (where signals are set), and not ignored (``nohup`` ignores it: the command must then outlive the
    session, as asked); else None."""
    import signal
    import threading

    hup = getattr(signal, "SIGHUP", None)
    if hup is None or threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(hup) is signal.SIG_IGN:
        return None
    return hup


def make_console(stderr: bool = False, highlight: bool = True):
    """A Rich console for a command's output: as wide as the terminal on one, else 200 columns for tables (piped
    or logged, tables were wrapped at 80 columns or at a COLUMNS setting, cutting ids and figures) and each line
    printed whole (a summary naming a long path was split across lines, and a grep for it missed)."""
    from rich.console import Console

    terminal = Console(stderr=stderr).is_terminal
    return Console(stderr=stderr, highlight=highlight, width=None if terminal else 200, soft_wrap=not terminal)


def flag(default: bool, *names: str, help: str, **more):
    """A true/false option (``--json``, ``--progress/--no-progress``), shown in ``--help`` without the ``<bool>``
    Typer gives every flag, which takes no value; ``more``: the rest of ``typer.Option``'s arguments."""
    return typer.Option(default, *names, help=help, metavar="", **more)


def threads_option():
    """The ``--threads`` option of the commands that train or score with torch (``serve`` has its own)."""
    return typer.Option(None, "--threads", min=1, help="torch's threads (default: one per core); on a machine "
                        "other jobs share, --threads 1 can be several times faster (threads wait for each other)")


def use_threads(threads: int | None) -> None:
    """``--threads``: torch's intra-op threads for this command (None: torch's default, one per core). Waiting
    for a core another process holds, the default threads ran training 6 times slower than one thread did on a
    loaded 2-core machine (a scale audit), and no command but serve could be told otherwise."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


@contextmanager
def options_named(**options: str) -> Iterator[None]:
    """The library's config errors inside (:class:`~bgmrec.data.dataset.FieldError`, naming config fields
    such as ``max_seconds``) worded with this command's options (``max_seconds="--seconds"``)."""
    from bgmrec.data.dataset import FieldError

    try:
        yield
    except FieldError as e:
        raise ValueError(e.worded(options)) from None


@contextmanager
def library_warnings_on_one_line() -> Iterator[None]:
    """Within: a warning of one of bgmrec's own categories (a :class:`Warning` subclass of a bgmrec module, such
    as :class:`bgmrec.models.registry.PluginWarning` or :class:`bgmrec.features.recommend.FeatureMismatchWarning`)
    shown as the commands show theirs, one ``warning: ...`` line on standard error, not as Python's report with
    the library's file, line and source; any other warning as before."""
    with warnings.catch_warnings():  # restores the way warnings are shown on leaving
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if category.__module__.split(".")[0] == "bgmrec":
                from bgmrec.features.recommend import warn_on_stderr

                warn_on_stderr(str(message))
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


@contextmanager
def recorded_warnings(category: type[Warning]) -> Iterator[list[str]]:
    """Within: every warning of ``category`` raised is also appended to the yielded list (for a result's JSON,
    its ``warnings``), and each warning raised is shown as it would have been, once the block ends."""
    said: list[str] = []
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", category)  # each, also when an earlier call in this process raised it
            yield said
    finally:  # shown also when the block failed
        for w in caught:
            if issubclass(w.category, category):
                said.append(str(w.message))
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def print_version(asked: bool) -> None:
    if asked:
        import bgmrec

        print(f"bgmrec {bgmrec.__version__}")
        raise typer.Exit()


@app.callback()
def every_command(ctx: typer.Context, version: bool = flag(
        False, "--version", is_eager=True, callback=print_version, help="print bgmrec's version and exit")) -> None:
    # runs before any command (and before its options are read): the command runs inside the context manager
    ctx.with_resource(library_warnings_on_one_line())
