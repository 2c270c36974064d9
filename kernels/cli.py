"""`tokenjoule models ...`: the model-shape registry. Torch-free at import."""

from __future__ import annotations

import typer

app = typer.Typer(help="Model shapes: parameters, weight bytes, KV bytes per token, FLOPs per token.")
