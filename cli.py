"""The `tokenjoule` command: mounts each package's commands and turns user errors into one line.

It sits at the package root, above the four subpackages whose commands it mounts. Each package's `cli.py` imports
torch only inside the commands that need a GPU, so `tokenjoule simulate` never loads torch.
"""

from __future__ import annotations

import os
import sys

import typer

from tokenjoule import __version__
from tokenjoule.calibrate import cli as calibrate_cli
from tokenjoule.calibrate.validate import cli as validate_cli
from tokenjoule.kernels import cli as kernels_cli
from tokenjoule.sim import cli as sim_cli
from tokenjoule.sim.project import cli as project_cli
from tokenjoule.traces import cli as traces_cli

app = typer.Typer(
    name="tokenjoule",
    help="Energy of LLM serving, calibrated and validated: joules per request and per token, kWh, CO2.\n\n"
    "Calibrate once per GPU, simulate what-if serving on a CPU, project traces too large to replay.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"tokenjoule {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version_: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                  help="Print the version and exit."),
) -> None:
    """Energy of LLM serving: calibrate, simulate, project."""


app.add_typer(traces_cli.app, name="trace")
app.add_typer(kernels_cli.app, name="models")
calibrate_cli.register(app)
sim_cli.register(app)
project_cli.register(app)
validate_cli.register(app)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app; known user errors print one line and exit 2 (TOKENJOULE_DEBUG=1 re-raises)."""
    try:
        # Standalone mode: click reports usage errors, --help, Exit and Abort itself and ends with SystemExit.
        # (this typer vendors click as typer._click, so `except click.ClickException` never matched its errors.)
        app(args=argv)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else int(done.code is not None)
    except (ValueError, RuntimeError, OSError) as err:
        if os.environ.get("TOKENJOULE_DEBUG"):
            raise
        typer.echo(f"error: {err}", err=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
