"""docs/validation.json must be what the committed raw measurement files say: recompute every figure and compare."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "validation.json"
SCRIPT = ROOT / "tests" / "bench" / "validation_report.py"


def _script():
    spec = importlib.util.spec_from_file_location("validation_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def committed():
    return json.loads(DOC.read_text())


def _close(a, b, path=""):
    """Recursive comparison of two JSON values (floats to 1e-9 relative)."""
    if isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys differ {set(a) ^ set(b)}"
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, (int, float)):
        assert b == pytest.approx(a, rel=1e-9, abs=1e-12) or (math.isnan(a) and math.isnan(b)), path
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def test_report_matches_a_fresh_recomputation_from_the_raw_files(committed):
    vr = _script()
    fresh = json.loads(vr.report_json(vr.build_report(tuple(ROOT / "validation" / r["run"]
                                                             for r in committed["runs"]))))
    _close(fresh, committed)


def test_measured_values_and_errors_follow_from_the_raw_files(committed):
    """Independent of the report script: measured figures straight from Parquet/JSON, errors from the pairs."""
    assert len(committed["scenarios"]) >= 6
    for run in committed["runs"]:
        run_dir = ROOT / "validation" / run["run"]
        doc = json.loads((run_dir / "validation.json").read_text())
        reqs = pq.read_table(run_dir / "requests.parquet")
        totals = {s["scenario"]["name"]: s for s in doc["scenarios"]}
        for entry in [e for e in committed["scenarios"] if e["run"] == run["run"]]:
            raw = totals[entry["scenario"]]
            rows = reqs.filter(pc.equal(reqs.column("scenario"), entry["scenario"]))
            a, f, z = (rows.column(c).to_numpy() for c in ("arrival_s", "first_token_s", "finish_s"))
            out = rows.column("output_tokens").to_numpy()
            assert np.isfinite(z).all() and len(z) == raw["n_finished"] == entry["n_requests"]
            m = entry["measured"]
            assert m["energy_total_j"] == pytest.approx(raw["energy_j"])
            assert m["j_per_request"] == pytest.approx(raw["energy_j"] / len(z))
            assert m["ttft_p50_s"] == pytest.approx(float(np.median(f - a)))
            assert m["e2e_p50_s"] == pytest.approx(float(np.median(z - a)))
            many = out > 1
            assert m["tpot_p50_s"] == pytest.approx(float(np.median((z - f)[many] / (out[many] - 1))))
            for metric, err in entry["error"].items():
                if err is not None:
                    assert err == pytest.approx((entry["simulated"][metric] - m[metric]) / m[metric])
    energy = sorted(abs(e["error"]["energy_total_j"]) for e in committed["scenarios"])
    summary = committed["summary"]["energy_total_j"]
    assert summary["max_abs"] == pytest.approx(energy[-1]) and summary["median_abs"] == pytest.approx(
        float(np.median(energy)))


def test_markdown_is_rendered_from_the_report(committed):
    text = (ROOT / "docs" / "validation.md").read_text()
    assert text == _script().render_markdown(committed)
    assert (ROOT / "docs" / "validation_power.png").stat().st_size > 1000
