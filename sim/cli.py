"""`tokenjoule simulate`, `compare` and `project`."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Mount the simulation commands on the root app."""
