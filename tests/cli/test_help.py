"""Every command's and group's help: each option's default shown, prose reflowed, and the examples last, one a line.

sqlite-utils' test_docs idea, over the whole command tree, so commands added later are held to it too.
"""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from tokenjoule.cli import app

WIDE = {"COLUMNS": "200"}  # wide enough that no option's help or example wraps


def _paths(group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The path of `group` and of every command and group under it (typer vendors click: groups have `.commands`).

    Asked through `list_commands`/`get_command`, as click does: the root group mounts its commands when asked.
    """
    ctx = typer.Context(group)
    found = [path]
    for name in sorted(group.list_commands(ctx)):
        command = group.get_command(ctx, name)
        found += _paths(command, (*path, name)) if hasattr(command, "commands") else [(*path, name)]
    return found


def _command(path: tuple[str, ...]):
    command = ROOT
    for name in path:
        command = command.get_command(typer.Context(command), name)
    return command


def _help(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    return result.output


def _option_rows(text: str) -> dict[str, str]:
    """Option name -> its row in the rendered panels (the continuation lines joined), box characters dropped."""
    rows: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        start = re.match(r"│\s+(?:\*\s+)?(--[\w-]+)", line)
        if start:
            current = start.group(1)
            rows[current] = []
        elif not line.startswith("│"):
            current = None
        if current is not None:
            rows[current].append(line.strip("│ "))
    return {name: " ".join(" ".join(parts).split()) for name, parts in rows.items()}


ROOT = typer.main.get_command(app)
PATHS = _paths(ROOT)


def test_the_walk_finds_groups_and_their_commands():
    assert {(), ("trace",), ("profile",), ("validate",), ("models",)} <= set(PATHS)
    assert {("trace", c) for c in ("stats", "bin", "synth", "convert")} | {("simulate",), ("validate", "run")} <= set(
        PATHS)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "tokenjoule")
def test_help_shows_every_default_and_ends_with_examples(path):
    text = _help(path)
    rows = _option_rows(text)
    for param in _command(path).params:
        if param.param_type_name != "option" or param.hidden or (param.is_flag and not param.default):
            continue
        name = next(o for o in param.opts if o.startswith("--"))
        row = rows[name]
        wanted = "[required]" if param.required else "[default: "
        assert wanted in row, f"`{name}` shows no {wanted.strip()}...: give a default or show_default='...'; {row}"
        assert " ".join(param.help.replace("\\[", "[").split()) in row, f"`{name}`'s help is not shown whole: {row}"
    head, sep, examples = text.rpartition("Example:")
    assert sep, f"`tokenjoule {' '.join(path)} --help` has no 'Example:' block"
    assert "╰" in head and "╰" not in examples, "the examples should come after the options"
    lines = [line.strip() for line in examples.splitlines() if line.strip()]
    # one example a line: none starts mid-line (`--engine tokenjoule --mode` names the engine, not a command)
    assert lines and all(line.startswith("tokenjoule ") and not re.search(r" tokenjoule [a-z]", line)
                         for line in lines), lines


def test_prose_is_reflowed_not_broken_where_the_docstring_wraps():
    text = _help(("simulate",))
    assert ("With no arguments: the bundled Azure conversation 2023 trace, the shipped H100 Llama-3.1-8B profile, "
            "continuous batching on one replica.") in text


def test_square_brackets_in_help_are_text_not_markup():
    rows = _option_rows(_help(("trace", "stats")))
    assert "[t, t+S)" in rows["--spread-buckets-s"]
    assert "[default: (the profile's, else H100-SXM)]" in _option_rows(_help(("simulate",)))["--gpu"]
