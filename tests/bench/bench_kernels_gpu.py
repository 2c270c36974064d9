"""Engine benchmarks on one GPU: copy bandwidth, decode-attention backends, Llama-3.1-8B decode/prefill, HF energy.

Run on the GPU machine from the repo root:

    PYTHONUNBUFFERED=1 python3 tests/bench/bench_kernels_gpu.py [--out results.json] [--quick]

Prints each figure as it is measured and a summary table last; writes all figures and provenance as JSON to
`--out` (default `$OUT/bench_kernels_gpu.json` when $OUT is set).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from tokenjoule.kernels import decode_attention as dec_attn
from tokenjoule.kernels.decode_attention import paged_decode_attention
from tokenjoule.kernels.engine import Engine
from tokenjoule.kernels.hf_adapter import HFAdapter
from tokenjoule.kernels.iteration import TokenjouleIterationRunner
from tokenjoule.kernels.runner import RunnerConfig
from tokenjoule.kernels.shape import IterationShape
from tokenjoule.kernels.spec import ModelSpec

RESULTS: dict = {}


def say(key: str, value, note: str = "") -> None:
    """Record one figure and print it at once."""
    RESULTS[key] = value
    shown = f"{value:.4g}" if isinstance(value, float) else value
    print(f"{key:<48} {shown} {note}", flush=True)


def provenance() -> dict:
    """GPU, driver, library versions, host CPU, date."""
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "host_cpu": platform.processor()}
    try:
        with open("/proc/cpuinfo") as f:
            info["host_cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    for mod in ("triton", "transformers"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    try:
        import pynvml

        pynvml.nvmlInit()
        info["driver"] = pynvml.nvmlSystemGetDriverVersion()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        info["power_limit_w"] = pynvml.nvmlDeviceGetPowerManagementLimit(handle) / 1000.0
        info["sm_clock_max_mhz"] = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM)
    except Exception as err:  # noqa: BLE001 - provenance is best effort
        info["driver"] = f"unknown ({err})"
    return info


def cuda_time_ms(fn, iters: int = 30, warmup: int = 5) -> float:
    """Median milliseconds of `fn()` by CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def graph_time_ms(fn, iters: int = 30) -> float:
    """Median milliseconds of one replay of a CUDA graph that captured `fn()` (no Python launch overhead)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return cuda_time_ms(graph.replay, iters=iters)


def host_time_s(fn, iters: int, warmup: int = 3) -> tuple[float, float]:
    """Median and (max - min) seconds of `fn()` by the host clock (fn synchronizes itself)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), max(times) - min(times)


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus written (2 GiB buffers, random data)."""
    n = 2 << 30
    src = torch.randint(0, 255, (n,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = cuda_time_ms(lambda: dst.copy_(src), iters=20)
    return 2 * n / (ms / 1e3)


def attention_backends(bw: float) -> None:
    """Paged Triton decode kernel vs dense SDPA / FlexAttention on contiguous K/V (Llama-3.1-8B head shape)."""
    n_heads, n_kv, dim, page = 32, 8, 128, 16
    for batch, ctx in ((64, 1024), (1, 4096), (256, 2048)):
        gen = torch.Generator(device="cuda").manual_seed(batch)
        nb = batch * ctx // page + 1
        k_cache = torch.randn(nb, page, n_kv, dim, device="cuda", dtype=torch.bfloat16, generator=gen)
        v_cache = torch.randn_like(k_cache)
        tables = (torch.randperm(nb - 1, device="cuda", generator=gen)[: nb - 1] + 1).int().view(batch, -1)
        lens = torch.full((batch,), ctx, dtype=torch.int32, device="cuda")
        q = torch.randn(batch, n_heads, dim, device="cuda", dtype=torch.bfloat16, generator=gen)
        kv_bytes = 2 * batch * ctx * n_kv * dim * 2
        tag = f"b{batch}_ctx{ctx}"
        say(f"attn_{tag}_kv_floor_us", kv_bytes / bw * 1e6)
        t_tri = cuda_time_ms(lambda: paged_decode_attention(q, k_cache, v_cache, tables, lens))  # noqa: B023
        say(f"attn_{tag}_triton_paged_eager_us", t_tri * 1e3)
        default_block_n = dec_attn.BLOCK_N
        for block_n in (32, 64):
            dec_attn.BLOCK_N = block_n
            t_tri = graph_time_ms(lambda: paged_decode_attention(q, k_cache, v_cache, tables, lens))  # noqa: B023
            say(f"attn_{tag}_triton_paged_graph_block{block_n}_us", t_tri * 1e3)
        dec_attn.BLOCK_N = default_block_n
        k_dense = torch.randn(batch, n_kv, ctx, dim, device="cuda", dtype=torch.bfloat16, generator=gen)
        v_dense = torch.randn_like(k_dense)
        q4 = q[:, :, None, :]  # (B, n_heads, 1, D)
        t_sdpa = cuda_time_ms(lambda: torch.nn.functional.scaled_dot_product_attention(  # noqa: B023
            q4, k_dense, v_dense, enable_gqa=True))  # noqa: B023
        say(f"attn_{tag}_sdpa_dense_eager_us", t_sdpa * 1e3)
        t_sdpa = graph_time_ms(lambda: torch.nn.functional.scaled_dot_product_attention(  # noqa: B023
            q4, k_dense, v_dense, enable_gqa=True))  # noqa: B023
        say(f"attn_{tag}_sdpa_dense_graph_us", t_sdpa * 1e3)
        if batch != 64:  # FlexAttention compiles per shape: one shape is enough for the comparison
            continue
        try:
            from torch.nn.attention.flex_attention import flex_attention

            flex = torch.compile(flex_attention, dynamic=False)
            t_flex = cuda_time_ms(lambda: flex(q4, k_dense, v_dense, enable_gqa=True))  # noqa: B023
            say(f"attn_{tag}_flex_dense_eager_us", t_flex * 1e3)
            t_flex = graph_time_ms(lambda: flex(q4, k_dense, v_dense, enable_gqa=True))  # noqa: B023
            say(f"attn_{tag}_flex_dense_graph_us", t_flex * 1e3)
        except Exception as err:  # noqa: BLE001 - report, go on
            say(f"attn_{tag}_flex_dense_us", f"failed: {type(err).__name__}: {str(err)[:120]}")
        k_cache = v_cache = k_dense = v_dense = None
    torch.cuda.empty_cache()


def measure_energy(name: str, fn):
    """Run `fn` inside an energy window; returns (seconds, joules or None)."""
    try:
        from tokenjoule.calibrate.measure.meters import make_meter

        meter = make_meter([0])
        meter.begin_window(name)
        fn()
        m = meter.end_window(name)
        return m.time_s, m.energy_j
    except ImportError:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        torch.cuda.synchronize()
        e0, t0 = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle), time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t0, (pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) - e0) / 1e3


def engine_benches(spec: ModelSpec, bw: float, quick: bool) -> None:
    """Decode and prefill through the tokenjoule engine (IterationRunner), plus its generate energy."""
    config = RunnerConfig(mode="cudagraph", device="cuda", max_num_seqs=64, max_num_batched_tokens=16384)
    t0 = time.perf_counter()
    engine = Engine(spec, config)
    say("engine_build_s", time.perf_counter() - t0)
    say("kv_capacity_tokens", engine.runner.kv_capacity_tokens)
    it = TokenjouleIterationRunner(spec, config, runner=engine.runner)
    floor_s = spec.weight_bytes / bw
    say("decode_b1_floor_ms", floor_s * 1e3, "(weight bytes / copy bandwidth)")
    n = 20 if quick else 100
    for mode in ("cudagraph", "eager"):
        engine.runner.config = dataclasses.replace(config, mode=mode)
        it.prepare(IterationShape(decode=(512,)))
        med, spread = host_time_s(it.step, n)
        say(f"decode_b1_ctx512_{mode}_ms", med * 1e3, f"spread {spread * 1e3:.3f} ms; x{med / floor_s:.2f} of floor")
        it.release()
    engine.runner.config = config
    for batch, ctx in ((64, 1024), (16, 1024)):
        it.prepare(IterationShape(decode=(ctx,) * batch))
        med, _ = host_time_s(it.step, n)
        say(f"decode_b{batch}_ctx{ctx}_cudagraph_ms", med * 1e3, f"{batch / med:.0f} tokens/s")
        say(f"decode_b{batch}_ctx{ctx}_tokens_per_s", batch / med)
        it.release()
    for label, shape in (("1x8192", IterationShape(prefill=((8192, 0),))),
                         ("8x1024", IterationShape(prefill=((1024, 0),) * 8)),
                         ("mixed_4x512+32dec", IterationShape(prefill=((512, 0),) * 4, decode=(1024,) * 32))):
        it.prepare(shape)
        med, _ = host_time_s(it.step, 5 if quick else 20)
        say(f"prefill_{label}_ms", med * 1e3, f"{shape.new_tokens / med:.0f} tokens/s")
        say(f"prefill_{label}_tokens_per_s", shape.new_tokens / med)
        it.release()
    engine.generate_static(64, 4, batch=4)  # warm-up
    secs, joules = measure_energy("tj_generate", lambda: engine.generate_static(1024, 128, batch=4))
    say("tokenjoule_generate_b4_1024in_128out_s", secs)
    say("tokenjoule_generate_b4_1024in_128out_j", joules)
    if joules is not None:
        say("tokenjoule_generate_j_per_output_token", joules / (4 * 128))
    it = engine = None
    gc.collect()
    torch.cuda.empty_cache()


def hf_bench(spec: ModelSpec) -> None:
    """The transformers baseline: generate() energy per output token at batch 4, 1024 in / 128 out."""
    t0 = time.perf_counter()
    adapter = HFAdapter(spec, "cuda")
    say("hf_build_s", time.perf_counter() - t0)
    adapter.generate(4, 64, 8)  # warm-up
    torch.cuda.synchronize()
    secs, joules = measure_energy("hf_generate", lambda: adapter.generate(4, 1024, 128))
    say("hf_generate_b4_1024in_128out_s", secs, f"{4 * 128 / secs:.0f} output tokens/s")
    say("hf_generate_b4_1024in_128out_j", joules)
    if joules is not None:
        say("hf_generate_j_per_output_token", joules / (4 * 128))
    adapter = None
    gc.collect()
    torch.cuda.empty_cache()


def main() -> int:
    """Run every bench, print a summary, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=None)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--skip", default="", help="comma list of: attn,engine,hf")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 1
    skip = set(filter(None, args.skip.split(",")))
    RESULTS["provenance"] = provenance()
    print(json.dumps(RESULTS["provenance"]), flush=True)
    spec = ModelSpec.from_name("llama-3.1-8b")
    say("llama_3_1_8b_weight_bytes", spec.weight_bytes)
    bw = copy_bandwidth()
    say("copy_bandwidth_gb_s", bw / 1e9, "(read + write)")
    for name, fn in (("attn", lambda: attention_backends(bw)), ("engine", lambda: engine_benches(spec, bw, args.quick)),
                     ("hf", lambda: hf_bench(spec))):
        if name in skip:
            continue
        try:
            fn()
        except Exception as err:  # noqa: BLE001 - keep the other figures
            say(f"{name}_error", f"{type(err).__name__}: {err}"[:400])
            import traceback

            traceback.print_exc()
    out = args.out or (str(Path(os.environ["OUT"]) / "bench_kernels_gpu.json") if os.environ.get("OUT") else None)
    if out:
        Path(out).write_text(json.dumps(RESULTS, indent=2, default=str))
        print(f"wrote {out}")
    print("\n==== summary ====")
    for key, value in RESULTS.items():
        if key != "provenance":
            print(f"{key:<48} {value:.4g}" if isinstance(value, float) else f"{key:<48} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
