"""How much one host's launch-bound speed moves from minute to minute, and what a mixed iteration's decode half costs.

Why: issue 19's targets for HF `generate()` (energy within 5% on the profile's own host) assume a replay repeats
within a few percent on one host. Earlier leases saw the same HF scenario take 13.8 s and then 22.5 s four minutes
apart. This measures that repeatability directly, on one GPU in one lease, by rounds run back to back until the
budget is spent; each round times, each in its own NVML energy window:

- `hf`: one `generate()` call of Llama-3.1-8B (random bf16 weights, eager, sdpa), batch 8, 512 prompt tokens, 64 new;
- `eager_decode` / `graph_decode`: 100 decode steps of the tokenjoule engine (same model), batch 8 at context 512,
  eager and CUDA graphs (the GPU-bound control);
- `1b_prefill`, `1b_mixed1`, `1b_mixed4`: 20 eager iterations of Llama-3.2-1B: a 1,024-token prefill alone, and the
  same prefill beside 1 or 4 decoding sequences at context 1,500 (issue 16: mixed iterations of host-bound models
  ran 5-10 ms longer than prefill-only ones, which the composed profiles do not price);
- `cpu`: a pure-Python loop (no CUDA), the host's own speed.

And once, the host time per call (no sync inside the loop) of a torch elementwise launch and of the paged decode
attention's launcher (two Triton kernels and their buffers), so the decode half's host cost can be counted in launches.

Run on the device, from the repository root (the tokenjoule package importable):
    python tests/bench/host_phases_gpu.py --out "$OUT" [--budget-s 420]
Writes `host_phases.parquet` (one row per measured window), `launch_costs.json` and `meta.json` (provenance).
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from tokenjoule.calibrate.measure.machine import gpu_info, host_info, software_info
from tokenjoule.calibrate.measure.meters import make_meter
from tokenjoule.kernels.decode_attention import paged_decode_attention
from tokenjoule.kernels.iteration import build_runner
from tokenjoule.kernels.shape import IterationShape
from tokenjoule.kernels.spec import load_spec

DECODE = IterationShape(decode=(512,) * 8)
PREFILL_1B = IterationShape(prefill=((1024, 0),))
MIXED1_1B = IterationShape(prefill=((1024, 0),), decode=(1500,))
MIXED4_1B = IterationShape(prefill=((1024, 0),), decode=(1500,) * 4)


def _cpu_loop() -> None:
    total = 0
    for i in range(300_000):
        total += i & 7


def _host_s_per_call(fn, calls: int = 2000) -> float:
    """Host seconds per call of `fn`, launched back to back without a sync (the GPU queue absorbs the kernels)."""
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - t0) / calls
    torch.cuda.synchronize()
    return host


def launch_costs(runner_1b) -> dict[str, float]:
    """Host seconds per call: a torch add, and the paged decode attention launcher at batch 1 and 4 (1B's shapes)."""
    spec = runner_1b.runner.model.local_spec
    kv = runner_1b.runner.model.kv_cache[0]  # (2, num_blocks, block_size, n_kv_heads, head_dim) of layer 0
    x = torch.zeros(1024, spec.hidden_size, device="cuda", dtype=torch.bfloat16)
    out = {"torch_add_s": _host_s_per_call(lambda: x.add_(1.0))}
    for batch in (1, 4):
        q = torch.zeros(batch, spec.n_heads, spec.head_dim, device="cuda", dtype=torch.bfloat16)
        tables = torch.zeros(batch, -(-1500 // kv.shape[2]), device="cuda", dtype=torch.int32)
        lens = torch.full((batch,), 1500, device="cuda", dtype=torch.int32)
        out[f"paged_decode_attention_b{batch}_s"] = _host_s_per_call(
            lambda q=q, tables=tables, lens=lens: paged_decode_attention(q, kv[0], kv[1], tables, lens))
    return out


def main() -> None:  # noqa: D103
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget-s", type=float, default=420.0)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="window .* shorter than")  # the cpu case's energy is not used
    start = time.perf_counter()
    meter = make_meter([0])
    spec8, spec1 = load_spec("llama-3.1-8b"), load_spec("llama-3.2-1b")
    hf = build_runner(spec8, engine="hf", mode="eager", gpu_memory_utilization=0.3)
    eager = build_runner(spec8, engine="tokenjoule", mode="eager", gpu_memory_utilization=0.5, max_num_seqs=16)
    graph = build_runner(spec8, engine="tokenjoule", mode="cudagraph", gpu_memory_utilization=0.7, max_num_seqs=16)
    small = build_runner(spec1, engine="tokenjoule", mode="eager", gpu_memory_utilization=0.8, max_num_seqs=16)
    print(f"[{time.perf_counter() - start:5.0f} s] built 4 runners", flush=True)
    costs = launch_costs(small)
    print(f"launch costs: {costs}", flush=True)

    def hf_call():
        hf.generate(8, 512, 64)

    def steps(runner, shape, n):
        def setup():  # prepares the shape (and runs it once), then hands the measured part back
            runner.prepare(shape)
            return lambda: [runner.step() for _ in range(n)]
        return setup

    cases = [("hf", lambda: hf_call, 1), ("eager_decode", steps(eager, DECODE, 100), 100),
             ("graph_decode", steps(graph, DECODE, 100), 100), ("1b_prefill", steps(small, PREFILL_1B, 20), 20),
             ("1b_mixed1", steps(small, MIXED1_1B, 20), 20), ("1b_mixed4", steps(small, MIXED4_1B, 20), 20),
             ("cpu", lambda: _cpu_loop, 1)]
    hf_call()  # warm: the whole call, every cache length it reaches
    rows, rnd = [], 0
    while time.perf_counter() - start < args.budget_s - 15:
        for name, setup, n in cases:
            fn = setup()  # outside the window
            meter.begin_window(name)
            wall = time.time()
            fn()
            m = meter.end_window(name)
            rows.append({"round": rnd, "case": name, "wall_start": wall, "time_s": m.time_s, "steps": n,
                         "energy_j": m.energy_j})
        if rnd % 5 == 0:
            last = {r["case"]: r["time_s"] for r in rows[-len(cases):]}
            print(f"[{time.perf_counter() - start:5.0f} s] round {rnd}: "
                  + " ".join(f"{k} {v:.3f}" for k, v in last.items()), flush=True)
        rnd += 1
    args.out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), args.out / "host_phases.parquet")
    (args.out / "launch_costs.json").write_text(json.dumps(costs, indent=1))
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "gpu": gpu_info(meter), "host": host_info(), "software": software_info(),
            "method": "rounds back to back; each case one NVML energy-counter window (begin/end) with CUDA sync; "
                      "time by perf_counter; random bf16 weights", "script": "tests/bench/host_phases_gpu.py",
            "rounds": rnd, "cases": [c[0] for c in cases]}
    (args.out / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
    print(f"[{time.perf_counter() - start:5.0f} s] {rnd} rounds written", flush=True)


if __name__ == "__main__":
    main()
