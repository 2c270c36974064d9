"""`tokenjoule models`: the registry table, `show` in both output forms, errors, help examples, no torch."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from tokenjoule.cli import app, main
from tokenjoule.kernels.spec import PRESETS, ModelSpec

runner = CliRunner()


def test_models_lists_every_preset():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    for name in PRESETS:
        assert name in result.output


def test_models_json_is_one_object():
    result = runner.invoke(app, ["models", "--json"])
    data = json.loads(result.stdout)
    assert sorted(m["name"] for m in data["models"]) == sorted(PRESETS)


def test_show_json_figures_match_the_spec():
    result = runner.invoke(app, ["models", "show", "llama-3.1-8b", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    spec = ModelSpec.from_name("llama-3.1-8b")
    assert data["param_count"] == spec.param_count == 8_030_261_248  # Meta's model card: 8.03B
    assert data["weight_bytes"] == 2 * spec.param_count
    assert data["kv_bytes_per_token"] == 2 * 32 * 8 * 128 * 2
    assert data["flops_per_token"] == spec.flops_per_token(0)
    assert data["spec"]["n_kv_heads"] == 8


def test_show_table_names_the_fields():
    result = runner.invoke(app, ["models", "show", "qwen2.5-7b"])
    assert result.exit_code == 0
    for field in ("parameters", "weight bytes", "KV-cache bytes per token", "FLOPs per token"):
        assert field in result.output


def test_unknown_model_is_one_line_error(capsys):
    assert main(["models", "show", "gpt-5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown model 'gpt-5'") and "llama-3.1-8b" in err and err.count("\n") == 1


def test_help_ends_with_examples():
    for args in (["models", "--help"], ["models", "show", "--help"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0
        assert "Example" in result.output and "tokenjoule models" in result.output.split("Example")[-1]


def test_models_cli_does_not_import_torch():
    code = "import sys, tokenjoule.kernels.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_models_json_has_active_parameters_and_experts():
    data = {m["name"]: m for m in json.loads(runner.invoke(app, ["models", "--json"]).stdout)["models"]}
    assert data["llama-3.1-8b"]["active_param_count"] == data["llama-3.1-8b"]["param_count"]
    assert data["llama-3.1-8b"]["experts"] is None
    olmoe = data["olmoe-1b-7b"]
    assert olmoe["experts"]["n_experts"] == 64 and olmoe["experts"]["n_experts_per_token"] == 8
    assert olmoe["active_param_count"] == ModelSpec.from_name("olmoe-1b-7b").active_param_count < olmoe["param_count"]


def test_show_moe_model_table_and_json():
    result = runner.invoke(app, ["models", "show", "qwen1.5-moe-a2.7b"])
    assert result.exit_code == 0, result.output
    assert "active parameters per token" in result.output and "top-4 of 60" in result.output
    data = json.loads(runner.invoke(app, ["models", "show", "mixtral-8x7b", "--json"]).stdout)
    spec = ModelSpec.from_name("mixtral-8x7b")
    assert data["weight_bytes"] == spec.weight_bytes and data["flops_per_token"] == spec.flops_per_token(0)
    assert data["experts"]["expert_bytes"] == 3 * 4096 * 14336 * 2
    assert data["spec"]["n_experts"] == 8
