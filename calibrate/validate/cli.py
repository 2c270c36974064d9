"""`tokenjoule validate ...` and `tokenjoule paper`: measure replays on a GPU, and report the simulator's accuracy.

Commands that need a GPU import torch inside themselves, so listing or reporting works on any machine.
"""

from __future__ import annotations

import typer

app = typer.Typer(help="Validate the simulator against measurement: replays on a GPU, and the accuracy report.",
                  no_args_is_help=True)


def register(root: typer.Typer) -> None:
    """Mount `validate` (and, once written, `paper`) on the root app."""
    root.add_typer(app, name="validate")
