"""`tokenjoule trace ...`: inspect, bin, synthesize and convert request traces."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import numpy as np
import pyarrow as pa
import typer
from rich import box
from rich.console import Console
from rich.table import Table

from tokenjoule.console import progress
from tokenjoule.traces import transforms
from tokenjoule.traces.binning import PAPER_INPUT_EDGES, PAPER_OUTPUT_EDGES, BinCounts, BinSpec
from tokenjoule.traces.files import save_blocks, save_trace, write_atomic
from tokenjoule.traces.loaders import FORMAT_NAMES, LoadOptions, read_trace
from tokenjoule.traces.options import trace_options
from tokenjoule.traces.schema import TraceOptionError
from tokenjoule.traces.stream import ScanResult, TraceStats, scan
from tokenjoule.traces.synth import ARRIVAL_PROCESSES, SynthSpec, synthesize_blocks

app = typer.Typer(help="Inspect, bin, synthesize and convert request traces.\n\n"
                  "Example:\n    tokenjoule trace stats azure-conv-2023\n"
                  "    tokenjoule trace synth synth.parquet --requests 100000 --rate 20 --process gamma --cv 3\n"
                  "    tokenjoule trace bin synth.parquet --json", no_args_is_help=True)

Source = Annotated[str, typer.Argument(help="Trace file (CSV, Parquet, JSONL) or bundled name: azure-conv-2023, "
                                            "azure-code-2023.", show_default=False)]
Fmt = Annotated[str | None, typer.Option("--format", "-f", help=f"Format: {', '.join(FORMAT_NAMES)}.",
                                         show_default="detect from the content")]
Seed = Annotated[int, typer.Option(help="Random seed (spreading, synthesized arrivals).")]
Cv = Annotated[float, typer.Option(help="Inter-arrival coefficient of variation for gamma arrivals.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]


def _edges(text: str | None, default: tuple[int, ...], flag: str) -> tuple[int, ...]:
    if not text:
        return default
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError as err:
        raise TraceOptionError(f"{flag} {text!r}: expected comma-separated integers, e.g. 32,128,512") from err


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _print_stats(stats: TraceStats, result: ScanResult) -> None:
    console = Console()
    head = Table(title=f"{stats.source}", show_header=False)
    head.add_row("requests", f"{stats.rows:,}")
    if result.rows_dropped:
        head.add_row("dropped (0 output tokens)", f"{result.rows_dropped:,} of {result.rows_read:,}")
    head.add_row("span", f"{stats.span_s:,.1f} s")
    head.add_row("rate", f"{_num(stats.rate_per_s, 3)} req/s")
    head.add_row("inter-arrival CV", _num(stats.interarrival_cv, 2))
    head.add_row("index of dispersion (1 s)", _num(stats.dispersion_1s, 2))
    for note in result.notes:
        head.add_row("note", note)
    console.print(head)
    tokens = Table("tokens", "min", "median", "p90", "p99", "max", "mean")
    for name, s in (("input", stats.input_tokens), ("output", stats.output_tokens)):
        tokens.add_row(name, f"{s.min:,}", _num(s.p50, 1 if s.p50 and s.p50 % 1 else 0), _num(s.p90, 1),
                       _num(s.p99, 1), f"{s.max:,}", _num(s.mean, 1))
    console.print(tokens)


@app.command()
@trace_options
def stats(source: Source, fmt: Fmt = None, seed: Seed = 0, as_json: AsJson = False, *,
          load_options: LoadOptions) -> None:
    """Summarize a trace: requests, span, rate, token percentiles and burstiness, streamed in constant memory.

    Burstiness: the inter-arrival CV and the index of dispersion of per-second counts (both 1 for Poisson).

    Example:
        tokenjoule trace stats azure-conv-2023
        tokenjoule trace stats burstgpt.csv --json
        tokenjoule trace stats my.csv --map arrival_s=t,input_tokens=i,output_tokens=o
    """
    with progress("reading") as tick:
        result = scan(source, fmt, options=load_options, progress=tick)
    if as_json:
        payload = {**result.stats.to_dict(), "rows_read": result.rows_read, "rows_dropped": result.rows_dropped,
                   "notes": list(result.notes)}
        typer.echo(json.dumps(payload))
    else:
        _print_stats(result.stats, result)


def _print_bins(source: str, bins: BinCounts) -> None:
    matrix = bins.matrix()
    headers = ("input \\ output", *(f"<={e}" for e in bins.spec.output_edges), "total")
    rows = [(f"<={edge}", *(f"{c:,}" for c in row), f"{int(row.sum()):,}")
            for edge, row in zip(bins.spec.input_edges, matrix, strict=True)]
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    console = Console()
    console.width = max(console.width, sum(w + 3 for w in widths) + 4)  # never cut a count short
    table = Table(title=f"{source}: requests per (input, output) bin", box=box.SIMPLE_HEAD)
    for header, width in zip(headers, widths, strict=True):
        table.add_column(header, justify="right", no_wrap=True, min_width=width)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    how = "clamped into the last bin" if bins.spec.out_of_range == "clamp" else "excluded"
    console.print(f"{bins.rows:,} requests, {bins.binned:,} binned, {bins.excluded + bins.clamped:,} out of range "
                  f"({how}; input above {bins.input_above:,}, output above {bins.output_above:,})"
                  + (f", {len(bins.counts)} windows of {bins.window_s} s" if bins.window_s else ""))


@app.command("bin")
@trace_options
def bin_(source: Source, fmt: Fmt = None, input_edges: Annotated[str | None, typer.Option(
             help="Input bin upper edges, comma-separated.", show_default="the paper's 32,...,8192")] = None,
         output_edges: Annotated[str | None, typer.Option(
             help="Output bin upper edges.", show_default="the paper's 8,...,512")] = None,
         clamp: Annotated[bool, typer.Option(help="Clamp out-of-range lengths into the last bin instead of "
                                                  "excluding them.")] = False,
         window_s: Annotated[float | None, typer.Option(help="Count per time window of this many seconds.",
                                                        show_default="one count over the whole trace")] = None,
         out: Annotated[Path | None, typer.Option(help="Also write the tidy counts as Parquet.",
                                                  show_default="nothing written")] = None,
         seed: Seed = 0, as_json: AsJson = False, *, load_options: LoadOptions) -> None:
    """Count requests per (input, output) length bin, ceiling mapping (129 input tokens go to bin 256).

    Example:
        tokenjoule trace bin azure-conv-2023
        tokenjoule trace bin big.parquet --clamp --window-s 60 --json
    """
    spec = BinSpec(_edges(input_edges, PAPER_INPUT_EDGES, "--input-edges"),
                   _edges(output_edges, PAPER_OUTPUT_EDGES, "--output-edges"), "clamp" if clamp else "exclude")
    with progress("binning") as tick:
        result = scan(source, fmt, spec=spec, window_s=window_s, options=load_options, progress=tick)
    bins = result.bins
    if out is not None:
        import pyarrow.parquet as pq

        write_atomic(out, lambda tmp: pq.write_table(bins.to_table(), tmp))
    if as_json:
        typer.echo(json.dumps({"source": source, **bins.to_dict()}))
    else:
        _print_bins(source, bins)


@app.command()
def synth(out: Annotated[Path, typer.Argument(help="Parquet file to write.", show_default=False)],
          requests: Annotated[int, typer.Option("--requests", "-n", help="Number of requests.")] = 1000,
          rate: Annotated[float, typer.Option("--rate", help="Mean arrival rate, requests/s.")] = 1.0,
          process: Annotated[str, typer.Option(help=f"Arrivals: {', '.join(ARRIVAL_PROCESSES)} "
                                                    "(zero: all at t=0, an offline batch).")] = "poisson",
          cv: Cv = 1.0,
          lengths_from: Annotated[str | None, typer.Option(help="Resample (input, output) pairs from this trace "
                                                                "(file or bundled name).",
                                                           show_default="fixed lengths")] = None,
          input_tokens: Annotated[int, typer.Option(help="Fixed prompt length (without --lengths-from).")] = 512,
          output_tokens: Annotated[int, typer.Option(help="Fixed output length (without --lengths-from).")] = 128,
          seed: Seed = 0, as_json: AsJson = False) -> None:
    """Write a synthetic trace (Parquet): Poisson or Gamma arrivals at a rate, lengths resampled or fixed.

    Written a row group at a time, so memory stays flat however many requests; the same seed writes the same file.

    Example:
        tokenjoule trace synth p.parquet -n 5000 --rate 8 --lengths-from azure-conv-2023
        tokenjoule trace synth batch.parquet -n 256 --process zero --input-tokens 1024
    """
    spec = SynthSpec(requests, rate, process, cv, input_tokens, output_tokens)
    source = read_trace(lengths_from)[0] if lengths_from else None
    ends: list[float] = []  # the first and the last arrival written

    def blocks() -> Iterator[pa.Table]:
        for block in synthesize_blocks(spec, np.random.default_rng(seed), source):
            arrival = block.column("arrival_s")
            ends[:] = [ends[0] if ends else arrival[0].as_py(), arrival[-1].as_py()]
            yield block

    save_blocks(blocks(), out)
    span_s = ends[1] - ends[0] if requests > 1 else 0.0
    summary = {"path": str(out), "rows": requests, "span_s": span_s, "process": process, "rate_per_s": rate,
               "cv": cv, "seed": seed, "lengths_from": lengths_from}
    typer.echo(json.dumps(summary) if as_json else f"wrote {out}: {requests:,} requests over {span_s:,.1f} s")


@app.command()
@trace_options
def convert(source: Source, out: Annotated[Path, typer.Argument(help="Parquet file to write.", show_default=False)],
            fmt: Fmt = None,
            head: Annotated[int | None, typer.Option(help="Keep only the first N requests.",
                                                     show_default="all")] = None,
            start_s: Annotated[float | None, typer.Option(help="Keep arrivals from this second (re-zeroed).",
                                                          show_default="the start")] = None,
            end_s: Annotated[float | None, typer.Option(help="Keep arrivals before this second.",
                                                        show_default="the end")] = None,
            scale_rate: Annotated[float | None, typer.Option(help="Multiply the arrival rate by this factor.",
                                                             show_default="unchanged")] = None,
            seed: Seed = 0, as_json: AsJson = False, *, load_options: LoadOptions) -> None:
    """Convert any supported trace to canonical Parquet, optionally sliced, cut or rate-scaled.

    Example:
        tokenjoule trace convert burstgpt.csv burst.parquet --zero-output drop
        tokenjoule trace convert azure-conv-2023 peak.parquet --start-s 600 --end-s 1200
    """
    trace, report = read_trace(source, fmt, options=load_options)
    notes = [report.summary(), *(note.message for note in report.notes)]
    if start_s is not None or end_s is not None:
        trace, step = transforms.slice_window(trace, start_s or 0.0, end_s if end_s is not None else np.inf)
        notes.append(step.summary())
    if head is not None:
        trace, step = transforms.head(trace, head)
        notes.append(step.summary())
    if scale_rate is not None:
        trace, step = transforms.scale_rate(trace, scale_rate)
        notes.append(step.summary())
    save_trace(trace, out)
    if as_json:
        typer.echo(json.dumps({"path": str(out), "rows": len(trace), "span_s": trace.span_s, "format": report.fmt,
                               "rows_read": report.rows_read, "rows_dropped": report.rows_dropped, "notes": notes}))
    else:
        typer.echo("\n".join([*notes, f"wrote {out}: {len(trace):,} requests"]))


def register(root: typer.Typer) -> None:
    """Mount `trace` on the root app."""
    root.add_typer(app, name="trace")
