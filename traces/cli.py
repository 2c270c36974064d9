"""`tokenjoule trace ...`: inspect, bin, synthesize and convert request traces."""

from __future__ import annotations

import typer

app = typer.Typer(help="Inspect, bin, synthesize and convert request traces.", no_args_is_help=True)
