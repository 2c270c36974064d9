"""`compare` and `project` as Ray tasks on a local Ray instance give the serial results (Ray starts once: seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tokenjoule.cli import app

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

TOY = str(Path(__file__).parents[1] / "fixtures" / "profiles" / "toy_h100_llama-3.1-8b.json")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray instance for the module; `--ray auto` joins it (and leaves it running)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _run(*args: str):
    return CliRunner().invoke(app, list(args), terminal_width=200)


def test_compare_on_ray_equals_the_serial_run_and_keeps_the_cells_that_did_not_fail():
    grid = ("compare", "--synthetic", "n=48,input=512,output=32,rate=4", "--policies", "static,chunked", "--tp", "1,3",
            "--json")
    serial, on_ray = _run(*grid), _run(*grid, "--ray", "auto")
    assert serial.exit_code == on_ray.exit_code == 1, on_ray.output
    assert json.loads(on_ray.stdout) == json.loads(serial.stdout)
    assert len(json.loads(on_ray.stdout)["cells"]) == 2 and "cell 'chunked, TP 3'" in on_ray.stderr


def test_project_on_ray_equals_the_serial_run(tmp_path):
    rng = np.random.default_rng(5)
    n = 2000
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"arrival_s": np.cumsum(rng.exponential(0.1, n)),
                             "input_tokens": rng.integers(16, 2000, n), "output_tokens": rng.integers(1, 400, n)}),
                   path, row_group_size=300)
    args = ("project", str(path), "--profile", TOY, "--window-s", "20", "--pad-s", "1", "--json")
    serial, on_ray = _run(*args), _run(*args, "--ray", "auto")
    assert serial.exit_code == on_ray.exit_code == 0, on_ray.output
    a, b = json.loads(serial.stdout), json.loads(on_ray.stdout)
    assert b["estimates"]["load_aware"]["pad_s"] == a["estimates"]["load_aware"]["pad_s"] > 1
    for name in ("paper", "theoretical", "load_aware"):
        for key, value in a["estimates"][name].items():
            assert b["estimates"][name][key] == (pytest.approx(value, rel=1e-9) if isinstance(value, float)
                                                 else value), (name, key)
