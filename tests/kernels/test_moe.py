"""MoE layers: grouped GEMMs against the per-expert loop and a plain-torch reference; a tiny MoE model through the
runner and the engine against a dense float64 reference."""

from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip("torch")
from test_model import new_seq, rel_err, run_chunk  # noqa: E402

from tokenjoule.kernels.engine import Engine  # noqa: E402
from tokenjoule.kernels.model import MoE, Transformer, grouped_mm_works, moe_reference, route  # noqa: E402
from tokenjoule.kernels.runner import ModelRunner, RunnerConfig  # noqa: E402
from tokenjoule.kernels.scheduler import ScheduledBatch  # noqa: E402
from tokenjoule.kernels.tp import TPGroup  # noqa: E402

needs_grouped = pytest.mark.skipif(not grouped_mm_works("cpu", torch.float32), reason="no torch._grouped_mm on CPU")


def make_moe(spec, backend, seed=0):
    model = Transformer(spec, seed=seed, moe_backend=backend)
    return model.layers[0].moe


@needs_grouped
@pytest.mark.parametrize("n_tokens", [1, 3, 37, 128])
@pytest.mark.parametrize("renormalize", [False, True])
def test_grouped_equals_loop_equals_reference(tiny_moe_spec, n_tokens, renormalize):
    spec = dataclasses.replace(tiny_moe_spec, norm_topk_prob=renormalize)
    grouped, loop = make_moe(spec, "grouped"), make_moe(spec, "loop")
    x = torch.randn(n_tokens, spec.hidden_size, generator=torch.Generator().manual_seed(n_tokens))
    want = moe_reference(grouped, x)
    torch.testing.assert_close(grouped(x), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loop(x), want, rtol=1e-5, atol=1e-6)


@needs_grouped
def test_grouped_handles_idle_experts_and_bf16(tiny_moe_spec):
    moe = make_moe(tiny_moe_spec, "grouped")
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[2] = 1.0  # with positive inputs every token picks experts 2 and 0
        moe.router.weight[0] = 0.5
    x = torch.rand(20, tiny_moe_spec.hidden_size) + 0.1
    _, experts = route(moe.router(x), 2, False)
    assert set(experts.flatten().tolist()) == {0, 2}  # experts 1 and 3 get no rows: empty groups
    torch.testing.assert_close(moe(x), moe_reference(moe, x), rtol=1e-5, atol=1e-6)
    moe_bf16 = moe.to(torch.bfloat16)
    xb = x.bfloat16()
    torch.testing.assert_close(moe_bf16(xb), moe_reference(moe_bf16, xb), rtol=2e-2, atol=2e-3)


def test_routing_weights(tiny_moe_spec):
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    weights, experts = route(logits, 2, False)
    assert experts.tolist() == [[3, 2]]
    torch.testing.assert_close(weights, logits.softmax(-1)[:, [3, 2]])
    weights, _ = route(logits, 2, True)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1))


def test_moe_model_builds_the_spec_parameters(tiny_moe_spec):
    model = Transformer(tiny_moe_spec)
    assert sum(p.numel() for p in model.parameters()) == tiny_moe_spec.param_count
    assert all(layer.moe is not None and not hasattr(layer, "w_gate_up") for layer in model.layers)
    mixed = dataclasses.replace(tiny_moe_spec, dense_layers=(0,))
    model = Transformer(mixed)
    assert model.layers[0].moe is None and model.layers[1].moe is not None
    assert sum(p.numel() for p in model.parameters()) == mixed.param_count


@pytest.mark.parametrize("backend", ["grouped", "loop"])
def test_moe_prefill_and_decode_match_reference(tiny_moe_spec, reference, backend):
    if backend == "grouped" and not grouped_mm_works("cpu", torch.float32):
        pytest.skip("no torch._grouped_mm on CPU")
    # The reference routes by the router alone: computed routing (balanced offsets follow iteration rows).
    runner = ModelRunner(tiny_moe_spec, RunnerConfig(device="cpu", num_kv_blocks=64, decode_backend="torch",
                                                     max_model_len=256, moe_backend=backend, moe_routing="computed"))
    tokens = torch.randint(0, 128, (45,), generator=torch.Generator().manual_seed(2)).tolist()
    seq = new_seq(runner, 7, tokens[:40])
    run_chunk(runner, ScheduledBatch(prefill=((seq, 17),)))
    got = run_chunk(runner, ScheduledBatch(prefill=((seq, 23),)))  # a chunk attending to the first one
    assert rel_err(got, reference(runner.model, tokens[:40])[-1:]) < 1e-4
    for t in range(40, 45):
        seq.token_ids.append(tokens[t])
        got = run_chunk(runner, ScheduledBatch(decode=(seq,)))
        assert rel_err(got, reference(runner.model, tokens[: t + 1])[-1:]) < 1e-4


def test_moe_engine_serves_requests(tiny_moe_spec):
    config = RunnerConfig(device="cpu", num_kv_blocks=64, max_num_batched_tokens=64, max_num_seqs=4,
                          decode_backend="torch", max_model_len=512)
    engine = Engine(tiny_moe_spec, config, seed=1)
    for rid, (prompt, out) in enumerate([(30, 3), (70, 5), (5, 1), (12, 6)]):
        engine.add_request(rid, prompt, out)
    done = engine.run_until_done()
    assert {r.request_id: r.output_tokens for r in done} == {0: 3, 1: 5, 2: 1, 3: 6}


def test_moe_refuses_tp_and_bad_backends(tiny_moe_spec):
    with pytest.raises(ValueError, match="tensor parallelism"):
        Transformer(tiny_moe_spec, tp=TPGroup(rank=0, world_size=2))  # refused before any collective runs
    with pytest.raises(ValueError, match="moe_backend"):
        RunnerConfig(device="cpu", moe_backend="fast")
    with pytest.raises(ValueError, match="moe_backend"):
        MoE(tiny_moe_spec, "cpu", torch.float32, backend="fast")
    with pytest.raises(ValueError, match="moe_routing"):
        RunnerConfig(device="cpu", moe_routing="random")
    with pytest.raises(ValueError, match="moe_routing"):
        MoE(tiny_moe_spec, "cpu", torch.float32, routing="random")


def _distinct_experts(moe, x):
    _, experts = route(moe.router_logits(x), moe.spec.n_experts_per_token, moe.spec.norm_topk_prob)
    return len(set(experts.flatten().tolist()))


def test_balanced_routing_spreads_rows_that_computed_routing_sends_to_the_same_experts(tiny_moe_spec):
    """Identical rows (the collapse random weights show in a prefill) touch k experts when computed, about the
    uniform expectation when balanced; the forward still matches the reference, and the weights do not change."""
    spec = dataclasses.replace(tiny_moe_spec, n_experts=16, n_experts_per_token=2)
    balanced = Transformer(spec, seed=3, max_rows=64)
    computed = Transformer(spec, seed=3, moe_routing="computed", max_rows=64)
    x = torch.randn(1, spec.hidden_size, generator=torch.Generator().manual_seed(0)).expand(48, -1).contiguous()
    for b_layer, c_layer in zip(balanced.layers, computed.layers, strict=True):
        assert _distinct_experts(c_layer.moe, x) == 2
        assert _distinct_experts(b_layer.moe, x) >= 0.8 * spec.expected_experts_touched(48)  # 15.7 expected
        torch.testing.assert_close(b_layer.moe(x), moe_reference(b_layer.moe, x), rtol=1e-5, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(balanced.parameters(), computed.parameters(), strict=True))
    again = Transformer(spec, seed=3, max_rows=64)
    assert torch.equal(again.layers[0].moe.route_offsets, balanced.layers[0].moe.route_offsets)
    assert balanced.layers[0].moe.route_offsets.std() > 5 * balanced.layers[0].moe.router(x).std()
    with pytest.raises(ValueError, match="65 rows > the 64 rows"):
        balanced.layers[0].moe(torch.zeros(65, spec.hidden_size))
