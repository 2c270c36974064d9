"""The documented Python API: `tokenjoule.simulate`, `__version__`, `py.typed`, and README's example run as written."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

import tokenjoule
from tokenjoule.calibrate.profile import load_profile
from tokenjoule.cli import main
from tokenjoule.kernels.spec import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_simulate_matches_the_command(capsys):
    result = tokenjoule.simulate(trace="azure-code-2023", policy="chunked", replicas=2)
    assert main(["simulate", "--trace", "azure-code-2023", "--policy", "chunked", "--replicas", "2", "--json"]) == 0
    import json

    cli = json.loads(capsys.readouterr().out)
    assert result.summary["energy_total_j"] == cli["energy_total_j"]
    assert result.requests.num_rows == cli["requests"]


def test_simulate_takes_loaded_objects_and_config_fields():
    profile = load_profile(tokenjoule.DEFAULT_PROFILE)
    result = tokenjoule.simulate(trace="azure-code-2023", profile=profile, max_num_seqs=64, pue=1.2)
    assert result.config.max_num_seqs == 64 and result.summary["facility_overhead_j"] > 0
    with pytest.raises(ConfigError):
        tokenjoule.simulate(trace="azure-code-2023", policy="nope")


def test_simulate_returns_the_iterations_when_asked():
    plain = tokenjoule.simulate(trace="azure-code-2023", replicas=2)
    timed = tokenjoule.simulate(trace="azure-code-2023", replicas=2, iterations=True)
    assert plain.iterations is None and timed.summary == plain.summary
    energy = sum(timed.iterations.column("energy_j").to_pylist())
    assert energy == pytest.approx(plain.summary["gpu_busy_j"] + plain.summary["gpu_idle_j"], rel=1e-9)


def test_version_and_typed_marker():
    assert re.match(r"\d+\.\d+", tokenjoule.__version__)
    assert (Path(tokenjoule.__file__).parent / "py.typed").is_file()


def test_import_is_cheap():
    code = "import sys, tokenjoule; print(any(m.startswith(('torch', 'simpy', 'pyarrow')) for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == \
        "False"


def test_readme_python_example_runs_as_written():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert blocks, "README has no Python example"
    out = subprocess.run([sys.executable, "-c", blocks[0]], capture_output=True, text=True, check=True).stdout
    assert "J/request" in out and "requests;" in out
