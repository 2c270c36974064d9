"""What `host_phases_gpu.py` measured: one host's launch-bound repeatability; does a band seen early cover later?

Why: issue 19 asks that a launch-bound profile carry a band from the host-speed spread its own calibration observed,
and that 80% of measured replays fall inside it. That can only hold if the phases a replay runs in are the phases a
calibration minutes earlier could see. This prints, per case of one lease's rounds (validation/h200_2026-12-04_phases):

- the spread of each case over the whole lease (p10 / p50 / p90 of time and energy, and the median |deviation| from
  the median: the error a predictor that knew this host's median exactly would still make on a single call);
- an emulated calibration: the p10-p90 band of the first half of the rounds, and how many of the second half's
  calls fall inside it (the target is 80%), with the second half's median over the first's;
- minute-by-minute medians, and the rank correlation of each case with the pure-Python loop (the host CPU's own speed);
- the mixed-iteration cost of the host-bound Llama-3.2-1B: per-round ratios mixed / prefill-only (the same minute, so
  the host phase cancels), and the engine's launcher host costs.

    python tests/bench/host_phases_report.py [DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "validation" / "h200_2026-12-04_phases"
METERED = ("hf", "eager_decode", "graph_decode", "1b_prefill", "1b_mixed1", "1b_mixed4")


def _spread(x: np.ndarray) -> str:
    p10, p50, p90 = np.percentile(x, [10, 50, 90])
    return (f"p10/p50/p90 {p10:.3f}/{p50:.3f}/{p90:.3f} (x{p90 / p10:.2f}), median |dev| "
            f"{np.median(np.abs(x / p50 - 1)):.1%}")


def _halves(x: np.ndarray) -> str:
    first, second = x[: len(x) // 2], x[len(x) // 2:]
    lo, hi = np.percentile(first, [10, 90])
    med = np.median(first)
    inside = np.mean((second >= lo) & (second <= hi))
    return (f"first-half band {lo / med:.3f}-{hi / med:.3f} holds {inside:.0%} of the second half "
            f"(its median x{np.median(second) / med:.3f})")


def main() -> None:  # noqa: D103
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, nargs="?", default=RUN)
    args = parser.parse_args()
    rows = pq.read_table(args.run / "host_phases.parquet").to_pylist()
    meta = json.loads((args.run / "meta.json").read_text())
    t0 = min(r["wall_start"] for r in rows)
    by_case: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: r["wall_start"]):
        by_case.setdefault(r["case"], []).append(r)
    span = (max(r["wall_start"] for r in rows) - t0) / 60
    print(f"{args.run.name}: {meta['gpu']['devices'][0]['uuid']}, {meta['rounds']} rounds over {span:.1f} min, "
          f"host {meta['host'].get('cpu_model', '?')}")
    for case, group in by_case.items():
        t = np.array([r["time_s"] for r in group])
        print(f"\n{case} ({len(group)} calls)\n  time   {_spread(t)}\n         {_halves(t)}")
        if case in METERED:
            e = np.array([r["energy_j"] for r in group])
            print(f"  energy {_spread(e)}\n         {_halves(e)}")
    cpu = np.array([r["time_s"] for r in by_case["cpu"]])
    print("\nrank correlation with the pure-Python loop: "
          + ", ".join(f"{c} {spearmanr([r['time_s'] for r in by_case[c]], cpu).statistic:.2f}" for c in METERED))
    print("\nminute medians of time (s):")
    cases = ("hf", "eager_decode", "graph_decode", "1b_prefill", "cpu")
    print("  min  " + "  ".join(f"{c:>12s}" for c in cases))
    for minute in range(int(span) + 1):
        cells = []
        for c in cases:
            x = [r["time_s"] for r in by_case[c] if minute <= (r["wall_start"] - t0) / 60 < minute + 1]
            cells.append(f"{np.median(x):12.3f}" if x else " " * 12)
        print(f"  {minute:3d}  " + "  ".join(cells))
    prefill = np.array([r["time_s"] / r["steps"] for r in by_case["1b_prefill"]])
    print("\nLlama-3.2-1B eager, 1,024-token prefill alone vs beside decoding sequences (per iteration, ms):")
    print(f"  prefill alone {np.median(prefill) * 1e3:.2f}")
    for case in ("1b_mixed1", "1b_mixed4"):
        mixed = np.array([r["time_s"] / r["steps"] for r in by_case[case]])
        print(f"  {case}: {np.median(mixed) * 1e3:.2f}, per-round ratio to prefill alone: median "
              f"{np.median(mixed / prefill):.3f}, p10-p90 {np.percentile(mixed / prefill, 10):.3f}-"
              f"{np.percentile(mixed / prefill, 90):.3f}")
    costs = json.loads((args.run / "launch_costs.json").read_text())
    print("  host s per call: " + ", ".join(f"{k} {v * 1e6:.1f} us" for k, v in costs.items()))


if __name__ == "__main__":
    main()
