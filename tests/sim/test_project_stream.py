"""Projection from files: streamed Parquet and CSV give the in-memory result; drops, unsorted rows, errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from tokenjoule.sim.project.projection import ProjectConfig, project
from tokenjoule.sim.project.stream import FileStream, run_stream
from tokenjoule.traces.loaders import LoadOptions, read_trace
from tokenjoule.traces.schema import Trace, TraceFormatError, TraceOptionError
from tokenjoule.traces.synth import SynthSpec, synthesize


@pytest.fixture
def trace() -> Trace:
    lengths = Trace.from_columns(np.zeros(4), [40, 300, 2000, 9000], [5, 100, 600, 30])
    return synthesize(SynthSpec(400, rate_per_s=2.0), np.random.default_rng(5), lengths_from=lengths)


def _same(a, b) -> None:
    assert a.requests == b.requests
    assert a.paper.energy_j == pytest.approx(b.paper.energy_j, rel=1e-12)
    assert a.paper.excluded == b.paper.excluded
    assert a.theoretical.energy_j == pytest.approx(b.theoretical.energy_j, rel=1e-12)
    assert a.load_aware.energy_j == pytest.approx(b.load_aware.energy_j, rel=1e-12)


def test_parquet_stream_matches_memory(tmp_path, trace, toy_profile):
    path = tmp_path / "t.parquet"
    pq.write_table(trace.table, path, row_group_size=50)
    streamed = project(path, toy_profile, batch_rows=37)
    _same(streamed, project(trace, toy_profile))
    assert streamed.stream.rows_read == 400 and not streamed.stream.sorted_in_memory


def test_unsorted_csv_is_sorted_in_memory(tmp_path, trace, toy_profile):
    table = trace.table.take(pa.array(np.random.default_rng(0).permutation(len(trace))))
    path = tmp_path / "t.csv"
    pacsv.write_csv(table, path)
    streamed = project(path, toy_profile)
    _same(streamed, project(trace, toy_profile))
    assert streamed.stream.sorted_in_memory


def test_synthesized_arrivals_stream_without_loading(tmp_path, toy_profile, monkeypatch):
    path = tmp_path / "lengths.csv"
    path.write_text("num_prefill_tokens,num_decode_tokens\n" + "".join(f"{50 + 7 * i},{1 + i % 9}\n"
                                                                      for i in range(300)))
    options = LoadOptions(arrivals="gamma", rate_per_s=3.0, cv=2.0, seed=4)
    loaded = project(read_trace(path, options=options)[0], toy_profile)
    monkeypatch.setattr(FileStream, "_loaded", None)  # the in-memory route is not taken
    streamed = project(path, toy_profile, options=options, batch_rows=64)
    _same(streamed, loaded)
    assert not streamed.stream.sorted_in_memory


def test_spreading_sorts_small_traces_in_memory_and_refuses_large_ones(tmp_path, trace, toy_profile):
    path = tmp_path / "t.parquet"
    pq.write_table(trace.table, path)
    options = LoadOptions(spread_buckets_s=3.0, seed=2)
    _same(project(path, toy_profile, options=options), project(read_trace(path, options=options)[0], toy_profile))
    stream = FileStream(path, options=options, max_sort_rows=399)
    with pytest.raises(TraceOptionError, match="--spread-buckets-s: .* has more than 399 rows"):
        run_stream(stream, list)


def test_unsorted_refuse_is_honoured_while_streaming(tmp_path, trace, toy_profile):
    table = trace.table.take(pa.array([1, 0, *range(2, len(trace))]))
    path = tmp_path / "t.csv"
    pacsv.write_csv(table, path)
    with pytest.raises(TraceFormatError, match=r"row 2 \(header not counted\): field 'arrival_s' is earlier"):
        project(path, toy_profile, options=LoadOptions(unsorted="refuse"))


def test_zero_output_rows_are_dropped_and_reported(tmp_path, toy_profile):
    table = pa.table({"arrival_s": [0.0, 1.0, 2.0], "input_tokens": [10, 20, 30], "output_tokens": [5, 0, 7]})
    path = tmp_path / "z.csv"
    pacsv.write_csv(table, path)
    result = project(path, toy_profile)
    assert (result.requests, result.stream.rows_read, result.stream.rows_dropped) == (2, 3, 1)
    assert result.to_dict()["rows_dropped"] == 1


def test_a_header_only_file_is_a_format_error(tmp_path, toy_profile):
    path = tmp_path / "empty.csv"
    path.write_text("arrival_s,input_tokens,output_tokens\n")
    with pytest.raises(TraceFormatError, match="no requests"):
        project(path, toy_profile)


def test_estimators_can_be_chosen(trace, toy_profile):
    result = project(trace, toy_profile, ProjectConfig(estimators=("paper",)))
    assert result.paper is not None and result.theoretical is None and result.load_aware is None
    with pytest.raises(ValueError, match="estimators"):
        ProjectConfig(estimators=("bogus",))


def test_json_dict_has_the_three_estimates_and_inputs(trace, toy_profile):
    d = project(trace, toy_profile).to_dict()
    assert set(d["estimates"]) == {"paper", "theoretical", "load_aware"}
    assert d["inputs"]["window_s"] == 60.0 and d["inputs"]["max_batch"] == 256
    assert d["inputs"]["input_edges"][0] == 32 and d["inputs"]["output_edges"][-1] == 512
    assert d["cost_model"].startswith("calibrated")
