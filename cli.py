"""The `tokenjoule` command: mounts each package's commands, and is the one place user errors become one line.

It sits at the package root, above the four subpackages whose commands it mounts. A package's `cli.py` is imported
only when one of its commands runs or a help lists it (`COMMAND_MODULES`), and imports numpy, pyarrow, simpy and
torch only inside the commands that need them: `tokenjoule --version` and `tokenjoule simulate --help` load none of
them, and `tokenjoule simulate` never loads torch.

User errors are a declared set (`USER_ERRORS`, each type declared next to the code that raises it, plus missing or
unreadable input files): they print `error: <one line>` on stderr and exit 2. Any other exception is a bug and
keeps its traceback. `TOKENJOULE_DEBUG=1` re-raises user errors too.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import typer
from typer.core import TyperGroup

from tokenjoule import __version__
from tokenjoule.help_text import lay_out_help

# Each command (in the order the root help lists them) and the module whose `register(app)` mounts it.
COMMAND_MODULES = {
    "calibrate": "tokenjoule.calibrate.cli",
    "calibrate-gpu": "tokenjoule.calibrate.cli",
    "simulate": "tokenjoule.sim.cli",
    "compare": "tokenjoule.sim.cli",
    "project": "tokenjoule.sim.project.cli",
    "paper": "tokenjoule.calibrate.validate.cli",
    "trace": "tokenjoule.traces.cli",
    "models": "tokenjoule.kernels.cli",
    "profile": "tokenjoule.calibrate.cli",
    "validate": "tokenjoule.calibrate.validate.cli",
}
# Input files that are missing or unreadable: user errors when they name the file (a bug otherwise).
FILE_ERRORS: tuple[type[OSError], ...] = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def user_errors() -> tuple[type[Exception], ...]:
    """Errors a user can fix (a bad trace or trace option, profile, GPU setup or setting); each names its file or flag.

    Imported when asked (an error is being reported), not at start-up: their modules import numpy and pyarrow.
    """
    from tokenjoule.calibrate.cost_form import ProfileError
    from tokenjoule.calibrate.measure.nvml import MeterError
    from tokenjoule.kernels.spec import ConfigError
    from tokenjoule.traces.schema import TraceFormatError, TraceOptionError

    return TraceFormatError, TraceOptionError, ProfileError, MeterError, ConfigError


def __getattr__(name: str) -> Any:
    """`USER_ERRORS`: the tuple `user_errors()` returns, built on first use."""
    if name == "USER_ERRORS":
        return user_errors()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def user_error_line(err: BaseException) -> str | None:
    """The one line to print for a user error, or None when `err` is not one (a bug: keep its traceback)."""
    if type(err).__module__.startswith("tokenjoule.") and isinstance(err, user_errors()):  # not click's Exit (--help)
        text = str(err).strip()
        return text.splitlines()[0] if text else type(err).__name__
    if isinstance(err, FILE_ERRORS) and err.filename is not None:
        return f"{err.filename}: {err.strerror or type(err).__name__}"
    return None


class UserErrorGroup(TyperGroup):
    """The root command group: commands mounted when asked for; a declared user error ends one with one line.

    A command's module is imported the first time the command (or a help listing it) is asked for
    (`COMMAND_MODULES`), and the help of what it mounts is laid out then (`help_text.lay_out_help`); a user error
    raised by any command prints one line and exits with code 2.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        lay_out_help(self)

    def list_commands(self, ctx: typer.Context) -> list[str]:
        """Every command's name, without importing its module."""
        return list(COMMAND_MODULES)

    def get_command(self, ctx: typer.Context, cmd_name: str) -> Any:
        """The command, its module imported and its commands mounted the first time one of them is asked for."""
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            mounted = typer.Typer(rich_markup_mode=app.rich_markup_mode, pretty_exceptions_enable=False)
            importlib.import_module(COMMAND_MODULES[cmd_name]).register(mounted)
            for name, command in typer.main.get_group(mounted).commands.items():
                lay_out_help(command)
                self.add_command(command, name)
        return super().get_command(ctx, cmd_name)

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
