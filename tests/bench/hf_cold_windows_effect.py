"""What the HF generate() sweep's cold windows did: their size, and the replay errors with and without them.

Before 2026-12-04 the sweep warmed each long generate() call with a 5-token call; the first window of the long call
then ran cold. For each committed HF run whose raw sweep predates the fix, this prints the first window of each call
over the median of its later windows (long calls and one-token calls apart), then the energy and time median
|error| of every HF run's static replays priced by each HF profile refitted from its raw rows as they are (cold
windows in) and as the fit now reads them (`calibrate.sweep.generate.warm_rows`: cold windows out), on its own host
and on the others.

Run: python tests/bench/hf_cold_windows_effect.py
"""

from __future__ import annotations

import statistics
from collections import defaultdict

from tokenjoule.calibrate.refit import refit_from_rows
from tokenjoule.calibrate.validate.report import VALIDATION, Simulations, load_run

RUNS = ("h200_2026-12-02_hf", "h200_2026-12-02_hf2", "h200_2026-12-03_hf3")


def first_window_ratios(rows: list[dict]) -> dict[str, float]:
    """Median over points of first window / median of the later ones, for one-token and long calls."""
    windows: dict[str, dict[int, float]] = defaultdict(dict)
    for r in rows:
        if r["kind"] == "generate" and r["status"] == "ok":
            windows[r["point_id"]][r["repeat"]] = r["step_time_s"]
    out = {}
    for label, long_call in (("one-token calls", False), ("long calls", True)):
        ratios = [w[min(w)] / statistics.median(v for k, v in w.items() if k != min(w))
                  for p, w in windows.items() if len(w) > 1 and p.endswith("_n1") != long_call]
        out[label] = statistics.median(ratios)
    return out


def main() -> None:
    runs = [load_run(VALIDATION / name) for name in RUNS]
    for run in runs:
        ratios = first_window_ratios(run["raw"])
        print(f"{run['name']}: first window / later, median: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    sims = Simulations()
    for label, keep in (("cold windows in", lambda rows: [{**r, "warmup_tokens": r["output_tokens"]} for r in rows]),
                        ("cold windows out", lambda rows: rows)):
        profiles = {run["name"]: refit_from_rows(run["profile"], keep(run["raw"])) for run in runs}
        errors: dict[str, list[tuple[float, float]]] = {"own host": [], "other host": []}
        for run in runs:
            for name, profile in profiles.items():
                for sc in run["doc"]["scenarios"]:
                    summary = sims.get(run, sc, profile)[1].summary
                    errors["own host" if name == run["name"] else "other host"].append(
                        (summary["energy_total_j"] / sc["energy_j"] - 1, summary["duration_s"] / sc["duration_s"] - 1))
        for source, pairs in errors.items():
            energy, time_ = (statistics.median(abs(p[i]) for p in pairs) for i in (0, 1))
            print(f"{label:17s} {source:10s} {len(pairs):2d} replays: energy median |error| {energy:.1%}, "
                  f"time {time_:.1%}")


if __name__ == "__main__":
    main()
