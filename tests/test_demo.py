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


def test_demo_refuses_a_project_folder_laid_out_as_its_own(tiny_copy, tmp_path, capsys):
    # data/ and runs/ are a project's own names too: a folder holding a built dataset as data/ and a run trained on
    # it passed the check by names, and the demo replaced the dataset with its world (a review)
    import shutil

    project = tmp_path / "project"
    shutil.copytree(tiny_copy, project / "data")
    manifest = project / "data" / "manifest.json"
    import json

    record = json.loads(manifest.read_text())
    record["provenance"].pop("world")  # as a dataset build-dataset made: no simulated world
    manifest.write_text(json.dumps(record))
    before = _listing(project)
    assert main(["demo", "--scale", "tiny", "--out", str(project), "--models", "popularity"]) == 2
    assert (f"error: --out {project}: {project / 'data'} is not a simulated world (a dataset of yours?), which the "
            "command would replace") in capsys.readouterr().err
    assert _listing(project) == before
    # a run trained elsewhere under runs/, beside no data: refused too
    other = tmp_path / "other"
    assert main(["train", "--data", str(tiny_copy), "--model", "popularity", "--out",
                 str(other / "runs" / "popularity")]) == 0
    capsys.readouterr()
    assert main(["demo", "--scale", "tiny", "--out", str(other), "--models", "popularity"]) == 2
    assert (f"{other / 'runs' / 'popularity'} was trained on {Path(tiny_copy).resolve()}, not on this folder's "
            "world") in " ".join(capsys.readouterr().err.split())
    # a demo's folder moved since: its runs name the old path, its world is the same, and it is reused
    demo = tmp_path / "demo"
    assert main(["demo", "--scale", "tiny", "--out", str(demo), "--models", "popularity"]) == 0
    moved = tmp_path / "moved"
    demo.rename(moved)
    trained = (moved / "runs" / "popularity" / "weights.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["demo", "--scale", "tiny", "--out", str(moved), "--models", "popularity"]) == 0
    assert f"reusing the tiny world in {moved / 'data'}" in capsys.readouterr().out
    assert (moved / "runs" / "popularity" / "weights.safetensors").stat().st_mtime_ns >= trained
