"""`tokenjoule models ...`: the model-shape registry. Torch-free at import."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from tokenjoule.kernels.spec import PRESETS, ModelSpec

app = typer.Typer(
    help="Model shapes, dense and mixture-of-experts: parameters (total and active per token), weight bytes, KV "
    "bytes per token, FLOPs per token, experts.\n\n"
    "Example:\n    tokenjoule models\n    tokenjoule models show mixtral-8x7b --json",
    invoke_without_command=True,
)


def spec_summary(spec: ModelSpec) -> dict[str, Any]:
    """The figures `models show` prints, as a plain dict (FLOPs per token at zero context).

    `active_param_count` counts only the top-k routed experts (equal to `param_count` for a dense model); `experts`
    is None for a dense model.
    """
    experts = None
    if spec.is_moe:
        experts = {"n_experts": spec.n_experts, "n_experts_per_token": spec.n_experts_per_token,
                   "moe_intermediate_size": spec.moe_intermediate_size,
                   "shared_expert_intermediate_size": spec.shared_expert_intermediate_size,
                   "n_moe_layers": spec.n_moe_layers, "expert_bytes": spec.expert_params * spec.dtype_bytes}
    return {
        "name": spec.name,
        "param_count": spec.param_count,
        "active_param_count": spec.active_param_count,
        "experts": experts,
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
    """List the registry of model shapes (MoE models show active parameters and "k of E" experts).

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
    table.add_column("model", no_wrap=True, min_width=max(len(r["name"]) for r in rows))
    for column in ("params", "active", "experts", "weights", "KV/token", "FLOPs/token"):
        table.add_column(column, justify="right")
    for r in rows:
        experts = f"{r['experts']['n_experts_per_token']} of {r['experts']['n_experts']}" if r["experts"] else "-"
        table.add_row(r["name"], _human(r["param_count"]), _human(r["active_param_count"]), experts,
                      _human(r["weight_bytes"], "B"), _human(r["kv_bytes_per_token"], "B"),
                      _human(r["flops_per_token"], "FLOP"))
    Console().print(table)


@app.command()
def show(
    name: str = typer.Argument(..., help="Registry name, e.g. llama-3.1-8b."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Show one model's parameters (total and active), weight bytes, KV-cache bytes per token, FLOPs per token, experts.

    Example:
        tokenjoule models show llama-3.1-8b
        tokenjoule models show olmoe-1b-7b --json
    """
    summary = spec_summary(ModelSpec.from_name(name))
    if as_json:
        print(json.dumps(summary))
        return
    table = Table(title=summary["name"], show_header=False)
    table.add_column("field")
    table.add_column("value", justify="right")
    table.add_row("parameters", f"{summary['param_count']:,}")
    table.add_row("active parameters per token", f"{summary['active_param_count']:,}")
    if summary["experts"]:
        ex = summary["experts"]
        table.add_row("experts", f"top-{ex['n_experts_per_token']} of {ex['n_experts']} in {ex['n_moe_layers']} layers"
                      + (f", shared width {ex['shared_expert_intermediate_size']}"
                         if ex["shared_expert_intermediate_size"] else ""))
        table.add_row("bytes per expert", f"{ex['expert_bytes']:,}")
    table.add_row("weight bytes", f"{summary['weight_bytes']:,} ({_human(summary['weight_bytes'], 'B')})")
    table.add_row("KV-cache bytes per token", f"{summary['kv_bytes_per_token']:,}")
    table.add_row("FLOPs per token (no context)", f"{summary['flops_per_token']:.4g}")
    table.add_row("FLOPs per token (1k context)", f"{summary['flops_per_token_at_1k_context']:.4g}")
    for key, value in summary["spec"].items():
        if key != "name":
            table.add_row(key, str(value))
    Console().print(table)


def register(root: typer.Typer) -> None:
    """Mount `models` on the root app."""
    root.add_typer(app, name="models")
