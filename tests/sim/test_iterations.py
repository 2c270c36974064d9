"""The iteration table (`simulate --events`): its rows tile each replica's time and hold the run's GPU energy."""

from __future__ import annotations

import numpy as np
import pytest

from tokenjoule.sim.iterations import SCHEMA
from tokenjoule.sim.run import SimConfig, run


def _columns(result):
    return {name: result.iterations.column(name).to_numpy(zero_copy_only=False) for name in SCHEMA.names}


@pytest.mark.parametrize("config", [
    SimConfig(),
    SimConfig(policy="chunked", max_num_batched_tokens=512, replicas=2),
    SimConfig(policy="static", max_batch=3, replicas=3, router="least-outstanding"),
    SimConfig(cost="roofline-memory", idle_power_w=80.0),  # two time lines per decode step
])
def test_rows_tile_each_replica_and_hold_the_gpu_energy(config, toy_profile, tiny_trace):
    result = run(config, tiny_trace, toy_profile, record_iterations=True)
    assert result.iterations.schema == SCHEMA
    c, s = _columns(result), result.summary
    busy = c["kind"] != "idle"
    assert c["energy_j"][busy].sum() == pytest.approx(s["gpu_busy_j"], rel=1e-9)
    assert c["energy_j"].sum() == pytest.approx(s["gpu_busy_j"] + s["gpu_idle_j"], rel=1e-9)
    assert c["duration_s"][busy].sum() == pytest.approx(s["utilization"] * s["duration_s"] * config.replicas)
    assert np.all(np.diff(c["start_s"]) >= 0) and np.all(c["duration_s"] > 0)
    for rep in range(config.replicas):
        mine = c["replica"] == rep
        start, duration = c["start_s"][mine], c["duration_s"][mine]
        assert start[0] == 0.0 and start[-1] + duration[-1] == pytest.approx(s["duration_s"], abs=1e-9)
        np.testing.assert_allclose(start[1:], start[:-1] + duration[:-1], rtol=0, atol=1e-9)  # no gap, no overlap
    idle = ~busy
    np.testing.assert_allclose(c["power_w"][idle], s["idle_power_w"])
    np.testing.assert_allclose(c["power_w"] * c["duration_s"], c["energy_j"], rtol=1e-12)


def test_batch_composition_matches_the_event_log(toy_profile, tiny_trace):
    config = SimConfig(policy="chunked", max_num_batched_tokens=512, record_events=True)
    result = run(config, tiny_trace, toy_profile, record_iterations=True)
    c = _columns(result)
    decode_steps = sum(d for e, _, d in result.events if e == "decode")
    prefills = [d for e, _, d in result.events if e == "prefill"]
    assert int((c["kind"] == "decode").sum()) == decode_steps
    assert int(((c["kind"] == "prefill") | (c["kind"] == "mixed")).sum()) == len(prefills)
    assert int(c["prefill_tokens"].sum()) == sum(n for chunks in prefills for _, n in chunks)
    assert int(c["prefill_seqs"].sum()) == sum(len(chunks) for chunks in prefills)
    assert np.all(c["decode_seqs"][c["kind"] == "decode"] >= 1)
    assert np.all((c["decode_seqs"][c["kind"] == "mixed"] >= 1) & (c["prefill_tokens"][c["kind"] == "prefill"] > 0))


def test_no_recording_unless_asked(toy_profile, tiny_trace):
    plain = run(SimConfig(), tiny_trace, toy_profile)
    recorded = run(SimConfig(), tiny_trace, toy_profile, record_iterations=True)
    assert plain.iterations is None and recorded.iterations.num_rows > 0
    assert plain.summary == recorded.summary
