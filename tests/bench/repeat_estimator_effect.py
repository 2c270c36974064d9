"""Which estimator over a point's repeated windows should the fit take? (CPU only, from committed raw files)

The fit takes each point's median over its windows. A replay averages over the host's speed phases, which argues for
the mean; a stalled window argues for the median. This refits every run's own tokenjoule profile (short
re-calibrations and the smoke-grid check run left out) with each point's windows replaced by one estimate (median,
mean, mean without the extremes, fastest), simulates the run's scenarios with each, and prints each metric's median /
max |relative error|.

    python3 tests/bench/repeat_estimator_effect.py [RUN_DIR ...]   (default: every run under validation/)

2026-12-02, 11 runs: no estimator is better across runs. The mean lowers the CUDA-graph runs' energy medians by
0-0.4 points and moves the eager runs' TPOT both ways (run5eager 20.4% -> 25.1%, run6eager2 10.5% -> 9.9%); the
fastest window misses energy by up to 18%. The median stays.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np
from extra_passes_effect import SHOWN, errors

from tokenjoule.calibrate.refit import refit_from_rows
from tokenjoule.calibrate.validate.report import Simulations, default_runs, load_run


def _trimmed(values: list[float]) -> float:
    ordered = sorted(values)
    return statistics.mean(ordered[1:-1] if len(ordered) >= 3 else ordered)


ESTIMATORS: dict[str, Callable[[list[float]], float]] = {
    "median": statistics.median, "mean": statistics.mean, "trimmed mean": _trimmed, "fastest": min}


def with_estimate(raw: list[dict], estimate: Callable[[list[float]], float]) -> list[dict]:
    """The raw rows with every window of a point set to `estimate` over the point's windows (time and energy
    estimated apart), so the fit's median over them is that estimate."""
    by_point: dict[str, list[dict]] = {}
    for r in raw:
        if r["status"] == "ok" and r["kind"] != "idle":
            by_point.setdefault(r["point_id"], []).append(r)
    out = [r for r in raw if r["status"] != "ok" or r["kind"] == "idle"]
    for rows in by_point.values():
        t = estimate([r["step_time_s"] for r in rows])
        energies = [r["energy_per_step_j"] for r in rows if r["energy_per_step_j"] is not None]
        e = estimate(energies) if energies else None
        out += [{**r, "step_time_s": t, "energy_per_step_j": e} for r in rows]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*", type=Path)
    runs = [load_run(d) for d in (tuple(ap.parse_args().runs) or default_runs())]
    sims = Simulations()
    print(f"| run | estimator | {' | '.join(SHOWN)} |")
    print(f"|---|---|{'---|' * len(SHOWN)}")
    for run in runs:
        p = run["profile"]
        if p.engine != "tokenjoule" or p.method.get("short_recalibration_of") or "fixcheck" in run["name"]:
            continue
        for name, estimate in ESTIMATORS.items():
            errs = errors([run], refit_from_rows(p, with_estimate(run["raw"], estimate)), sims)
            cells = " | ".join(f"{100 * np.median(v):.1f}% / {100 * max(v):.1f}%" for v in errs.values())
            print(f"| `{run['name']}` | {name} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
