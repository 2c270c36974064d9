"""The GPU calibration grid: its physics agrees with ModelSpec, each shape appears once, builders run on a CPU."""

from __future__ import annotations

import dataclasses

import pytest

from tokenjoule.calibrate.sweep.operator_grid import (
    OperatorGrid,
    OperatorPoint,
    gemm_point,
    model_gemms,
    prefill_attn_point,
)
from tokenjoule.kernels.spec import ModelSpec

DENSE = ("llama-3.2-1b", "llama-3.1-8b", "qwen2.5-7b")


@pytest.mark.parametrize("name", DENSE)
def test_gemm_flops_of_one_token_are_the_specs_matmul_flops(name):
    spec = ModelSpec.from_name(name)
    gemms = model_gemms(spec)
    per_layer = sum(gemm_point(1, n, k).flops for key, (n, k) in gemms.items() if key != "lm_head")
    head = gemm_point(1, *gemms["lm_head"]).flops
    bias = 0 if not spec.qkv_bias else spec.q_size + 2 * spec.kv_size
    norms = 2 * spec.hidden_size
    # ModelSpec counts 2 FLOPs per weight (biases and norm weights included); the GEMMs count the matrices only.
    assert spec.n_layers * per_layer + head == pytest.approx(
        2.0 * (spec.matmul_params_per_token - spec.n_layers * (bias + norms)))


def test_each_shape_once_with_every_model_that_has_it():
    specs = tuple(ModelSpec.from_name(n) for n in ("llama-3.1-8b", "mistral-7b"))
    points = OperatorGrid(specs).points()
    assert len({(p.op, p.shape) for p in points}) == len(points)
    shared = [p for p in points if p.op == "decode_attn"]
    assert shared and all(p.models == ("llama-3.1-8b", "mistral-7b") for p in shared)  # same head layout
    heads = {p.models for p in points if p.op == "gemm" and p.params["n"] in (128256, 32768)}
    assert heads == {("llama-3.1-8b",), ("mistral-7b",)}  # their vocabularies differ


def test_quick_grid_is_a_subset():
    specs = (ModelSpec.from_name("llama-3.2-1b"),)
    full, quick = OperatorGrid(specs).points(), OperatorGrid(specs, quick=True).points()
    assert 0 < len(quick) < len(full)
    assert {p.key for p in quick} <= {p.key for p in full}


def test_prefill_pairs_count_causal_attention():
    point = prefill_attn_point(1, 4, 0, n_heads=1, n_kv_heads=1, head_dim=1)
    assert point.flops == 4.0 * (1 + 2 + 3 + 4)  # 10 (query, key) pairs
    chunked = prefill_attn_point(2, 4, 6, n_heads=1, n_kv_heads=1, head_dim=1)
    assert chunked.flops == 4.0 * 2 * (4 * 6 + 10)


def test_moe_points_price_top_k_experts_and_the_experts_touched():
    spec = ModelSpec.from_name("olmoe-1b-7b")
    points = [p for p in OperatorGrid((spec,)).points() if p.op == "moe"]
    assert [p.params["tokens"] for p in points] == sorted(p.params["tokens"] for p in points)
    one, many = points[0], points[-1]
    expert = 3 * spec.hidden_size * spec.moe_intermediate_size
    # one token reads its k experts' weights; a large batch reads (nearly) all E of them
    assert one.bytes_moved == pytest.approx(2 * (spec.n_experts_per_token * expert + spec.hidden_size * spec.n_experts
                                                 + spec.n_experts_per_token * (2 * spec.hidden_size
                                                                               + 3 * spec.moe_intermediate_size)))
    assert many.bytes_moved > 0.99 * 2 * spec.n_experts * expert
    assert one.flops == pytest.approx(6.0 * spec.n_experts_per_token * spec.hidden_size * spec.moe_intermediate_size
                                      + 2.0 * spec.hidden_size * spec.n_experts)
    assert set(model_gemms(spec)) == {"qkv", "o", "lm_head"}  # experts are not dense GEMMs


@pytest.mark.slow
def test_every_builder_runs_on_a_cpu():
    pytest.importorskip("torch")
    from tokenjoule.calibrate.sweep.operators import build_call

    dense = dataclasses.replace(ModelSpec.from_name("llama-3.2-1b"), hidden_size=64, n_heads=4, n_kv_heads=2,
                                head_dim=16, intermediate_size=96, vocab_size=128)
    moe = dataclasses.replace(ModelSpec.from_name("qwen1.5-moe-a2.7b"), hidden_size=64, n_heads=4, n_kv_heads=4,
                              head_dim=16, moe_intermediate_size=32, shared_expert_intermediate_size=48,
                              vocab_size=128)
    small = ("m", "tokens", "ctx", "q", "seqs")
    for point in OperatorGrid((dense, moe), quick=True).points():
        point = dataclasses.replace(point, shape=tuple((n, min(v, 32) if n in small else v) for n, v in point.shape))
        build_call(point, "cpu", 0)()


def test_streaming_operators_cycle_through_more_than_the_l2_cache():
    torch = pytest.importorskip("torch")
    from tokenjoule.calibrate.sweep.operators import ROTATE_BYTES, build_call, copies_for

    assert copies_for(8 * 2**20) * 8 * 2**20 >= ROTATE_BYTES  # a 1B model's decode GEMM: many copies
    assert copies_for(10 * ROTATE_BYTES) == 1  # a GEMM larger than L2 on its own: one
    point = OperatorPoint("gemm", (("m", 1), ("n", 64), ("k", 64)), flops=2 * 64 * 64, bytes_moved=2 * 65 * 64)
    call = build_call(point, "cpu", 0)
    outputs = [call() for _ in range(call.copies + 1)]
    assert call.copies == copies_for(2 * 65 * 64) > 1
    assert not torch.equal(outputs[0], outputs[1])  # each call reads other weights
    assert torch.equal(outputs[0], outputs[-1])  # and the cycle comes round
