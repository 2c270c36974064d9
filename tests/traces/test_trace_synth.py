"""Synthetic traces: reproducible per seed, the asked-for rate and burstiness, lengths from the source."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from tokenjoule.traces.schema import Trace
from tokenjoule.traces.synth import (
    SynthSpec,
    batch_at_zero,
    gamma_arrivals,
    poisson_arrivals,
    resample_lengths,
    synthesize,
    synthesize_blocks,
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


def _bulk(spec, seed, lengths_from):
    """The seed semantics written out: all n gaps first (cumulative sum), then the n resampled rows."""
    rng = np.random.default_rng(seed)
    if spec.process == "zero":
        times = np.zeros(spec.n_requests)
    elif spec.process == "poisson":
        times = np.cumsum(rng.exponential(1.0 / spec.rate_per_s, size=spec.n_requests))
    else:
        shape = 1.0 / spec.cv**2
        times = np.cumsum(rng.gamma(shape, 1.0 / (spec.rate_per_s * shape), size=spec.n_requests))
    if lengths_from is None:
        return times, [spec.input_tokens] * spec.n_requests, [spec.output_tokens] * spec.n_requests, rng
    rows = rng.integers(0, len(lengths_from), size=spec.n_requests)
    inp, out = lengths_from.column("input_tokens")[rows], lengths_from.column("output_tokens")[rows]
    return times, inp.tolist(), out.tolist(), rng


@pytest.mark.parametrize(("process", "cv", "resample"), [("poisson", 1.0, True), ("gamma", 3.0, True),
                                                         ("gamma", 0.5, False), ("zero", 1.0, True)])
def test_blocks_draw_what_one_bulk_draw_does(tiny_trace, process, cv, resample):
    spec = SynthSpec(2_503, rate_per_s=9.0, process=process, cv=cv)
    lengths_from = tiny_trace if resample else None
    rng = np.random.default_rng(21)
    blocks = list(synthesize_blocks(spec, rng, lengths_from, block_rows=1_000))
    assert [b.num_rows for b in blocks] == [1_000, 1_000, 503]
    table = pa.concat_tables(blocks)
    times, inp, out, bulk_rng = _bulk(spec, 21, lengths_from)
    assert table.column("arrival_s").to_pylist() == times.tolist()  # exactly: the cumsum goes on across blocks
    assert table.column("input_tokens").to_pylist() == inp and table.column("output_tokens").to_pylist() == out
    assert table.column("request_id").to_pylist() == list(range(2_503))
    assert rng.bit_generator.state == bulk_rng.bit_generator.state  # the caller's generator ends where it would
    assert synthesize(spec, np.random.default_rng(21), lengths_from).table.equals(table.combine_chunks())


def test_trace_synth_streams_the_file_synthesize_would_write(tmp_path, tiny_trace):
    from typer.testing import CliRunner

    from tokenjoule.cli import app
    from tokenjoule.traces.files import ROW_GROUP_ROWS, save_trace

    n = ROW_GROUP_ROWS + 3  # two row groups
    result = CliRunner().invoke(app, ["trace", "synth", str(tmp_path / "s.parquet"), "-n", str(n), "--rate", "50",
                                      "--process", "gamma", "--cv", "2", "--seed", "4", "--json"])
    assert result.exit_code == 0, result.output
    expected = synthesize(SynthSpec(n, 50.0, "gamma", 2.0), np.random.default_rng(4))
    save_trace(expected, tmp_path / "expected.parquet")
    assert (tmp_path / "s.parquet").read_bytes() == (tmp_path / "expected.parquet").read_bytes()
    summary = json.loads(result.output)
    assert summary["rows"] == n and summary["span_s"] == expected.span_s
