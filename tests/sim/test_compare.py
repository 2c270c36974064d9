"""compare's grids: every setting as an axis, checked by name and value; readable labels; the flat table of cells."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from conftest import TOY_PATH

from tokenjoule.kernels.spec import ConfigError
from tokenjoule.sim.compare import (
    AXES,
    Grid,
    axis_text,
    axis_texts,
    cells_table,
    grid_from_flags,
    load_grid,
    resolve,
    run_cell,
)
from tokenjoule.sim.report import plot_pareto
from tokenjoule.sim.run import SimConfig
from tokenjoule.traces.schema import Trace
from tokenjoule.traces.synth import SynthSpec, synthesize

DEFAULT = "h100-llama-3.1-8b-tokenjoule-cudagraph"


def _run(grid: Grid, trace: Trace) -> list[dict]:
    cells = resolve(grid.cells(), DEFAULT)
    return [run_cell(cell, trace) for cell in cells]


def _grid(axes: dict, **base) -> Grid:
    return Grid(axes, {"profile": str(TOY_PATH), **base})


def test_every_setting_is_an_axis():
    fields = {f.name for f in dataclasses.fields(SimConfig)} - {"record_events"}
    assert set(AXES) == fields | {"profile"}
    assert AXES[:5] == ("policy", "profile", "gpu", "replicas", "tp")  # old grids keep their cell order


def test_rate_axis_compresses_arrivals(tiny_trace):
    rows = _run(_grid({"rate_scale": (1.0, 4.0)}), tiny_trace)
    slow, fast = (r["summary"] for r in rows)
    assert [r["label"] for r in rows] == ["x1 rate", "x4 rate"]
    assert [r["config"]["rate_scale"] for r in rows] == [1.0, 4.0]
    assert fast["duration_s"] < slow["duration_s"] and fast["throughput_req_s"] > slow["throughput_req_s"]
    assert fast["output_tokens"] == slow["output_tokens"]


def test_pue_and_host_axes_change_the_totals_by_their_arithmetic(tiny_trace):
    rows = _run(_grid({"pue": (1.0, 1.5), "host_power_w": (0.0, 200.0)}), tiny_trace)
    by = {(r["config"]["pue"], r["config"]["host_power_w"]): r["summary"] for r in rows}
    plain = by[1.0, 0.0]
    assert by[1.5, 0.0]["energy_total_j"] == pytest.approx(1.5 * plain["energy_total_j"], rel=1e-12)
    assert by[1.0, 200.0]["host_j"] == pytest.approx(200.0 * plain["duration_s"], rel=1e-12)
    assert by[1.5, 200.0]["gpu_busy_j"] == plain["gpu_busy_j"]


def test_batch_limit_axis_changes_latency(tiny_trace):
    rows = _run(_grid({"max_num_seqs": (1, 64)}), tiny_trace)
    one, many = (r["summary"] for r in rows)
    assert one["e2e_p99_s"] > many["e2e_p99_s"] and one["queue_mean_s"] > many["queue_mean_s"]


def test_policy_only_axis_varies_only_the_policies_that_read_it():
    cells = _grid({"policy": ("static", "continuous"), "max_batch": (2, 8)}).cells()
    assert [c.label for c in cells] == ["static, batch 2", "static, batch 8", "continuous"]
    assert [c.axes["max_batch"] for c in cells] == [2, 8, None]
    assert cells[2].config.max_batch == SimConfig().max_batch
    with pytest.raises(ConfigError, match="only --policy static reads it"):
        _grid({"policy": ("continuous", "chunked"), "batch_timeout_s": (0.0, 1.0)}).cells()


def test_unknown_axis_lists_the_valid_ones(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text('[grid]\ncolour = ["red"]\n')
    with pytest.raises(ConfigError) as err:
        load_grid(path)
    assert "unknown grid axis 'colour'" in str(err.value) and "rate_scale" in str(err.value)
    with pytest.raises(ConfigError, match="--axis colour=red: unknown grid axis 'colour'; axes: policy, profile"):
        grid_from_flags(None, None, None, None, None, {}, ["colour=red"])


@pytest.mark.parametrize("toml,needles", [
    ("replicas = [0, 1]", ["[grid] replicas", "--replicas 0: must be >= 1"]),
    ("pue = [0.5]", ["[grid] pue", "--pue 0.5: must be >= 1"]),
    ("pue = [nan]", ["--pue nan: must be >= 1"]),
    ("max_num_seqs = [\"many\"]", ["[grid] max_num_seqs", "'many' is not an integer"]),
    ("router = [\"fastest\"]", ["--router 'fastest': must be one of"]),
    ("arrival_window_s = [[5, 1]]", ["[grid] arrival_window_s", "--window 5:1: must be START:END"]),
    ("gpu_memory_utilization = [1.5]", ["gpu_memory_utilization 1.5: must be in (0, 1]"]),
    ("replicas = [1, 1]", ["lists 1 twice"]),
])
def test_values_are_checked_as_simulate_checks_its_flags(tmp_path, toml, needles):
    path = tmp_path / "g.toml"
    path.write_text(f"[grid]\n{toml}\n")
    with pytest.raises(ConfigError) as err:
        load_grid(path).cells()
    assert str(err.value).startswith(str(path))
    for needle in needles:
        assert needle in str(err.value)


def test_a_combination_that_cannot_run_names_its_cell():
    grid = _grid({"policy": ("continuous", "chunked"), "max_num_seqs": (256, 4096)})
    with pytest.raises(ConfigError, match="what-if 'chunked, 4096 seqs': --max-batched-tokens 2048: must exceed"):
        grid.cells()
    h100, h200 = resolve(_grid({"gpu": ("H100-SXM", "H200-SXM")}).cells(), DEFAULT)
    assert h100.error is None and h100.choice is not None
    assert h200.label == "H200-SXM" and h200.choice is None  # fails without running; the H100 cell still runs
    assert isinstance(h200.error, ConfigError) and "was measured on" in str(h200.error)
    with pytest.raises(ConfigError, match="was measured on"):
        run_cell(h200, None)


def test_toml_pairs_and_series(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text("[grid]\narrival_window_s = [[0, 1.5], [1.5, 3]]\ncarbon_hourly = [[100, 200], [0]]\n"
                    "[base]\narrival_window_s = [0, 2]\n")
    grid = load_grid(path)
    assert grid.axes["arrival_window_s"] == ((0.0, 1.5), (1.5, 3.0))
    assert grid.axes["carbon_hourly"] == ((100.0, 200.0), (0.0,))
    assert grid.base["arrival_window_s"] == (0.0, 2.0)
    path.write_text("[grid]\narrival_window_s = [0, 600]\n")  # one pair: a one-value axis
    assert load_grid(path).axes["arrival_window_s"] == ((0.0, 600.0),)


def test_flags_and_a_grid_file_add_up(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text('[grid]\npolicy = ["static", "chunked"]\n[base]\nmax_batch = 4\n')
    grid = grid_from_flags(None, None, None, "1,2", None, {}, ["rate_scale=1,2.5", "arrival_window_s=0:2,2:4"],
                           into=load_grid(path))
    assert grid.axes["replicas"] == (1, 2) and grid.axes["rate_scale"] == (1.0, 2.5)
    assert grid.axes["arrival_window_s"] == ((0.0, 2.0), (2.0, 4.0)) and grid.base == {"max_batch": 4}
    assert len(grid.cells()) == 2 * 2 * 2 * 2
    with pytest.raises(ConfigError, match=r"--policies static: the policy axis is given twice \(also by .*g.toml"):
        grid_from_flags("static", None, None, None, None, {}, into=load_grid(path))
    with pytest.raises(ConfigError, match="--axis pue=1,x: 'x' is not a number"):
        grid_from_flags(None, None, None, None, None, {}, ["pue=1,x"])


def test_labels_are_short_and_human():
    assert axis_text("replicas", 4) == "4 replicas" and axis_text("replicas", 1) == "1 replica"
    assert axis_text("rate_scale", 2.0) == "x2 rate" and axis_text("pue", 1.2) == "PUE 1.2"
    assert axis_text("arrival_window_s", (0.0, 600.0)) == "window 0-600 s"
    assert axis_text("max_num_batched_tokens", 16384) == "16,384 tokens/iter"
    assert axis_text("profile", "runs/h200-llama-3.1-8b-eager.json") == "h200-llama-3.1-8b-eager"
    cells = _grid({"policy": ("continuous", "chunked"), "replicas": (1, 4), "rate_scale": (1.0, 2.0)}).cells()
    assert cells[3].label == "continuous, 4 replicas, x2 rate"
    assert _grid({"tp": (2,)}).cells()[0].label == "continuous"  # nothing varies: the policy names it


def test_profile_labels_keep_the_words_that_differ():
    texts = axis_texts("profile", ("calibrate/h100-llama-3.1-8b-tokenjoule-cudagraph.json",
                                   "h100-llama-3.1-8b-tokenjoule-eager", "h100-llama-3.1-8b-hf-eager"))
    assert list(texts.values()) == ["tokenjoule-cudagraph", "tokenjoule-eager", "hf-eager"]
    assert list(axis_texts("rate_scale", (1.0, 1.0000001)).values()) == ["rate_scale=1.0", "rate_scale=1.0000001"]


def test_cells_table_has_a_row_per_cell_matching_the_summaries(tiny_trace):
    grid = _grid({"policy": ("static", "continuous"), "max_batch": (2, 4), "rate_scale": (1.0, 2.0)})
    cells = resolve(grid.cells(), DEFAULT)
    rows = [run_cell(cell, tiny_trace) for cell in cells]
    table = cells_table(cells, rows, [0])
    assert table.num_rows == len(cells) == 6
    names = table.column_names
    assert names[:5] == ["label", "pareto", "policy", "max_batch", "rate_scale"]
    assert "profile_label" in names and "rejected_by_reason" not in names and names.count("policy") == 1
    for i, row in enumerate(table.to_pylist()):
        assert row["label"] == rows[i]["label"] and row["pareto"] == (i == 0)
        assert row["max_batch"] == cells[i].axes["max_batch"]
        assert row["profile_label"] == rows[i]["summary"]["profile"]
        for key, value in rows[i]["summary"].items():
            if key in names and key not in grid.axes:
                same = value == row[key] or (isinstance(value, float) and math.isnan(value) and row[key] is None)
                assert same, (key, value, row[key])


def test_pareto_plot_is_written_with_the_labels(tmp_path):
    import matplotlib

    labels = ["static, 1 replica", "continuous, 4 replicas, x2 rate", "chunked, PUE 1.2"]
    energy, p99 = [30.0, 20.0, 25.0], [2.0, 1.0, 3.0]
    plot_pareto(labels, energy, p99, tmp_path / "pareto.png")
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text stays text, so the labels can be read back
        plot_pareto(labels, energy, p99, tmp_path / "pareto.svg")
    svg = (tmp_path / "pareto.svg").read_text()
    assert all(label in svg for label in labels)


def test_model_axis_prices_each_model_as_simulate_does(capsys):
    from tokenjoule.cli import main

    synthetic = "n=20,input=256,output=32"
    grid = grid_from_flags(None, None, None, None, None, {}, ["model=llama-3.1-8b,qwen2.5-7b"])
    trace = synthesize(SynthSpec(20, input_tokens=256, output_tokens=32, process="zero"), np.random.default_rng(0))
    rows = [run_cell(cell, trace) for cell in resolve(grid.cells(), DEFAULT)]
    assert [r["label"] for r in rows] == ["llama-3.1-8b", "qwen2.5-7b"]
    assert [r["summary"]["cost_model"] for r in rows] == ["calibrated", "composed"]
    for row in rows:
        assert main(["simulate", "--model", row["config"]["model"], "--synthetic", synthetic, "--json"]) == 0
        alone = json.loads(capsys.readouterr().out)
        assert alone["energy_total_j"] == row["summary"]["energy_total_j"]
        assert alone["profile_source"] == row["summary"]["profile_source"]
