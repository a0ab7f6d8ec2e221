"""CLI commands for the TT-150k / DecCM reference layout: ``import-tt150k`` and ``export-tt150k``.

The work is done by :mod:`bgmrec.data.tt150k` (imported lazily); these commands parse arguments and
print the report.
"""

from __future__ import annotations

from pathlib import Path

import typer

from bgmrec.cli.app import app, make_console, options_named


def print_report(title: str, report) -> None:
    """Print an :class:`bgmrec.data.tt150k.InteropReport` as Rich tables; its notes that are warnings on stderr, as
    every command's."""
    from rich.table import Table

    from bgmrec.features.recommend import warn_on_stderr

    console = make_console()
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("what")
    table.add_column("value", justify="right")
    for key, value in report.counts.items():
        table.add_row(key.replace("_", " "), f"{value:,}")
    for key, value in report.dims.items():
        table.add_row(f"dim {key}", str(value))
    console.print(table)
    for item in report.missing:
        console.print(f"[yellow]missing (optional):[/yellow] {item}")
    for note in report.notes:
        if note.startswith("warning: "):
            warn_on_stderr(note.removeprefix("warning: "))
        else:
            console.print(f"- {note}", markup=False)


@app.command("import-tt150k")
def import_tt150k_cmd(
    src: Path = typer.Argument(..., help="DecCM-layout folder: data_matching/, optional data_pgc/."),
    out: Path = typer.Argument(..., help="Native dataset folder to write (replaced atomically)."),
    pgc_music: str = typer.Option("auto", help="PGC music: 'auto' (shared catalogue when its feature files "
                                               "equal the UGC ones), 'shared' or 'own' (appended tracks)."),
) -> None:
    """Import TT-150k features in the layout of the public DecCM code as a native bgmrec dataset."""
    from bgmrec.data.dataset import writing_lock
    from bgmrec.data.tt150k import import_tt150k

    with writing_lock(out, ""), options_named(pgc_music="--pgc-music"):
        report = import_tt150k(src, out, pgc_music=pgc_music)
    print_report(f"imported {src} -> {out}", report)


@app.command("export-tt150k")
def export_tt150k_cmd(
    data_dir: Path = typer.Argument(..., help="A native dataset folder (e.g. a simulated world)."),
    out: Path = typer.Argument(..., help="Folder to write in the DecCM layout (replaced atomically)."),
    seed: int = typer.Option(0, help="Seed for negatives of splits without 100 frozen ones."),
) -> None:
    """Write a native dataset in the layout of the public DecCM code (data_matching/, data_pgc/)."""
    from bgmrec.data.dataset import writing_lock
    from bgmrec.data.tt150k import export_tt150k

    with writing_lock(out, ""):
        report = export_tt150k(data_dir, out, seed=seed)
    print_report(f"exported {data_dir} -> {out}", report)
