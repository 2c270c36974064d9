"""The paper's unoptimized baseline: a ModelSpec as a Hugging Face transformers model, run the way `generate()` runs.

The model is `LlamaForCausalLM` (`Qwen2ForCausalLM` when the spec has a qkv bias) built from a config, with seeded
random weights: nothing is downloaded. Batching is static, the cache is a `DynamicCache` (grown by concatenation
each step), and execution is eager.
"""

from __future__ import annotations

import importlib
import logging
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from tokenjoule.kernels.spec import ModelSpec

logger = logging.getLogger(__name__)

INIT_STD = 0.02


def _import_hub_kernels() -> None:
    """Import the `kernels` distribution (transformers 5.25 requires it) before transformers looks for it.

    Why: this repository's `kernels/` folder has the same top-level name. Run from the repository root (`python -m`
    puts the working directory first on sys.path), transformers' `from kernels import ...` finds the folder and fails.
    Imported once with the root off sys.path, `sys.modules["kernels"]` is the distribution; where it is not installed,
    transformers does not look for it either.
    """
    if "kernels" in sys.modules:
        return
    root = Path(__file__).resolve().parent.parent
    saved = sys.path[:]
    sys.path[:] = [p for p in saved if Path(p or ".").resolve() != root]
    try:
        importlib.import_module("kernels")
    except ImportError:
        pass
    finally:
        sys.path[:] = saved


_import_hub_kernels()


def hf_config(spec: ModelSpec):
    """The transformers config of `spec` (LlamaConfig, or Qwen2Config when `spec.qkv_bias`)."""
    from transformers import LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=spec.vocab_size, hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.n_layers, num_attention_heads=spec.n_heads, num_key_value_heads=spec.n_kv_heads,
        head_dim=spec.head_dim, rms_norm_eps=spec.rms_norm_eps, rope_theta=spec.rope_theta,
        max_position_embeddings=spec.max_position_embeddings, tie_word_embeddings=spec.tie_embeddings,
        pad_token_id=0, bos_token_id=None, eos_token_id=None,
    )
    if spec.qkv_bias:
        return Qwen2Config(**common)
    return LlamaConfig(attention_bias=False, **common)


@contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_hf_model(spec: ModelSpec, device: str = "cuda", seed: int = 0, dtype: torch.dtype | None = None):
    """A transformers causal LM of `spec` on `device` with N(0, 0.02^2) weights from a seeded generator.

    Args:
        spec: the model shape.
        device: "cuda" (bfloat16) or "cpu" (float32).
        seed: weight seed.
        dtype: overrides the device's default dtype.

    Returns:
        The model, in eval mode.
    """
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM

    dev = torch.device(device)
    dtype = dtype or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    cls = Qwen2ForCausalLM if spec.qkv_bias else LlamaForCausalLM
    with _default_dtype(dtype), dev:
        model = cls(hf_config(spec))
    gen = torch.Generator(device=dev).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=gen, device=dev, dtype=dtype) * INIT_STD)
    model.requires_grad_(False)
    return model.eval()


class HFAdapter:
    """A transformers model of a spec, with the two steps `generate()` takes, and `generate()` itself.

    Args:
        spec: the model shape.
        device: "cuda" or "cpu".
        seed: weight and prompt seed.
    """

    def __init__(self, spec: ModelSpec, device: str = "cuda", seed: int = 0) -> None:
        self.spec = spec
        self.device = torch.device(device)
        self.model = build_hf_model(spec, device, seed)
        self.config = self.model.config
        self._gen = torch.Generator(device="cpu").manual_seed(seed)

    def random_ids(self, batch: int, tokens: int) -> torch.Tensor:
        """(batch, tokens) random token ids on the model's device."""
        return torch.randint(0, self.spec.vocab_size, (batch, tokens), generator=self._gen).to(self.device)

    def new_cache(self):
        """An empty DynamicCache."""
        from transformers import DynamicCache

        return DynamicCache(config=self.config)

    def filled_cache(self, batch: int, context_tokens: int):
        """A DynamicCache already holding `context_tokens` random K/V entries per layer for `batch` sequences."""
        cache = self.new_cache()
        shape = (batch, self.spec.n_kv_heads, context_tokens, self.spec.head_dim)
        dtype = self.model.dtype
        for layer in range(self.spec.n_layers):
            cache.update(torch.randn(shape, device=self.device, dtype=dtype),
                         torch.randn(shape, device=self.device, dtype=dtype), layer)
        return cache

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, cache, attention_mask: torch.Tensor) -> torch.Tensor:
        """One `generate()`-style forward: last-position logits only, cache extended in place. Returns greedy ids."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # `past_key_values` is renamed in newer transformers
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache,
                             use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :].argmax(dim=-1)

    @torch.no_grad()
    def generate(self, batch: int, prompt_tokens: int, output_tokens: int) -> torch.Tensor:
        """`model.generate()` on random prompts: greedy, exactly `output_tokens` new tokens, static batch.

        Returns:
            (batch, prompt_tokens + output_tokens) token ids.
        """
        return self.generate_ids(self.random_ids(batch, prompt_tokens), output_tokens)

    @torch.no_grad()
    def generate_ids(self, ids: torch.Tensor, output_tokens: int, streamer: Any = None) -> torch.Tensor:
        """`model.generate()` on given prompts (B, L): greedy, exactly `output_tokens` new tokens, static batch.

        Args:
            ids: prompt token ids on the model's device.
            output_tokens: new tokens per sequence (no early stop: there is no EOS).
            streamer: a transformers streamer; its `put` gets the prompt first, then each step's new tokens.

        Returns:
            (B, L + output_tokens) token ids.
        """
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=output_tokens,
                min_new_tokens=output_tokens, do_sample=False, pad_token_id=0, eos_token_id=None,
                past_key_values=self.new_cache(), streamer=streamer,
            )
