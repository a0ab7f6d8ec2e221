"""`bgmrec demo`: its --out is a new or empty folder, or a demo's own (reused); any other folder is refused."""

from __future__ import annotations

from pathlib import Path

from bgmrec.cli import main


def _listing(folder: Path) -> list[tuple[str, int]]:
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_demo_refuses_a_folder_of_another_kind_and_reuses_its_own(tiny_copy, tmp_path, capsys):
    # the demo wrote its world, runs and report into any folder: a dataset's (which a later simulate there replaced
    # whole, the demo's output with it), a trained run's, one of unrelated files
    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_copy), "--model", "popularity", "--out", str(run)]) == 0
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    a_file = tmp_path / "a file"
    a_file.write_text("mine")
    for folder, said in ((tiny_copy, "is not a folder of bgmrec demo (it is a dataset)"),
                         (run, "is not a folder of bgmrec demo (it is a model run (written by train))"),
                         (notes, "is not a folder of bgmrec demo (it holds todo.txt)"),
                         (a_file, "exists and is not a folder")):
        before = _listing(folder) if folder.is_dir() else a_file.read_text()
        capsys.readouterr()
        assert main(["demo", "--scale", "tiny", "--out", str(folder), "--models", "popularity"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"error: --out {folder}: ") and said in err, err
        assert (_listing(folder) if folder.is_dir() else a_file.read_text()) == before  # nothing written there
    # a demo's own folder, as `make demo` finds runs/demo after an earlier demo, is reused; so is one holding only
    # what a killed write leaves
    out = tmp_path / "demo"
    out.mkdir()
    (out / ".report.md.tmp-1-0a1b2c3d").write_text("")
    assert main(["demo", "--scale", "tiny", "--out", str(out), "--models", "popularity"]) == 0
    assert {"data", "runs", "report.md", "results.json"} <= {p.name for p in out.iterdir()}
    capsys.readouterr()
    assert main(["demo", "--scale", "tiny", "--out", str(out), "--models", "popularity,random"]) == 0
    assert f"reusing the tiny world in {out / 'data'}" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["popularity", "random"]
