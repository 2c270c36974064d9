"""Where a host-bound prefill's host time goes: the real Llama-3.2-1B against tiny models differing from it in one way.

Why: on the ninth lease the replayed Llama-3.2-1B's host-bound prefills took about 17.7 ms, while tiny models of the
engine with as many layers took 7-14 ms (`host_blocks_gpu.py`, on that machine and on another); read as a part per
iteration plus a part per layer, the lease's prefills asked for about 10 ms per iteration that the tiny models do not
have. This times prefill iterations of the real model (random bf16 weights) and of tiny 16-layer models that take one of
its traits each (head_dim 64, its 128k vocabulary, both), in three ways: the same shape stepped again and again, a new
prompt length at each iteration (`prepare` of a fresh length, which runs one step; a serving loop's chunks differ in
length from iteration to iteration), and the same length prepared again (the same work as the previous, without the new
shape). Rounds interleave the models, as the host's speed moves within minutes.

    python tests/bench/prefill_host_gpu.py --out "$OUT" [--rounds 4]
Writes `prefill_host.json` (rows and provenance) and prints medians per model and way. Its two runs of 2026-12-04 are
in validation/h200_2026-12-04_prefill_host/ with a README.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

from tokenjoule.kernels.iteration import build_runner
from tokenjoule.kernels.shape import IterationShape
from tokenjoule.kernels.spec import ModelSpec, load_spec

TOKENS = 512
STEPS = 10


def models(device: str) -> dict[str, ModelSpec]:
    """The real model and its tiny relatives (on the CPU, the tiny ones only: a smoke run)."""
    real = load_spec("llama-3.2-1b")
    tiny = ModelSpec(name="tiny-16l", n_layers=real.n_layers, hidden_size=256, n_heads=2, n_kv_heads=1, head_dim=128,
                     intermediate_size=512, vocab_size=1024)
    out = {"tiny": tiny,
           "tiny_hd64": dataclasses.replace(tiny, name="tiny-16l-hd64", head_dim=64, n_heads=4, n_kv_heads=1),
           "tiny_vocab": dataclasses.replace(tiny, name="tiny-16l-vocab", vocab_size=real.vocab_size,
                                             tie_embeddings=True)}
    out["tiny_hd64_vocab"] = dataclasses.replace(out["tiny_hd64"], name="tiny-16l-hd64-vocab",
                                                 vocab_size=real.vocab_size, tie_embeddings=True)
    if device == "cuda":
        out["llama-3.2-1b"] = real
    return out


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def _prefill(tokens: int) -> IterationShape:
    return IterationShape(prefill=((tokens, 0),))


def measure(device: str, rounds: int) -> list[dict]:
    """Rows: model, round, way ("same_shape", "new_length", "same_length"), median seconds of the visit."""
    specs = models(device)
    runners = {name: build_runner(spec, engine="tokenjoule", mode="eager", device=device,
                                  gpu_memory_utilization=0.1 * (i + 1), max_num_seqs=8, max_num_batched_tokens=2048)
               for i, (name, spec) in enumerate(specs.items())}
    rows, fresh = [], iter(range(TOKENS - 200, TOKENS + 200))
    try:
        for r in range(rounds):
            for name, runner in runners.items():
                runner.prepare(_prefill(TOKENS))
                ways = {"same_shape": [_timed(runner.step) for _ in range(STEPS)],
                        "new_length": [_timed(runner.prepare, _prefill(next(fresh))) for _ in range(STEPS)],
                        "same_length": [_timed(runner.prepare, _prefill(TOKENS)) for _ in range(STEPS)]}
                rows += [{"model": name, "round": r, "way": way, "time_s": statistics.median(times), "steps": STEPS}
                         for way, times in ways.items()]
    finally:
        for runner in runners.values():
            runner.release()
    return rows


def main() -> None:  # noqa: D103
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    rows = measure(args.device, args.rounds)
    for name in dict.fromkeys(r["model"] for r in rows):
        cells = {way: statistics.median(r["time_s"] for r in rows if r["model"] == name and r["way"] == way)
                 for way in ("same_shape", "new_length", "same_length")}
        print(f"{name:16s} " + "  ".join(f"{way} {t * 1e3:7.2f} ms" for way, t in cells.items()))
    if args.device == "cuda":
        from wait_power_gpu import write_result  # this folder (the script's own) is first on sys.path

        from tokenjoule.calibrate.measure.meters import make_meter

        meter = make_meter((0,))
        write_result(args.out / "prefill_host.json", meter, "tests/bench/prefill_host_gpu.py",
                     f"{TOKENS}-token prefills, {STEPS} per visit, perf_counter around step() or prepare()",
                     rows=rows)
        meter.close()


if __name__ == "__main__":
    main()
