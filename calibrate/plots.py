"""Plot a profile: latency, power and J/token against tokens per iteration, fitted curves over measured points."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tokenjoule.calibrate.profile import GPUProfile
from tokenjoule.calibrate.summary import DECODE_CONTEXT_TOKENS
from tokenjoule.kernels.shape import IterationShape
from tokenjoule.traces.files import write_atomic


def _curves(profile: GPUProfile) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Map each curve name to (tokens per iteration, latency s, energy J) along a decode and a prefill sweep."""
    batches = np.unique(np.geomspace(1, 512, 40).astype(int))
    lengths = np.unique(np.geomspace(16, 16384, 40).astype(int))
    decode = [profile.cost(IterationShape(decode=(DECODE_CONTEXT_TOKENS,) * int(b))) for b in batches]
    prefill = [profile.cost(IterationShape(prefill=((int(n), 0),))) for n in lengths]
    return {f"decode, context {DECODE_CONTEXT_TOKENS}": (batches, *map(np.array, zip(*decode, strict=True))),
            "prefill, one sequence": (lengths, *map(np.array, zip(*prefill, strict=True)))}


def _measured(rows: list[dict[str, Any]] | None, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    picked = [r for r in rows or [] if r["kind"] == kind and r["status"] == "ok" and r["energy_per_step_j"]]
    if not picked:
        return None
    return (np.array([r["new_tokens"] for r in picked], float), np.array([r["step_time_s"] for r in picked]),
            np.array([r["energy_per_step_j"] for r in picked]))


def plot_profile(profile: GPUProfile, out_path: str | Path, raw_rows: list[dict[str, Any]] | None = None) -> Path:
    """Write a PNG with three panels (latency, power, J/token vs tokens per iteration); returns its path.

    Args:
        profile: the profile to draw.
        out_path: PNG path (written atomically).
        raw_rows: the raw sweep's rows, drawn as points when given.

    Returns:
        The written path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for (name, (tokens, time_s, energy_j)), color in zip(_curves(profile).items(), ("C0", "C1"), strict=True):
        for ax, y in zip(axes, (time_s * 1e3, energy_j / time_s, energy_j / tokens), strict=True):
            ax.plot(tokens, y, color=color, label=f"fit: {name}")
    for kind, color in (("decode", "C0"), ("prefill", "C1"), ("mixed", "C2")):
        found = _measured(raw_rows, kind)
        if found is None:
            continue
        tokens, time_s, energy_j = found
        for ax, y in zip(axes, (time_s * 1e3, energy_j / time_s, energy_j / tokens), strict=True):
            ax.scatter(tokens, y, s=8, color=color, alpha=0.6, label=f"measured: {kind}")
    for ax, ylabel in zip(axes, ("latency per iteration (ms)", "power (W)", "energy per token (J)"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("tokens per iteration")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_yscale("log")
    axes[2].set_yscale("log")
    axes[1].axhline(profile.idle_power_w, color="grey", linestyle="--", label="idle")
    axes[1].legend(fontsize=7)
    fig.suptitle(profile.label)
    fig.tight_layout()
    return _save_png(fig, Path(out_path))


def _save_png(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    finally:
        plt.close(fig)
    return path
