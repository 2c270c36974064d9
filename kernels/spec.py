"""Model shapes (ModelSpec, dense and mixture-of-experts) and a registry of well-known decoder-only LLMs. Torch-free.

The simulator reads these for KV-cache sizing, weight bytes and FLOP counts; the engine builds its model from them.
Shapes are copied from each model's Hugging Face `config.json`.

Mixture-of-experts (MoE) support: a layer's MLP is either the dense SwiGLU MLP (`intermediate_size`) or a router
(hidden -> n_experts logits, softmax, top-k, optionally renormalised) over `n_experts` SwiGLU experts of width
`moe_intermediate_size`, plus optionally one always-on shared SwiGLU expert of width
`shared_expert_intermediate_size` (n shared experts of width w are the same work as one of width n * w), scaled by a
sigmoid gate (hidden -> 1) when `shared_expert_gate` (Qwen2-MoE). Which layers are MoE follows Qwen2-MoE's rule:
layer i is MoE when `(i + 1) % moe_layer_step == 0` and i is not in `dense_layers`; by default every layer is.
Not supported (from_hf_config refuses them by name): DeepSeek-style MoE (`n_routed_experts`,
`first_k_dense_replace`, grouped routing) and multi-head latent attention (`kv_lora_rank`, `q_lora_rank`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


class ConfigError(ValueError):
    """An impossible configuration or a bad setting: a model shape, a simulator config, a command's flag value.

    Declared here, in the lowest layer that validates user settings (kernels, calibrate and sim all read it); the
    `tokenjoule` command prints it as one line. Being a ValueError, callers that catch ValueError still do.
    """


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """The shape of a Llama-style decoder (GQA, RoPE, RMSNorm, SwiGLU), dense or mixture-of-experts.

    Attributes:
        name: registry name, e.g. "llama-3.1-8b".
        n_layers: transformer blocks.
        hidden_size: model width.
        n_heads: query heads.
        n_kv_heads: key/value heads (GQA); must divide n_heads.
        head_dim: width of one head.
        intermediate_size: SwiGLU hidden width of a dense layer's MLP.
        vocab_size: tokens in the vocabulary.
        dtype: weight and KV-cache dtype name ("bfloat16", "float16", "float32").
        rope_theta: RoPE base frequency.
        rms_norm_eps: RMSNorm epsilon.
        tie_embeddings: whether the LM head shares the embedding matrix.
        qkv_bias: whether q/k/v projections carry a bias (Qwen2).
        max_position_embeddings: longest context the model was trained for, in tokens (prompt plus output); None
            where unknown (a profile that does not record it, see `GPUProfile.from_dict`).
        qk_norm: RMSNorm over the whole q and k projections before RoPE (OLMoE), weights of width q_size, kv_size.
        n_experts: routed experts per MoE layer (E); 0 makes a dense model and every MoE field below must be unset.
        n_experts_per_token: experts each token is routed to (top-k).
        moe_intermediate_size: SwiGLU hidden width of one routed expert.
        shared_expert_intermediate_size: SwiGLU width of the always-on shared expert(s); 0 for none.
        shared_expert_gate: whether a sigmoid gate (hidden -> 1) scales the shared expert's output (Qwen2-MoE).
        norm_topk_prob: whether the top-k routing weights are renormalised to sum to 1 (Mixtral: yes).
        moe_layer_step: every `moe_layer_step`-th layer is MoE (Qwen2-MoE `decoder_sparse_step`).
        dense_layers: layer indices that keep the dense MLP (Qwen2-MoE `mlp_only_layers`).
    """

    name: str
    n_layers: int
    hidden_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    dtype: str = "bfloat16"
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = False
    qkv_bias: bool = False
    max_position_embeddings: int | None = 131072
    qk_norm: bool = False
    n_experts: int = 0
    n_experts_per_token: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    shared_expert_gate: bool = False
    norm_topk_prob: bool = False
    moe_layer_step: int = 1
    dense_layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        sizes = ("n_layers", "hidden_size", "n_heads", "n_kv_heads", "head_dim", "intermediate_size", "vocab_size")
        for field in sizes:
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"ModelSpec {self.name!r}: {field}={value!r} must be a positive integer")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"ModelSpec {self.name!r}: n_kv_heads={self.n_kv_heads} "
                              f"must divide n_heads={self.n_heads}")
        if self.dtype not in DTYPE_BYTES:
            raise ConfigError(f"ModelSpec {self.name!r}: dtype={self.dtype!r} must be one of {sorted(DTYPE_BYTES)}")
        context = self.max_position_embeddings
        if context is not None and (not isinstance(context, int) or context <= 0):
            raise ConfigError(f"ModelSpec {self.name!r}: max_position_embeddings={context!r} must be a positive "
                              "integer (or null where unknown)")
        self._validate_moe()

    def _validate_moe(self) -> None:
        for field in ("n_experts", "n_experts_per_token", "moe_intermediate_size", "shared_expert_intermediate_size"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"ModelSpec {self.name!r}: {field}={value!r} must be a non-negative integer")
        if not isinstance(self.dense_layers, tuple):  # a list from JSON would make the frozen spec unhashable
            object.__setattr__(self, "dense_layers", tuple(self.dense_layers))
        if self.n_experts == 0:
            moe_only = ("n_experts_per_token", "moe_intermediate_size", "shared_expert_intermediate_size",
                        "shared_expert_gate", "norm_topk_prob", "dense_layers")
            for field in moe_only:
                if getattr(self, field):
                    raise ConfigError(f"ModelSpec {self.name!r}: {field}={getattr(self, field)!r} needs n_experts > 0")
            if self.moe_layer_step != 1:
                raise ConfigError(f"ModelSpec {self.name!r}: moe_layer_step={self.moe_layer_step!r} "
                                  "needs n_experts > 0")
            return
        if not 1 <= self.n_experts_per_token <= self.n_experts:
            raise ConfigError(f"ModelSpec {self.name!r}: n_experts_per_token={self.n_experts_per_token!r} "
                             f"must be in 1..n_experts={self.n_experts}")
        if self.moe_intermediate_size <= 0:
            raise ConfigError(f"ModelSpec {self.name!r}: moe_intermediate_size={self.moe_intermediate_size!r} "
                             "must be a positive integer for an MoE model")
        if self.shared_expert_gate and not self.shared_expert_intermediate_size:
            raise ConfigError(f"ModelSpec {self.name!r}: shared_expert_gate=True needs shared_expert_intermediate_size")
        if not isinstance(self.moe_layer_step, int) or self.moe_layer_step < 1:
            raise ConfigError(f"ModelSpec {self.name!r}: moe_layer_step={self.moe_layer_step!r} must be >= 1")
        bad = [i for i in self.dense_layers if not isinstance(i, int) or not 0 <= i < self.n_layers]
        if bad:
            raise ConfigError(f"ModelSpec {self.name!r}: dense_layers={self.dense_layers!r} holds {bad}, "
                             f"not layer indices in 0..{self.n_layers - 1}")

    # ---- derived sizes -------------------------------------------------------------------------------------------
    @property
    def dtype_bytes(self) -> int:
        """Bytes per weight or KV element."""
        return DTYPE_BYTES[self.dtype]

    @property
    def q_size(self) -> int:
        """Width of the concatenated query heads."""
        return self.n_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Width of the concatenated key (or value) heads."""
        return self.n_kv_heads * self.head_dim

    @property
    def is_moe(self) -> bool:
        """Whether any layer routes tokens to experts."""
        return self.n_experts > 0 and bool(self.moe_layers)

    @property
    def moe_layers(self) -> tuple[int, ...]:
        """Indices of the MoE layers (Qwen2-MoE's rule; every layer for Mixtral and OLMoE), () for a dense model."""
        if self.n_experts == 0:
            return ()
        dense = set(self.dense_layers)
        return tuple(i for i in range(self.n_layers) if (i + 1) % self.moe_layer_step == 0 and i not in dense)

    @property
    def n_moe_layers(self) -> int:
        """How many layers are MoE."""
        return len(self.moe_layers)

    @property
    def attention_params(self) -> int:
        """Parameters of one block's attention: fused QKV (with bias when `qkv_bias`), output, qk-norm weights."""
        attn = self.hidden_size * (self.q_size + 2 * self.kv_size) + self.q_size * self.hidden_size
        bias = (self.q_size + 2 * self.kv_size) if self.qkv_bias else 0
        qk_norm = (self.q_size + self.kv_size) if self.qk_norm else 0
        return attn + bias + qk_norm

    @property
    def layer_params(self) -> int:
        """Parameters in one dense transformer block (attention, SwiGLU MLP, two RMSNorms)."""
        return self.attention_params + 3 * self.hidden_size * self.intermediate_size + 2 * self.hidden_size

    @property
    def expert_params(self) -> int:
        """Parameters of one routed expert (a SwiGLU MLP of width `moe_intermediate_size`)."""
        return 3 * self.hidden_size * self.moe_intermediate_size

    @property
    def moe_always_on_params(self) -> int:
        """Parameters of an MoE layer's MLP that every token uses: router, shared expert and its gate."""
        shared = 3 * self.hidden_size * self.shared_expert_intermediate_size
        gate = self.hidden_size if self.shared_expert_gate else 0
        return self.hidden_size * self.n_experts + shared + gate

    @property
    def moe_layer_params(self) -> int:
        """Parameters in one MoE block: attention, router, all experts, shared expert, two RMSNorms."""
        mlp = self.n_experts * self.expert_params + self.moe_always_on_params
        return self.attention_params + mlp + 2 * self.hidden_size

    @property
    def moe_layer_active_params(self) -> int:
        """Parameters of one MoE block a single token multiplies through (top-k experts, not all of them)."""
        return self.moe_layer_params - (self.n_experts - self.n_experts_per_token) * self.expert_params

    @property
    def blocks_params(self) -> int:
        """Parameters of all transformer blocks."""
        n_moe = self.n_moe_layers
        return (self.n_layers - n_moe) * self.layer_params + n_moe * self.moe_layer_params

    @property
    def embedding_params(self) -> int:
        """Parameters of the input embedding table."""
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        """Parameters of the output projection (0 extra when tied to the embedding)."""
        return 0 if self.tie_embeddings else self.vocab_size * self.hidden_size

    @property
    def param_count(self) -> int:
        """All parameters (every expert counted), counting a tied embedding once."""
        return self.embedding_params + self.blocks_params + self.hidden_size + self.lm_head_params

    @property
    def active_param_count(self) -> int:
        """Parameters one token uses: `param_count` with only the top-k routed experts of each MoE layer.

        As model cards quote "active parameters": embedding and LM head included. Equals `param_count` when dense.
        """
        return self.param_count - self.n_moe_layers * (self.n_experts - self.n_experts_per_token) * self.expert_params

    @property
    def weight_bytes(self) -> int:
        """Bytes of all weights in `dtype` (every expert)."""
        return self.param_count * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes one token occupies across all layers (K and V)."""
        return 2 * self.n_layers * self.kv_size * self.dtype_bytes

    @property
    def matmul_params_per_token(self) -> int:
        """Weights every token multiplies through: all blocks (top-k experts only) plus the LM head.

        The embedding lookup is free; an MoE layer counts its router, top-k experts and shared expert.
        """
        n_moe = self.n_moe_layers
        blocks = (self.n_layers - n_moe) * self.layer_params + n_moe * self.moe_layer_active_params
        return blocks + self.vocab_size * self.hidden_size

    def expected_experts_touched(self, n_tokens):
        """Expected distinct experts one MoE layer reads for a batch of `n_tokens` tokens: E (1 - (1 - k/E)^n).

        Assumption: each token picks its k experts uniformly at random and independently of the other tokens, so a
        given expert is missed by one token with probability 1 - k/E and by all n with (1 - k/E)^n. Real routers are
        skewed and correlated (similar tokens pick similar experts), which touches fewer experts than this.

        Args:
            n_tokens: tokens in the batch (a number or a numpy array of them).

        Returns:
            Experts per MoE layer (float or array), 0 for a dense model.
        """
        if self.n_experts == 0:
            return 0.0 * n_tokens
        return self.n_experts * (1.0 - (1.0 - self.n_experts_per_token / self.n_experts) ** n_tokens)

    def weight_bytes_read(self, n_tokens):
        """Expected weight bytes one forward pass of `n_tokens` tokens streams from memory.

        Every non-expert weight once, plus each MoE layer's `expected_experts_touched(n_tokens)` experts (the LM head
        counted, the embedding table not: only `n_tokens` rows of it are read).

        Args:
            n_tokens: tokens in the batch (a number or a numpy array of them), >= 1.

        Returns:
            Bytes (float or array). A dense model reads `matmul_params_per_token * dtype_bytes` whatever the batch.
        """
        moe_experts = self.n_moe_layers * self.expert_params
        fixed = self.matmul_params_per_token - self.n_experts_per_token * moe_experts
        return (fixed + moe_experts * self.expected_experts_touched(n_tokens)) * self.dtype_bytes

    @property
    def matmul_flops_per_token(self) -> float:
        """Forward FLOPs of one token through the weights: 2 per weight (multiply + add).

        For MoE layers the weights a token multiplies through are the router's, its top-k experts' and the shared
        expert's (`matmul_params_per_token`).
        """
        return 2.0 * self.matmul_params_per_token

    @property
    def attn_flops_per_context_token(self) -> float:
        """Forward FLOPs of one token per token it attends to: scores and the weighted sum of values.

        2 * 2 * n_layers * n_heads * head_dim (Kaplan et al. 2020, "Scaling Laws for Neural Language Models",
        Table 1; PaLM, Chowdhery et al. 2022, Appendix B).
        """
        return 4.0 * self.n_layers * self.q_size

    def flops_per_token(self, context_tokens: float = 0.0) -> float:
        """Forward FLOPs for one token attending to `context_tokens` earlier tokens (and itself).

        `matmul_flops_per_token + attn_flops_per_context_token * (context_tokens + 1)`: the one FLOP count the
        roofline cost model, the theoretical projection and the sweep planner use.

        Args:
            context_tokens: tokens already in the KV cache that this token attends to.

        Returns:
            FLOPs (not FLOP/s).
        """
        return self.matmul_flops_per_token + self.attn_flops_per_context_token * (context_tokens + 1)

    # ---- construction --------------------------------------------------------------------------------------------
    @classmethod
    def from_name(cls, name: str) -> ModelSpec:
        """Look a registry name up exactly (case-insensitive); the error lists the valid names."""
        key = name.lower()
        if key not in PRESETS:
            raise ConfigError(f"unknown model {name!r}; known models: {', '.join(sorted(PRESETS))}")
        return cls(name=key, **PRESETS[key])

    @classmethod
    def from_hf_config(cls, config: dict[str, Any] | str | Path, name: str | None = None) -> ModelSpec:
        """Build a spec from a Hugging Face style `config.json` (a dict or a path to the file).

        Args:
            config: the parsed config, or the path of a config.json.
            name: the spec's name; defaults to the config's `_name_or_path` or "custom".

        Returns:
            The ModelSpec. Missing required fields raise ConfigError naming the field.
        """
        if not isinstance(config, dict):
            path = Path(config)
            try:
                config = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise ConfigError(f"{path}: cannot read a JSON model config ({err})") from err
        for key, what in UNSUPPORTED_CONFIG_FIELDS.items():
            if config.get(key) not in (None, 0, False):
                raise ConfigError(f"model config field {key!r}={config[key]!r} ({what}) is not supported; "
                                 "only Llama-style attention with Mixtral/OLMoE/Qwen2-MoE style experts is")
        required = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size")
        missing = [key for key in required if key not in config]
        if missing:
            raise ConfigError(f"model config lacks required field(s): {', '.join(missing)}")
        n_heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        dtype = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
        model_type = config.get("model_type")
        return cls(
            name=name or str(config.get("_name_or_path") or "custom"),
            n_layers=int(config["num_hidden_layers"]),
            hidden_size=hidden,
            n_heads=n_heads,
            n_kv_heads=int(config.get("num_key_value_heads") or n_heads),
            head_dim=int(config.get("head_dim") or hidden // n_heads),
            intermediate_size=int(config["intermediate_size"]),
            vocab_size=int(config["vocab_size"]),
            dtype=dtype if dtype in DTYPE_BYTES else "bfloat16",
            rope_theta=float(config.get("rope_theta", 10000.0)),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-5)),
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=bool(config.get("attention_bias", False)) or model_type in ("qwen2", "qwen2_moe"),
            max_position_embeddings=int(config.get("max_position_embeddings", 131072)),
            qk_norm=model_type == "olmoe",
            **_moe_fields(config),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (for profiles and JSON output).

        The MoE and qk-norm fields appear only when they differ from their defaults, so a dense spec's dict (and the
        content hash of every profile built on it) is the same as before those fields existed.
        """
        out = dataclasses.asdict(self)
        for field in OPTIONAL_FIELDS:
            if out[field] == _DEFAULTS[field]:
                del out[field]
            elif isinstance(out[field], tuple):
                out[field] = list(out[field])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """Inverse of `to_dict`; unknown keys raise ConfigError naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown ModelSpec field(s): {', '.join(unknown)}")
        return cls(**data)


# Fields written by `to_dict` only when set (added after profiles were first hashed).
OPTIONAL_FIELDS = ("qk_norm", "n_experts", "n_experts_per_token", "moe_intermediate_size",
                   "shared_expert_intermediate_size", "shared_expert_gate", "norm_topk_prob", "moe_layer_step",
                   "dense_layers")
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelSpec)}

# Config fields of architectures this spec cannot price, refused by name rather than read as something else.
UNSUPPORTED_CONFIG_FIELDS = {
    "n_routed_experts": "DeepSeek-style MoE",
    "first_k_dense_replace": "DeepSeek-style MoE",
    "n_group": "DeepSeek-style grouped routing",
    "moe_layer_freq": "DeepSeek-style MoE layer placement",
    "kv_lora_rank": "multi-head latent attention (MLA)",
    "q_lora_rank": "multi-head latent attention (MLA)",
}


def _moe_fields(config: dict[str, Any]) -> dict[str, Any]:
    """ModelSpec's MoE keyword arguments from a Mixtral, OLMoE or Qwen2-MoE config ({} for a dense config).

    Mixtral: `num_local_experts`, `num_experts_per_tok`, experts of width `intermediate_size`, top-k weights
    renormalised (HF's MixtralSparseMoeBlock divides by their sum). OLMoE: `num_experts`, `num_experts_per_tok`,
    `intermediate_size`, `norm_topk_prob`. Qwen2-MoE: as OLMoE plus `moe_intermediate_size`,
    `shared_expert_intermediate_size` (with its sigmoid gate), `decoder_sparse_step` and `mlp_only_layers`.
    """
    n_experts = config.get("num_local_experts") or config.get("num_experts") or 0
    if not n_experts:
        return {}
    if not config.get("num_experts_per_tok"):
        raise ConfigError(f"MoE model config (num_experts={n_experts}) lacks field 'num_experts_per_tok'")
    shared = int(config.get("shared_expert_intermediate_size") or 0)
    return dict(
        n_experts=int(n_experts),
        n_experts_per_token=int(config["num_experts_per_tok"]),
        moe_intermediate_size=int(config.get("moe_intermediate_size") or config["intermediate_size"]),
        shared_expert_intermediate_size=shared,
        shared_expert_gate=bool(shared) and config.get("model_type") == "qwen2_moe",
        norm_topk_prob=bool(config.get("norm_topk_prob", config.get("model_type") == "mixtral")),
        moe_layer_step=int(config.get("decoder_sparse_step") or 1),
        dense_layers=tuple(int(i) for i in config.get("mlp_only_layers") or ()),
    )


# Values from each model's config.json on the Hugging Face hub (same org/name as the key).
PRESETS: dict[str, dict[str, Any]] = {
    "llama-3.1-8b": dict(n_layers=32, hidden_size=4096, n_heads=32, n_kv_heads=8, head_dim=128,
                         intermediate_size=14336, vocab_size=128256, rope_theta=500000.0),
    "llama-3.1-70b": dict(n_layers=80, hidden_size=8192, n_heads=64, n_kv_heads=8, head_dim=128,
                          intermediate_size=28672, vocab_size=128256, rope_theta=500000.0),
    "llama-3.2-1b": dict(n_layers=16, hidden_size=2048, n_heads=32, n_kv_heads=8, head_dim=64,
                         intermediate_size=8192, vocab_size=128256, rope_theta=500000.0, tie_embeddings=True),
    "llama-3.2-3b": dict(n_layers=28, hidden_size=3072, n_heads=24, n_kv_heads=8, head_dim=128,
                         intermediate_size=8192, vocab_size=128256, rope_theta=500000.0, tie_embeddings=True),
    "qwen2.5-7b": dict(n_layers=28, hidden_size=3584, n_heads=28, n_kv_heads=4, head_dim=128,
                       intermediate_size=18944, vocab_size=152064, rope_theta=1000000.0, rms_norm_eps=1e-6,
                       qkv_bias=True, max_position_embeddings=32768),
    "qwen2.5-14b": dict(n_layers=48, hidden_size=5120, n_heads=40, n_kv_heads=8, head_dim=128,
                        intermediate_size=13824, vocab_size=152064, rope_theta=1000000.0, rms_norm_eps=1e-6,
                        qkv_bias=True, max_position_embeddings=32768),
    "qwen2.5-32b": dict(n_layers=64, hidden_size=5120, n_heads=40, n_kv_heads=8, head_dim=128,
                        intermediate_size=27648, vocab_size=152064, rope_theta=1000000.0, rms_norm_eps=1e-6,
                        qkv_bias=True, max_position_embeddings=32768),
    "mistral-7b": dict(n_layers=32, hidden_size=4096, n_heads=32, n_kv_heads=8, head_dim=128,
                       intermediate_size=14336, vocab_size=32768, rope_theta=1000000.0,
                       max_position_embeddings=32768),
    # MoE presets. allenai/OLMoE-1B-7B-0924 config.json: its q/k RMSNorm (over the whole projection) is modelled;
    # clip_qkv is null there; the router's auxiliary losses only matter in training.
    "olmoe-1b-7b": dict(n_layers=16, hidden_size=2048, n_heads=16, n_kv_heads=16, head_dim=128,
                        intermediate_size=1024, vocab_size=50304, max_position_embeddings=4096, qk_norm=True,
                        n_experts=64, n_experts_per_token=8, moe_intermediate_size=1024),
    # mistralai/Mixtral-8x7B-v0.1 config.json (sliding_window null): experts of width intermediate_size,
    # top-2 weights renormalised as HF's MixtralSparseMoeBlock does.
    "mixtral-8x7b": dict(n_layers=32, hidden_size=4096, n_heads=32, n_kv_heads=8, head_dim=128,
                         intermediate_size=14336, vocab_size=32000, rope_theta=1000000.0,
                         max_position_embeddings=32768, n_experts=8, n_experts_per_token=2,
                         moe_intermediate_size=14336, norm_topk_prob=True),
    # Qwen/Qwen1.5-MoE-A2.7B config.json: decoder_sparse_step 1, mlp_only_layers [] (every layer MoE), one shared
    # expert of width 5632 behind a sigmoid gate, norm_topk_prob false.
    "qwen1.5-moe-a2.7b": dict(n_layers=24, hidden_size=2048, n_heads=16, n_kv_heads=16, head_dim=128,
                              intermediate_size=5632, vocab_size=151936, rope_theta=1000000.0, rms_norm_eps=1e-6,
                              qkv_bias=True, max_position_embeddings=8192, n_experts=60, n_experts_per_token=4,
                              moe_intermediate_size=1408, shared_expert_intermediate_size=5632,
                              shared_expert_gate=True),
}


def load_spec(model: str) -> ModelSpec:
    """A registry name (`ModelSpec.from_name`), or the path of a Hugging Face config.json (named for its folder)."""
    path = Path(model)
    return ModelSpec.from_hf_config(path, name=path.parent.name or None) if path.is_file() else ModelSpec.from_name(
        model)
