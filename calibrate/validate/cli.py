"""`tokenjoule validate ...` and `tokenjoule paper`: measure replays on a GPU, and report the simulator's accuracy.

Commands that need a GPU import torch inside themselves, so listing or reporting works on any machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Validate the simulator against measurement: replays on a GPU, and the accuracy report.",
                  no_args_is_help=True)


def register(root: typer.Typer) -> None:
    """Mount `validate` and `paper` on the root app."""
    root.add_typer(app, name="validate")
    root.command("paper")(paper)


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
        "--tp", help="A measured TP profile (repeat for each degree); default: those of --tp1's setup beside it "
                     "and among the shipped ones.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON here.")] = None,
) -> None:
    """Tensor parallelism: the modeled TP cost (a tp=1 profile stretched) against measured TP profiles.

    Example:
        tokenjoule validate tp --tp1 h200-llama-3.1-8b-tokenjoule-cudagraph --out docs/tp.md
        tokenjoule validate tp --tp1 tp1.json --tp tp2.json --tp tp4.json --out tp.md --json tp.json
    """
    from tokenjoule.calibrate.validate.tp_comparison import build_report, find_tp_profiles, write_tp_report

    names = tps or find_tp_profiles(tp1)
    if not names:
        raise ValueError(f"no TP profile: none given with --tp and none of {tp1}'s setup found beside it or shipped; "
                         "measure one with kernels/tp_device.py (see its docstring)")
    write_tp_report(build_report(tp1, names), out, json_path)
    typer.echo(f"wrote {out}" + (f" and {json_path}" if json_path else ""))


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
app.command("agreement")(agreement)
app.command("tp")(tp)
