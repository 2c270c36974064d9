"""Profile files: a GPU x model x engine x dtype x TP calibration, its raw data's path and its fitted curves.

Torch-free: the simulator loads profiles on machines without a GPU. The file is versioned JSON; a wrong or old
schema fails with a ProfileError that says what to do.

Cost form (shared by the fitter and the simulator): for an iteration with `new_tokens` tokens pushed through the
weights, the latency (or energy) is

    curve_regime(new_tokens) + sum_f coef[f] * feature_f

where `curve_regime` is piecewise linear over fixed knots in `new_tokens` (flat where weight streaming or host-side
launch overhead dominates, then linear once matrix units saturate; the paper's "flat below ~128-256 tokens, then
linear") and the features are the attention and per-sequence terms named in FEATURES. There are two regimes with a
curve each: decode-only iterations and iterations with any prefill. They differ because an engine runs them
differently (CUDA graphs replay decode-only steps; prefill runs eagerly, so its host launch cost is a floor that
large prefills hide — an additive constant cannot express that, a curve of its own can).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokenjoule.calibrate.datasheets import GPUSpec, gpu_spec
from tokenjoule.calibrate.errors import ProfileError
from tokenjoule.kernels.shape import IterationShape
from tokenjoule.kernels.spec import ModelSpec
from tokenjoule.kernels.shape import num_splits_for
from tokenjoule.traces.files import write_atomic

SCHEMA_VERSION = 1
PROFILE_KIND = "tokenjoule-profile"

# Linear terms beside the piecewise-linear token curves; names match IterationShape properties, except
# decode_tail_ctx_tokens (see `tail_ctx_tokens`). No per-decode-sequence term: for decode-only iterations new_tokens
# == decode sequences, so the decode curve is it. Profiles written before decode_tail_ctx_tokens have no coefficient
# for it, which reads as 0.
FEATURES = ("prefill_attn_pairs", "prefill_ctx_tokens", "prefill_seqs", "decode_ctx_tokens", "decode_tail_ctx_tokens")
# The regime indicator (1.0 when the iteration has any prefill chunk) picks the token curve; it has no coefficient.
REGIME = "has_prefill"


@dataclass(frozen=True, slots=True)
class CostCurve:
    """Fitted per-iteration latency (seconds) or energy (joules) as a function of an iteration's shape.

    Attributes:
        knots_tokens: increasing `new_tokens` values where the decode-only curve bends.
        knot_values: that curve's value at each knot (s or J).
        coef: coefficient per FEATURES name (s or J per unit of the feature).
        unit: "s" or "J".
        prefill_knots_tokens: knots of the curve for iterations with any prefill; empty means "use the decode-only
            curve for every iteration".
        prefill_knot_values: that curve's values.
    """

    knots_tokens: tuple[float, ...]
    knot_values: tuple[float, ...]
    coef: dict[str, float]
    unit: str
    prefill_knots_tokens: tuple[float, ...] = ()
    prefill_knot_values: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        _check_knots(self.knots_tokens, self.knot_values, "knots_tokens")
        if self.prefill_knots_tokens or self.prefill_knot_values:
            _check_knots(self.prefill_knots_tokens, self.prefill_knot_values, "prefill_knots_tokens")
        unknown = sorted(set(self.coef) - set(FEATURES))
        if unknown:
            raise ProfileError(f"cost curve has unknown feature(s) {unknown}; known: {list(FEATURES)}")
        if self.unit not in ("s", "J"):
            raise ProfileError(f"cost curve unit {self.unit!r} must be 's' or 'J'")

    def token_curve(self, new_tokens: np.ndarray | float, has_prefill: np.ndarray | float = 0.0) -> np.ndarray:
        """The piecewise-linear term of the iteration's regime; past the last knot it keeps the last slope."""
        decode = piecewise_linear(new_tokens, self.knots_tokens, self.knot_values)
        if not self.prefill_knots_tokens:
            return decode
        prefill = piecewise_linear(new_tokens, self.prefill_knots_tokens, self.prefill_knot_values)
        return np.where(np.asarray(has_prefill) > 0, prefill, decode)

    def evaluate(self, new_tokens: Any, has_prefill: Any = 0.0, **features: Any) -> np.ndarray:
        """Vectorised cost: the regime's token curve plus linear feature terms (missing features count as 0)."""
        total = self.token_curve(new_tokens, has_prefill)
        for name, c in self.coef.items():
            if name in features:
                total = total + c * np.asarray(features[name], dtype=np.float64)
        return total

    def of_shape(self, shape: IterationShape, rule: DecodeSplitRule | None = None) -> float:
        """Cost of one IterationShape (`rule`: the engine's decode splits, see `DecodeSplitRule`)."""
        return float(self.evaluate(shape.new_tokens, **shape_features(shape, rule)))


def _check_knots(knots: tuple[float, ...], values: tuple[float, ...], name: str) -> None:
    if len(knots) < 2 or len(knots) != len(values):
        raise ProfileError(f"cost curve {name} needs >= 2 knots and one value per knot")
    if any(b <= a for a, b in zip(knots, knots[1:], strict=False)):
        raise ProfileError(f"cost curve {name} must increase strictly")


def piecewise_linear(x: Any, knots: tuple[float, ...], values: tuple[float, ...]) -> np.ndarray:
    """Linear interpolation through (knots, values), flat below the first knot, last slope past the last."""
    x = np.asarray(x, dtype=np.float64)
    k = np.asarray(knots)
    v = np.asarray(values)
    slope = (v[-1] - v[-2]) / (k[-1] - k[-2])
    return np.where(x > k[-1], v[-1] + slope * (x - k[-1]), np.interp(x, k, v))


@dataclass(frozen=True, slots=True)
class DecodeSplitRule:
    """How the engine's decode kernel splits each context, which decides how long the longest program runs.

    Each sequence gets ceil(target_programs / (batch x kv_heads)) programs, at most max_splits (`kernels/shape.py`).

    Attributes:
        target_programs: programs the kernel aims for.
        max_splits: most splits per sequence.
        kv_heads: KV heads per GPU (one program per sequence, KV head and split).
    """

    target_programs: int
    max_splits: int
    kv_heads: int

    def __post_init__(self) -> None:
        if min(self.target_programs, self.max_splits, self.kv_heads) < 1:
            raise ProfileError(f"decode_split_rule {self} needs positive integers")

    def splits(self, batch: Any) -> Any:
        """Splits per sequence for decode batches of `batch` sequences (scalar or array): `kernels.splits`' rule."""
        def one(b: Any) -> int:
            return num_splits_for(int(b), self.kv_heads, self.target_programs, self.max_splits)

        return one(batch) if np.ndim(batch) == 0 else np.vectorize(one, otypes=[np.int64])(batch)


def tail_ctx_tokens(max_ctx: Any, sum_ctx: Any, decode_seqs: Any, rule: DecodeSplitRule | None) -> Any:
    """Context tokens the longest decode program streams beyond an average one (0 for a uniform batch).

    The summed context prices the average program; a ragged batch's longest context (over its splits; the whole of
    it without a rule) keeps one program running after the rest have finished, and sets the kernel's time.
    """
    splits = 1 if rule is None else rule.splits(decode_seqs)
    if isinstance(decode_seqs, int | float):  # one iteration (the simulator's hot path): no arrays
        return max(0.0, max_ctx - sum_ctx / max(decode_seqs, 1)) / splits
    seqs = np.maximum(np.asarray(decode_seqs, dtype=np.float64), 1.0)
    excess = np.asarray(max_ctx, dtype=np.float64) - np.asarray(sum_ctx, dtype=np.float64) / seqs
    value = np.maximum(excess, 0.0) / splits
    return float(value) if value.ndim == 0 else value


def shape_features(shape: IterationShape, rule: DecodeSplitRule | None = None) -> dict[str, float]:
    """The FEATURES of one iteration, and its regime indicator, by name (`rule`: the engine's decode splits)."""
    return {
        "prefill_attn_pairs": float(shape.prefill_attn_pairs),
        "prefill_ctx_tokens": float(shape.prefill_ctx_tokens),
        "prefill_seqs": float(shape.prefill_seqs),
        "decode_ctx_tokens": float(shape.decode_ctx_tokens),
        "decode_tail_ctx_tokens": tail_ctx_tokens(shape.decode_max_ctx_tokens, shape.decode_ctx_tokens,
                                                  shape.decode_seqs, rule),
        REGIME: 1.0 if shape.prefill else 0.0,
    }


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
    def label(self) -> str:
        """Short identity: GPU x model x engine/mode x TP."""
        return f"{self.gpu.get('name', '?')} x {self.model.name} x {self.engine}/{self.mode} x tp{self.tp}"

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
            return cls(
                gpu=dict(data["gpu"]), host=dict(data["host"]), software=dict(data["software"]),
                method=dict(data["method"]), date=str(data["date"]), engine=str(data["engine"]),
                mode=str(data["mode"]), model=ModelSpec.from_dict(data["model"]), tp=int(data["tp"]),
                idle_power_w=float(data["idle_power_w"]), kv_capacity_tokens=int(data["kv_capacity_tokens"]),
                latency=_curve_from_dict(data["latency"], "s"), energy=_curve_from_dict(data["energy"], "J"),
                fit_errors=dict(data.get("fit_errors") or {}), raw_path=data.get("raw_path"),
                notes=str(data.get("notes", "")),
                host_overhead=HostOverhead.from_dict(data["host_overhead"]) if data.get("host_overhead") else None,
                decode_split_rule=DecodeSplitRule(**{k: int(v) for k, v in data["decode_split_rule"].items()})
                if data.get("decode_split_rule") else None,
            )
        except KeyError as err:
            raise ProfileError(f"{source}: missing field {err.args[0]!r}") from err
        except (TypeError, ValueError) as err:
            raise ProfileError(f"{source}: {err}") from err


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


def load_profile(path: str | Path) -> GPUProfile:
    """Read and validate a profile JSON file (or a shipped profile's short name, see `shipped.shipped_profiles`)."""
    from tokenjoule.calibrate.shipped import resolve_profile_path  # shipped.py reads PROFILE_KIND from here

    path = resolve_profile_path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise ProfileError(f"{path}: cannot read profile ({err.strerror or err})") from err
    except json.JSONDecodeError as err:
        raise ProfileError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from err
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: a profile is a JSON object")
    return GPUProfile.from_dict(data, source=str(path))


def save_profile(profile: GPUProfile, path: str | Path) -> Path:
    """Write atomically: a temp file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(profile.to_dict(), indent=1, sort_keys=False) + "\n"
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))
    return path
