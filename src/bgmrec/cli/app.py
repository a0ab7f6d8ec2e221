"""The Typer application object; command modules register on it."""

import typer

app = typer.Typer(
    name="bgmrec",
    help="Background-music recommendation for micro-videos: simulate, train, evaluate, recommend.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
