"""`tokenjoule project`: the energy of a trace of any size, three ways (paper, theoretical, load-aware)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from tokenjoule.console import progress
from tokenjoule.kernels.spec import ConfigError
from tokenjoule.sim.cli import DEFAULT_PROFILE, resolve_profile


def _edges(text: str | None, name: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as err:
        raise ConfigError(f"{name}: {text!r} must be comma-separated integers, e.g. 32,128,512") from err


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _table(d: dict[str, Any]) -> Table:
    est = d["estimates"]
    table = Table(title=f"tokenjoule project: {d['source']} ({d['requests']:,} requests)")
    for name in ("estimate", "energy J", "kWh", "J/request", "requests", "notes"):
        table.add_column(name, justify="left" if name in ("estimate", "notes") else "right")
    if est["paper"]:
        p = est["paper"]
        notes = f"B<={p['max_batch']}, {p['excluded']:,} excluded, {p['clamped']:,} clamped, {p['unfit']:,} unfit"
        table.add_row("paper (binned, static)", _fmt(p["energy_j"], ",.0f"), _fmt(p["energy_j"] / 3.6e6, ".4f"),
                      _fmt(p["j_per_request"], ",.2f"), f"{p['estimated']:,}", notes)
    if est["theoretical"]:
        t = est["theoretical"]
        notes = f"{t['peak_flops'] / 1e12:,.0f} TFLOP/s peak, {t['tdp_w']:,.0f} W"
        table.add_row("theoretical (FLOPs)", _fmt(t["energy_j"], ",.0f"), _fmt(t["energy_j"] / 3.6e6, ".4f"),
                      _fmt(t["j_per_request"], ",.2f"), f"{t['requests']:,}", notes)
    if est["load_aware"]:
        la = est["load_aware"]
        notes = (f"+- {_fmt(la['err_j'], ',.0f')} J; {la['windows']:,} x {la['window_s']:g} s windows, "
                 f"{la['simulations']} sims, util {la['utilization']:.1%}, {la['rejected']:,} rejected")
        table.add_row("load-aware (windows)", _fmt(la["energy_j"], ",.0f"), _fmt(la["energy_j"] / 3.6e6, ".4f"),
                      _fmt(la["j_per_request"], ",.2f"), f"{la['requests']:,}", notes)
    return table


def project(
    trace: Annotated[str, typer.Argument(help="Trace file (CSV, Parquet, JSONL) or bundled name: azure-conv-2023, "
                                              "azure-code-2023.", show_default=False)],
    fmt: Annotated[str | None, typer.Option("--format", "-f", help="Trace format (default: detect).")] = None,
    profile: Annotated[str | None, typer.Option(help=f"Profile file or shipped name [default: {DEFAULT_PROFILE}].",
                                                show_default=False)] = None,
    cost: Annotated[str, typer.Option(help="Cost model: calibrated, roofline or roofline-memory.")] = "calibrated",
    model: Annotated[str | None, typer.Option(help="Model name; checked against the profile.")] = None,
    gpu: Annotated[str | None, typer.Option(help="GPU datasheet (H100-SXM, H200-SXM, A100-SXM-80GB).")] = None,
    estimators: Annotated[str, typer.Option(help="Comma list of paper, theoretical, load-aware.")]
    = "paper,theoretical,load-aware",
    input_edges: Annotated[str | None, typer.Option(help="Paper: input bin edges [default: 32,...,8192].")] = None,
    output_edges: Annotated[str | None, typer.Option(help="Paper: output bin edges [default: 8,...,512].")] = None,
    out_of_range: Annotated[str, typer.Option(help="Paper: lengths above the last edge: exclude or clamp.")]
    = "exclude",
    max_batch: Annotated[int, typer.Option(help="Paper: cap on the batch B of a bin.")] = 256,
    peak_flops: Annotated[float | None, typer.Option(help="Theoretical: peak FLOP/s per GPU [default: datasheet, "
                                                          "dense].")] = None,
    tdp_w: Annotated[float | None, typer.Option(help="Theoretical: TDP per GPU, W [default: datasheet].")] = None,
    window_s: Annotated[float, typer.Option(help="Load-aware: window length, s.")] = 60.0,
    pad_s: Annotated[float, typer.Option(help="Load-aware: least warm-up/cool-down seconds around a window (grows "
                                              "to cover the time requests hold a batch seat).")] = 10.0,
    policy: Annotated[str, typer.Option(help="Load-aware server: continuous, chunked or static.")] = "continuous",
    replicas: Annotated[int, typer.Option(help="Data-parallel replicas.")] = 1,
    tp: Annotated[int, typer.Option(help="Tensor-parallel GPUs per replica.")] = 1,
    max_num_seqs: Annotated[int, typer.Option(help="Most sequences per batch.")] = 256,
    max_num_batched_tokens: Annotated[int | None, typer.Option(
        "--max-batched-tokens", help="Tokens per iteration (default 16384 continuous, 2048 chunked).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the estimates and inputs as one JSON object.")]
    = False,
) -> None:
    """Project the serving energy of a trace too large to replay: paper, theoretical and load-aware side by side.

    Streams the trace in record batches (constant memory). `paper` is the paper's binned offline estimate (full
    static batches per length bin), `theoretical` is TDP x FLOPs / peak FLOP/s, `load-aware` follows the arrival
    rate and length mix per time window (short simulations, idle power, error bars).

    Example:
        tokenjoule project azure-conv-2023 --profile my.json
        tokenjoule project week.parquet --profile my.json --replicas 8 --json
        tokenjoule project trace.csv --profile my.json --out-of-range clamp --max-batch 128
    """
    from tokenjoule.sim.project.load_aware import LoadAwareConfig
    from tokenjoule.sim.project.projection import ProjectConfig
    from tokenjoule.sim.project.projection import project as run_projection
    from tokenjoule.sim.report import dumps
    from tokenjoule.sim.run import SimConfig
    from tokenjoule.traces.binning import BinSpec

    bins = BinSpec(out_of_range=out_of_range)
    ins, outs = _edges(input_edges, "--input-edges"), _edges(output_edges, "--output-edges")
    if ins or outs:
        bins = BinSpec(ins or bins.input_edges, outs or bins.output_edges, out_of_range)
    sim = SimConfig(policy=policy, replicas=replicas, tp=tp, cost=cost, gpu=gpu, model=model,
                    max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens)
    config = ProjectConfig(bins, max_batch, peak_flops, tdp_w, LoadAwareConfig(window_s, pad_s), sim,
                           tuple(e.strip() for e in estimators.split(",") if e.strip()))
    prof = resolve_profile(profile, cost, tp)
    with progress("projecting", not as_json) as tick:
        result = run_projection(trace, prof, config, fmt=fmt, progress=tick)
    data = result.to_dict()
    if as_json:
        typer.echo(json.dumps(json.loads(dumps(data))))
        return
    console = Console()
    console.print(_table(data))
    console.print(f"cost model: {data['cost_model']}; rows read {data['rows_read']:,}, dropped "
                  f"{data['rows_dropped']:,} (0 output tokens)")


def register(app: typer.Typer) -> None:
    """Mount `tokenjoule project` on the root app."""
    app.command("project")(project)
