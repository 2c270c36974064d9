"""The GPU profile file: one GPU's operator fits (time and energy per call), idle power and host launch costs.

A model-specific profile (`calibrate/profile.py`) is one measured (GPU x model x engine) fact; a GPU profile prices
any decoder from its ModelSpec through `calibrate/compose.py`. Everything it prices is *modeled*: its parameters are
fits of measured operator points, the iterations built from them were not measured. Versioned JSON of its own kind
("tokenjoule-gpu-profile"); a bad file is a one-line ProfileError. Torch-free; `build_gpu_profile` reads the raw
sweep (`calibrate/sweep/operators.py`'s Parquet files and metadata) and fits it (`calibrate/gpu_fit.py`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from tokenjoule.calibrate.gpu_fit import TERMS, OperatorFit, fit_operators
from tokenjoule.calibrate.profile import ProfileError, gpu_spec, read_profile_json
from tokenjoule.traces.files import write_atomic

GPU_PROFILE_KIND = "tokenjoule-gpu-profile"
# 2 added `overheads` (whole-iteration terms fitted on measured iterations); 1 (without them) still reads.
GPU_SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS = (1, 2)
# Shape parameter names per operator, in the order `operator_grid.OperatorPoint.key` writes them.
SHAPE_NAMES = {
    "gemm": ("m", "n", "k"),
    "prefill_attn": ("chunks", "q", "ctx", "heads", "kv_heads", "head_dim"),
    "decode_attn": ("batch", "ctx", "heads", "kv_heads", "head_dim"),
    "moe": ("tokens", "hidden", "ffn", "experts", "top_k", "shared_ffn", "shared_gate", "norm_topk"),
    "rest": ("tokens", "hidden", "ffn", "heads", "kv_heads", "head_dim"),
    "sample": ("seqs", "vocab"),
}
RAW_COLUMNS = ("point", "op", "flops", "bytes_moved", "models", "gpu_time_s", "energy_j")


@dataclass(frozen=True, slots=True)
class LaunchCosts:
    """Host time the engine pays to start GPU work, measured on the calibrating machine.

    Attributes:
        eager_launch_s: host time of one eager kernel launch.
        graph_replay_sync_s: host time of one CUDA-graph replay plus synchronize.
    """

    eager_launch_s: float
    graph_replay_sync_s: float

    def __post_init__(self) -> None:
        if min(self.eager_launch_s, self.graph_replay_sync_s) < 0:
            raise ValueError(f"launch costs {self} must be >= 0")


@dataclass(frozen=True, slots=True)
class IterationOverheads:
    """What a whole iteration costs beyond its swept operators: few physical terms, *fitted* on measured iterations.

    Eager iterations (any prefill) cost max(GPU time, host time) with host time = eager launches (counted per layer in
    `calibrate/compose.py`) x `eager_host_s_per_launch` (a launch *with* its Python module call, tensor views and
    dispatch: well above the bare `LaunchCosts.eager_launch_s`); while the GPU waits on the host it draws
    `host_wait_power_w`. CUDA-graph decode adds `graph_gap_s_per_layer` per layer (gaps between a layer's kernels and
    the bubbles of short kernels that operators replayed back to back in isolation hide) at `graph_gap_power_w`, and the
    runner's input preparation `decode_host_s_per_seq` per sequence (GPU idle). A ragged decode batch keeps the program
    with the longest context streaming after the others finished: `decode_tail_s_per_token` per layer and per token of
    that program beyond an average one (`cost_form.tail_ctx_tokens` with the engine's split rule), at decode attention's
    busy power. Host launches and GPU work overlap only in part: an eager iteration lasts max(host, GPU) +
    `host_exposed_fraction` x min(host, GPU) (the GPU idles at the start, before the first kernels are queued, and
    whenever short kernels drain the queue faster than the host fills it; 0: the plain max; priced at
    `host_wait_power_w` where the host is the longer, at the GPU work's own mean power where the GPU is: bubbles between
    its kernels too short for its power to drop). Between iterations the serving loop schedules and commits on the host
    while the GPU idles: `serving_host_s_per_iteration` + `serving_host_s_per_seq` x sequences +
    `serving_host_s_per_prefill_seq` x prefill chunks (`profile.HostOverhead`; all 0: not modeled).

    Attributes:
        eager_host_s_per_launch: host seconds per eager kernel launch of a layer.
        host_wait_power_w: GPU power while an eager iteration waits on the host.
        graph_gap_s_per_layer: GPU seconds per layer of a graph-replayed decode step beyond its operators.
        graph_gap_power_w: GPU power during those gaps.
        decode_host_s_per_seq: host seconds per decode sequence of the runner's input preparation.
        decode_tail_s_per_token: seconds per layer per tail context token of a ragged decode batch (0: not fitted,
            as in files written before it existed).
        host_exposed_fraction: share of the shorter of host launch time and GPU time an eager iteration does not
            hide (0 to 1; 0 in files written before it existed).
        serving_host_s_per_iteration: serving loop host seconds per iteration (schedule and commit).
        serving_host_s_per_seq: serving loop host seconds per sequence of the iteration.
        serving_host_s_per_prefill_seq: serving loop host seconds per prefill chunk beyond a sequence's.
        fitted_on: measured whole-iteration files the terms were fitted on (relative to the profile file).
        method: how they were fitted.
    """

    eager_host_s_per_launch: float
    host_wait_power_w: float
    graph_gap_s_per_layer: float
    graph_gap_power_w: float
    decode_host_s_per_seq: float
    decode_tail_s_per_token: float = 0.0
    host_exposed_fraction: float = 0.0
    serving_host_s_per_iteration: float = 0.0
    serving_host_s_per_seq: float = 0.0
    serving_host_s_per_prefill_seq: float = 0.0
    fitted_on: tuple[str, ...] = ()
    method: str = ""

    def __post_init__(self) -> None:
        for name in OVERHEAD_TERMS:
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"overheads.{name}={value} must be finite and >= 0")
        if self.host_exposed_fraction > 1:
            raise ValueError(f"overheads.host_exposed_fraction={self.host_exposed_fraction} must be <= 1")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; the terms are labelled fitted (they price modeled iterations)."""
        return {**{name: getattr(self, name) for name in OVERHEAD_TERMS}, "fitted_on": list(self.fitted_on),
                "method": self.method, "label": "fitted: whole-iteration overheads (every composed cost is modeled)"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IterationOverheads:
        """Build from `to_dict`'s output."""
        return cls(**{name: float(data[name]) for name in OVERHEAD_TERMS if name in data or name not in OPTIONAL_TERMS},
                   fitted_on=tuple(str(p) for p in data.get("fitted_on") or ()), method=str(data.get("method", "")))


OVERHEAD_TERMS = ("eager_host_s_per_launch", "host_wait_power_w", "graph_gap_s_per_layer", "graph_gap_power_w",
                  "decode_host_s_per_seq", "decode_tail_s_per_token", "host_exposed_fraction",
                  "serving_host_s_per_iteration", "serving_host_s_per_seq", "serving_host_s_per_prefill_seq")
# Absent from files written before they existed; absent, each reads 0 (the composition then prices as it did).
OPTIONAL_TERMS = ("decode_tail_s_per_token", "host_exposed_fraction", "serving_host_s_per_iteration",
                  "serving_host_s_per_seq", "serving_host_s_per_prefill_seq")


@dataclass(frozen=True, slots=True)
class GPUOperatorProfile:
    """One GPU's calibration: operator fits plus what the composition needs beside them.

    Attributes:
        gpu: GPU metadata as measured (name, driver, memory_bytes, power limit, clocks) plus `datasheet`.
        host: host CPU model and cores (launch costs depend on it).
        software: versions of the measuring run.
        method: how time and energy were read, and how the fits were made.
        date: ISO date of the measurement.
        engine: engine name the operators come from ("tokenjoule").
        mode: engine mode the composition models ("cudagraph": graph-replayed decode, eager prefill).
        dtype: weights and activations ("bf16").
        idle_power_w: measured idle power of the GPU.
        launch: host launch costs.
        operators: the fit per operator class.
        raw_paths: raw sweep files, relative to the profile file.
        notes: free text (what is modeled, caveats).
        overheads: whole-iteration terms fitted on measured iterations (None: the composition adds only the launch
            costs, as schema 1 did).
    """

    gpu: dict[str, Any]
    host: dict[str, Any]
    software: dict[str, Any]
    method: dict[str, Any]
    date: str
    engine: str
    mode: str
    dtype: str
    idle_power_w: float
    launch: LaunchCosts
    operators: dict[str, OperatorFit]
    raw_paths: tuple[str, ...] = ()
    notes: str = ""
    overheads: IterationOverheads | None = None

    def __post_init__(self) -> None:
        missing = sorted(set(TERMS) - set(self.operators))
        if missing:
            raise ProfileError(f"GPU profile lacks operator fit(s) {missing}")
        if self.idle_power_w < 0:
            raise ProfileError(f"idle_power_w={self.idle_power_w} must be >= 0")
        if int(self.gpu.get("memory_bytes", 0)) <= 0:
            raise ProfileError("GPU profile's gpu.memory_bytes must be > 0")
        gpu_spec(str(self.gpu.get("datasheet")))

    @property
    def memory_bytes(self) -> int:
        """The GPU's memory as measured."""
        return int(self.gpu["memory_bytes"])

    @property
    def label(self) -> str:
        """Short identity: GPU x engine/mode x dtype."""
        return f"{self.gpu.get('name', '?')} x {self.engine}/{self.mode} x {self.dtype} (GPU profile)"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, kind and schema version included."""
        out: dict[str, Any] = {"kind": GPU_PROFILE_KIND, "schema_version": GPU_SCHEMA_VERSION}
        for name in ("gpu", "host", "software", "method", "date", "engine", "mode", "dtype", "idle_power_w"):
            out[name] = getattr(self, name)
        out["launch"] = {"eager_launch_s": self.launch.eager_launch_s,
                         "graph_replay_sync_s": self.launch.graph_replay_sync_s}
        out["operators"] = {op: fit.to_dict() for op, fit in self.operators.items()}
        out["raw_paths"] = list(self.raw_paths)
        out["notes"] = self.notes
        if self.overheads is not None:
            out["overheads"] = self.overheads.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<gpu profile>") -> GPUOperatorProfile:
        """Validate and build; errors are one-line ProfileErrors naming `source`."""
        if data.get("kind") != GPU_PROFILE_KIND:
            raise ProfileError(f"{source}: not a tokenjoule GPU profile (kind={data.get('kind')!r})")
        if data.get("schema_version") not in READABLE_SCHEMA_VERSIONS:
            raise ProfileError(f"{source}: schema_version={data.get('schema_version')!r}, this tokenjoule reads "
                               f"{list(READABLE_SCHEMA_VERSIONS)}; refit it with the tokenjoule version that reads it")
        try:
            return cls(gpu=dict(data["gpu"]), host=dict(data["host"]), software=dict(data["software"]),
                       method=dict(data["method"]), date=str(data["date"]), engine=str(data["engine"]),
                       mode=str(data["mode"]), dtype=str(data["dtype"]), idle_power_w=float(data["idle_power_w"]),
                       launch=LaunchCosts(float(data["launch"]["eager_launch_s"]),
                                          float(data["launch"]["graph_replay_sync_s"])),
                       operators={str(op): OperatorFit.from_dict(fit) for op, fit in data["operators"].items()},
                       raw_paths=tuple(str(p) for p in data.get("raw_paths") or ()), notes=str(data.get("notes", "")),
                       overheads=IterationOverheads.from_dict(data["overheads"]) if data.get("overheads") else None)
        except KeyError as err:
            raise ProfileError(f"{source}: missing field {err.args[0]!r}") from err
        except ProfileError as err:
            raise ProfileError(f"{source}: {err}") from err
        except (TypeError, ValueError, AttributeError) as err:
            raise ProfileError(f"{source}: {err}") from err


def is_gpu_profile_file(path: str | Path) -> bool:
    """Whether a file is JSON of the GPU profile kind (False for anything unreadable)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and data.get("kind") == GPU_PROFILE_KIND


def load_gpu_profile(path: str | Path) -> GPUOperatorProfile:
    """Read and validate a GPU profile JSON file."""
    path = Path(path)
    return GPUOperatorProfile.from_dict(read_profile_json(path, "GPU profile"), source=str(path))


def save_gpu_profile(profile: GPUOperatorProfile, path: str | Path) -> Path:
    """Write atomically: a temp file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(profile.to_dict(), indent=1) + "\n"
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))
    return path


def parse_point_key(op: str, key: str) -> dict[str, int]:
    """Shape parameters from a raw point's key, e.g. `gemm_m64_n6144_k4096` -> {"m": 64, "n": 6144, "k": 4096}."""
    names = SHAPE_NAMES[op]
    match = re.fullmatch(re.escape(op) + "".join(rf"_{re.escape(n)}(\d+)" for n in names), key)
    if match is None:
        raise ProfileError(f"raw point {key!r} does not match operator {op!r}'s shape {names}")
    return dict(zip(names, (int(v) for v in match.groups()), strict=True))


def read_operator_rows(paths: list[Path]) -> list[dict[str, Any]]:
    """Raw operator points from sweep Parquet files, each with its shape parsed into `params`."""
    rows = []
    for path in paths:
        for row in pq.read_table(path, columns=list(RAW_COLUMNS)).to_pylist():
            rows.append({**row, "params": parse_point_key(row["op"], row["point"])})
    return rows


def build_gpu_profile(raw_paths: list[Path], meta_path: Path, relative_to: Path, notes: str = "") -> GPUOperatorProfile:
    """Fit a GPU profile from an operator sweep's raw files and its metadata (idle power, launch costs, GPU).

    Args:
        raw_paths: the sweep's Parquet files (parts of one sweep are concatenated).
        meta_path: the sweep's metadata JSON (`kind: tokenjoule-operator-sweep`).
        relative_to: folder the profile will live in (raw paths are stored relative to it).
        notes: free text to store.

    Returns:
        The profile.
    """
    meta = json.loads(Path(meta_path).read_text())
    fits = fit_operators(read_operator_rows(raw_paths))
    launch = meta["launch"]
    idle = [float(meta["idle_power_w"]), float(meta.get("idle_power_after_w", meta["idle_power_w"]))]
    method = {**meta["method"],
              "fit": "per operator class: time = c0 + (sum (term * c) ** p) ** (1/p) (grid over c0 and p, NNLS on "
                     "relative error inside); energy = P_busy * time + J/byte * bytes + J/FLOP * FLOPs (NNLS on "
                     "relative error); see calibrate/gpu_fit.py",
              "idle_power": "mean of the sweep's idle power before and after"}
    return GPUOperatorProfile(
        gpu=dict(meta["gpu"]), host=dict(meta.get("host") or {}), software=dict(meta.get("software") or {}),
        method=method, date=str(meta.get("started", "")), engine="tokenjoule", mode="cudagraph", dtype="bf16",
        idle_power_w=sum(idle) / 2,
        launch=LaunchCosts(float(launch["launch_host_s"]), float(launch["graph_replay_sync_s"])),
        operators=fits, raw_paths=tuple(_relative(p, relative_to) for p in raw_paths), notes=notes)


def _relative(path: Path, folder: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(folder).resolve()))
    except ValueError:
        return str(path)
