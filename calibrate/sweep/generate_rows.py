"""Turn raw `generate()` rows into the prefill and decode rows a fit uses.

The HF engine is calibrated through whole generate() calls (`generate_sweep`); the fit prices iterations. Per point
(B, L) and repeat, generate(B, L, 1) is the prefill, and the difference to a longer call of the same repeat,
divided by its extra steps, is one decode step at the mean context of those steps.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from tokenjoule.calibrate.sweep.iterations import _base_row, shape_from_row
from tokenjoule.kernels.shape import IterationShape

logger = logging.getLogger(__name__)


def point_of(row: dict[str, Any]) -> tuple[int, int]:
    """(batch, prompt tokens) of a generate() row."""
    shape = shape_from_row(row)
    return len(shape.prefill), shape.prefill[0][0]


def _derived(source: dict[str, Any], point_id: str, kind: str, shape: IterationShape, time_s: float,
             energy_j: float | None, bound: float | None, steps: int, reason: str) -> dict[str, Any]:
    row = _base_row(point_id, kind, shape, source["repeat"])
    row.update(reason=reason, steps=steps, step_time_s=time_s, energy_per_step_j=energy_j, error_bound=bound,
               power_w=None if energy_j is None else energy_j / time_s, unix_time_s=source["unix_time_s"])
    return row


def _decode_row(short: dict[str, Any], long_: dict[str, Any], batch: int, prompt: int) -> dict[str, Any] | None:
    n = long_["output_tokens"] - 1
    time_s = (long_["step_time_s"] - short["step_time_s"]) / n
    e1, en = short["energy_per_step_j"], long_["energy_per_step_j"]
    energy = None if e1 is None or en is None else (en - e1) / n
    if time_s <= 0 or (energy is not None and energy <= 0):
        logger.warning("%s #%d: the long call is not dearer than the short one; no decode point derived",
                       long_["point_id"], long_["repeat"])
        return None
    bound = None
    if energy is not None and short["error_bound"] is not None and long_["error_bound"] is not None:
        # each call's energy is off by at most its bound; the difference carries both absolute errors
        bound = (long_["error_bound"] * en + short["error_bound"] * e1) / (en - e1)
    ctx = prompt + n // 2  # the N steps read contexts L .. L + N - 1
    return _derived(long_, f"gen_b{batch}_l{prompt}_n{n + 1}_decode", "decode", IterationShape(decode=(ctx,) * batch),
                    time_s, energy, bound, n,
                    f"derived from generate({batch}, {prompt}, {n + 1}) - generate({batch}, {prompt}, 1), / {n} steps")


def derive_fit_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows a fit uses: generate() rows become derived prefill and decode rows; other rows pass through.

    Per point (B, L) and repeat r: a prefill row costing generate(B, L, 1), and for each longer call of the same
    repeat a decode row of B sequences at the mean context of its N steps, costing (GN - G1) / N per step. Rows
    without generate rows come back unchanged, so raw files of forward-pass sweeps fit exactly as before.
    """
    if not any(r["kind"] == "generate" for r in rows):
        return list(rows)
    out = [r for r in rows if r["kind"] != "generate"]
    calls: dict[tuple[int, int, int], dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        if r["kind"] == "generate" and r["status"] == "ok":
            b, length = point_of(r)
            calls[(b, length, r["repeat"])][int(r["output_tokens"])] = r
    for (b, length, _), by_n in sorted(calls.items()):
        short = by_n.get(1)
        if short is None:
            continue
        out.append(_derived(short, f"gen_b{b}_l{length}_prefill", "prefill",
                            IterationShape(prefill=((length, 0),) * b), short["step_time_s"],
                            short["energy_per_step_j"], short["error_bound"], 1,
                            f"derived from generate({b}, {length}, 1)"))
        for n in sorted(k for k in by_n if k > 1):
            decode = _decode_row(short, by_n[n], b, length)
            if decode is not None:
                out.append(decode)
    return out
