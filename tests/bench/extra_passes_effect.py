"""What the sweep's extra passes over noisy points changed, within one run (CPU only, from committed raw files).

A run calibrated with `GridConfig.extra_repeats` holds, for its noisy points, windows beyond the main repeats.
Refitting its raw sweep from the main repeats only gives the profile the older protocol would have made from the
same windows, on the same machine, in the same minutes. Both profiles simulate every scenario of every run folder
that used that calibration, and this prints each metric's median / max |relative error| over those scenarios.

    python3 tests/bench/extra_passes_effect.py [RUN_DIR ...]   (default: every run under validation/)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from tokenjoule.calibrate.profile import GPUProfile
from tokenjoule.calibrate.refit import refit_from_rows
from tokenjoule.calibrate.validate.diagnostics import rel_error
from tokenjoule.calibrate.validate.report import Simulations, default_runs, load_run, measured_metrics, scenario_rows

SHOWN = ("energy_total_j", "ttft_p50_s", "tpot_p50_s", "e2e_p50_s")


def main_repeats_only(profile: GPUProfile, raw: list[dict]) -> GPUProfile | None:
    """`profile` refitted from its main repeats' windows, or None when its sweep has no extra windows."""
    main = profile.method.get("grid", {}).get("repeats") or 0
    kept = [r for r in raw if r["kind"] == "idle" or r["repeat"] < main]
    return None if len(kept) == len(raw) else refit_from_rows(profile, kept)


def errors(runs: list[dict], profile: GPUProfile, sims: Simulations) -> dict[str, list[float]]:
    """|relative error| per metric over every scenario of `runs`, simulated with `profile`."""
    out: dict[str, list[float]] = {m: [] for m in SHOWN}
    for run in runs:
        for sc in run["doc"]["scenarios"]:
            measured = measured_metrics(sc, scenario_rows(run["requests"], sc["scenario"]["name"]))
            sim, _ = sims.get(run, sc, profile)
            for m in SHOWN:
                e = rel_error(sim[m], measured[m])
                if e is not None:
                    out[m].append(abs(e))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*", type=Path)
    dirs = tuple(ap.parse_args().runs) or default_runs()
    runs = [load_run(d) for d in dirs]
    by_profile: dict[str, list[dict]] = {}
    for run in runs:
        by_profile.setdefault(run["profile"].content_sha256, []).append(run)
    sims = Simulations()
    print(f"| runs | profile | scenarios | {' | '.join(SHOWN)} |")
    print(f"|---|---|---|{'---|' * len(SHOWN)}")
    for group in by_profile.values():
        first = group[0]
        older = main_repeats_only(first["profile"], first["raw"])
        if older is None:
            continue
        names = ", ".join(f"`{r['name']}`" for r in group)
        for label, profile in (("main repeats only", older), ("with extra passes (as run)", first["profile"])):
            errs = errors(group, profile, sims)
            cells = " | ".join(f"{100 * np.median(v):.1f}% / {100 * max(v):.1f}%" for v in errs.values())
            print(f"| {names} | {label} | {len(errs['energy_total_j'])} | {cells} |")


if __name__ == "__main__":
    main()
