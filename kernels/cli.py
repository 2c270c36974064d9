"""`tokenjoule models ...`: the model-shape registry. Torch-free at import."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from tokenjoule.kernels.spec import PRESETS, ModelSpec

app = typer.Typer(
    help="Model shapes: parameters, weight bytes, KV bytes per token, FLOPs per token.\n\n"
    "Example:\n    tokenjoule models\n    tokenjoule models show llama-3.1-8b --json",
    invoke_without_command=True,
)


def spec_summary(spec: ModelSpec) -> dict[str, Any]:
    """The figures `models show` prints, as a plain dict (FLOPs per token at zero context)."""
    return {
        "name": spec.name,
        "param_count": spec.param_count,
        "weight_bytes": spec.weight_bytes,
        "kv_bytes_per_token": spec.kv_bytes_per_token,
        "flops_per_token": spec.flops_per_token(0),
        "flops_per_token_at_1k_context": spec.flops_per_token(1024),
        "dtype": spec.dtype,
        "spec": spec.to_dict(),
    }


def _human(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}{unit}"
    return f"{n:.0f} {unit}".rstrip()


@app.callback()
def models(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """List the registry of model shapes.

    Example:
        tokenjoule models
        tokenjoule models --json
    """
    if ctx.invoked_subcommand is not None:
        return
    rows = [spec_summary(ModelSpec.from_name(name)) for name in sorted(PRESETS)]
    if as_json:
        print(json.dumps({"models": [{k: v for k, v in r.items() if k != "spec"} for r in rows]}))
        return
    table = Table(title="Model registry")
    for column in ("model", "params", "weights", "KV / token", "FLOPs / token"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in rows:
        table.add_row(r["name"], _human(r["param_count"]), _human(r["weight_bytes"], "B"),
                      _human(r["kv_bytes_per_token"], "B"), _human(r["flops_per_token"], "FLOP"))
    Console().print(table)


@app.command()
def show(
    name: str = typer.Argument(..., help="Registry name, e.g. llama-3.1-8b."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Show one model's parameter count, weight bytes, KV-cache bytes per token and FLOPs per token.

    Example:
        tokenjoule models show llama-3.1-8b
        tokenjoule models show qwen2.5-7b --json
    """
    summary = spec_summary(ModelSpec.from_name(name))
    if as_json:
        print(json.dumps(summary))
        return
    table = Table(title=summary["name"], show_header=False)
    table.add_column("field")
    table.add_column("value", justify="right")
    table.add_row("parameters", f"{summary['param_count']:,}")
    table.add_row("weight bytes", f"{summary['weight_bytes']:,} ({_human(summary['weight_bytes'], 'B')})")
    table.add_row("KV-cache bytes per token", f"{summary['kv_bytes_per_token']:,}")
    table.add_row("FLOPs per token (no context)", f"{summary['flops_per_token']:.4g}")
    table.add_row("FLOPs per token (1k context)", f"{summary['flops_per_token_at_1k_context']:.4g}")
    for key, value in summary["spec"].items():
        if key != "name":
            table.add_row(key, str(value))
    Console().print(table)
