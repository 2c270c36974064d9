"""`tokenjoule validate ...` and `tokenjoule paper`: measure replays on a GPU, and report the simulator's accuracy.

Commands that need a GPU import torch inside themselves, so listing or reporting works on any machine.
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Validate the simulator against measurement: replays on a GPU, and the accuracy report.",
                  no_args_is_help=True)


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
                                   "seconds of the run (default: 560, inside the device tool's 600 s)."),
    quick: bool = typer.Option(False, "--quick", help="The smoke-test calibration grid (a check, not a profile)."),
    scenario_set: str = typer.Option("short", "--scenario-set", help="short slices (after calibrating) or long "
                                     "ones (usually with --profile)."),
    scenarios: str = typer.Option("", "--scenarios", help="Comma list of scenario names of the set, run in this "
                                  "order (default: all, in order)."),
    mode: str = typer.Option("cudagraph", "--mode", help="Engine mode: cudagraph, or eager (every iteration "
                             "launched from Python)."),
    profile: Path = typer.Option(None, "--profile", help="Replay against this earlier profile of the same GPU "  # noqa: B008
                                 "instead of calibrating."),
    short_from: Path = typer.Option(None, "--short-from", help="Carry this full profile of another machine of "  # noqa: B008
                                    "this GPU type here by a short re-calibration, and replay against that."),
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
    budget_s: float = typer.Option(None, "--budget-s", help="The whole call's time budget in seconds "
                                   "(default: 480)."),
) -> None:
    """Calibrate Hugging Face generate() on this GPU, then run offline static batches through it with the meter on.

    One HF model (random weights, eager, DynamicCache) is built once and calibrated through generate(); then each
    scenario runs its batches back to back in one energy window, as many as the time budget allows.

    Example:
        tokenjoule validate hf --out runs/h100_hf
        tokenjoule validate hf --out /tmp/hf --tiny --device cpu
    """
    from tokenjoule.calibrate.validate import device as vd
    from tokenjoule.calibrate.validate import hf as vh

    plan = vh.make_plan(model, device=device, tiny=tiny, budget_s=budget_s)
    vd.log_to(out)
    _echo_scenarios(vd.run_metered(out, plan.device, lambda meter: vh.run_plan(plan, out, meter)))


def register(root: typer.Typer) -> None:
    """Mount `validate` (and, once written, `paper`) on the root app."""
    root.add_typer(app, name="validate")
