"""Binning: ceiling mapping at exact edges, out-of-range handling, windows, and counts that always add up."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenjoule.traces.binning import (
    PAPER_INPUT_EDGES,
    PAPER_OUTPUT_EDGES,
    BinSpec,
    bin_arrays,
    bin_index,
    bin_trace,
    empty_counts,
    merge,
)
from tokenjoule.traces.schema import Trace


def test_ceiling_mapping_at_and_around_edges():
    tokens = np.array([0, 1, 32, 33, 128, 129, 256, 8192, 8193])
    assert bin_index(tokens, PAPER_INPUT_EDGES).tolist() == [0, 0, 0, 1, 1, 2, 2, 7, 8]
    assert bin_index(np.array([8, 9, 512, 513]), PAPER_OUTPUT_EDGES).tolist() == [0, 1, 6, 7]


def test_single_requests_land_in_the_named_bins():
    bins = bin_arrays(np.array([129, 128]), np.array([8, 9]))
    m = bins.matrix()
    assert m[PAPER_INPUT_EDGES.index(256), PAPER_OUTPUT_EDGES.index(8)] == 1
    assert m[PAPER_INPUT_EDGES.index(128), PAPER_OUTPUT_EDGES.index(16)] == 1
    assert bins.binned == 2 and bins.excluded == 0


def test_out_of_range_excluded_or_clamped_with_counts():
    inp, out = np.array([100, 9000, 100, 9000]), np.array([10, 10, 600, 600])
    ex = bin_arrays(inp, out)
    assert (ex.binned, ex.excluded, ex.clamped, ex.input_above, ex.output_above) == (1, 3, 0, 2, 2)
    cl = bin_arrays(inp, out, BinSpec(out_of_range="clamp"))
    assert (cl.binned, cl.excluded, cl.clamped) == (4, 0, 3)
    assert cl.matrix()[-1, -1] == 1 and cl.matrix()[-1, 1] == 1 and cl.matrix()[1, -1] == 1


def test_user_edges_and_windows():
    spec = BinSpec((10, 100), (5,))
    bins = bin_arrays(np.array([10, 11, 50, 1]), np.array([5, 5, 5, 6]), spec,
                      arrival_s=np.array([0.0, 59.9, 60.0, 130.0]), window_s=60.0)
    assert bins.counts.shape == (2, 2, 1)  # the request in window 2 is out of range, so only 2 windows
    assert bins.counts[:, :, 0].tolist() == [[1, 1], [0, 1]]
    assert bins.excluded == 1
    table = bins.to_table()
    assert table.column("count").to_pylist() == [1, 1, 1]
    assert table.column("input_bin_tokens").to_pylist() == [10, 100, 100]


def test_bin_trace_windows_from_trace_start():
    trace = Trace.from_columns([0.0, 1.0, 2.5], [5, 5, 5], [5, 5, 5])
    assert bin_trace(trace, window_s=1.0).counts.sum(axis=(1, 2)).tolist() == [1, 1, 1]


def test_merge_pads_windows_and_adds_tallies():
    spec = BinSpec()
    a = bin_arrays(np.array([5]), np.array([5]), spec, np.array([0.0]), 10.0)
    b = bin_arrays(np.array([5, 9999]), np.array([5, 5]), spec, np.array([25.0, 26.0]), 10.0)
    m = merge(merge(empty_counts(spec, 10.0), a), b)
    assert m.counts.shape[0] == 3 and m.rows == 3 and m.binned == 2 and m.excluded == 1


@pytest.mark.parametrize("kwargs", [{"input_edges": ()}, {"input_edges": (5, 5)}, {"output_edges": (3, 2)},
                                    {"out_of_range": "ignore"}])
def test_bad_specs_rejected(kwargs):
    with pytest.raises(ValueError):
        BinSpec(**kwargs)


edges_st = st.lists(st.integers(1, 5000), min_size=1, max_size=6, unique=True).map(lambda xs: tuple(sorted(xs)))


@settings(max_examples=60, deadline=None)
@given(inp=st.lists(st.integers(0, 10_000), min_size=0, max_size=200), data=st.data(),
       in_edges=edges_st, out_edges=edges_st, clamp=st.booleans())
def test_counts_plus_excluded_equal_rows(inp, data, in_edges, out_edges, clamp):
    out = data.draw(st.lists(st.integers(0, 10_000), min_size=len(inp), max_size=len(inp)))
    inp_a, out_a = np.array(inp, np.int64), np.array(out, np.int64)
    spec = BinSpec(in_edges, out_edges, "clamp" if clamp else "exclude")
    bins = bin_arrays(inp_a, out_a, spec)
    assert bins.binned + bins.excluded == len(inp) == bins.rows
    # brute force: the smallest edge >= value, per request
    expected = np.zeros(spec.shape, np.int64)
    for x, y in zip(inp, out, strict=True):
        i = next((k for k, e in enumerate(in_edges) if x <= e), None)
        o = next((k for k, e in enumerate(out_edges) if y <= e), None)
        if (i is None or o is None) and not clamp:
            continue
        expected[len(in_edges) - 1 if i is None else i, len(out_edges) - 1 if o is None else o] += 1
    np.testing.assert_array_equal(bins.matrix(), expected)
