"""A module of an optional extra that is not installed is named with the extra to install, from Python as from the
command line (an installation audit: a Python caller of embed_clip had ``No module named 'av'`` alone)."""

from __future__ import annotations

import importlib
import sys

import pytest

from bgmrec.cli import main
from bgmrec.extras import MissingExtraError, extra_modules, missing_extra


def test_a_module_of_an_extra_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # "import av" fails, as without the media extra
    with pytest.raises(MissingExtraError) as raised, extra_modules():
        import av  # noqa: F401
    e = raised.value
    assert (e.extra, e.name) == ("media", "av") and isinstance(e, ModuleNotFoundError)
    assert str(e) == f"this needs bgmrec's media extra (pip install 'bgmrec[media]'): {e.reason}"
    assert "av" in e.reason and missing_extra(e) == "media"


def test_other_import_errors_pass_as_they_are(monkeypatch):
    monkeypatch.setitem(sys.modules, "numpy_not_here", None)
    with pytest.raises(ModuleNotFoundError) as raised, extra_modules():
        import numpy_not_here  # noqa: F401  (a module of no extra: a broken install, its own error)
    assert not isinstance(raised.value, MissingExtraError)
    with pytest.raises(ImportError, match="cannot import name") as wrong, extra_modules():
        from json import not_a_name  # noqa: F401  (an extra of another version: not a missing extra)
    assert not isinstance(wrong.value, MissingExtraError)


def test_the_library_s_media_functions_name_the_extra(monkeypatch, tmp_path):
    from bgmrec.features.video import sample_frames

    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"not decoded")
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(MissingExtraError, match=r"^this needs bgmrec's media extra \(pip install 'bgmrec\[media\]'\)"):
        sample_frames(clip)


def test_the_service_and_the_contract_tests_name_their_extras(monkeypatch):
    for module, extra, blocked in (("bgmrec.service", "serve", "fastapi"), ("bgmrec.testing", "dev", "pytest")):
        monkeypatch.delitem(sys.modules, module, raising=False)
        monkeypatch.setitem(sys.modules, blocked, None)
        with pytest.raises(MissingExtraError, match=rf"bgmrec's {extra} extra \(pip install 'bgmrec\[{extra}\]'\)"):
            importlib.import_module(module)
        monkeypatch.undo()  # the blocked module and the one imported come back
    assert importlib.import_module("bgmrec.service") and importlib.import_module("bgmrec.testing")


def test_serve_without_its_extra_says_so_once_in_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    assert main(["serve", "--run", str(tmp_path), "--catalog", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: this command needs the serve extra (pip install 'bgmrec[serve]'): ")
    assert err[-1].count("pip install") == 1 and "uvicorn" in err[-1]


def test_an_installed_extra_that_fails_to_import_says_upgrade_not_install(capsys):
    # an ImportError of another version (or a missing submodule of an installed package) said "not installed"
    # (pip would answer "already satisfied"), or ended in a traceback on the command line
    from bgmrec.cli.core import report_error
    from bgmrec.extras import ExtraMismatchError

    for attempt in ("from fastapi import not_a_name", "import fastapi.not_a_submodule"):
        with pytest.raises(ExtraMismatchError) as raised, extra_modules():
            exec(attempt)
        e = raised.value
        assert e.extra == "serve" and not isinstance(e, ModuleNotFoundError) and missing_extra(e) is None
        assert str(e).startswith("bgmrec's serve extra is installed but does not import (another version, or a "
                                 "broken install; pip install -U 'bgmrec[serve]'): ")
        assert report_error(e) == 2 and capsys.readouterr().err == f"error: {e}\n"


def test_the_extras_errors_survive_pickling():
    import pickle

    from bgmrec.extras import ExtraMismatchError

    for kind in (MissingExtraError, ExtraMismatchError):
        e = pickle.loads(pickle.dumps(kind("media", "No module named 'av'", "av")))
        assert type(e) is kind and (e.extra, e.reason, e.name) == ("media", "No module named 'av'", "av")
        assert str(e) == str(kind("media", "No module named 'av'", "av"))
