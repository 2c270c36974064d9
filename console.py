"""What every `tokenjoule` command shares at the terminal: the user-error guard and the progress bar.

It sits at the package root beside `cli.py`, for the commands of every subpackage; it imports neither torch nor any
tokenjoule subpackage but `traces.files` (the progress callback's type).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from tokenjoule.traces.files import ProgressFn


@contextmanager
def user_errors() -> Iterator[None]:
    """Known user errors become one line on stderr and exit code 2 (TOKENJOULE_DEBUG=1 re-raises).

    TraceFormatError, ProfileError and pyarrow's ArrowInvalid are ValueErrors; missing files are OSErrors.
    """
    try:
        yield
    except (ValueError, OSError) as err:
        if os.environ.get("TOKENJOULE_DEBUG"):
            raise
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


@contextmanager
def progress(label: str, enabled: bool = True) -> Iterator[ProgressFn | None]:
    """A rich progress bar on stderr when it is a terminal; yields a (done, total) callback, or None."""
    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield None
        return
    columns = (TextColumn(label), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)
