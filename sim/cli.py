"""`tokenjoule simulate` and `tokenjoule compare`: what-if serving energy and latency from a trace and a profile.

numpy, pyarrow and simpy are imported inside the commands, so that their help (and the root command) starts fast.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tokenjoule.kernels.spec import ConfigError
from tokenjoule.traces.options import trace_flags_set, trace_options

if TYPE_CHECKING:
    from tokenjoule.sim.accounting import CarbonHours
    from tokenjoule.traces.checks import TraceNote
    from tokenjoule.traces.loaders import LoadOptions
    from tokenjoule.traces.schema import Trace

DEFAULT_TRACE = "azure-conv-2023"
DEFAULT_PROFILE = "h100-llama-3.1-8b-tokenjoule-cudagraph"

TraceOpt = Annotated[str | None, typer.Option("--trace", help="Trace file (CSV, Parquet, JSONL) or bundled name.",
                                              show_default=DEFAULT_TRACE)]
FormatOpt = Annotated[str | None, typer.Option("--format", "-f", help="Trace format.",
                                               show_default="detect from the content")]
SynthOpt = Annotated[str | None, typer.Option(
    "--synthetic", help="Synthetic trace instead of a file: 'n=256,input=1024,output=128' (all at t=0), add "
                        "'rate=5' for Poisson arrivals or 'rate=5,process=gamma,cv=2' for bursty ones.",
    show_default="none: read --trace")]
ProfileOpt = Annotated[str | None, typer.Option("--profile", help="Profile file or shipped name.",
                                                show_default=DEFAULT_PROFILE)]
ModelOpt = Annotated[str | None, typer.Option("--model", help="Model name; checked against the profile "
                                                              "(roofline: which model).",
                                              show_default="the profile's, else llama-3.1-8b")]
GpuOpt = Annotated[str | None, typer.Option("--gpu", help="GPU datasheet (H100-SXM, H200-SXM, A100-SXM-80GB); "
                                                          "checked against the profile (roofline: which GPU).",
                                            show_default="the profile's, else H100-SXM")]
CostOpt = Annotated[str, typer.Option("--cost", help="Cost model: calibrated, roofline or roofline-memory.")]
MaxTokensOpt = Annotated[int | None, typer.Option("--max-batched-tokens", help="Continuous, chunked: tokens per "
                                                                              "iteration.",
                                                  show_default="16384 continuous, 2048 chunked")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Write into an --out folder that holds other files too "
                                                        "(they are left alone; only tokenjoule's files are replaced).")]
PueOpt = Annotated[float, typer.Option(help="Facility power usage effectiveness.")]
HostPowerOpt = Annotated[float, typer.Option(help="Host power per replica, W.")]
CarbonOpt = Annotated[str | None, typer.Option(
    help="Grid intensity: gCO2e/kWh, an hourly CSV file, or a region from CodeCarbon's data: a country (DE, FRA, "
         "Germany) or gcp:REGION (needs pip install 'tokenjoule[carbon]').", show_default="none: no kg CO2e")]
JobsOpt = Annotated[int, typer.Option("--jobs", help="Run on this many local worker processes (1: one after another "
                                                     "in this process).")]
RayOpt = Annotated[str | None, typer.Option("--ray", help="Run as Ray tasks: 'auto' (this machine's Ray cluster, else "
                                                          "a new local instance) or a cluster address (needs pip "
                                                          "install 'tokenjoule[ray]').",
                                            show_default="none: no Ray")]


def _parse_synthetic(text: str, seed: int):
    import numpy as np

    from tokenjoule.traces.synth import SynthSpec, check_synth, synthesize

    fields: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise ConfigError(f"--synthetic: {part!r} is not key=value")
        fields[key.strip()] = value.strip()
    if not fields:
        raise ConfigError(f"--synthetic {text!r}: empty; give key=value pairs, e.g. n=256,input=1024,output=128")
    names = {"n": "n_requests", "input": "input_tokens", "output": "output_tokens", "rate": "rate_per_s",
             "process": "process", "cv": "cv"}
    unknown = sorted(set(fields) - set(names))
    if unknown:
        raise ConfigError(f"--synthetic: unknown key {unknown[0]!r} (keys: {', '.join(names)})")
    kwargs: dict[str, Any] = {}
    for key, value in fields.items():
        try:
            kwargs[names[key]] = value if key == "process" else (float(value) if key in ("rate", "cv") else int(value))
        except ValueError as err:
            raise ConfigError(f"--synthetic: {key}={value!r} is not a number") from err
    kwargs.setdefault("n_requests", 256)
    kwargs.setdefault("process", "poisson" if "rate_per_s" in kwargs else "zero")
    defaults = {f.name: f.default for f in dataclasses.fields(SynthSpec) if f.default is not dataclasses.MISSING}
    check_synth({**defaults, **kwargs}, {field: f"--synthetic {key}=" for key, field in names.items()})
    _refuse_unread_synthetic(fields, kwargs["process"])
    return synthesize(SynthSpec(**kwargs), np.random.default_rng(seed))


def _refuse_unread_synthetic(fields: dict[str, str], process: str) -> None:
    """Refuse a `--synthetic` key its arrival process would not read, and a rate left to a default, naming it."""
    if process == "zero" and "rate" in fields:
        raise ConfigError(f"--synthetic rate={fields['rate']}: process=zero puts every request at t=0; drop rate, or "
                          "give process=poisson or gamma")
    if process != "zero" and "rate" not in fields:
        raise ConfigError(f"--synthetic process={process}: needs rate=R (requests/s), e.g. rate=5,process={process}")
    if "cv" in fields and process != "gamma":
        raise ConfigError(f"--synthetic cv={fields['cv']}: only process=gamma reads it; add process=gamma or drop cv")


def _load_trace(trace: str | None, fmt: str | None, synthetic: str | None, seed: int,
                options: LoadOptions | None = None) -> tuple[Trace, tuple[TraceNote, ...]]:
    """The trace to simulate, and the notes loading it left (out-of-order arrivals, repeated ids; none if synthetic)."""
    if synthetic is not None:
        if trace:
            raise ConfigError("give --trace or --synthetic, not both")
        given = ["--format"] if fmt is not None else []
        given += trace_flags_set(options) if options is not None else []
        if given:
            raise ConfigError(f"{given[0]}: reads a trace file, and --synthetic builds its own trace; drop {given[0]}")
        return _parse_synthetic(synthetic, seed), ()
    from tokenjoule.traces.loaders import read_trace

    loaded, report = read_trace(trace or DEFAULT_TRACE, fmt, options=options)
    return loaded, report.notes


def resolve_profile(name: str | None, cost: str, tp: int = 1):
    """The profile for `tp` GPUs per replica (None for roofline without one).

    A measured TP profile of the same setup when one exists, else the tp=1 profile; `tp_profiles.choose_profile`
    also says which. A missing default names itself and the alternatives.
    """
    from tokenjoule.sim.tp_profiles import choose_profile

    return choose_profile(name, cost, tp, DEFAULT_PROFILE).profile


def _parse_window(text: str | None) -> tuple[float, float] | None:
    if not text:
        return None
    start, sep, end = text.partition(":")
    try:
        return float(start or 0), float(end)
    except ValueError as err:
        raise ConfigError(f"--window: {text!r} must be START:END in seconds, e.g. 0:600") from err


@dataclass(frozen=True, slots=True)
class GridCarbon:
    """What `--carbon` gave: a constant intensity or an hourly series, and where it came from.

    Attributes:
        g_per_kwh: constant grid intensity, gCO2e/kWh (None for an hourly series).
        hourly: the hourly series read from a CSV file (None for a constant).
        source: where the intensity came from, for outputs: the flag's number, the file, or the dataset entry.
        region: the dataset's key for a region name (None for a number or a file).
    """

    g_per_kwh: float | None
    hourly: CarbonHours | None
    source: str
    region: str | None = None


def carbon_keys(carbon: GridCarbon | None) -> dict[str, Any]:
    """`carbon_g_per_kwh` and `carbon_source`: the keys `--json` outputs record the intensity under (null without)."""
    if carbon is None:
        return {"carbon_g_per_kwh": None, "carbon_source": None}
    return {"carbon_g_per_kwh": carbon.g_per_kwh, "carbon_source": carbon.source}


def parse_carbon(text: str | None) -> GridCarbon | None:
    """`--carbon`: a number (gCO2e/kWh), an hourly CSV file, or a region name looked up in CodeCarbon's data.

    A value with a path separator or a `.csv` suffix, or naming an existing file, is a file; other words are regions.
    """
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is not None:
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"--carbon {text}: a grid intensity must be a finite number of gCO2e/kWh >= 0")
        return GridCarbon(value, None, f"--carbon {text}")
    if "/" in text or os.sep in text or text.lower().endswith(".csv") or Path(text).exists():
        from tokenjoule.sim.accounting import load_carbon_csv

        hours = load_carbon_csv(text)
        return GridCarbon(None, hours, f"{text} (hourly, {len(hours.values)} rows)")
    from tokenjoule.sim.grid_intensity import region_intensity

    region = region_intensity(text)
    return GridCarbon(region.g_per_kwh, None, region.source, region.region)


def _carbon_fields(carbon: GridCarbon | None, trace: Any, window: tuple[float, float] | None) -> dict[str, Any]:
    """SimConfig's carbon fields; an hourly series is aligned to the trace's clock (see `CarbonHours.aligned`)."""
    if carbon is None:
        return {}
    if carbon.hourly is None:
        return {"carbon_g_per_kwh": carbon.g_per_kwh}
    start = trace.start_unix_s
    if start is not None and window is not None:
        start += window[0]
    return {"carbon_hourly": carbon.hourly.aligned(start)}


def check_physical_flags(flags: dict[str, tuple[float | None, str]]) -> None:
    """Refuse a flag outside its physical range with one line naming it.

    Args:
        flags: flag -> (value, or None when unset; its rule, as `in_range` reads it: "> 0", ">= 0", ">= 1", ...).
    """
    from tokenjoule.sim.run import in_range

    for flag, (value, rule) in flags.items():
        if value is not None and not in_range(value, rule):
            raise ConfigError(f"{flag} {value:g}: must be {rule}")


def given_flags(ctx: typer.Context, flags: dict[str, Any]) -> dict[str, Any]:
    """Each flag's value where the command line gave it, None where it was left at its default.

    A policy check needs this: `--max-num-seqs 256` given under `--policy static` is a mistake to report, the
    default 256 is not.

    Args:
        ctx: the command's click context.
        flags: flag (e.g. "--max-num-seqs") -> its parsed value.
    """
    def param_name(flag: str) -> str:
        return next(p.name for p in ctx.command.params if flag in getattr(p, "opts", ()))

    return {flag: None if ctx.get_parameter_source(param_name(flag)).name == "DEFAULT" else value
            for flag, value in flags.items()}


def check_policy_flags(policy: str, static_only: dict[str, Any], not_static: dict[str, Any]) -> None:
    """Refuse a flag the chosen policy would ignore (given flags are not None), naming it.

    Args:
        policy: the --policy value.
        static_only: flags only static batching reads.
        not_static: flags static batching ignores.
    """
    given = [f for f, v in (not_static if policy == "static" else static_only).items() if v is not None]
    if given and policy in ("static", "continuous", "chunked"):
        readers = "continuous and chunked" if policy == "static" else "static"
        verb = "read" if policy == "static" else "reads"
        raise ConfigError(f"{given[0]}: only --policy {readers} {verb} it (this run is --policy {policy}); drop it")


def _band(band: list[float] | None, spec: str) -> str:
    """' (p10-p90 LO-HI, launch-bound host band)' after a figure a profile's host band spreads, else ''."""
    return "" if band is None else f" (p10-p90 {band[0]:{spec}}-{band[1]:{spec}}, launch-bound host band)"


def _summary_table(summary: dict[str, Any], title: str, tp_modeled: bool) -> Table:
    def fmt(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    s = summary
    table = Table(title=title, show_header=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("cost model", f"{s['cost_model']}{' (modeled TP)' if tp_modeled else ''}"),
        ("profile", s["profile"] or "-"),
        ("policy / replicas x tp / router", f"{s['policy']} / {s['replicas']} x {s['tp']} / {s['router']}"),
        ("requests finished / rejected", f"{s['finished']:,} / {s['rejected']:,}"),
        *([("  rejected by reason", ", ".join(f"{reason} {n:,}" for reason, n in s["rejected_by_reason"].items()))]
          if s["rejected"] else []),
        ("duration", f"{fmt(s['duration_s'], ',.1f')} s{_band(s.get('duration_band_s'), ',.1f')}"),
        ("energy", f"{fmt(s['kwh'], '.4f')} kWh ({fmt(s['energy_total_j'], ',.0f')} J)"
                   f"{_band(s.get('energy_band_j'), ',.0f')}"),
        ("  GPU busy / idle", f"{fmt(s['gpu_busy_j'], ',.0f')} / {fmt(s['gpu_idle_j'], ',.0f')} J"),
        ("J per request", fmt(s["j_per_request"], ",.2f")),
        ("J per token / per output token", f"{fmt(s['j_per_token'], '.4f')} / {fmt(s['j_per_output_token'], '.4f')}"),
        ("kg CO2e", fmt(s["kg_co2e"], ".4f")),
        ("GPU-hours / utilization", f"{fmt(s['gpu_hours'], '.3f')} / {fmt(s['utilization'], '.1%')}"),
        ("TTFT p50 / p90 / p99", f"{fmt(s['ttft_p50_s'], '.3f')} / {fmt(s['ttft_p90_s'], '.3f')} / "
                                 f"{fmt(s['ttft_p99_s'], '.3f')} s"),
        ("TPOT p50 / p90 / p99", f"{fmt(s['tpot_p50_s'], '.4f')} / {fmt(s['tpot_p90_s'], '.4f')} / "
                                 f"{fmt(s['tpot_p99_s'], '.4f')} s"),
        ("E2E p50 / p90 / p99", f"{fmt(s['e2e_p50_s'], '.2f')} / {fmt(s['e2e_p90_s'], '.2f')} / "
                                f"{fmt(s['e2e_p99_s'], '.2f')} s"),
        ("preemptions", f"{s['preemptions']:,}"),
        ("SLO attainment", fmt(s["slo_attainment"], ".1%")),
        *([("warnings", ", ".join(n["kind"] for n in s["notes"]) + " (below)")] if s["notes"] else []),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


@trace_options
def simulate(
    ctx: typer.Context,
    trace: TraceOpt = None,
    fmt: FormatOpt = None,
    synthetic: SynthOpt = None,
    profile: ProfileOpt = None,
    model: ModelOpt = None,
    gpu: GpuOpt = None,
    cost: CostOpt = "calibrated",
    policy: Annotated[str, typer.Option(help="Batching: static, continuous or chunked.")] = "continuous",
    replicas: Annotated[int, typer.Option(help="Data-parallel replicas.")] = 1,
    tp: Annotated[int, typer.Option(help="Tensor-parallel GPUs per replica.")] = 1,
    router: Annotated[str, typer.Option(help="round-robin, least-outstanding or random.")] = "round-robin",
    rate_scale: Annotated[float, typer.Option(help="Multiply the arrival rate.")] = 1.0,
    window: Annotated[str | None, typer.Option(help="Keep arrivals in START:END seconds.",
                                               show_default="the whole trace")] = None,
    max_num_seqs: Annotated[int, typer.Option(help="Continuous, chunked: most sequences per batch.")] = 256,
    max_num_batched_tokens: MaxTokensOpt = None,
    max_batch: Annotated[int, typer.Option(help="Static: batch size.")] = 8,
    block_size: Annotated[int, typer.Option("--kv-block-tokens", help="Tokens per paged KV block.")] = 16,
    batch_timeout_s: Annotated[float, typer.Option(help="Static: wait this long for a full batch, s.")] = 0.0,
    slo_ttft_s: Annotated[float | None, typer.Option(help="TTFT target, s.", show_default="no target")] = None,
    slo_tpot_s: Annotated[float | None, typer.Option(help="TPOT target, s.", show_default="no target")] = None,
    pue: PueOpt = 1.0,
    host_power_w: HostPowerOpt = 0.0,
    idle_power_w: Annotated[float | None, typer.Option(help="Replica idle power override, W.",
                                                       show_default="the profile's; 0 for roofline")] = None,
    carbon: CarbonOpt = None,
    seed: Annotated[int, typer.Option(help="Seed (random router, synthetic traces, spread or synthesized "
                                           "arrivals).")] = 0,
    out: Annotated[Path | None, typer.Option(help="Write requests.parquet, summary.json, run.json, plots here (a new "
                                                  "folder, or one holding only these).",
                                             show_default="nothing written")] = None,
    force: ForceOpt = False,
    events: Annotated[Path | None, typer.Option(
        "--events", help="Write every iteration of every replica, and the idle time between them, to this Parquet "
                         "file: start, duration, batch (prefill tokens, decode seqs), energy, power.",
        show_default="none: not recorded")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
    *,
    load_options: LoadOptions,
) -> None:
    """Simulate serving a trace: energy (J/request, J/token, kWh, CO2) and latency, from a calibrated profile.

    With no arguments: the bundled Azure conversation 2023 trace, the shipped H100 Llama-3.1-8B profile,
    continuous batching on one replica. Trace files are read with the trace flags of `tokenjoule trace stats`
    (`--map`, `--time-unit`, `--zero-output`, `--arrivals`, ...); arrivals out of order are sorted and repeated
    request ids kept, each with a note (`trace_notes` in --json).

    Warnings under the table (and `notes` in --json) say when the queue kept growing (overload), when iterations
    were priced beyond the profile's measured range, and how many requests exceeded the model's context length
    (rejected, not simulated).

    Example:
        tokenjoule simulate
        tokenjoule simulate --policy static --max-batch 16 --json
        tokenjoule simulate --profile my.json --replicas 4 --router least-outstanding --out runs/a
        tokenjoule simulate --synthetic n=256,input=1024,output=128 --cost roofline --gpu H100-SXM
        tokenjoule simulate --trace lengths.csv --arrivals poisson --rate 4
        tokenjoule simulate --replicas 2 --events iterations.parquet
    """
    from tokenjoule.console import progress
    from tokenjoule.sim.report import RUN_FILES, check_out_file, check_out_folder, dumps, write_parquet, write_run
    from tokenjoule.sim.run import SimConfig, run
    from tokenjoule.sim.tp_profiles import choose_for_model, choose_profile

    if out is not None:
        check_out_folder(out, RUN_FILES, force)
    if events is not None:
        check_out_file(events, "--events")

    check_physical_flags({"--replicas": (replicas, ">= 1"), "--tp": (tp, ">= 1"),
                          "--rate-scale": (rate_scale, "> 0"), "--max-num-seqs": (max_num_seqs, ">= 1"),
                          "--max-batched-tokens": (max_num_batched_tokens, ">= 1"),
                          "--max-batch": (max_batch, ">= 1"), "--kv-block-tokens": (block_size, ">= 1"),
                          "--batch-timeout-s": (batch_timeout_s, ">= 0"), "--slo-ttft-s": (slo_ttft_s, "> 0"),
                          "--slo-tpot-s": (slo_tpot_s, "> 0"), "--pue": (pue, ">= 1"),
                          "--host-power-w": (host_power_w, ">= 0"), "--idle-power-w": (idle_power_w, ">= 0")})
    static_only = given_flags(ctx, {"--max-batch": max_batch, "--batch-timeout-s": batch_timeout_s})
    not_static = given_flags(ctx, {"--max-num-seqs": max_num_seqs, "--max-batched-tokens": max_num_batched_tokens})
    check_policy_flags(policy, static_only, not_static)
    carbon_in = parse_carbon(carbon)
    config = SimConfig(policy=policy, replicas=replicas, tp=tp, router=router, cost=cost, gpu=gpu, model=model,
                       max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                       max_batch=max_batch, block_size=block_size, batch_timeout_s=batch_timeout_s,
                       slo_ttft_s=slo_ttft_s, slo_tpot_s=slo_tpot_s, pue=pue,
                       host_power_w=host_power_w, idle_power_w=idle_power_w, rate_scale=rate_scale,
                       arrival_window_s=_parse_window(window),
                       seed=seed)
    by_model = choose_for_model(profile, model, gpu, cost, tp, DEFAULT_PROFILE)
    choice = by_model or choose_profile(profile, cost, tp, DEFAULT_PROFILE)
    if choice.composed:
        config = dataclasses.replace(config, model=choice.profile.model.name)
    prof = choice.profile
    recorded = profile or (str(by_model.path) if by_model is not None else DEFAULT_PROFILE if prof else None)
    tr, trace_notes = _load_trace(trace, fmt, synthetic, seed, load_options)
    if carbon_in is not None:
        config = dataclasses.replace(config, **_carbon_fields(carbon_in, tr, config.arrival_window_s))
    with progress("simulating", len(tr) > 50_000) as tick:
        result = run(config, tr, prof, on_progress=tick, record_iterations=events is not None)
    carbon_out = carbon_keys(carbon_in)
    result = dataclasses.replace(result, summary={**result.summary, "profile_source": choice.source, **carbon_out,
                                                  "trace_notes": [note.to_dict() for note in trace_notes]})
    if out is not None:
        loaded_with = None if synthetic is not None else dataclasses.asdict(load_options)  # to load it the same again
        write_run(result, out, {"trace": tr.source, "trace_options": loaded_with, "profile": recorded,
                                "carbon_source": carbon_out["carbon_source"]}, force)
    if events is not None:
        write_parquet(result.iterations, events)
    if as_json:
        typer.echo(json.dumps(json.loads(dumps(result.summary))))
        return
    console = Console()
    tp_modeled = prof is not None and cost == "calibrated" and prof.tp != tp  # a profile's tp stretched to --tp
    console.print(_summary_table(result.summary, f"tokenjoule simulate: {tr.source}", tp_modeled))
    print_notes(console, result.summary["notes"])
    if tp_modeled:
        console.print(f"[yellow]note:[/] tensor parallelism is modeled from a tp={prof.tp} profile (not measured)")
    if result.summary["profile_source"]:
        console.print(f"costs: {result.summary['profile_source']}", markup=False, highlight=False)
    if carbon_in is not None and carbon_in.region is not None:
        console.print(f"carbon: {carbon_in.g_per_kwh:g} gCO2e/kWh from {carbon_in.source}", markup=False,
                      highlight=False)
    if choice.composed:
        console.print("[yellow]note:[/] every cost is modeled: composed from GPU operator fits, no iteration of this "
                      "model was measured")
    for note in trace_notes:
        console.print(f"[yellow]note:[/] {escape(note.message)}")
    if out is not None:
        console.print(f"wrote {out}/ (requests.parquet, summary.json, run.json, power.png, energy_breakdown.png, "
                      "latency_cdf.png)")
    if events is not None:
        console.print(f"wrote {events} ({result.iterations.num_rows:,} iterations and idle intervals)", markup=False,
                      highlight=False)


@trace_options
def compare(
    config_file: Annotated[Path | None, typer.Option("--config", help="TOML grid file (see tokenjoule.sim.compare).",
                                                     show_default="none: the grid from the flags")] = None,
    policies: Annotated[str | None, typer.Option(help="Comma list, e.g. static,continuous,chunked.",
                                                 show_default="continuous")] = None,
    profiles: Annotated[str | None, typer.Option(help="Comma list of profiles (engines).",
                                                 show_default=DEFAULT_PROFILE)] = None,
    gpus: Annotated[str | None, typer.Option(help="Comma list of GPU datasheets (roofline).",
                                             show_default="the profile's")] = None,
    replicas: Annotated[str | None, typer.Option(help="Comma list of replica counts.", show_default="1")] = None,
    tps: Annotated[str | None, typer.Option("--tp", help="Comma list of TP degrees.", show_default="1")] = None,
    axis: Annotated[list[str] | None, typer.Option(
        "--axis", help="Any other setting as an axis, NAME=V1,V2 (repeatable): e.g. rate_scale=1,2 or "
                       "max_num_seqs=64,256; names are simulate's settings (see tokenjoule.sim.compare).",
        show_default="none")] = None,
    cost: CostOpt = "calibrated",
    trace: TraceOpt = None,
    fmt: FormatOpt = None,
    synthetic: SynthOpt = None,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Write compare.json, compare.parquet, compare.csv and pareto.png "
                                                  "here (a new folder, or one holding only these).",
                                             show_default="nothing written")] = None,
    force: ForceOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    jobs: JobsOpt = 1,
    ray: RayOpt = None,
    *,
    load_options: LoadOptions,
) -> None:
    """Run a grid of what-ifs (policies, engines, GPUs, replicas, TP, rate or any other setting): table, Pareto plot.

    Each what-if is labelled by its settings ("continuous, 4 replicas, x2 rate"); --out also writes the table of all
    cells as compare.parquet and compare.csv. The trace (--trace, or the grid file's `trace`) is read with the trace
    flags of `simulate`; its notes (arrivals out of order, repeated request ids) are printed and kept as `trace_notes`.

    Cells run one after another, on local processes (--jobs N) or as Ray tasks (--ray auto), with the same results. A
    cell that fails is reported with its settings on stderr, the others are kept, and the exit code is then 1.

    Example:
        tokenjoule compare --policies static,continuous,chunked --profiles my.json
        tokenjoule compare --policies static,continuous --replicas 1,2,4 --axis rate_scale=1,2 --out runs/cmp
        tokenjoule compare --config grid.toml --json --jobs 4
        tokenjoule compare --policies static,chunked --trace lengths.csv --arrivals poisson --rate 4
    """
    from tokenjoule.console import progress
    from tokenjoule.sim.compare import (
        cell_entry,
        cell_tasks,
        cells_table,
        grid_from_flags,
        load_grid,
        resolve,
        simulate_cell,
    )
    from tokenjoule.sim.parallel import Backend, open_executor
    from tokenjoule.sim.report import (
        COMPARE_FILES,
        check_out_folder,
        dumps,
        pareto_front,
        plot_pareto,
        write_folder_atomically,
        write_table_files,
    )

    backend = Backend(jobs, ray)
    if out is not None:
        check_out_folder(out, COMPARE_FILES, force)

    grid = load_grid(config_file) if config_file is not None else None
    grid = grid_from_flags(policies, profiles, gpus, replicas, tps, {"cost": cost, "seed": seed}, axis or (), grid)
    synthetic = synthetic if synthetic is not None else grid.synthetic
    tr, trace_notes = _load_trace(trace or grid.trace, fmt, synthetic, seed, load_options)
    noted = {"trace_notes": [note.to_dict() for note in trace_notes]}
    cells = resolve(grid.cells(), DEFAULT_PROFILE)
    priced = [cell for cell in cells if cell.error is None]
    tasks, profiles_by_key = cell_tasks(priced)
    with open_executor(backend) as executor, progress("what-ifs", len(priced) > 1) as tick:
        outcomes = iter(executor.map(simulate_cell, tasks, shared=(tr, profiles_by_key), on_done=tick))
    ran, rows, failed = [], [], []
    for cell in cells:  # in grid order: a cell that could not be priced failed without running
        outcome = next(outcomes) if cell.error is None else None
        if outcome is not None and outcome.ok:
            ran.append(cell)
            rows.append(cell_entry(cell, outcome.value))
            continue
        error = cell.error if outcome is None else outcome.error
        failed.append({"label": cell.label, "profile": cell.profile, "config": cell.config.to_dict(),
                       "error": _error_line(error)})
        _report_failed(cell, error, None if outcome is None else outcome.traceback)
    energy = [r["summary"]["j_per_request"] or float("nan") for r in rows]
    p99 = [r["summary"]["e2e_p99_s"] or float("nan") for r in rows]
    front = pareto_front(energy, p99)
    failures = {"failed": failed} if failed else {}
    if out is not None:
        loaded_with = None if synthetic is not None else dataclasses.asdict(load_options)  # to load it the same again

        def fill(tmp: Path) -> None:
            (tmp / "compare.json").write_text(dumps({"trace": tr.source, "trace_options": loaded_with, **noted,
                                                     "cells": rows, **failures}) + "\n")
            write_table_files(cells_table(ran, rows, front), tmp / "compare")
            plot_pareto([r["label"] for r in rows], energy, p99, tmp / "pareto.png")

        write_folder_atomically(out, fill, COMPARE_FILES, force)
    if as_json:
        typer.echo(json.dumps(json.loads(dumps({"trace": tr.source, **noted, "cells": rows,
                                                "pareto": [rows[i]["label"] for i in front], **failures}))))
        _exit_if_failed(failed, len(cells))
        return
    table = Table(title=f"tokenjoule compare: {tr.source}")
    table.add_column("what-if", no_wrap=True)
    for name in ("J/req", "J/out tok", "kWh", "TTFT p99 s", "E2E p99 s", "rejected", "pareto"):
        table.add_column(name, justify="right")
    for i, r in enumerate(rows):
        s = r["summary"]
        table.add_row(r["label"] + (" (modeled)" if s["modeled"] else ""), _num(s["j_per_request"], ",.1f"),
                      _num(s["j_per_output_token"], ".3f"), _num(s["kwh"], ".4f"), _num(s["ttft_p99_s"], ".3f"),
                      _num(s["e2e_p99_s"], ".2f"), str(s["rejected"]), "*" if i in front else "")
    console = Console()
    console.print(table)
    for r in rows:
        print_notes(console, r["summary"]["notes"], r["label"])
    for note in trace_notes:
        console.print(f"[yellow]note:[/] {escape(note.message)}")
    _exit_if_failed(failed, len(cells))


def print_notes(console: Console, notes: list[dict[str, Any]], label: str = "") -> None:
    """Print each of a run's notes (`sim.notes`) as one warning line, prefixed with the what-if's label if given."""
    for note in notes:
        console.print("[yellow]warning:[/] ", end="")
        console.print(f"{label}: {note['message']}" if label else note["message"], markup=False, highlight=False)


def _error_line(err: BaseException | None) -> str:
    """A failed cell's error in one line: a user error's own message, else the exception's type and message."""
    from tokenjoule.cli import user_error_line

    text = str(err).strip()
    return user_error_line(err) or f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def _report_failed(cell: Any, error: BaseException | None, traceback: str | None) -> None:
    """One stderr line naming the failed cell's grid values and its error (its traceback too with TOKENJOULE_DEBUG)."""
    settings = ", ".join(f"{axis}={value}" for axis, value in cell.axes.items() if value is not None)
    typer.echo(f"error: cell {cell.label!r} ({settings or f'policy={cell.config.policy}'}) failed: "
               f"{_error_line(error)}", err=True)
    if os.environ.get("TOKENJOULE_DEBUG") and traceback:
        typer.echo(traceback, err=True)


def _exit_if_failed(failed: list[dict[str, Any]], cells: int) -> None:
    if failed:
        typer.echo(f"error: {len(failed)} of {cells} cells failed; the other cells' results are kept", err=True)
        raise typer.Exit(1)


def _num(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def register(app: typer.Typer) -> None:
    """Mount the simulation commands on the root app."""
    app.command("simulate")(simulate)
    app.command("compare")(compare)
