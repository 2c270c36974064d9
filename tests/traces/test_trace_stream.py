"""Streaming: batch-by-batch figures equal in-memory ones, percentiles are numpy's, memory is bounded by design."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenjoule.traces.binning import BinSpec, bin_trace
from tokenjoule.traces.files import save_trace
from tokenjoule.traces.loaders import LoadOptions, load_trace
from tokenjoule.traces.schema import Trace, TraceFormatError
from tokenjoule.traces.stream import scan, scan_trace, trace_stats
from tokenjoule.traces.stream_acc import ArrivalStats, TokenHistogram
from tokenjoule.traces.synth import SynthSpec, synthesize


@pytest.fixture
def random_trace(rng) -> Trace:
    return synthesize(SynthSpec(5_000, rate_per_s=20.0, process="gamma", cv=2.5),
                      rng, Trace.from_columns([0, 1, 2, 3], [3, 130, 9000, 700], [1, 600, 40, 8]))


def test_streamed_parquet_equals_in_memory(tmp_path, random_trace):
    path = save_trace(random_trace, tmp_path / "t.parquet")
    streamed = scan(path, spec=BinSpec(), window_s=30.0, batch_rows=333)
    memory = scan_trace(random_trace, BinSpec(), window_s=30.0)
    s, m = streamed.stats, memory.stats
    assert (s.rows, s.input_tokens, s.output_tokens) == (m.rows, m.input_tokens, m.output_tokens)
    assert s.span_s == pytest.approx(m.span_s) and s.interarrival_cv == pytest.approx(m.interarrival_cv)
    assert s.dispersion_1s == pytest.approx(m.dispersion_1s)
    np.testing.assert_array_equal(streamed.bins.counts, memory.bins.counts)
    np.testing.assert_array_equal(streamed.bins.counts, bin_trace(random_trace, window_s=30.0).counts)


def test_bundled_stats_match_published(tmp_path):
    stats = scan("azure-conv-2023").stats
    assert stats.rows == 19_366 and stats.input_tokens.p50 == 1020 and stats.output_tokens.p50 == 129
    assert stats.input_tokens.p90 == 2734.5 and stats.output_tokens.p99 == 601
    assert stats.rate_per_s == pytest.approx(5.530, abs=1e-3)
    assert stats.interarrival_cv == pytest.approx(1.09, abs=0.005)
    assert stats.dispersion_1s == pytest.approx(1.39, abs=0.01)


def test_stream_csv_equals_load(burstgpt_csv):
    streamed = scan(burstgpt_csv)
    assert streamed.rows_read == 5 and streamed.rows_dropped == 2
    assert streamed.stats == trace_stats(load_trace(burstgpt_csv))


@settings(max_examples=80, deadline=None)
@given(values=st.lists(st.integers(0, 300), min_size=1, max_size=300), cap=st.integers(1, 400),
       split=st.integers(0, 300))
def test_histogram_percentiles_equal_numpy(values, cap, split):
    hist = TokenHistogram(cap_tokens=cap)
    hist.add(np.array(values[:split], np.int64))
    hist.add(np.array(values[split:], np.int64))
    for q in (0.0, 0.5, 0.9, 0.99, 1.0):
        assert hist.percentile(q) == float(np.percentile(values, q * 100))  # bit for bit
    s = hist.summary()
    assert (s.min, s.max, s.exact) == (min(values), max(values), True)
    assert s.mean == pytest.approx(np.mean(values))


@settings(max_examples=50, deadline=None)
@given(gaps=st.lists(st.floats(0, 3, allow_nan=False), min_size=2, max_size=200), cut=st.integers(0, 200))
def test_arrival_stats_across_batches_equal_whole(gaps, cut):
    arrival = np.cumsum(gaps)
    acc = ArrivalStats()
    acc.add(arrival[:cut])
    acc.add(arrival[cut:])
    g = np.diff(arrival)
    if g.mean() > 0:
        assert acc.interarrival_cv == pytest.approx(g.std() / g.mean(), rel=1e-6, abs=1e-9)
    counts = np.bincount(np.floor(arrival - arrival[0]).astype(int))[:-1]  # whole seconds only
    if len(counts) == 0 or counts.sum() == 0:
        assert acc.dispersion_1s is None
    else:
        assert acc.dispersion_1s == pytest.approx(counts.var() / counts.mean(), rel=1e-9, abs=1e-12)


def test_poisson_burstiness_near_one(rng):
    stats = trace_stats(synthesize(SynthSpec(100_000, rate_per_s=50.0), rng))
    assert stats.interarrival_cv == pytest.approx(1.0, abs=0.02)
    assert stats.dispersion_1s == pytest.approx(1.0, abs=0.1)


def test_unsorted_stream_counts_without_burstiness_or_refuses(tmp_path):
    path = tmp_path / "u.parquet"
    pq.write_table(pa.table({"arrival_s": [0.0, 5.0, 2.0, 9.0], "input_tokens": [1, 2, 3, 4],
                             "output_tokens": [1, 1, 1, 1]}), path)
    big = scan(path, batch_rows=2, max_sort_rows=3)  # too large to sort: counted, no burstiness
    stats = big.stats
    assert not stats.sorted and stats.interarrival_cv is None and stats.dispersion_1s is None
    assert big.notes == ("arrivals out of order: 1 of 4 rows arrives earlier than the row before; not sorted: over 3 "
                         "rows to sort in memory, so burstiness figures are left out (`tokenjoule trace convert` "
                         "sorts)",)
    assert stats.rows == 4 and stats.span_s == 9.0
    with pytest.raises(TraceFormatError, match=r"u.parquet: row 3: field 'arrival_s' is earlier"):
        scan(path, batch_rows=2, options=LoadOptions(unsorted="refuse"))
    with pytest.raises(TraceFormatError, match="needs sorted arrivals"):
        scan(path, spec=BinSpec(), window_s=1.0, batch_rows=2, max_sort_rows=3)
    small = scan(path, spec=BinSpec(), window_s=5.0, batch_rows=2)  # small enough: sorted in memory
    assert small.stats.sorted and small.notes == ("arrivals out of order: 1 of 4 rows arrives earlier than the row "
                                                  "before; sorted by arrival time (rows arriving together keep their "
                                                  "order)",)
    assert small.stats.interarrival_cv == pytest.approx(np.std([2, 3, 4]) / 3)
    assert small.bins.counts.sum(axis=(1, 2)).tolist() == [2, 2]


def test_whole_table_options_fall_back_to_loading(length_only_csv):
    result = scan(length_only_csv, options=LoadOptions(arrivals="zero"))
    assert result.stats.rows == 3 and result.stats.span_s == 0.0 and result.stats.rate_per_s is None


def test_progress_reaches_total(tmp_path, random_trace):
    path = save_trace(random_trace, tmp_path / "t.parquet")
    calls = []
    scan(path, batch_rows=1000, progress=lambda done, total: calls.append((done, total)))
    assert len(calls) == 5 and calls[-1] == (5000, 5000)


def test_stream_row_numbers_continue_across_batches(tmp_path):
    path = tmp_path / "neg.parquet"
    pq.write_table(pa.table({"arrival_s": np.arange(10.0), "input_tokens": [1] * 7 + [-1] + [1] * 2,
                             "output_tokens": [1] * 10}), path)
    with pytest.raises(TraceFormatError, match=r"row 8: field 'input_tokens'=-1 is negative"):
        scan(path, batch_rows=3)


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_text_formats_stream_in_small_blocks(tmp_path, random_trace, suffix):
    t = random_trace.table
    path = tmp_path / f"t.{suffix}"
    rows = zip(t.column("arrival_s").to_pylist(), t.column("input_tokens").to_pylist(),
               t.column("output_tokens").to_pylist(), strict=True)
    if suffix == "csv":
        path.write_text("ts,i,o\n" + "".join(f"{a!r},{i},{o}\n" for a, i, o in rows))
    else:
        path.write_text("".join(f'{{"ts": {a!r}, "i": {i}, "o": {o}}}\n' for a, i, o in rows))
    options = LoadOptions(mapping={"arrival_s": "ts", "input_tokens": "i", "output_tokens": "o"})
    calls = []
    streamed = scan(path, options=options, block_bytes=4096, progress=lambda d, n: calls.append((d, n)))
    assert len(calls) > 10 and calls[-1][0] == calls[-1][1] == path.stat().st_size
    expected = trace_stats(load_trace(path, mapping=options.mapping))
    assert streamed.stats.input_tokens == expected.input_tokens and streamed.stats.rows == 5_000
    assert streamed.stats.dispersion_1s == pytest.approx(expected.dispersion_1s)


def test_csv_row_numbers_continue_across_blocks(tmp_path):
    path = tmp_path / "big.csv"
    lines = [f"{k},5,5" if k != 3210 else f"{k},5,x" for k in range(5000)]
    path.write_text("t,i,o\n" + "\n".join(lines) + "\n")
    options = LoadOptions(mapping={"arrival_s": "t", "input_tokens": "i", "output_tokens": "o"})
    with pytest.raises(TraceFormatError, match=r"big.csv: row 3211 \(header not counted\): field 'o'='x'"):
        scan(path, options=options, block_bytes=2048)
