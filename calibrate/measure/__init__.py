"""Measuring: NVML energy meters, tick-aligned windows, power sampling, CUDA-event timing, fake meters for CPUs."""
