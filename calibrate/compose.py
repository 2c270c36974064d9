"""Compose a model-specific profile from a GPU profile and a ModelSpec: every iteration cost *modeled*, none measured.

The result is an ordinary `GPUProfile`, so the simulator prices it with its one cost model (`sim/cost.py`). What is
modeled, per iteration of `x` new tokens (`cost_form.py`'s form):

- decode-only curve at knot x (x sequences; with CUDA graphs the batch runs padded to its graph bucket b(x),
  `kernels/shape.graph_buckets`, so the weights pass, attention's fixed part, LM head and sampling are priced at
  b(x) rows, and the decode knots sit at each bucket and one past it, which makes the piecewise-linear curve the
  engine's step function at whole batches): per layer the dense GEMMs (QKV, O, gate/up, down; MoE layers the `moe`
  operator with `spec.expected_experts_touched(x)` experts), the elementwise `rest`, and decode attention's fixed
  part (its constant plus the x queries' Q/O bytes); times the layers; plus the LM head GEMM and greedy sampling for
  x rows, plus one CUDA-graph replay + synchronize of host time (at idle power); with the GPU profile's fitted
  `overheads`, plus `graph_gap_s_per_layer` x layers (at `graph_gap_power_w`) and the runner's input preparation,
  `decode_host_s_per_seq` x x (at idle power);
- in eager mode (`gpu.mode == "eager"`) the decode knots are unpadded and host-floored as prefill knots are (every
  kernel launched from Python), without the graph terms;
- prefill curve at knot x: the same layers at x tokens, prefill attention's fixed part (constant plus Q/O/K/V bytes
  of x new tokens), the LM head and sampling for one row; the iteration takes max(this GPU time, host time) plus
  the fitted `host_exposed_fraction` of the shorter of the two (launches and kernels overlap only in part), host
  time = the eager launches counted in `eager_launches` x the host seconds per launch (the fitted
  `eager_host_s_per_launch`; without overheads the bare measured launch cost); a host-bound iteration's GPU waits at
  `host_wait_power_w` (without overheads: idle power) for the time beyond its own work, a GPU-bound one's exposed
  share (bubbles between its kernels) is priced at its own work's mean power;
- the attention coefficients: `prefill_attn_pairs` from the prefill-attention fit's FLOPs term (4 head_dim FLOPs per
  pair and query head), `prefill_ctx_tokens` from its bytes term (K and V of each cached token), `decode_ctx_tokens`
  the decode-attention fit's slope per context token at a reference batch (`DECODE_REF`), each times the layers;
  energy coefficients are the same terms through the class's energy fit; `decode_tail_ctx_tokens` (with the engine's
  decode split rule) is the fitted `decode_tail_s_per_token` x layers, at decode attention's busy power. No
  per-sequence term.

KV capacity: the GPU's measured memory x `gpu_memory_utilization` minus the weights and an activation reserve, over
`spec.kv_bytes_per_token`; a model that does not leave `min_kv_tokens` is a ConfigError. Not modeled: the serving
loop's host work between iterations unless the overheads fitted it (`serving_host_s_*` terms: then the profile's
`host_overhead`, which the simulator adds to every iteration at idle power), tensor parallelism's communication, real
routers' skew (uniform routing is assumed). The overheads are fitted on measured whole iterations of several models
(`calibrate/overhead_fit.py`; which ones, the GPU profile's `overheads.fitted_on` says); the costs stay modeled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tokenjoule.calibrate.cost_form import CostCurve, DecodeSplitRule
from tokenjoule.calibrate.gpu_fit import OperatorFit, point_terms
from tokenjoule.calibrate.gpu_profile import GPUOperatorProfile
from tokenjoule.calibrate.profile import GPUProfile, HostOverhead
from tokenjoule.calibrate.sweep.operator_grid import (
    OperatorPoint,
    decode_attn_point,
    gemm_point,
    model_gemms,
    moe_point,
    prefill_attn_point,
    rest_point,
    sample_point,
)
from tokenjoule.kernels.shape import MAX_SPLITS, TARGET_PROGRAMS, graph_buckets
from tokenjoule.kernels.spec import ConfigError, ModelSpec

# Prefill knots (and eager decode knots): dense enough that the chord between two knots stays close to the concave
# cost of a weights pass (memory-bound, then compute-bound) and of an MoE layer (experts touched saturate).
KNOTS_TOKENS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072,
                4096, 6144, 8192, 12288, 16384)
# Eager kernel launches of the engine's prefill, counted in kernels/model.py's forward (CUDA path). Attention half of
# a layer: RMSNorm, QKV GEMM, RoPE (neg, cat, 2 mul, add), 2 KV index_copy, varlen attention, O GEMM, residual add.
ATTN_LAUNCHES = 12
QK_NORM_LAUNCHES = 3  # two RMSNorms and a cat (OLMoE)
# Dense MLP: RMSNorm, gate/up GEMM, silu, mul, down GEMM, residual add.
DENSE_MLP_LAUNCHES = 6
# MoE MLP (grouped experts): RMSNorm, router GEMM, the balanced routing offsets' add (`kernels.model.MOE_ROUTINGS`),
# float, softmax, topk, argsort, arange, gather, searchsorted, int32 cast, row index, gather rows, 2 grouped GEMMs,
# silu, mul, scatter back, weight cast, weight mul, sum, residual add.
MOE_MLP_LAUNCHES = 22
TOPK_RENORM_LAUNCHES = 2  # sum and divide (norm_topk_prob)
SHARED_EXPERT_LAUNCHES = 5  # gate/up GEMM, silu, mul, down GEMM, add; a sigmoid gate adds 3 (GEMM, sigmoid, mul)
# Once per eager iteration: embedding, RoPE tables (11 small kernels), 6 host-to-device input copies, the sampled rows'
# gather, final norm, LM head, float cast, argmax and the device-to-host read of the tokens.
ITERATION_LAUNCHES = 24
# The decode batch and context where the decode-attention slope per context token is taken.
DECODE_REF = (64, 2048)


@dataclass(frozen=True, slots=True)
class ComposeConfig:
    """Settings of the composition that are modeling choices.

    Attributes:
        gpu_memory_utilization: memory fraction for weights, activations and KV.
        activation_reserve_bytes: memory kept for activations and workspaces (a modeled guess; the measured H200
            Llama-3.1-8B profile left 9.3 GB).
        min_kv_tokens: the least KV cache a model must fit to be served.
        graph_max_num_seqs: the largest CUDA-graph batch of the engine (its buckets pad decode batches; CUDA-graph
            mode only).
    """

    gpu_memory_utilization: float = 0.9
    activation_reserve_bytes: int = 8 * 2**30
    min_kv_tokens: int = 4096
    graph_max_num_seqs: int = 512


def decode_knots(mode: str, config: ComposeConfig) -> tuple[tuple[int, int], ...]:
    """(knot x, rows the engine runs at x) of the decode curve.

    Each graph bucket and one past it, padded to the next bucket, up to the largest; then (and in eager mode
    throughout) `KNOTS_TOKENS` unpadded.
    """
    if mode != "cudagraph":
        return tuple((x, x) for x in KNOTS_TOKENS)
    buckets = graph_buckets(config.graph_max_num_seqs)
    xs = sorted({1, *buckets, *(b + 1 for b in buckets[:-1])})
    padded = [(x, next(b for b in buckets if b >= x)) for x in xs]
    return tuple(padded) + tuple((x, x) for x in KNOTS_TOKENS if x > buckets[-1])


def _cost(fit: OperatorFit, point: OperatorPoint) -> tuple[float, float]:
    t, e = fit.cost(**point_terms(point.op, point.params, point.flops, point.bytes_moved))
    return float(t), float(e)


def _sum(*costs: tuple[float, float]) -> tuple[float, float]:
    return sum(c[0] for c in costs), sum(c[1] for c in costs)


def _scale(cost: tuple[float, float], k: float) -> tuple[float, float]:
    return cost[0] * k, cost[1] * k


def _layers(gpu: GPUOperatorProfile, spec: ModelSpec, x: int) -> tuple[float, float]:
    """Weights and elementwise work of all layers for x tokens (attention excluded)."""
    ops = gpu.operators
    gemms = model_gemms(spec)
    heads = (spec.n_heads, spec.n_kv_heads, spec.head_dim)
    attn_proj = _sum(*(_cost(ops["gemm"], gemm_point(x, *gemms[name])) for name in ("qkv", "o")))
    n_moe = spec.n_moe_layers
    total = _scale(attn_proj, spec.n_layers)
    if n_moe:
        ffn = spec.moe_intermediate_size
        moe = _sum(_cost(ops["moe"], moe_point(x, spec)), _cost(ops["rest"], rest_point(x, spec.hidden_size, ffn,
                                                                                          *heads)))
        total = _sum(total, _scale(moe, n_moe))
    if spec.n_layers - n_moe:
        ffn = spec.intermediate_size
        dense = _sum(_cost(ops["gemm"], gemm_point(x, 2 * ffn, spec.hidden_size)),
                     _cost(ops["gemm"], gemm_point(x, spec.hidden_size, ffn)),
                     _cost(ops["rest"], rest_point(x, spec.hidden_size, ffn, *heads)))
        total = _sum(total, _scale(dense, spec.n_layers - n_moe))
    return total


def _head(gpu: GPUOperatorProfile, spec: ModelSpec, rows: int) -> tuple[float, float]:
    """LM head and greedy sampling for `rows` sampled rows."""
    n, k = model_gemms(spec)["lm_head"]
    return _sum(_cost(gpu.operators["gemm"], gemm_point(rows, n, k)),
                _cost(gpu.operators["sample"], sample_point(rows, spec.vocab_size)))


def decode_knot(gpu: GPUOperatorProfile, spec: ModelSpec, x: int, rows: int | None = None) -> tuple[float, float]:
    """(s, J) of the decode-only curve at x sequences run as `rows` rows (padded; default x), context terms apart."""
    rows = x if rows is None else rows
    heads = (spec.n_heads, spec.n_kv_heads, spec.head_dim)
    attn = _scale(_cost(gpu.operators["decode_attn"], decode_attn_point(rows, 0, *heads)), spec.n_layers)
    if gpu.mode == "eager":  # every kernel launched from Python, as a prefill is
        return _host_floored(gpu, spec, _sum(_layers(gpu, spec, rows), attn, _head(gpu, spec, rows)))
    host = gpu.launch.graph_replay_sync_s
    costs = [_layers(gpu, spec, rows), attn, _head(gpu, spec, rows), (host, host * gpu.idle_power_w)]
    ov = gpu.overheads
    if ov is not None:
        gap = ov.graph_gap_s_per_layer * spec.n_layers
        prep = ov.decode_host_s_per_seq * x
        costs += [(gap, gap * ov.graph_gap_power_w), (prep, prep * gpu.idle_power_w)]
    return _sum(*costs)


def eager_launches(spec: ModelSpec) -> int:
    """Kernel launches of one eager (prefill) iteration of `spec` on the engine, counted per layer kind."""
    attn = ATTN_LAUNCHES + (QK_NORM_LAUNCHES if spec.qk_norm else 0)
    moe = (MOE_MLP_LAUNCHES + (TOPK_RENORM_LAUNCHES if spec.norm_topk_prob else 0)
           + (SHARED_EXPERT_LAUNCHES if spec.shared_expert_intermediate_size else 0)
           + (3 if spec.shared_expert_gate else 0))
    n_moe = spec.n_moe_layers
    return ITERATION_LAUNCHES + spec.n_layers * attn + n_moe * moe + (spec.n_layers - n_moe) * DENSE_MLP_LAUNCHES


def prefill_gpu_knot(gpu: GPUOperatorProfile, spec: ModelSpec, x: int) -> tuple[float, float]:
    """(s, J) of the GPU's own work in a prefill of x new tokens (attention pairs and cached context apart)."""
    point = prefill_attn_point(1, x, 0, spec.n_heads, spec.n_kv_heads, spec.head_dim)
    fixed = OperatorPoint("prefill_attn", point.shape, 0.0, point.bytes_moved)  # its FLOPs are the pairs' term
    attn = _scale(_cost(gpu.operators["prefill_attn"], fixed), spec.n_layers)
    return _sum(_layers(gpu, spec, x), attn, _head(gpu, spec, 1))


def eager_host_s(gpu: GPUOperatorProfile, spec: ModelSpec) -> float:
    """Host seconds of one eager iteration's launches: counted launches x the (fitted, else bare) seconds per launch."""
    ov = gpu.overheads
    return eager_launches(spec) * (ov.eager_host_s_per_launch if ov else gpu.launch.eager_launch_s)


def host_bound_prefill(gpu: GPUOperatorProfile, spec: ModelSpec,
                       gpu_knots: list[tuple[float, float]]) -> dict[str, float | int | None]:
    """Where the composed prefill curve sits on the host's launch time rather than on the GPU's work.

    Returns:
        `host_s` (`eager_host_s`) and `gpu_exceeds_host_at_tokens`: the first prefill knot whose GPU time reaches it
        (prefills shorter than that are priced at the host's speed; None: every knot is).
    """
    host = eager_host_s(gpu, spec)
    first = next((x for x, (t, _) in zip(KNOTS_TOKENS, gpu_knots, strict=True) if t >= host), None)
    return {"host_s": host, "gpu_exceeds_host_at_tokens": first}


def _host_floored(gpu: GPUOperatorProfile, spec: ModelSpec, cost: tuple[float, float]) -> tuple[float, float]:
    """An eager iteration: max(GPU time, the host's launches) plus the exposed share of the shorter of the two.

    Where the host is the longer, the GPU waits on it, at its waiting power, for the time the iteration lasts beyond
    its own work. Where the GPU is the longer, the exposed share is microsecond bubbles between its own kernels, too
    short for its clocks or power to drop: that time is priced at the GPU work's own mean power (the dense 7-8B
    models' measured prefills of 1,024 tokens drew about 700 W, the power limit, and read 4-10% low with their
    bubbles at the waiting power).
    """
    t, e = cost
    ov = gpu.overheads
    wait_w = ov.host_wait_power_w if ov else gpu.idle_power_w
    exposed = ov.host_exposed_fraction if ov else 0.0
    host = eager_host_s(gpu, spec)
    bubbles = exposed * min(host, t)
    bubble_w = e / t if t >= host and t > 0 else wait_w
    return max(host, t) + bubbles, e + bubbles * bubble_w + (max(host, t) - t) * wait_w


def serving_host(gpu: GPUOperatorProfile) -> HostOverhead | None:
    """The serving loop's host time between iterations from the fitted overheads (None where it was not fitted)."""
    ov = gpu.overheads
    if ov is None or not (ov.serving_host_s_per_iteration or ov.serving_host_s_per_seq
                          or ov.serving_host_s_per_prefill_seq):
        return None
    return HostOverhead(ov.serving_host_s_per_iteration, ov.serving_host_s_per_seq,
                        method="fitted on measured replay iterations of other models (GPU profile overheads)",
                        per_prefill_seq_s=ov.serving_host_s_per_prefill_seq)


def attention_coef(gpu: GPUOperatorProfile, spec: ModelSpec) -> tuple[dict[str, float], dict[str, float]]:
    """Latency (s) and energy (J) coefficients of the attention features, all layers."""
    L, hd = spec.n_layers, spec.head_dim  # noqa: N806
    pre = gpu.operators["prefill_attn"]
    pair_flops = 4.0 * spec.n_heads * hd
    ctx_bytes = 2.0 * 2 * spec.n_kv_heads * hd  # K and V of one cached token, bf16
    dec = gpu.operators["decode_attn"]
    b, c = DECODE_REF
    heads = (spec.n_heads, spec.n_kv_heads, spec.head_dim)
    t_ref, e_ref = _cost(dec, decode_attn_point(b, c, *heads))
    t_0, e_0 = _cost(dec, decode_attn_point(b, 0, *heads))
    pre_t = {"prefill_attn_pairs": pair_flops * pre.time_coef["flops"],
             "prefill_ctx_tokens": ctx_bytes * pre.time_coef["bytes"]}
    pre_e = {name: pre.energy_j(value, **({"flops": pair_flops} if name == "prefill_attn_pairs"
                                          else {"bytes": ctx_bytes})) for name, value in pre_t.items()}
    latency = {**{k: float(v) * L for k, v in pre_t.items()}, "decode_ctx_tokens": (t_ref - t_0) / (b * c) * L}
    energy = {**{k: float(v) * L for k, v in pre_e.items()}, "decode_ctx_tokens": (e_ref - e_0) / (b * c) * L}
    tail = gpu.overheads.decode_tail_s_per_token * L if gpu.overheads else 0.0
    if tail:
        latency["decode_tail_ctx_tokens"] = tail
        energy["decode_tail_ctx_tokens"] = tail * dec.energy_coef["time_s"]
    return latency, energy


def kv_capacity_tokens(gpu: GPUOperatorProfile, spec: ModelSpec, config: ComposeConfig) -> int:
    """KV tokens left on the GPU after weights and the activation reserve; ConfigError when too few."""
    free = gpu.memory_bytes * config.gpu_memory_utilization - spec.weight_bytes - config.activation_reserve_bytes
    tokens = int(free // spec.kv_bytes_per_token)
    if tokens < config.min_kv_tokens:
        raise ConfigError(f"model {spec.name} ({spec.weight_bytes / 1e9:.1f} GB of weights) does not fit on one "
                          f"{gpu.gpu.get('name', 'GPU')} ({gpu.memory_bytes / 1e9:.1f} GB) with {config.min_kv_tokens} "
                          "KV tokens; pick a smaller model or a measured tensor-parallel profile")
    return tokens


def compose_profile(gpu: GPUOperatorProfile, spec: ModelSpec, source: str = "",
                    config: ComposeConfig | None = None) -> GPUProfile:
    """A model-specific profile of `spec` on `gpu`'s GPU, every cost modeled from its operator fits.

    Args:
        gpu: the GPU profile.
        spec: the model.
        source: where the GPU profile came from (stored in `method` and `notes`).
        config: modeling choices (defaults: `ComposeConfig()`).

    Returns:
        A tp=1 GPUProfile marked as composed in `method["composed"]`, `method["cost"]` and `notes`.

    Raises:
        ConfigError: the model does not fit on the GPU.
    """
    config = config or ComposeConfig()
    capacity = kv_capacity_tokens(gpu, spec, config)
    dknots = decode_knots(gpu.mode, config)
    decode = [decode_knot(gpu, spec, x, rows) for x, rows in dknots]
    gpu_prefill = [prefill_gpu_knot(gpu, spec, x) for x in KNOTS_TOKENS]
    prefill = [_host_floored(gpu, spec, cost) for cost in gpu_prefill]
    lat_coef, en_coef = attention_coef(gpu, spec)
    knots, pknots = tuple(float(x) for x, _ in dknots), tuple(float(x) for x in KNOTS_TOKENS)
    latency = CostCurve(knots, tuple(v[0] for v in decode), lat_coef, "s", pknots, tuple(v[0] for v in prefill))
    energy = CostCurve(knots, tuple(v[1] for v in decode), en_coef, "J", pknots, tuple(v[1] for v in prefill))
    errors: dict[str, Any] = {op: fit.errors for op, fit in gpu.operators.items()}
    settings = {"knots_tokens": list(KNOTS_TOKENS), "decode_knots_rows": [list(k) for k in dknots],
                "graph_max_num_seqs": config.graph_max_num_seqs, "eager_launches": eager_launches(spec),
                "host_bound_prefill": host_bound_prefill(gpu, spec, gpu_prefill),
                "decode_ref": list(DECODE_REF), "gpu_memory_utilization": config.gpu_memory_utilization,
                "activation_reserve_bytes": config.activation_reserve_bytes,
                "overheads": gpu.overheads.to_dict() if gpu.overheads else None}
    return GPUProfile(
        gpu=dict(gpu.gpu), host=dict(gpu.host), software=dict(gpu.software),
        method={"composed": True, "cost": "modeled: composed from GPU operator fits (calibrate/compose.py)",
                "gpu_profile": source or gpu.label, "compose": settings},
        date=gpu.date, engine=gpu.engine, mode=gpu.mode, model=spec, tp=1, idle_power_w=gpu.idle_power_w,
        kv_capacity_tokens=capacity, latency=latency, energy=energy, fit_errors={"operators": errors},
        decode_split_rule=DecodeSplitRule(TARGET_PROGRAMS, MAX_SPLITS, spec.n_kv_heads),
        raw_path=None, host_overhead=serving_host(gpu),
        notes=f"COMPOSED (modeled): {spec.name} priced from the GPU profile {source or gpu.label}; no iteration of "
              "this model was measured. See calibrate/compose.py for what is modeled.")
