"""Per-request metrics (TTFT, TPOT, E2E, queueing, energy) and the run summary, computed from the ledger's arrays."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from tokenjoule.sim.accounting import STATUS_FINISHED, STATUS_REJECTED, EnergyBreakdown, Ledger

PERCENTILES = (50, 90, 99)
LATENCIES = ("ttft_s", "tpot_s", "e2e_s", "queue_s")


def request_table(ledger: Ledger, request_id: np.ndarray, arrival_s: np.ndarray, input_tokens: np.ndarray,
                  output_tokens: np.ndarray) -> pa.Table:
    """One row per request: status, latencies (s), preemptions and attributed GPU energy (J).

    `gpu_energy_attributed_j` is the request's share of GPU busy energy only (each iteration's energy split by the
    tokens it processed for each request): no idle, host or facility (PUE) energy, so it sums to the summary's
    `gpu_busy_j` (`gpu_j_per_request_attributed` per finished request), below the summary's `j_per_request` (total
    energy per finished request).
    TTFT = first token - arrival; TPOT = (finish - first token) / (output tokens - 1) (NaN for one-token outputs);
    E2E = finish - arrival; queue = first scheduled - arrival. Rejected requests have NaN latencies and 0 J.
    """
    out = output_tokens.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(out > 1, (ledger.finish_s - ledger.first_token_s) / (out - 1), np.nan)
    status = np.where(ledger.status == STATUS_FINISHED, "finished",
                      np.where(ledger.status == STATUS_REJECTED, "rejected", "pending"))
    return pa.table({
        "request_id": pa.array(request_id, pa.int64()),
        "arrival_s": pa.array(arrival_s, pa.float64()),
        "input_tokens": pa.array(input_tokens, pa.int32()),
        "output_tokens": pa.array(output_tokens, pa.int32()),
        "status": pa.array(status, pa.string()),
        "reject_reason": pa.array(ledger.reject_reason.astype(str), pa.string()),
        "replica": pa.array(ledger.replica, pa.int32()),
        "queue_s": pa.array(np.maximum(ledger.start_s - arrival_s, 0.0), pa.float64()),  # clip float rounding
        "ttft_s": pa.array(ledger.first_token_s - arrival_s, pa.float64()),
        "tpot_s": pa.array(tpot, pa.float64()),
        "e2e_s": pa.array(ledger.finish_s - arrival_s, pa.float64()),
        "preemptions": pa.array(ledger.preemptions, pa.int32()),
        "gpu_energy_attributed_j": pa.array(ledger.energy_j, pa.float64()),
    })


def _percentiles(values: np.ndarray, name: str) -> dict[str, float | None]:
    values = values[np.isfinite(values)]
    out: dict[str, float | None] = {}
    for p in PERCENTILES:
        out[f"{name.removesuffix('_s')}_p{p}_s"] = float(np.percentile(values, p)) if len(values) else None
    out[f"{name.removesuffix('_s')}_mean_s"] = float(values.mean()) if len(values) else None
    return out


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def summarize(table: pa.Table, energy: EnergyBreakdown, duration_s: float, replicas: int, tp: int, busy_s: float,
              slo_ttft_s: float | None, slo_tpot_s: float | None) -> dict[str, Any]:
    """The run summary: counts, energy per request and per token, kWh, CO2, GPU-hours, latencies, SLO attainment.

    Args:
        table: the per-request table.
        energy: the energy breakdown.
        duration_s: run length (first arrival at 0 to the last completion).
        replicas: data-parallel replicas.
        tp: GPUs per replica.
        busy_s: replica-seconds spent in iterations.
        slo_ttft_s: TTFT target (s), or None.
        slo_tpot_s: TPOT target (s), or None.

    Returns:
        A flat JSON-ready dict (keys documented in the README).
    """
    status = table.column("status").to_numpy(zero_copy_only=False)
    done = status == "finished"
    reasons = table.column("reject_reason").to_numpy(zero_copy_only=False)[status == "rejected"]
    col = {name: table.column(name).to_numpy(zero_copy_only=False)[done] for name in LATENCIES}
    n_done = int(done.sum())
    tokens_in = int(table.column("input_tokens").to_numpy()[done].sum())
    tokens_out = int(table.column("output_tokens").to_numpy()[done].sum())
    attributed = float(table.column("gpu_energy_attributed_j").to_numpy().sum())
    gpu_j = energy.gpu_j
    summary: dict[str, Any] = {
        "requests": int(len(status)), "finished": n_done, "rejected": int((status == "rejected").sum()),
        "rejected_by_reason": {str(r): int((reasons == r).sum()) for r in sorted(set(reasons))},
        "input_tokens": tokens_in, "output_tokens": tokens_out, "duration_s": duration_s,
        **energy.to_dict(),
        "j_per_request": _ratio(energy.total_j, n_done),
        "j_per_token": _ratio(energy.total_j, tokens_in + tokens_out),
        "j_per_output_token": _ratio(energy.total_j, tokens_out),
        "gpu_j_per_request_attributed": _ratio(attributed, n_done),
        "conservation_rel_error": abs(attributed + energy.gpu_idle_j - gpu_j) / gpu_j if gpu_j else 0.0,
        "gpu_hours": duration_s * replicas * tp / 3600.0,
        "utilization": _ratio(busy_s, duration_s * replicas),
        "throughput_req_s": _ratio(n_done, duration_s), "throughput_output_tok_s": _ratio(tokens_out, duration_s),
        "preemptions": int(table.column("preemptions").to_numpy().sum()),
    }
    for name in LATENCIES:
        summary.update(_percentiles(col[name], name))
    ttft_ok = col["ttft_s"] <= slo_ttft_s if slo_ttft_s is not None else np.ones(n_done, bool)
    tpot_ok = ~(col["tpot_s"] > slo_tpot_s) if slo_tpot_s is not None else np.ones(n_done, bool)  # NaN TPOT passes
    summary.update({
        "slo_ttft_s": slo_ttft_s, "slo_tpot_s": slo_tpot_s,
        "slo_ttft_attainment": float(ttft_ok.mean()) if n_done and slo_ttft_s is not None else None,
        "slo_tpot_attainment": float(tpot_ok.mean()) if n_done and slo_tpot_s is not None else None,
        "slo_attainment": float((ttft_ok & tpot_ok).mean()) if n_done and (slo_ttft_s or slo_tpot_s) else None,
    })
    return summary
