"""Synthetic traces: reproducible per seed, the asked-for rate and burstiness, lengths from the source."""

from __future__ import annotations

import numpy as np
import pytest

from tokenjoule.traces.schema import Trace
from tokenjoule.traces.synth import (
    SynthSpec,
    batch_at_zero,
    gamma_arrivals,
    poisson_arrivals,
    resample_lengths,
    synthesize,
)


@pytest.fixture
def tiny_trace() -> Trace:
    return Trace.from_columns([0.0, 1.0, 2.0], [10, 200, 3000], [1, 20, 300], source="tiny")


def test_same_seed_same_trace_other_seed_other_trace(tiny_trace):
    spec = SynthSpec(500, rate_per_s=4.0, process="gamma", cv=2.0)
    a = synthesize(spec, np.random.default_rng(5), tiny_trace)
    b = synthesize(spec, np.random.default_rng(5), tiny_trace)
    c = synthesize(spec, np.random.default_rng(6), tiny_trace)
    assert a.table.equals(b.table) and not a.table.equals(c.table)


def test_poisson_rate_and_cv():
    t = poisson_arrivals(200_000, 10.0, np.random.default_rng(0))
    gaps = np.diff(t)
    assert gaps.mean() == pytest.approx(0.1, rel=0.01)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.02)


@pytest.mark.parametrize("cv", [0.5, 1.0, 4.0])
def test_gamma_rate_and_cv(cv):
    gaps = np.diff(gamma_arrivals(200_000, 5.0, cv, np.random.default_rng(1)), prepend=0.0)
    assert gaps.mean() == pytest.approx(0.2, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.05)


def test_resampled_pairs_come_whole_from_the_source(tiny_trace, rng):
    inp, out = resample_lengths(tiny_trace, 1000, rng)
    pairs = set(zip(inp.tolist(), out.tolist(), strict=True))
    assert pairs == {(10, 1), (200, 20), (3000, 300)}  # joint distribution kept: no mixed pairs


def test_fixed_lengths_and_batch_at_zero():
    trace = batch_at_zero(64, 1024, 256)
    assert len(trace) == 64 and trace.span_s == 0.0
    assert set(trace.column("input_tokens").tolist()) == {1024}
    assert set(trace.column("output_tokens").tolist()) == {256}
    fixed = synthesize(SynthSpec(10, rate_per_s=1.0, input_tokens=7, output_tokens=3), np.random.default_rng(0))
    assert fixed.column("input_tokens").tolist() == [7] * 10 and fixed.column("arrival_s")[0] > 0


@pytest.mark.parametrize("kwargs", [{"n_requests": 0}, {"n_requests": 1, "rate_per_s": 0},
                                    {"n_requests": 1, "process": "uniform"}, {"n_requests": 1, "cv": 0},
                                    {"n_requests": 1, "output_tokens": 0}])
def test_spec_validation(kwargs):
    with pytest.raises(ValueError):
        SynthSpec(**kwargs)
