"""GPU checks (skipped without CUDA): the Triton kernel in bf16, varlen prefill, CUDA graphs, compile, both engines."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from tokenjoule.kernels.iteration import build_runner  # noqa: E402
from tokenjoule.kernels.runner import ModelRunner, RunnerConfig  # noqa: E402
from tokenjoule.kernels.scheduler import ScheduledBatch  # noqa: E402
from tokenjoule.kernels.sequence import Sequence, SequenceStatus  # noqa: E402
from tokenjoule.kernels.shape import IterationShape  # noqa: E402

pytestmark = pytest.mark.gpu


def rel_err(a, b) -> float:
    return float((a.double().cpu() - b.double().cpu()).norm() / b.double().cpu().norm())


def test_triton_kernel_bf16_matches_reference_on_gpu():
    from tokenjoule.kernels.decode_attention import decode_attention_ref, paged_decode_attention

    gen = torch.Generator(device="cuda").manual_seed(0)
    batch, n_heads, n_kv, dim, bs, nb = 9, 32, 8, 128, 16, 2000
    lens = torch.randint(1, 3000, (batch,), device="cuda", generator=gen).int()
    lens[0] = 1
    q = torch.randn(batch, n_heads, dim, device="cuda", dtype=torch.bfloat16, generator=gen)
    k = torch.randn(nb, bs, n_kv, dim, device="cuda", dtype=torch.bfloat16, generator=gen)
    v = torch.randn(nb, bs, n_kv, dim, device="cuda", dtype=torch.bfloat16, generator=gen)
    tables = torch.randint(1, nb, (batch, 200), device="cuda", generator=gen).int()
    want = decode_attention_ref(q.float(), k.float(), v.float(), tables, lens)
    for splits in (None, 1, 5):
        out = paged_decode_attention(q, k, v, tables, lens, n_splits=splits)
        assert torch.isfinite(out).all()
        assert rel_err(out, want) < 1e-2


def gpu_runner(spec, mode="eager", **kw):
    return ModelRunner(spec, RunnerConfig(device="cuda", mode=mode, num_kv_blocks=256, max_num_seqs=16,
                                          max_model_len=1024, **kw))


def seq_in(runner, seq_id, tokens, computed=0):
    seq = Sequence(seq_id=seq_id, token_ids=list(tokens), prompt_len=len(tokens), max_output_tokens=4,
                   status=SequenceStatus.RUNNING, num_computed_tokens=computed)
    runner.block_manager.allocate(seq_id, len(tokens))
    return seq


def test_varlen_prefill_and_paged_decode_match_reference(tiny_spec, reference):
    runner = gpu_runner(tiny_spec)
    assert runner.model.dtype == torch.bfloat16
    gen = torch.Generator().manual_seed(3)
    toks = [torch.randint(0, 128, (n,), generator=gen).tolist() for n in (50, 70, 33)]
    a, b = seq_in(runner, 1, toks[0]), seq_in(runner, 2, toks[1])
    c = seq_in(runner, 3, toks[2])
    runner.execute(ScheduledBatch(prefill=((b, 40), (c, 32))))  # b: first 40 of 70; c: all but its last
    b.num_computed_tokens, c.num_computed_tokens = 40, 32
    c.prompt_len = 32  # c now decodes its 33rd token
    got = runner.execute(ScheduledBatch(prefill=((a, 50), (b, 30)), decode=(c,)))  # b's chunk sees its context
    for row, tokens in enumerate(toks):
        assert rel_err(got[row], reference(runner.model, tokens)[-1]) < 3e-2


@pytest.mark.parametrize("mode", ["cudagraph", "compile"])
def test_fast_modes_match_eager_decode(tiny_spec, mode):
    fast, eager = gpu_runner(tiny_spec, mode), gpu_runner(tiny_spec, "eager")
    for runner in (fast, eager):
        gen = torch.Generator().manual_seed(4)  # both runners see the same tokens
        seqs = [seq_in(runner, i, torch.randint(0, 128, (n,), generator=torch.Generator().manual_seed(i)).tolist())
                for i, n in enumerate((12, 100, 37))]
        runner.execute(ScheduledBatch(prefill=tuple((s, s.num_tokens) for s in seqs)))
        for s in seqs:
            s.num_computed_tokens = s.num_tokens
            s.token_ids.append(int(torch.randint(0, 128, (1,), generator=gen)))
            runner.block_manager.append(s.seq_id, 1)
        runner.logits = runner.execute(ScheduledBatch(decode=tuple(seqs)))
    assert rel_err(fast.logits, eager.logits) < 1e-2
    if mode == "cudagraph":
        assert list(fast._graphs) == [4]  # batch 3 replays the bucket of 4


@pytest.mark.parametrize("engine,mode", [("tokenjoule", "eager"), ("tokenjoule", "cudagraph"), ("hf", "eager")])
def test_iteration_contract_on_gpu(tiny_spec, engine, mode):
    if engine == "hf":
        pytest.importorskip("transformers")
    runner = build_runner(tiny_spec, engine=engine, mode=mode, gpu_memory_utilization=0.2, max_num_seqs=64)
    assert runner.kv_capacity_tokens > 100_000 and runner.dtype == "bfloat16"
    shapes = [IterationShape(prefill=((128, 0),) * 4), IterationShape(decode=(300,) * 8)]
    if engine == "tokenjoule":
        shapes.append(IterationShape(prefill=((64, 500),), decode=(5, 700, 33)))
    for shape in shapes:
        runner.prepare(shape)
        for _ in range(3):
            runner.step()
        runner.release()
