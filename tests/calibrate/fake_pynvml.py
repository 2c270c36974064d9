"""A stand-in for the pynvml module: NVMLError with codes, and counters driven by a clock function."""

from __future__ import annotations

import types
from collections.abc import Callable


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


def make_pynvml(energy_mj: Callable[[int], int] | None = None, init_error: int | None = None,
                energy_error: int | None = None, power_instant_ok: bool = True) -> types.ModuleType:
    """Module with the calls tokenjoule makes; `energy_mj(index)` gives each GPU's counter."""
    nv = types.ModuleType("pynvml")
    nv.NVMLError = NVMLError
    nv.NVML_SUCCESS = 0
    nv.NVML_ERROR_UNINITIALIZED, nv.NVML_ERROR_NOT_SUPPORTED, nv.NVML_ERROR_NO_PERMISSION = 1, 3, 4
    nv.NVML_ERROR_DRIVER_NOT_LOADED, nv.NVML_ERROR_LIBRARY_NOT_FOUND, nv.NVML_ERROR_GPU_IS_LOST = 9, 12, 15
    nv.NVML_FI_DEV_POWER_INSTANT, nv.NVML_TEMPERATURE_GPU, nv.NVML_CLOCK_SM, nv.NVML_CLOCK_MEM = 186, 0, 1, 2
    nv.calls = []

    def init() -> None:
        if init_error is not None:
            raise NVMLError(init_error)
        nv.calls.append("init")

    def energy(handle: int) -> int:
        if energy_error is not None:
            raise NVMLError(energy_error)
        return energy_mj(handle) if energy_mj else 1000

    def field_values(handle: int, ids: list[int]):
        value = types.SimpleNamespace(uiVal=250_500)
        return [types.SimpleNamespace(nvmlReturn=0 if power_instant_ok else 3, value=value)]

    nv.nvmlInit = init
    nv.nvmlShutdown = lambda: nv.calls.append("shutdown")
    nv.nvmlDeviceGetHandleByIndex = lambda i: i
    nv.nvmlDeviceGetTotalEnergyConsumption = energy
    nv.nvmlDeviceGetPowerUsage = lambda h: 240_000
    nv.nvmlDeviceGetFieldValues = field_values
    nv.nvmlDeviceGetTemperature = lambda h, sensor: 55
    nv.nvmlDeviceGetClockInfo = lambda h, clock: 1980
    nv.nvmlDeviceGetMaxClockInfo = lambda h, clock: 1980 if clock == 1 else 2619
    nv.nvmlDeviceGetName = lambda h: "NVIDIA H100 80GB HBM3"
    nv.nvmlDeviceGetUUID = lambda h: f"GPU-0000000{h}-fake"
    nv.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=85_520_809_984)
    nv.nvmlDeviceGetEnforcedPowerLimit = lambda h: 700_000
    nv.nvmlSystemGetDriverVersion = lambda: "570.86.15"
    return nv
