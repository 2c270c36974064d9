import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tokenjoule.calibrate import profile as profile_mod
from tokenjoule.cli import app, main

TOY = Path(__file__).parent.parent / "fixtures" / "profiles" / "toy_h100_llama-3.1-8b.json"
runner = CliRunner()


def test_show_prints_tables():
    result = runner.invoke(app, ["profile", "show", str(TOY)])
    assert result.exit_code == 0, result.output
    for text in ("fit errors", "prefill: J per token", "decode: J per token", "SYNTHETIC"):
        assert text in result.output


def test_show_json_is_one_object():
    result = runner.invoke(app, ["profile", "show", str(TOY), "--json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["model"] == "llama-3.1-8b" and data["engine"] == "tokenjoule" and data["mode"] == "cudagraph"
    assert set(data["targets_met"]) == {"latency", "energy"}
    assert [p["batch"] for p in data["decode"]] == [1, 8, 32, 128, 512]
    assert data["static_batch"]["batch"] == 4 and data["static_batch"]["energy_j"] > 0
    assert all(p["j_per_token"] > 0 for p in data["prefill"])


@pytest.mark.parametrize("content, message", [
    ("{nope", "not valid JSON"),
    (json.dumps({"kind": "tokenjoule-profile", "schema_version": 0}), "schema_version=0"),
    (json.dumps([1, 2]), "JSON object"),
])
def test_bad_files_give_one_line_error(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    result = runner.invoke(app, ["profile", "show", str(path)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0] and "bad.json" in lines[0]
    assert "Traceback" not in result.output


def test_main_returns_nonzero_for_missing_profile(capsys):
    code = main(["profile", "show", "no-such-profile"])
    assert code == 2
    assert "no such profile" in capsys.readouterr().err


def test_list_and_show_by_name(tmp_path, monkeypatch):
    monkeypatch.setattr(profile_mod, "SHIPPED_DIR", tmp_path)
    result = runner.invoke(app, ["profile", "list"])
    assert result.exit_code == 0 and "no shipped profiles" in result.output
    shutil.copy(TOY, tmp_path / "toy.json")
    (tmp_path / "broken.json").write_text("{}")
    (tmp_path / "generate-check.json").write_text('{"kind": "a measurement, not a profile"}')  # skipped
    data = json.loads(runner.invoke(app, ["profile", "list", "--json"]).stdout)
    assert [(p["name"], p["valid"]) for p in data["profiles"]] == [("broken", False), ("toy", True)]
    result = runner.invoke(app, ["profile", "show", "toy", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["path"].endswith("toy.json")


def test_plot_writes_png(tmp_path):
    out = tmp_path / "plot.png"
    result = runner.invoke(app, ["profile", "plot", str(TOY), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]
