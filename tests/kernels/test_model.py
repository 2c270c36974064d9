"""The model against a dense float64 reference; chunked, mixed and decode iterations against running alone."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from tokenjoule.kernels.model import Transformer  # noqa: E402
from tokenjoule.kernels.runner import ModelRunner, RunnerConfig  # noqa: E402
from tokenjoule.kernels.scheduler import ScheduledBatch  # noqa: E402
from tokenjoule.kernels.sequence import Sequence, SequenceStatus  # noqa: E402


def rel_err(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def make_runner(spec, backend="torch", blocks=64):
    return ModelRunner(spec, RunnerConfig(device="cpu", num_kv_blocks=blocks, decode_backend=backend,
                                          max_model_len=256))


def new_seq(runner, seq_id, tokens, prompt_len=None):
    seq = Sequence(seq_id=seq_id, token_ids=list(tokens), prompt_len=prompt_len or len(tokens), max_output_tokens=8,
                   status=SequenceStatus.RUNNING)
    runner.block_manager.allocate(seq_id, 0)
    return seq


def run_chunk(runner, batch):
    """Reserve blocks for every row of `batch`, execute it, commit the fed tokens (no sampling)."""
    bm = runner.block_manager
    for seq, n in batch.prefill:
        bm.append(seq.seq_id, seq.num_computed_tokens + n - bm.num_tokens(seq.seq_id))
    for seq in batch.decode:
        bm.append(seq.seq_id, seq.num_tokens - bm.num_tokens(seq.seq_id))
    logits = runner.execute(batch)
    for seq, n in batch.prefill:
        seq.num_computed_tokens += n
    for seq in batch.decode:
        seq.num_computed_tokens += 1
    return logits


@pytest.mark.parametrize("qwen", [False, True])
def test_prefill_logits_match_reference(tiny_spec, tiny_qwen_spec, reference, qwen):
    spec = tiny_qwen_spec if qwen else tiny_spec
    runner = make_runner(spec)
    tokens = torch.randint(0, spec.vocab_size, (37,), generator=torch.Generator().manual_seed(1)).tolist()
    seq = new_seq(runner, 1, tokens)
    got = run_chunk(runner, ScheduledBatch(prefill=((seq, len(tokens)),)))
    want = reference(runner.model, tokens)[-1:]
    assert rel_err(got, want) < 1e-4


def test_weights_are_seeded(tiny_spec):
    a, b, c = Transformer(tiny_spec, seed=3), Transformer(tiny_spec, seed=3), Transformer(tiny_spec, seed=4)
    assert torch.equal(a.layers[0].wqkv.weight, b.layers[0].wqkv.weight)
    assert not torch.equal(a.layers[0].wqkv.weight, c.layers[0].wqkv.weight)
    assert a.layers[0].wqkv.weight.dtype == torch.float32


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_chunked_prefill_then_decode_matches_reference(tiny_spec, reference, backend):
    if backend == "triton":
        pytest.importorskip("triton")
    runner = make_runner(tiny_spec, backend)
    tokens = torch.randint(0, 128, (45,), generator=torch.Generator().manual_seed(2)).tolist()
    seq = new_seq(runner, 7, tokens[:40])
    run_chunk(runner, ScheduledBatch(prefill=((seq, 17),)))  # chunk 1: tokens 0..16
    got_chunk = run_chunk(runner, ScheduledBatch(prefill=((seq, 23),)))  # chunk 2: 17..39, attends to chunk 1
    assert rel_err(got_chunk, reference(runner.model, tokens[:40])[-1:]) < 1e-4
    for t in range(40, 45):  # decode the next five (given) tokens one at a time
        seq.token_ids.append(tokens[t])
        got = run_chunk(runner, ScheduledBatch(decode=(seq,)))
        assert rel_err(got, reference(runner.model, tokens[: t + 1])[-1:]) < 1e-4


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_mixed_iteration_equals_each_sequence_alone(tiny_spec, backend):
    if backend == "triton":
        pytest.importorskip("triton")
    gen = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 128, (n,), generator=gen).tolist() for n in (21, 40, 9, 33)]

    def setup(runner, ids):
        """Bring sequences to the state before the mixed iteration: A fresh, B 24 of 40 cached, C/D decoding."""
        a, b, c, d = (new_seq(runner, i, prompts[i]) for i in ids)
        run_chunk(runner, ScheduledBatch(prefill=((b, 24), (c, 9), (d, 33))))
        c.token_ids.append(3)
        d.token_ids.append(77)
        return a, b, c, d

    mixed = make_runner(tiny_spec, backend)
    a, b, c, d = setup(mixed, range(4))
    got = run_chunk(mixed, ScheduledBatch(prefill=((a, 21), (b, 16)), decode=(c, d)))
    assert got.shape == (4, tiny_spec.vocab_size)
    for row, (name, n_new) in enumerate([("a", 21), ("b", 16), ("c", 0), ("d", 0)]):
        alone = make_runner(tiny_spec, backend)
        seqs = dict(zip("abcd", setup(alone, range(4)), strict=True))
        seq = seqs[name]
        batch = ScheduledBatch(prefill=((seq, n_new),)) if n_new else ScheduledBatch(decode=(seq,))
        torch.testing.assert_close(got[row], run_chunk(alone, batch)[0], rtol=1e-4, atol=1e-5)


def test_kv_cache_setup_is_idempotent(tiny_spec):
    model = Transformer(tiny_spec)
    first = model.setup_kv_cache(8)
    assert model.setup_kv_cache(8) is first
    assert tuple(first.shape) == (2, 2, 8, 16, 2, 16)
    with pytest.raises(RuntimeError, match="setup_kv_cache"):
        Transformer(tiny_spec)(torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), None)
