"""Where tasks run (`sim.parallel`): in order, failures kept per task, the flags checked; and `compare` on workers."""

from __future__ import annotations

import builtins
import json
import operator

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tokenjoule.cli import app
from tokenjoule.kernels.spec import ConfigError
from tokenjoule.sim.parallel import Backend, guarded, open_executor


def _compare(*args: str):
    return CliRunner().invoke(app, ["compare", "--synthetic", "n=48,input=512,output=32,rate=4", *args],
                              terminal_width=200)


@pytest.mark.parametrize("backend", [Backend(), Backend(jobs=2)], ids=["serial", "processes"])
def test_outcomes_come_in_item_order_and_a_failure_keeps_the_rest(backend):
    ticks = []
    with open_executor(backend) as executor:
        out = executor.map(operator.truediv, [1, 0, 4, 8], shared=8.0, on_done=lambda done, n: ticks.append((done, n)))
    assert [o.value for o in out] == [8.0, None, 2.0, 1.0]
    assert [o.ok for o in out] == [True, False, True, True]
    assert isinstance(out[1].error, ZeroDivisionError) and "ZeroDivisionError" in out[1].traceback
    assert ticks[-1] == (4, 4) and [d for d, _ in ticks] == sorted(d for d, _ in ticks)


def test_an_error_that_cannot_travel_back_is_sent_as_text():
    class Local(Exception):  # defined here: a worker's pickle cannot name it
        pass

    def fails(shared, item):
        raise Local(f"cell {item}")

    outcome = guarded(fails, None, 3)
    assert isinstance(outcome.error, RuntimeError) and str(outcome.error) == "Local: cell 3"


def test_the_flags_are_checked_with_one_line_naming_them():
    with pytest.raises(ConfigError, match="--jobs 0: must be >= 1"):
        Backend(jobs=0)
    with pytest.raises(ConfigError, match="give --jobs or --ray, not both"):
        Backend(jobs=2, ray="auto")
    result = _compare("--jobs", "0")
    assert result.exit_code == 2 and result.output.strip() == "error: --jobs 0: must be >= 1"


def test_ray_missing_is_one_line_naming_the_extra(monkeypatch):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    result = _compare("--ray", "auto")
    assert result.exit_code == 2
    assert result.output.strip() == "error: --ray needs Ray: pip install 'tokenjoule[ray]'"


def test_compare_on_worker_processes_equals_the_serial_run():
    serial = _compare("--policies", "static,continuous", "--replicas", "1,2", "--json")
    workers = _compare("--policies", "static,continuous", "--replicas", "1,2", "--json", "--jobs", "2")
    assert serial.exit_code == 0 and workers.exit_code == 0, workers.output
    assert json.loads(workers.stdout) == json.loads(serial.stdout)
    assert len(json.loads(serial.stdout)["cells"]) == 4


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_failed_cell_is_reported_with_its_settings_and_the_others_kept(jobs, tmp_path):
    # tp=3 does not divide Llama-3.1-8B's 8 KV heads: that cell cannot be priced and fails without running
    result = _compare("--tp", "1,3", "--policies", "static,continuous", "--json", "--jobs", jobs,
                      "--out", str(tmp_path / "cmp"))
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert [c["label"] for c in data["cells"]] == ["static, TP 1", "continuous, TP 1"]
    assert [(c["label"], c["config"]["tp"]) for c in data["failed"]] == [("static, TP 3", 3), ("continuous, TP 3", 3)]
    assert "--tp 3: must divide" in data["failed"][0]["error"]
    assert "error: cell 'static, TP 3' (policy=static, tp=3) failed: --tp 3: must divide" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: 2 of 4 cells failed; the other cells' results are kept"
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["failed"] == data["failed"]
    table = pq.read_table(tmp_path / "cmp" / "compare.parquet")  # the table holds the cells that ran
    assert table.column("label").to_pylist() == ["static, TP 1", "continuous, TP 1"]


def test_a_cell_failing_while_it_runs_is_kept_apart(monkeypatch):
    from tokenjoule.sim import compare

    real = compare.simulate_cell

    def fails_for_static(shared, task):
        if task[0].policy == "static":
            raise MemoryError("out of memory")
        return real(shared, task)

    monkeypatch.setattr(compare, "simulate_cell", fails_for_static)
    result = _compare("--policies", "static,continuous", "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert [c["label"] for c in data["cells"]] == ["continuous"]
    assert data["failed"][0]["label"] == "static" and data["failed"][0]["error"] == "MemoryError: out of memory"
    assert "error: cell 'static' (policy=static) failed: MemoryError: out of memory" in result.stderr
