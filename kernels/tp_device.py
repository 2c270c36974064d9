"""Tensor-parallel checks of the engine: TP logits against one process's, the Engine's tokens, the runner protocol.

`calibrate/tp_run.py` is the multi-process entry (torchrun, or `--cpu` gloo processes) that runs `run_check`, as
well as TP calibration and the TP request benchmark:

    torchrun --standalone --nproc-per-node 2 -m tokenjoule.calibrate.tp_run check --model llama-3.1-8b --out "$OUT"

`check` compares TP logits (prefill, chunked prefill mixed with decode, decode; eager and CUDA-graph) with one
process's logits of the same weights, on a few-layer copy of the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist

from tokenjoule.kernels.iteration import TPIterationRunner, build_runner
from tokenjoule.kernels.runner import ModelRunner, RunnerConfig
from tokenjoule.kernels.scheduler import ScheduledBatch
from tokenjoule.kernels.sequence import Sequence as Seq
from tokenjoule.kernels.sequence import SequenceStatus
from tokenjoule.kernels.shape import IterationShape
from tokenjoule.kernels.spec import ModelSpec
from tokenjoule.kernels.tp import TPGroup

TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 1e-2}  # max |diff| / max |reference logit|


# ---- (a) logits check ------------------------------------------------------------------------------------------------
def _scenario() -> list[tuple[str, Callable[[list[Seq]], ScheduledBatch]]]:
    """Three iterations over two sequences: prefill (one chunked), prefill-after-context mixed with decode, decode."""
    return [
        ("prefill", lambda s: ScheduledBatch(prefill=((s[0], 23), (s[1], 24)))),
        ("mixed", lambda s: ScheduledBatch(prefill=((s[1], 16),), decode=(s[0],))),
        ("decode", lambda s: ScheduledBatch(decode=(s[0], s[1]))),
    ]


def _commit(batch: ScheduledBatch, step: int, vocab: int) -> None:
    """Advance the sequences with fixed sampled tokens (same on every rank, whatever the logits)."""
    for i, (seq, n) in enumerate(batch.prefill):
        done = seq.num_computed_tokens + n == seq.num_tokens
        seq.commit(n, (7 * step + i) % vocab if done else None, 0.0)
    for i, seq in enumerate(batch.decode):
        seq.commit(1, (11 * step + i + 3) % vocab, 0.0)


def _compare(got: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    diff = (got.float() - ref.float()).abs().max().item()
    scale = ref.float().abs().max().item()
    agree = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
    return {"rows": int(ref.shape[0]), "max_abs_diff": diff, "ref_max_abs": scale,
            "rel_diff": diff / max(scale, 1e-12), "top1_agreement": agree}


def check_logits(tp: TPGroup, spec: ModelSpec, device: str, mode: str = "eager", seed: int = 0) -> dict[str, Any]:
    """Run the scenario on every rank's shard; rank 0 also runs it unsharded and compares logits.

    Args:
        tp: this rank's group (every rank calls this).
        spec: the model (use few layers: rank 0 holds a full copy too).
        device: this rank's torch device.
        mode: "eager" or "cudagraph" for the TP runner (the reference runs eager).
        seed: weight seed.

    Returns:
        On rank 0: per phase, rows compared, max |diff|, max |reference|, their ratio, top-1 agreement; plus
        `passed`, `tolerance`, and the fraction of the block weights each rank holds. On other ranks: {}.
    """
    config = RunnerConfig(mode=mode, device=device, max_num_seqs=4, max_num_batched_tokens=256, max_model_len=256,
                          num_kv_blocks=64, seed=seed)
    runner = ModelRunner(spec, config, tp)
    ref = ModelRunner(spec, dataclasses.replace(config, mode="eager"), None) if tp.is_driver else None
    prompt = [(5 * i + 1) % spec.vocab_size for i in range(40)]
    seqs = [Seq(seq_id=i, token_ids=prompt[:n], prompt_len=n, max_output_tokens=8, status=SequenceStatus.RUNNING)
            for i, n in enumerate((23, 40))]
    for r in (runner, ref) if ref is not None else (runner,):
        for seq in seqs:
            r.block_manager.allocate(seq.seq_id, seq.num_tokens + 8)
    result: dict[str, Any] = {}
    for step, (phase, make) in enumerate(_scenario()):
        batch = make(seqs)
        got = runner.execute(batch)
        if ref is not None:
            result[phase] = _compare(got, ref.execute(batch))
        _commit(batch, step, spec.vocab_size)
    if ref is None:
        return {}
    local = sum(p.numel() for p in runner.model.layers.parameters())
    full = sum(p.numel() for p in ref.model.layers.parameters())
    dtype = runner.model.dtype
    tol = TOLERANCE[dtype]
    phases = [result[p] for p, _ in _scenario()]
    # In float32 the argmax must agree too; in bf16 a near-tie may flip under a different summation order.
    passed = all(r["rel_diff"] <= tol and (dtype != torch.float32 or r["top1_agreement"] == 1.0) for r in phases)
    result.update(tp=tp.world_size, mode=mode, dtype=str(dtype).removeprefix("torch."), tolerance=tol,
                  block_weight_fraction=local / full, passed=passed)
    return result


def engine_tokens(tp: TPGroup | None, spec: ModelSpec, device: str, prompt_tokens: int = 20,
                  output_tokens: int = 6, batch: int = 2) -> list[list[int]]:
    """Greedy output tokens of `batch` requests served together by the Engine (every rank calls it under TP)."""
    from tokenjoule.kernels.engine import Engine

    config = RunnerConfig(mode="eager", device=device, max_num_seqs=4, max_num_batched_tokens=256, max_model_len=256,
                          num_kv_blocks=64)
    engine = Engine(spec, config, seed=1, tp=tp)
    seqs = [engine.make_sequence(i, prompt_tokens, output_tokens) for i in range(batch)]
    for seq in seqs:
        engine.scheduler.add(seq)
    engine.run_until_done()
    return [seq.token_ids[prompt_tokens:] for seq in seqs]


def drive_protocol(tp: TPGroup, spec: ModelSpec, device: str, mode: str = "eager") -> dict[str, Any]:
    """Rank 0 drives a TPIterationRunner through prepare/step/refusal/release/close; the others serve.

    Returns:
        {"steps": steps per rank (prepare's run counted), "refused": whether rank 0 got the oversize shape's
        ValueError, "kv_capacity_tokens": per rank}; every rank returns it.
    """
    runner = build_runner(spec, mode=mode, device=device, max_num_seqs=8, max_num_batched_tokens=128, tp=tp)
    if not isinstance(runner, TPIterationRunner):
        raise TypeError("build_runner with tp did not give a TPIterationRunner")
    refused = False
    if tp.is_driver:
        runner.prepare(IterationShape(prefill=((20, 0), (7, 33)), decode=(5, 64, 17)))
        runner.step()
        runner.step()
        try:
            runner.prepare(IterationShape(prefill=((129, 0),)))
        except ValueError:
            refused = True
        runner.prepare(IterationShape(decode=(40, 3)))
        runner.step()
        runner.close()
        steps = 5
    else:
        steps = runner.serve()
    gathered: list[Any] = [None] * tp.world_size
    dist.all_gather_object(gathered, (steps, runner.kv_capacity_tokens), group=tp.control_group)
    flags: list[Any] = [None] * tp.world_size
    dist.all_gather_object(flags, refused, group=tp.control_group)
    return {"steps": [g[0] for g in gathered], "kv_capacity_tokens": [g[1] for g in gathered], "refused": flags[0]}


def rank_device(tp: TPGroup | None, gpus: Sequence[int], cpu: bool) -> str:
    """The torch device of this rank: "cpu", or `cuda:<gpus[rank]>`."""
    if cpu:
        return "cpu"
    return f"cuda:{gpus[tp.rank if tp is not None else 0]}"


def run_check(tp: TPGroup, spec: ModelSpec, modes: Sequence[str], gpus: Sequence[int], cpu: bool) -> dict:
    """The `check` command on this rank: logits per mode, the Engine's tokens, the runner protocol."""
    device = rank_device(tp, gpus, cpu)
    out: dict[str, Any] = {m: check_logits(tp, spec, device, m) for m in modes}
    out["engine_tokens"] = engine_tokens(tp, spec, device)
    out["protocol"] = drive_protocol(tp, spec, device, modes[-1])
    if tp.is_driver:
        out["engine_tokens_equal"] = out["engine_tokens"] == engine_tokens(None, spec, device)
    return out
