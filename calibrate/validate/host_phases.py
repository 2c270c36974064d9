"""Summaries of the committed host-contention checks, for the validation report's findings.

`tests/bench/bench_host_contention_gpu.py` times one launch-bound decode step, back to back, under each piece of the
meter's machinery in rounds. Its JSON files in `calibrate/profiles/checks/` are raw measurements; this reduces each
to what the findings quote: how far the same step's time moved with nothing beside it, whether the thread waited
to run, and each condition's step time relative to its round.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

PATTERN = "*_host_contention_*.json"
READS_COUNTER = ("recorder", "recorder_default_switch", "poll_process")  # conditions reading the energy counter


def summarize_check(doc: dict[str, Any]) -> dict[str, Any]:
    """One check file reduced to what the findings quote, per engine.

    Per engine: the `plain` medians by round, the range of every run's median, run-queue wait and steal, and per
    condition the median over rounds of (its median / the round's mean of medians).
    """
    engines: dict[str, Any] = {}
    for engine in dict.fromkeys(r["engine"] for r in doc["runs"]):
        runs = [r for r in doc["runs"] if r["engine"] == engine]
        rounds: dict[int, dict[str, float]] = {}
        for r in runs:
            rounds.setdefault(r["round"], {})[r["condition"]] = r["median_ms"]
        conditions = list(dict.fromkeys(r["condition"] for r in runs))
        engines[engine] = {
            "plain_median_ms_by_round": [m["plain"] for m in rounds.values() if "plain" in m],
            "median_ms_range": [min(r["median_ms"] for r in runs), max(r["median_ms"] for r in runs)],
            "runqueue_wait_s_max": max(r["main_thread_runqueue_wait_s"] for r in runs),
            "steal_s_total": sum(r["steal_ticks"] / r["clock_ticks_per_s"] for r in runs),
            "seconds_timed": doc["seconds_per_run"] * len(runs),
            "over_round_mean": {c: statistics.median(m[c] / statistics.mean(m.values()) for m in rounds.values()
                                                     if c in m) for c in conditions},
            "counter_readers_over_rest_by_round": [_group_ratio(m) for m in rounds.values()]}
    devices = doc["gpu"].get("devices") or [{}]
    return {"date": doc["date"], "gpu": doc["gpu"]["name"], "gpu_uuid": devices[0].get("uuid"),
            "rounds": 1 + max(r["round"] for r in doc["runs"]), "engines": engines}


def _group_ratio(medians: dict[str, float]) -> float | None:
    """Mean median of the conditions reading the energy counter over the mean of the others, in one round."""
    reading = [v for c, v in medians.items() if c in READS_COUNTER]
    rest = [v for c, v in medians.items() if c not in READS_COUNTER]
    return statistics.mean(reading) / statistics.mean(rest) if reading and rest else None


def host_phase_checks(checks_dir: Path) -> list[dict[str, Any]]:
    """Every committed host-contention check under `checks_dir`, summarized, by file name."""
    return [{"file": p.name, **summarize_check(json.loads(p.read_text()))} for p in sorted(checks_dir.glob(PATTERN))]
