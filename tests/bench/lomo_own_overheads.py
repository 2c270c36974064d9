"""What the leave-one-model-out figures would be if each model's overhead terms came from its own measurements.

Why: the hold-out TTFT misses sit on host-bound models whose eager host seconds per launch, fitted on the other models
of the lease, differ from their own (docs/validation_models_lease9.md: Llama-3.2-1B -30% to -41%, the MoE models up
to +57%). Fitting each model's overheads on its own quick grid and warm-up replays alone (in sample, so NOT a
validation) asks whether the other models are the problem, or the host: the simulator, the operator fits and the
scenarios stay as they are, only the fold changes.

    python tests/bench/lomo_own_overheads.py LEASE_DIR --ops OPS_DIR

Prints the pooled figures against issue 16's targets and TTFT p50 median per model. Output of 2026-12-04 on all five
leases is quoted in the README (fifth leave-one-model-out lease).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tokenjoule.calibrate.validate import models as lomo


def main() -> None:  # noqa: D103
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lease", type=Path)
    parser.add_argument("--ops", type=Path, required=True)
    args = parser.parse_args()
    lomo.fold = lambda gpu, held_out, runs: lomo.fit_on(gpu, [runs[held_out]])  # its own measurements only
    report = lomo.build_models_report(args.lease, args.ops)
    for m in report["models"]:
        print(f"{m['model']:20s} TTFT p50 median {m['summary']['ttft_p50_s_median']:.1%}  energy median "
              f"{m['summary']['energy_total_j_median']:.1%}")
    for name, t in report["targets"].items():
        print(f"{name}: {t['value']:.1%} (target {t['target']:.0%}{', met' if t['met'] else ''})")


if __name__ == "__main__":
    main()
