"""Every command's `--help` laid out for a terminal: prose reflowed, text kept literal, the examples last.

Docstrings are wrapped at 120 columns in the source and end with an `Example:` block; typer prints a command's
help above its options, in rich markup. Left as it is, the source's line breaks show through the terminal's own
wrapping, the examples sit above the options, and square brackets are read as markup (an option's help that said
`[default: 8]` lost those words). `lay_out_help` rewrites the command tree once, before click renders it.
"""

from __future__ import annotations

from typing import Any

from rich.markup import escape

EXAMPLE_HEADINGS = ("Example:", "Examples:")


def lay_out_help(command: Any) -> None:
    """Lay out the help of `command` (a click command or group) and of every command under it, in place.

    The help's paragraphs each become one line (the terminal wraps them); the `Example:` block moves to the
    epilog, which typer prints after the options, one example per paragraph so that typer's older releases (which
    join an epilog's single line breaks) print one per line too. Help texts are escaped: they are plain text.
    Call it once on each tree typer builds (it builds a new one for every invocation).
    """
    if command.help:
        prose, examples = split_examples(command.help)
        command.help = "\n\n".join(escape(reflow(paragraph)) for paragraph in prose)
        if examples:
            command.epilog = "\n\n".join([EXAMPLE_HEADINGS[0], *(escape(line) for line in examples)])
    for param in command.params:
        if getattr(param, "help", None):
            param.help = escape(param.help)
    for sub in getattr(command, "commands", {}).values():
        lay_out_help(sub)


def split_examples(help_text: str) -> tuple[list[str], list[str]]:
    """The help's paragraphs before its `Example:` block, and the block's command lines (stripped)."""
    paragraphs = [p for p in help_text.strip().split("\n\n") if p.strip()]
    for i, paragraph in enumerate(paragraphs):
        first, _, rest = paragraph.strip().partition("\n")
        if first.strip() in EXAMPLE_HEADINGS:
            lines = "\n".join([rest, *paragraphs[i + 1:]]).splitlines()
            return paragraphs[:i], [line.strip() for line in lines if line.strip()]
    return paragraphs, []


def reflow(paragraph: str) -> str:
    """A paragraph on one line, unless it is laid out by hand (an indented line or a `- ` list item)."""
    lines = paragraph.strip().splitlines()
    if any(line.startswith((" ", "\t", "- ")) for line in lines[1:]):
        return paragraph.strip()
    return " ".join(line.strip() for line in lines)
