"""Notes on what a run's numbers cannot be trusted for: overload, pricing beyond the profile's measured range, context.

A simulation always returns numbers; these say when they describe something other than a steady serving system priced
inside its calibration. Each note is a JSON-ready dict with a machine-readable `kind`, a one-line `message` and the
numbers behind it (the summary's `notes`; `tokenjoule simulate` prints the messages under its table):

- "overload": the replicas served less than was offered and the queue kept growing, so latencies (and J/request)
  describe a backlog, not a steady state. Fires when the mean queueing delay of the last tenth of arrivals exceeds the
  first tenth's by `QUEUE_GROWTH_S_PER_S` seconds per second of arrivals between them (about offered load >= 1.1x what
  was served: a backlog grows at offered / served - 1 seconds of waiting per second) and also exceeds the median
  time a request takes once scheduled (waiting dominates its latency). Arrivals all at one instant (an offline
  batch) count as growing when the last tenth waits longer than the first and than that median.
- "extrapolation": iterations priced beyond the profile's `MeasuredRange` (decode batch, tokens per prefill
  iteration, prompt length, decode context), counted while the run goes (`RangeTally`), with the furthest each went.
- "context_length": requests whose prompt plus output exceed the model's context (`max_position_embeddings`); they
  are rejected (reason "context_length") and not simulated.
- "context_unchecked": the model's context length is unknown, so no request was checked against it.
- "host_bound_prefill": a composed profile (`calibrate/compose.py`) prices a short eager prefill at its host's launch
  time, not at the GPU's work, and some finished requests have prompts that short. The host's speed moves such
  iterations by up to about 2x between machines and within minutes (`HOST_SPEED_EVIDENCE`), which a profile fitted
  once cannot follow, so their TTFT carries that uncertainty.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa

from tokenjoule.calibrate.profile import GPUProfile, MeasuredRange
from tokenjoule.kernels.spec import ModelSpec

# Seconds of queueing delay gained per second of arrivals (last tenth vs first tenth) above which a run is overloaded.
QUEUE_GROWTH_S_PER_S = 0.1
# The reject reason of a request longer than the model's context (checked by the router, after empty requests).
CONTEXT_REJECT = "context_length"
# The dimensions of an iteration a profile's measured range bounds, in `RangeTally`'s order.
DIMENSIONS = ("decode_seqs", "iteration_tokens", "prompt_tokens", "context_tokens")
# Where the host-speed figure of the "host_bound_prefill" note was measured (H200 hosts, 2026-12-04).
HOST_SPEED_EVIDENCE = ("measured on H200 hosts: validation/h200_2026-12-04_prefill_host/ and "
                       "validation/h200_2026-12-04_lease9_models/")
_WHAT = {"decode_seqs": "decode batch", "iteration_tokens": "tokens per prefill iteration",
         "prompt_tokens": "prompt tokens", "context_tokens": "context tokens"}


class RunNoteWarning(UserWarning):
    """A note on a run (overload, extrapolation, context length) or on its trace (arrivals out of order, repeated ids).

    Raised by the Python API `tokenjoule.simulate`, where the command prints its notes.
    """


class RangeTally:
    """Counts the iterations a run prices beyond a profile's measured range, and the furthest each dimension goes.

    The processes report every priced iteration (a decode stretch's steps at once, in closed form); an iteration
    inside the range costs a few comparisons. The replicas make those comparisons themselves against `limits` and, for
    an iteration inside the range, only add to `iterations` (a call saved per iteration and per decode stretch).

    Attributes:
        measured: the profile's range.
        limits: the largest decode batch, iteration tokens, prompt tokens and context inside the range (inf: none).
        iterations: iterations priced (each decode step one).
        iterations_beyond: of those, iterations beyond the range in any dimension.
        beyond: iterations beyond the range, per dimension (DIMENSIONS order).
        furthest: the largest value priced beyond the range, per dimension (0 where never beyond).
    """

    def __init__(self, measured: MeasuredRange) -> None:
        self.measured = measured
        self._seqs, self._tokens = measured.decode_seqs, measured.iteration_tokens
        self._prompt = math.inf if measured.prompt_tokens is None else measured.prompt_tokens
        self._ctx = math.inf if measured.context_tokens is None else measured.context_tokens
        self.context_tokens = self._ctx  # the longest measured context (inf where unknown): longer ones are counted
        self.limits = (self._seqs, self._tokens, self._prompt, self._ctx)
        self.iterations = 0
        self.iterations_beyond = 0
        self.beyond = [0] * len(DIMENSIONS)
        self.furthest = [0] * len(DIMENSIONS)

    def iteration(self, decode_seqs: int, new_tokens: int, prompt_end_tokens: int, max_ctx_tokens: int) -> None:
        """One iteration with prefill: its decode batch, new tokens, furthest prompt position and longest context."""
        self.iterations += 1
        if (decode_seqs > self._seqs or new_tokens > self._tokens or prompt_end_tokens > self._prompt
                or max_ctx_tokens > self._ctx):
            self.iterations_beyond += 1
            limits = (self._seqs, self._tokens, self._prompt, self._ctx)
            for i, value in enumerate((decode_seqs, new_tokens, prompt_end_tokens, max_ctx_tokens)):
                if value > limits[i]:
                    self.beyond[i] += 1
                    self.furthest[i] = max(self.furthest[i], value)

    def decode(self, batch: int, max_ctx_tokens: int, steps: int) -> None:
        """`steps` decode steps of `batch` sequences whose longest context is `max_ctx_tokens` at the first step."""
        self.iterations += steps
        seqs, ctx = self._seqs, self._ctx
        last_ctx = max_ctx_tokens + steps - 1  # the longest context grows by one a step
        if steps <= 0 or (batch <= seqs and last_ctx <= ctx):
            return
        ctx_steps = steps - max(0, ctx - max_ctx_tokens + 1) if last_ctx > ctx else 0
        if batch > seqs:
            self.beyond[0] += steps
            self.furthest[0] = max(self.furthest[0], batch)
        if ctx_steps:
            self.beyond[3] += ctx_steps
            self.furthest[3] = max(self.furthest[3], last_ctx)
        self.iterations_beyond += steps if batch > seqs else ctx_steps


def run_notes(table: pa.Table, summary: dict[str, Any], tally: RangeTally | None, spec: ModelSpec,
              profile: GPUProfile | None = None) -> list[dict]:
    """The notes on a finished run (see the module docstring), in a fixed order; [] when there is nothing to say.

    Args:
        table: the per-request table (`metrics.request_table`).
        summary: the run's summary (`metrics.summarize`).
        tally: what the run priced beyond its profile's range, or None when the cost model has no measured range.
        spec: the model served (its context length).
        profile: the profile that priced the run (None: a roofline; only a composed one can be host-bound here).
    """
    notes = [overload_note(table, summary), extrapolation_note(table, tally), *context_notes(table, spec),
             host_bound_note(table, profile)]
    return [n for n in notes if n is not None]


def _column(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False)


def _seconds(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def overload_note(table: pa.Table, summary: dict[str, Any]) -> dict[str, Any] | None:
    """The "overload" note when the queue grew through the run (see the module docstring), else None."""
    done = _column(table, "status") == "finished"
    arrival, queue = _column(table, "arrival_s")[done], _column(table, "queue_s")[done]
    if len(arrival) < 2:
        return None
    tenth = max(1, len(arrival) // 10)  # the table is in arrival order
    queue_first, queue_last = float(queue[:tenth].mean()), float(queue[-tenth:].mean())
    span_s = float(arrival[-1] - arrival[0])
    between_s = float(arrival[-tenth:].mean() - arrival[:tenth].mean())
    growth = (queue_last - queue_first) / between_s if between_s > 0 else None
    service_p50_s = float(np.median(_column(table, "e2e_s")[done] - queue))
    growing = growth >= QUEUE_GROWTH_S_PER_S if growth is not None else queue_last > queue_first
    if not (growing and queue_last > service_p50_s):
        return None
    tokens = int(_column(table, "input_tokens")[done].sum() + _column(table, "output_tokens")[done].sum())
    offered = len(arrival) / span_s if span_s > 0 else None
    served, utilization = summary["throughput_req_s"], summary["utilization"]
    drain_s = summary["duration_s"] - float(arrival[-1])
    if offered is None:
        load = f"all {len(arrival):,} requests arrive at once (t={arrival[0]:g} s), served at {served:.3g} req/s"
        meaning = "latencies describe the order a batch was worked through, not a steady state"
    else:
        load = (f"{offered:.3g} req/s offered over {_seconds(span_s)} s of arrivals, {served:.3g} req/s served at "
                f"{utilization:.1%} utilization")
        meaning = "latencies and J/request describe a growing backlog, not a steady state"
    message = (f"overload: {load}; queueing delay grew from {_seconds(queue_first)} s (first tenth of arrivals) to "
               f"{_seconds(queue_last)} s (last tenth), and the queue took {_seconds(drain_s)} s to drain after the "
               f"last arrival: {meaning}")
    return {"kind": "overload", "message": message, "offered_req_s": offered, "served_req_s": served,
            "offered_tokens_s": tokens / span_s if span_s > 0 else None,
            "served_tokens_s": tokens / summary["duration_s"], "utilization": utilization, "arrival_span_s": span_s,
            "queue_first_tenth_s": queue_first, "queue_last_tenth_s": queue_last, "queue_growth_s_per_s": growth,
            "service_p50_s": service_p50_s, "drain_s": drain_s}


def extrapolation_note(table: pa.Table, tally: RangeTally | None) -> dict[str, Any] | None:
    """The "extrapolation" note when any iteration was priced beyond the profile's measured range, else None.

    `requests_beyond` counts the finished requests whose own prompt, or prompt plus output, exceeds the measured
    prompt or context length; a short request batched beside a long one (or into a batch beyond the measured
    decode batch) is priced beyond the range too, and is counted in the iterations only.
    """
    if tally is None or not tally.iterations_beyond:
        return None
    m = tally.measured
    done = _column(table, "status") == "finished"
    prompt, output = _column(table, "input_tokens")[done], _column(table, "output_tokens")[done]
    long_prompt = prompt > (m.prompt_tokens if m.prompt_tokens is not None else np.inf)
    long_ctx = prompt + output - 1 > (m.context_tokens if m.context_tokens is not None else np.inf)
    dims = {}
    for i, name in enumerate(DIMENSIONS):
        if tally.beyond[i]:
            limit = getattr(m, name)
            dims[name] = {"measured_max": limit, "priced_max": tally.furthest[i],
                          "times": tally.furthest[i] / limit, "iterations": tally.beyond[i]}
    worst = max(d["times"] for d in dims.values())
    where = "; ".join(f"{_WHAT[k]} up to {d['priced_max']:,} ({d['times']:.1f}x the measured {d['measured_max']:,})"
                      for k, d in dims.items())
    range_of, last = (("measured range", "the last measurement") if m.source == "grid" else
                      ("fitted range (its curves' last knots; it records no grid)", "the last knot"))
    requests = int((long_prompt | long_ctx).sum())
    longer = f"; {requests:,} requests are longer than the prompts or contexts it measured" if requests else ""
    message = (f"extrapolation: {tally.iterations_beyond:,} of {tally.iterations:,} iterations were priced beyond "
               f"the profile's {range_of}: {where}{longer}. Their costs extend the curves past {last}")
    return {"kind": "extrapolation", "message": message, "range_source": m.source, "iterations": tally.iterations,
            "iterations_beyond": tally.iterations_beyond, "requests_beyond": requests, "max_times": worst,
            "dimensions": dims}


def context_notes(table: pa.Table, spec: ModelSpec) -> list[dict[str, Any]]:
    """The "context_length" note when requests were rejected for it, or "context_unchecked" when it is unknown."""
    limit = spec.max_position_embeddings
    if limit is None:
        return [{"kind": "context_unchecked", "model": spec.name, "message": (
            f"context length unknown: the profile's model {spec.name!r} records no max_position_embeddings and is no "
            "preset, so no request was checked against a context limit")}]
    rejected = _column(table, "reject_reason") == CONTEXT_REJECT
    if not rejected.any():
        return []
    asked = _column(table, "input_tokens")[rejected].astype(np.int64) + _column(table, "output_tokens")[rejected]
    n = int(rejected.sum())
    return [{"kind": "context_length", "model": spec.name, "max_context_tokens": limit, "rejected": n,
             "longest_tokens": int(asked.max()), "message": (
                 f"context length: {n:,} requests rejected, not simulated: their prompt plus output exceeds "
                 f"{spec.name}'s context of {limit:,} tokens (the longest asks for {int(asked.max()):,})")}]


def host_bound_note(table: pa.Table, profile: GPUProfile | None) -> dict[str, Any] | None:
    """The "host_bound_prefill" note for a composed profile whose host floor covers some finished requests' prompts.

    Counted by prompt length alone: a short prompt batched with others into a longer prefill iteration leaves the
    floor, so the count is the requests that *can* meet it.
    """
    host = (profile.method.get("compose") or {}).get("host_bound_prefill") if profile is not None else None
    if not host or not profile.method.get("composed"):
        return None
    below = host["gpu_exceeds_host_at_tokens"]
    done = _column(table, "status") == "finished"
    prompts = _column(table, "input_tokens")[done]
    short = int((prompts < below).sum()) if below is not None else len(prompts)
    if not short:
        return None
    which = f"a prefill of fewer than about {below:,} tokens" if below is not None else "every prefill"
    message = (f"host_bound_prefill: this composed profile prices {which} by its host's launch time, "
               f"{host['host_s'] * 1e3:.1f} ms (fitted on other models' measured iterations), not by the GPU's work; "
               f"{short:,} of {len(prompts):,} finished requests have prompts that short. The host's speed moved such "
               f"iterations by up to about 2x between machines and within minutes ({HOST_SPEED_EVIDENCE}), so their "
               "TTFT carries that uncertainty")
    return {"kind": "host_bound_prefill", "message": message, "host_s": host["host_s"],
            "gpu_exceeds_host_at_tokens": below, "requests_short": short, "requests": len(prompts)}
