"""Every iteration of every replica, and the idle time between them: the run's exact power timeline (`--events`).

As SimPy's monitoring guide does, the simulation only appends: one tuple per prefill (or mixed) iteration and one per
decode stretch, k decode steps of a constant batch priced in closed form (`stretch.py`). `IterationLog.table`
builds the table at the end: each stretch becomes its k iterations (step j lasts `time_a + time_d j` s, or the
roofline's `bound` line where larger, and costs `energy_a + energy_d j + energy_per_s x its time` J: the terms
`StretchCost` sums), and each replica's gaps between
iterations become idle rows at idle power. A replica's rows tile [0, duration) and the energy column sums to the
run's GPU energy (busy plus idle). A run without `--events` keeps no log and pays one `is None` test per iteration.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from tokenjoule.sim.stretch import Line, StretchCost

# The columns of the table, in order, with their types.
SCHEMA = pa.schema([
    ("replica", pa.int32()), ("start_s", pa.float64()), ("duration_s", pa.float64()), ("kind", pa.string()),
    ("prefill_tokens", pa.int64()), ("prefill_seqs", pa.int32()), ("decode_seqs", pa.int32()),
    ("energy_j", pa.float64()), ("power_w", pa.float64()),
])


class IterationLog:
    """Iterations and decode stretches as the replicas run them (plain lists; `table` expands them at the end)."""

    __slots__ = ("iterations", "stretches")

    def __init__(self) -> None:
        self.iterations: list[tuple[int, float, float, float, int, int, int]] = []
        self.stretches: list[tuple[int, float, int, int, StretchCost]] = []

    def iteration(self, replica: int, start_s: float, time_s: float, energy_j: float, prefill_tokens: int,
                  prefill_seqs: int, decode_seqs: int) -> None:
        """One forward pass with prefill: `prefill_tokens` new tokens of `prefill_seqs` requests, plus decodes."""
        self.iterations.append((replica, start_s, time_s, energy_j, prefill_tokens, prefill_seqs, decode_seqs))

    def stretch(self, replica: int, start_s: float, steps: int, decode_seqs: int, cost: StretchCost) -> None:
        """`steps` decode steps of `decode_seqs` sequences from `start_s`, priced by `cost`."""
        self.stretches.append((replica, start_s, steps, decode_seqs, cost))

    def table(self, end_s: float, replicas: int, idle_power_w: float) -> pa.Table:
        """One row per iteration and per idle interval (see the module docstring), by start time then replica.

        Args:
            end_s: the run's end (s): the last idle interval of each replica runs to it.
            replicas: number of replicas.
            idle_power_w: a replica's idle power (W).

        Returns:
            A table with `SCHEMA`'s columns.
        """
        busy = [self._prefill_columns(), self._decode_columns()]
        busy.append(_idle_columns(self._intervals(), end_s, replicas, idle_power_w))
        cols = {name: np.concatenate([part[name] for part in busy]) for name in SCHEMA.names if name != "power_w"}
        duration = cols["duration_s"]
        cols["power_w"] = np.divide(cols["energy_j"], duration, out=np.zeros_like(duration), where=duration > 0)
        order = np.lexsort((cols["replica"], cols["start_s"]))
        return pa.table({f.name: pa.array(cols[f.name][order], f.type) for f in SCHEMA})

    def _intervals(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(replica, start_s, end_s) of every iteration and whole stretch, as the replicas were charged for them."""
        rep = [r[0] for r in self.iterations] + [s[0] for s in self.stretches]
        start = [r[1] for r in self.iterations] + [s[1] for s in self.stretches]
        end = [r[1] + r[2] for r in self.iterations] + [s[1] + s[4].time_s(s[2]) for s in self.stretches]
        return np.array(rep, np.int64), np.array(start, np.float64), np.array(end, np.float64)

    def _prefill_columns(self) -> dict[str, np.ndarray]:
        rows = self.iterations
        cols = {name: np.array([r[i] for r in rows]) for i, name in enumerate(
            ("replica", "start_s", "duration_s", "energy_j", "prefill_tokens", "prefill_seqs", "decode_seqs"))}
        cols["kind"] = np.where(cols["decode_seqs"] > 0, "mixed", "prefill") if rows else np.array([], str)
        return cols

    def _decode_columns(self) -> dict[str, np.ndarray]:
        """Each stretch's steps, vectorised over all stretches: step j of a stretch is priced at its j."""
        kept = [s for s in self.stretches if s[2] > 0]
        steps = np.array([s[2] for s in kept], np.int64)
        first = np.cumsum(steps) - steps  # the row of each stretch's step 0
        j = np.arange(steps.sum()) - np.repeat(first, steps)  # each row's step number within its stretch

        def each(values: list[float]) -> np.ndarray:  # a value per stretch, on each of its rows
            return np.repeat(np.array(values, np.float64), steps)

        costs = [s[4] for s in kept]
        bounds = [c.bound or Line(c.time_a, c.time_d) for c in costs]  # a second time line only for the roofline
        time_s = np.maximum(each([c.time_a for c in costs]) + each([c.time_d for c in costs]) * j,
                            each([b.a for b in bounds]) + each([b.d for b in bounds]) * j)
        energy_j = (each([c.energy_a for c in costs]) + each([c.energy_d for c in costs]) * j
                    + each([c.energy_per_s for c in costs]) * time_s)
        elapsed = np.cumsum(time_s) - time_s  # time before each row, counted from the first stretch's step 0
        start_s = each([s[1] for s in kept]) + elapsed - np.repeat(elapsed[first], steps)
        n = len(j)
        return {"replica": np.repeat(np.array([s[0] for s in kept], np.int64), steps), "start_s": start_s,
                "duration_s": time_s, "energy_j": energy_j, "prefill_tokens": np.zeros(n, np.int64),
                "prefill_seqs": np.zeros(n, np.int64), "decode_seqs": each([s[3] for s in kept]),
                "kind": np.full(n, "decode")}


def _idle_columns(intervals: tuple[np.ndarray, np.ndarray, np.ndarray], end_s: float, replicas: int,
                  idle_power_w: float) -> dict[str, np.ndarray]:
    """Each replica's gaps: before each busy interval (from the previous one's end, or 0), and after its last."""
    rep, start, end = intervals
    order = np.lexsort((start, rep))
    rep, start, end = rep[order], start[order], end[order]
    first = np.r_[True, rep[1:] != rep[:-1]][: len(rep)]  # a replica's first interval
    last = np.r_[rep[1:] != rep[:-1], True][: len(rep)]
    last_end = np.zeros(replicas)
    last_end[rep[last]] = end[last]
    gap_start = np.concatenate([np.where(first, 0.0, np.r_[0.0, end[:-1]][: len(rep)]), last_end])
    gap_end = np.concatenate([start, np.full(replicas, end_s)])
    gap_rep = np.concatenate([rep, np.arange(replicas)])
    keep = gap_end > gap_start
    duration = (gap_end - gap_start)[keep]
    n = len(duration)
    return {"replica": gap_rep[keep], "start_s": gap_start[keep], "duration_s": duration,
            "energy_j": idle_power_w * duration, "prefill_tokens": np.zeros(n, np.int64),
            "prefill_seqs": np.zeros(n, np.int64), "decode_seqs": np.zeros(n, np.int64), "kind": np.full(n, "idle")}
