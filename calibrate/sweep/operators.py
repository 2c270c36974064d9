"""Measure the GPU calibration grid: each operator's GPU time (CUDA events) and energy (NVML ticks) per call.

Method, per point of `operator_grid.OperatorGrid`:

1. build the operator's inputs with the engine's own modules (`kernels/model.py`, `kernels/decode_attention.py`),
   random bf16 values from a seeded generator;
2. warm it up, then time one call with CUDA events (median of 5) to choose `reps`, the calls one step makes, so that
   a step lasts about `step_s` (tiny operators are far shorter than a launch, so one call per step would measure
   the host);
3. capture `reps` calls in a CUDA graph (no launch cost between them: the GPU's own time), or run them eagerly where
   capture fails (recorded as `graph=False`);
4. GPU time per call: CUDA events around graph replays, median over `timing_repeats`, divided by `reps`;
5. energy per call: `measure_aligned` (tick-aligned NVML windows, see `calibrate/measure/aligned.py`) over repeated
   replays, divided by `reps`; its power and error bound are kept.

Operators that stream weights or KV from memory (GEMMs, paged decode attention) cycle through copies of their
inputs that together exceed the GPU's L2 cache (`ROTATE_BYTES`): in an iteration every layer reads its own
weights and its own KV from HBM, while a benchmark replaying one small GEMM on the same weights would time an L2
hit (an H100/H200 has 50 MB of L2, more than one decode GEMM of a 1-8B model).

The host side is measured apart (`measure_launch_costs`): the host time of one eager kernel launch and of one graph
replay, which a launch-bound engine pays per kernel or per iteration. torch is imported inside the functions.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tokenjoule.calibrate.measure.aligned import measure_aligned
from tokenjoule.calibrate.measure.meters import EnergyMeter
from tokenjoule.calibrate.measure.timing import time_fn
from tokenjoule.calibrate.sweep.operator_grid import OperatorPoint

logger = logging.getLogger(__name__)

ROTATE_BYTES = 256 * 2**20  # inputs cycled per operator: about 5x the L2 of an H100/H200 (50 MB)
MAX_COPIES = 64


def copies_for(bytes_per_copy: int) -> int:
    """How many copies of an operator's inputs make the calls it cycles through exceed the L2 cache."""
    return max(1, min(MAX_COPIES, math.ceil(ROTATE_BYTES / max(bytes_per_copy, 1))))


def rotating(calls: list[Callable[[], Any]]) -> Callable[[], Any]:
    """One call that runs `calls` in turn, one per invocation (captured in a graph, each capture binds the next)."""
    state = {"i": -1}

    def call() -> Any:
        state["i"] = (state["i"] + 1) % len(calls)
        return calls[state["i"]]()

    call.copies = len(calls)  # type: ignore[attr-defined]
    return call


@dataclass(frozen=True, slots=True)
class OperatorSweepConfig:
    """How long each point is measured.

    Attributes:
        step_s: target GPU time of one step (reps calls).
        max_reps: most calls per step.
        window_s: least energy window per point (tick-aligned windows may run longer, up to `max_window_s`).
        max_window_s: longest energy window.
        timing_repeats: CUDA-event timings of a step per point.
        device: torch device.
        seed: input generator seed.
    """

    step_s: float = 0.004
    max_reps: int = 4096
    window_s: float = 0.3
    max_window_s: float = 3.0
    timing_repeats: int = 7
    device: str = "cuda"
    seed: int = 0


def build_call(point: OperatorPoint, device: str, seed: int) -> Callable[[], Any]:
    """The operator as a zero-argument call over inputs built once here."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    from tokenjoule.kernels import model as engine_model
    from tokenjoule.kernels.decode_attention import decode_attention

    gen = torch.Generator(device=device).manual_seed(seed)
    dtype = torch.bfloat16
    p = point.params

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen, device=device, dtype=torch.float32) * 0.02).to(dtype)

    if point.op == "gemm":
        def one_gemm() -> Callable[[], Any]:
            x, w = rand(p["m"], p["k"]), rand(p["n"], p["k"])
            return lambda: F.linear(x, w)

        return rotating([one_gemm() for _ in range(copies_for(2 * (p["m"] + p["n"]) * p["k"]))])
    if point.op == "sample":
        logits = rand(p["seqs"], p["vocab"])
        return lambda: torch.argmax(logits, dim=-1)
    if point.op == "decode_attn":
        return _decode_attn_call(p, rand, device, decode_attention)
    if point.op == "prefill_attn":
        return _prefill_attn_call(p, rand, device, engine_model)
    if point.op == "rest":
        return _rest_call(p, rand, device, engine_model)
    if point.op == "moe":
        return _moe_call(p, device, seed, engine_model)
    raise ValueError(f"no builder for operator {point.op!r}")


def _decode_attn_call(p: dict[str, int], rand: Callable[..., Any], device: str, attend: Callable[..., Any]):
    import torch

    block = 16
    batch, ctx = p["batch"], p["ctx"]
    blocks_per_seq = -(-ctx // block)
    tables = torch.arange(batch * blocks_per_seq, device=device, dtype=torch.int32).view(batch, blocks_per_seq)
    lens = torch.full((batch,), ctx, device=device, dtype=torch.int32)
    backend = "triton" if str(device).startswith("cuda") else "torch"  # the engine's kernel; the reference on CPUs

    def one_layer() -> Callable[[], Any]:  # each copy is another layer's cache, as in an iteration
        k_cache = rand(batch * blocks_per_seq, block, p["kv_heads"], p["head_dim"])
        v_cache = rand(batch * blocks_per_seq, block, p["kv_heads"], p["head_dim"])
        q = rand(batch, p["heads"], p["head_dim"])
        return lambda: attend(q, k_cache, v_cache, tables, lens, backend=backend)

    cache_bytes = 2 * 2 * batch * blocks_per_seq * block * p["kv_heads"] * p["head_dim"]
    return rotating([one_layer() for _ in range(copies_for(cache_bytes))])


def _prefill_attn_call(p: dict[str, int], rand: Callable[..., Any], device: str, engine_model: Any):
    import torch

    chunks, q_len, ctx = p["chunks"], p["q"], p["ctx"]
    q = rand(chunks * q_len, p["heads"], p["head_dim"])  # (chunks q, heads, D)
    k = rand(chunks * (ctx + q_len), p["kv_heads"], p["head_dim"])  # (chunks (ctx + q), kv_heads, D)
    v = rand(chunks * (ctx + q_len), p["kv_heads"], p["head_dim"])
    q_lens, k_lens = (q_len,) * chunks, (ctx + q_len,) * chunks
    cu_q = torch.arange(chunks + 1, device=device, dtype=torch.int32) * q_len
    cu_k = torch.arange(chunks + 1, device=device, dtype=torch.int32) * (ctx + q_len)
    return lambda: engine_model.prefill_attention(q, k, v, q_lens, k_lens, cu_q, cu_k)


def _rest_call(p: dict[str, int], rand: Callable[..., Any], device: str, engine_model: Any):
    import torch
    import torch.nn.functional as F  # noqa: N812

    tokens, hidden, ffn, heads = p["tokens"], p["hidden"], p["ffn"], p["heads"] + p["kv_heads"]
    x, res = rand(tokens, hidden), rand(tokens, hidden)
    qk, gate_up = rand(tokens, heads, p["head_dim"]), rand(tokens, 2 * ffn)
    kv, cache = rand(tokens, p["kv_heads"], p["head_dim"]), rand(tokens, p["kv_heads"], p["head_dim"])
    slots = torch.arange(tokens, device=device)
    norm = engine_model.RMSNorm(hidden, 1e-5, device, torch.bfloat16)
    cos, sin = engine_model.rope_cos_sin(slots, p["head_dim"], 10000.0, torch.bfloat16)

    def rest() -> None:
        h = norm(x) + res
        engine_model.apply_rope(qk, cos, sin)
        cache.index_copy_(0, slots, kv)
        cache.index_copy_(0, slots, kv)
        gate, up = gate_up.chunk(2, dim=-1)
        F.silu(gate) * up
        norm(h) + x

    return rest


def _moe_call(p: dict[str, int], device: str, seed: int, engine_model: Any):
    """The engine's MoE layer (grouped expert GEMMs) for a one-layer model of the point's MoE shape."""
    import torch

    from tokenjoule.kernels.spec import ModelSpec

    spec = ModelSpec(name="moe-operator", n_layers=1, hidden_size=p["hidden"], n_heads=1, n_kv_heads=1,
                     head_dim=p["hidden"], intermediate_size=p["ffn"], vocab_size=1, n_experts=p["experts"],
                     n_experts_per_token=p["top_k"], moe_intermediate_size=p["ffn"],
                     shared_expert_intermediate_size=p["shared_ffn"], shared_expert_gate=bool(p["shared_gate"]),
                     norm_topk_prob=bool(p["norm_topk"]))
    backend = "grouped" if str(device).startswith("cuda") else "auto"
    mlp = engine_model.MoE(spec, device, torch.bfloat16, backend=backend)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for weight in mlp.parameters():
            weight.copy_(torch.randn(weight.shape, generator=gen, device=device) * 0.02)
        mlp.draw_route_offsets(gen)  # as the engine's layers route (balanced)
        x = (torch.randn(p["tokens"], p["hidden"], generator=gen, device=device) * 0.02).to(torch.bfloat16)
    return lambda: mlp(x)


def _graph_of(call: Callable[[], Any], reps: int) -> Callable[[], None] | None:
    """A replay of `reps` calls captured in one CUDA graph, or None if the operator cannot be captured."""
    import torch

    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                call()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(reps):
                call()
        return graph.replay
    except RuntimeError as err:  # data-dependent shapes or host syncs inside the operator
        logger.info("not capturable (%s): running eagerly", str(err).splitlines()[0][:120])
        torch.cuda.synchronize()
        return None


def measure_point(point: OperatorPoint, meter: EnergyMeter, config: OperatorSweepConfig) -> dict[str, Any]:
    """One point's row: shape, FLOPs, bytes, and GPU time, energy and power per call."""
    import torch

    call = build_call(point, config.device, config.seed)
    for _ in range(3):
        call()
    one_s = time_fn(call, warmup=0, repeats=5, use_cuda=True).median_s
    reps = max(1, min(config.max_reps, math.ceil(config.step_s / max(one_s, 1e-7))))
    replay = _graph_of(call, reps)
    graphed = replay is not None
    if replay is None:
        def replay() -> None:
            for _ in range(reps):
                call()

    gpu_s = time_fn(replay, warmup=0, repeats=config.timing_repeats, use_cuda=True).median_s / reps

    def step() -> None:
        replay()
        torch.cuda.synchronize()

    aligned = measure_aligned(meter, step, target_s=config.window_s, min_steps=3, warmup_steps=2,
                              max_s=config.max_window_s)
    energy = None if aligned.energy_per_step_j is None else aligned.energy_per_step_j / reps
    row = {**point.to_row(), "reps": reps, "copies": getattr(call, "copies", 1), "graph": graphed,
           "gpu_time_s": gpu_s,
           "step_time_s": aligned.step_time_s / reps, "energy_j": energy, "power_w": aligned.power_w,
           "error_bound": aligned.error_bound, "window_s": aligned.time_s, "window_steps": aligned.steps}
    return row


def measure_launch_costs(config: OperatorSweepConfig, launches: int = 20000, replays: int = 2000) -> dict[str, Any]:
    """Host seconds of one eager kernel launch, and of one CUDA graph replay plus synchronize, on this machine.

    A launch-bound iteration pays the first per kernel (eager) and the second once (CUDA graphs): they are the
    host's share of an iteration, apart from the GPU's.
    """
    import torch

    x = torch.zeros(8, device=config.device)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(launches):
        x.add_(1.0)
    launch_host_s = (time.perf_counter() - t0) / launches
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        x.add_(1.0)
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        x.add_(1.0)
    times = []
    for _ in range(replays):
        t0 = time.perf_counter()
        graph.replay()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"launch_host_s": launch_host_s, "graph_replay_sync_s": statistics.median(times),
            "graph_replay_sync_p90_s": sorted(times)[int(0.9 * len(times))], "launches": launches, "replays": replays}


def measure_idle_w(meter: EnergyMeter, seconds: float = 3.0) -> float | None:
    """Average power (W, summed over the metered GPUs) with nothing running, over `seconds`."""
    meter.begin_window("idle")
    time.sleep(seconds)
    m = meter.end_window("idle")
    return None if m.energy_j is None else m.energy_j / m.time_s


def interleave(points: list[OperatorPoint]) -> list[OperatorPoint]:
    """The points taken one operator class at a time in turn, so a run cut short still covers every class."""
    by_op: dict[str, list[OperatorPoint]] = {}
    for point in points:
        by_op.setdefault(point.op, []).append(point)
    queues = list(by_op.values())
    order = []
    while any(queues):
        order += [queue.pop(0) for queue in queues if queue]
    return order


def run_operator_sweep(points: list[OperatorPoint], meter: EnergyMeter, config: OperatorSweepConfig,
                       on_row: Callable[[dict[str, Any]], None] | None = None,
                       deadline_s: float = float("inf")) -> list[dict[str, Any]]:
    """Measure the points in order until `deadline_s` (a perf_counter time) passes.

    A point that fails (out of memory, a kernel that does not compile for its shape) is logged and recorded with the
    reason, and the sweep goes on: one bad shape must not cost the rest of a device lease.
    """
    import torch

    rows = []
    for i, point in enumerate(points):
        if time.perf_counter() > deadline_s:
            logger.warning("deadline reached: %d of %d points measured", i, len(points))
            break
        try:
            row = measure_point(point, meter, config)
        except Exception as err:  # noqa: BLE001 -- recorded per point, see the docstring
            logger.warning("%s failed: %s", point.key, str(err).splitlines()[0][:200])
            row = {**point.to_row(), "failed": str(err).splitlines()[0][:200]}
        torch.cuda.empty_cache()
        rows.append(row)
        logger.info("[%d/%d] %s gpu %.3g us, %s J", i + 1, len(points), point.key,
                    1e6 * (row.get("gpu_time_s") or float("nan")), row.get("energy_j"))
        if on_row is not None:
            on_row(row)
    return rows


def sweep_to_folder(out_dir: str, model_names: tuple[str, ...], *, quick: bool = False, gpu_index: int = 0,
                    config: OperatorSweepConfig | None = None, budget_s: float = float("inf"),
                    resume_from: str | None = None) -> dict[str, Any]:
    """Measure the operator grid of `model_names` on one GPU into `out_dir`: raw rows, metadata, power timeline.

    Writes `operators.raw.parquet` (one row per point; rewritten every 20 points, so an interrupted run keeps what
    it measured), `operators.timeline.parquet` (power, temperature, SM clock every 100 ms) and
    `operators.meta.json` (GPU, driver, host CPU, software, date, method, idle power, launch costs, grid).
    `resume_from`: an earlier run's raw file; its measured points are skipped (its rows are not copied here).
    """
    import json
    from datetime import datetime, timezone
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tokenjoule.calibrate.measure.aligned import METHOD_SUMMARY
    from tokenjoule.calibrate.measure.machine import gpu_info, host_info, software_info
    from tokenjoule.calibrate.measure.meters import NVMLMeter, make_meter
    from tokenjoule.calibrate.measure.sampler import PowerSampler
    from tokenjoule.calibrate.sweep.operator_grid import OperatorGrid
    from tokenjoule.kernels.spec import ModelSpec
    from tokenjoule.traces.files import write_atomic

    config = config or OperatorSweepConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    grid = OperatorGrid(tuple(ModelSpec.from_name(n) for n in model_names), quick=quick)
    points = interleave(grid.points())
    if resume_from is not None:
        done = {row["point"] for row in pq.read_table(resume_from).to_pylist() if not row.get("failed")}
        points = [point for point in points if point.key not in done]
    meter = make_meter((gpu_index,))
    sampler = PowerSampler(meter.devices, interval_s=0.1, clock=meter.clock) if isinstance(meter, NVMLMeter) else None
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rows: list[dict[str, Any]] = []
    idle_w = idle_after_w = launch = None

    def save_rows(row: dict[str, Any]) -> None:
        rows.append(row)
        if len(rows) % 20 == 0:
            table = pa.Table.from_pylist(rows)
            write_atomic(out / "operators.raw.parquet", lambda tmp: pq.write_table(table, tmp))

    t0 = time.perf_counter()
    try:
        if sampler is not None:
            sampler.start()
        idle_w = measure_idle_w(meter)
        launch = measure_launch_costs(config)
        run_operator_sweep(points, meter, config, on_row=save_rows, deadline_s=t0 + budget_s)
        idle_after_w = measure_idle_w(meter)
    finally:
        if rows:
            table = pa.Table.from_pylist(rows)
            write_atomic(out / "operators.raw.parquet", lambda tmp: pq.write_table(table, tmp))
        if sampler is not None:
            samples = [s.to_row() for s in sampler.stop()]
            if samples:
                table = pa.Table.from_pylist(samples)
                write_atomic(out / "operators.timeline.parquet", lambda tmp: pq.write_table(table, tmp))
        gpu = gpu_info(meter)
        meter.close()
    meta = {"kind": "tokenjoule-operator-sweep", "started": started, "wall_s": time.perf_counter() - t0,
            "gpu": gpu, "host": host_info(), "software": software_info(),
            "method": {"time": "CUDA events around CUDA-graph replays of `reps` calls (eager where capture fails), "
                               "median of timing_repeats, per call", "energy": METHOD_SUMMARY,
                       "l2": f"GEMMs and decode attention cycle through `copies` copies of their inputs, together "
                             f"at least {ROTATE_BYTES // 2**20} MiB (at most {MAX_COPIES} copies)",
                       "config": {k: getattr(config, k) for k in config.__slots__}},
            "idle_power_w": idle_w, "idle_power_after_w": idle_after_w, "launch": launch,
            "models": list(model_names), "quick": quick, "points": len(points), "measured": len(rows),
            "failed": [r["point"] for r in rows if r.get("failed")]}
    write_atomic(out / "operators.meta.json", lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1)))
    return meta
