"""The transformers baseline computes the same function as our model when given the same weights."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from tokenjoule.kernels.model import Transformer  # noqa: E402

pytest.importorskip("transformers")

from tokenjoule.kernels.hf_adapter import HFAdapter, build_hf_model, hf_config  # noqa: E402


def copy_weights(ours: Transformer, hf) -> None:
    s = ours.spec
    with torch.no_grad():
        hf.model.embed_tokens.weight.copy_(ours.embed.weight)
        hf.lm_head.weight.copy_(ours.lm_head.weight)
        hf.model.norm.weight.copy_(ours.norm.weight)
        for mine, theirs in zip(ours.layers, hf.model.layers, strict=True):
            q, k, v = mine.wqkv.weight.split([s.q_size, s.kv_size, s.kv_size])
            theirs.self_attn.q_proj.weight.copy_(q)
            theirs.self_attn.k_proj.weight.copy_(k)
            theirs.self_attn.v_proj.weight.copy_(v)
            if s.qkv_bias:
                qb, kb, vb = mine.wqkv.bias.split([s.q_size, s.kv_size, s.kv_size])
                theirs.self_attn.q_proj.bias.copy_(qb)
                theirs.self_attn.k_proj.bias.copy_(kb)
                theirs.self_attn.v_proj.bias.copy_(vb)
            theirs.self_attn.o_proj.weight.copy_(mine.wo.weight)
            gate, up = mine.w_gate_up.weight.chunk(2)
            theirs.mlp.gate_proj.weight.copy_(gate)
            theirs.mlp.up_proj.weight.copy_(up)
            theirs.mlp.down_proj.weight.copy_(mine.w_down.weight)
            theirs.input_layernorm.weight.copy_(mine.attn_norm.weight)
            theirs.post_attention_layernorm.weight.copy_(mine.mlp_norm.weight)


@pytest.mark.parametrize("qwen", [False, True])
def test_hf_model_matches_reference_with_same_weights(tiny_spec, tiny_qwen_spec, reference, qwen):
    spec = tiny_qwen_spec if qwen else tiny_spec
    hf = build_hf_model(spec, "cpu", seed=0)
    assert type(hf).__name__ == ("Qwen2ForCausalLM" if qwen else "LlamaForCausalLM")
    assert sum(p.numel() for p in hf.parameters()) == spec.param_count
    ours = Transformer(spec, seed=9)
    copy_weights(ours, hf)
    tokens = list(range(5, 30))
    got = hf(input_ids=torch.tensor([tokens])).logits[0]
    torch.testing.assert_close(got.double(), reference(ours, tokens), rtol=1e-4, atol=1e-4)


def test_config_fields(tiny_spec):
    config = hf_config(tiny_spec)
    assert (config.num_hidden_layers, config.num_key_value_heads, config.head_dim) == (2, 2, 16)


def test_generate_produces_exactly_the_requested_tokens(tiny_spec):
    adapter = HFAdapter(tiny_spec, "cpu")
    out = adapter.generate(batch=2, prompt_tokens=8, output_tokens=5)
    assert tuple(out.shape) == (2, 13)
