"""Bin requests by (input, output) length with ceiling mapping, optionally per time window; vectorised.

A request goes to the smallest edge that is >= its length: with the paper's input edges, 128 tokens go to bin 128 and
129 to bin 256 (Fernandez et al., ACL 2025, bin requests by these prompt/output sizes). Lengths above the last edge
are out of range: excluded (default) or clamped into the last bin, and the count of each is reported, so that
counts.sum() + excluded == rows always holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from tokenjoule.traces.schema import Trace, TraceOptionError

PAPER_INPUT_EDGES = (32, 128, 256, 512, 1024, 2048, 4096, 8192)
PAPER_OUTPUT_EDGES = (8, 16, 32, 64, 128, 256, 512)
OUT_OF_RANGE = ("exclude", "clamp")


@dataclass(frozen=True, slots=True)
class BinSpec:
    """Bin edges (upper bounds, tokens) and what to do with lengths above the last edge.

    Attributes:
        input_edges: strictly increasing upper edges for prompt lengths.
        output_edges: strictly increasing upper edges for output lengths.
        out_of_range: "exclude" or "clamp" (into the last bin).
    """

    input_edges: tuple[int, ...] = PAPER_INPUT_EDGES
    output_edges: tuple[int, ...] = PAPER_OUTPUT_EDGES
    out_of_range: str = "exclude"

    def __post_init__(self) -> None:
        for name, flag in (("input_edges", "--input-edges"), ("output_edges", "--output-edges")):
            edges = np.asarray(getattr(self, name))
            if edges.ndim != 1 or len(edges) == 0 or not bool(np.all(np.diff(edges) > 0)) or edges[0] < 0:
                shown = ",".join(str(e) for e in np.ravel(edges))
                raise TraceOptionError(f"{flag} {shown}: must be non-empty, non-negative and strictly increasing")
        if self.out_of_range not in OUT_OF_RANGE:
            raise TraceOptionError(f"--out-of-range {self.out_of_range!r}: must be one of {', '.join(OUT_OF_RANGE)}")

    @property
    def shape(self) -> tuple[int, int]:
        """(number of input bins, number of output bins)."""
        return len(self.input_edges), len(self.output_edges)


@dataclass(frozen=True, slots=True)
class BinCounts:
    """Request counts per (window, input bin, output bin).

    Attributes:
        spec: the bins.
        counts: int64 array of shape (n_windows, n_input_bins, n_output_bins); one window when not windowed.
        rows: requests seen.
        excluded: requests left out (out of range with out_of_range="exclude").
        clamped: requests moved into a last bin (out_of_range="clamp").
        input_above: requests whose input exceeds the last input edge (excluded or clamped).
        output_above: requests whose output exceeds the last output edge (excluded or clamped).
        window_s: window length in seconds, or None.
    """

    spec: BinSpec
    counts: np.ndarray
    rows: int
    excluded: int
    clamped: int
    input_above: int
    output_above: int
    window_s: float | None = None

    @property
    def binned(self) -> int:
        """Requests counted in some bin."""
        return int(self.counts.sum())

    def matrix(self) -> np.ndarray:
        """Counts summed over windows, shape (n_input_bins, n_output_bins)."""
        return self.counts.sum(axis=0)

    def to_table(self) -> pa.Table:
        """Tidy table: window, input_bin_tokens, output_bin_tokens, count (non-zero cells only)."""
        w, i, o = np.nonzero(self.counts)
        return pa.table({
            "window": pa.array(w, pa.int64()),
            "input_bin_tokens": pa.array(np.asarray(self.spec.input_edges)[i], pa.int64()),
            "output_bin_tokens": pa.array(np.asarray(self.spec.output_edges)[o], pa.int64()),
            "count": pa.array(self.counts[w, i, o], pa.int64()),
        })

    def to_dict(self) -> dict:
        """JSON-ready summary (the matrix per window as nested lists)."""
        return {
            "input_edges": list(self.spec.input_edges), "output_edges": list(self.spec.output_edges),
            "out_of_range": self.spec.out_of_range, "rows": self.rows, "binned": self.binned,
            "excluded": self.excluded, "clamped": self.clamped, "input_above": self.input_above,
            "output_above": self.output_above, "window_s": self.window_s, "counts": self.counts.tolist(),
        }


def bin_index(tokens: np.ndarray, edges: tuple[int, ...]) -> np.ndarray:
    """Ceiling bin of each length: the first edge >= it; len(edges) means above the last edge."""
    return np.searchsorted(np.asarray(edges), tokens, side="left")


def bin_arrays(input_tokens: np.ndarray, output_tokens: np.ndarray, spec: BinSpec | None = None,
               arrival_s: np.ndarray | None = None, window_s: float | None = None) -> BinCounts:
    """Count requests per (input bin, output bin), and per time window when `window_s` is given.

    Args:
        input_tokens: prompt lengths.
        output_tokens: output lengths.
        spec: bins (default: the paper's).
        arrival_s: arrival times, seconds from the trace start (needed for windows; window k is [k*w, (k+1)*w)).
        window_s: window length in seconds, or None for one window.

    Returns:
        The counts and the out-of-range tallies.
    """
    spec = spec or BinSpec()
    n_in, n_out = spec.shape
    i = bin_index(np.asarray(input_tokens), spec.input_edges)
    o = bin_index(np.asarray(output_tokens), spec.output_edges)
    in_above, out_above = i == n_in, o == n_out
    outside = in_above | out_above
    n_outside = int(outside.sum())
    if spec.out_of_range == "clamp":
        i, o = np.minimum(i, n_in - 1), np.minimum(o, n_out - 1)
    else:
        i, o = i[~outside], o[~outside]
    w = _window_index(arrival_s, window_s, outside if spec.out_of_range == "exclude" else None, len(i))
    n_windows = int(w.max()) + 1 if len(w) else 1
    flat = (w * n_in + i) * n_out + o
    counts = np.bincount(flat, minlength=n_windows * n_in * n_out).reshape(n_windows, n_in, n_out)
    clamp = spec.out_of_range == "clamp"
    return BinCounts(spec, counts.astype(np.int64), len(input_tokens), 0 if clamp else n_outside,
                     n_outside if clamp else 0, int(in_above.sum()), int(out_above.sum()), window_s)


def _window_index(arrival_s: np.ndarray | None, window_s: float | None, drop: np.ndarray | None, n: int) -> np.ndarray:
    if window_s is None:
        return np.zeros(n, np.int64)
    if arrival_s is None:
        raise TraceOptionError("window_s needs arrival_s")
    if not window_s > 0:
        raise TraceOptionError(f"--window-s {window_s:g}: must be > 0")
    arrival = np.asarray(arrival_s) if drop is None else np.asarray(arrival_s)[~drop]
    if len(arrival) and arrival.min() < 0:
        raise TraceOptionError(f"arrival_s must be >= 0 for windows (got {arrival.min()})")
    return np.floor(arrival / window_s).astype(np.int64)


def bin_trace(trace: Trace, spec: BinSpec | None = None, window_s: float | None = None) -> BinCounts:
    """Bin a loaded trace (see `bin_arrays`)."""
    return bin_arrays(trace.column("input_tokens"), trace.column("output_tokens"), spec,
                      trace.column("arrival_s"), window_s)


def merge(a: BinCounts, b: BinCounts) -> BinCounts:
    """Add two results over the same bins (windows padded to the longer one); used when streaming."""
    if a.spec != b.spec or a.window_s != b.window_s:
        raise ValueError("merge: bins and windows must match")
    n = max(len(a.counts), len(b.counts))
    counts = np.zeros((n, *a.spec.shape), np.int64)
    counts[: len(a.counts)] += a.counts
    counts[: len(b.counts)] += b.counts
    return BinCounts(a.spec, counts, a.rows + b.rows, a.excluded + b.excluded, a.clamped + b.clamped,
                     a.input_above + b.input_above, a.output_above + b.output_above, a.window_s)


def empty_counts(spec: BinSpec, window_s: float | None = None) -> BinCounts:
    """Zero counts, the start of a streamed sum."""
    return BinCounts(spec, np.zeros((1, *spec.shape), np.int64), 0, 0, 0, 0, 0, window_s)
