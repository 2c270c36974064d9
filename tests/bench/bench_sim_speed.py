"""Simulator speed on one core: the full Azure conv 2023 trace and a 1-million-request synthetic trace.

Target (issue 18): >= 50,000 simulated requests/s for every case below (continuous and chunked, 1 and 8 replicas).
For each case it prints simulated requests/s of the whole `run()` (trace preparation, simulation loop, result table)
and of the simulation loop alone (SimPy's `env.run()`), both on process CPU time (best of --repeats, so that other
work on a shared machine moves the figures less), and SimPy events per request (the environment's event ids
handed out, stale ones included). Last: peak RSS and the conservation error of each run.

Run: python tests/bench/bench_sim_speed.py [--n 1000000] [--repeats 3] [--only azure|synthetic] [--match TEXT]
     [--profile PATH]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import simpy

from tokenjoule.calibrate.profile import load_profile
from tokenjoule.sim.run import SimConfig, run
from tokenjoule.traces.loaders import load_trace
from tokenjoule.traces.synth import SynthSpec, synthesize

DEFAULT_PROFILE = "h100-llama-3.1-8b-tokenjoule-cudagraph"


class _LoopClock:
    """Times `simpy.Environment.run` (CPU seconds) and keeps the last environment, to read its event count."""

    def __init__(self) -> None:
        self.loop_s, self.env = 0.0, None
        self._run, self._init = simpy.Environment.run, simpy.Environment.__init__
        clock = self

        def timed_run(env, until=None):
            t0 = time.process_time()
            try:
                return clock._run(env, until)
            finally:
                clock.loop_s = time.process_time() - t0

        def remembered_init(env, *args, **kwargs):
            clock._init(env, *args, **kwargs)
            clock.env = env

        simpy.Environment.run, simpy.Environment.__init__ = timed_run, remembered_init

    def events(self) -> int:
        """Events the last environment scheduled (SimPy numbers them from 0)."""
        return next(self.env._eid)


def _case(clock, name, config, trace, profile, repeats, match=""):
    if match not in name:
        return
    best_run = best_loop = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        result = run(config, trace, profile)
        best_run, best_loop = min(best_run, time.process_time() - t0), min(best_loop, clock.loop_s)
    n = len(trace)
    print(f"{name:<46} {n:>9,} req  run {n / best_run:>8,.0f} req/s  loop {n / best_loop:>8,.0f} req/s  "
          f"{clock.events() / n:5.2f} events/req  J/req {result.summary['j_per_request']:7.2f}  "
          f"conservation {result.summary['conservation_rel_error']:.0e}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="requests of the synthetic trace")
    parser.add_argument("--repeats", type=int, default=3, help="runs per case (the best counts)")
    parser.add_argument("--only", choices=("azure", "synthetic"), help="run one trace's cases only")
    parser.add_argument("--match", default="", help="run only the cases whose name holds this text, e.g. 'chunked x8'")
    parser.add_argument("--profile", default=DEFAULT_PROFILE)
    args = parser.parse_args()
    profile = load_profile(args.profile)
    azure = load_trace("azure-conv-2023")
    clock = _LoopClock()
    if args.only != "synthetic":
        for policy in ("continuous", "chunked", "static"):
            _case(clock, f"azure-conv-2023 {policy} x1", SimConfig(policy=policy), azure, profile, args.repeats,
                  args.match)
        for policy in ("continuous", "chunked"):  # 8 replicas at 8x the rate: each sees the trace's load
            _case(clock, f"azure-conv-2023 {policy} x8 (rate x8)", SimConfig(policy=policy, replicas=8, rate_scale=8),
                  azure, profile, args.repeats, args.match)
    if args.only != "azure":
        # lengths resampled from the Azure trace, Poisson arrivals at 5 req/s per replica
        for replicas in (1, 8):
            big = synthesize(SynthSpec(args.n, rate_per_s=5.0 * replicas), np.random.default_rng(0), lengths_from=azure)
            for policy in ("continuous", "chunked"):
                _case(clock, f"synthetic {args.n:,} {policy} x{replicas} @{5 * replicas} req/s",
                      SimConfig(policy=policy, replicas=replicas), big, profile, args.repeats, args.match)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {rss_mb:,.0f} MB (includes the synthetic trace and per-request result columns)")


if __name__ == "__main__":
    main()
