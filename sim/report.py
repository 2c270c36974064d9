"""Write a run's outputs (requests.parquet, summary.json, run.json, plots) atomically, and the compare plot.

A run directory is built in a temporary sibling folder and renamed into place, so a failed run leaves nothing
half-written. Plots use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import tempfile
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from tokenjoule.sim.run import SimResult


def versions() -> dict[str, str]:
    """Versions of tokenjoule and the libraries a run depends on."""
    out = {"python": platform.python_version()}
    for name in ("tokenjoule", "simpy", "numpy", "pyarrow"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return value


def dumps(obj: Any) -> str:
    """JSON text with NaN/inf as null (strict JSON)."""
    return json.dumps(_jsonable(obj), indent=1, allow_nan=False)


def write_run(result: SimResult, out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write requests.parquet, summary.json, run.json and the plots into `out_dir`, atomically.

    Args:
        result: the run.
        out_dir: the folder to create (replaced if it exists).
        extra: more run.json entries (e.g. the trace source, the command line).

    Returns:
        The folder.
    """
    def fill(tmp: Path) -> None:
        pq.write_table(result.requests, tmp / "requests.parquet")
        (tmp / "summary.json").write_text(dumps(result.summary) + "\n")
        run_info = {"config": result.config.to_dict(), "versions": versions(), **(extra or {})}
        (tmp / "run.json").write_text(dumps(run_info) + "\n")
        plot_run(result, tmp)

    return write_folder_atomically(out_dir, fill)


def write_folder_atomically(out_dir: str | Path, fill: Callable[[Path], None]) -> Path:
    """Let `fill` write into a temp folder beside `out_dir`, then swap it into place (nothing half-written).

    Args:
        out_dir: the folder to create or replace (its parents are created).
        fill: writes the folder's files into the temp folder it is given.

    Returns:
        The folder.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        fill(tmp)
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    if not out_dir.is_dir():
        raise OSError(f"{out_dir}: exists and is not a folder")
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
    os.replace(out_dir, old / "prev")
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run(result: SimResult, folder: Path) -> None:
    """power.png (cluster GPU power over time), energy_breakdown.png, latency_cdf.png."""
    plt = _pyplot()
    starts, power = result.power_timeline
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.step(starts, power, where="post")
    ax.set(xlabel="time (s)", ylabel="GPU power (W)", title="Cluster GPU power (busy + idle), binned")
    fig.tight_layout()
    fig.savefig(folder / "power.png", dpi=110)
    plt.close(fig)

    s = result.summary
    parts = {"GPU busy": s["gpu_busy_j"], "GPU idle": s["gpu_idle_j"], "host": s["host_j"],
             "PUE overhead": s["facility_overhead_j"]}
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(list(parts), [v / 3.6e6 for v in parts.values()])
    ax.set(ylabel="energy (kWh)", title="Energy breakdown")
    fig.tight_layout()
    fig.savefig(folder / "energy_breakdown.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name in ("ttft_s", "tpot_s", "e2e_s"):
        values = result.requests.column(name).to_numpy(zero_copy_only=False)
        values = np.sort(values[np.isfinite(values)])
        if len(values):
            ax.plot(values, np.arange(1, len(values) + 1) / len(values), label=name.removesuffix("_s").upper())
    ax.set(xscale="log", xlabel="seconds", ylabel="fraction of requests", title="Latency CDFs")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "latency_cdf.png", dpi=110)
    plt.close(fig)


def pareto_front(energy: Sequence[float], latency: Sequence[float]) -> list[int]:
    """Indices of points no other point beats on both energy and latency (lower is better)."""
    front = []
    for i, (e, t) in enumerate(zip(energy, latency, strict=True)):
        dominated = any(e2 <= e and t2 <= t and (e2 < e or t2 < t) for e2, t2 in zip(energy, latency, strict=True))
        if not dominated:
            front.append(i)
    return front


def plot_pareto(labels: Sequence[str], energy_j: Sequence[float], p99_s: Sequence[float], path: Path) -> None:
    """Energy per request vs p99 latency for each what-if, the Pareto front highlighted."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(p99_s, energy_j, color="0.6")
    front = sorted(pareto_front(energy_j, p99_s), key=lambda i: p99_s[i])
    ax.plot([p99_s[i] for i in front], [energy_j[i] for i in front], "o-", color="C3", label="Pareto front")
    for label, x, y in zip(labels, p99_s, energy_j, strict=True):
        ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="p99 end-to-end latency (s)", ylabel="energy per request (J)", title="Energy vs p99 latency")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
