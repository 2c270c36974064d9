"""Where leave-one-model-out compositions miss, iteration by iteration: what `validate models` only shows per scenario.

Why: the report's scenario errors (docs/validation_models.md) mix decode, prefill and mixed iterations with queueing.
This prints, for each held-out model, its composed profile (overheads fitted without it, as `validate models` does)
against every iteration its replays measured (`iterations.parquet`: `run_s` is the runner's time, host loop apart):

- decode-only iterations by batch: median measured ms and median priced / measured;
- eager iterations (any prefill) by kind, prefill-only or mixed (decode sequences beside the chunk), and whether a
  chunk continues a sequence (its keys gathered from the cache): median measured and priced ms, and the median
  excess per layer; once for the validation scenarios (never fitted on) and once for the warm-up replays and quick
  grid that the other models' folds fit on.

    python tests/bench/lomo_iteration_residuals.py [MODEL...] [--lease DIR...] [--ops DIR] [--mode cudagraph]

Output of 2026-12-04 (H200 lease of 2026-12-03, CUDA graphs) is quoted in issue 16's notes and in the commit that
added this script.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from tokenjoule.calibrate.compose import compose_profile
from tokenjoule.calibrate.compose_check import row_features
from tokenjoule.calibrate.validate import models as lomo

ROOT = Path(__file__).resolve().parents[2]
LEASE = ROOT / "validation" / "h200_2026-12-03_models"
OPS = ROOT / "calibrate" / "profiles" / "measurements" / "h200_lease4_2026-12-03" / "ops"
BATCH_BINS = (1, 2, 4, 8, 16, 32, 64, 512)


def _eager_group(decode_seqs: int, continues: bool) -> str:
    return f"{'mixed' if decode_seqs else 'prefill'}{' +ctx' if continues else ''}"


def _print_eager(title: str, groups: dict[str, list[tuple[float, float]]], layers: int) -> None:
    print(f"  {title}")
    for group, pairs in sorted(groups.items()):
        priced, measured = np.array(pairs).T
        print(f"    {group:13s} n={len(pairs):4d}  measured {np.median(measured) * 1e3:7.2f} ms  priced "
              f"{np.median(priced) * 1e3:7.2f} ms  excess/layer {np.median(measured - priced) / layers * 1e6:+6.0f} us")


def report(name: str, runs: dict, gpu) -> None:
    """One held-out model's iteration residuals."""
    run = runs[name]
    folded = lomo.fold(gpu, name, runs)
    profile = compose_profile(folded, run["spec"])
    latency, rule, layers = profile.latency.table(), profile.decode_split_rule, run["spec"].n_layers
    ov = folded.overheads
    print(f"== {name} (overheads without it: graph gap {ov.graph_gap_s_per_layer * 1e6:.1f} us/layer, "
          f"{ov.eager_host_s_per_launch * 1e6:.1f} us/eager launch, exposed {ov.host_exposed_fraction:.2f})")
    decode: dict[int, list[tuple[float, float]]] = defaultdict(list)
    eager: dict[str, dict[str, list[tuple[float, float]]]] = {"validation": defaultdict(list),
                                                              "fitting": defaultdict(list)}
    for row in pq.read_table(run["dir"] / "iterations.parquet").to_pylist():
        warmup = row["scenario"].startswith("warmup")
        priced = latency.iteration(row_features(row), rule)
        if row["prefill_seqs"]:
            group = _eager_group(row["decode_seqs"], row["prefill_ctx_tokens"] > 0)
            eager["fitting" if warmup else "validation"][group].append((priced, row["run_s"]))
        elif not warmup:
            decode[next(b for b in BATCH_BINS if b >= row["decode_seqs"])].append((priced, row["run_s"]))
    for point in run["points"]:
        if point["kind"] != "decode":
            shape = point["shape"]
            group = _eager_group(len(shape.decode), any(ctx for _, ctx in shape.prefill))
            eager["fitting"][group].append((profile.cost(shape)[0], point["time_s"]))
    print("  decode-only (validation scenarios): batch up to: median measured ms / priced over measured")
    print("    " + "  ".join(f"{b}: {np.median([m for _, m in v]) * 1e3:.2f} / {np.median([p / m for p, m in v]):.3f}"
                             for b, v in sorted(decode.items())))
    _print_eager("eager iterations of the validation scenarios", eager["validation"], layers)
    _print_eager("eager iterations the other folds fit on (warm-up replays and quick grid)", eager["fitting"], layers)


def main() -> None:  # noqa: D103
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*")
    parser.add_argument("--lease", type=Path, nargs="+", default=[LEASE])
    parser.add_argument("--ops", type=Path, default=OPS)
    parser.add_argument("--mode", default="cudagraph")
    args = parser.parse_args()
    gpu = lomo.gpu_profile_of(args.ops, args.mode)
    runs = lomo.load_runs(args.lease)
    for name in args.models or runs:
        report(name, runs, gpu)


if __name__ == "__main__":
    main()
