"""Model shapes (ModelSpec) and a registry of well-known decoder-only LLMs. Torch-free.

The simulator reads these for KV-cache sizing and FLOP counts; the engine builds its model from them.
Shapes are copied from each model's Hugging Face `config.json`.
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
    """The shape of a Llama-style decoder (GQA, RoPE, RMSNorm, SwiGLU).

    Attributes:
        name: registry name, e.g. "llama-3.1-8b".
        n_layers: transformer blocks.
        hidden_size: model width.
        n_heads: query heads.
        n_kv_heads: key/value heads (GQA); must divide n_heads.
        head_dim: width of one head.
        intermediate_size: SwiGLU hidden width.
        vocab_size: tokens in the vocabulary.
        dtype: weight and KV-cache dtype name ("bfloat16", "float16", "float32").
        rope_theta: RoPE base frequency.
        rms_norm_eps: RMSNorm epsilon.
        tie_embeddings: whether the LM head shares the embedding matrix.
        qkv_bias: whether q/k/v projections carry a bias (Qwen2).
        max_position_embeddings: longest context the model was trained for, in tokens.
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
    max_position_embeddings: int = 131072

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
    def layer_params(self) -> int:
        """Parameters in one transformer block (attention, SwiGLU MLP, two RMSNorms)."""
        attn = self.hidden_size * (self.q_size + 2 * self.kv_size) + self.q_size * self.hidden_size
        bias = (self.q_size + 2 * self.kv_size) if self.qkv_bias else 0
        mlp = 3 * self.hidden_size * self.intermediate_size
        return attn + bias + mlp + 2 * self.hidden_size

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
        """All parameters, counting a tied embedding once."""
        return self.embedding_params + self.n_layers * self.layer_params + self.hidden_size + self.lm_head_params

    @property
    def weight_bytes(self) -> int:
        """Bytes of all weights in `dtype`."""
        return self.param_count * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes one token occupies across all layers (K and V)."""
        return 2 * self.n_layers * self.kv_size * self.dtype_bytes

    @property
    def matmul_params_per_token(self) -> int:
        """Weights every token multiplies through: all blocks plus the LM head (embedding lookup is free)."""
        return self.n_layers * self.layer_params + self.vocab_size * self.hidden_size

    @property
    def matmul_flops_per_token(self) -> float:
        """Forward FLOPs of one token through the weights: 2 per weight (multiply + add)."""
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
        required = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size")
        missing = [key for key in required if key not in config]
        if missing:
            raise ConfigError(f"model config lacks required field(s): {', '.join(missing)}")
        n_heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        dtype = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
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
            qkv_bias=bool(config.get("attention_bias", False)) or config.get("model_type") == "qwen2",
            max_position_embeddings=int(config.get("max_position_embeddings", 131072)),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (for profiles and JSON output)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """Inverse of `to_dict`; unknown keys raise ConfigError naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown ModelSpec field(s): {', '.join(unknown)}")
        return cls(**data)


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
}


def load_spec(model: str) -> ModelSpec:
    """A registry name (`ModelSpec.from_name`), or the path of a Hugging Face config.json (named for its folder)."""
    path = Path(model)
    return ModelSpec.from_hf_config(path, name=path.parent.name or None) if path.is_file() else ModelSpec.from_name(
        model)
