"""Golden summary: a tiny trace + the toy profile must give the checked-in summary JSON.

Regenerate after an intended change with `TOKENJOULE_UPDATE_GOLDEN=1 pytest tests/golden`, and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tokenjoule.calibrate.profile import load_profile
from tokenjoule.sim.report import dumps
from tokenjoule.sim.run import SimConfig, run
from tokenjoule.traces.schema import Trace

HERE = Path(__file__).parent
TOY = HERE.parent / "fixtures" / "profiles" / "toy_h100_llama-3.1-8b.json"
CASES = {
    "continuous": SimConfig(slo_ttft_s=0.5, slo_tpot_s=0.02, carbon_g_per_kwh=400.0),
    "chunked": SimConfig(policy="chunked", replicas=2, router="least-outstanding", max_num_batched_tokens=512),
    "static": SimConfig(policy="static", max_batch=4, pue=1.2, host_power_w=300.0),
}


def _tiny_trace() -> Trace:
    arrival = [0.0, 0.1, 0.15, 0.4, 0.9, 1.0, 1.2, 1.7, 2.0, 2.05, 2.6, 3.1]
    inputs = [120, 800, 64, 2000, 300, 1500, 90, 700, 256, 4000, 33, 512]
    outputs = [30, 100, 8, 250, 60, 20, 1, 128, 64, 40, 200, 16]
    return Trace.from_columns(arrival, inputs, outputs, source="tiny")


@pytest.mark.parametrize("name", sorted(CASES))
def test_summary_matches_golden(name):
    summary = json.loads(dumps(run(CASES[name], _tiny_trace(), load_profile(TOY)).summary))
    path = HERE / f"sim_tiny_{name}.json"
    if os.environ.get("TOKENJOULE_UPDATE_GOLDEN"):
        path.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    golden = json.loads(path.read_text())
    assert summary.keys() == golden.keys()
    for key, expected in golden.items():
        if isinstance(expected, float):
            assert summary[key] == pytest.approx(expected, rel=1e-9, abs=1e-15), key
        else:
            assert summary[key] == expected, key
