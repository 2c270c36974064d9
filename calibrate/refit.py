"""Refit a profile's curves from its own raw sweep file, keeping every measured field as it was.

Raw measurements are never touched: the fitted curves, fit errors and idle power are derived from the raw Parquet
beside the profile, so when the cost form or the fitter improves, a profile is brought up to date by refitting, and
anyone can check the shipped curves against the committed raw data.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from pathlib import Path

from tokenjoule.calibrate.cost_form import ProfileError
from tokenjoule.calibrate.fit_sweep import fit_rows, host_band
from tokenjoule.calibrate.profile import GPUProfile, load_profile, resolve_profile_path
from tokenjoule.calibrate.sweep.iterations import read_rows


def refit_profile(path: str | Path) -> GPUProfile:
    """The profile at `path` with curves, fit errors and idle power refitted from its `raw_path` file.

    The host-overhead model is kept as measured (it has its own fit, named in its method).

    Args:
        path: a profile JSON (or a shipped profile's short name).

    Returns:
        The refitted GPUProfile (not written; see `save_profile`). Its notes record the refit date.
    """
    path = resolve_profile_path(path)
    profile = load_profile(path)
    if profile.method.get("short_recalibration_of"):
        raise ProfileError(f"{path}: a short re-calibration (its raw file holds a few points, not a grid to fit); "
                           "refit its base profile instead")
    if not profile.raw_path:
        raise ProfileError(f"{path}: the profile names no raw sweep file (raw_path), so it cannot be refitted")
    raw = path.parent / profile.raw_path
    if not raw.exists():
        raise ProfileError(f"{path}: its raw sweep file {raw} is missing")
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    notes = "; ".join(n for n in (profile.notes, f"curves refitted from {profile.raw_path} on {stamp}") if n)
    return dataclasses.replace(refit_from_rows(profile, read_rows(raw)), notes=notes)


def refit_from_rows(profile: GPUProfile, rows: list[dict]) -> GPUProfile:
    """`profile` with curves, fit errors, idle power and host band (launch-bound only) fitted to `rows`.

    `rows` are raw sweep rows; the rest of the profile stays as it was.
    """
    fitted = fit_rows(rows, rule=profile.decode_split_rule)
    return dataclasses.replace(profile, latency=fitted["latency"], energy=fitted["energy"],
                               fit_errors=fitted["fit_errors"], idle_power_w=fitted["idle_power_w"],
                               host_band=host_band(rows) if profile.launch_bound else None)
