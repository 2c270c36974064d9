"""The GPU calibration grid: the operators any decoder iteration is made of, at the shapes real models give them.

A model-specific calibration measures whole iterations of one model. A GPU calibration measures the operator classes
instead, so that one sweep prices any decoder-only model (dense or mixture-of-experts) from its ModelSpec:

- `gemm`: a dense bf16 GEMM, (tokens x K) @ (K x N): the QKV, output, gate/up, down and LM-head projections;
- `prefill_attn`: causal varlen attention of prefill chunks over their context;
- `decode_attn`: paged decode attention, one query token per sequence over its cached context;
- `moe`: one mixture-of-experts MLP (router, top-k, grouped expert GEMMs, weighted sum) for a number of tokens;
- `rest`: a layer's elementwise work (two RMSNorms, RoPE, SwiGLU's gate, residual adds, the KV-cache write);
- `sample`: greedy sampling over the vocabulary.

Each point carries its physical size (FLOPs and bytes moved, counted here once for the fit) beside its shape. Pure
and torch-free: the fit reads the same points on machines without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tokenjoule.kernels.spec import ModelSpec

OPERATORS = ("gemm", "prefill_attn", "decode_attn", "moe", "rest", "sample")
# The models whose shapes a GPU calibration measures by default: dense ones from 1B to 32B and three MoE layouts.
SWEPT_MODELS = ("llama-3.2-1b", "llama-3.1-8b", "qwen2.5-7b", "qwen2.5-32b", "mistral-7b", "olmoe-1b-7b",
                "mixtral-8x7b", "qwen1.5-moe-a2.7b")
BF16_BYTES = 2
# Tokens per iteration the GEMMs are measured at: decode batches through long prefills.
GEMM_TOKENS = (1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
GEMM_TOKENS_QUICK = (1, 64, 512, 4096)
# Sequences per iteration the LM head and sampling run for (one row per sequence that samples).
SAMPLE_SEQS = (1, 16, 64, 256)
DECODE_BATCHES = (1, 8, 32, 128, 256)
DECODE_CONTEXTS = (512, 2048, 8192)
PREFILL_SHAPES = ((1, 128, 0), (1, 512, 0), (1, 2048, 0), (1, 8192, 0), (1, 512, 2048), (1, 512, 8192), (8, 256, 0))
REST_TOKENS = (1, 16, 128, 512, 2048, 8192)
MOE_TOKENS = (1, 8, 32, 128, 512, 2048, 8192)


@dataclass(frozen=True, slots=True)
class OperatorPoint:
    """One operator at one shape.

    Attributes:
        op: one of OPERATORS.
        shape: the operator's shape parameters by name (see `key` for their order).
        flops: floating-point operations of one call (multiply-adds count 2).
        bytes_moved: bytes one call must read or write at least (weights, activations, KV), bf16.
        models: the models whose iterations contain this point's shape (provenance; leave-one-model-out).
    """

    op: str
    shape: tuple[tuple[str, int], ...]
    flops: float
    bytes_moved: float
    models: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if self.op not in OPERATORS:
            raise ValueError(f"op={self.op!r} must be one of {OPERATORS}")

    @property
    def params(self) -> dict[str, int]:
        """The shape as a dict."""
        return dict(self.shape)

    @property
    def key(self) -> str:
        """A stable identifier, e.g. `gemm_m64_n6144_k4096`."""
        return "_".join([self.op] + [f"{name}{value}" for name, value in self.shape])

    def to_row(self) -> dict[str, Any]:
        """Flat fields for the raw Parquet table."""
        return {"point": self.key, "op": self.op, **self.params, "flops": self.flops, "bytes_moved": self.bytes_moved,
                "models": ",".join(self.models)}


def gemm_point(m: int, n: int, k: int, models: tuple[str, ...] = ()) -> OperatorPoint:
    """(m x k) @ (k x n) in bf16: 2mnk FLOPs; reads both operands, writes the product."""
    return OperatorPoint("gemm", (("m", m), ("n", n), ("k", k)), 2.0 * m * n * k,
                         BF16_BYTES * (m * k + n * k + m * n), models)


def prefill_attn_point(chunks: int, q_len: int, ctx: int, n_heads: int, n_kv_heads: int, head_dim: int,
                       models: tuple[str, ...] = ()) -> OperatorPoint:
    """`chunks` causal chunks of `q_len` new tokens over `ctx` cached tokens each.

    Each chunk scores q_len * ctx + q_len (q_len + 1) / 2 (query, key) pairs; each pair costs 4 head_dim FLOPs
    per query head (QK^T and the weighted sum of V). Bytes: Q and O once, K and V of the whole context once.
    """
    pairs = chunks * (q_len * ctx + q_len * (q_len + 1) / 2)
    qo = 2 * chunks * q_len * n_heads * head_dim
    kv = 2 * chunks * (ctx + q_len) * n_kv_heads * head_dim
    shape = (("chunks", chunks), ("q", q_len), ("ctx", ctx), ("heads", n_heads), ("kv_heads", n_kv_heads),
             ("head_dim", head_dim))
    return OperatorPoint("prefill_attn", shape, 4.0 * pairs * n_heads * head_dim, BF16_BYTES * (qo + kv), models)


def decode_attn_point(batch: int, ctx: int, n_heads: int, n_kv_heads: int, head_dim: int,
                      models: tuple[str, ...] = ()) -> OperatorPoint:
    """`batch` sequences of one query token over `ctx` cached tokens each: K and V streamed once per KV head."""
    flops = 4.0 * batch * ctx * n_heads * head_dim
    moved = BF16_BYTES * (2 * batch * ctx * n_kv_heads * head_dim + 2 * batch * n_heads * head_dim)
    shape = (("batch", batch), ("ctx", ctx), ("heads", n_heads), ("kv_heads", n_kv_heads), ("head_dim", head_dim))
    return OperatorPoint("decode_attn", shape, flops, moved, models)


def moe_point(tokens: int, spec: ModelSpec, models: tuple[str, ...] = ()) -> OperatorPoint:
    """One MoE MLP of `spec` for `tokens` tokens: router, top-k SwiGLU experts per token, optional shared expert.

    FLOPs: the router (2 tokens hidden E) and 3 GEMMs of 2 hidden ffn per token and expert it visits. Bytes: the
    weights of every expert touched (`ModelSpec.expected_experts_touched`, uniform routing) plus the shared expert's
    and the router's, and the activations.
    """
    hidden, ffn, top_k = spec.hidden_size, spec.moe_intermediate_size, spec.n_experts_per_token
    shared = spec.shared_expert_intermediate_size
    flops = 6.0 * tokens * (top_k * ffn + shared) * hidden + 2.0 * tokens * hidden * spec.n_experts
    weights = spec.expected_experts_touched(tokens) * 3 * hidden * ffn + 3 * hidden * shared + hidden * spec.n_experts
    activations = tokens * top_k * (2 * hidden + 3 * ffn)
    shape = (("tokens", tokens), ("hidden", hidden), ("ffn", ffn), ("experts", spec.n_experts), ("top_k", top_k),
             ("shared_ffn", shared), ("shared_gate", int(spec.shared_expert_gate)),
             ("norm_topk", int(spec.norm_topk_prob)))
    return OperatorPoint("moe", shape, flops, BF16_BYTES * (weights + activations), models)


def rest_point(tokens: int, hidden: int, ffn: int, n_heads: int, n_kv_heads: int, head_dim: int,
               models: tuple[str, ...] = ()) -> OperatorPoint:
    """A layer's elementwise work for `tokens` tokens (memory-bound: counted in bytes, FLOPs ~ elements).

    Two RMSNorms (read + write hidden each), RoPE on Q and K heads (read + write), SwiGLU's silu(gate) * up (read
    2 ffn, write ffn), two residual adds (read 2, write 1 hidden each) and the K/V cache write (kv heads).
    """
    qk = (n_heads + n_kv_heads) * head_dim
    elements = tokens * (4 * hidden + 2 * qk + 3 * ffn + 6 * hidden + 2 * n_kv_heads * head_dim)
    shape = (("tokens", tokens), ("hidden", hidden), ("ffn", ffn), ("heads", n_heads), ("kv_heads", n_kv_heads),
             ("head_dim", head_dim))
    return OperatorPoint("rest", shape, float(elements), float(BF16_BYTES * elements), models)


def sample_point(seqs: int, vocab: int, models: tuple[str, ...] = ()) -> OperatorPoint:
    """Greedy sampling: an argmax over each sequence's logits."""
    return OperatorPoint("sample", (("seqs", seqs), ("vocab", vocab)), float(seqs * vocab),
                         float(BF16_BYTES * seqs * vocab), models)


def model_gemms(spec: ModelSpec) -> dict[str, tuple[int, int]]:
    """(n, k) of each dense GEMM of one layer and of the LM head; experts are in `moe` points instead."""
    gemms = {"qkv": (spec.q_size + 2 * spec.kv_size, spec.hidden_size), "o": (spec.hidden_size, spec.q_size)}
    if not spec.is_moe:
        gemms["gate_up"] = (2 * spec.intermediate_size, spec.hidden_size)
        gemms["down"] = (spec.hidden_size, spec.intermediate_size)
    gemms["lm_head"] = (spec.vocab_size, spec.hidden_size)
    return gemms


@dataclass(frozen=True, slots=True)
class OperatorGrid:
    """Which models' shapes a GPU sweep covers, and how densely.

    Attributes:
        models: ModelSpecs whose operator shapes are measured.
        quick: a few points per operator (tests and smoke runs).
    """

    models: tuple[ModelSpec, ...]
    quick: bool = False

    def points(self) -> list[OperatorPoint]:
        """Every point, each shape once (the models sharing it listed on it), in a stable order."""
        found: dict[tuple[str, tuple[tuple[str, int], ...]], OperatorPoint] = {}
        for spec in self.models:
            for point in self._model_points(spec):
                key = (point.op, point.shape)
                seen = found.get(key)
                models = (seen.models if seen else ()) + (spec.name,)
                found[key] = OperatorPoint(point.op, point.shape, point.flops, point.bytes_moved, models)
        return sorted(found.values(), key=lambda p: (OPERATORS.index(p.op), p.shape))

    def _model_points(self, spec: ModelSpec) -> list[OperatorPoint]:
        pick = (lambda values: values[:: max(1, len(values) // 2)]) if self.quick else (lambda values: values)
        gemm_tokens = GEMM_TOKENS_QUICK if self.quick else GEMM_TOKENS
        heads = (spec.n_heads, spec.n_kv_heads, spec.head_dim)
        points = []
        for name, (n, k) in model_gemms(spec).items():
            tokens = pick(SAMPLE_SEQS) if name == "lm_head" else gemm_tokens
            points += [gemm_point(m, n, k) for m in tokens]
        points += [decode_attn_point(b, c, *heads) for b in pick(DECODE_BATCHES) for c in pick(DECODE_CONTEXTS)]
        points += [prefill_attn_point(ch, q, c, *heads) for ch, q, c in pick(PREFILL_SHAPES)]
        ffn = spec.moe_intermediate_size if spec.is_moe else spec.intermediate_size
        points += [rest_point(t, spec.hidden_size, ffn, *heads) for t in pick(REST_TOKENS)]
        if spec.is_moe:
            points += [moe_point(t, spec) for t in pick(MOE_TOKENS)]
        points += [sample_point(s, spec.vocab_size) for s in pick(SAMPLE_SEQS)]
        return points
