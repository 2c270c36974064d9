"""Would a running-average power limiter price the replays better than the per-call power cap? An offline check.

Why: the operator fits cap each class's power (`calibrate/gpu_fit.py`), which is right for sustained work, but a compute
burst after low-power work draws more than that cap until the board's limiter catches up
(`validation/h200_2026-12-04_idle_tail/`: 30 ms of GEMMs after idle at about 910 W, against 690 W back to back). This
re-prices every measured iteration of each held-out model's replays (composed as `tokenjoule validate models` does,
priced power x the iteration's *measured* time, gaps at idle) in two ways and compares the scenario energies with
the measured ones:

- `cap`: each iteration at its composed power (the per-call caps);
- `limiter`: the classes whose cap is at least `--lift-above` W (the board limit: GEMMs, MoE) uncapped, the others
  capped; an exponential running average of power with time constant `--tau-s` runs over the iterations and gaps; an
  iteration draws its uncapped power until the average reaches `--limit-w`, then its capped power (at most the limit).

Nothing here changes the simulator; it tells whether modeling the limiter is worth it.

    python tests/bench/lomo_limiter_reprice.py [--lease DIR --ops DIR]... [--tau-s 0.02] [--limit-w 700]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from tokenjoule.calibrate.compose import compose_profile
from tokenjoule.calibrate.compose_check import row_features
from tokenjoule.calibrate.validate import models as lomo

ROOT = Path(__file__).resolve().parents[2]
MEASURED = ROOT / "calibrate" / "profiles" / "measurements"
LEASES = ((ROOT / "validation" / "h200_2026-12-03_models", MEASURED / "h200_lease4_2026-12-03" / "ops"),
          (ROOT / "validation" / "h200_2026-12-04_models", MEASURED / "h200_lease6_2026-12-04" / "ops"),
          (ROOT / "validation" / "h200_2026-12-04_lease7_models", MEASURED / "h200_lease7_2026-12-04" / "ops"),
          (ROOT / "validation" / "h200_2026-12-04_lease8_models", MEASURED / "h200_lease8_2026-12-04" / "ops"))
DENSE = ("llama-3.1-8b", "mistral-7b", "qwen2.5-7b", "qwen2.5-32b")


def _powers(profile) -> callable:
    latency, energy, rule = profile.latency.table(), profile.energy.table(), profile.decode_split_rule
    return lambda f: energy.iteration(f, rule) / latency.iteration(f, rule)


def _scenario(rows: list[dict], capped, lifted, idle_w: float, tau: float, limit: float) -> tuple[float, float, float]:
    """(energy at the per-call caps, energy under the limiter, busy seconds) of one scenario's measured iterations."""
    e_cap = e_lim = busy = 0.0
    avg, t_prev = idle_w, 0.0
    for r in rows:
        avg = idle_w + (avg - idle_w) * math.exp(-max(r["start_s"] - t_prev, 0.0) / tau)
        f, t = row_features(r), r["run_s"]
        p_cap, p_up = capped(f), lifted(f)
        e_cap += p_cap * t
        if p_up <= limit:
            e_lim += p_up * t
            avg = p_up + (avg - p_up) * math.exp(-t / tau)
        else:
            free = 0.0 if avg >= limit else min(t, tau * math.log((p_up - avg) / (p_up - limit)))
            e_lim += p_up * free + min(p_cap, limit) * (t - free)
            avg = limit if free < t else p_up + (avg - p_up) * math.exp(-t / tau)
        t_prev, busy = r["start_s"] + t, busy + t
    return e_cap, e_lim, busy


def main() -> None:  # noqa: D103
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lease", type=Path, action="append")
    parser.add_argument("--ops", type=Path, action="append")
    parser.add_argument("--tau-s", type=float, default=0.02)
    parser.add_argument("--limit-w", type=float, default=700.0)
    parser.add_argument("--lift-above", type=float, default=700.0)
    args = parser.parse_args()
    leases = list(zip(args.lease, args.ops, strict=True)) if args.lease else LEASES
    out = []
    for lease, ops in leases:
        gpu = lomo.gpu_profile_of(ops, "cudagraph")
        runs = lomo.load_runs(lease)
        for name, run in runs.items():
            folded = lomo.fold(gpu, name, runs)
            lifted_ops = {k: dataclasses.replace(v, power_cap_w=None)
                          if (v.power_cap_w or 0.0) >= args.lift_above else v for k, v in folded.operators.items()}
            capped = _powers(compose_profile(folded, run["spec"]))
            lifted = _powers(compose_profile(dataclasses.replace(folded, operators=lifted_ops), run["spec"]))
            iterations = pq.read_table(run["dir"] / "iterations.parquet").to_pylist()
            for sc in run["doc"]["scenarios"]:
                rows = sorted((r for r in iterations if r["scenario"] == sc["scenario"]["name"]),
                              key=lambda r: r["start_s"])
                e_cap, e_lim, busy = _scenario(rows, capped, lifted, folded.idle_power_w, args.tau_s, args.limit_w)
                idle_e = max(sc["duration_s"] - busy, 0.0) * folded.idle_power_w
                out.append({"model": name, "cap": (e_cap + idle_e) / sc["energy_j"] - 1,
                            "limiter": (e_lim + idle_e) / sc["energy_j"] - 1})
    groups = {"dense 7-32B": [o for o in out if o["model"] in DENSE],
              "Llama-3.2-1B": [o for o in out if o["model"] == "llama-3.2-1b"],
              "MoE": [o for o in out if "moe" in o["model"]], "all": out}
    print(f"tau {args.tau_s * 1e3:.0f} ms, limit {args.limit_w:.0f} W, caps lifted at or above {args.lift_above:.0f} W")
    print("| class | scenarios | per-call cap: signed / abs median / max | limiter: signed / abs median / max |")
    print("|---|---:|---|---|")
    for cls, rows in groups.items():
        cells = []
        for key in ("cap", "limiter"):
            e = np.array([o[key] for o in rows])
            cells.append(f"{np.median(e):+.1%} / {np.median(np.abs(e)):.1%} / {np.abs(e).max():.1%}")
        print(f"| {cls} | {len(rows)} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
