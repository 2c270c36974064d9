"""ModelSpec: dense figures unchanged, MoE fields validated, presets' totals against model cards, HF configs read."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tokenjoule.kernels.spec import PRESETS, ModelSpec

# Totals and active parameters as the model cards state them (billions).
PUBLISHED = {
    "mixtral-8x7b": (46.7, 12.9),  # Mistral AI, "Mixtral of Experts" (2024): 47B total, 13B active; HF card 46.7B
    "olmoe-1b-7b": (6.9, 1.3),  # Muennighoff et al. 2024, "OLMoE": 6.9B total, 1.3B active
    "qwen1.5-moe-a2.7b": (14.3, 2.7),  # Qwen blog/model card: 14.3B total, 2.7B activated
}


def test_dense_presets_keep_their_figures():
    spec = ModelSpec.from_name("llama-3.1-8b")
    assert spec.param_count == spec.active_param_count == 8_030_261_248
    assert spec.flops_per_token(0) == 2.0 * spec.matmul_params_per_token + 4.0 * 32 * 4096
    assert spec.matmul_params_per_token == 32 * spec.layer_params + 128256 * 4096
    assert not spec.is_moe and spec.moe_layers == () and spec.expected_experts_touched(64) == 0.0
    assert spec.weight_bytes_read(64) == spec.matmul_params_per_token * 2


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_moe_presets_match_published_totals(name):
    spec = ModelSpec.from_name(name)
    total_b, active_b = PUBLISHED[name]
    assert spec.param_count / 1e9 == pytest.approx(total_b, rel=0.02)
    assert spec.active_param_count / 1e9 == pytest.approx(active_b, rel=0.02)
    assert spec.weight_bytes == 2 * spec.param_count
    assert spec.is_moe and spec.n_moe_layers == spec.n_layers
    # FLOPs per token follow the active weights (embedding lookup and final norm excluded), not all of them
    matmul = spec.active_param_count - spec.embedding_params - spec.hidden_size
    assert spec.flops_per_token(0) == 2 * matmul + 4 * spec.n_layers * spec.q_size


def test_mixtral_exact_counts():
    spec = ModelSpec.from_name("mixtral-8x7b")
    attn = 4096 * (4096 + 2 * 1024) + 4096 * 4096
    expert = 3 * 4096 * 14336
    layer = attn + 8 * expert + 4096 * 8 + 2 * 4096
    assert spec.param_count == 32 * layer + 2 * 32000 * 4096 + 4096
    assert spec.active_param_count == spec.param_count - 32 * 6 * expert
    assert spec.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2


def test_every_preset_builds_and_has_positive_figures():
    for name in PRESETS:
        spec = ModelSpec.from_name(name)
        assert 0 < spec.active_param_count <= spec.param_count
        assert spec.flops_per_token(1024) > spec.flops_per_token(0) > 0
        assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec  # JSON round trip (tuples)


def test_expected_experts_touched():
    spec = ModelSpec.from_name("olmoe-1b-7b")  # 64 experts, top-8
    assert spec.expected_experts_touched(1) == pytest.approx(8.0)
    assert spec.expected_experts_touched(2) == pytest.approx(64 * (1 - (56 / 64) ** 2))
    assert 63.9 < spec.expected_experts_touched(64) < 64.0
    np = pytest.importorskip("numpy")
    touched = spec.expected_experts_touched(np.array([1, 4, 16]))
    assert np.all(np.diff(touched) > 0)
    # one token reads exactly the active weights (minus the embedding table); a big batch reads (almost) all
    assert spec.weight_bytes_read(1) == pytest.approx(2 * spec.matmul_params_per_token)
    assert spec.weight_bytes_read(4096) == pytest.approx(2 * (spec.param_count - spec.embedding_params), rel=1e-6)


def test_qwen_moe_layer_placement():
    spec = dataclasses.replace(ModelSpec.from_name("qwen1.5-moe-a2.7b"), moe_layer_step=2, dense_layers=(3,))
    assert spec.moe_layers == tuple(i for i in range(1, 24, 2) if i != 3)
    dense_part = (24 - spec.n_moe_layers) * spec.layer_params
    assert spec.blocks_params == dense_part + spec.n_moe_layers * spec.moe_layer_params


@pytest.mark.parametrize(("changes", "field"), [
    (dict(n_experts=8, n_experts_per_token=0, moe_intermediate_size=64), "n_experts_per_token"),
    (dict(n_experts=8, n_experts_per_token=9, moe_intermediate_size=64), "n_experts_per_token"),
    (dict(n_experts=8, n_experts_per_token=2), "moe_intermediate_size"),
    (dict(n_experts=-1), "n_experts"),
    (dict(n_experts_per_token=2), "n_experts_per_token"),
    (dict(shared_expert_gate=True), "shared_expert_gate"),
    (dict(n_experts=8, n_experts_per_token=2, moe_intermediate_size=64, shared_expert_gate=True), "shared_expert_gate"),
    (dict(n_experts=8, n_experts_per_token=2, moe_intermediate_size=64, moe_layer_step=0), "moe_layer_step"),
    (dict(n_experts=8, n_experts_per_token=2, moe_intermediate_size=64, dense_layers=(99,)), "dense_layers"),
])
def test_moe_validation_names_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(ModelSpec.from_name("llama-3.2-1b"), **changes)


def _write(tmp_path, config):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


MIXTRAL = {"model_type": "mixtral", "num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
           "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 32000, "rope_theta": 1e6,
           "max_position_embeddings": 32768, "num_local_experts": 8, "num_experts_per_tok": 2,
           "tie_word_embeddings": False, "torch_dtype": "bfloat16", "sliding_window": None}
OLMOE = {"model_type": "olmoe", "num_hidden_layers": 16, "hidden_size": 2048, "num_attention_heads": 16,
         "num_key_value_heads": 16, "intermediate_size": 1024, "vocab_size": 50304, "max_position_embeddings": 4096,
         "num_experts": 64, "num_experts_per_tok": 8, "norm_topk_prob": False, "rope_theta": 10000.0,
         "clip_qkv": None, "tie_word_embeddings": False}
QWEN_MOE = {"model_type": "qwen2_moe", "num_hidden_layers": 24, "hidden_size": 2048, "num_attention_heads": 16,
            "num_key_value_heads": 16, "intermediate_size": 5632, "moe_intermediate_size": 1408,
            "shared_expert_intermediate_size": 5632, "num_experts": 60, "num_experts_per_tok": 4,
            "decoder_sparse_step": 1, "mlp_only_layers": [], "norm_topk_prob": False, "vocab_size": 151936,
            "rope_theta": 1e6, "rms_norm_eps": 1e-6, "max_position_embeddings": 8192, "tie_word_embeddings": False}


@pytest.mark.parametrize(("config", "preset"), [(MIXTRAL, "mixtral-8x7b"), (OLMOE, "olmoe-1b-7b"),
                                                (QWEN_MOE, "qwen1.5-moe-a2.7b")])
def test_from_hf_config_reads_moe_configs_as_the_presets(tmp_path, config, preset):
    spec = ModelSpec.from_hf_config(_write(tmp_path, config), name=preset)
    assert spec == ModelSpec.from_name(preset)


def test_from_hf_config_reads_qwen_layer_placement():
    spec = ModelSpec.from_hf_config({**QWEN_MOE, "decoder_sparse_step": 2, "mlp_only_layers": [1, 5]})
    assert spec.moe_layer_step == 2 and spec.dense_layers == (1, 5)
    assert spec.moe_layers == (3, 7, 9, 11, 13, 15, 17, 19, 21, 23)


def test_from_hf_config_dense_is_unchanged():
    llama = {"model_type": "llama", "num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
             "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256, "rope_theta": 500000.0,
             "tie_word_embeddings": False, "num_experts": 0}
    assert ModelSpec.from_hf_config(llama, name="llama-3.1-8b") == ModelSpec.from_name("llama-3.1-8b")


@pytest.mark.parametrize("field", ["n_routed_experts", "first_k_dense_replace", "kv_lora_rank", "q_lora_rank"])
def test_from_hf_config_refuses_deepseek_fields_by_name(field):
    config = {**MIXTRAL, "model_type": "deepseek_v3", field: 64}
    with pytest.raises(ValueError, match=field) as err:
        ModelSpec.from_hf_config(config)
    assert "\n" not in str(err.value)


def test_from_hf_config_moe_without_top_k_names_the_field():
    config = {k: v for k, v in OLMOE.items() if k != "num_experts_per_tok"}
    with pytest.raises(ValueError, match="num_experts_per_tok"):
        ModelSpec.from_hf_config(config)


def test_context_length_is_positive_or_unknown():
    spec = ModelSpec.from_name("llama-3.1-8b")
    assert dataclasses.replace(spec, max_position_embeddings=None).max_position_embeddings is None
    with pytest.raises(ValueError, match="max_position_embeddings=0"):
        dataclasses.replace(spec, max_position_embeddings=0)
