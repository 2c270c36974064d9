"""Sweeping: the calibration grid and the drivers that measure it on an engine (iterations, generate() calls, host)."""
