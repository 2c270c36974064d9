"""The progress bar every `tokenjoule` command that streams a file shows on stderr.

It sits at the package root beside `cli.py` (where user errors become one line), for the commands of every
subpackage; it imports neither torch nor any tokenjoule subpackage but `traces.files` (the progress callback's type).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from tokenjoule.traces.files import ProgressFn


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
