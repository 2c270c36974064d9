"""The streamed reader gives what a whole load gives; order and id checks count the same in pieces or at once."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenjoule.traces.batches import BatchReader
from tokenjoule.traces.checks import TraceChecks
from tokenjoule.traces.loaders import LoadOptions, plan_load, read_trace
from tokenjoule.traces.schema import TraceFormatError
from tokenjoule.traces.stream import scan
from tokenjoule.traces.synth import ArrivalClock, arrivals


def _streamed(path, options: LoadOptions, **kwargs) -> tuple[BatchReader, dict[str, np.ndarray]]:
    reader = BatchReader(plan_load(path, None, options), options, **kwargs)
    batches = list(reader)
    columns = {name: np.concatenate([getattr(b, name) for b in batches])
               for name in ("arrival_s", "input_tokens", "output_tokens")}
    return reader, columns


def _assert_same_rows(path, options: LoadOptions, **kwargs) -> BatchReader:
    reader, streamed = _streamed(path, options, **kwargs)
    trace, report = read_trace(path, options=options)
    for name, values in streamed.items():
        assert values.tobytes() == trace.column(name).astype(values.dtype).tobytes(), name  # identical, not close
    assert (reader.rows_read, reader.rows_dropped) == (report.rows_read, report.rows_dropped)
    return reader


@pytest.mark.parametrize("process, rate, cv", [("poisson", 3.0, 1.0), ("gamma", 0.5, 2.5), ("zero", None, 1.0)])
@pytest.mark.parametrize("zero_output", ["drop", "keep"])
def test_synthesized_arrivals_stream_into_exactly_the_loaded_times(tmp_path, process, rate, cv, zero_output):
    path = tmp_path / "lengths.csv"
    outputs = np.random.default_rng(2).integers(0, 4, 700)
    outputs[0] = 0  # the first row dropped: arrivals still start at 0 at the first row kept, as a whole load's do
    path.write_text("num_prefill_tokens,num_decode_tokens\n" + "".join(f"{10 + i},{o}\n" for i, o in
                                                                      enumerate(outputs)))
    options = LoadOptions(zero_output=zero_output, arrivals=process, rate_per_s=rate, cv=cv, seed=11)
    _assert_same_rows(path, options, block_bytes=1 << 10)


@pytest.mark.parametrize("unit, scale", [("s", 1.0), ("ms", 1e3), ("us", 1e6)])
def test_mapped_columns_and_units_stream_as_they_load(tmp_path, unit, scale):
    path = tmp_path / "mine.csv"
    times = np.cumsum(np.random.default_rng(4).exponential(0.2, 500)) * scale
    rows = "".join(f"{float(t)!r},{i % 97},{1 + i % 13}\n" for i, t in enumerate(times))
    path.write_text("when,prompt,answer\n" + rows)
    options = LoadOptions(mapping={"arrival_s": "when", "input_tokens": "prompt", "output_tokens": "answer"},
                          time_unit=unit)
    _assert_same_rows(path, options, block_bytes=1 << 10)


def test_refusing_unsorted_rows_names_the_data_row_across_blocks(tmp_path):
    arrival = np.arange(300, dtype=float)
    arrival[250] = 1.5
    table = pa.table({"arrival_s": arrival, "input_tokens": [5] * 300, "output_tokens": [0, *[3] * 299]})
    pq.write_table(table, tmp_path / "u.parquet")
    with pytest.raises(TraceFormatError, match=r"u.parquet: row 251: field 'arrival_s' is earlier"):
        list(BatchReader(plan_load(tmp_path / "u.parquet"), LoadOptions(unsorted="refuse"), batch_rows=64))


def test_spreading_needs_the_whole_table(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("arrival_s,input_tokens,output_tokens\n0,1,1\n")
    with pytest.raises(ValueError, match="whole trace"):
        BatchReader(plan_load(path), LoadOptions(spread_buckets_s=3.0))


def test_jsonl_errors_name_the_line_across_blocks_and_blank_lines(tmp_path):
    lines = [json.dumps({"arrival_s": i, "input_tokens": 10, "output_tokens": 2}) for i in range(2000)]
    lines[1500] = json.dumps({"arrival_s": 1500, "input_tokens": "lots", "output_tokens": 2})
    text = "\n".join(lines[:5]) + "\n\n\n" + "\n".join(lines[5:]) + "\n"  # two blank lines before line 8
    (tmp_path / "t.jsonl").write_text(text)
    with pytest.raises(TraceFormatError, match=r"t.jsonl: line 1503: JSON parse error: field 'input_tokens' "
                                               r"changed from number to string$"):
        scan(tmp_path / "t.jsonl", block_bytes=1 << 12)
    lines[1500] = json.dumps({"arrival_s": 1500, "input_tokens": -3, "output_tokens": 2})
    (tmp_path / "t.jsonl").write_text("\n".join(lines[:5]) + "\n\n\n" + "\n".join(lines[5:]) + "\n")
    with pytest.raises(TraceFormatError, match=r"t.jsonl: line 1503: field 'input_tokens'=-3 is negative"):
        scan(tmp_path / "t.jsonl", block_bytes=1 << 12)
    with pytest.raises(TraceFormatError, match=r"t.jsonl: line 1503: field 'input_tokens'=-3 is negative"):
        read_trace(tmp_path / "t.jsonl")


def test_a_ragged_csv_row_is_found_after_the_header(tmp_path):
    rows = [f"{i},{i % 50},3" for i in range(2000)]
    rows[1700] = "1700,9"
    pacsv_path = tmp_path / "r.csv"
    pacsv_path.write_text("arrival_s,input_tokens,output_tokens\n" + "\n".join(rows) + "\n")
    with pytest.raises(TraceFormatError, match=r"r.csv: row 1701 \(header not counted\): CSV parse error: "
                                               r"Expected 3 columns, got 2"):
        scan(pacsv_path, block_bytes=1 << 12)


def test_parquet_rows_are_plain_rows(tmp_path):
    table = pa.table({"arrival_s": [0.0, 1.0, 2.0], "input_tokens": [1, -1, 1], "output_tokens": [1, 1, 1]})
    pacsv.write_csv(table, tmp_path / "t.csv")
    pq.write_table(table, tmp_path / "t.parquet")
    with pytest.raises(TraceFormatError, match=r"t.parquet: row 2: field 'input_tokens'=-1"):
        read_trace(tmp_path / "t.parquet")
    with pytest.raises(TraceFormatError, match=r"t.csv: row 2 \(header not counted\): field 'input_tokens'=-1"):
        read_trace(tmp_path / "t.csv")


def test_the_arrival_clock_joins_pieces_into_one_draw():
    whole = arrivals(1000, "gamma", np.random.default_rng(9), 4.0, 3.0)
    clock = ArrivalClock("gamma", np.random.default_rng(9), 4.0, 3.0)
    pieces = np.concatenate([clock.next(n) for n in (1, 0, 400, 599)])
    assert pieces.tobytes() == whole.tobytes()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(-3, 3)), min_size=1, max_size=60),
       st.lists(st.integers(1, 20), min_size=1, max_size=6))
def test_checks_count_the_same_in_pieces_as_at_once(rows, cuts):
    arrival = np.array([float(a) for a, _ in rows])
    ids = np.array([i for _, i in rows], np.int64)
    whole = TraceChecks()
    whole.add(arrival, ids)
    pieces = TraceChecks(max_id_rows=len(rows))
    start = 0
    for cut in [*cuts, len(rows)]:
        pieces.add(arrival[start:start + cut], ids[start:start + cut])
        start += cut
    expected_late = int(np.count_nonzero(np.diff(arrival) < 0))
    expected_repeats = len(ids) - len(np.unique(ids))
    assert (whole.unsorted_rows, whole.repeated_ids) == (expected_late, expected_repeats)
    assert (pieces.unsorted_rows, pieces.repeated_ids) == (expected_late, expected_repeats)
    assert [n.kind for n in whole.notes()] == [k for k, c in (("unsorted_arrivals", expected_late),
                                                               ("repeated_request_ids", expected_repeats)) if c]


def test_out_of_order_ids_beyond_the_limit_are_not_counted_but_said():
    checks = TraceChecks(max_id_rows=4)
    checks.add(np.arange(3.0), np.array([5, 6, 7]))
    checks.add(np.arange(3.0, 6.0), np.array([1, 2, 3]))  # ids go back after 6 rows: too many to count exactly
    assert checks.repeated_ids is None
    (note,) = checks.notes()
    assert note.kind == "repeated_request_ids" and note.count is None and "not counted" in note.message
    in_order = TraceChecks(max_id_rows=4)
    for start in range(0, 12, 3):
        in_order.add(np.arange(3.0), np.array([start, start + 1, start + 1]))  # in order: counted for free
    assert in_order.repeated_ids == 4
