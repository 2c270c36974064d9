"""Transforms are pure and report what they changed."""

from __future__ import annotations

import pytest

from tokenjoule.traces.schema import Trace
from tokenjoule.traces.transforms import head, scale_rate, slice_window


@pytest.fixture
def tiny_trace() -> Trace:
    return Trace.from_columns([0.0, 1.0, 2.0, 4.0, 8.0], [1, 2, 3, 4, 5], [1, 1, 1, 1, 1], source="tiny")


def test_scale_rate_divides_arrivals(tiny_trace):
    out, report = scale_rate(tiny_trace, 2.0)
    assert out.column("arrival_s").tolist() == [0.0, 0.5, 1.0, 2.0, 4.0]
    assert tiny_trace.column("arrival_s").tolist() == [0.0, 1.0, 2.0, 4.0, 8.0]  # input untouched
    assert (report.span_in_s, report.span_out_s, report.rows_out) == (8.0, 4.0, 5)
    with pytest.raises(ValueError, match="--scale-rate"):
        scale_rate(tiny_trace, 0)


def test_slice_window_is_half_open_and_rezeroes(tiny_trace):
    out, report = slice_window(tiny_trace, 1.0, 4.0)
    assert out.column("arrival_s").tolist() == [0.0, 1.0]
    assert out.column("input_tokens").tolist() == [2, 3]
    assert (report.rows_in, report.rows_out) == (5, 2) and "slice_window" in report.summary()
    empty, _ = slice_window(tiny_trace, 100.0, 200.0)
    assert len(empty) == 0
    with pytest.raises(ValueError, match="--end-s"):
        slice_window(tiny_trace, 3.0, 3.0)


def test_head(tiny_trace):
    out, report = head(tiny_trace, 3)
    assert out.column("input_tokens").tolist() == [1, 2, 3] and report.rows_out == 3
    assert len(head(tiny_trace, 99)[0]) == 5
