"""Leave-one-model-out figures of several leases side by side, pooled over all of them, and the signed bias by class.

Why: each device lease (another H200 host, its own operator sweep) gives its own `validate models` report; one lease
meeting or missing a target by a fraction of a point says little while host launch speed moves from lease to lease
(issue 19). This reads the reports' JSON (`docs/validation_models*.json`, written by `tokenjoule validate models`) and
prints, per lease and over every scenario of every lease together: energy median and max |error|, TPOT and TTFT p50
median |error| against issue 16's targets; then per model class (dense 1B, dense 7-32B, MoE) the median *signed*
error, which a pooled |error| hides.

    python tests/bench/lomo_leases_summary.py [REPORT.json ...]   (default: the CUDA-graph reports in docs/)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from tokenjoule.calibrate.validate.models import TARGETS, summarize, target_figures

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ("validation_models.json", "validation_models_lease6.json", "validation_models_lease7.json",
           "validation_models_lease8.json", "validation_models_lease9.json", "validation_models_lease10.json")
METRICS = {"energy": "energy_total_j", "TTFT p50": "ttft_p50_s", "TPOT p50": "tpot_p50_s"}


def _rows(report: dict) -> list[dict]:
    """One row per scenario: model, MoE or not, and the signed errors (the report's metric names)."""
    return [{"model": m["model"], "moe": m["moe"], **s["error"]} for m in report["models"] for s in m["scenarios"]]


def _class(row: dict) -> str:
    return "MoE" if row["moe"] else "dense 1B" if row["model"] == "llama-3.2-1b" else "dense 7-32B"


def main() -> None:
    """Print the per-lease and pooled table, then the signed medians by class."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="*", type=Path, default=[ROOT / "docs" / name for name in DEFAULT])
    args = ap.parse_args()
    reports = [json.loads(p.read_text()) for p in args.reports]
    leases = [(f"{r['lease']} ({p.name})", _rows(r)) for p, r in zip(args.reports, reports, strict=True)]
    pooled = [r for _, rows in leases for r in rows]
    names = list(TARGETS)
    print("| report | models / scenarios | " + " | ".join(names) + " |")
    print("|---|---|" + "---:|" * len(names))
    for name, rows in [*leases, ("all together", pooled)]:
        fig = target_figures(summarize(rows))  # the pooling `validate models` does
        cells = [f"{fig[k]:.1%}{'' if fig[k] <= TARGETS[k] else ' (miss)'}" for k in names]
        print(f"| {name} | {len({r['model'] for r in rows})} / {len(rows)} | " + " | ".join(cells) + " |")
    print("| target | | " + " | ".join(f"{TARGETS[k]:.0%}" for k in names) + " |")
    print("\nMedian signed error (simulated / measured - 1) by model class, all reports:")
    print("| class | scenarios | " + " | ".join(METRICS) + " |")
    print("|---|---:|" + "---:|" * len(METRICS))
    for cls in ("dense 1B", "dense 7-32B", "MoE"):
        rows = [r for r in pooled if _class(r) == cls]
        signed = [np.median([r[k] for r in rows]) for k in METRICS.values()]
        print(f"| {cls} | {len(rows)} | " + " | ".join(f"{v:+.1%}" for v in signed) + " |")


if __name__ == "__main__":
    main()
