"""Fixtures for the engine tests: a tiny spec, a dense float64 reference model, and Triton's CPU interpreter.

They need no torch until used, so the torch-free tests here (block manager, spec, scheduler) run without it.
"""

from __future__ import annotations

import math
import os

import pytest

try:
    import torch
except ImportError:  # the `test` extra has no torch: the modules that need it skip themselves, the rest still run
    torch = None

# Triton kernels run on CPU only in interpreter mode; set it before triton loads.
if torch is not None and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from tokenjoule.kernels.spec import ModelSpec  # noqa: E402

TINY = ModelSpec(name="tiny", n_layers=2, hidden_size=64, n_heads=4, n_kv_heads=2, head_dim=16,
                 intermediate_size=128, vocab_size=128, dtype="float32", rope_theta=10000.0)


@pytest.fixture
def tiny_spec() -> ModelSpec:
    """2 layers, 64 hidden, 4 heads, 2 KV heads, vocab 128, float32."""
    return TINY


@pytest.fixture
def tiny_moe_spec() -> ModelSpec:
    """The tiny spec with MoE layers: 4 experts of width 32, top-2, a gated shared expert of width 48, qk-norm."""
    import dataclasses

    return dataclasses.replace(TINY, name="tiny-moe", n_experts=4, n_experts_per_token=2, moe_intermediate_size=32,
                               shared_expert_intermediate_size=48, shared_expert_gate=True, qk_norm=True)


@pytest.fixture
def tiny_qwen_spec() -> ModelSpec:
    """The tiny spec with Qwen2's qkv bias."""
    import dataclasses

    return dataclasses.replace(TINY, name="tiny-qwen", qkv_bias=True)


def reference_logits(model, tokens: list[int]) -> "torch.Tensor":
    """Dense causal forward of one sequence in float64, straight from the model's weights: (T, vocab) logits."""
    spec = model.spec
    sd = {k: v.detach().to("cpu", torch.float64) for k, v in model.state_dict().items()}
    n = len(tokens)
    x = sd["embed.weight"][torch.tensor(tokens)]
    half = spec.head_dim // 2
    angles = torch.tensor([[p / spec.rope_theta ** (2 * i / spec.head_dim) for i in range(half)] for p in range(n)],
                          dtype=torch.float64)
    cos, sin = angles.cos(), angles.sin()

    def rope(t):  # t: (n, heads, head_dim); rotate pairs (i, i + half)
        a, b = t[..., :half], t[..., half:]
        c, s = cos[:, None, :], sin[:, None, :]
        return torch.cat([a * c - b * s, b * c + a * s], dim=-1)

    def rms(t, w):
        return t / torch.sqrt((t * t).mean(-1, keepdim=True) + spec.rms_norm_eps) * w

    group = spec.n_heads // spec.n_kv_heads
    mask = torch.full((n, n), float("-inf"), dtype=torch.float64).triu(1)
    for i in range(spec.n_layers):
        p = f"layers.{i}."
        h = rms(x, sd[p + "attn_norm.weight"])
        qkv = h @ sd[p + "wqkv.weight"].T
        if spec.qkv_bias:
            qkv = qkv + sd[p + "wqkv.bias"]
        q, k = qkv[:, : spec.q_size], qkv[:, spec.q_size: spec.q_size + spec.kv_size]
        if spec.qk_norm:
            q, k = rms(q, sd[p + "q_norm.weight"]), rms(k, sd[p + "k_norm.weight"])
        q = rope(q.reshape(n, spec.n_heads, spec.head_dim))
        k = rope(k.reshape(n, spec.n_kv_heads, spec.head_dim))
        v = qkv[:, spec.q_size + spec.kv_size:].reshape(n, spec.n_kv_heads, spec.head_dim)
        heads = []
        for hq in range(spec.n_heads):
            hk = hq // group
            scores = q[:, hq] @ k[:, hk].T / math.sqrt(spec.head_dim) + mask
            heads.append(scores.softmax(-1) @ v[:, hk])
        x = x + torch.cat(heads, dim=-1) @ sd[p + "wo.weight"].T
        h = rms(x, sd[p + "mlp_norm.weight"])
        if p + "moe.router.weight" in sd:
            x = x + _moe_reference(spec, sd, p + "moe.", h)
            continue
        gate_up = h @ sd[p + "w_gate_up.weight"].T
        gate, up = gate_up[:, : spec.intermediate_size], gate_up[:, spec.intermediate_size:]
        x = x + (gate * torch.sigmoid(gate) * up) @ sd[p + "w_down.weight"].T
    x = rms(x, sd["norm.weight"])
    return x @ sd["lm_head.weight"].T


def _moe_reference(spec, sd, p, h):
    """Token by token: softmax router, top-k (renormalised if asked), the chosen experts' SwiGLU, the shared one."""
    def swiglu(t, w_gate_up, w_down):
        gate, up = (t @ w_gate_up.T).chunk(2, dim=-1)
        return (gate * torch.sigmoid(gate) * up) @ w_down.T

    probs = (h @ sd[p + "router.weight"].T).softmax(-1)
    out = torch.zeros_like(h)
    for t in range(h.shape[0]):
        weights, experts = probs[t].topk(spec.n_experts_per_token)
        if spec.norm_topk_prob:
            weights = weights / weights.sum()
        for w, e in zip(weights.tolist(), experts.tolist(), strict=True):
            out[t] += w * swiglu(h[t], sd[p + "w_gate_up"][e], sd[p + "w_down"][e])
    if spec.shared_expert_intermediate_size:
        shared = swiglu(h, sd[p + "shared_gate_up.weight"], sd[p + "shared_down.weight"])
        if spec.shared_expert_gate:
            shared = torch.sigmoid(h @ sd[p + "shared_gate.weight"].T) * shared
        out = out + shared
    return out


@pytest.fixture
def reference():
    """The dense float64 reference forward, `reference(model, tokens) -> (T, vocab)`."""
    return reference_logits
