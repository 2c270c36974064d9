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
