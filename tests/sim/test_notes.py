"""The run notes (`sim/notes.py`): the overload rule's threshold, the range tally's counting, the context notes."""

from __future__ import annotations

import dataclasses
import itertools
import warnings

import numpy as np
import pyarrow as pa
import pytest

import tokenjoule
from tokenjoule.calibrate.compose import KNOTS_TOKENS, compose_profile, eager_host_s, prefill_gpu_knot
from tokenjoule.calibrate.gpu_profile import load_gpu_profile
from tokenjoule.calibrate.profile import SHIPPED_DIR, MeasuredRange, load_profile
from tokenjoule.kernels.spec import ModelSpec
from tokenjoule.sim.notes import (
    QUEUE_GROWTH_S_PER_S,
    RangeTally,
    RunNoteWarning,
    context_notes,
    extrapolation_note,
    host_bound_note,
    overload_note,
)
from tokenjoule.sim.run import SimConfig, run
from tokenjoule.traces.schema import Trace

RANGE = MeasuredRange(decode_seqs=512, iteration_tokens=16384, prompt_tokens=16384, context_tokens=16384,
                      source="grid")


def _table(arrival_s, queue_s, service_s=1.0, inputs=None, outputs=None, reasons=None) -> pa.Table:
    arrival, queue = np.asarray(arrival_s, float), np.asarray(queue_s, float)
    n = len(arrival)
    reasons = np.asarray(reasons if reasons is not None else [""] * n, dtype=object)
    status = np.where(reasons == "", "finished", "rejected")
    return pa.table({"arrival_s": arrival, "queue_s": queue, "e2e_s": queue + service_s, "status": status,
                     "reject_reason": reasons.astype(str),
                     "input_tokens": pa.array(inputs if inputs is not None else [100] * n, pa.int32()),
                     "output_tokens": pa.array(outputs if outputs is not None else [10] * n, pa.int32())})


def _summary(table: pa.Table) -> dict:
    duration = float(np.nanmax(table.column("arrival_s").to_numpy() + table.column("e2e_s").to_numpy()))
    return {"throughput_req_s": table.num_rows / duration, "utilization": 1.0, "duration_s": duration}


# ---- overload ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("growth, fires", [(0.5, True), (2 * QUEUE_GROWTH_S_PER_S, True),
                                           (0.5 * QUEUE_GROWTH_S_PER_S, False), (0.0, False)])
def test_overload_fires_on_queue_growth_above_the_threshold(growth, fires):
    arrival = np.linspace(0.0, 1000.0, 1000)
    table = _table(arrival, growth * arrival)  # a queue growing `growth` s per s of arrivals
    found = overload_note(table, _summary(table))
    assert (found is not None) is fires
    if fires:
        assert found["queue_growth_s_per_s"] == pytest.approx(growth)


def test_overload_needs_waiting_to_dominate_the_service_time():
    arrival = np.linspace(0.0, 10.0, 1000)
    table = _table(arrival, 0.5 * arrival, service_s=30.0)  # grows, but the last tenth waits 4.7 s < 30 s of work
    assert overload_note(table, _summary(table)) is None
    table = _table(arrival, 0.5 * arrival, service_s=1.0)
    assert overload_note(table, _summary(table))["service_p50_s"] == pytest.approx(1.0)


def test_a_burst_at_the_start_that_drains_is_not_overload():
    arrival = np.linspace(0.0, 1000.0, 1000)
    table = _table(arrival, np.maximum(0.0, 200.0 - arrival))  # 200 s of backlog at t=0, gone by t=200
    assert overload_note(table, _summary(table)) is None


def test_arrivals_at_one_instant_are_overloaded_when_the_queue_grows():
    table = _table(np.zeros(100), np.arange(100) * 0.5)
    found = overload_note(table, _summary(table))
    assert found["offered_req_s"] is None and found["queue_growth_s_per_s"] is None
    assert found["queue_last_tenth_s"] == pytest.approx(np.arange(90, 100).mean() * 0.5)
    one_batch = _table(np.zeros(100), np.zeros(100))  # all served in one batch: nothing waited
    assert overload_note(one_batch, _summary(one_batch)) is None


def test_rejected_requests_do_not_count_as_offered_or_queued():
    arrival = np.linspace(0.0, 1000.0, 1000)
    queue = np.where(arrival > 900, np.nan, 0.01)  # the last tenth was rejected, nothing queued before
    reasons = np.where(arrival > 900, "kv_capacity", "")
    table = _table(arrival, queue, reasons=reasons)
    assert overload_note(table, _summary(table)) is None


# ---- the range tally -------------------------------------------------------------------------------------------


def _step_by_step(batch: int, max_ctx: int, steps: int) -> RangeTally:
    """What `RangeTally.decode` must count: each step one iteration, its longest context one more than before."""
    tally = RangeTally(RANGE)
    for j in range(steps):
        tally.iterations += 1
        over = [batch > RANGE.decode_seqs, max_ctx + j > RANGE.context_tokens]
        tally.iterations_beyond += any(over)
        if over[0]:
            tally.beyond[0] += 1
            tally.furthest[0] = max(tally.furthest[0], batch)
        if over[1]:
            tally.beyond[3] += 1
            tally.furthest[3] = max(tally.furthest[3], max_ctx + j)
    return tally


@pytest.mark.parametrize("batch, max_ctx, steps", itertools.product((1, 512, 513), (100, 16380, 16384, 16385, 40000),
                                                                     (0, 1, 4, 5, 6, 50)))
def test_a_decode_stretch_counts_as_its_steps_one_by_one(batch, max_ctx, steps):
    closed, loop = RangeTally(RANGE), _step_by_step(batch, max_ctx, steps)
    closed.decode(batch, max_ctx, steps)
    assert (closed.iterations, closed.iterations_beyond, closed.beyond, closed.furthest) == \
        (loop.iterations, loop.iterations_beyond, loop.beyond, loop.furthest)


def test_an_iteration_counts_each_dimension_it_exceeds():
    tally = RangeTally(RANGE)
    tally.iteration(0, 16384, 16384, 0)  # at the edge: measured
    assert tally.iterations_beyond == 0
    tally.iteration(600, 20000, 20000, 0)
    tally.iteration(0, 2048, 30000, 0)
    assert tally.iterations == 3 and tally.iterations_beyond == 2
    assert tally.beyond == [1, 1, 2, 0] and tally.furthest == [600, 20000, 30000, 0]


def test_an_unknown_prompt_or_context_range_is_not_checked():
    tally = RangeTally(dataclasses.replace(RANGE, prompt_tokens=None, context_tokens=None, source="knots"))
    tally.iteration(0, 2048, 10**6, 10**6)
    tally.decode(8, 10**6, 100)
    assert tally.iterations == 101 and tally.iterations_beyond == 0


def test_extrapolation_note_names_the_furthest_dimension():
    tally = RangeTally(RANGE)
    tally.iteration(0, 2048, 40000, 0)
    tally.decode(2, 40000, 10)
    table = _table([0.0, 1.0, 2.0], [0.0, 0.0, 0.0], inputs=[40000, 100, 16384], outputs=[10, 10, 2])
    found = extrapolation_note(table, tally)
    assert found["iterations"] == 11 and found["iterations_beyond"] == 11
    assert found["requests_beyond"] == 2  # the 40,000-token prompt, and 16,384 + 2 - 1 tokens of context
    assert found["dimensions"]["context_tokens"]["priced_max"] == 40009
    assert found["max_times"] == pytest.approx(40009 / 16384)
    assert extrapolation_note(table, RangeTally(RANGE)) is None and extrapolation_note(table, None) is None


# ---- context length --------------------------------------------------------------------------------------------


def test_context_notes():
    spec = ModelSpec.from_name("qwen2.5-7b")  # 32,768 tokens
    table = _table([0.0, 1.0], [0.0, np.nan], inputs=[100, 40000], outputs=[10, 5], reasons=["", "context_length"])
    (found,) = context_notes(table, spec)
    assert found["kind"] == "context_length" and found["max_context_tokens"] == 32768
    assert found["rejected"] == 1 and found["longest_tokens"] == 40005
    assert context_notes(_table([0.0], [0.0]), spec) == []
    (unknown,) = context_notes(_table([0.0], [0.0]), dataclasses.replace(spec, max_position_embeddings=None))
    assert unknown["kind"] == "context_unchecked"


def test_roofline_runs_check_the_context_of_the_model_they_price():
    trace = Trace.from_columns([0.0, 0.1], [33000, 1000], [10, 10], source="t")  # > 32,768
    result = run(SimConfig(cost="roofline", model="qwen2.5-7b", policy="chunked"), trace)
    assert result.summary["rejected_by_reason"] == {"context_length": 1}


# ---- host-bound prefill ------------------------------------------------------------------------------------------


def _composed(name: str):
    return compose_profile(load_gpu_profile(SHIPPED_DIR / "h200-gpu-tokenjoule-cudagraph.json"),
                           ModelSpec.from_name(name))


def test_host_bound_note_counts_the_prompts_under_the_composed_host_floor():
    gpu = load_gpu_profile(SHIPPED_DIR / "h200-gpu-tokenjoule-cudagraph.json")
    profile = _composed("llama-3.2-1b")
    floor = profile.method["compose"]["host_bound_prefill"]
    below = floor["gpu_exceeds_host_at_tokens"]
    # the knot is where the GPU's own prefill work first reaches the host's launch time, the floor under the curve
    host = eager_host_s(gpu, profile.model)
    assert floor["host_s"] == host
    previous = KNOTS_TOKENS[KNOTS_TOKENS.index(below) - 1]
    assert prefill_gpu_knot(gpu, profile.model, previous)[0] < host <= prefill_gpu_knot(gpu, profile.model, below)[0]
    assert profile.latency.token_curve(1.0, 1.0) >= host
    table = _table([0.0, 1.0, 2.0, 3.0], [0.0] * 4, inputs=[10, below - 1, below, 4 * below],
                   reasons=["", "", "", "context_length"])
    found = host_bound_note(table, profile)
    assert found["kind"] == "host_bound_prefill"
    assert (found["requests_short"], found["requests"]) == (2, 3)  # the rejected request is not counted
    assert f"fewer than about {below:,} tokens" in found["message"] and "2 of 3 finished requests" in found["message"]
    assert host_bound_note(_table([0.0], [0.0], inputs=[below]), profile) is None


def test_host_bound_note_is_only_for_composed_profiles():
    measured = load_profile(SHIPPED_DIR / "h200-llama-3.1-8b-tokenjoule-cudagraph.json")
    table = _table([0.0], [0.0], inputs=[10])
    assert host_bound_note(table, measured) is None
    assert host_bound_note(table, None) is None
    assert host_bound_note(table, _composed("llama-3.1-8b")) is not None


def test_a_composed_run_reports_its_host_bound_prefills():
    profile = _composed("llama-3.2-1b")
    trace = Trace.from_columns([0.0, 5.0], [100, 100], [4, 4], source="t")
    with pytest.warns(RunNoteWarning, match="host_bound_prefill"):
        result = tokenjoule.simulate(trace, profile)
    (found,) = [n for n in result.summary["notes"] if n["kind"] == "host_bound_prefill"]
    assert found["requests_short"] == 2


# ---- the Python API --------------------------------------------------------------------------------------------


def test_the_python_api_warns_each_note(toy_profile):
    trace = Trace.from_columns([0.0, 0.0], [200_000, 100], [10, 10], source="t")
    with pytest.warns(RunNoteWarning, match="context length: 1 requests rejected"):
        result = tokenjoule.simulate(trace, toy_profile, policy="chunked")
    assert [n["kind"] for n in result.summary["notes"]] == ["context_length"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokenjoule.simulate(Trace.from_columns([0.0], [100], [10], source="t"), toy_profile)
