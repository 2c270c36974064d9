"""The "Findings" section of docs/validation.md: each claim written from the report's figures, hedged where open.

Every function returns markdown lines, or none when the runs at hand hold nothing to say on its point, so any set of
runs renders (a new run changes the figures, never leaves a stale claim).
"""

from __future__ import annotations

from typing import Any

LATENCY = ("ttft_p50_s", "tpot_p50_s", "e2e_p50_s")


def _p(value: float) -> str:
    return f"{value:.1%}"


def _s(value: float) -> str:
    return f"{value:+.1%}"


def _names(runs: list[dict[str, Any]]) -> str:
    return ", ".join(f"`{r['run']}`" for r in runs)


def _energy(report: dict[str, Any]) -> list[str]:
    runs = report["runs"]
    missed = [r["run"] for r in runs if not r["summary"]["energy_total_j"]["met"]]
    overall = report["summary"]["energy_total_j"]
    per_run = "; ".join(f"`{r['run']}` {_p(r['summary']['energy_total_j']['median_abs'])} / "
                        f"{_p(r['summary']['energy_total_j']['max_abs'])}" for r in runs)
    head = ("**Energy meets its target in every run**" if not missed else
            f"**Energy misses its target in {_names([r for r in runs if r['run'] in missed])}**")
    gaps, off = [], []
    for r in runs:
        seen = [s["idle_gaps"] for s in report["scenarios"]
                if s["run"] == r["run"] and s["idle_gaps"]["gap_power_after_300ms_w"] is not None]
        if seen:
            gaps.append(f"`{r['run']}` " + ", ".join(f"{g['gap_power_w']:.0f} / {g['gap_power_after_300ms_w']:.0f}"
                                                       for g in seen) + f" W vs {r['idle_power_w']:.0f} W")
            off += [abs(g["gap_power_after_300ms_w"] - r["idle_power_w"]) for g in seen]
    idle = (" Inside idle gaps of >= 0.5 s the GPU drew (whole gap / after its first 300 ms) " + "; ".join(gaps)
            + f" (profile idle): after the first 300 ms within {max(off):.0f} W of the profile's idle." if gaps else "")
    return [f"- {head} (median / max |error| {per_run}; all runs {_p(overall['median_abs'])} / "
            f"{_p(overall['max_abs'])}).{idle}"]


def _policy_class(spec: dict[str, Any]) -> str:
    return "static" if spec["static_batch"] or spec["policy"] == "static" else spec["policy"]


def _latency(report: dict[str, Any]) -> list[str]:
    missed = [m for m in LATENCY if not report["summary"].get(m, {}).get("met", True)]
    if not missed:
        return ["- **Latency meets its targets in every run.**"]
    classes = sorted({_policy_class(s["spec"]) for s in report["scenarios"]})
    parts = []
    for c in classes:
        mine = [s for s in report["scenarios"] if _policy_class(s["spec"]) == c]
        worst = []
        for m in LATENCY:
            errs = [(abs(s["error"][m]), s) for s in mine if s["error"][m] is not None]
            if errs:
                e, s = max(errs, key=lambda x: x[0])
                worst.append(f"{m} {_p(e)} ({s['scenario']}, `{s['run']}`)")
        parts.append(f"{c}: " + ", ".join(worst))
    return [f"- **Latency misses its targets** ({', '.join(missed)} over all runs). Worst |error| by policy: "
            + "; ".join(parts) + ". The points below trace where the misses come from."]


def _stalls(report: dict[str, Any]) -> list[str]:
    runs = [r for r in report["runs"] if r["stalls"]["scenarios"] or r["stalls"]["warmups"]]
    if not runs:
        return []
    per_run = "; ".join(f"`{r['run']}` {r['stalls']['warmups']} in warm-ups, {r['stalls']['scenarios']} in scenarios "
                        f"({r['stalls']['scenario_excess_s']:.1f} s)" for r in report["runs"])
    kinds: dict[str, int] = {}
    for s in report["scenarios"]:
        for kind, k in s["iteration_check"]["by_kind"].items():
            kinds[kind] = kinds.get(kind, 0) + k["stalls"]
    mixed = [(s, s["iteration_check"]["by_kind"]["mixed"]) for s in report["scenarios"]
             if "mixed" in s["iteration_check"]["by_kind"]]
    lines = [f"- **Stalls account for most of the mixed-iteration under-prediction.** Iterations that "
             f"ran over 4x their prediction and 0.2 s longer: {per_run}; by kind "
             + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) + "."]
    if mixed:
        with_, without = (max(abs(k[key]) for _, k in mixed if k[key] is not None)
                          for key in ("run_time_error", "run_time_error_without_stalls"))
        lines[-1] += (f" Mixed iterations of a scenario are predicted within {_p(without)} without them, against up "
                      f"to {_p(with_)} with them.")
    new = [(r["run"], r["stalls"]["with_new_split_count"], r["stalls"]["warmups"] + r["stalls"]["scenarios"])
           for r in report["runs"] if r["stalls"]["with_new_split_count"] is not None]
    lines[-1] += (" Cause, found after these runs: the Triton decode kernel compiled a new variant in the middle of "
                  "serving whenever an eager iteration (one with a prefill chunk) used a decode split count no earlier "
                  "one had (it is a compile-time constant); stalls that came with a new split count: "
                  + ", ".join(f"`{name}` {n} of {total}" for name, n, total in new)
                  + ". The others may come from the block-table stride, which Triton also specialized on (not "
                  "checked). The engine now compiles every split count at start-up and no longer specializes on "
                  "that stride (kernels/NOTES.md); "
                  + ("the check run below replays the chunked scenarios with the fix. " if report["check_runs"] else
                     "replays with the fix are still to be run. ")
                  + "The simulator has no one-off costs by design.")
    lines[-1] += _knee(report)
    return lines


def _knee(report: dict[str, Any]) -> str:
    """The scenario whose TTFT p50 differed most between two runs on one GPU, and its stalls in each."""
    rows = [(pair, s) for pair in report["repeatability"] for s in pair["scenarios"]
            if s["difference"]["ttft_p50_s"] is not None]
    if not rows:
        return ""
    pair, s = max(rows, key=lambda x: abs(x[1]["difference"]["ttft_p50_s"]))
    by = {(e["run"], e["scenario"]): e for e in report["scenarios"]}
    a, b = by[(pair["run_a"], s["scenario"])], by[(pair["run_b"], s["scenario"])]
    f = pair["facts"]
    stalls = {r["run"]: r["stalls"]["warmups"] + r["stalls"]["scenarios"] for r in report["runs"]}
    note = (f" `{f['later_run']}` began {f['runs_gap_s']:.0f} s after `{f['earlier_run']}` ended on the same GPU and "
            f"stalled less ({stalls[f['later_run']]} vs {stalls[f['earlier_run']]} stalls, warm-ups included), as "
            "a compile cache kept on disk between the runs would explain; that was not checked."
            if f["runs_gap_s"] is not None and stalls[f["later_run"]] < stalls[f["earlier_run"]] else "")
    same = "the same requests in both runs" if s["same_requests"] else "NOT the same request lists"
    return (f" Stalls also move the measurement itself: {s['scenario']} ({same}) measured TTFT "
            f"p50 {s['measured_a']['ttft_p50_s']:.2f} s in `{pair['run_a']}` and {s['measured_b']['ttft_p50_s']:.2f} s "
            f"in `{pair['run_b']}` ({_s(s['difference']['ttft_p50_s'])}), with {a['iteration_check']['stalls']} stalls "
            f"({a['iteration_check']['stall_excess_s']:.1f} s) vs {b['iteration_check']['stalls']} "
            f"({b['iteration_check']['stall_excess_s']:.1f} s); simulated {a['simulated']['ttft_p50_s']:.2f} / "
            f"{b['simulated']['ttft_p50_s']:.2f} s.{_queue(a)}{note}")


def _queue(entry: dict[str, Any]) -> str:
    """How full the scenario keeps its chunk budget (why a few stalled seconds turn into queueing)."""
    mixed = entry["iteration_check"]["by_kind"].get("mixed")
    if mixed is None:
        return ""
    return (f" Its mixed iterations carry a median {mixed['prefill_tokens_median']:.0f} prefill tokens against a "
            f"{entry['spec']['max_batched_tokens']}-token budget: the prefill queue seldom empties (a saturation "
            "knee), so stalled seconds turn into queueing.")


def _mixed(report: dict[str, Any]) -> list[str]:
    fitted = [r for r in report["runs"] if r["protocol"]["mixed"] == "fitted"]
    others = [r for r in report["runs"] if r["protocol"]["mixed"] != "fitted"]
    if not any(r["iteration_bins"]["mixed_by_chunk"] for r in report["runs"]):
        return []

    def spread(runs: list[dict[str, Any]], small: bool) -> str:
        errs = [b["run_time_error_without_stalls"] for r in runs for b in r["iteration_bins"]["mixed_by_chunk"]
                if (b["hi"] <= 512) == small and b["run_time_error_without_stalls"] is not None]
        return f"{_s(min(errs))} to {_s(max(errs))}" if errs else "–"

    line = ("- **Mixed iterations** (prefill chunks beside decodes; the engine runs them eagerly, only decode-only "
            "steps replay CUDA graphs).")
    if fitted:
        line += (f" Runs whose calibration measured and fitted them ({_names(fitted)}): "
                 f"without stalls, chunks of 512 tokens and more are predicted {spread(fitted, False)}, chunks under "
                 f"512 tokens {spread(fitted, True)}.")
    if others:
        line += (f" Runs without fitted mixed points ({_names(others)}: "
                 + ", ".join(r["protocol"]["mixed"] for r in others) + f"): {spread(others, False)} and "
                 f"{spread(others, True)}.")
    bins = [b for r in report["runs"] for b in r["iteration_bins"]["mixed_by_chunk"]]
    small = sum(b["n"] for b in bins if b["hi"] <= 512)
    line += (f" Small chunks stay under-predicted; they are {small} of {sum(b['n'] for b in bins)} mixed iterations "
             "here, and why they miss (the calibration pairs each chunk with one uniform decode batch) is not "
             "established.")
    return [line]


def _decode(report: dict[str, Any]) -> list[str]:
    before, after = [], []
    for r in report["runs"]:
        bins = [b for b in r["iteration_bins"]["decode_by_batch"] if b["n"] >= 100]
        if len(bins) >= 2:
            worst = max(bins, key=lambda b: abs(b["run_time_error"]))
            text = (f"`{r['run']}` {_s(bins[0]['run_time_error'])} at [{bins[0]['lo']}, {bins[0]['hi']}) sequences, "
                    f"worst {_s(worst['run_time_error'])} at [{worst['lo']}, {worst['hi']})")
            (after if r.get("prices_ragged_decodes") else before).append(text)
    if not before and not after:
        return []
    ragged = next((r for r in report["runs"] if r.get("ragged_points")), None)
    cause = ""
    if ragged:
        pts = ", ".join(f"{p['point_id']} {p['measured_ms']:.1f} ms measured vs {p['pred_without_tail_ms']:.1f} ms "
                        f"from the uniform points (with the tail term {p['pred_ms']:.1f} ms)"
                        for p in ragged["ragged_points"] if "_b128_" in p["point_id"] or "_b256_" in p["point_id"])
        cause = (f" Cause, established by ragged calibration points (`{ragged['run']}`: {pts}): served batches hold a "
                 "few long contexts among short ones, and the split-KV decode kernel gives every sequence the same "
                 "number of programs, so the longest context keeps one program running after the rest finish. "
                 "Profiles since then price that tail (`decode_tail_ctx_tokens`: the longest context's excess over "
                 "the mean, over the batch's splits).")
    online = [s for s in report["scenarios"] if _policy_class(s["spec"]) == "continuous"
              and s["error"]["tpot_p50_s"] is not None]
    tail = ""
    if online:
        worst = max(online, key=lambda s: abs(s["error"]["tpot_p50_s"]))
        same = [s for s in online if s["scenario"] == worst["scenario"]]
        host = {r["run"]: r.get("host_overhead_method") for r in report["runs"]}
        tail = (f" TPOT p50 of {worst['scenario']}, where decode batches are largest: "
                + ", ".join(f"{_s(s['error']['tpot_p50_s'])} (`{s['run']}`: decode iterations "
                            f"{_s(s['iteration_check']['by_kind']['decode']['run_time_error'])}; host work between "
                            f"iterations {_p(s['iteration_check']['host_share'])} of the time, "
                            + ("in the profile" if host.get(s["run"]) else "not in the profile") + ")"
                            for s in same if "decode" in s["iteration_check"]["by_kind"]) + ".")
    groups = ([f"profiles without the ragged-batch term: {'; '.join(before)}"] if before else []) + \
        ([f"with it: {'; '.join(after)}"] if after else [])
    return ["- **Decode-only iterations by batch size** (bins of >= 100 iterations; " + " — ".join(groups) + ")."
            + cause + tail]


def _repeatability(report: dict[str, Any]) -> list[str]:
    lines = []
    for pair in report["repeatability"]:
        v = pair["summary"]
        order = [m for m in report["metrics"] if m in v and v[m]["median_abs_error_a"] is not None]
        close = [m for m in order if v[m]["median_abs_difference"]
                 >= 0.5 * min(v[m]["median_abs_error_a"], v[m]["median_abs_error_b"])]
        lines.append(f"- **Run-to-run noise floor** (`{pair['run_a']}` vs `{pair['run_b']}`, same GPU): median "
                     "|measured difference| vs median |simulator error| (a / b) "
                     + ", ".join(f"{m} {_p(v[m]['median_abs_difference'])} vs {_p(v[m]['median_abs_error_a'])} / "
                                 f"{_p(v[m]['median_abs_error_b'])}" for m in order)
                     + (f". For {', '.join(close)} the scatter is at least half the smaller simulator error, so "
                        "those errors are partly the measurement's own noise" if close else
                        ". The scatter is under half the simulator's error for every metric")
                     + "; the largest difference is the stalled scenario above.")
    return lines


def _carry(report: dict[str, Any]) -> list[str]:
    if not report["carry_over"]:
        return []
    parts = [f"`{c['run']}` with {c['source']}: energy {_p(c['summary']['energy_total_j']['median_abs'])} / "
             f"{_p(c['summary']['energy_total_j']['max_abs'])}" for c in report["carry_over"]]
    one_gpu = [{"run": c["run"]} for c in report["carry_over"] if c["facts"]["same_uuid"]]
    two_gpus = [c for c in report["carry_over"] if c["facts"]["uuid_a"] and c["facts"]["uuid_b"]
                and not c["facts"]["same_uuid"]]
    same = f"; the pairs of {_names(one_gpu)} are one GPU (same UUID), calibration-to-calibration drift" if one_gpu \
        else ""
    other = (f"; {len(two_gpus)} pair(s) are two GPUs of the type (different UUIDs, different device leases): the "
             "error of carrying a profile to another machine") if two_gpus else ""
    return ["- **Carry-over between calibrations of one GPU type** (median / max |energy error|): " + "; ".join(parts)
            + f". Every pair is one GPU model{same}{other}; none crosses GPU models or vendors."]


def _errs(summary: dict[str, Any]) -> str:
    return ", ".join(f"{m.removesuffix('_s').removesuffix('_total_j')} {_p(summary[m]['median_abs'])} / "
                     f"{_p(summary[m]['max_abs'])}" for m in ("energy_total_j", *LATENCY) if m in summary)


def _short_recal(report: dict[str, Any]) -> list[str]:
    """A run replayed against a short re-calibration made on its own GPU: as is -> re-scaled -> full calibration."""
    lines = []
    for r in report["runs"]:
        short = r.get("short_recal")
        if not short:
            continue
        carried = [c for c in report["carry_over"] if c["run"] == r["run"]]
        as_is = next((c for c in carried if "the base of its short re-calibration" in c["source"]), None)
        full = next((c for c in carried if c["facts"]["same_uuid"]), None)
        parts = []
        if as_is:
            parts.append(f"the {as_is['source'].split(' (')[0]} profile (calibrated {short['base_date']} on another "
                         f"{short['base_gpu']}), carried as is: {_errs(as_is['summary'])}")
        parts.append(f"re-scaled by {short['points']} points, idle power and host overhead measured on this GPU "
                     f"(windows ending within {short['sweep_span_s']:.0f} s), as the device call did it (against "
                     f"the base's curves): {_errs(r['summary'])}")
        if as_is and as_is.get("summary_short_recal"):
            parts.append("re-scaled from the same points as `calibrate/recalibrate.py` does now (against the base's "
                         f"own measurements at those points): {_errs(as_is['summary_short_recal'])}")
        if full:
            parts.append(f"with this GPU's own full calibration (`{full['source_run']}`, a separate device call "
                         f"on the same GPU): {_errs(full['summary'])}")
        lines.append(f"- **A short re-calibration, measured on another machine** (`{r['run']}`, GPU {r['gpu_uuid']}; "
                     "median / max |error| over its scenarios): " + "; ".join(parts) + ".")
    return lines


def _eager(report: dict[str, Any]) -> list[str]:
    """Eager runs: launch-bound decode steps whose time follows the host's speed, in calibration and in serving."""
    lines = []
    for r in report["runs"]:
        small = r.get("small_decode_steps")
        if r["engine"] != "tokenjoule" or r["mode"] != "eager" or not small:
            continue
        reps = ", ".join(f"{v:.1f}" for v in small["calibration_median_ms_by_repeat"].values())
        served = ", ".join(f"{s['scenario']} {s['median_ms']:.1f} ms ({s['slow_share']:.0%})"
                           for s in small["serving"])
        lines.append(
            f"- **Eager mode** (`{r['run']}`, median / max |error|): {_errs(r['summary'])}. Decode-only steps "
            f"of <= 16 sequences are launch-bound: the calibration measured them at a median {reps} ms in its "
            "successive repeats (the profile takes each point's median over repeats), while serving ran them at "
            f"(median, and the share of steps over {small['slow_over_ms']:.1f} ms, 1.3x the fastest repeat) "
            f"{served}. These steps run in a fast or a slow state lasting seconds to tens of seconds, in "
            "calibration and in serving alike (see the host-speed finding below); the simulator prices one "
            "state per point, so latency follows the mix of states the calibration caught.")
    return lines


def _host_phases(report: dict[str, Any]) -> list[str]:
    """What the host-contention checks measured: one launch-bound step's time moving with the host, not the meter."""
    lines = []
    for c in report.get("host_phases", []):
        per_engine = []
        for engine, e in c["engines"].items():
            plain = ", ".join(f"{v:.1f}" for v in e["plain_median_ms_by_round"])
            ratios = ", ".join(f"{k} x{v:.2f}" for k, v in e["over_round_mean"].items())
            readers = ", ".join("–" if v is None else f"x{v:.2f}" for v in e["counter_readers_over_rest_by_round"])
            per_engine.append(
                f"{engine}: with nothing beside it, its median was {plain} ms in successive rounds, and every timed "
                f"run's median fell between {e['median_ms_range'][0]:.1f} and {e['median_ms_range'][1]:.1f} ms; the "
                f"main thread waited at most {1e3 * e['runqueue_wait_s_max']:.0f} ms to run and the host reported "
                f"{e['steal_s_total']:.2f} s of steal in {e['seconds_timed']:.0f} s; each condition over its "
                f"round's mean (median over rounds): {ratios}; the three that read the energy counter over the "
                f"other three, by round: {readers}")
        lines.append(
            f"- **Launch-bound steps follow the host's speed** (`calibrate/profiles/checks/{c['file']}`, "
            f"{c['gpu']} {c['gpu_uuid']}, {c['rounds']} rounds, {c['date'][:10]}): one decode step timed back to "
            "back under each piece of the meter's machinery (nothing; the power sampler; the lowered GIL switch "
            "interval; the tick recorder; the recorder at the default interval; a separate process polling the "
            "energy counter). " + "; ".join(per_engine) + ". The thread was on a CPU the whole time, yet the same "
            "step ran up to twice as long minutes apart: the host's speed moves in phases that no process here "
            "controls. Calibration sees a few seconds of them per point and a replay sees its own, which limits "
            "launch-bound latency (eager and HF `generate()`) to the scatter shown in the eager findings above; "
            "energy follows busy time and power together and stays within the target. Reading the counter during a "
            "window may slow a launch-bound step too, where the counter readers ran slower in every round; the order "
            "within rounds was fixed, so that is not yet separated from drift (the script now shuffles it).")
    return lines


def _fix_check(report: dict[str, Any]) -> list[str]:
    lines = []
    for name in report["check_runs"]:
        run = next(r for r in report["runs"] if r["run"] == name)
        carried = [c for c in report["carry_over"] if c["run"] == name]
        if not carried:
            continue
        errs = "; ".join(f"with {c['source']}: " + ", ".join(
            f"{m} {_p(c['summary'][m]['median_abs'])} / {_p(c['summary'][m]['max_abs'])}"
            for m in ("energy_total_j", "ttft_p50_s", "tpot_p50_s", "e2e_p50_s") if m in c["summary"])
            for c in carried)
        scenarios = ", ".join(s["scenario"] for s in report["scenarios"] if s["run"] == name)
        lines.append(f"- **After the compile-at-start-up fix** (`{name}`: {run['gpu']} UUID {run['gpu_uuid']}, a fresh "
                     f"machine, so an empty Triton cache; scenarios {scenarios}): "
                     f"{run['stalls']['warmups'] + run['stalls']['scenarios']} stalls "
                     f"(warm-ups included), and simulated with the full profiles of the other H200 runs (median / "
                     f"max |error|): {errs}.")
    return lines


def _thermal(report: dict[str, Any]) -> list[str]:
    lines = []
    for r in report["runs"]:
        mine = [s for s in report["scenarios"] if s["run"] == r["run"] and s["error"]["energy_total_j"] is not None]
        if not mine:
            continue
        s = max(mine, key=lambda s: abs(s["error"]["energy_total_j"]))
        hot, cal = s["idle_gaps"]["temperature_max_c"], r["calibration_temperature_median_c"]
        if abs(s["error"]["energy_total_j"]) > 0.05 and hot is not None and cal is not None and hot - cal >= 10:
            lines.append(f"- `{r['run']}`: {s['scenario']} has the largest energy error "
                         f"({_s(s['error']['energy_total_j'])}, duration {_s(s['error']['duration_s'])}); the GPU "
                         f"reached {hot:.0f} C in it vs a median "
                         f"{cal:.0f} C during the calibration sweep, whose energy repeat spread is "
                         f"{_p(r['fit_errors']['repeats']['energy_spread_median'])} (median). Thermal drift is a "
                         "plausible cause, not an established one.")
    return lines


def _first_batches(report: dict[str, Any]) -> list[str]:
    warmed = {r["run"] for r in report["runs"] if r.get("scenario_warmup")}
    several = [s for s in report["scenarios"] if s.get("batch_warmth")]
    slow = [s for s in several if s["batch_warmth"]["first_over_later"] >= 1.5]
    if not slow:
        return []
    after = [s for s in several if s["run"] in warmed and s["spec"].get("static_input_tokens")]
    ratios = ", ".join(f"{s['scenario']} x{s['batch_warmth']['first_over_later']:.2f} (`{s['run']}`)" for s in after)
    return [f"- **The first measured batch of a shape was slower than the next ones** in {len(slow)} of "
            f"{len(several)} offline scenarios with several batches (mean decode step, first batch / later batches: "
            + ", ".join(f"{s['scenario']} x{s['batch_warmth']['first_over_later']:.2f} (`{s['run']}`)" for s in slow)
            + "), all warmed by a few steps only. Every batch has the same shape, so a first-use cost (new tensor "
            "sizes for the caching allocator) is the plain reading; the simulator prices warm iterations and does "
            "not model it. "
            + (f"Runs that warm each scenario with one whole unmeasured batch of its shape ({', '.join(sorted(warmed))}"
               f"): {ratios}, so the warm-up removes it. Their remaining errors come from the calibration: its "
               "launch-bound generate() steps follow the host's speed (see below)." if after else "")]


def findings(report: dict[str, Any]) -> list[str]:
    """The Findings section's lines."""
    return (["## Findings", ""] + _energy(report) + _latency(report) + _stalls(report) + _mixed(report)
            + _decode(report) + _first_batches(report) + _repeatability(report) + _carry(report)
            + _short_recal(report) + _eager(report) + _host_phases(report) + _fix_check(report) + _thermal(report)
            + [""])
