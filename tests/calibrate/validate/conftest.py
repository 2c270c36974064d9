"""The accuracy-report tests share the simulator tests' profile factory (`tests/sim/sim_profiles.py`)."""

from __future__ import annotations

import sys
from pathlib import Path

# pytest puts a test folder on sys.path only when it collects it, and tests/calibrate comes before tests/sim.
SIM_TESTS = str(Path(__file__).resolve().parents[2] / "sim")
if SIM_TESTS not in sys.path:
    sys.path.insert(0, SIM_TESTS)
