"""What-if grids for `tokenjoule compare`: policies x engines (profiles) x GPUs x replicas x TP, from flags or TOML.

TOML layout (every key optional; lists are grid axes, `[base]` holds SimConfig fields shared by every cell):

    trace = "azure-conv-2023"        # or synthetic = "n=256,input=1024,output=128"
    [grid]
    policy = ["static", "continuous", "chunked"]
    profile = ["h100-llama-3.1-8b-tokenjoule-cudagraph"]   # engines: one profile per engine/mode
    gpu = ["H100-SXM"]                                     # datasheets, for the roofline cost models
    replicas = [1, 2]
    tp = [1]
    [base]
    cost = "calibrated"
    max_num_seqs = 256
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as the `tomli` backport (a dependency there)
    import tomli as tomllib

from tokenjoule.kernels.spec import ConfigError
from tokenjoule.sim.run import SimConfig, run

if TYPE_CHECKING:
    from tokenjoule.calibrate.profile import GPUProfile
    from tokenjoule.traces.schema import Trace

AXES = ("policy", "profile", "gpu", "replicas", "tp")


@dataclass(frozen=True, slots=True)
class Grid:
    """A grid of what-ifs.

    Attributes:
        axes: values per axis name (AXES); an absent axis keeps the base value.
        base: SimConfig fields shared by all cells.
        trace: trace file or bundled name (None: the caller's default).
        synthetic: synthetic trace spec, instead of `trace`.
    """

    axes: dict[str, tuple[Any, ...]]
    base: dict[str, Any]
    trace: str | None = None
    synthetic: str | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.axes) - set(AXES))
        if unknown:
            raise ConfigError(f"unknown grid axis {unknown[0]!r}; axes: {', '.join(AXES)}")
        fields = {f.name for f in dataclasses.fields(SimConfig)} | {"profile"}
        bad = sorted(set(self.base) - fields)
        if bad:
            raise ConfigError(f"unknown [base] setting {bad[0]!r}; settings are SimConfig fields and 'profile'")
        for name, values in self.axes.items():
            if not values:
                raise ConfigError(f"grid axis {name!r} is empty")

    def cells(self) -> list[tuple[str, str | None, SimConfig]]:
        """(label, profile name or None, config) per combination, in axis order."""
        names = [a for a in AXES if a in self.axes]
        out = []
        for combo in itertools.product(*(self.axes[a] for a in names)):
            values = dict(zip(names, combo, strict=True))
            profile = values.pop("profile", self.base.get("profile"))
            fields = {k: v for k, v in self.base.items() if k != "profile"}
            fields.update(values)
            config = SimConfig(**fields)
            varied = [_short(k, v) for k, v in zip(names, combo, strict=True) if len(self.axes[k]) > 1]
            label = " ".join(varied) or config.policy
            out.append((label, profile, config))
        return out


def _short(axis: str, value: Any) -> str:
    if axis == "replicas":
        return f"x{value}"
    if axis == "tp":
        return f"tp{value}"
    if axis == "profile":
        return Path(str(value)).stem
    return str(value)


def load_grid(path: str | Path) -> Grid:
    """Read a TOML grid file; malformed TOML or unknown keys raise ValueError naming the file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror or err})") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: malformed TOML ({err})") from err
    unknown = sorted(set(data) - {"trace", "synthetic", "grid", "base"})
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key {unknown[0]!r} (expected trace, synthetic, grid, base)")
    grid = data.get("grid", {})
    if not isinstance(grid, dict) or not isinstance(data.get("base", {}), dict):
        raise ConfigError(f"{path}: [grid] and [base] must be tables")
    axes = {k: tuple(v) if isinstance(v, list) else (v,) for k, v in grid.items()}
    try:
        return Grid(axes, dict(data.get("base", {})), data.get("trace"), data.get("synthetic"))
    except ValueError as err:
        raise ConfigError(f"{path}: {err}") from err


def grid_from_flags(policies: str | None, profiles: str | None, gpus: str | None, replicas: str | None,
                    tps: str | None, base: dict[str, Any]) -> Grid:
    """A grid from comma-separated flag values (None keeps the axis out)."""
    axes: dict[str, tuple[Any, ...]] = {}
    for name, text, kind in (("policy", policies, str), ("profile", profiles, str), ("gpu", gpus, str),
                             ("replicas", replicas, int), ("tp", tps, int)):
        if text:
            try:
                axes[name] = tuple(kind(v.strip()) for v in text.split(",") if v.strip())
            except ValueError as err:
                raise ConfigError(f"--{name}: {text!r} is not a comma-separated list of {kind.__name__}") from err
    return Grid(axes, base)


def simulate_cell(shared: tuple[Trace, dict[Any, GPUProfile | None]], cell: tuple[SimConfig, Any]) -> dict[str, Any]:
    """One what-if, as a task (`sim.parallel`): the summary of the cell's run.

    Args:
        shared: the trace every cell replays, and the profiles by the key each cell names.
        cell: (config, profile key).

    Returns:
        The run's summary.
    """
    trace, profiles = shared
    config, key = cell
    return run(config, trace, profiles[key]).summary
