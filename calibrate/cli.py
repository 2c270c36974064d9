"""`tokenjoule calibrate` and `tokenjoule profile ...`. torch is imported only inside `calibrate`."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Mount the calibration and profile commands on the root app."""
