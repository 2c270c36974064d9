"""The `tokenjoule` command: mounts each package's commands, and is the one place user errors become one line.

It sits at the package root, above the four subpackages whose commands it mounts. Each package's `cli.py` imports
torch only inside the commands that need a GPU, so `tokenjoule simulate` never loads torch.

User errors are a declared set (`USER_ERRORS`, each type declared next to the code that raises it, plus missing or
unreadable input files): they print `error: <one line>` on stderr and exit 2. Any other exception is a bug and
keeps its traceback. `TOKENJOULE_DEBUG=1` re-raises user errors too.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer
from typer.core import TyperGroup

from tokenjoule import __version__
from tokenjoule.calibrate import cli as calibrate_cli
from tokenjoule.calibrate.cost_form import ProfileError
from tokenjoule.calibrate.measure.nvml import MeterError
from tokenjoule.calibrate.validate import cli as validate_cli
from tokenjoule.help_text import lay_out_help
from tokenjoule.kernels import cli as kernels_cli
from tokenjoule.kernels.spec import ConfigError
from tokenjoule.sim import cli as sim_cli
from tokenjoule.sim.project import cli as project_cli
from tokenjoule.traces import cli as traces_cli
from tokenjoule.traces.schema import TraceFormatError, TraceOptionError

# Errors a user can fix (a bad trace or trace option, profile, GPU setup or setting); each names its file or flag.
USER_ERRORS: tuple[type[Exception], ...] = (TraceFormatError, TraceOptionError, ProfileError, MeterError, ConfigError)
# Input files that are missing or unreadable: user errors when they name the file (a bug otherwise).
FILE_ERRORS: tuple[type[OSError], ...] = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def user_error_line(err: BaseException) -> str | None:
    """The one line to print for a user error, or None when `err` is not one (a bug: keep its traceback)."""
    if isinstance(err, USER_ERRORS):
        text = str(err).strip()
        return text.splitlines()[0] if text else type(err).__name__
    if isinstance(err, FILE_ERRORS) and err.filename is not None:
        return f"{err.filename}: {err.strerror or type(err).__name__}"
    return None


class UserErrorGroup(TyperGroup):
    """The root command group: a declared user error raised by any command ends it with one line and exit code 2.

    It also lays out the help of the whole command tree as it is built (`help_text.lay_out_help`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        lay_out_help(self)

    def invoke(self, ctx: typer.Context) -> Any:
        """Run the command; a user error prints `error: ...` on stderr and exits 2 (TOKENJOULE_DEBUG=1 re-raises)."""
        try:
            return super().invoke(ctx)
        except Exception as err:
            line = user_error_line(err)
            if line is None or os.environ.get("TOKENJOULE_DEBUG"):
                raise
            typer.echo(f"error: {line}", err=True)
            raise typer.Exit(2) from None


app = typer.Typer(
    name="tokenjoule",
    cls=UserErrorGroup,
    help="Energy of LLM serving, calibrated and validated: joules per request and per token, kWh, CO2.\n\n"
    "Calibrate once per GPU, simulate what-if serving on a CPU, project traces too large to replay.\n\n"
    "Example:\n    tokenjoule simulate\n    tokenjoule simulate --policy static --max-batch 16 --json\n"
    "    tokenjoule profile list\n    tokenjoule project azure-code-2023",
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
    """Entry point: run the app and return its exit code (user errors: 2, via `UserErrorGroup`); bugs propagate."""
    try:
        # Standalone mode: click reports usage errors, --help, Exit and Abort itself and ends with SystemExit.
        app(args=argv)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else int(done.code is not None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
