"""`tokenjoule project`: the energy of a trace of any size, three ways (paper, theoretical, load-aware)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tokenjoule.kernels.spec import ConfigError
from tokenjoule.sim.cli import (
    CarbonOpt,
    CostOpt,
    FormatOpt,
    HostPowerOpt,
    MaxTokensOpt,
    ProfileOpt,
    PueOpt,
    RayOpt,
    carbon_keys,
    check_physical_flags,
    check_policy_flags,
    given_flags,
    parse_carbon,
    resolve_profile,
)
from tokenjoule.traces.options import trace_options

if TYPE_CHECKING:
    from tokenjoule.traces.loaders import LoadOptions


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
    carbon = d["carbon_g_per_kwh"] is not None
    table = Table(title=f"tokenjoule project: {d['source']} ({d['requests']:,} requests)")
    for name in ("estimate", "energy J", "kWh", *(("kg CO2e",) if carbon else ()), "J/request", "requests", "notes"):
        table.add_column(name, justify="left" if name in ("estimate", "notes") else "right")

    def row(label: str, e: dict[str, Any], requests: int, notes: str) -> None:
        co2 = (_fmt(e["kg_co2e"], ".4f"),) if carbon else ()
        table.add_row(label, _fmt(e["energy_total_j"], ",.0f"), _fmt(e["kwh"], ".4f"), *co2,
                      _fmt(e["j_per_request"], ",.2f"), f"{requests:,}", notes)

    if est["paper"]:
        p = est["paper"]
        row("paper (binned, static)", p, p["estimated"],
            f"B<={p['max_batch']}, {p['excluded']:,} excluded, {p['clamped']:,} clamped, {p['unfit']:,} unfit")
    if est["theoretical"]:
        t = est["theoretical"]
        row("theoretical (FLOPs)", t, t["requests"], f"{t['peak_flops'] / 1e12:,.0f} TFLOP/s peak, {t['tdp_w']:,.0f} W")
    if est["load_aware"]:
        la = est["load_aware"]
        row("load-aware (windows)", la, la["requests"],
            f"+- {_fmt(la['err_j'], ',.0f')} J; {la['windows']:,} x {la['window_s']:g} s windows, "
            f"{la['simulations']} sims, util {la['utilization']:.1%}, {la['rejected']:,} rejected")
    return table


@trace_options
def project(
    ctx: typer.Context,
    trace: Annotated[str, typer.Argument(help="Trace file (CSV, Parquet, JSONL) or bundled name: azure-conv-2023, "
                                              "azure-code-2023.", show_default=False)],
    fmt: FormatOpt = None,
    profile: ProfileOpt = None,
    cost: CostOpt = "calibrated",
    model: Annotated[str | None, typer.Option(help="Model name; checked against the profile.",
                                              show_default="the profile's, else llama-3.1-8b")] = None,
    gpu: Annotated[str | None, typer.Option(help="GPU datasheet (H100-SXM, H200-SXM, A100-SXM-80GB).",
                                            show_default="the profile's, else H100-SXM")] = None,
    estimators: Annotated[str, typer.Option(help="Comma list of paper, theoretical, load-aware.")]
    = "paper,theoretical,load-aware",
    input_edges: Annotated[str | None, typer.Option(help="Paper: input bin edges.",
                                                    show_default="the paper's 32,...,8192")] = None,
    output_edges: Annotated[str | None, typer.Option(help="Paper: output bin edges.",
                                                     show_default="the paper's 8,...,512")] = None,
    out_of_range: Annotated[str, typer.Option(help="Paper: lengths above the last edge: exclude or clamp.")]
    = "exclude",
    max_batch: Annotated[int, typer.Option(help="Paper: cap on the batch B of a bin.")] = 256,
    peak_flops: Annotated[float | None, typer.Option(help="Theoretical: peak FLOP/s per GPU.",
                                                     show_default="the GPU datasheet's, dense")] = None,
    tdp_w: Annotated[float | None, typer.Option(help="Theoretical: TDP per GPU, W.",
                                                show_default="the GPU datasheet's")] = None,
    window_s: Annotated[float, typer.Option(help="Load-aware: window length, s.")] = 60.0,
    pad_s: Annotated[float, typer.Option(help="Load-aware: least warm-up/cool-down seconds around a window (grows "
                                              "to cover the time requests hold a batch seat).")] = 10.0,
    policy: Annotated[str, typer.Option(help="Load-aware server: continuous, chunked or static.")] = "continuous",
    replicas: Annotated[int, typer.Option(help="Data-parallel replicas.")] = 1,
    tp: Annotated[int, typer.Option(help="Tensor-parallel GPUs per replica.")] = 1,
    max_num_seqs: Annotated[int, typer.Option(help="Load-aware, continuous, chunked: most sequences per batch.")]
    = 256,
    max_num_batched_tokens: MaxTokensOpt = None,
    pue: PueOpt = 1.0,
    host_power_w: HostPowerOpt = 0.0,
    carbon: CarbonOpt = None,
    seed: Annotated[int, typer.Option(help="Seed (spread or synthesized arrivals; the random router).")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the estimates and inputs as one JSON object.")]
    = False,
    jobs: Annotated[int, typer.Option("--jobs", help="Read a Parquet trace's row groups and run the window "
                                                     "simulations on this many local processes (1: one pass in this "
                                                     "process).")] = 1,
    ray: RayOpt = None,
    *,
    load_options: LoadOptions,
) -> None:
    """Project the serving energy of a trace too large to replay: paper, theoretical and load-aware side by side.

    Streams the trace in record batches (constant memory). `paper` is the paper's binned offline estimate (full
    static batches per length bin), `theoretical` is TDP x FLOPs / peak FLOP/s, `load-aware` follows the arrival
    rate and length mix per time window (short simulations, idle power, error bars). --pue, --host-power-w and
    --carbon add what simulate adds to each: host power over the time its server runs, then PUE, then carbon. A flag
    that only an estimator left out of --estimators reads (e.g. --window-s with --estimators paper) is refused.
    With --jobs N or --ray, a Parquet trace is read in shards of row groups and the window simulations run in
    parallel, with the same estimates (to float round-off); other files, traces that need --arrivals or
    --spread-buckets-s, and Parquet files whose arrivals go back are read in one pass. The sharded pass does not check
    for repeated request ids.

    The trace flags of `tokenjoule trace stats` apply while streaming (`--map`, `--time-unit`, `--zero-output`,
    `--arrivals`, ...). Windows need arrivals in order: an unsorted trace, or one spread with `--spread-buckets-s`,
    is sorted in memory up to 10,000,000 rows and refused beyond; the output notes out-of-order arrivals and
    repeated request ids (`trace_notes` in --json).

    Example:
        tokenjoule project azure-conv-2023 --profile my.json
        tokenjoule project week.parquet --profile my.json --replicas 8 --json
        tokenjoule project trace.csv --profile my.json --out-of-range clamp --max-batch 128
        tokenjoule project azure-code-2023 --pue 1.2 --host-power-w 300 --carbon DE
        tokenjoule project lengths.csv --arrivals poisson --rate 20
        tokenjoule project week.parquet --profile my.json --jobs 4
    """
    from tokenjoule.console import progress
    from tokenjoule.sim.parallel import Backend, open_executor
    from tokenjoule.sim.project.load_aware import LoadAwareConfig
    from tokenjoule.sim.project.projection import ProjectConfig
    from tokenjoule.sim.project.projection import project as run_projection
    from tokenjoule.sim.project.shards import project_sharded
    from tokenjoule.sim.report import dumps
    from tokenjoule.sim.run import SimConfig
    from tokenjoule.traces.binning import BinSpec

    check_physical_flags({"--pue": (pue, ">= 1"), "--host-power-w": (host_power_w, ">= 0"),
                          "--replicas": (replicas, ">= 1"), "--tp": (tp, ">= 1"),
                          "--max-num-seqs": (max_num_seqs, ">= 1"),
                          "--max-batched-tokens": (max_num_batched_tokens, ">= 1"), "--max-batch": (max_batch, ">= 1")})
    check_policy_flags(policy, {}, given_flags(ctx, {"--max-num-seqs": max_num_seqs,
                                                     "--max-batched-tokens": max_num_batched_tokens}))
    grid = parse_carbon(carbon)
    if grid is not None and grid.hourly is not None:
        raise ConfigError(f"--carbon {carbon}: project prices one constant intensity (a number or a region); the "
                          "estimates have no hour-by-hour timeline for an hourly file (simulate has one)")
    bins = BinSpec(out_of_range=out_of_range)
    ins, outs = _edges(input_edges, "--input-edges"), _edges(output_edges, "--output-edges")
    if ins or outs:
        bins = BinSpec(ins or bins.input_edges, outs or bins.output_edges, out_of_range)
    sim = SimConfig(policy=policy, replicas=replicas, tp=tp, cost=cost, gpu=gpu, model=model,
                    max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens, pue=pue,
                    host_power_w=host_power_w, carbon_g_per_kwh=grid.g_per_kwh if grid else None, seed=seed)
    config = ProjectConfig(bins, max_batch, peak_flops, tdp_w, LoadAwareConfig(window_s, pad_s), sim,
                           tuple(e.strip() for e in estimators.split(",") if e.strip()))
    check_estimator_flags(config.estimators, {
        "paper": given_flags(ctx, {"--input-edges": input_edges, "--output-edges": output_edges,
                                   "--out-of-range": out_of_range, "--max-batch": max_batch}),
        "theoretical": given_flags(ctx, {"--peak-flops": peak_flops, "--tdp-w": tdp_w}),
        "load-aware": given_flags(ctx, {"--window-s": window_s, "--pad-s": pad_s, "--policy": policy,
                                        "--max-num-seqs": max_num_seqs,
                                        "--max-batched-tokens": max_num_batched_tokens})})
    backend = Backend(jobs, ray)
    prof = resolve_profile(profile, cost, tp)
    if backend.parallel:
        with open_executor(backend) as executor, progress("projecting", not as_json) as tick:
            result = project_sharded(trace, prof, executor, config, fmt=fmt, options=load_options, progress=tick)
    else:
        with progress("projecting", not as_json) as tick:
            result = run_projection(trace, prof, config, fmt=fmt, options=load_options, progress=tick)
    data = {**result.to_dict(), **carbon_keys(grid)}
    if as_json:
        typer.echo(json.dumps(json.loads(dumps(data))))
        return
    console = Console()
    console.print(_table(data))
    console.print(f"cost model: {data['cost_model']}; rows read {data['rows_read']:,}, dropped "
                  f"{data['rows_dropped']:,} (0 output tokens)")
    if pue != 1.0 or host_power_w or grid is not None:
        console.print(f"facility: PUE {pue:g}, host {host_power_w:g} W per replica"
                      + (f"; carbon {grid.g_per_kwh:g} gCO2e/kWh ({grid.source})" if grid else ""),
                      markup=False, highlight=False)
    for note in data["trace_notes"]:
        console.print(f"[yellow]note:[/] {escape(note['message'])}")


def check_estimator_flags(chosen: tuple[str, ...], read_by: dict[str, dict[str, object]]) -> None:
    """Refuse a flag only an estimator left out of `--estimators` reads (it would change nothing), naming it.

    Args:
        chosen: the estimators this run computes.
        read_by: estimator -> its own flags, each given value (None where the flag was left at its default).
    """
    for estimator, flags in read_by.items():
        given = [flag for flag, value in flags.items() if value is not None]
        if given and estimator not in chosen:
            raise ConfigError(f"{given[0]}: only the {estimator} estimator reads it (this run is --estimators "
                              f"{','.join(chosen)}); drop it or add {estimator}")


def register(app: typer.Typer) -> None:
    """Mount `tokenjoule project` on the root app."""
    app.command("project")(project)
