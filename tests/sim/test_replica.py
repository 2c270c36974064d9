"""Paged KV block arithmetic of a replica, checked against a step-by-step walk."""

from __future__ import annotations

import simpy
from hypothesis import given, settings
from hypothesis import strategies as st
from sim_profiles import make_profile

from tokenjoule.sim.accounting import Ledger
from tokenjoule.sim.cost import CalibratedCost
from tokenjoule.sim.policies import ContinuousBatching
from tokenjoule.sim.replica import Replica

COST = CalibratedCost(make_profile())


def _replica(block_tokens, phase, g):
    rep = Replica(0, simpy.Environment(), ContinuousBatching(), COST, Ledger(1, 1.0), block_tokens)
    rep._phase[:] = phase
    rep.g = g
    rep.running = {i: None for i in range(sum(phase))}
    return rep


def _walk(rep, k):
    return sum(rep._phase[-(rep.g + j) % rep.block_tokens] for j in range(k))


@settings(max_examples=300, deadline=None)
@given(data=st.data(), block_tokens=st.sampled_from([1, 2, 7, 16]), g=st.integers(0, 500),
       k=st.integers(1, 80), free=st.integers(0, 80))
def test_new_blocks_and_max_steps_match_a_walk(data, block_tokens, g, k, free):
    phase = data.draw(st.lists(st.integers(0, 3), min_size=block_tokens, max_size=block_tokens))
    if sum(phase) == 0:
        phase[0] = 1
    rep = _replica(block_tokens, phase, g)
    assert rep.new_blocks(k) == _walk(rep, k)
    m = rep.max_decode_steps(free)
    assert _walk(rep, m) <= free < _walk(rep, m + 1)


def test_capacity_in_blocks():
    rep = Replica(0, simpy.Environment(), ContinuousBatching(), COST, Ledger(1, 1.0), 16)
    assert rep.capacity_blocks == 100_000 // 16
    assert (rep.blocks_for(16), rep.blocks_for(17), rep.blocks_for(1)) == (1, 2, 1)
