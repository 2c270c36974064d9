"""Loaders: every source format, auto-detection, options and their reports."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tokenjoule.traces.files import save_trace
from tokenjoule.traces.loaders import (
    LoadOptions,
    load_azure_2023,
    load_azure_2024,
    load_burstgpt,
    load_generic,
    load_length_only,
    load_mooncake,
    load_trace,
    read_trace,
)
from tokenjoule.traces.schema import TraceFormatError


def test_bundled_azure_conv_matches_published_figures():
    trace, report = read_trace("azure-conv-2023")
    assert len(trace) == 19_366
    assert np.median(trace.column("input_tokens")) == 1020
    assert np.median(trace.column("output_tokens")) == 129
    assert report.fmt == "azure-2023" and report.rows_dropped == 0 and report.was_sorted
    assert trace.column("arrival_s")[0] == 0.0
    assert trace.span_s == pytest.approx(3501.721937)


def test_bundled_azure_code_loads():
    assert len(load_trace("azure-code-2023")) == 8_819


def test_azure_2023_seven_fractional_digits(azure_2023_csv):
    trace, report = load_azure_2023(azure_2023_csv)
    assert report.fmt == "azure-2023" and len(trace) == 4
    np.testing.assert_allclose(trace.column("arrival_s"), [0.0, 4.314579, 4.541877, 4.710427], atol=1e-9)
    assert trace.column("input_tokens").tolist() == [374, 396, 879, 91]
    assert trace.table.schema.field("input_tokens").type == pa.int32()


def test_azure_2024_offsets_and_mixed_precision(azure_2024_csv):
    trace, report = load_azure_2024(azure_2024_csv)
    assert report.fmt == "azure-2024"
    np.testing.assert_allclose(trace.column("arrival_s"), [0.0, 0.49007, 0.99007, 2.113526789], atol=1e-9)
    assert read_trace(azure_2024_csv)[1].fmt == "azure-2024"  # detected from the first timestamp


def test_azure_2023_loader_refuses_offsets(azure_2024_csv):
    with pytest.raises(TraceFormatError, match=r"row 1 \(header not counted\): field 'TIMESTAMP'.*zone offset"):
        load_azure_2023(azure_2024_csv)


def test_burstgpt_drops_failed_by_default_and_reports(burstgpt_csv):
    trace, report = load_burstgpt(burstgpt_csv)
    assert report.fmt == "burstgpt" and report.rows_read == 5 and report.rows_kept == 3
    assert report.rows_dropped == 2 and "output_tokens == 0" in report.dropped[0][0]
    assert trace.column("request_id").tolist() == [0, 2, 4]  # ids are source rows, kept across drops
    assert trace.column("arrival_s").tolist() == [0.0, 113.0, 125.0]
    assert (trace.column("output_tokens") >= 1).all()


def test_burstgpt_keep_failed(burstgpt_csv):
    trace, report = read_trace(burstgpt_csv, zero_output="keep")
    assert len(trace) == 5 and report.rows_dropped == 0
    assert trace.column("output_tokens").tolist() == [18, 0, 276, 0, 40]


def test_mooncake_buckets_and_prefix_blocks(mooncake_jsonl):
    trace, report = load_mooncake(mooncake_jsonl)
    assert report.fmt == "mooncake" and report.spread_buckets_s is None and report.seed is None
    assert trace.column("arrival_s").tolist() == [0.0, 0.0, 3.0, 6.0]
    assert trace.table.column("prefix_blocks").to_pylist() == [[0, 1, 2], [0, 3], [4], []]


def test_mooncake_spread_is_seeded_recorded_and_within_buckets(mooncake_jsonl):
    a, report = read_trace(mooncake_jsonl, spread_buckets_s=3.0, seed=7)
    b, _ = read_trace(mooncake_jsonl, spread_buckets_s=3.0, seed=7)
    c, _ = read_trace(mooncake_jsonl, spread_buckets_s=3.0, seed=8)
    assert a.table.equals(b.table) and not a.table.equals(c.table)
    assert report.spread_buckets_s == 3.0 and report.seed == 7 and "spread" in report.summary()
    arrival = a.column("arrival_s")
    assert np.all(np.diff(arrival) >= 0) and arrival[0] == 0.0
    # each request stays inside its own 3 s bucket, measured from the earliest spread arrival
    raw = np.array([0.0, 0.0, 3.0, 6.0])[np.argsort(a.column("request_id"))]
    shift = arrival[np.argsort(a.column("request_id"))] - raw
    assert np.ptp(shift) < 3.0


def test_length_only_needs_an_arrival_choice(length_only_csv):
    with pytest.raises(TraceFormatError, match="no arrival times.*--arrivals poisson --rate R"):
        load_length_only(length_only_csv)


@pytest.mark.parametrize("options", [{"arrivals": "poisson", "rate_per_s": 2.0},
                                     {"arrivals": "gamma", "rate_per_s": 2.0, "cv": 3.0},
                                     {"arrivals": "zero"}])
def test_length_only_synthesizes_arrivals_reproducibly(length_only_csv, options):
    a, report = load_length_only(length_only_csv, seed=3, **options)
    b, _ = load_length_only(length_only_csv, seed=3, **options)
    assert a.table.equals(b.table) and len(a) == 3 and report.fmt == "length-only"
    assert report.arrivals.startswith(f"synthesized {options['arrivals']}") and report.seed == 3
    assert sorted(a.column("input_tokens").tolist()) == [35, 100, 2000]
    if options["arrivals"] == "zero":
        assert a.column("arrival_s").tolist() == [0.0, 0.0, 0.0]


def test_arrivals_option_refused_for_timestamped_sources(azure_2023_csv):
    with pytest.raises(ValueError, match="only to traces without timestamps"):
        read_trace(azure_2023_csv, arrivals="zero")


def test_generic_csv_with_ms_mapping(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("t_ms,in,out,sess\n1000,5,6,1\n1250,7,8,1\n3000,9,10,2\n")
    trace, report = load_generic(path, {"arrival_s": "t_ms", "input_tokens": "in", "output_tokens": "out",
                                        "session_id": "sess"}, time_unit="ms")
    assert report.fmt == "generic"
    assert trace.column("arrival_s").tolist() == [0.0, 0.25, 2.0]
    assert trace.column("session_id").tolist() == [1, 1, 2]


def test_generic_parquet_with_timestamp_column(generic_parquet):
    trace = load_trace(generic_parquet, mapping={"arrival_s": "when", "input_tokens": "prompt",
                                                 "output_tokens": "completion"}, time_unit="datetime")
    assert trace.column("arrival_s").tolist() == [0.0, 1.5, 4.0]
    assert trace.column("output_tokens").tolist() == [1, 2, 3]


def test_generic_jsonl_with_us(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text("".join(json.dumps({"ts": t, "p": 3, "g": 4}) + "\n" for t in (0, 500_000, 2_000_000)))
    trace = load_trace(path, mapping={"arrival_s": "ts", "input_tokens": "p", "output_tokens": "g"}, time_unit="us")
    assert trace.column("arrival_s").tolist() == [0.0, 0.5, 2.0]


def test_mapping_needs_token_columns(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="'output_tokens' is required"):
        load_trace(path, mapping={"arrival_s": "a", "input_tokens": "b"})


def test_unsorted_is_sorted_and_reported(tmp_path):
    path = tmp_path / "u.csv"
    path.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                    "10,m,1,1,2,x\n5,m,2,2,4,x\n7,m,3,3,6,x\n")
    trace, report = read_trace(path)
    assert not report.was_sorted and report.sorted_by_loader and "unsorted" in report.summary()
    assert trace.column("arrival_s").tolist() == [0.0, 2.0, 5.0]
    assert trace.column("input_tokens").tolist() == [2, 3, 1]
    with pytest.raises(TraceFormatError, match=r"u.csv: row 2 \(header not counted\): field 'Timestamp'.*not sorted"):
        read_trace(path, unsorted="refuse")


def test_canonical_parquet_round_trip(tmp_path, burstgpt_csv):
    trace = load_trace(burstgpt_csv, zero_output="keep")
    out = save_trace(trace, tmp_path / "t.parquet")
    back, report = read_trace(out, zero_output="keep")
    assert report.fmt == "canonical" and back.table.equals(trace.table)


def test_canonical_keeps_prefix_blocks(tmp_path, mooncake_jsonl):
    trace = load_trace(mooncake_jsonl)
    back = load_trace(save_trace(trace, tmp_path / "m.parquet"))
    assert back.table.column("prefix_blocks").to_pylist() == trace.table.column("prefix_blocks").to_pylist()


def test_unknown_format_names_columns(tmp_path):
    path = tmp_path / "odd.csv"
    path.write_text("foo,bar\n1,2\n")
    with pytest.raises(TraceFormatError, match=r"odd.csv: unknown trace format \(columns: foo, bar\)"):
        load_trace(path)
    with pytest.raises(TraceFormatError, match="--format 'nope': unknown"):
        load_trace(path, fmt="nope")


def test_missing_column_for_named_format(azure_2023_csv):
    with pytest.raises(TraceFormatError, match="missing column 'Timestamp' for format 'burstgpt'"):
        load_trace(azure_2023_csv, fmt="burstgpt")


@pytest.mark.parametrize("text, match", [("", "empty file"), ("\n\n", "empty file"),
                                         ("TIMESTAMP,ContextTokens,GeneratedTokens\n", "no requests")])
def test_empty_files(tmp_path, text, match):
    path = tmp_path / "e.csv"
    path.write_text(text)
    with pytest.raises(TraceFormatError, match=match):
        load_trace(path)


def test_missing_file_and_unknown_option(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or bundled trace"):
        load_trace(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="unknown load option"):
        load_trace("azure-code-2023", colour="red")


def test_load_options_validate():
    with pytest.raises(ValueError, match="--zero-output 'maybe'"):
        LoadOptions(zero_output="maybe")
    with pytest.raises(ValueError, match="needs --rate"):
        LoadOptions(arrivals="poisson")
    with pytest.raises(ValueError, match="--spread-buckets-s 0"):
        LoadOptions(spread_buckets_s=0)
    with pytest.raises(ValueError, match="--time-unit 'hours': must be one of s, ms"):
        LoadOptions(mapping={"arrival_s": "t"}, time_unit="hours")


@pytest.mark.parametrize("fields, needle", [
    ({"time_unit": "ms"}, "--time-unit ms: only a mapped arrival column (--map) reads it"),
    ({"rate_per_s": 3.0}, "--rate 3: only synthesized arrivals (--arrivals poisson or gamma) read it"),
    ({"arrivals": "zero", "rate_per_s": 3.0}, "--rate 3: only synthesized arrivals"),
    ({"cv": 2.0}, "--cv 2: only --arrivals gamma reads it"),
    ({"arrivals": "poisson", "rate_per_s": 3.0, "cv": 2.0}, "--cv 2: only --arrivals gamma reads it"),
])
def test_an_option_nothing_reads_is_refused_not_ignored(fields, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        LoadOptions(**fields)


def test_the_options_that_are_read_are_accepted():
    LoadOptions(mapping={"arrival_s": "t"}, time_unit="ms")
    LoadOptions(arrivals="gamma", rate_per_s=3.0, cv=2.0)
    LoadOptions(arrivals="poisson", rate_per_s=3.0)


def test_parquet_tokens_as_floats_must_be_whole(tmp_path):
    path = tmp_path / "f.parquet"
    pq.write_table(pa.table({"arrival_s": [0.0, 1.0], "input_tokens": [3.0, 4.5], "output_tokens": [1, 2]}), path)
    with pytest.raises(TraceFormatError, match=r"row 2: field 'input_tokens'=4.5 is not a whole number"):
        load_trace(path)


def test_canonical_keeps_arrivals_as_given(tmp_path, rng):
    from tokenjoule.traces.synth import SynthSpec, synthesize

    trace = synthesize(SynthSpec(50, rate_per_s=2.0), rng)
    assert trace.column("arrival_s")[0] > 0  # a Poisson process's first gap
    back, report = read_trace(save_trace(trace, tmp_path / "s.parquet"))
    assert back.table.equals(trace.table) and report.fmt == "canonical"


def test_detects_azure_2024_with_other_offsets(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2024-05-10 00:00:00-05:00,5,5\n"
                    "2024-05-10 00:00:01.25-05:00,5,5\n")
    trace, report = read_trace(path)
    assert report.fmt == "azure-2024" and trace.column("arrival_s").tolist() == [0.0, 1.25]
