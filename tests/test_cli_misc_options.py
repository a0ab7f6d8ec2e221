"""Options and exits the other CLI tests leave unchecked: the demo's world reuse, an aborted command's exit code,
``import-tt150k --pgc-music``."""

from __future__ import annotations

import io
import json

import numpy as np
import typer
from rich.console import Console

import bgmrec.data.tt150k
from bgmrec.cli import main
from bgmrec.data.dataset import load_dataset
from bgmrec.demo import ensure_world
from tt150k_fixtures import build_reference


def _world_seed(data) -> int:
    return json.loads((data / "manifest.json").read_text())["provenance"]["world"]["seed"]


def test_ensure_world_simulates_anew_for_another_seed_and_reuses_the_same_one(tmp_path):
    # guards against reusing any simulated world in the folder whatever --scale/--seed asks (a stale world reported)
    data = tmp_path / "demo" / "data"
    out = io.StringIO()
    console = Console(file=out, width=200)
    ensure_world("tiny", 0, data, console)
    assert f"simulated the tiny world into {data}" in out.getvalue() and _world_seed(data) == 0
    out.truncate(0)
    out.seek(0)
    ensure_world("tiny", 0, data, console)  # the same world: reused
    assert f"reusing the tiny world in {data}" in out.getvalue()
    assert "simulated" not in out.getvalue() and _world_seed(data) == 0
    out.truncate(0)
    out.seek(0)
    ensure_world("tiny", 1, data, console)  # another seed: simulated again, over the old one
    assert "reusing" not in out.getvalue()
    assert f"simulated the tiny world into {data}" in out.getvalue()
    assert _world_seed(data) == 1


def test_an_aborted_command_exits_1_and_says_so(tmp_path, monkeypatch, capsys):
    # guards against an aborted command (typer.Abort) reporting success, exit code 0
    def abort(*args, **kwargs):
        raise typer.Abort()

    monkeypatch.setattr(bgmrec.data.tt150k, "import_tt150k", abort)
    src = build_reference(tmp_path / "ref")
    assert main(["import-tt150k", str(src), str(tmp_path / "out")]) == 1
    assert "aborted" in capsys.readouterr().err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_import_tt150k_pgc_music_option_reaches_the_importer(tmp_path, capsys):
    # guards against --pgc-music being dropped (the importer always called with "auto")
    src = build_reference(tmp_path / "ref")  # PGC music files equal the UGC ones: auto reads them as shared
    assert main(["import-tt150k", str(src), str(tmp_path / "auto")]) == 0
    auto = load_dataset(tmp_path / "auto")
    assert auto.n_tracks == 150 and auto.provenance["pgc_music"] == "shared"
    assert main(["import-tt150k", str(src), str(tmp_path / "own"), "--pgc-music", "own"]) == 0
    own = load_dataset(tmp_path / "own")  # appended as tracks of their own, marked new
    assert own.n_tracks == 300 and own.provenance["pgc_music"] == "own"
    assert own.track_new[150:].all() and not own.track_new[:150].any()
    # other feature values for the same 150 tracks: auto appends them, shared keeps the one catalogue
    smile = src / "data_pgc" / "opensmile_features_norm.npy"
    np.save(smile, 2.0 * np.load(smile))
    assert main(["import-tt150k", str(src), str(tmp_path / "auto2")]) == 0
    assert load_dataset(tmp_path / "auto2").n_tracks == 300
    assert main(["import-tt150k", str(src), str(tmp_path / "shared"), "--pgc-music", "shared"]) == 0
    shared = load_dataset(tmp_path / "shared")
    assert shared.n_tracks == 150 and shared.provenance["pgc_music"] == "shared"
    # a value that is none of them is refused, nothing written
    capsys.readouterr()
    assert main(["import-tt150k", str(src), str(tmp_path / "bad"), "--pgc-music", "bogus"]) == 2
    assert "error: --pgc-music must be auto, shared or own, not 'bogus'" in capsys.readouterr().err  # the option
    assert not (tmp_path / "bad").exists()
