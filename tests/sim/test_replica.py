"""Paged KV block arithmetic of a replica, checked against a step-by-step walk."""

from __future__ import annotations

import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st
from sim_profiles import make_profile

from tokenjoule.calibrate.profile import MeasuredRange
from tokenjoule.sim.accounting import Ledger
from tokenjoule.sim.cost import CalibratedCost
from tokenjoule.sim.notes import RangeTally
from tokenjoule.sim.policies import ChunkedPrefill, ContinuousBatching, StaticBatching
from tokenjoule.sim.replica import Replica, RequestState

COST = CalibratedCost(make_profile())


def _replica(block_size, phase, g):
    rep = Replica(0, simpy.Environment(), ContinuousBatching(), COST, Ledger(1, 1.0), block_size)
    rep.phase[:] = phase
    rep.decode_steps = g
    rep.running = {i: None for i in range(sum(phase))}
    return rep


def _walk(rep, k):
    return sum(rep.phase[-(rep.decode_steps + j) % rep.block_size] for j in range(k))


@settings(max_examples=300, deadline=None)
@given(data=st.data(), block_size=st.sampled_from([1, 2, 7, 16]), g=st.integers(0, 500),
       k=st.integers(1, 80), free=st.integers(0, 80))
def test_new_blocks_and_max_steps_match_a_walk(data, block_size, g, k, free):
    phase = data.draw(st.lists(st.integers(0, 3), min_size=block_size, max_size=block_size))
    if sum(phase) == 0:
        phase[0] = 1
    rep = _replica(block_size, phase, g)
    assert rep.new_blocks(k) == _walk(rep, k)
    m = rep.max_decode_steps(free)
    assert _walk(rep, m) <= free < _walk(rep, m + 1)


def test_capacity_in_blocks():
    rep = Replica(0, simpy.Environment(), ContinuousBatching(), COST, Ledger(1, 1.0), 16)
    assert rep.capacity_blocks == 100_000 // 16
    assert (rep.blocks_for(16), rep.blocks_for(17), rep.blocks_for(1)) == (1, 2, 1)


ops = st.lists(st.one_of(
    st.tuples(st.just("join"), st.integers(1, 3000), st.integers(1, 300), st.integers(1, 50)),
    st.tuples(st.just("step"), st.floats(0.0, 1.0)),
    st.tuples(st.just("preempt")),
    st.tuples(st.just("rejoin")),
), max_size=300)


# The longest context the range tally's profile measured, in `test_max_ctx_matches_a_brute_force_max`'s "tally" case.
TALLY_CONTEXT = 1500


@pytest.mark.parametrize("reader", ["scan", "cost", "tally"])
@settings(max_examples=200, deadline=None)
@given(ops=ops)
def test_max_ctx_matches_a_brute_force_max(reader, ops):
    """Joins, decode steps (finishing requests), preemptions and re-joins: max_ctx is the live contexts' max.

    By a scan (nothing reads it), by the heap of every context (the cost model prices it), or by the heap of the
    contexts that can outgrow the measured range (only the range tally reads it): that one is exact when the longest
    is beyond the range, else the longest of those requests (0 without any).
    """
    tail = {"decode_tail_ctx_tokens": 1e-6} if reader == "cost" else None
    cost = CalibratedCost(make_profile(kv_capacity_tokens=10**9, lat_coef=tail))
    tally = None
    if reader == "tally":
        tally = RangeTally(MeasuredRange(decode_seqs=512, iteration_tokens=16384, prompt_tokens=16384,
                                         context_tokens=TALLY_CONTEXT, source="grid"))
    rep = Replica(0, simpy.Environment(), ContinuousBatching(), cost, Ledger(len(ops), 1.0, tally), 16)
    assert rep._tracks_longest == (reader != "scan")
    live: dict[int, int] = {}  # request idx -> context, in join order (the last one is the preemption victim)
    requests, preempted = [], []
    for op in ops:
        if op[0] == "join":
            _, inp, out, gen = op
            s = RequestState(len(requests), 0.0, inp, max(out, gen))
            requests.append(s)
            s.generated = gen  # a prefill (maybe a recompute) just emitted token `gen`
            rep.blocks_used += rep.blocks_for(s.input_tokens + gen - 1)
            rep.start_decode(s)
            if gen < s.output_tokens:
                live[s.idx] = inp + gen - 1
        elif op[0] == "step" and live:
            k = max(1, round(op[1] * rep.steps_to_next_finish()))
            rep.decode_steps_done(k, 1.0, len(live))
            last_ctx = {i: requests[i].input_tokens + requests[i].output_tokens - 1 for i in live}
            live = {i: c + k for i, c in live.items() if c + k < last_ctx[i]}  # at its last context it is done
        elif op[0] == "preempt" and live:
            rep.preempt_newest()
            preempted.append(rep.waiting.popleft())
            del live[preempted[-1].idx]
        elif op[0] == "rejoin" and preempted:
            s = preempted.pop(0)
            s.generated += 1  # its recompute prefill emits the next token
            rep.blocks_used += rep.blocks_for(s.input_tokens + s.generated - 1)
            rep.start_decode(s)
            if s.generated < s.output_tokens:
                live[s.idx] = s.input_tokens + s.generated - 1
        assert sorted(s.idx for s in rep.running.values()) == sorted(live)
        longest = max(live.values(), default=0)
        if reader == "tally":
            can_outgrow = [c for i, c in live.items() if requests[i].input_tokens + requests[i].output_tokens
                           > TALLY_CONTEXT]
            assert rep.max_ctx() == max(can_outgrow, default=0)
            assert rep.max_ctx() == longest or longest <= TALLY_CONTEXT
        else:
            assert rep.max_ctx() == longest
        assert rep.ctx_sum == sum(live.values())
        assert len(rep._ctx_heap) <= 2 * len(rep.running) + 65  # stale entries are dropped, not hoarded


def test_max_ctx_follows_the_longest_through_a_stretch():
    rep = Replica(0, simpy.Environment(), ContinuousBatching(), COST, Ledger(2, 1.0), 16)
    assert rep.max_ctx() == 0
    for idx, (inp, out) in enumerate([(1000, 5), (10, 50)]):
        s = RequestState(idx, 0.0, inp, out)
        s.generated = 1
        rep.blocks_used += rep.blocks_for(inp)
        rep.start_decode(s)
    assert rep.max_ctx() == 1000
    rep.decode_steps_done(3, 1.0, 2)
    assert rep.max_ctx() == 1003
    rep.decode_steps_done(1, 1.0, 2)  # the long one emits its 5th token and leaves
    assert len(rep.running) == 1 and rep.max_ctx() == 14


def test_ctx_heap_drops_stale_entries_under_a_long_lived_request():
    """Short requests churn under one long context: their finished entries never reach the top, yet are dropped."""
    rep = Replica(0, simpy.Environment(), ContinuousBatching(), COST, Ledger(501, 1.0), 16)
    for idx in range(501):
        s = RequestState(idx, 0.0, 5000 if idx == 0 else 10, 10**6 if idx == 0 else 2)
        s.generated = 1
        rep.blocks_used += rep.blocks_for(s.input_tokens)
        rep.start_decode(s)
        if idx:
            rep.decode_steps_done(1, 1.0, 2)  # the short one emits its 2nd token and leaves
        assert rep.max_ctx() == 5000 + idx
    assert len(rep.running) == 1 and len(rep._ctx_heap) <= 2 + 64


@settings(max_examples=300, deadline=None)
@given(policy=st.sampled_from([StaticBatching(), ContinuousBatching(max_num_batched_tokens=3000), ChunkedPrefill()]),
       capacity=st.integers(16, 5000), block_size=st.sampled_from([1, 7, 16]), input_tokens=st.integers(1, 6000),
       output_tokens=st.integers(1, 6000))
def test_max_request_tokens_is_where_the_policy_starts_rejecting(policy, capacity, block_size, input_tokens,
                                                                  output_tokens):
    """The router's one comparison (`max_request_tokens`) agrees with the policy's reasons for every request."""
    rep = Replica(0, simpy.Environment(), policy, CalibratedCost(make_profile(kv_capacity_tokens=capacity)),
                  Ledger(1, 1.0), block_size)
    fits = input_tokens + output_tokens <= policy.max_request_tokens(rep)
    assert (policy.reject_reason(RequestState(0, 0.0, input_tokens, output_tokens), rep) is None) == fits
