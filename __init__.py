"""tokenjoule: the energy of LLM serving, calibrated on a GPU and simulated on a CPU.

The repository root is this package: `traces/`, `kernels/`, `calibrate/` and `sim/` are its subpackages (one job
each), and `cli.py` is the `tokenjoule` command that mounts their commands.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tokenjoule")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
