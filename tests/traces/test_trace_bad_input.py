"""Bad input: every error is one TraceFormatError line naming the file, the row and the field."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from tokenjoule.traces.columns import ColumnMap, arrival_seconds, token_array
from tokenjoule.traces.loaders import load_trace
from tokenjoule.traces.schema import TraceFormatError

HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
GOOD = "2023-11-16 18:15:46.6805900,374,44\n"


@pytest.mark.parametrize("bad_row, match", [
    ("2023-11-16 18:15:47.0,abc,5", r"field 'ContextTokens'='abc' is not a whole number"),
    ("2023-11-16 18:15:47.0,12.5,5", r"field 'ContextTokens'='12.5' is not a whole number"),
    ("2023-11-16 18:15:47.0,-3,5", r"field 'ContextTokens'=-3 is negative"),
    ("2023-11-16 18:15:47.0,3,", r"field 'GeneratedTokens' is empty"),
    ("2023-11-16 18:15:47.0,3,99999999999", r"field 'GeneratedTokens'=99999999999 is larger"),
    ("yesterday,3,5", r"field 'TIMESTAMP'='yesterday' is not a date-time"),
    ("2023-13-16 18:15:47.0,3,5", r"field 'TIMESTAMP'='2023-13-16 18:15:47.0' is not a date-time"),
])
def test_bad_values_name_file_row_and_field(tmp_path, bad_row, match):
    path = tmp_path / "bad.csv"
    path.write_text(HEADER + GOOD + bad_row + "\n" + GOOD)
    with pytest.raises(TraceFormatError, match=r"row 2 \(header not counted\): " + match) as info:
        load_trace(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_ragged_csv_row(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text(HEADER + GOOD + "2023-11-16 18:15:47.0,3\n")
    with pytest.raises(TraceFormatError, match=r"ragged.csv: row 2 \(header not counted\): CSV parse error"):
        load_trace(path)


def test_bisect_finds_the_first_bad_row_deep_in_a_column():
    values = pa.array([str(i) for i in range(10_000)])
    values = pa.concat_arrays([values.slice(0, 6_543), pa.array(["x", "y"]), values.slice(6_543)])
    with pytest.raises(TraceFormatError, match=r"f: row 6644: field 'c'='x'"):
        token_array(values, "f", "c", row0=100)


def test_numeric_arrivals_reject_nan_and_text():
    with pytest.raises(TraceFormatError, match=r"row 2: field 't'=nan is not a finite"):
        arrival_seconds(pa.array([1.0, float("nan")]), "s", "f", "t")
    with pytest.raises(TraceFormatError, match=r"row 1: field 't'='soon' is not a number"):
        arrival_seconds(pa.array(["soon"]), "ms", "f", "t")


def test_datetime_mixing_offsets_is_refused():
    with pytest.raises(TraceFormatError, match="row 2: .* mixes date-times"):
        arrival_seconds(pa.array(["2024-01-01 00:00:00", "2024-01-01 00:00:01+00:00"]), "datetime", "f", "t")


def test_jsonl_missing_key_is_an_empty_field(tmp_path):
    path = tmp_path / "m.jsonl"
    rows = [{"timestamp": 0, "input_length": 5, "output_length": 2, "hash_ids": []},
            {"timestamp": 5, "output_length": 2, "hash_ids": []}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(TraceFormatError, match=r"m.jsonl: line 2: field 'input_length' is empty"):
        load_trace(path)


def test_jsonl_garbage_first_line(tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_text("{not json\n")
    with pytest.raises(TraceFormatError, match="g.jsonl: line 1: not a JSON object"):
        load_trace(path)


def test_column_map_validates_unit_and_keys():
    with pytest.raises(ValueError, match="--time-unit 'hours'"):
        ColumnMap("a", "b", "c", "hours")
    with pytest.raises(ValueError, match="unknown field"):
        ColumnMap.from_mapping({"input_tokens": "a", "output_tokens": "b", "colour": "c"})
