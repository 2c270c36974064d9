"""The machine a measurement ran on: GPU (from NVML), host CPU, software versions, and whether it can calibrate.

Every profile and validation run records these; torch is imported only inside `software_info` and `check_device`.
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from tokenjoule.calibrate.measure.meters import EnergyMeter, NVMLMeter, make_meter, mw_to_w
from tokenjoule.calibrate.measure.nvml import MeterError


def datasheet_name(gpu_name: str | None) -> str | None:
    """DATASHEETS key for an NVML GPU name ("NVIDIA H100 80GB HBM3" -> "H100-SXM"), or None if unknown."""
    name = (gpu_name or "").upper()
    for marker, key in (("H100", "H100-SXM"), ("H200", "H200-SXM"), ("A100", "A100-SXM-80GB")):
        if marker in name:
            return key
    return None


def host_info(cpuinfo_path: str = "/proc/cpuinfo") -> dict[str, Any]:
    """Host CPU model (from /proc/cpuinfo) and logical core count."""
    model = platform.processor() or None
    try:
        for line in Path(cpuinfo_path).read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu_model": model, "cores": os.cpu_count(), "platform": platform.platform()}


def _pkg_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def software_info() -> dict[str, Any]:
    """Versions that shape the measurement: tokenjoule, torch, CUDA, transformers, triton, pynvml, git sha."""
    info: dict[str, Any] = {"tokenjoule": _pkg_version("tokenjoule"), "python": platform.python_version(),
                            "torch": _pkg_version("torch"), "cuda": None,
                            "transformers": _pkg_version("transformers"), "triton": _pkg_version("triton"),
                            "nvidia-ml-py": _pkg_version("nvidia-ml-py")}
    try:
        import torch

        info["cuda"] = torch.version.cuda
    except ImportError:
        pass
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        info["git_sha"] = sha or None
    except (OSError, subprocess.SubprocessError):
        info["git_sha"] = None
    return info


def gpu_info(meter: EnergyMeter) -> dict[str, Any]:
    """Name, driver, power limit, clocks, memory of the metered GPUs (first GPU's values; per-GPU list too)."""
    if not isinstance(meter, NVMLMeter):
        return {"name": None, "count": len(meter.gpu_indices), "datasheet": None}
    per_gpu = []
    for i in meter.gpu_indices:
        raw = meter.devices.describe(i)
        limit_mw = raw.pop("power_limit_mw")
        per_gpu.append({**raw, "power_limit_w": None if limit_mw is None else mw_to_w(limit_mw)})
    first = per_gpu[0]
    info = {key: first[key] for key in ("name", "memory_bytes", "power_limit_w", "max_sm_clock_mhz",
                                        "max_mem_clock_mhz", "sm_clock_mhz")}
    info.update(driver=meter.devices.driver_version(), count=len(per_gpu), devices=per_gpu,
                datasheet=datasheet_name(first["name"]))
    return info


def gpu_uuids(gpu: dict[str, Any]) -> tuple[str | None, ...]:
    """The UUIDs of the GPUs `gpu_info` described (None where it could not read one)."""
    return tuple(d.get("uuid") for d in gpu.get("devices") or [{}])


def check_device(gpu_indices: Sequence[int]) -> None:
    """MeterError (one line, saying why) unless torch sees CUDA and NVML reads the GPUs' energy counters."""
    try:
        import torch
    except ImportError as err:
        raise MeterError("calibrate needs torch with CUDA (pip install 'tokenjoule[calibrate]')") from err
    if not torch.cuda.is_available():
        raise MeterError("calibrate needs a CUDA GPU; torch.cuda.is_available() is False on this machine")
    meter = make_meter(gpu_indices)
    try:
        if not meter.has_energy:
            raise MeterError(f"calibrate needs NVML's energy counter: {getattr(meter, 'reason', 'unavailable')}")
    finally:
        meter.close()


def gpu_tag(gpu_indices: Sequence[int]) -> str:
    """Short file-name tag of the GPUs measured: 'h100', or 'h100x2' for two."""
    meter = make_meter(gpu_indices)
    try:
        name = meter.devices.describe(gpu_indices[0])["name"] if isinstance(meter, NVMLMeter) else None
    finally:
        meter.close()
    key = datasheet_name(name)
    tag = key.split("-")[0].lower() if key else "gpu"
    return tag if len(gpu_indices) == 1 else f"{tag}x{len(gpu_indices)}"
