"""Write a run's outputs (requests.parquet, summary.json, run.json, plots) atomically, and compare's table and plot.

An output folder is tokenjoule's only when it holds nothing but the files tokenjoule writes there (`RUN_FILES`,
`COMPARE_FILES`): a folder holding anything else is refused unless `force`, and even then only tokenjoule's files are
written, replacing only those. Nothing else in the folder is ever deleted. The files are written into a temporary
folder inside the output folder and renamed into place one by one, so a failed run leaves no half-written file (and
no new folder). Files and folders get the usual permissions (0666/0777 less the umask). Plots use matplotlib's Agg
backend (no display needed).
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
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from tokenjoule.kernels.spec import ConfigError
from tokenjoule.sim.run import SimResult
from tokenjoule.traces.files import write_atomic

# The files `write_run` and `tokenjoule compare` write; a folder holding only these (from an earlier run) is ours.
RUN_FILES: tuple[str, ...] = ("requests.parquet", "summary.json", "run.json", "power.png", "energy_breakdown.png",
                              "latency_cdf.png")
COMPARE_FILES: tuple[str, ...] = ("compare.json", "compare.parquet", "compare.csv", "pareto.png")
# The temporary folder a write uses inside the output folder (left behind only if the process is killed).
TEMP_PREFIX = ".tokenjoule-tmp."


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


def write_run(result: SimResult, out_dir: str | Path, extra: dict[str, Any] | None = None, force: bool = False) -> Path:
    """Write requests.parquet, summary.json, run.json and the plots (`RUN_FILES`) into `out_dir`, atomically per file.

    Args:
        result: the run.
        out_dir: the folder (created if missing; see `check_out_folder` for an existing one).
        extra: more run.json entries (e.g. the trace source, the command line).
        force: write into a folder that holds other files too (those are left alone).

    Returns:
        The folder.
    """
    def fill(tmp: Path) -> None:
        pq.write_table(result.requests, tmp / "requests.parquet")
        (tmp / "summary.json").write_text(dumps(result.summary) + "\n")
        run_info = {"config": result.config.to_dict(), "versions": versions(), **(extra or {})}
        (tmp / "run.json").write_text(dumps(run_info) + "\n")
        plot_run(result, tmp)

    return write_folder_atomically(out_dir, fill, RUN_FILES, force)


def check_out_file(path: str | Path, flag: str) -> None:
    """Refuse an output file path whose folder is missing, or that names a folder, before any work is done.

    Raises:
        ConfigError: naming `flag` and the path.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {path}: is a folder; give a file name, e.g. {path / 'events.parquet'}")
    if not path.parent.is_dir():
        raise ConfigError(f"{flag} {path}: the folder {path.parent} does not exist")


def write_parquet(table: pa.Table, path: str | Path) -> None:
    """Write `table` to `path` as Parquet, atomically (an existing file is replaced only once the new one is whole)."""
    write_atomic(Path(path), lambda tmp: pq.write_table(table, tmp))


def write_table_files(table: pa.Table, stem: Path) -> None:
    """Write `table` as `stem`.parquet and `stem`.csv; the CSV holds list cells (windows, series, notes) as JSON."""
    pq.write_table(table, stem.with_suffix(".parquet"))
    for i, column in enumerate(table.columns):
        if pa.types.is_list(column.type):
            text = pa.array([None if v is None else json.dumps(v) for v in column.to_pylist()], pa.string())
            table = table.set_column(i, table.field(i).name, text)
    pacsv.write_csv(table, stem.with_suffix(".csv"))


def check_out_folder(out_dir: str | Path, names: Sequence[str], force: bool = False) -> None:
    """Refuse an output folder that is not tokenjoule's: a file, or a folder holding files other than `names`.

    Args:
        out_dir: the folder a command will write `names` into.
        names: the files it writes (an earlier run's copies of them are replaced).
        force: accept a folder holding other files too (they are left alone).

    Raises:
        ConfigError: `out_dir` is not a folder, or holds other files and `force` is off.
    """
    out_dir = Path(out_dir)
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir}: exists and is not a folder")
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in names and not p.name.startswith(TEMP_PREFIX))
    if foreign and not force:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ConfigError(f"--out {out_dir}: the folder holds files tokenjoule did not write ({shown}); give a new "
                          f"or empty folder, or --force to write only tokenjoule's files ({', '.join(names)}) there")


def write_folder_atomically(out_dir: str | Path, fill: Callable[[Path], None], names: Sequence[str],
                            force: bool = False) -> Path:
    """Let `fill` write `names` into a temp folder inside `out_dir`, then rename each file into place.

    Only files in `names` are written or replaced; nothing else in `out_dir` is touched. On failure the temp folder
    is removed (and `out_dir` too when this call created it), so no half-written file is left.

    Args:
        out_dir: the folder (created with its parents if missing).
        fill: writes some of `names` into the folder it is given.
        names: the files `fill` may write.
        force: accept a folder holding other files (see `check_out_folder`).

    Returns:
        The folder.
    """
    out_dir = Path(out_dir)
    check_out_folder(out_dir, names, force)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=out_dir))
    try:
        fill(tmp)
        written = sorted(p.name for p in tmp.iterdir())
        assert set(written) <= set(names), f"wrote files outside {names}: {written}"
        for name in written:
            os.replace(tmp / name, out_dir / name)
        tmp.rmdir()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return out_dir


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
