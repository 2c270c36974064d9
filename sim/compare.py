"""What-if grids for `tokenjoule compare`: any simulation setting as an axis, from flags or a TOML file.

TOML layout (every key optional; lists are grid axes, `[base]` holds settings shared by every cell):

    trace = "azure-conv-2023"        # or synthetic = "n=256,input=1024,output=128"
    [grid]
    policy = ["static", "continuous", "chunked"]
    profile = ["h100-llama-3.1-8b-tokenjoule-cudagraph"]   # engines: one profile per engine/mode
    replicas = [1, 2]
    rate_scale = [1.0, 2.0]
    max_num_seqs = [64, 256]
    arrival_window_s = [[0, 600], [600, 1200]]            # a pair per value (carbon_hourly: a list per value)
    [base]
    cost = "calibrated"
    pue = 1.2

The axes (`AXES`) are `profile` and the `SimConfig` fields, under their names; `[base]` takes the same names.
Every value is checked as `tokenjoule simulate` checks its flag (type, range, and then each cell's profile and cost
model) before any cell runs. An axis that only some policies read (`POLICY_SETTINGS`: max_batch and
batch_timeout_s for static; max_num_seqs and max_num_batched_tokens for continuous and chunked) varies only the
cells of those policies; the other policies run once, with the base value. Each cell's label names its axis values
in short human form ("continuous, 4 replicas, x2 rate").
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as the `tomli` backport (a dependency there)
    import tomli as tomllib

from tokenjoule.calibrate.cost_form import ProfileError
from tokenjoule.kernels.spec import ConfigError
from tokenjoule.sim.run import POLICY_SETTINGS, SimConfig, build_cost_model, run
from tokenjoule.sim.tp_profiles import ProfileChoice, choose_for_model, choose_profile
from tokenjoule.traces.schema import Trace

if TYPE_CHECKING:
    from tokenjoule.calibrate.profile import GPUProfile

# What a setting's values are, from its SimConfig type: "int", "float", "str", "bool", "pair" (start, end) or
# "floats" (a series).
_KINDS = {"int": "int", "float": "float", "str": "str", "bool": "bool", "tuple[float, float]": "pair",
          "tuple[float, ...]": "floats"}
SETTING_KINDS: dict[str, str] = {"profile": "str", **{
    f.name: _KINDS[str(f.type).removesuffix(" | None")] for f in dataclasses.fields(SimConfig)}}
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SimConfig)}
# Grid axes: the five the grid always had first (their cells keep their order), then every other setting except the
# event log, which changes no result.
_FIRST = ("policy", "profile", "gpu", "replicas", "tp")
AXES: tuple[str, ...] = (*_FIRST, *(n for n in SETTING_KINDS if n not in _FIRST and n != "record_events"))


@dataclass(frozen=True, slots=True)
class Cell:
    """One what-if of a grid.

    Attributes:
        label: its axis values in short human form, e.g. "continuous, 4 replicas, x2 rate".
        profile: the profile as the grid names it (a file or shipped name; None: the default).
        axes: its value of each axis (None for an axis its policy does not read).
        config: the configuration.
        choice: the profile that prices it, once `resolve` has picked it (None before, or if it failed).
        error: why `resolve` could not price it (None if it could): the cell fails, the others still run.
    """

    label: str
    profile: str | None
    axes: dict[str, Any]
    config: SimConfig
    choice: ProfileChoice | None = None
    error: Exception | None = None


@dataclass(frozen=True, slots=True)
class Grid:
    """A grid of what-ifs.

    Attributes:
        axes: values per axis name (AXES); an absent axis keeps the base value.
        base: settings shared by all cells (SimConfig fields and 'profile').
        trace: trace file or bundled name (None: the caller's default).
        synthetic: synthetic trace spec, instead of `trace`.
        origins: where each axis (and "[base]") was given: a flag, or the file's table and key, for messages.
    """

    axes: dict[str, tuple[Any, ...]]
    base: dict[str, Any]
    trace: str | None = None
    synthetic: str | None = None
    origins: dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        check_names(self.axes, self.base)
        for name, values in self.axes.items():
            if not values:
                raise ConfigError(f"{self.origin(name)} is empty")
            repeated = [v for i, v in enumerate(values) if v in values[:i]]
            if repeated:
                raise ConfigError(f"{self.origin(name)} lists {repeated[0]!r} twice")

    def origin(self, axis: str) -> str:
        """Where `axis` was given, for messages ("--replicas 1,2", "grid.toml: [grid] pue")."""
        return self.origins.get(axis, f"grid axis {axis!r}")

    def cells(self) -> list[Cell]:
        """One cell per combination of the axes' values, in axis order, each checked as simulate checks its flags.

        A cell whose policy does not read an axis (see the module docstring) takes the base value there, so its
        policy runs once instead of once per value.

        Raises:
            ConfigError: a cell's settings out of range (naming the cell), or an axis that no cell's policy reads.
        """
        names = [a for a in AXES if a in self.axes]
        base = {k: v for k, v in self.base.items() if k != "profile"}
        texts = {a: axis_texts(a, self.axes[a]) for a in names if len(self.axes[a]) > 1}
        out, seen, read_by = [], set(), set()
        for combo in itertools.product(*(self.axes[a] for a in names)):
            values = dict(zip(names, combo, strict=True))
            policy = values.get("policy", base.get("policy", _DEFAULTS["policy"]))
            read = {a: v for a, v in values.items() if policy in POLICY_SETTINGS.get(a, (policy,))}
            read_by.update(read)
            if tuple(read.items()) in seen:
                continue
            seen.add(tuple(read.items()))
            label = ", ".join(texts[a][v] for a, v in read.items() if a in texts) or policy
            fields = {k: v for k, v in read.items() if k != "profile"}
            try:
                config = SimConfig(**{**base, **fields})
            except ConfigError as err:
                raise ConfigError(f"what-if {label!r}: {err}") from err
            out.append(Cell(label, read.get("profile", self.base.get("profile")),
                            {a: read.get(a) for a in names}, config))
        for name in names:
            if name not in read_by:
                readers = POLICY_SETTINGS[name]
                raise ConfigError(f"{self.origin(name)}: only --policy {' and '.join(readers)} "
                                  f"{'reads' if len(readers) == 1 else 'read'} it (this grid runs "
                                  f"{', '.join(sorted({c.config.policy for c in out}))}); drop it")
        return out


def check_names(axes: dict[str, Any], base: dict[str, Any]) -> None:
    """Refuse an unknown axis or [base] setting, listing the valid names."""
    unknown = sorted(set(axes) - set(AXES))
    if unknown:
        raise ConfigError(f"unknown grid axis {unknown[0]!r}; axes: {', '.join(AXES)}")
    bad = sorted(set(base) - set(SETTING_KINDS))
    if bad:
        raise ConfigError(f"unknown [base] setting {bad[0]!r}; settings are SimConfig fields and 'profile'")


def axis_texts(axis: str, values: tuple[Any, ...]) -> dict[Any, str]:
    """Each value of an axis in short human form ("4 replicas", "x2 rate", "PUE 1.2"), distinct per value.

    Profiles are shortened to the parts of their names that differ ("cudagraph", "eager"); a value whose short form
    would repeat another's keeps its full form.
    """
    if axis == "profile":
        names = [_profile_name(v) for v in values]
        short = _differing_parts(names)
        texts = {v: s for v, s in zip(values, short, strict=True)}
    else:
        texts = {v: axis_text(axis, v) for v in values}
    if len(set(texts.values())) < len(values):
        texts = {v: f"{axis}={v}" for v in values}
    return texts


def _profile_name(value: str) -> str:
    """A profile file's name without folder and .json, or a shipped name as is (its dots are not a suffix)."""
    return Path(str(value)).name.removesuffix(".json")


def _differing_parts(names: list[str]) -> list[str]:
    """Drop the dash-separated words that every name shares at its start and at its end."""
    parts = [n.split("-") for n in names]
    head = 0
    while all(len(p) > head + 1 for p in parts) and len({p[head] for p in parts}) == 1:
        head += 1
    tail = 0
    while all(len(p) > head + tail + 1 for p in parts) and len({p[-1 - tail] for p in parts}) == 1:
        tail += 1
    return ["-".join(p[head:len(p) - tail]) for p in parts]


def _num(value: float) -> str:
    return f"{value:,g}" if abs(value) >= 1e4 else f"{value:g}"


# Short forms of axis values; an axis not named here shows "name value".
_TEXT = {
    "replicas": lambda v: f"{v} replica" + ("s" if v != 1 else ""),
    "tp": lambda v: f"TP {v}",
    "rate_scale": lambda v: f"x{_num(v)} rate",
    "router": lambda v: f"{v} router",
    "cost": lambda v: f"{v} cost",
    "max_num_seqs": lambda v: f"{v} seqs",
    "max_num_batched_tokens": lambda v: f"{_num(v)} tokens/iter",
    "max_batch": lambda v: f"batch {v}",
    "batch_timeout_s": lambda v: f"wait {_num(v)} s",
    "gpu_memory_utilization": lambda v: f"{v:.0%} memory",
    "block_size": lambda v: f"KV block {v}",
    "idle_power_w": lambda v: f"idle {_num(v)} W",
    "host_power_w": lambda v: f"host {_num(v)} W",
    "pue": lambda v: f"PUE {_num(v)}",
    "carbon_g_per_kwh": lambda v: f"{_num(v)} gCO2e/kWh",
    "carbon_hourly": lambda v: f"carbon {len(v)} h from {_num(v[0])} g/kWh",
    "slo_ttft_s": lambda v: f"TTFT SLO {_num(v)} s",
    "slo_tpot_s": lambda v: f"TPOT SLO {_num(v)} s",
    "arrival_window_s": lambda v: f"window {_num(v[0])}-{_num(v[1])} s",
    "allreduce_bus_bytes_per_s": lambda v: f"all-reduce {_num(v / 1e9)} GB/s",
    "allreduce_latency_s": lambda v: f"all-reduce {_num(v * 1e6)} us",
}


def axis_text(axis: str, value: Any) -> str:
    """One axis value in short human form: `axis_text("replicas", 4)` is "4 replicas"."""
    if axis in ("policy", "gpu", "model"):
        return str(value)
    if axis == "profile":
        return _profile_name(value)
    text = _TEXT.get(axis)
    return text(value) if text is not None else f"{axis} {value}"


def setting_value(name: str, value: Any) -> Any:
    """A TOML (or already parsed) value of a setting as SimConfig holds it; ValueError says what was expected."""
    kind = SETTING_KINDS[name]
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "float" and number:
        return float(value)
    if (kind == "str" and isinstance(value, str)) or (kind == "bool" and isinstance(value, bool)):
        return value
    if kind in ("pair", "floats") and isinstance(value, (list, tuple)) and value and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        if kind == "floats" or len(value) == 2:
            return tuple(float(v) for v in value)
    expected = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
                "pair": "a [start, end] pair of numbers", "floats": "a list of numbers"}[kind]
    raise ValueError(f"{value!r} is not {expected}")


def setting_from_text(name: str, text: str) -> Any:
    """A setting's value from flag text ("4", "1.5", "chunked", "0:600"); ValueError says what was expected."""
    kind = SETTING_KINDS[name]
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind == "bool" and text.lower() in ("true", "false"):
            return text.lower() == "true"
        if kind == "pair":
            start, end = text.split(":")
            return float(start), float(end)
    except ValueError:
        pass
    if kind == "str":
        return text
    if kind == "floats":
        raise ValueError(f"{name} takes a list of numbers per value; give it in a --config TOML file")
    expected = {"int": "an integer", "float": "a number", "bool": "true or false", "pair": "START:END seconds"}[kind]
    raise ValueError(f"{text!r} is not {expected}")


def load_grid(path: str | Path) -> Grid:
    """Read a TOML grid file; malformed TOML, unknown keys or bad values raise ConfigError naming the file."""
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
    grid, base = data.get("grid", {}), data.get("base", {})
    if not isinstance(grid, dict) or not isinstance(base, dict):
        raise ConfigError(f"{path}: [grid] and [base] must be tables")
    try:
        check_names(grid, base)
        base = {k: _checked(f"{path}: [base] {k}", k, v) for k, v in base.items()}
        axes = {k: tuple(_checked(f"{path}: [grid] {k}", k, v) for v in _axis_values(k, v)) for k, v in grid.items()}
        origins = {"[base]": f"{path}: [base]", **{k: f"{path}: [grid] {k}" for k in grid}}
        return check_axes(Grid(axes, base, data.get("trace"), data.get("synthetic"), origins))
    except ConfigError as err:
        raise ConfigError(str(err) if str(err).startswith(str(path)) else f"{path}: {err}") from err


def _axis_values(name: str, value: Any) -> list[Any]:
    """A [grid] entry's values: a list of values, or one value (a pair or series axis needs a list of them)."""
    if not isinstance(value, list):
        return [value]
    if SETTING_KINDS[name] in ("pair", "floats") and not all(isinstance(v, list) for v in value):
        return [value]  # one pair or series, not a list of them
    return value


def _checked(where: str, name: str, value: Any) -> Any:
    try:
        return setting_value(name, value)
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from err


def check_axes(grid: Grid) -> Grid:
    """Check every value of every axis on its own against the base settings, naming where the axis was given."""
    base = {k: v for k, v in grid.base.items() if k != "profile"}
    try:
        SimConfig(**base)
    except ConfigError as err:
        raise ConfigError(f"{grid.origins['[base]']}: {err}" if "[base]" in grid.origins else str(err)) from err
    for name, values in grid.axes.items():
        if name == "profile":
            continue
        for value in values:
            try:
                SimConfig(**{**base, name: value})
            except ConfigError as err:
                raise ConfigError(f"{grid.origin(name)}: {err}") from err
    return grid


def grid_from_flags(policies: str | None, profiles: str | None, gpus: str | None, replicas: str | None,
                    tps: str | None, base: dict[str, Any], axis_flags: list[str] | tuple[str, ...] = (),
                    into: Grid | None = None) -> Grid:
    """A grid from comma-separated flag values (None keeps the axis out), added to a grid file's when `into` is given.

    Args:
        policies: --policies.
        profiles: --profiles.
        gpus: --gpus.
        replicas: --replicas.
        tps: --tp.
        base: settings shared by every cell (ignored when `into` gives the base).
        axis_flags: `--axis NAME=V1,V2` values, one per axis.
        into: a grid (from --config) that the flags add axes to.
    """
    axes: dict[str, tuple[Any, ...]] = {}
    origins: dict[str, str] = {}
    named = (("policy", policies, "--policies"), ("profile", profiles, "--profiles"), ("gpu", gpus, "--gpus"),
             ("replicas", replicas, "--replicas"), ("tp", tps, "--tp"))
    given = [(name, text, f"{flag} {text}") for name, text, flag in named if text]
    for spec in axis_flags:
        name, sep, text = spec.partition("=")
        if not sep or not text.strip():
            raise ConfigError(f"--axis {spec!r}: give NAME=VALUE[,VALUE...], e.g. --axis max_num_seqs=64,256")
        name = name.strip()
        if name not in AXES:
            raise ConfigError(f"--axis {spec}: unknown grid axis {name!r}; axes: {', '.join(AXES)}")
        given.append((name, text, f"--axis {name}={text}"))
    for name, text, origin in given:
        if name in axes or (into is not None and name in into.axes):
            other = origins.get(name) or into.origin(name)
            raise ConfigError(f"{origin}: the {name} axis is given twice (also by {other}); give it once")
        try:
            axes[name] = tuple(setting_from_text(name, v.strip()) for v in text.split(",") if v.strip())
        except ValueError as err:
            raise ConfigError(f"{origin}: {err}") from err
        origins[name] = origin
    if into is None:
        return check_axes(Grid(axes, base, origins=origins))
    return check_axes(dataclasses.replace(into, axes={**into.axes, **axes}, origins={**into.origins, **origins}))


def resolve(cells: list[Cell], default_profile: str) -> list[Cell]:
    """Pick each cell's profile as `tokenjoule simulate` does and build its cost model, so a bad cell fails first.

    Args:
        cells: the grid's cells.
        default_profile: the shipped profile a cell without one uses.

    Returns:
        The cells with `choice` set (and, for a profile composed for a model, that model in the config), or, for a
        cell whose profile, model, GPU and TP cannot price it, `error` set (ConfigError or ProfileError): that cell
        fails without running and the others are kept, as a cell failing while it runs is.
    """
    choices: dict[tuple[Any, ...], ProfileChoice] = {}
    out = []
    for cell in cells:
        c = cell.config
        key = (cell.profile, c.model, c.gpu, c.cost, c.tp)
        try:
            if key not in choices:
                choices[key] = (choose_for_model(cell.profile, c.model, c.gpu, c.cost, c.tp, default_profile)
                                or choose_profile(cell.profile, c.cost, c.tp, default_profile))
            choice = choices[key]
            config = dataclasses.replace(c, model=choice.profile.model.name) if choice.composed else c
            build_cost_model(config, choice.profile)
        except (ConfigError, ProfileError) as err:
            out.append(dataclasses.replace(cell, error=err))
            continue
        out.append(dataclasses.replace(cell, config=config, choice=choice))
    return out


def run_cell(cell: Cell, trace: Trace) -> dict[str, Any]:
    """Simulate one resolved cell (raising its `error` if it has one): its compare.json entry."""
    if cell.error is not None:
        raise cell.error
    return cell_entry(cell, run(cell.config, trace, cell.choice.profile).summary)


def cell_entry(cell: Cell, summary: dict[str, Any]) -> dict[str, Any]:
    """A cell's compare.json entry: label, profile as the grid names it, config, and the summary of its run."""
    return {"label": cell.label, "profile": cell.profile, "config": cell.config.to_dict(),
            "summary": {**summary, "profile_source": cell.choice.source}}


def cell_tasks(cells: list[Cell]) -> tuple[list[tuple[SimConfig, int]], dict[int, GPUProfile | None]]:
    """The resolved cells as tasks for `simulate_cell`: (config, profile key) each, and every profile once by key.

    Cells that share a profile share its key, so a worker receives each profile once, however many cells use it.
    """
    keys: dict[int, int] = {}
    profiles: dict[int, GPUProfile | None] = {}
    tasks = []
    for cell in cells:
        key = keys.setdefault(id(cell.choice), len(keys))
        profiles[key] = cell.choice.profile
        tasks.append((cell.config, key))
    return tasks, profiles


def simulate_cell(shared: tuple[Trace, dict[int, GPUProfile | None]], task: tuple[SimConfig, int]) -> dict[str, Any]:
    """One what-if, as a task (`sim.parallel`): the summary of the cell's run.

    Args:
        shared: the trace every cell replays, and the profiles by key (`cell_tasks`).
        task: (config, profile key).

    Returns:
        The run's summary.
    """
    trace, profiles = shared
    config, key = task
    return run(config, trace, profiles[key]).summary


def cells_table(cells: list[Cell], rows: list[dict[str, Any]], pareto: list[int]) -> pa.Table:
    """compare.parquet / compare.csv: one row per cell; its label, its axis values, then its summary.

    Columns: `label`, `pareto` (on the energy/p99 front), one per axis (None where the cell's policy does not read
    it), then every summary key except those an axis column already holds; `rejected_by_reason` is spread into
    `rejected_<reason>` columns and the summary's `profile` (the label of the profile that priced the cell) is
    `profile_label`.
    """
    reasons = sorted({r for row in rows for r in row["summary"]["rejected_by_reason"]})
    records = []
    for i, (cell, row) in enumerate(zip(cells, rows, strict=True)):
        record: dict[str, Any] = {"label": cell.label, "pareto": i in pareto, **cell.axes}
        for key, value in row["summary"].items():
            if key == "rejected_by_reason":
                record.update({f"rejected_{r}": value.get(r, 0) for r in reasons})
            elif key == "profile":
                record["profile_label"] = value
            elif key not in cell.axes:
                record[key] = _finite(value)
        records.append(record)
    return pa.Table.from_pylist(records)


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value

