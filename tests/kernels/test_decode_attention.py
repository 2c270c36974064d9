"""Paged decode attention (Triton kernel and torch reference) against dense attention on ragged contexts."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from tokenjoule.kernels.decode_attention import (  # noqa: E402
    decode_attention_ref,
    merge_splits,
    num_splits_for,
    split_counts,
)


def ragged_case(seed, batch=6, n_heads=8, n_kv_heads=2, head_dim=32, block_size=16, num_blocks=80):
    gen = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, 150, (batch,), generator=gen)
    lens[0] = 1  # a single-token context
    lens[1] = block_size  # exactly one full block
    q = torch.randn(batch, n_heads, head_dim, generator=gen)
    k_cache = torch.randn(num_blocks, block_size, n_kv_heads, head_dim, generator=gen)
    v_cache = torch.randn(num_blocks, block_size, n_kv_heads, head_dim, generator=gen)
    width = int(-(-lens.max() // block_size)) + 2
    perm = torch.randperm(num_blocks - 1, generator=gen) + 1  # scattered physical blocks, never scratch block 0
    tables = torch.zeros(batch, width, dtype=torch.int32)
    used = 0
    for b, n in enumerate(lens.tolist()):
        nb = -(-n // block_size)
        tables[b, :nb] = perm[used:used + nb].int()
        used += nb
    return q, k_cache, v_cache, tables, lens.int()


def dense_attention(q, k_cache, v_cache, tables, lens):
    """Each sequence's K/V copied out to a dense tensor, then torch SDPA (GQA by repeating heads)."""
    block_size, n_kv = k_cache.shape[1], k_cache.shape[2]
    group = q.shape[1] // n_kv
    outs = []
    for b, n in enumerate(lens.tolist()):
        k = torch.cat([k_cache[int(t)] for t in tables[b, : -(-n // block_size)]])[:n]  # (n, n_kv, D)
        v = torch.cat([v_cache[int(t)] for t in tables[b, : -(-n // block_size)]])[:n]
        k = k.repeat_interleave(group, 1).transpose(0, 1)  # (n_heads, n, D)
        v = v.repeat_interleave(group, 1).transpose(0, 1)
        out = torch.nn.functional.scaled_dot_product_attention(q[b][:, None, :], k, v)  # (n_heads, 1, D)
        outs.append(out[:, 0])
    return torch.stack(outs)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reference_equals_dense(seed):
    case = ragged_case(seed)
    torch.testing.assert_close(decode_attention_ref(*case), dense_attention(*case), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed,splits", [(3, None), (4, 1), (5, 3), (6, 8)])
def test_triton_kernel_equals_dense(seed, splits):
    pytest.importorskip("triton")
    from tokenjoule.kernels.decode_attention import paged_decode_attention, triton_available

    if not triton_available("cpu"):
        pytest.skip("Triton interpreter not enabled")
    case = ragged_case(seed, n_heads=12, n_kv_heads=4)  # GQA group of 3: padded rows must be masked
    out = paged_decode_attention(*case, n_splits=splits)
    torch.testing.assert_close(out, dense_attention(*case), rtol=1e-4, atol=1e-5)


def test_triton_kernel_zero_context_gives_zeros():
    pytest.importorskip("triton")
    from tokenjoule.kernels.decode_attention import paged_decode_attention

    q, k_cache, v_cache, tables, lens = ragged_case(7, batch=3)
    lens[2] = 0  # a padded graph slot
    out = paged_decode_attention(q, k_cache, v_cache, tables, lens, n_splits=2)
    assert torch.all(out[2] == 0) and torch.isfinite(out).all()


def test_merge_splits_equals_one_softmax():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 3, 40, generator=gen)
    values = torch.randn(2, 3, 40, 8, generator=gen)
    parts = [slice(0, 13), slice(13, 29), slice(29, 40)]
    m = torch.stack([scores[..., p].amax(-1) for p in parts], -1)
    denom = torch.stack([torch.exp(scores[..., p] - m[..., i:i + 1]).sum(-1) for i, p in enumerate(parts)], -1)
    acc = torch.stack([(torch.exp(scores[..., p] - m[..., i:i + 1])[..., None] * values[..., p, :]).sum(-2)
                       for i, p in enumerate(parts)], -2)
    want = (scores.softmax(-1)[..., None] * values).sum(-2)
    torch.testing.assert_close(merge_splits(m, denom, acc), want)


def test_num_splits_depends_only_on_batch_shape():
    assert num_splits_for(1, 8) == 32 and num_splits_for(64, 8) == 2 and num_splits_for(512, 8) == 1


def test_split_counts_cover_every_batch_the_engine_can_run():
    counts = split_counts(512, 8)
    assert {num_splits_for(b, 8) for b in range(1, 513)} == set(counts)
    assert counts[0] == 1 and counts[-1] == 32 and len(counts) < 20  # a few variants, compiled once at start-up


def test_precompile_runs_each_split_count_once(monkeypatch):
    import tokenjoule.kernels.decode_attention as da

    seen = []
    monkeypatch.setattr(da, "paged_decode_attention", lambda *a, n_splits: seen.append(n_splits))
    kv_layer = torch.zeros(2, 3, 16, 8, 64)
    assert da.precompile(kv_layer, n_heads=32, max_batch=64) == len(seen)
    assert seen == split_counts(64, 8)
