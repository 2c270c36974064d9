"""The one doorway to pynvml: NVML calls for a list of GPUs, with NVML errors mapped onto MeterError subclasses.

Units are NVML's own here (mJ, mW, MHz, degrees C); `meters.py` converts them to J and W, once.
pynvml (package `nvidia-ml-py`) is imported when an `NVMLDevices` is built, never at module import.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


class MeterError(RuntimeError):
    """An energy meter cannot read what it was asked to read."""


class NVMLUnavailableError(MeterError):
    """NVML cannot be used at all (library or driver missing, pynvml not installed)."""


class NVMLNotSupportedError(MeterError):
    """This GPU or driver does not support the query (e.g. the total-energy counter before Volta)."""


class NVMLPermissionError(MeterError):
    """The process lacks the permission the query needs."""


class NVMLDeviceError(MeterError):
    """Any other NVML failure (invalid index, GPU lost, unknown error)."""


def _map_nvml_error(nvml: Any, err: Exception, call: str) -> MeterError:
    code = getattr(err, "value", None)
    text = f"NVML {call}: {err}"
    if code in (getattr(nvml, "NVML_ERROR_LIBRARY_NOT_FOUND", 12), getattr(nvml, "NVML_ERROR_DRIVER_NOT_LOADED", 9),
                getattr(nvml, "NVML_ERROR_UNINITIALIZED", 1)):
        return NVMLUnavailableError(f"{text} (is the NVIDIA driver installed and a GPU visible?)")
    if code == getattr(nvml, "NVML_ERROR_NOT_SUPPORTED", 3):
        return NVMLNotSupportedError(f"{text} (this GPU/driver does not expose it)")
    if code == getattr(nvml, "NVML_ERROR_NO_PERMISSION", 4):
        return NVMLPermissionError(f"{text} (run with permission to query the GPU)")
    return NVMLDeviceError(text)


def _handle_nvml_errors(method: F) -> F:
    """Decorate an `NVMLDevices` method so any `pynvml.NVMLError` leaves as a MeterError subclass."""

    @functools.wraps(method)
    def wrapper(self: NVMLDevices, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except self.nvml.NVMLError as err:
            raise _map_nvml_error(self.nvml, err, method.__name__) from err

    return wrapper  # type: ignore[return-value]


def _import_pynvml() -> Any:
    try:
        import pynvml
    except ImportError as err:
        raise NVMLUnavailableError("pynvml is not installed (pip install nvidia-ml-py)") from err
    return pynvml


class NVMLDevices:
    """NVML handles for some GPU indices; every NVML call of tokenjoule goes through this class.

    Args:
        gpu_indices: NVML device indices (as `nvidia-smi` numbers them).
        nvml: the pynvml module; imported when None (tests pass a stand-in).

    Raises:
        MeterError: NVML cannot initialise or an index is invalid.
    """

    def __init__(self, gpu_indices: Sequence[int], nvml: Any | None = None) -> None:
        if not gpu_indices:
            raise ValueError("gpu_indices must name at least one GPU")
        self.nvml = nvml if nvml is not None else _import_pynvml()
        self.gpu_indices = tuple(int(i) for i in gpu_indices)
        self._init()
        self._handles = {i: self._handle(i) for i in self.gpu_indices}
        self._instant_field_ok = True

    @_handle_nvml_errors
    def _init(self) -> None:
        self.nvml.nvmlInit()

    @_handle_nvml_errors
    def _handle(self, index: int) -> Any:
        return self.nvml.nvmlDeviceGetHandleByIndex(index)

    @_handle_nvml_errors
    def shutdown(self) -> None:
        """Release NVML (pairs with the nvmlInit done at construction)."""
        self.nvml.nvmlShutdown()

    @_handle_nvml_errors
    def total_energy_mj(self, index: int) -> int:
        """Cumulative energy since the driver loaded. Units: mJ."""
        return int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self._handles[index]))

    def total_energy_mj_all(self) -> dict[int, int]:
        """`total_energy_mj` of every GPU, by index. Units: mJ."""
        return {i: self.total_energy_mj(i) for i in self.gpu_indices}

    @_handle_nvml_errors
    def power_usage_mw(self, index: int) -> int:
        """Board power as NVML averages it (about a 1 s window on Hopper). Units: mW."""
        return int(self.nvml.nvmlDeviceGetPowerUsage(self._handles[index]))

    def power_instant_mw(self, index: int) -> int:
        """Instantaneous power (field NVML_FI_DEV_POWER_INSTANT), falling back to `power_usage_mw`. Units: mW."""
        if self._instant_field_ok:
            value = self._field_power_instant(index)
            if value is not None:
                return value
            self._instant_field_ok = False
            logger.info("NVML_FI_DEV_POWER_INSTANT unsupported; sampling nvmlDeviceGetPowerUsage instead")
        return self.power_usage_mw(index)

    @_handle_nvml_errors
    def _field_power_instant(self, index: int) -> int | None:
        field_id = getattr(self.nvml, "NVML_FI_DEV_POWER_INSTANT", None)
        if field_id is None:
            return None
        values = self.nvml.nvmlDeviceGetFieldValues(self._handles[index], [field_id])
        if not values or values[0].nvmlReturn != getattr(self.nvml, "NVML_SUCCESS", 0):
            return None
        return int(values[0].value.uiVal)

    @_handle_nvml_errors
    def temperature_c(self, index: int) -> int:
        """GPU die temperature. Units: degrees Celsius."""
        return int(self.nvml.nvmlDeviceGetTemperature(self._handles[index], self.nvml.NVML_TEMPERATURE_GPU))

    @_handle_nvml_errors
    def sm_clock_mhz(self, index: int) -> int:
        """Current SM clock. Units: MHz."""
        return int(self.nvml.nvmlDeviceGetClockInfo(self._handles[index], self.nvml.NVML_CLOCK_SM))

    def describe(self, index: int) -> dict[str, Any]:
        """Static metadata of one GPU (name, UUID, memory, power limit mW, clocks MHz); unsupported fields are None."""
        nv, handle = self.nvml, self._handles[index]
        name = self._optional(nv.nvmlDeviceGetName, handle)
        memory = self._optional(nv.nvmlDeviceGetMemoryInfo, handle)
        limit_mw = self._optional(nv.nvmlDeviceGetEnforcedPowerLimit, handle)
        uuid = self._optional(nv.nvmlDeviceGetUUID, handle)  # tells one card (and so one machine) from another
        return {
            "index": index,
            "name": name.decode() if isinstance(name, bytes) else name,
            "uuid": uuid.decode() if isinstance(uuid, bytes) else uuid,
            "memory_bytes": int(memory.total) if memory is not None else None,
            "power_limit_mw": limit_mw,
            "max_sm_clock_mhz": self._optional(nv.nvmlDeviceGetMaxClockInfo, handle, nv.NVML_CLOCK_SM),
            "max_mem_clock_mhz": self._optional(nv.nvmlDeviceGetMaxClockInfo, handle, nv.NVML_CLOCK_MEM),
            "sm_clock_mhz": self._optional(nv.nvmlDeviceGetClockInfo, handle, nv.NVML_CLOCK_SM),
        }

    def driver_version(self) -> str | None:
        """The NVIDIA driver version string, or None when NVML will not say."""
        value = self._optional(self.nvml.nvmlSystemGetDriverVersion)
        return value.decode() if isinstance(value, bytes) else value

    def _optional(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except self.nvml.NVMLError as err:
            logger.info("NVML %s unavailable: %s", getattr(fn, "__name__", fn), err)
            return None
