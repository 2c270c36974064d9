"""`tokenjoule calibrate` and `tokenjoule profile ...`. torch is imported only inside `calibrate`.

User errors (ProfileError, MeterError, ConfigError) go up to the root app, which prints them as one line.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from tokenjoule.calibrate.cost_form import ProfileError
from tokenjoule.calibrate.profile import load_profile, resolve_profile_path, shipped_profiles
from tokenjoule.calibrate.summary import profile_summary
from tokenjoule.calibrate.sweep.operator_grid import SWEPT_MODELS
from tokenjoule.kernels.spec import ConfigError, ModelSpec

profile_app = typer.Typer(help="Inspect calibration profiles: summary, J/token figures, fit errors, plots.\n\n"
                          "Example:\n    tokenjoule profile list\n"
                          "    tokenjoule profile show h100-llama-3.1-8b-tokenjoule-cudagraph\n"
                          "    tokenjoule profile plot h100-llama-3.1-8b-hf-eager --out hf.png",
                          no_args_is_help=True)


def _load(name_or_path: str) -> tuple[Any, Path]:
    path = resolve_profile_path(name_or_path)
    return load_profile(path), path


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _host_text(host: dict[str, Any] | None) -> str:
    """The serving loop's measured host time per iteration, in words."""
    if host is None:
        return "not measured (the simulator adds none)"
    return (f"{host['per_iteration_s'] * 1e6:.0f} us + {host['per_seq_s'] * 1e6:.1f} us/sequence + "
            f"{host['per_prefill_seq_s'] * 1e6:.1f} us/prefill chunk per iteration")


def _print_summary(summary: dict[str, Any]) -> None:
    console = Console()
    meta = Table(title=summary["label"], show_header=False)
    gpu, software = summary["gpu"], summary["software"]
    for key, value in (("date", summary["date"]), ("gpu", gpu.get("name")), ("driver", gpu.get("driver")),
                       ("power limit (W)", gpu.get("power_limit_w")), ("torch", software.get("torch")),
                       ("energy method", summary["method"].get("energy")), ("idle power (W)", summary["idle_power_w"]),
                       ("KV capacity (tokens)", summary["kv_capacity_tokens"]), ("raw data", summary["raw_path"]),
                       ("host overhead", _host_text(summary["host_overhead"]))):
        meta.add_row(key, _fmt(value, 4))
    console.print(meta)
    errors = Table(title="fit errors (relative)")
    for col in ("curve", "CV median", "CV p95", "mixed median", "mixed p95", "points", "target met"):
        errors.add_column(col)
    for curve in ("latency", "energy"):
        e = summary["fit_errors"].get(curve) or {}
        errors.add_row(curve, _pct(e.get("cv_median")), _pct(e.get("cv_p95")), _pct(e.get("mixed_median")),
                       _pct(e.get("mixed_p95")), _fmt(e.get("n_points")), _fmt(summary["targets_met"][curve]))
    console.print(errors)
    for kind, extra in (("prefill", "input_tokens"), ("decode", "context_tokens")):
        table = Table(title=f"{kind}: J per token")
        for col in ("batch", extra, "latency (ms)", "power (W)", "J/token", "tokens/s"):
            table.add_column(col, justify="right")
        for p in summary[kind]:
            table.add_row(str(p["batch"]), str(p[extra]), f"{p['latency_s'] * 1e3:.2f}", f"{p['power_w']:.0f}",
                          f"{p['j_per_token']:.4g}", f"{p['tokens_per_s']:.0f}")
        console.print(table)
    if summary["notes"]:
        console.print(f"notes: {summary['notes']}")


@profile_app.command("show")
def show(
    profile: str = typer.Argument(..., help="Profile file, or a shipped profile's name (see `profile list`)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Summarize a profile: metadata, fit errors against the targets, J/token for prefill and decode.

    --json keys: path, label, content_sha256, date, engine, mode, model, dtype, tp, gpu, host, software, method,
    idle_power_w, kv_capacity_tokens, raw_path, fit_errors (latency/energy: cv_median, cv_p95, mixed_median,
    mixed_p95, train_median, train_p95, n_points, n_mixed, folds; repeats), targets_met (latency, energy),
    prefill (batch, input_tokens, latency_s, energy_j, j_per_token, tokens_per_s, power_w per batch size),
    decode (batch, context_tokens, latency_s, energy_j, j_per_token, tokens_per_s, power_w), static_batch
    (generate()-style batch 4, 1024 in / 128 out: time_s, energy_j, j_per_output_token), notes.

    Example:
        tokenjoule profile show tests/fixtures/profiles/toy_h100_llama-3.1-8b.json --json
    """
    loaded, path = _load(profile)
    summary = profile_summary(loaded, str(path))
    if json_out:
        typer.echo(json.dumps(summary))
    else:
        _print_summary(summary)


@profile_app.command("plot")
def plot(
    profile: str = typer.Argument(..., help="Profile file or shipped profile name."),
    out: Path = typer.Option(..., "--out", help="PNG file to write."),  # noqa: B008
) -> None:
    """Draw latency, power and J/token against tokens per iteration (fits, and measured points if raw data exists).

    Example:
        tokenjoule profile plot my_h100.json --out my_h100.png
    """
    from tokenjoule.calibrate.plots import plot_profile
    from tokenjoule.calibrate.sweep.iterations import read_rows

    loaded, path = _load(profile)
    rows = None
    if loaded.raw_path:
        raw = path.parent / loaded.raw_path
        try:
            rows = read_rows(raw) or None
        except (OSError, ValueError) as err:
            logging.getLogger(__name__).warning("raw data %s unreadable: %s", raw, err)
    written = plot_profile(loaded, out, rows)
    typer.echo(f"wrote {written}")


@profile_app.command("refit")
def refit(
    profile: str = typer.Argument(..., help="Profile JSON file (its raw sweep Parquet must lie beside it)."),
    out: Path = typer.Option(None, "--out", help="Write here instead of over the input file.",  # noqa: B008
                             show_default="the input file"),
) -> None:
    """Refit a profile's curves from its committed raw sweep data (the measurements are never changed).

    Example:
        tokenjoule profile refit calibrate/profiles/h100-llama-3.1-8b-tokenjoule-cudagraph.json
    """
    from tokenjoule.calibrate.profile import save_profile
    from tokenjoule.calibrate.refit import refit_profile

    refitted = refit_profile(profile)
    target = save_profile(refitted, out or resolve_profile_path(profile))
    errs = refitted.fit_errors
    typer.echo(f"wrote {target}: latency CV median {_pct(errs['latency']['cv_median'])}, "
               f"energy CV median {_pct(errs['energy']['cv_median'])}")


@profile_app.command("list")
def list_profiles(json_out: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """List the profiles shipped with tokenjoule (use their names wherever a profile file is expected).

    Example:
        tokenjoule profile list
    """
    entries = []
    for name, path in shipped_profiles().items():
        try:
            p = load_profile(path)
            entries.append({"name": name, "label": p.label, "date": p.date, "valid": True, "error": None})
        except ProfileError as err:
            entries.append({"name": name, "label": None, "date": None, "valid": False, "error": str(err)})
    if json_out:
        typer.echo(json.dumps({"profiles": entries}))
        return
    if not entries:
        typer.echo("no shipped profiles")
        return
    table = Table(title="shipped profiles")
    for col in ("name", "GPU x model x engine/mode x TP", "date"):
        table.add_column(col)
    for e in entries:
        table.add_row(e["name"], e["label"] or f"invalid: {e['error']}", e["date"] or "-")
    Console().print(table)


def _gpu_indices(gpus: str) -> tuple[int, ...]:
    try:
        return tuple(int(i) for i in gpus.split(","))
    except ValueError as err:
        raise ConfigError(f"--gpus: {gpus!r} is not a comma-separated list of GPU indices (e.g. 0 or 0,1)") from err


def calibrate_cmd(
    model: str = typer.Option(..., "--model", help="Registry name (see `tokenjoule models`) or a config.json path."),
    engine: str = typer.Option("tokenjoule", "--engine", help="Engine: tokenjoule or hf."),
    mode: str = typer.Option("cudagraph", "--mode", help="Engine mode: eager, cudagraph or compile."),
    out: Path = typer.Option(None, "--out", help="Profile JSON to write (raw Parquet beside it).",  # noqa: B008
                             show_default="none; give --out or --out-dir"),
    out_dir: Path = typer.Option(None, "--out-dir", help="Instead of --out: a folder for one or more runs "  # noqa: B008
                                 "(--runs), each profile named as the shipped ones with its raw and power-timeline "
                                 "Parquet, plus calibrate.log (and for engine hf the generate() check).",
                                 show_default="none; give --out or --out-dir"),
    runs: str = typer.Option(None, "--runs", help="With --out-dir: engine:mode[,engine:mode...].",
                             show_default="--engine:--mode"),
    quick: bool = typer.Option(False, "--quick", help="Small grid, short windows: a smoke run."),
    gpus: str = typer.Option("0", "--gpus", help="Comma-separated GPU indices of the replica (TP degree = count)."),
    gpu_memory_utilization: float = typer.Option(0.9, help="Fraction of GPU memory the engine may use."),
    max_num_seqs: int = typer.Option(512, "--max-batch-seqs", help="Most sequences per iteration."),
    max_num_batched_tokens: int = typer.Option(16384, "--max-batched-tokens", help="Most tokens per iteration."),
    json_out: bool = typer.Option(False, "--json", help="Print the new profile's summary as one JSON object."),
    short_from: str = typer.Option(None, "--short-from", help="Carry this profile (same model, engine, mode, "
                                   "TP; another machine of this GPU type) here from a short sweep instead.",
                                   show_default="none: a full calibration"),
) -> None:
    """Measure a model on this machine's GPU and write a calibration profile (needs CUDA and NVML).

    Runs prefill, decode and mixed iterations over a grid, reads time around back-to-back steps and energy from
    NVML's counter between its ticks, fits latency and energy curves, and saves the profile with its raw data.
    Interrupted runs resume from the raw Parquet file. With --out-dir, calibrates each engine:mode of --runs in
    turn into one folder (the shipped profiles were made so) and prints one line per profile.

    Example:
        tokenjoule calibrate --model llama-3.1-8b --engine tokenjoule --mode cudagraph --out h100_8b.json
        tokenjoule calibrate --model llama-3.1-8b --short-from h200-llama-3.1-8b-tokenjoule-cudagraph --out mine.json
        tokenjoule calibrate --model llama-3.1-8b --out-dir runs/h100 --runs tokenjoule:cudagraph,hf:eager
    """
    from tokenjoule.calibrate import gpu_run, recalibrate
    from tokenjoule.calibrate.measure import machine

    if (out is None) == (out_dir is None):
        raise ConfigError("give --out (one profile) or --out-dir (a folder of runs), not both or neither")
    if out is None and (short_from or json_out or max_num_seqs != 512 or max_num_batched_tokens != 16384):
        raise ConfigError("--out-dir takes neither --short-from, --json nor the engine limits; use --out for those")
    if runs is not None and out_dir is None:
        raise ConfigError("--runs goes with --out-dir")
    base, base_path = _load(short_from) if short_from else (None, None)
    indices = _gpu_indices(gpus)
    if out_dir is not None:
        pairs = gpu_run.parse_runs(runs or f"{engine}:{mode}")
        machine.check_device(indices)
        out_dir.mkdir(parents=True, exist_ok=True)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                            handlers=[logging.FileHandler(out_dir / "calibrate.log"), logging.StreamHandler()])
        for line in gpu_run.calibrate_runs(out_dir, model, pairs, indices, quick=quick,
                                           gpu_memory_utilization=gpu_memory_utilization):
            typer.echo(line)
        return
    machine.check_device(indices)
    profile = gpu_run.run_calibration(model, engine, mode, out, quick=quick, gpu_indices=indices,
                                      gpu_memory_utilization=gpu_memory_utilization, max_num_seqs=max_num_seqs,
                                      max_num_batched_tokens=max_num_batched_tokens, base=base,
                                      base_rows=recalibrate.base_rows(base, base_path) if base else ())
    summary = profile_summary(profile, str(out))
    if json_out:
        typer.echo(json.dumps(summary))
    else:
        _print_summary(summary)


def calibrate_gpu_cmd(
    out_dir: Path = typer.Option(..., "--out-dir", help="Folder for operators.raw.parquet, operators.meta.json "  # noqa: B008
                                 "and operators.timeline.parquet."),
    models: str = typer.Option(",".join(SWEPT_MODELS), "--models", help="Comma list of models (registry names) "
                               "whose operator shapes are measured."),
    quick: bool = typer.Option(False, "--quick", help="A few points per operator: a smoke run."),
    gpu: int = typer.Option(0, "--gpu", help="GPU index."),
    budget_s: float = typer.Option(None, "--budget-s", help="Stop measuring new points after this many seconds "
                                   "(what was measured is kept; resume with --resume).", show_default="no limit"),
    resume: Path = typer.Option(None, "--resume", help="An earlier operators.raw.parquet: its points are "  # noqa: B008
                                "skipped.", show_default="none: measure every point"),
) -> None:
    """Measure this GPU's operators (GEMMs, attention, MoE experts, the rest of a layer) for any model's iterations.

    Every operator class an iteration of the given models is made of, at the shapes they give it: GPU time per call
    from CUDA events around CUDA-graph replays, energy per call from tick-aligned NVML windows, each point with its
    FLOPs, bytes moved and error bound, plus idle power and the host's launch costs (needs CUDA and NVML).

    Example:
        tokenjoule calibrate-gpu --out-dir runs/h200_ops
        tokenjoule calibrate-gpu --out-dir runs/h200_ops2 --budget-s 480 --resume runs/h200_ops/operators.raw.parquet
    """
    from tokenjoule.calibrate.measure import machine
    from tokenjoule.calibrate.sweep.operators import sweep_to_folder

    names = tuple(m.strip() for m in models.split(",") if m.strip())
    if not names:
        raise ConfigError("--models names no model")
    for name in names:
        ModelSpec.from_name(name)  # an unknown name is a one-line error before the GPU is touched
    machine.check_device((gpu,))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    meta = sweep_to_folder(str(out_dir), names, quick=quick, gpu_index=gpu,
                           budget_s=float("inf") if budget_s is None else budget_s,
                           resume_from=None if resume is None else str(resume))
    typer.echo(f"{out_dir}: {meta['measured']} of {meta['points']} points in {meta['wall_s']:.0f} s, "
               f"idle {meta['idle_power_w']:.0f} W; failed: {len(meta['failed'])}")


def register(app: typer.Typer) -> None:
    """Mount the calibration and profile commands on the root app."""
    app.command("calibrate")(calibrate_cmd)
    app.command("calibrate-gpu")(calibrate_gpu_cmd)
    app.add_typer(profile_app, name="profile")
