"""Tensor parallelism on CPU: shard layout in one process, then 2 gloo processes against one process's logits."""

from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402

from tokenjoule.kernels.cpu_spawn import spawn_cpu  # noqa: E402
from tokenjoule.kernels.iteration import TPIterationRunner, decode_shape, encode_shape  # noqa: E402
from tokenjoule.kernels.model import Transformer  # noqa: E402
from tokenjoule.kernels.shape import IterationShape  # noqa: E402
from tokenjoule.kernels.tp import MULTICAST_OFF_ENV, TPGroup, multicast_off_env, split_spec  # noqa: E402
from tokenjoule.kernels.tp_device import run_check  # noqa: E402


def test_split_spec_divides_heads_and_width(tiny_spec):
    local = split_spec(tiny_spec, 2)
    assert (local.n_heads, local.n_kv_heads, local.intermediate_size) == (2, 1, 64)
    assert local.kv_bytes_per_token * 2 == tiny_spec.kv_bytes_per_token
    with pytest.raises(ValueError, match="n_kv_heads=2"):
        split_spec(tiny_spec, 4)


@pytest.mark.parametrize("tie", [False, True])
def test_shards_reassemble_to_the_single_process_weights(tiny_spec, tie):
    """Rank r holds q/k/v heads and gate/up columns r of each segment; concatenated, they are the full weights."""
    spec = dataclasses.replace(tiny_spec, qkv_bias=True, tie_embeddings=tie)
    full = Transformer(spec, seed=3).state_dict()
    ranks = [Transformer(spec, seed=3, tp=TPGroup(rank=r, world_size=2)).state_dict() for r in range(2)]
    s = spec
    for name in ("layers.1.wqkv.weight", "layers.1.wqkv.bias"):
        q, k, v = full[name].split([s.q_size, s.kv_size, s.kv_size])
        for r, sd in enumerate(ranks):
            lq, lk, lv = sd[name].split([s.q_size // 2, s.kv_size // 2, s.kv_size // 2])
            torch.testing.assert_close((lq, lk, lv), (q.chunk(2)[r], k.chunk(2)[r], v.chunk(2)[r]), rtol=0, atol=0)
    gate, up = full["layers.0.w_gate_up.weight"].chunk(2)
    for r, sd in enumerate(ranks):
        lg, lu = sd["layers.0.w_gate_up.weight"].chunk(2)
        assert torch.equal(lg, gate.chunk(2)[r]) and torch.equal(lu, up.chunk(2)[r])
    for name in ("layers.0.wo.weight", "layers.1.w_down.weight"):
        assert torch.equal(torch.cat([sd[name] for sd in ranks], dim=1), full[name])
    for name in ("embed.weight", "norm.weight", "layers.0.attn_norm.weight"):
        assert all(torch.equal(sd[name], full[name]) for sd in ranks)
    head = torch.cat([sd["lm_head.weight"] for sd in ranks]) if not tie else ranks[1]["lm_head.weight"]
    assert torch.equal(head, full["lm_head.weight"])  # vocab-parallel, or replicated when tied


def test_tp_kv_cache_holds_local_heads(tiny_spec):
    model = Transformer(tiny_spec, tp=TPGroup(rank=1, world_size=2))
    assert model.setup_kv_cache(8, 4).shape == (2, 2, 8, 4, 1, 16)


def test_shape_codec_round_trips():
    for shape in (IterationShape(prefill=((20, 0), (7, 33)), decode=(5, 64)), IterationShape(decode=(1,)),
                  IterationShape(prefill=((3, 0),))):
        assert decode_shape(encode_shape(shape)) == shape


def test_only_rank0_drives_and_only_others_serve():
    driver = TPIterationRunner.__new__(TPIterationRunner)
    driver.tp, driver._closed = TPGroup(rank=0, world_size=2), False
    with pytest.raises(RuntimeError, match="rank 0 drives"):
        driver.serve()
    worker = TPIterationRunner.__new__(TPIterationRunner)
    worker.tp, worker._closed = TPGroup(rank=1, world_size=2), False
    with pytest.raises(RuntimeError, match="serve"):
        worker.step()
    with pytest.raises(ValueError, match="rank=2"):
        TPGroup(rank=2, world_size=2)


def test_multicast_is_forced_off():
    env = {"NCCL_NVLS_ENABLE": "1"}
    multicast_off_env(env)
    assert env == MULTICAST_OFF_ENV == {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                                        "NVSHMEM_DISABLE_NVLS": "1"}


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tiny_qwen_spec):
    """TP=2 over gloo: logits of prefill, chunked prefill + decode, and decode equal one process's (float32)."""
    out = spawn_cpu(run_check, 2, (tiny_qwen_spec, ["eager"], (0, 1), True), timeout_s=120.0)
    check = out["eager"]
    for phase in ("prefill", "mixed", "decode"):
        assert check[phase]["rows"] >= 1
        assert check[phase]["max_abs_diff"] <= 1e-5 * max(1.0, check[phase]["ref_max_abs"])
        assert check[phase]["top1_agreement"] == 1.0
    assert check["passed"] and check["tp"] == 2
    assert check["block_weight_fraction"] == pytest.approx(0.5, abs=0.01)  # each rank holds half the block weights
    assert out["engine_tokens_equal"] and len(out["engine_tokens"]) == 2  # Engine on both ranks, in step
    # rank 0 drove 5 steps (prepare's runs included, the refused shape not), rank 1 ran the same 5, then returned
    assert out["protocol"] == {"steps": [5, 5], "kv_capacity_tokens": [16368, 16368], "refused": True}


class _SimulatedCost:
    """Wraps rank 0's real TP runner: every step really runs on both ranks, and advances a simulated clock."""

    def __init__(self, inner, timeline) -> None:
        self.inner, self.timeline, self.steps = inner, timeline, 0
        self.kv_capacity_tokens = inner.kv_capacity_tokens
        self._tokens = 0

    def prepare(self, shape) -> None:
        self._tokens = shape.new_tokens
        self.inner.prepare(shape)
        self.steps += 1

    def step(self) -> None:
        self.inner.step()
        self.steps += 1
        self.timeline.run(0.008 + 1e-5 * self._tokens, 300.0)  # simulated seconds

    def release(self) -> None:
        self.inner.release()


def _calibrate_at_tp(tp, spec, out_dir):
    from tokenjoule.calibrate.measure.fake import FakeMeter, FakeTimeline
    from tokenjoule.calibrate.pipeline import CalibrationConfig, calibrate
    from tokenjoule.calibrate.sweep.grid import GridConfig
    from tokenjoule.kernels.iteration import build_runner

    runner = build_runner(spec, device="cpu", max_num_seqs=16, max_num_batched_tokens=1024, tp=tp)
    if not tp.is_driver:
        steps = runner.serve()
        dist.all_gather_object([None] * tp.world_size, steps, group=tp.control_group)
        return None
    timeline = FakeTimeline(idle_power_w=60.0)
    wrapped = _SimulatedCost(runner, timeline)
    grid = GridConfig(prefill_batches=(1, 4), prefill_lengths_tokens=(16, 64), prefill_chunks=(),
                      decode_batches=(1, 16), decode_contexts_tokens=(32, 128), mixed=False, target_s=0.02,
                      warmup_steps=1, idle_s=0.05, settle_s=0.0)
    config = CalibrationConfig(mode="eager", gpu_indices=(0, 1), grid=grid, device="cpu", max_num_seqs=16,
                               max_num_batched_tokens=1024)
    meter = FakeMeter(timeline, (0, 1), update_period_s=0.0)
    try:
        profile = calibrate(spec, config, f"{out_dir}/tp2.json", runner=wrapped, meter=meter, wait=timeline.idle,
                            progress=False)
    finally:
        runner.close()
    steps = [None] * tp.world_size
    dist.all_gather_object(steps, wrapped.steps, group=tp.control_group)
    return {"tp": profile.tp, "idle_power_w": profile.idle_power_w, "steps": steps,
            "points": profile.fit_errors["latency"]["n_points"]}


@pytest.mark.slow
def test_calibration_drives_both_ranks(tiny_spec, tmp_path):
    """calibrate() on rank 0 with a TP runner: rank 1 runs every step; energy is summed over both GPUs."""
    import json

    from tokenjoule.kernels.cpu_spawn import spawn_cpu as spawn

    out = spawn(_calibrate_at_tp, 2, (tiny_spec, str(tmp_path)), timeout_s=120.0)
    assert out["tp"] == 2 and out["points"] >= 4
    assert out["idle_power_w"] == pytest.approx(2 * 60.0)  # two GPUs' idle power, summed
    assert out["steps"][0] == out["steps"][1] > out["points"]  # every step of rank 0 ran on rank 1 too
    assert json.loads((tmp_path / "tp2.json").read_text())["tp"] == 2


@pytest.mark.gpu
def test_tp_logits_on_two_gpus(tmp_path):
    """The device entry under torchrun on 2 GPUs (NCCL): eager and CUDA-graph TP logits match one GPU's."""
    import json
    import os
    import subprocess
    import sys

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    env = {**os.environ, **MULTICAST_OFF_ENV}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
                    "tokenjoule.calibrate.tp_run", "check", "--out", str(tmp_path)], env=env, check=True, timeout=900)
    out = json.loads((tmp_path / "check_tp2.json").read_text())
    assert out["eager"]["passed"] and out["cudagraph"]["passed"]
    assert out["protocol"]["steps"] == [5, 5] and out["protocol"]["refused"]
