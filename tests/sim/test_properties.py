"""Properties over random small traces and configurations: books balance, everyone finishes, latencies order."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sim_profiles import make_profile

from tokenjoule.calibrate.profile import HostOverhead
from tokenjoule.sim.run import SimConfig, run
from tokenjoule.traces.schema import Trace

PROFILE = make_profile(lat=(0.007, 3e-5), en=(2.5, 0.02), lat_coef={"decode_ctx_tokens": 4e-8,
                                                                  "prefill_attn_pairs": 1e-9},
                       en_coef={"decode_ctx_tokens": 2e-5, "has_prefill": 0.2}, idle_power_w=80.0,
                       kv_capacity_tokens=3000)
# The same with a longest-context term and host overhead (a profile written after both were added).
NEW_TERMS = make_profile(lat=(0.007, 3e-5), en=(2.5, 0.02), lat_coef={"decode_ctx_tokens": 4e-8,
                                                                    "decode_tail_ctx_tokens": 2e-6,
                                                                    "prefill_attn_pairs": 1e-9},
                         en_coef={"decode_ctx_tokens": 2e-5, "decode_tail_ctx_tokens": 1e-3, "has_prefill": 0.2},
                         idle_power_w=80.0, kv_capacity_tokens=3000, host_overhead=HostOverhead(5e-4, 8e-6, 1e-8))

requests = st.lists(st.tuples(st.floats(0, 5), st.integers(0, 1500), st.integers(0, 400)), min_size=1, max_size=40)
configs = st.fixed_dictionaries({
    "policy": st.sampled_from(["static", "continuous", "chunked"]),
    "replicas": st.integers(1, 3),
    "router": st.sampled_from(["round-robin", "least-outstanding", "random"]),
    "max_num_seqs": st.integers(1, 16),
    "max_num_batched_tokens": st.integers(64, 4096),
    "max_batch": st.integers(1, 6),
    "batch_timeout_s": st.sampled_from([0.0, 0.3]),
    "seed": st.integers(0, 3),
})


def _trace(rows):
    rows = sorted(rows)
    return Trace.from_columns([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=requests, kwargs=configs, profile=st.sampled_from([PROFILE, NEW_TERMS]))
def test_books_balance_and_everyone_finishes(rows, kwargs, profile):
    if kwargs["policy"] == "chunked":
        kwargs["max_num_batched_tokens"] = max(kwargs["max_num_batched_tokens"], kwargs["max_num_seqs"] + 1)
    trace = _trace(rows)
    r = run(SimConfig(**kwargs), trace, profile)
    s, t = r.summary, r.requests
    status = t.column("status").to_numpy(zero_copy_only=False)
    assert set(status) <= {"finished", "rejected"}
    assert s["finished"] + s["rejected"] == len(rows)
    attributed = t.column("gpu_energy_attributed_j").to_numpy().sum()
    total = s["gpu_busy_j"] + s["gpu_idle_j"]
    assert abs(attributed + s["gpu_idle_j"] - total) <= 1e-9 * max(total, 1e-300)
    assert abs(attributed - s["gpu_busy_j"]) <= 1e-9 * max(total, 1e-300)
    assert s["gpu_idle_j"] >= -1e-9 * max(total, 1.0)
    done = status == "finished"
    ttft, e2e, queue = (t.column(c).to_numpy()[done] for c in ("ttft_s", "e2e_s", "queue_s"))
    assert np.all(queue >= 0) and np.all(queue <= ttft + 1e-12) and np.all(ttft <= e2e + 1e-12)
    assert np.all(t.column("gpu_energy_attributed_j").to_numpy()[done] > 0)
    again = run(SimConfig(**kwargs), trace, profile)
    assert again.summary == s
