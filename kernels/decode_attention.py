"""Paged decode attention: a split-KV Triton kernel, its launcher, and a plain-torch reference.

One decode token per sequence attends to that sequence's cached K/V, which lives in fixed-size blocks scattered
over a shared pool and found through a block table. The kernel reads only each sequence's live blocks, so its cost
grows with the sum of contexts, not batch x longest context.

Work split (flash-decoding, Dao et al. 2023): one program per (sequence, KV head, split). A program handles all the
query heads of its KV head's GQA group at once (padded to 16 rows so `tl.dot` applies) and one contiguous share of
the sequence's context, keeping an online softmax (running max `m`, denominator `l`, weighted sum `acc`). A
second small kernel merges the splits (`merge_splits` is its torch reference). The number of splits depends only
on the batch size, never on the contexts, so a graph captured for one batch size replays for any contexts.

Layout (per layer): `k_cache`, `v_cache` of shape (num_blocks, block_size, n_kv_heads, head_dim).
"""

from __future__ import annotations

import math
import os

import torch

from tokenjoule.kernels.shape import num_splits_for

try:  # Triton is optional on CPU; it runs there only in interpreter mode (TRITON_INTERPRET=1).
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

BLOCK_N = 64  # context tokens per inner-loop tile (64 beat 32 by 5-12% on H100, NOTES.md)


def split_counts(max_batch: int, n_kv_heads: int) -> list[int]:
    """Every split count `num_splits_for` gives a batch of 1..`max_batch` sequences (each is one kernel variant)."""
    return sorted({num_splits_for(b, n_kv_heads) for b in range(1, max_batch + 1)})


def precompile(kv_layer: torch.Tensor, n_heads: int, max_batch: int) -> int:
    """Compile the decode kernels for every split count up to `max_batch` sequences, before serving starts.

    The split count is a compile-time constant, so the first iteration with a new one compiled a variant while it
    ran: 0.4-0.8 s stalls of mixed iterations in the validation replays (validation/README.md). A serving engine
    compiles at start-up instead. Runs each variant once on the scratch block 0 of `kv_layer` (shape (2,
    num_blocks, block_size, n_kv_heads, head_dim)), so strides and dtypes match the real calls.

    Returns:
        The number of split counts compiled.
    """
    k_cache, v_cache = kv_layer[0], kv_layer[1]
    device, head_dim = kv_layer.device, kv_layer.shape[-1]
    q = torch.zeros(1, n_heads, head_dim, device=device, dtype=kv_layer.dtype)
    tables = torch.zeros(1, 1, device=device, dtype=torch.int32)
    lens = torch.ones(1, device=device, dtype=torch.int32)
    counts = split_counts(max_batch, kv_layer.shape[-2])
    for splits in counts:
        paged_decode_attention(q, k_cache, v_cache, tables, lens, n_splits=splits)
    return len(counts)


def triton_available(device: torch.device | str) -> bool:
    """Whether the Triton kernel can run for tensors on `device` (CUDA, or CPU with TRITON_INTERPRET=1)."""
    if triton is None:
        return False
    if torch.device(device).type == "cuda":
        return True
    return os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:

    # The block table's row stride changes with the longest sequence of each eager (mixed) iteration; left
    # specialized, each new divisibility class would compile a kernel variant in the middle of serving.
    @triton.jit(do_not_specialize=["stride_btb"])
    def _paged_decode_kernel(
        q_ptr, k_ptr, v_ptr, bt_ptr, lens_ptr, m_ptr, l_ptr, acc_ptr,
        stride_qb, stride_qh,
        stride_kb, stride_ks, stride_kh,
        stride_vb, stride_vs, stride_vh,
        stride_btb,
        scale,
        N_SPLITS: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
        PAGE: tl.constexpr, BLOCK: tl.constexpr,
    ):  # noqa: D103
        seq = tl.program_id(0)
        kv_head = tl.program_id(1)
        split = tl.program_id(2)
        ctx = tl.load(lens_ptr + seq)
        # This split's share of the context, rounded to whole tiles: [start, end).
        share = tl.cdiv(tl.cdiv(ctx, N_SPLITS), BLOCK) * BLOCK
        start = split * share
        end = tl.minimum(start + share, ctx)

        rows = tl.arange(0, GROUP_PAD)  # query heads of this GQA group (padded)
        dims = tl.arange(0, HEAD_DIM)
        row_ok = rows < GROUP
        q_heads = kv_head * GROUP + rows
        q = tl.load(q_ptr + seq * stride_qb + q_heads[:, None] * stride_qh + dims[None, :],
                    mask=row_ok[:, None], other=0.0)  # (GROUP_PAD, HEAD_DIM)

        m_i = tl.full([GROUP_PAD], -1.0e30, dtype=tl.float32)
        l_i = tl.zeros([GROUP_PAD], dtype=tl.float32)
        acc = tl.zeros([GROUP_PAD, HEAD_DIM], dtype=tl.float32)
        for tile in range(start, end, BLOCK):
            toks = tile + tl.arange(0, BLOCK)
            tok_ok = toks < end
            # int64: page * stride_kb passes 2^31 elements once a layer's cache does (OLMoE's 16 KV heads on an H200)
            page = tl.load(bt_ptr + seq * stride_btb + toks // PAGE, mask=tok_ok, other=0).to(tl.int64)
            slot = toks % PAGE
            k = tl.load(k_ptr + page[:, None] * stride_kb + slot[:, None] * stride_ks + kv_head * stride_kh
                        + dims[None, :], mask=tok_ok[:, None], other=0.0)  # (BLOCK, HEAD_DIM)
            s = (tl.dot(q, tl.trans(k)) * scale).to(tl.float32)  # (GROUP_PAD, BLOCK)
            s = tl.where(tok_ok[None, :], s, -1.0e30)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.exp(s - m_new[:, None])
            alpha = tl.exp(m_i - m_new)
            v = tl.load(v_ptr + page[:, None] * stride_vb + slot[:, None] * stride_vs + kv_head * stride_vh
                        + dims[None, :], mask=tok_ok[:, None], other=0.0)  # (BLOCK, HEAD_DIM)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v).to(tl.float32)
            l_i = l_i * alpha + tl.sum(p, 1)
            m_i = m_new

        # Partial results, laid out (batch, n_heads, N_SPLITS[, HEAD_DIM]).
        part = (seq * (GROUP * tl.num_programs(1)) + q_heads) * N_SPLITS + split
        tl.store(m_ptr + part, m_i, mask=row_ok)
        tl.store(l_ptr + part, l_i, mask=row_ok)
        tl.store(acc_ptr + part[:, None] * HEAD_DIM + dims[None, :], acc, mask=row_ok[:, None])

    @triton.jit
    def _merge_kernel(m_ptr, l_ptr, acc_ptr, out_ptr, N_SPLITS: tl.constexpr, SPLITS_PAD: tl.constexpr,
                      HEAD_DIM: tl.constexpr):  # noqa: D103
        row = tl.program_id(0)  # one (sequence, query head)
        splits = tl.arange(0, SPLITS_PAD)
        ok = splits < N_SPLITS
        dims = tl.arange(0, HEAD_DIM)
        m = tl.load(m_ptr + row * N_SPLITS + splits, mask=ok, other=float("-inf"))
        den = tl.load(l_ptr + row * N_SPLITS + splits, mask=ok, other=0.0)
        acc = tl.load(acc_ptr + (row * N_SPLITS + splits)[:, None] * HEAD_DIM + dims[None, :], mask=ok[:, None],
                      other=0.0)  # (SPLITS_PAD, HEAD_DIM)
        w = tl.exp(m - tl.max(m, 0))
        total = tl.maximum(tl.sum(w * den, 0), 1e-30)
        out = tl.sum(w[:, None] * acc, 0) / total
        tl.store(out_ptr + row * HEAD_DIM + dims, out.to(out_ptr.dtype.element_ty))


def merge_splits(m: torch.Tensor, denom: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
    """Combine per-split softmax partials into attention outputs.

    Args:
        m: running maxima, (B, H, S).
        denom: softmax denominators relative to `m`, (B, H, S).
        acc: unnormalised weighted value sums relative to `m`, (B, H, S, D).

    Returns:
        (B, H, D) float32; rows with no context at all come out as zeros.
    """
    m_all = m.amax(dim=-1, keepdim=True)  # (B, H, 1)
    w = torch.exp(m - m_all)  # (B, H, S)
    total = (w * denom).sum(dim=-1).clamp_min(1e-30)  # (B, H)
    return (w.unsqueeze(-1) * acc).sum(dim=-2) / total.unsqueeze(-1)


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float | None = None,
    n_splits: int | None = None,
) -> torch.Tensor:
    """Launch the Triton kernel: one query token per sequence against its paged K/V.

    Args:
        q: (B, n_heads, head_dim).
        k_cache: (num_blocks, block_size, n_kv_heads, head_dim).
        v_cache: same shape as `k_cache`.
        block_tables: (B, max_blocks) int32 physical block ids per sequence.
        context_lens: (B,) int32 tokens to attend to (the current token's own K/V included); 0 gives zeros.
        scale: softmax scale; defaults to 1/sqrt(head_dim).
        n_splits: context splits per sequence; defaults to `num_splits_for(B, n_kv_heads)`.

    Returns:
        (B, n_heads, head_dim) in q's dtype.
    """
    if triton is None:
        raise RuntimeError("Triton is not installed; use decode_attention_ref or install triton")
    batch, n_heads, head_dim = q.shape
    n_kv_heads, block_size = k_cache.shape[2], k_cache.shape[1]
    group = n_heads // n_kv_heads
    splits = n_splits or num_splits_for(batch, n_kv_heads)
    scale = scale if scale is not None else 1.0 / math.sqrt(head_dim)
    q = q.contiguous()
    m = torch.empty(batch, n_heads, splits, device=q.device, dtype=torch.float32)
    denom = torch.empty_like(m)
    acc = torch.empty(batch, n_heads, splits, head_dim, device=q.device, dtype=torch.float32)
    _paged_decode_kernel[(batch, n_kv_heads, splits)](
        q, k_cache, v_cache, block_tables, context_lens, m, denom, acc,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0),
        scale,
        N_SPLITS=splits, GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
        PAGE=block_size, BLOCK=BLOCK_N,
    )
    out = torch.empty_like(q)
    _merge_kernel[(batch * n_heads,)](m, denom, acc, out, N_SPLITS=splits,
                                      SPLITS_PAD=max(2, triton.next_power_of_2(splits)), HEAD_DIM=head_dim)
    return out


def decode_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """Plain-torch paged decode attention, one sequence at a time (same arguments as the kernel's launcher)."""
    batch, n_heads, head_dim = q.shape
    block_size, n_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = n_heads // n_kv_heads
    scale = scale if scale is not None else 1.0 / math.sqrt(head_dim)
    out = torch.zeros_like(q)
    for b, ctx in enumerate(context_lens.tolist()):
        if ctx == 0:
            continue
        blocks = block_tables[b, : -(-ctx // block_size)].long()
        k = k_cache[blocks].reshape(-1, n_kv_heads, head_dim)[:ctx]  # (ctx, n_kv_heads, D)
        v = v_cache[blocks].reshape(-1, n_kv_heads, head_dim)[:ctx]
        k = k.repeat_interleave(group, dim=1).float()  # (ctx, n_heads, D)
        v = v.repeat_interleave(group, dim=1).float()
        scores = torch.einsum("hd,thd->ht", q[b].float(), k) * scale  # (n_heads, ctx)
        out[b] = torch.einsum("ht,thd->hd", scores.softmax(dim=-1), v).to(q.dtype)
    return out


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Paged decode attention through the chosen backend ("triton", "torch", or "auto": Triton where it runs)."""
    if backend == "auto":
        backend = "triton" if triton_available(q.device) else "torch"
    if backend == "triton":
        return paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale)
    if backend == "torch":
        return decode_attention_ref(q, k_cache, v_cache, block_tables, context_lens, scale)
    raise ValueError(f"backend={backend!r} must be 'auto', 'triton' or 'torch'")
