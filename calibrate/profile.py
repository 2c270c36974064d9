"""Profile files: a GPU x model x engine x dtype x TP calibration, its raw data's path and its fitted curves.

Torch-free: the simulator loads profiles on machines without a GPU. The file is versioned JSON; a wrong or old
schema fails with a ProfileError that says what to do. Also here: the profiles shipped as package data and how a
short name finds one (the CLI, the simulator's TP chooser and the benchmark scripts share that lookup; tests point
`SHIPPED_DIR` elsewhere), and the GPU datasheet numbers a profile names (peak FLOP/s, bandwidth, TDP, each with its
source), which the roofline model and KV sizing read. The cost form the curves follow is `calibrate/cost_form.py`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenjoule.calibrate.cost_form import CostCurve, DecodeSplitRule, ProfileError
from tokenjoule.kernels.shape import IterationShape
from tokenjoule.kernels.spec import ConfigError, ModelSpec
from tokenjoule.traces.files import write_atomic

SCHEMA_VERSION = 1
PROFILE_KIND = "tokenjoule-profile"
SHIPPED_DIR = Path(__file__).parent / "profiles"


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


@dataclass(frozen=True, slots=True)
class HostOverhead:
    """The serving loop's host work between iterations (schedule, then commit sampled tokens), in seconds.

    The GPU curves time `runner.run` alone; a serving loop also plans each iteration and books its tokens on the
    host, serially, so an iteration lasts its curve plus `seconds(...)`. Measured on the calibrating machine
    (`calibrate/sweep/host_cost.py`), since it scales with CPU speed. A prefill chunk costs more host work than a decode
    (admission allocates its blocks, its prompt is copied).

    Attributes:
        per_iteration_s: fixed cost of one iteration.
        per_seq_s: cost per sequence in the iteration (prefill chunks plus decodes).
        per_seq_sq_s: cost per squared sequence count (list work that grows with the batch; 0 in current fits).
        points: the measured points, {"seqs", "prefill_seqs", "median_s", ...} each.
        method: how it was measured.
        per_prefill_seq_s: extra cost per prefill chunk.
    """

    per_iteration_s: float
    per_seq_s: float
    per_seq_sq_s: float = 0.0
    points: tuple[dict[str, Any], ...] = ()
    method: str = ""
    per_prefill_seq_s: float = 0.0

    def __post_init__(self) -> None:
        if min(self.per_iteration_s, self.per_seq_s, self.per_seq_sq_s, self.per_prefill_seq_s) < 0:
            raise ProfileError(f"host_overhead coefficients ({self.per_iteration_s}, {self.per_seq_s}, "
                               f"{self.per_seq_sq_s}, {self.per_prefill_seq_s}) must be >= 0")

    def seconds(self, seqs: Any, prefill_seqs: Any = 0) -> Any:
        """Host time of iterations of `seqs` sequences, `prefill_seqs` of them prefill chunks (scalars or arrays)."""
        return (self.per_iteration_s + self.per_seq_s * seqs + self.per_seq_sq_s * seqs * seqs
                + self.per_prefill_seq_s * prefill_seqs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"per_iteration_s": self.per_iteration_s, "per_seq_s": self.per_seq_s,
                "per_seq_sq_s": self.per_seq_sq_s, "per_prefill_seq_s": self.per_prefill_seq_s,
                "points": [dict(p) for p in self.points], "method": self.method}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HostOverhead:
        """Build from `to_dict`'s form."""
        return cls(float(data["per_iteration_s"]), float(data["per_seq_s"]), float(data.get("per_seq_sq_s", 0.0)),
                   tuple(dict(p) for p in data.get("points") or ()), str(data.get("method", "")),
                   float(data.get("per_prefill_seq_s", 0.0)))


@dataclass(frozen=True, slots=True)
class HostBand:
    """How far a launch-bound profile's own repeated windows strayed from their point's median: a p10-p90 band.

    A launch-bound engine (eager, HF `generate()`) waits on its host, whose speed drifts in phases (the same step ran
    16 ms in one minute and 35 ms in the next); the calibration samples its own mix of those phases. Each ratio is one
    window's time (or energy) per step over the median of its point's repeats, pooled over every repeated point.

    Attributes:
        time_p10: 10th percentile of the windows' time ratios (e.g. 0.85).
        time_p90: 90th percentile of the time ratios.
        energy_p10: 10th percentile of the energy ratios.
        energy_p90: 90th percentile of the energy ratios.
        windows: how many windows the ratios pool.
        points: how many repeated points they come from.
    """

    time_p10: float
    time_p90: float
    energy_p10: float
    energy_p90: float
    windows: int
    points: int

    def __post_init__(self) -> None:
        for lo, hi, name in ((self.time_p10, self.time_p90, "time"), (self.energy_p10, self.energy_p90, "energy")):
            if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= 1 <= hi):
                raise ProfileError(f"host_band {name} p10={lo}, p90={hi} must be finite with 0 < p10 <= 1 <= p90")

    def around(self, value: float, share: float, which: str) -> tuple[float, float]:
        """(low, high) of `value` when the part `share` (0-1) of it moves by the band's `which` ("time"/"energy")."""
        lo, hi = (self.time_p10, self.time_p90) if which == "time" else (self.energy_p10, self.energy_p90)
        return value * (1 + share * (lo - 1)), value * (1 + share * (hi - 1))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HostBand:
        """Build from `to_dict`'s form."""
        return cls(float(data["time_p10"]), float(data["time_p90"]), float(data["energy_p10"]),
                   float(data["energy_p90"]), int(data["windows"]), int(data["points"]))


@dataclass(frozen=True, slots=True)
class MeasuredRange:
    """The largest iterations a profile's curves were fitted on, per dimension; anything larger is extrapolated.

    Each maximum was measured at some grid point, not all of them together (the largest decode batch was measured at
    a short context, the longest context at batch 1).

    Attributes:
        decode_seqs: most sequences decoding in one measured iteration.
        iteration_tokens: most new tokens in one measured iteration with prefill.
        prompt_tokens: longest prompt measured (a chunk plus the tokens cached before it), or None where unknown.
        context_tokens: longest context a measured decode read, or None where unknown.
        source: "grid" (the sweep's grid, recorded in the profile's `method`) or "knots" (no usable grid: the curves'
            last knots, which bound the range they were fitted on; prompt and context lengths are then unknown).
    """

    decode_seqs: int
    iteration_tokens: int
    prompt_tokens: int | None
    context_tokens: int | None
    source: str


def _grid_range(method: dict[str, Any]) -> MeasuredRange | None:
    """The range the sweep's recorded grid measured, within the engine's limits; None without a usable grid.

    The grid is `calibrate.sweep.grid.GridConfig` as the file holds it (`GenerateGrid` when it has `new_tokens`: a
    generate() call of B prompts of L tokens decodes B sequences up to L + new_tokens). A short re-calibration
    records its own few points, but its curves are its base's, measured on a grid it does not record.
    """
    grid = method.get("grid")
    if not isinstance(grid, dict) or method.get("short_recalibration_of"):
        return None
    max_tokens = method.get("max_batched_tokens") or math.inf
    max_seqs = method.get("max_batch_seqs") or math.inf
    lengths = [int(n) for n in grid.get("prefill_lengths_tokens") or ()]
    batches = [int(b) for b in grid.get("prefill_batches") or () if b <= max_seqs]
    chunks = [(int(c), int(before)) for c, before in [*(grid.get("prefill_chunks") or ()),
                                                      *(grid.get("mixed_chunks") or ())] if c <= max_tokens]
    iteration = [b * n for b in batches for n in lengths if b * n <= max_tokens] + [c for c, _ in chunks]
    prompts = [n for n in lengths if n <= max_tokens] + [c + before for c, before in chunks]
    if "new_tokens" in grid:  # generate() calls: every prompt batch also decodes
        seqs, contexts = batches, [n + int(grid["new_tokens"]) for n in prompts]
    else:
        ragged = [tuple(r) for r in grid.get("decode_ragged") or ()]  # (batch, long seqs, long context, context)
        mixed = [tuple(m) for m in grid.get("mixed_decodes") or ()]  # (seqs, context[, long seqs, long context])
        seqs = [int(b) for b in [*(grid.get("decode_batches") or ()), *(r[0] for r in ragged),
                                 *(m[0] for m in mixed)] if b <= max_seqs]
        contexts = [int(c) for c in [*(grid.get("decode_contexts_tokens") or ()), *(r[2] for r in ragged),
                                     *(m[1] for m in mixed), *(m[3] for m in mixed if len(m) == 4)]]
    if not (iteration and seqs):
        return None
    return MeasuredRange(max(seqs), max(iteration), max(prompts, default=None), max(contexts, default=None), "grid")


@dataclass(frozen=True, slots=True)
class GPUProfile:
    """A calibrated (GPU, model, engine, mode, dtype, TP) profile: metadata, fitted curves and fit errors.

    Attributes:
        gpu: GPU metadata as measured (name, driver, power limit, clocks, memory) plus `datasheet` (a DATASHEETS key).
        host: host CPU model and core count (launch-bound engines depend on it).
        software: versions (torch, CUDA, transformers, tokenjoule, git sha).
        method: how time and energy were read (e.g. CUDA events, NVML total-energy counter).
        date: ISO date-time of the measurement.
        engine: engine name ("tokenjoule" or "hf").
        mode: engine mode ("eager", "cudagraph", "compile").
        model: the ModelSpec measured.
        tp: tensor-parallel degree (GPUs per replica).
        idle_power_w: measured power of the replica's GPUs (summed) with the model resident and no work.
        kv_capacity_tokens: KV-cache tokens the engine held at its memory-utilization setting.
        latency: per-iteration latency curve (s).
        energy: per-iteration energy curve (J), summed over the replica's GPUs.
        fit_errors: cross-validated and mixed-iteration relative errors, by curve.
        raw_path: raw sweep file, relative to the profile file.
        notes: free text (what is modeled, caveats).
        host_overhead: the serving loop's host time per iteration, or None where it was not measured (profiles
            from before it was; the simulator then adds none).
        decode_split_rule: the engine's decode split rule (prices the longest context), or None: an engine without
            one (HF) or a profile from before it was recorded.
        host_band: for a launch-bound profile (`launch_bound`), the spread of host speed its calibration observed
            (`HostBand`); None for other profiles and for profiles built before it was recorded.
    """

    gpu: dict[str, Any]
    host: dict[str, Any]
    software: dict[str, Any]
    method: dict[str, Any]
    date: str
    engine: str
    mode: str
    model: ModelSpec
    tp: int
    idle_power_w: float
    kv_capacity_tokens: int
    latency: CostCurve
    energy: CostCurve
    fit_errors: dict[str, Any] = field(default_factory=dict)
    raw_path: str | None = None
    notes: str = ""
    host_overhead: HostOverhead | None = None
    decode_split_rule: DecodeSplitRule | None = None
    host_band: HostBand | None = None

    def __post_init__(self) -> None:
        if self.tp < 1:
            raise ProfileError(f"tp={self.tp} must be >= 1")
        if self.idle_power_w < 0:
            raise ProfileError(f"idle_power_w={self.idle_power_w} must be >= 0")
        if self.kv_capacity_tokens <= 0:
            raise ProfileError(f"kv_capacity_tokens={self.kv_capacity_tokens} must be > 0")

    @property
    def datasheet(self) -> GPUSpec:
        """The GPU's datasheet numbers (peak FLOP/s, bandwidth, TDP)."""
        return gpu_spec(str(self.gpu.get("datasheet", "H100-SXM")))

    @property
    def launch_bound(self) -> bool:
        """Whether its engine launches every step from Python (eager mode, or HF `generate()`): host speed prices it."""
        return self.engine == "hf" or self.mode == "eager"

    @property
    def label(self) -> str:
        """Short identity: GPU x model x engine/mode x TP."""
        return f"{self.gpu.get('name', '?')} x {self.model.name} x {self.engine}/{self.mode} x tp{self.tp}"

    @property
    def measured_range(self) -> MeasuredRange:
        """The largest iterations the curves were fitted on (`MeasuredRange`): from the recorded grid, else knots."""
        grid = _grid_range(self.method)
        if grid is not None:
            return grid
        prefill_knots = self.latency.prefill_knots_tokens or self.latency.knots_tokens
        return MeasuredRange(int(self.latency.knots_tokens[-1]), int(prefill_knots[-1]), None, None, "knots")

    def cost(self, shape: IterationShape) -> tuple[float, float]:
        """(seconds, joules) of one iteration."""
        return self.latency.of_shape(shape, self.decode_split_rule), self.energy.of_shape(shape, self.decode_split_rule)

    @property
    def content_sha256(self) -> str:
        """Hash of what the simulator reads (curves, idle power, capacity, model): identifies a calibration."""
        # host_overhead and decode_split_rule are absent from older profiles' dicts, whose hashes stay as they were
        core = {k: v for k, v in self.to_dict().items() if k in ("model", "tp", "idle_power_w", "kv_capacity_tokens",
                                                                  "latency", "energy", "engine", "mode",
                                                                  "host_overhead", "decode_split_rule")}
        return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, schema version included."""
        out = {"kind": PROFILE_KIND, "schema_version": SCHEMA_VERSION}
        for name in ("gpu", "host", "software", "method", "date", "engine", "mode", "tp", "idle_power_w",
                     "kv_capacity_tokens", "fit_errors", "raw_path", "notes"):
            out[name] = getattr(self, name)
        out["model"] = self.model.to_dict()
        out["latency"] = _curve_to_dict(self.latency)
        out["energy"] = _curve_to_dict(self.energy)
        if self.host_overhead is not None:
            out["host_overhead"] = self.host_overhead.to_dict()
        if self.decode_split_rule is not None:
            out["decode_split_rule"] = dataclasses.asdict(self.decode_split_rule)
        if self.host_band is not None:
            out["host_band"] = self.host_band.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<profile>") -> GPUProfile:
        """Validate and build; errors are ProfileError naming `source` and the field."""
        if data.get("kind") != PROFILE_KIND:
            raise ProfileError(f"{source}: not a tokenjoule profile (kind={data.get('kind')!r})")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ProfileError(f"{source}: schema_version={version!r}, this tokenjoule reads {SCHEMA_VERSION}; "
                               "re-run `tokenjoule calibrate` or install the tokenjoule version that wrote it")
        try:
            profile = cls(
                gpu=dict(data["gpu"]), host=dict(data["host"]), software=dict(data["software"]),
                method=dict(data["method"]), date=str(data["date"]), engine=str(data["engine"]),
                mode=str(data["mode"]), model=_model_spec(data["model"]), tp=int(data["tp"]),
                idle_power_w=float(data["idle_power_w"]), kv_capacity_tokens=int(data["kv_capacity_tokens"]),
                latency=_curve_from_dict(data["latency"], "s"), energy=_curve_from_dict(data["energy"], "J"),
                fit_errors=dict(data.get("fit_errors") or {}), raw_path=data.get("raw_path"),
                notes=str(data.get("notes", "")),
                host_overhead=HostOverhead.from_dict(data["host_overhead"]) if data.get("host_overhead") else None,
                decode_split_rule=DecodeSplitRule(**{k: int(v) for k, v in data["decode_split_rule"].items()})
                if data.get("decode_split_rule") else None,
                host_band=HostBand.from_dict(data["host_band"]) if data.get("host_band") else None,
            )
            profile.check_physical()
        except KeyError as err:
            raise ProfileError(f"{source}: missing field {err.args[0]!r}") from err
        except (TypeError, ValueError) as err:
            raise ProfileError(f"{source}: {err}") from err
        return profile

    def check_physical(self) -> None:
        """Raise ProfileError unless latency, energy, idle power and host overhead are finite and >= 0.

        See `CostCurve.check_physical`; a bad fit or a hand-edited file would otherwise price negative joules.
        """
        self.latency.check_physical("latency")
        self.energy.check_physical("energy")
        scalars = {"idle_power_w": self.idle_power_w}
        if self.host_overhead is not None:
            h = self.host_overhead
            scalars.update({"host_overhead.per_iteration_s": h.per_iteration_s, "host_overhead.per_seq_s": h.per_seq_s,
                            "host_overhead.per_seq_sq_s": h.per_seq_sq_s,
                            "host_overhead.per_prefill_seq_s": h.per_prefill_seq_s})
        for key, value in scalars.items():
            if not (math.isfinite(value) and value >= 0):
                raise ProfileError(f"{key}={value} must be finite and >= 0")


def _model_spec(data: dict[str, Any]) -> ModelSpec:
    """The profile's ModelSpec; one that does not record its context length takes its preset's, else None (unknown).

    `ModelSpec.from_dict` alone would give such a spec the dataclass default, a context limit nobody measured.
    """
    data = dict(data)
    if "max_position_embeddings" not in data:
        try:
            data["max_position_embeddings"] = ModelSpec.from_name(str(data.get("name"))).max_position_embeddings
        except ConfigError:
            data["max_position_embeddings"] = None
    return ModelSpec.from_dict(data)


def _curve_to_dict(curve: CostCurve) -> dict[str, Any]:
    return {"knots_tokens": list(curve.knots_tokens), "knot_values": list(curve.knot_values),
            "prefill_knots_tokens": list(curve.prefill_knots_tokens),
            "prefill_knot_values": list(curve.prefill_knot_values), "coef": dict(curve.coef), "unit": curve.unit}


def _curve_from_dict(data: dict[str, Any], unit: str) -> CostCurve:
    if data.get("unit") != unit:
        raise ProfileError(f"curve unit {data.get('unit')!r} should be {unit!r}")

    def floats(key: str) -> tuple[float, ...]:
        return tuple(float(v) for v in data.get(key) or ())

    return CostCurve(floats("knots_tokens"), floats("knot_values"), {str(k): float(v) for k, v in data["coef"].items()},
                     unit, floats("prefill_knots_tokens"), floats("prefill_knot_values"))


def read_profile_json(path: Path, what: str = "profile") -> dict[str, Any]:
    """The JSON object in a profile file; an unreadable file, bad JSON or a non-object is a one-line ProfileError."""
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise ProfileError(f"{path}: cannot read {what} ({err.strerror or err})") from err
    except json.JSONDecodeError as err:
        raise ProfileError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from err
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: a {what} is a JSON object")
    return data


def load_profile(path: str | Path) -> GPUProfile:
    """Read and validate a profile JSON file (or a shipped profile's short name, see `shipped_profiles`)."""
    path = resolve_profile_path(path)
    return GPUProfile.from_dict(read_profile_json(path), source=str(path))


def save_profile(profile: GPUProfile, path: str | Path) -> Path:
    """Write atomically: a temp file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(profile.to_dict(), indent=1, sort_keys=False) + "\n"
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))
    return path


def shipped_profiles() -> dict[str, Path]:
    """Short name (file stem) -> path of each profile shipped as package data.

    JSON files of another kind beside them (measurement checks) are skipped; unreadable ones are kept, so that
    listing them reports them as invalid rather than hiding them.
    """
    return {p.stem: p for p in sorted(SHIPPED_DIR.glob("*.json")) if _may_be_profile(p)}


def _may_be_profile(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return True
    return not isinstance(data, dict) or data.get("kind", PROFILE_KIND) == PROFILE_KIND


def resolve_profile_path(name_or_path: str | Path) -> Path:
    """A path as given if it exists, else a shipped profile's short name; the error lists shipped names."""
    path = Path(name_or_path)
    if path.exists():
        return path
    shipped = shipped_profiles()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    names = ", ".join(shipped) or "none"
    raise ProfileError(f"{name_or_path}: no such profile file or shipped profile (shipped: {names})")
