"""The trace-loading flags, declared once for every command that reads a trace file.

`@trace_options` adds `--map`, `--time-unit`, `--zero-output`, `--unsorted`, `--spread-buckets-s`, `--arrivals`,
`--rate` and `--cv` to a Typer command and hands the command one `LoadOptions` (its `load_options` parameter),
seeded by the command's own `--seed`. `tokenjoule trace stats|bin|convert`, `simulate`, `compare` and `project` use
it, so the flags read, default and fail the same everywhere; `read_trace` (whole) and `BatchReader` (streamed)
apply them.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from tokenjoule.traces.loaders import LoadOptions

_PANEL = "Trace loading"
# (parameter, LoadOptions field, flag, type, default, help, what the default means when it is None): the flags, in
# the order --help lists them.
_FLAGS = (
    ("mapping", "mapping", "--map", str | None, None,
     "Column mapping for a trace in another layout, e.g. 'arrival_s=ts,input_tokens=in,output_tokens=out'.",
     "none: a detected format"),
    ("time_unit", "time_unit", "--time-unit", str, "s", "Unit of a mapped arrival column: s, ms, us or datetime.",
     True),
    ("zero_output", "zero_output", "--zero-output", str, "drop",
     "Rows with 0 output tokens (e.g. BurstGPT failures): drop or keep. The simulator needs >= 1 output token.", True),
    ("unsorted", "unsorted", "--unsorted", str, "sort", "Unsorted arrivals: sort (and say so) or refuse.", True),
    ("spread_buckets_s", "spread_buckets_s", "--spread-buckets-s", float | None, None,
     "Spread arrivals uniformly over [t, t+S) s (Mooncake's 3 s buckets), seeded by --seed.", "arrivals as given"),
    ("arrivals", "arrivals", "--arrivals", str | None, None,
     "Synthesize arrivals for traces without timestamps: poisson, gamma or zero (seeded by --seed).",
     "the trace's timestamps"),
    ("rate", "rate_per_s", "--rate", float | None, None, "Arrival rate for synthesized arrivals, requests/s.",
     "none; poisson and gamma need it"),
    ("cv", "cv", "--cv", float, 1.0, "Inter-arrival coefficient of variation for gamma arrivals.", True),
)


def load_options(seed: int, mapping: str | None = None, time_unit: str = "s", zero_output: str = "drop",
                 unsorted: str = "sort", spread_buckets_s: float | None = None, arrivals: str | None = None,
                 rate: float | None = None, cv: float = 1.0) -> LoadOptions:
    """The LoadOptions the trace flags describe (parameters named as the flags; `--map` parsed here).

    Raises:
        TraceOptionError: a malformed `--map`, or a value LoadOptions refuses.
    """
    from tokenjoule.traces.loaders import LoadOptions

    return LoadOptions(_parse_mapping(mapping), time_unit, zero_output, unsorted, spread_buckets_s, seed, arrivals,
                       rate, cv)


def trace_flags_set(options: LoadOptions) -> list[str]:
    """The trace flags set to something other than their default, as typed on the command line (`--map`)."""
    return [flag for _, field, flag, _, default, *_ in _FLAGS if getattr(options, field) != default]


def trace_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give a Typer command the trace flags; it receives them as one `load_options: LoadOptions` argument.

    The command declares `load_options` (not shown to Typer) and `seed` (its `--seed`, which seeds the load too).
    """
    signature = inspect.signature(command)
    assert {"load_options", "seed"} <= set(signature.parameters), f"{command.__name__}: no load_options or seed"
    own = [p.replace(annotation=_resolve(p.annotation, command)) for p in signature.parameters.values()
           if p.name != "load_options"]
    flags = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[
                 kind, typer.Option(flag, help=text, show_default=shown, rich_help_panel=_PANEL)])
             for name, _, flag, kind, default, text, shown in _FLAGS]

    @functools.wraps(command)
    def with_trace_options(**kwargs: Any) -> Any:
        values = {name: kwargs.pop(name) for name, *_ in _FLAGS}
        return command(**kwargs, load_options=load_options(kwargs["seed"], **values))

    params = own + flags
    with_trace_options.__signature__ = signature.replace(parameters=params, return_annotation=None)
    with_trace_options.__annotations__ = {p.name: p.annotation for p in params}
    return with_trace_options


def _resolve(annotation: Any, command: Callable[..., Any]) -> Any:
    """A string annotation (postponed evaluation) evaluated where the command was written."""
    return eval(annotation, command.__globals__) if isinstance(annotation, str) else annotation


def _parse_mapping(text: str | None) -> dict[str, str] | None:
    from tokenjoule.traces.schema import TraceOptionError  # here, so that declaring the flags loads no pyarrow

    if not text:
        return None
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    if any(len(p) != 2 for p in pairs):
        raise TraceOptionError(f"--map {text!r}: expected field=column pairs separated by commas")
    return {k.strip(): v.strip() for k, v in pairs}
