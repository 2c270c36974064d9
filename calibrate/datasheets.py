"""GPU datasheet numbers (peak FLOP/s, bandwidth, TDP), each with its source: the roofline model and KV sizing."""

from __future__ import annotations

from dataclasses import dataclass

from tokenjoule.calibrate.errors import ProfileError


@dataclass(frozen=True, slots=True)
class GPUSpec:
    """Datasheet numbers for a GPU, each with its source. Used by the roofline model and KV sizing.

    Attributes:
        name: short name, e.g. "H100-SXM".
        memory_bytes: HBM capacity.
        peak_flops: dense (not sparse) bf16 tensor FLOP/s.
        hbm_bytes_per_s: memory bandwidth.
        tdp_w: board power limit (TDP).
        source: where the numbers come from.
    """

    name: str
    memory_bytes: int
    peak_flops: float
    hbm_bytes_per_s: float
    tdp_w: float
    source: str


DATASHEETS: dict[str, GPUSpec] = {
    "H100-SXM": GPUSpec("H100-SXM", 80 * 10**9, 989.4e12, 3.35e12, 700.0,
                        "NVIDIA H100 Tensor Core GPU datasheet (SXM5: 989 TFLOPS dense BF16, 3.35 TB/s, 700 W)"),
    "H200-SXM": GPUSpec("H200-SXM", 141 * 10**9, 989.4e12, 4.8e12, 700.0,
                        "NVIDIA H200 Tensor Core GPU datasheet (SXM: 989 TFLOPS dense BF16, 4.8 TB/s, 700 W)"),
    "A100-SXM-80GB": GPUSpec("A100-SXM-80GB", 80 * 10**9, 312e12, 2.039e12, 400.0,
                             "NVIDIA A100 datasheet (SXM 80GB: 312 TFLOPS dense BF16, 2,039 GB/s, 400 W)"),
}


def gpu_spec(name: str) -> GPUSpec:
    """Datasheet entry by exact name; the error lists the known names."""
    if name not in DATASHEETS:
        raise ProfileError(f"unknown GPU {name!r}; known GPUs: {', '.join(sorted(DATASHEETS))}")
    return DATASHEETS[name]
