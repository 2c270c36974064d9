"""A projection in shards (`sim.project.shards`) gives the estimates of one streamed pass, to float round-off."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tokenjoule.calibrate.profile import load_profile
from tokenjoule.sim.parallel import Backend, open_executor
from tokenjoule.sim.project.load_aware import LoadAwareConfig, LoadAwareProjector, WindowSums
from tokenjoule.sim.project.projection import ProjectConfig, project
from tokenjoule.sim.project.shards import EdgeCounts, plan_shards, project_sharded
from tokenjoule.sim.run import SimConfig, build_cost_model
from tokenjoule.traces.schema import TraceFormatError

TOY_PATH = Path(__file__).parents[1] / "fixtures" / "profiles" / "toy_h100_llama-3.1-8b.json"

# Small windows, a short least pad (so that pads grow, twice or more) and few requests per simulation (so that some
# windows are cut short): every path of the window walk runs.
CONFIG = ProjectConfig(load=LoadAwareConfig(window_s=20.0, pad_s=1.0, max_sim_requests=100),
                       sim=SimConfig(max_num_seqs=64))


def _write(path, n=3000, seed=1, group_rows=250, shuffle_at=None):
    """A Parquet trace of `n` requests in groups of `group_rows`: a busy stretch, a 90-s lull, a quieter stretch; a
    few rows with 0 output tokens (dropped when read)."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1 / np.where(np.arange(n) < n // 2, 8.0, 3.0))
    gaps[n // 3] += 90.0
    arrival = np.cumsum(gaps)
    if shuffle_at is not None:
        arrival[shuffle_at], arrival[shuffle_at + 1] = arrival[shuffle_at + 1], arrival[shuffle_at]
    table = pa.table({"arrival_s": arrival, "input_tokens": rng.integers(16, 3000, n).astype(np.int32),
                      "output_tokens": rng.integers(0, 700, n).astype(np.int32)})
    pq.write_table(table, path, row_group_size=group_rows)
    return path


@pytest.fixture(scope="module")
def toy():
    return load_profile(TOY_PATH)


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("shards") / "t.parquet")


def _same(a, b, path="", rel=1e-9):
    """Equal dicts, floats to `rel` (summed in another order), everything else exactly."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _same(a[key], b[key], f"{path}.{key}", rel)
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{path}[{i}]", rel)
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=rel, abs=1e-12), path
    else:
        assert a == b, path


@pytest.mark.parametrize("shards", [1, 3, 7])
def test_sharded_projection_equals_one_pass(trace_file, toy, shards):
    one = project(trace_file, toy, CONFIG)
    with open_executor() as executor:
        sharded = project_sharded(trace_file, toy, executor, CONFIG, shards=shards)
    assert one.load_aware.pad_s > 2 * CONFIG.load.pad_s  # the pads grew: the walk re-planned its simulations
    assert one.load_aware.simulations > 10 and one.stream.rows_dropped > 0
    _same(one.to_dict(), sharded.to_dict())
    # the decisions (which windows, how many simulations, the pads) are the same, not only close
    for key in ("simulations", "simulated_requests", "pad_s", "windows", "requests", "rejected"):
        assert getattr(one.load_aware, key) == getattr(sharded.load_aware, key), key
    assert sharded.stream == one.stream


def test_sharded_projection_on_worker_processes_equals_one_pass(trace_file, toy):
    one = project(trace_file, toy, CONFIG)
    with open_executor(Backend(jobs=2)) as executor:
        sharded = project_sharded(trace_file, toy, executor, CONFIG)
    _same(one.to_dict(), sharded.to_dict())


def test_arrivals_out_of_order_across_groups_are_projected_in_one_pass(tmp_path, toy):
    path = _write(tmp_path / "u.parquet", n=600, shuffle_at=249)  # rows 249 and 250 swapped: two row groups apart
    with open_executor() as executor:
        sharded = project_sharded(path, toy, executor, CONFIG, shards=3)
    assert sharded.stream.sorted_in_memory
    _same(project(path, toy, CONFIG).to_dict(), sharded.to_dict(), rel=0)


def test_a_csv_trace_is_projected_in_one_pass(tmp_path, toy):
    path = tmp_path / "t.csv"
    path.write_text("arrival_s,input_tokens,output_tokens\n" + "".join(f"{i * 0.3},{50 + i},{4 + i % 9}\n"
                                                                         for i in range(300)))
    with open_executor() as executor:
        sharded = project_sharded(path, toy, executor, CONFIG)
    _same(project(path, toy, CONFIG).to_dict(), sharded.to_dict(), rel=0)


def test_a_bad_value_in_a_shard_names_the_same_row_as_one_pass(tmp_path, toy):
    rng = np.random.default_rng(0)
    out = rng.integers(1, 50, 1000).astype(np.int64)
    out[777] = -3
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"arrival_s": np.arange(1000) * 0.1, "input_tokens": np.full(1000, 20), "output_tokens":
                             out}), path, row_group_size=100)
    with pytest.raises(TraceFormatError) as streamed:
        project(path, toy, CONFIG)
    with open_executor() as executor, pytest.raises(TraceFormatError) as sharded:
        project_sharded(path, toy, executor, CONFIG, shards=4)
    assert str(sharded.value) == str(streamed.value) and "row 778" in str(sharded.value)


def test_shards_cover_every_row_group_once_in_order(trace_file):
    parts = plan_shards(trace_file, 5)
    assert [g for p in parts for g in p.groups] == list(range(12))
    assert sum(p.rows for p in parts) == 3000 and [p.row0 for p in parts] == sorted(p.row0 for p in parts)
    assert len(plan_shards(trace_file, 50)) == 12 and len(plan_shards(trace_file, 1)) == 1


def test_edge_counts_of_batches_and_shards_are_the_rows_before_each_edge():
    rng = np.random.default_rng(3)
    arrival = np.sort(rng.uniform(0, 500, 4000))
    arrival[100:110] = 40.0  # rows exactly on an edge count as not before it
    arrival.sort()
    offsets = (-7.5, 0.0, 7.5)
    parts = []
    for chunk in np.array_split(arrival, 5):
        part = EdgeCounts(20.0, offsets)
        for batch in np.array_split(chunk, 3):
            part.add(batch)
        parts.append(part)
    merged = EdgeCounts(20.0, offsets)
    for part in reversed(parts):
        merged.merge(part)
    for j in range(0, 30):
        for offset in offsets:
            t = j * 20.0 + offset
            assert merged.lookup(t) == int(np.searchsorted(arrival, t, side="left")), (j, offset)
    assert merged.lookup(13.0) is None and merged.total == 4000


def test_window_sums_of_stretches_merge_to_one_pass(trace_file, toy):
    table = pq.read_table(trace_file)
    arr, inp, out = (table.column(c).to_numpy().astype(t) for c, t in
                     (("arrival_s", float), ("input_tokens", np.int64), ("output_tokens", np.int64)))
    one = LoadAwareProjector(build_cost_model(SimConfig(), toy), SimConfig(), LoadAwareConfig(window_s=20.0)).terms
    merged = WindowSums(one.seats, one.sim, one.kv_capacity_tokens, one.window_s)
    one.add(arr, inp, out)
    for lo, hi in ((2000, 3000), (0, 1234), (1234, 2000)):
        part = WindowSums(one.seats, one.sim, one.kv_capacity_tokens, one.window_s)
        part.add(arr[lo:hi], inp[lo:hi], out[lo:hi])
        merged.merge(part)
    np.testing.assert_allclose(merged.sums, one.sums, rtol=1e-12)
    np.testing.assert_array_equal(merged.sums[:, :3], one.sums[:, :3])  # counts and token sums: exact
    assert merged.last_arrival_s == one.last_arrival_s
