"""The theoretical estimate: FLOPs per request by hand, datasheet defaults, and equality with a roofline replay."""

from __future__ import annotations

import numpy as np
import pytest

from tokenjoule.calibrate.profile import DATASHEETS
from tokenjoule.kernels.spec import ModelSpec
from tokenjoule.sim.project.projection import ProjectConfig, project
from tokenjoule.sim.project.theoretical import TheoryAccumulator, TheoryInputs, request_flops
from tokenjoule.sim.run import SimConfig, run


@pytest.fixture
def spec() -> ModelSpec:
    return ModelSpec.from_name("llama-3.1-8b")


def test_flops_are_prompt_plus_decode_passes(spec):
    # 3 prompt tokens (contexts 0, 1, 2) and 2 outputs: one decode pass at context 3
    expected = sum(spec.flops_per_token(c) for c in range(4))
    assert request_flops(spec, np.array([3]), np.array([2]))[0] == pytest.approx(expected, rel=1e-12)
    # a zero-output row still runs its prefill
    assert request_flops(spec, np.array([3]), np.array([0]))[0] == pytest.approx(
        sum(spec.flops_per_token(c) for c in range(3)), rel=1e-12)


def test_energy_is_tdp_times_flops_over_peak(spec):
    inputs = TheoryInputs.of(spec, DATASHEETS["H100-SXM"])
    assert (inputs.peak_flops, inputs.tdp_w) == (989.4e12, 700.0)
    acc = TheoryAccumulator(spec, inputs)
    acc.add(np.array([100, 7]), np.array([10, 1]))
    acc.add(np.array([5]), np.array([3]))
    flops = request_flops(spec, np.array([100, 7, 5]), np.array([10, 1, 3])).sum()
    est = acc.result()
    assert est.requests == 3
    assert est.energy_j == pytest.approx(700.0 * flops / 989.4e12, rel=1e-12)


def test_overrides_replace_the_datasheet(spec):
    inputs = TheoryInputs.of(spec, DATASHEETS["H100-SXM"], peak_flops=1e15, tdp_w=350.0)
    assert (inputs.peak_flops, inputs.tdp_w) == (1e15, 350.0)
    assert "--peak-flops" in inputs.source and "--tdp-w" in inputs.source
    with pytest.raises(ValueError, match="--peak-flops"):
        TheoryInputs("m", 0.0, 700.0, "x")


def test_equals_a_roofline_replays_busy_energy(tiny_trace):
    """Roofline energy is linear in FLOPs, so any batching gives the same busy energy as the estimate."""
    config = SimConfig(cost="roofline", model="llama-3.1-8b", gpu="H100-SXM")
    replay = run(config, tiny_trace, None).summary
    est = project(tiny_trace, None, ProjectConfig(sim=config, estimators=("theoretical",))).theoretical
    assert est.energy_j == pytest.approx(replay["gpu_busy_j"], rel=1e-9)
