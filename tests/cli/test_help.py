"""Every command's help ends with an Example block (sqlite-utils' test_docs idea), for commands added later too."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from tokenjoule.cli import app


def _leaf_commands(group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Paths of every command that is not a group (typer vendors click, so groups are told by `.commands`)."""
    found = []
    for name, command in sorted(group.commands.items()):
        if hasattr(command, "commands"):
            found += _leaf_commands(command, (*path, name))
        else:
            found.append((*path, name))
    return found


COMMANDS = _leaf_commands(typer.main.get_command(app))


def test_trace_commands_are_found():
    assert {("trace", c) for c in ("stats", "bin", "synth", "convert")} <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_help_has_example(path):
    result = CliRunner().invoke(app, [*path, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    text = result.output
    assert "Example:" in text, f"`tokenjoule {' '.join(path)} --help` has no 'Example:' block"
    assert "tokenjoule " in text.split("Example:", 1)[1], "the example should show a command line"
