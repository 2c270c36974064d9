"""The simulator (and the `tokenjoule simulate` command) must work without importing torch."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
import tokenjoule.cli, tokenjoule.sim.run, tokenjoule.sim.report, tokenjoule.sim.compare
from tokenjoule.sim.run import SimConfig, run
from tokenjoule.traces.schema import Trace
run(SimConfig(cost="roofline"), Trace.from_columns([0.0], [10], [2]))
print("torch" in sys.modules)
"""


def test_simulating_does_not_import_torch():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
