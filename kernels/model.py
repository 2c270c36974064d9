"""A Llama-style decoder (GQA, RoPE, RMSNorm, SwiGLU; Qwen2's qkv bias) with seeded random weights and a paged KV cache.

Layers are dense or mixture-of-experts (MoE: a router picks top-k of E SwiGLU experts per token, run as grouped
GEMMs over the tokens sorted by expert, plus an optional shared expert; see `MoE`).

One forward pass runs one engine iteration: a packed batch of prefill-chunk tokens followed by one token per
decoding sequence. Every new token's K/V is written into the paged cache first; then prefill tokens attend over
their sequence's cache (packed variable-length attention) and decode tokens run paged decode attention. Weight
values are random: they do not change the work, only the (meaningless) tokens.
"""

from __future__ import annotations

import functools
import inspect
import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tokenjoule.kernels.decode_attention import decode_attention
from tokenjoule.kernels.spec import ModelSpec
from tokenjoule.kernels.tp import ShardedLinear, TPGroup, parallel_block_linears, parallel_lm_head, split_spec

INIT_STD = 0.02
MOE_BACKENDS = ("auto", "grouped", "loop")
# How an MoE layer chooses its experts. "computed": top-k of the router's logits alone. With random weights that
# collapses in a prefill (every token of a sequence picks the same experts in most layers: measured on OLMoE-1B-7B and
# Qwen1.5-MoE-A2.7B, validation/h200_2026-12-04_moe_routing/), nothing like a trained model, whose router is trained
# toward balanced loads. "balanced" (the default): the router GEMM still runs, and a fixed random offset per iteration
# row and expert (drawn once with the weights, `ROUTE_OFFSET_STD`, far above the logits' spread) is added before the
# softmax, so each row picks its experts uniformly and independently of the others: the routing the composition
# prices (`ModelSpec.expected_experts_touched`).
MOE_ROUTINGS = ("balanced", "computed")
ROUTE_OFFSET_STD = 10.0
MOE_MAX_ROWS = 16384  # rows per forward the offsets cover by default (the runner passes max_num_batched_tokens + seqs)


@dataclass(frozen=True, slots=True)
class AttentionMetadata:
    """Where one iteration's tokens live and what they attend to. Tokens are packed prefill-first.

    Attributes:
        slot_mapping: (T,) int64 flat KV slot (block * block_size + offset) each new token writes.
        n_prefill_tokens: how many of the T tokens belong to prefill chunks (the rest decode, one per sequence).
        prefill_q_lens: new tokens per prefill chunk.
        prefill_k_lens: tokens each chunk attends to (context before + new).
        cu_seqlens_q: (P+1,) int32 cumulative `prefill_q_lens`.
        cu_seqlens_k: (P+1,) int32 cumulative `prefill_k_lens`.
        prefill_kv_slots: (sum k_lens,) int64 flat KV slots gathered as the chunks' keys; None when every chunk
            starts at context 0 (its keys are then just the fresh ones).
        block_tables: (B, max_blocks) int32 decode sequences' block tables.
        context_lens: (B,) int32 tokens each decode sequence attends to, its new token included.
        logits_indices: (N,) int64 rows of the packed batch whose next-token logits are wanted.
    """

    slot_mapping: torch.Tensor
    n_prefill_tokens: int
    prefill_q_lens: tuple[int, ...]
    prefill_k_lens: tuple[int, ...]
    cu_seqlens_q: torch.Tensor | None
    cu_seqlens_k: torch.Tensor | None
    prefill_kv_slots: torch.Tensor | None
    block_tables: torch.Tensor | None
    context_lens: torch.Tensor | None
    logits_indices: torch.Tensor


@functools.cache
def _varlen_attn_fn():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # older torch: fall back to per-sequence SDPA
        return None, False
    return varlen_attn, "enable_gqa" in inspect.signature(varlen_attn).parameters


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """RoPE tables for `positions`: cos and sin of shape (T, head_dim), halves repeated (HF "rotate_half" layout)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]  # (T, head_dim/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (T, head_dim)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (T, heads, head_dim) by per-token angles."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


class RMSNorm(nn.Module):
    """Root-mean-square layer norm (Zhang & Sennrich 2019), computed in float32."""

    def __init__(self, dim: int, eps: float, device, dtype) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if x.is_cuda:  # one fused kernel instead of ~7 elementwise ones (decode is launch-bound)
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


@functools.cache
def grouped_mm_works(device_type: str, dtype: torch.dtype) -> bool:
    """Whether `torch._grouped_mm` runs on this device type and dtype, probed once with a tiny call.

    On CUDA it needs bf16 and (torch 2.13) a Hopper-class GPU; torch 2.13's CPU build runs it in float32 and bf16.
    """
    fn = getattr(torch, "_grouped_mm", None)
    if fn is None:
        return False
    a = torch.ones(16, 16, device=device_type, dtype=dtype)
    b = torch.ones(2, 16, 16, device=device_type, dtype=dtype)
    offs = torch.tensor([8, 16], device=device_type, dtype=torch.int32)
    try:
        fn(a, b.transpose(-2, -1), offs=offs)
    except (RuntimeError, NotImplementedError, TypeError):
        return False
    return True


def resolve_moe_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """"grouped" or "loop" for `backend` ("auto": grouped where `torch._grouped_mm` runs, else loop)."""
    if backend not in MOE_BACKENDS:
        raise ValueError(f"moe_backend={backend!r} must be one of {MOE_BACKENDS}")
    if backend == "auto":
        return "grouped" if grouped_mm_works(device.type, dtype) else "loop"
    if backend == "grouped" and not grouped_mm_works(device.type, dtype):
        raise ValueError(f"moe_backend='grouped': torch._grouped_mm does not run on {device.type} in {dtype}; "
                         "use moe_backend='loop'")
    return backend


def route(router_logits: torch.Tensor, k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the experts in float32, keep the top k (renormalised to sum 1 when asked; Mixtral does).

    Args:
        router_logits: (T, E) router outputs.
        k: experts per token.
        renormalize: divide the kept probabilities by their sum.

    Returns:
        (T, k) float32 weights and (T, k) int64 expert ids.
    """
    weights, experts = router_logits.float().softmax(dim=-1).topk(k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, experts


class MoE(nn.Module):
    """A mixture-of-experts SwiGLU MLP: router -> softmax -> top-k -> experts, plus an optional shared expert.

    The T x k (token, expert) pairs are sorted by expert, so each expert's rows are contiguous, and the experts run
    as two grouped GEMMs (`torch._grouped_mm` with the cumulative row counts `offs`: backend "grouped") or one pair
    of GEMMs per expert (backend "loop", which reads the counts on the host: a sync, so no CUDA-graph capture). Every
    shape is fixed by T alone and the counts stay on the device, so the grouped path can be captured in a graph.
    Expert weights are stored per expert in nn.Linear layout, (E, out, in).

    Args:
        spec: the model shape (its MoE fields).
        device: weights' device.
        dtype: weights' dtype.
        backend: "grouped", "loop" or "auto" (see `resolve_moe_backend`).
        routing: "balanced" or "computed" (see `MOE_ROUTINGS`).
        max_rows: most rows one forward may have ("balanced" holds an offset per row and expert).
    """

    def __init__(self, spec: ModelSpec, device, dtype, backend: str = "auto", routing: str = "balanced",
                 max_rows: int = MOE_MAX_ROWS) -> None:
        super().__init__()
        if routing not in MOE_ROUTINGS:
            raise ValueError(f"moe_routing={routing!r} must be one of {MOE_ROUTINGS}")
        self.spec = spec
        self.backend = resolve_moe_backend(backend, torch.device(device), dtype)
        kw = dict(device=device, dtype=dtype)
        n_exp, hidden, ffn = spec.n_experts, spec.hidden_size, spec.moe_intermediate_size
        self.router = nn.Linear(hidden, n_exp, bias=False, **kw)
        self.w_gate_up = nn.Parameter(torch.empty(n_exp, 2 * ffn, hidden, **kw))  # (E, 2 * moe_ffn, hidden)
        self.w_down = nn.Parameter(torch.empty(n_exp, hidden, ffn, **kw))  # (E, hidden, moe_ffn)
        shared = spec.shared_expert_intermediate_size
        self.shared_gate_up = nn.Linear(hidden, 2 * shared, bias=False, **kw) if shared else None
        self.shared_down = nn.Linear(shared, hidden, bias=False, **kw) if shared else None
        self.shared_gate = nn.Linear(hidden, 1, bias=False, **kw) if spec.shared_expert_gate else None
        # Drawn by `draw_route_offsets` (a buffer: not a parameter of the model's count).
        self.register_buffer("route_offsets", torch.zeros(max_rows, n_exp, **kw) if routing == "balanced" else None)

    @torch.no_grad()
    def draw_route_offsets(self, gen: torch.Generator) -> None:
        """Fill the balanced routing offsets, N(0, ROUTE_OFFSET_STD^2), from `gen` (nothing under "computed")."""
        if self.route_offsets is not None:
            offsets = self.route_offsets
            offsets.copy_(torch.randn(offsets.shape, generator=gen, device=offsets.device, dtype=offsets.dtype)
                          * ROUTE_OFFSET_STD)

    def router_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(T, E) logits the experts are chosen by: the router's, plus each row's offsets under "balanced"."""
        logits = self.router(x)
        if self.route_offsets is None:
            return logits
        if x.shape[0] > self.route_offsets.shape[0]:
            raise ValueError(f"MoE forward of {x.shape[0]} rows > the {self.route_offsets.shape[0]} rows its routing "
                             "offsets cover; build the model with max_rows >= max_num_batched_tokens")
        return logits + self.route_offsets[: x.shape[0]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(T, hidden) -> (T, hidden)."""
        n_tokens, k = x.shape[0], self.spec.n_experts_per_token
        weights, experts = route(self.router_logits(x), k, self.spec.norm_topk_prob)  # (T, k) each
        flat = experts.flatten()  # (T * k,) expert of each (token, slot) pair, token-major
        order = flat.argsort(stable=True)  # (T * k,) pairs sorted by expert
        expert_ids = torch.arange(self.spec.n_experts, device=x.device, dtype=flat.dtype)
        offs = torch.searchsorted(flat[order], expert_ids, right=True).to(torch.int32)  # (E,) cumulative row ends
        rows = self._experts(x[order // k], offs)  # (T * k, hidden), sorted by expert
        unsorted = torch.empty_like(rows)
        unsorted[order] = rows  # back to token-major (token, slot) order
        out = (unsorted.view(n_tokens, k, -1) * weights.to(x.dtype)[..., None]).sum(dim=1)  # (T, hidden)
        if self.shared_gate_up is not None:
            out = out + self._shared(x)
        return out

    def _experts(self, xs: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
        """SwiGLU of each expert over its contiguous rows of `xs` (T * k, hidden); `offs` (E,) ends its rows."""
        if self.backend == "grouped":
            gate, up = torch._grouped_mm(xs, self.w_gate_up.transpose(-2, -1), offs=offs).chunk(2, dim=-1)
            return torch._grouped_mm(F.silu(gate) * up, self.w_down.transpose(-2, -1), offs=offs)
        out = torch.empty_like(xs)
        start = 0
        for e, stop in enumerate(offs.tolist()):  # host sync: the loop needs the counts
            if stop > start:
                gate, up = F.linear(xs[start:stop], self.w_gate_up[e]).chunk(2, dim=-1)  # (n_e, moe_ffn) each
                out[start:stop] = F.linear(F.silu(gate) * up, self.w_down[e])
            start = stop
        return out

    def _shared(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.shared_gate_up(x).chunk(2, dim=-1)  # (T, shared_ffn) each
        out = self.shared_down(F.silu(gate) * up)
        if self.shared_gate is not None:  # Qwen2-MoE scales the shared expert by a per-token sigmoid gate
            out = torch.sigmoid(self.shared_gate(x)) * out
        return out


def moe_reference(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Plain-torch MoE forward for tests: every expert on every token, mixed by a dense (T, E) routing matrix."""
    weights, experts = route(moe.router_logits(x), moe.spec.n_experts_per_token, moe.spec.norm_topk_prob)
    mix = torch.zeros(x.shape[0], moe.spec.n_experts, dtype=x.dtype, device=x.device)
    mix.scatter_(1, experts, weights.to(x.dtype))  # (T, E), zero off the top k
    out = torch.zeros_like(x)
    for e in range(moe.spec.n_experts):
        gate, up = F.linear(x, moe.w_gate_up[e]).chunk(2, dim=-1)
        out = out + mix[:, e:e + 1] * F.linear(F.silu(gate) * up, moe.w_down[e])
    if moe.shared_gate_up is not None:
        out = out + moe._shared(x)
    return out


class Block(nn.Module):
    """One transformer block: pre-norm attention (fused QKV) and pre-norm SwiGLU MLP (fused gate/up) or MoE MLP.

    With `moe`, the MLP is an `MoE` (`self.moe`; no w_gate_up / w_down). With `tp`, the block holds one rank's
    heads and SwiGLU columns (`self.spec` is then the per-rank shape) and `wo` / `w_down` all-reduce their outputs
    (see kernels/tp.py).
    """

    def __init__(self, spec: ModelSpec, device, dtype, tp: TPGroup | None = None, moe: bool = False,
                 moe_backend: str = "auto", moe_routing: str = "balanced", max_rows: int = MOE_MAX_ROWS) -> None:
        super().__init__()
        self.spec = spec if tp is None else split_spec(spec, tp.world_size)
        kw = dict(device=device, dtype=dtype)
        self.moe = MoE(spec, device, dtype, moe_backend, moe_routing, max_rows) if moe else None
        if tp is not None:
            self.wqkv, self.wo, self.w_gate_up, self.w_down = parallel_block_linears(spec, tp, device, dtype)
        else:
            self.wqkv = nn.Linear(spec.hidden_size, spec.q_size + 2 * spec.kv_size, bias=spec.qkv_bias, **kw)
            self.wo = nn.Linear(spec.q_size, spec.hidden_size, bias=False, **kw)
            if not moe:
                self.w_gate_up = nn.Linear(spec.hidden_size, 2 * spec.intermediate_size, bias=False, **kw)
                self.w_down = nn.Linear(spec.intermediate_size, spec.hidden_size, bias=False, **kw)
        if spec.qk_norm:  # OLMoE: RMSNorm over all heads of q and of k together, before RoPE
            self.q_norm = RMSNorm(spec.q_size, spec.rms_norm_eps, device, dtype)
            self.k_norm = RMSNorm(spec.kv_size, spec.rms_norm_eps, device, dtype)
        self.attn_norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps, device, dtype)
        self.mlp_norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps, device, dtype)

    def forward(self, x, cos, sin, meta: AttentionMetadata, kv_layer: torch.Tensor, decode_backend: str):  # noqa: D102
        x = x + self.attention(self.attn_norm(x), cos, sin, meta, kv_layer, decode_backend)
        if self.moe is not None:
            return x + self.moe(self.mlp_norm(x))
        gate, up = self.w_gate_up(self.mlp_norm(x)).chunk(2, dim=-1)  # (T, ffn) each
        return x + self.w_down(F.silu(gate) * up)

    def attention(self, x, cos, sin, meta: AttentionMetadata, kv_layer: torch.Tensor, decode_backend: str):
        """Write the new tokens' K/V into the cache, then attend (prefill part, then decode part)."""
        s = self.spec
        n_tokens = x.shape[0]
        qk, v = self.wqkv(x).split([s.q_size + s.kv_size, s.kv_size], dim=-1)
        if s.qk_norm:
            q, k = qk.split([s.q_size, s.kv_size], dim=-1)
            qk = torch.cat([self.q_norm(q), self.k_norm(k)], dim=-1)  # (T, q_size + kv_size)
        # q and k heads rotate together: one pass of RoPE kernels instead of two.
        qk = apply_rope(qk.view(n_tokens, s.n_heads + s.n_kv_heads, s.head_dim), cos, sin)
        q, k = qk.split([s.n_heads, s.n_kv_heads], dim=1)  # (T, n_heads, D), (T, n_kv_heads, D)
        v = v.view(n_tokens, s.n_kv_heads, s.head_dim)
        k_cache, v_cache = kv_layer[0], kv_layer[1]  # (num_blocks, block_size, n_kv_heads, head_dim) each
        k_cache.view(-1, s.n_kv_heads, s.head_dim).index_copy_(0, meta.slot_mapping, k)
        v_cache.view(-1, s.n_kv_heads, s.head_dim).index_copy_(0, meta.slot_mapping, v)

        n_pre = meta.n_prefill_tokens
        outs = []
        if n_pre:
            outs.append(self._prefill_attention(q[:n_pre], k[:n_pre], v[:n_pre], k_cache, v_cache, meta))
        if n_tokens > n_pre:
            outs.append(decode_attention(q[n_pre:], k_cache, v_cache, meta.block_tables, meta.context_lens,
                                         backend=decode_backend))
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)  # (T, n_heads, head_dim)
        return self.wo(out.reshape(n_tokens, s.q_size))

    def _prefill_attention(self, q, k, v, k_cache, v_cache, meta: AttentionMetadata) -> torch.Tensor:
        s = self.spec
        if meta.prefill_kv_slots is not None:  # some chunk continues a sequence: its keys come from the cache
            k = k_cache.view(-1, s.n_kv_heads, s.head_dim)[meta.prefill_kv_slots]  # (sum k_lens, n_kv, D)
            v = v_cache.view(-1, s.n_kv_heads, s.head_dim)[meta.prefill_kv_slots]
        return prefill_attention(q, k, v, meta.prefill_q_lens, meta.prefill_k_lens, meta.cu_seqlens_q,
                                 meta.cu_seqlens_k)


def prefill_attention(q, k, v, q_lens, k_lens, cu_seqlens_q=None, cu_seqlens_k=None) -> torch.Tensor:
    """Causal attention of packed prefill chunks: chunk i's q_lens[i] queries over its k_lens[i] keys.

    Args:
        q: (sum q_lens, n_heads, head_dim).
        k: (sum k_lens, n_kv_heads, head_dim).
        v: same shape as k.
        q_lens: new tokens per chunk.
        k_lens: keys per chunk (context before + new).
        cu_seqlens_q: (P+1,) int32 cumulative q_lens on q's device (built here when None).
        cu_seqlens_k: (P+1,) int32 cumulative k_lens, likewise.

    Returns:
        (sum q_lens, n_heads, head_dim). Flash varlen attention on CUDA where torch has it, per-chunk SDPA else.
    """
    varlen, has_gqa_flag = _varlen_attn_fn()
    if q.is_cuda and varlen is not None:
        if cu_seqlens_q is None or cu_seqlens_k is None:
            cu_seqlens_q = torch.tensor([0, *itertools.accumulate(q_lens)], device=q.device, dtype=torch.int32)
            cu_seqlens_k = torch.tensor([0, *itertools.accumulate(k_lens)], device=q.device, dtype=torch.int32)
        # window (-1, 0) is causal aligned to the end of the keys, so a chunk's queries see all of its context.
        kwargs = {"enable_gqa": True} if has_gqa_flag else {}
        return varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max(q_lens), max(k_lens), window_size=(-1, 0), **kwargs)
    return _prefill_attention_sdpa(q, k, v, q_lens, k_lens)


def _prefill_attention_sdpa(q, k, v, q_lens, k_lens) -> torch.Tensor:
    """Per-chunk causal SDPA (CPU fallback); query i of a chunk sees keys up to its own position."""
    group = q.shape[1] // k.shape[1]
    outs, q0, k0 = [], 0, 0
    for n_q, n_k in zip(q_lens, k_lens, strict=True):
        qi = q[q0:q0 + n_q].transpose(0, 1)  # (n_heads, n_q, D)
        ki = k[k0:k0 + n_k].repeat_interleave(group, dim=1).transpose(0, 1)  # (n_heads, n_k, D)
        vi = v[k0:k0 + n_k].repeat_interleave(group, dim=1).transpose(0, 1)
        mask = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril(diagonal=n_k - n_q)
        outs.append(F.scaled_dot_product_attention(qi, ki, vi, attn_mask=mask).transpose(0, 1))
        q0, k0 = q0 + n_q, k0 + n_k
    return torch.cat(outs, dim=0)  # (sum q_lens, n_heads, D)


class Transformer(nn.Module):
    """The decoder. Build with `Transformer(spec, device)`, then `setup_kv_cache(num_blocks)` before `forward`.

    Args:
        spec: the model shape.
        device: "cuda" (bfloat16 weights) or "cpu" (float32).
        seed: seed of the weights' random generator.
        dtype: overrides the dtype chosen from the device.
        tp: this rank's tensor-parallel group; None runs the whole model in this process (MoE and qk-norm models
            support only that).
        moe_backend: how MoE layers run their experts: "grouped", "loop" or "auto" (see `MoE`).
        moe_routing: how MoE layers choose their experts: "balanced" or "computed" (see `MOE_ROUTINGS`).
        max_rows: most rows one forward may have (MoE layers' routing offsets cover that many).
    """

    def __init__(self, spec: ModelSpec, device: str | torch.device = "cpu", seed: int = 0,
                 dtype: torch.dtype | None = None, tp: TPGroup | None = None, moe_backend: str = "auto",
                 moe_routing: str = "balanced", max_rows: int = MOE_MAX_ROWS) -> None:
        super().__init__()
        if tp is not None and (spec.is_moe or spec.qk_norm):
            raise ValueError(f"{spec.name}: tensor parallelism (tp={tp.world_size}) does not support MoE or qk-norm "
                             "layers; run it with tp=1")
        device = torch.device(device)
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        self.spec, self.device, self.dtype, self.tp = spec, device, dtype, tp
        self.local_spec = spec if tp is None else split_spec(spec, tp.world_size)  # the heads this process holds
        self.embed = nn.Embedding(spec.vocab_size, spec.hidden_size, device=device, dtype=dtype)
        moe_layers = set(spec.moe_layers)
        self.layers = nn.ModuleList(Block(spec, device, dtype, tp, i in moe_layers, moe_backend, moe_routing, max_rows)
                                    for i in range(spec.n_layers))
        self.norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps, device, dtype)
        head = parallel_lm_head(spec, tp, device, dtype) if tp is not None else None  # None: replicated
        if head is None:
            head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False, device=device, dtype=dtype)
        self.lm_head = head
        if spec.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.requires_grad_(False)
        self.init_weights(seed)
        self.kv_cache: torch.Tensor | None = None
        self.decode_backend = "auto"

    @torch.no_grad()
    def init_weights(self, seed: int) -> None:
        """Fill every matrix with N(0, 0.02^2) from a seeded generator on the weights' device; norms stay 1.

        A tensor-parallel shard draws the full matrix and keeps its slice, so it holds exactly the single-process
        model's values. Balanced MoE layers' routing offsets, N(0, ROUTE_OFFSET_STD^2), are drawn after every weight
        (so the weights are those of computed routing).
        """
        gen = torch.Generator(device=self.device).manual_seed(seed)
        modules = dict(self.named_modules())
        for name, param in self.named_parameters():
            if "norm" in name:
                param.fill_(1.0)
                continue
            owner_name, _, leaf = name.rpartition(".")
            owner = modules[owner_name]
            sharded = isinstance(owner, ShardedLinear)
            shape = owner.full_shape(leaf) if sharded else param.shape
            full = torch.randn(shape, generator=gen, device=self.device, dtype=self.dtype) * INIT_STD
            param.copy_(owner.shard(full, leaf) if sharded else full)
        for layer in self.layers:
            if layer.moe is not None:
                layer.moe.draw_route_offsets(gen)

    def setup_kv_cache(self, num_blocks: int, block_size: int = 16) -> torch.Tensor:
        """Allocate (or keep, when the size matches) the paged KV cache.

        Shape (n_layers, 2, num_blocks, block_size, n_kv_heads, head_dim), n_kv_heads this rank's under TP; block 0 is
        the scratch block.
        """
        s = self.local_spec
        shape = (s.n_layers, 2, num_blocks, block_size, s.n_kv_heads, s.head_dim)
        if self.kv_cache is None or tuple(self.kv_cache.shape) != shape:
            self.kv_cache = None
            self.kv_cache = torch.zeros(shape, device=self.device, dtype=self.dtype)
        return self.kv_cache

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Run one packed iteration.

        Args:
            input_ids: (T,) token ids, prefill chunks first, then one per decode sequence.
            positions: (T,) each token's position in its sequence.
            meta: where the tokens' K/V go and what they attend to.

        Returns:
            (N, vocab) logits at `meta.logits_indices`, float32.
        """
        if self.kv_cache is None:
            raise RuntimeError("call setup_kv_cache(num_blocks) before forward")
        x = self.embed(input_ids)  # (T, hidden)
        cos, sin = rope_cos_sin(positions, self.spec.head_dim, self.spec.rope_theta, x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, meta, self.kv_cache[i], self.decode_backend)
        x = self.norm(x[meta.logits_indices])  # (N, hidden)
        return self.lm_head(x).float()
