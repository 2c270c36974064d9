"""Calibration: NVML energy meters, microbenchmark sweeps, curve fits, profile files.

Only `profile.py` is imported by the simulator; it never imports torch.
"""
