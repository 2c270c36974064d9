"""Derived figures of a profile (J/token for prefill and decode at a few batch sizes, fit targets). Torch-free.

`profile_summary(profile)` is what `tokenjoule profile show --json` prints; its keys are documented there.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tokenjoule.calibrate.profile import GPUProfile
from tokenjoule.kernels.shape import IterationShape

PREFILL_BATCHES = (1, 4, 16)
PREFILL_INPUT_TOKENS = 1024
DECODE_BATCHES = (1, 8, 32, 128, 512)
DECODE_CONTEXT_TOKENS = 1024
# Issue 4's targets: median relative error <= 3% (latency) / 5% (energy), p95 <= 10%.
TARGETS = {"latency": {"median": 0.03, "p95": 0.10}, "energy": {"median": 0.05, "p95": 0.10}}


def _point(profile: GPUProfile, shape: IterationShape, tokens: int) -> dict[str, float]:
    time_s, energy_j = profile.cost(shape)
    return {"latency_s": time_s, "energy_j": energy_j, "j_per_token": energy_j / tokens,
            "tokens_per_s": tokens / time_s, "power_w": energy_j / time_s}


def prefill_figures(profile: GPUProfile, batches: tuple[int, ...] = PREFILL_BATCHES,
                    input_tokens: int = PREFILL_INPUT_TOKENS) -> list[dict[str, float]]:
    """Per prefill batch size: one iteration of `batch` prompts of `input_tokens` each (J per prompt token)."""
    return [{"batch": b, "input_tokens": input_tokens,
             **_point(profile, IterationShape(prefill=((input_tokens, 0),) * b), b * input_tokens)}
            for b in batches]


def decode_figures(profile: GPUProfile, batches: tuple[int, ...] = DECODE_BATCHES,
                   context_tokens: int = DECODE_CONTEXT_TOKENS) -> list[dict[str, float]]:
    """Per decode batch size: one iteration of `batch` sequences with `context_tokens` cached (J per output token)."""
    return [{"batch": b, "context_tokens": context_tokens,
             **_point(profile, IterationShape(decode=(context_tokens,) * b), b)}
            for b in batches]


def static_batch_cost(profile: GPUProfile, batch: int, input_tokens: int, output_tokens: int) -> dict[str, float]:
    """Predicted time and energy of a static batch run as `generate()` runs it.

    One prefill iteration of `batch` prompts (it yields the first output token), then `output_tokens - 1` decode
    iterations whose contexts grow from `input_tokens` by one token per step. Idle time is not included.
    """
    if min(batch, input_tokens, output_tokens) < 1:
        raise ValueError(f"batch={batch}, input_tokens={input_tokens}, output_tokens={output_tokens} must be >= 1")
    time_s, energy_j = profile.cost(IterationShape(prefill=((input_tokens, 0),) * batch))
    for ctx in range(input_tokens, input_tokens + output_tokens - 1):
        t, e = profile.cost(IterationShape(decode=(ctx,) * batch))
        time_s, energy_j = time_s + t, energy_j + e
    return {"batch": batch, "input_tokens": input_tokens, "output_tokens": output_tokens, "time_s": time_s,
            "energy_j": energy_j, "j_per_output_token": energy_j / (batch * output_tokens)}


def targets_met(fit_errors: dict[str, Any]) -> dict[str, bool | None]:
    """Whether each curve's cross-validated errors meet the issue's targets (None when not recorded)."""
    out: dict[str, bool | None] = {}
    for curve, limit in TARGETS.items():
        errs = fit_errors.get(curve) or {}
        if errs.get("cv_median") is None or errs.get("cv_p95") is None:
            out[curve] = None
            continue
        ok = errs["cv_median"] <= limit["median"] and errs["cv_p95"] <= limit["p95"]
        if errs.get("mixed_median") is not None:
            ok = ok and errs["mixed_median"] <= limit["median"] and errs["mixed_p95"] <= limit["p95"]
        out[curve] = bool(ok)
    return out


def profile_summary(profile: GPUProfile, path: str | None = None) -> dict[str, Any]:
    """One JSON-ready object: identity, metadata, fit errors, targets met, derived J/token figures."""
    return {
        "path": path,
        "label": profile.label,
        "content_sha256": profile.content_sha256,
        "date": profile.date,
        "engine": profile.engine,
        "mode": profile.mode,
        "model": profile.model.name,
        "dtype": profile.model.dtype,
        "tp": profile.tp,
        "gpu": profile.gpu,
        "host": profile.host,
        "software": profile.software,
        "method": {k: v for k, v in profile.method.items() if k not in ("grid", "aligned")},
        "idle_power_w": profile.idle_power_w,
        "kv_capacity_tokens": profile.kv_capacity_tokens,
        "raw_path": profile.raw_path,
        "host_overhead": None if profile.host_overhead is None else {
            k: v for k, v in profile.host_overhead.to_dict().items() if k != "points"},
        "decode_split_rule": None if profile.decode_split_rule is None
        else dataclasses.asdict(profile.decode_split_rule),
        "fit_errors": profile.fit_errors,
        "targets_met": targets_met(profile.fit_errors),
        "prefill": prefill_figures(profile),
        "decode": decode_figures(profile),
        "static_batch": static_batch_cost(profile, 4, 1024, 128),
        "notes": profile.notes,
    }
