"""`tokenjoule validate ...` and `tokenjoule paper`: measure replays on a GPU, and report the simulator's accuracy.

Commands that need a GPU import torch inside themselves, so listing or reporting works on any machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Validate the simulator against measurement: replays on a GPU, and the accuracy report.\n\n"
                  "Example:\n    tokenjoule validate run --out runs/h100_run1\n"
                  "    tokenjoule validate report validation", no_args_is_help=True)


# ---- replays measured on a GPU: `validate run` (tokenjoule engine) and `validate hf` (Hugging Face generate()) ----
def _echo_scenarios(doc: dict) -> None:
    from tokenjoule.calibrate.validate.device import scenario_table

    for line in scenario_table(doc["scenarios"]):
        typer.echo(line)


@app.command("run")
def run_cmd(
    out: Path = typer.Option(..., "--out", help="Output folder (at most 8 files; see below)."),  # noqa: B008
    model: str = typer.Option("llama-3.1-8b", "--model", help="Registry name (see `tokenjoule models`)."),
    budget_s: float = typer.Option(None, "--budget-s", help="Skip scenarios that would end after this many "
                                   "seconds of the run.", show_default="560, inside the device tool's 600 s"),
    quick: bool = typer.Option(False, "--quick", help="The smoke-test calibration grid (a check, not a profile)."),
    scenario_set: str = typer.Option("short", "--scenario-set", help="short slices (after calibrating), long "
                                     "ones (usually with --profile), or models: about a minute per model, for a "
                                     "lease that replays several models."),
    scenarios: str = typer.Option("", "--scenarios", help="Comma list of scenario names of the set, run in this "
                                  "order.", show_default="all of the set, in order"),
    mode: str = typer.Option("cudagraph", "--mode", help="Engine mode: cudagraph, or eager (every iteration "
                             "launched from Python)."),
    profile: Path = typer.Option(None, "--profile", help="Replay against this earlier profile of the same GPU "  # noqa: B008
                                 "instead of calibrating.", show_default="none: calibrate first"),
    short_from: Path = typer.Option(None, "--short-from", help="Carry this full profile of another machine of "  # noqa: B008
                                    "this GPU type here by a short re-calibration, and replay against that.",
                                    show_default="none"),
) -> None:
    """Calibrate the tokenjoule engine on this GPU, then replay trace scenarios on it with the meter on (needs CUDA).

    One engine (CUDA graphs by default) is built once; a full-grid calibration measures its profile, then the same
    engine replays each scenario in real time. Files in --out: the profile JSON and its raw Parquet,
    requests.parquet, iterations.parquet, timeline.parquet (power every 100 ms), validation.json and validate.log.
    The simulator's side of the comparison runs later, on a CPU.

    Example:
        tokenjoule validate run --out runs/h100_run1
        tokenjoule validate run --out runs/h100_long --scenario-set long --profile runs/h100_run1/profile.json
    """
    from tokenjoule.calibrate.validate import device as vd

    plan = vd.make_plan(model, mode=mode, budget_s=vd.BUDGET_S if budget_s is None else budget_s, quick=quick,
                        scenario_set=scenario_set, scenarios=scenarios, profile=profile, short_from=short_from)
    vd.log_to(out)
    _echo_scenarios(vd.run_metered(out, plan.device, lambda meter: vd.run_plan(plan, out, meter)))


@app.command("hf")
def hf_cmd(
    out: Path = typer.Option(..., "--out", help="Output folder (the files of `validate run`)."),  # noqa: B008
    model: str = typer.Option("llama-3.1-8b", "--model", help="Registry name or a config.json path."),
    device: str = typer.Option("cuda", "--device", help="torch device (cpu only with --tiny, for a smoke run)."),
    tiny: bool = typer.Option(False, "--tiny", help="A 2-layer toy model, tiny grid and scenarios."),
    budget_s: float = typer.Option(None, "--budget-s", help="The whole call's time budget in seconds.",
                                   show_default="480"),
    short_from: Path = typer.Option(None, "--short-from", help="Carry this full HF profile of another machine of "  # noqa: B008
                                    "this GPU type here by the host check (seconds) instead of calibrating, and "
                                    "predict the scenarios with that.", show_default="none: a full calibration"),
) -> None:
    """Calibrate Hugging Face generate() on this GPU, then run offline static batches through it with the meter on.

    One HF model (random weights, eager, DynamicCache) is built once and calibrated through generate() (or, with
    --short-from, a profile of another host carried here by a host check); then each scenario runs its batches back
    to back in one energy window, as many as the time budget allows.

    Example:
        tokenjoule validate hf --out runs/h100_hf
        tokenjoule validate hf --out runs/h200_hf_check --short-from h200-llama-3.1-8b-hf-eager
        tokenjoule validate hf --out /tmp/hf --tiny --device cpu
    """
    from tokenjoule.calibrate.profile import resolve_profile_path
    from tokenjoule.calibrate.validate import device as vd
    from tokenjoule.calibrate.validate import hf as vh

    plan = vh.make_plan(model, device=device, tiny=tiny, budget_s=budget_s,
                        short_from=None if short_from is None else resolve_profile_path(short_from))
    vd.log_to(out)
    _echo_scenarios(vd.run_metered(out, plan.device, lambda meter: vh.run_plan(plan, out, meter)))


# ---- reports on measured runs, on any machine ----
# ---- the accuracy reports: report, agreement, tp (under `validate`) and `paper` (on the root app) -------------------

def report(
    run_dirs: Annotated[list[Path], typer.Argument(
        metavar="RUN_DIR", show_default=False,
        help="Run folders a device run wrote (each holds validation.json), or folders of them.")],
    out: Annotated[Path, typer.Option(help="The Markdown report; the JSON (same name, .json) and the power plot "
                                           "(<name>_power.png) go beside it.")] = Path("docs/validation.md"),
) -> None:
    """Simulate every scenario of measured replay runs and compare with what the GPU measured: the accuracy report.

    Writes the Markdown report, its JSON and a plot of simulated vs measured power. With the repository's
    `validation/` runs it regenerates docs/validation.md, docs/validation.json and docs/validation_power.png.

    Example:
        tokenjoule validate report validation
        tokenjoule validate report runs/h100_run1 runs/h100_run2 --out reports/validation.md
    """
    from tokenjoule.calibrate.validate.report import output_paths, run_folders, write_report

    write_report(run_folders(tuple(run_dirs)), out)
    typer.echo("wrote " + ", ".join(str(p) for p in output_paths(out).values()))


def hosts(
    run_dirs: Annotated[list[Path] | None, typer.Argument(
        metavar="[RUN_DIR]...", show_default=False,
        help="Launch-bound run folders (each holds validation.json); default: every one under validation/.")] = None,
    out: Annotated[Path, typer.Option(help="The Markdown report; the JSON (same name, .json) goes beside it.")]
    = Path("docs/validation_hosts.md"),
) -> None:
    """Launch-bound engines across hosts: how often measured replays fall inside the profile's p10-p90 host band.

    Each launch-bound run (eager, HF generate()) is simulated with its own host's profile and each other host's of
    the same setup; also per host, the host time of eager decode steps beside the CUDA-graph profile's GPU time.

    Example:
        tokenjoule validate hosts
        tokenjoule validate hosts validation/h200_2026-12-02_hf2 validation/h200_2026-12-03_hf3 --out /tmp/hosts.md
    """
    from tokenjoule.calibrate.validate.host_bands import write_report
    from tokenjoule.calibrate.validate.report import run_folders

    report_ = write_report(run_folders(tuple(run_dirs)) if run_dirs else None, out)
    for c in report_["coverage"]:
        if c["engine"] == "all":
            typer.echo(f"{c['source']}: energy {c['energy_inside']:.0%}, time {c['time_inside']:.0%} inside the "
                       f"band over {c['n']} scenarios (target {report_['target_inside']:.0%})")
    typer.echo(f"wrote {out} and {out.with_suffix('.json')}")


def agreement(
    out: Annotated[Path, typer.Option(help="The Markdown report.")] = Path("docs/agreement.md"),
    requests: Annotated[int, typer.Option(min=1, help="Requests per synthetic trace (times the replicas for the "
                                                      "multi-replica one).")] = 20_000,
) -> None:
    """Agreement of `tokenjoule project` (load-aware) with a full `simulate` replay, per shipped profile and trace.

    Replays and projects the bundled Azure 2023 traces and synthetic ones at several loads (CPU only; minutes).

    Example:
        tokenjoule validate agreement
        tokenjoule validate agreement --requests 2000 --out /tmp/agreement.md
    """
    from tokenjoule.calibrate.validate.agreement import write_agreement

    write_agreement(out, requests)
    typer.echo(f"wrote {out}")


def tp(
    tp1: Annotated[str, typer.Option("--tp1", help="The tp=1 profile (file or shipped name), its raw sweep "
                                                   "beside it.")],
    out: Annotated[Path, typer.Option(help="The Markdown report, e.g. docs/tp.md.")],
    tps: Annotated[list[str] | None, typer.Option(
        "--tp", help="A measured TP profile (repeat for each degree).",
        show_default="those of --tp1's setup beside it and among the shipped ones")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON here.",
                                                   show_default="nothing written")] = None,
) -> None:
    """Tensor parallelism: the modeled TP cost (a tp=1 profile stretched) against measured TP profiles.

    Example:
        tokenjoule validate tp --tp1 h200-llama-3.1-8b-tokenjoule-cudagraph --out docs/tp.md
        tokenjoule validate tp --tp1 tp1.json --tp tp2.json --tp tp4.json --out tp.md --json tp.json
    """
    from tokenjoule.calibrate.cost_form import ProfileError
    from tokenjoule.calibrate.validate.tp_comparison import build_report, find_tp_profiles, write_tp_report

    names = tps or find_tp_profiles(tp1)
    if not names:
        raise ProfileError(f"no TP profile: none given with --tp and none of {tp1}'s setup found beside it or "
                           "shipped; measure one with `torchrun ... -m tokenjoule.calibrate.tp_run calibrate`")
    write_tp_report(build_report(tp1, names), out, json_path)
    typer.echo(f"wrote {out}" + (f" and {json_path}" if json_path else ""))


def models(
    lease_dirs: Annotated[list[Path], typer.Argument(
        metavar="LEASE_DIR...", show_default=False,
        help="Leases' model folders (each holds validation.json), as tests/bench/device_models_lease.sh wrote; "
             "several leases are pooled (a model in two of them is refused).")],
    ops: Annotated[Path, typer.Option(help="The same lease's operator sweep folder (operators.raw.parquet and "
                                           "operators.meta.json).")],
    out: Annotated[Path, typer.Option(help="The Markdown report; the JSON (same name, .json) and the plot "
                                           "(<name>_energy.png) go beside it.")] = Path("docs/validation_models.md"),
    mode: Annotated[str, typer.Option(help="Engine mode the models were replayed in.")] = "cudagraph",
) -> None:
    """Leave-one-model-out: price each replayed model with a profile composed without any of its measurements.

    For each model, the GPU profile's overhead terms are fitted on the other models' measured iterations; its
    composed profile simulates the model's replayed scenarios, compared with the GPU's energy, TTFT and TPOT.

    Example:
        tokenjoule validate models validation/h200_2026-12-03_models \
            --ops calibrate/profiles/measurements/h200_lease4_2026-12-03/ops
    """
    from tokenjoule.calibrate.validate.models import write_models_report

    report_ = write_models_report(lease_dirs, ops, out, mode)
    for name, t in report_["targets"].items():
        typer.echo(f"{name}: {t['value']:.1%} (target {t['target']:.0%}{', met' if t['met'] else ''})")
    typer.echo(f"wrote {out}")


def paper(
    out: Annotated[Path, typer.Option(help="The Markdown report.")] = Path("docs/paper-reproduction.md"),
    plots: Annotated[Path, typer.Option(help="Folder for the report's PNG plots.")] = Path("docs/paper"),
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Write the Markdown only.")] = False,
) -> None:
    """Reproduce the paper's checkable findings (Fernandez et al., ACL 2025) on H100 from the shipped profiles.

    Every number is labelled measured (raw sweep rows, the generate() check) or modeled (fitted curves, estimates,
    simulator replays). CPU only, deterministic, about 10 s.

    Example:
        tokenjoule paper
        tokenjoule paper --out /tmp/paper.md --no-plots
    """
    from tokenjoule.calibrate.validate.paper import write_paper

    written = write_paper(out, None if no_plots else plots)
    typer.echo("wrote " + ", ".join(str(p) for p in written))


app.command("report")(report)
app.command("hosts")(hosts)
app.command("agreement")(agreement)
app.command("tp")(tp)
app.command("models")(models)


def register(root: typer.Typer) -> None:
    """Mount `validate` and `paper` on the root app."""
    root.add_typer(app, name="validate")
    root.command("paper")(paper)
