"""The documented Python API: `tokenjoule.simulate`, `__version__`, `py.typed`, and README's example run as written."""

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import tokenjoule
from tokenjoule.calibrate.profile import load_profile
from tokenjoule.cli import main
from tokenjoule.kernels.spec import ConfigError
from tokenjoule.sim.notes import RunNoteWarning
from tokenjoule.traces.loaders import LoadOptions, load_trace
from tokenjoule.traces.schema import TraceFormatError

ROOT = Path(__file__).resolve().parents[1]
TOY = str(ROOT / "tests" / "fixtures" / "profiles" / "toy_h100_llama-3.1-8b.json")
# rows 3 and 6 arrive before the row above them; ids 4 and 2 come back
UNSORTED = ("arrival_s,input_tokens,output_tokens,request_id\n0,100,5,1\n2,200,6,2\n1,300,7,3\n3,120,4,4\n5,220,8,4\n"
            "4,320,9,5\n6,140,3,2\n")


def test_simulate_matches_the_command(capsys):
    result = tokenjoule.simulate(trace="azure-code-2023", policy="chunked", replicas=2)
    assert main(["simulate", "--trace", "azure-code-2023", "--policy", "chunked", "--replicas", "2", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    only_the_command = {"profile_source", "carbon_g_per_kwh", "carbon_source"}  # how the command chose them
    assert json.loads(json.dumps(result.summary)) == {k: v for k, v in cli.items() if k not in only_the_command}
    assert result.requests.num_rows == cli["requests"]


def test_simulate_notes_the_trace_as_the_command_does(tmp_path, capsys):
    path = tmp_path / "unsorted.csv"
    path.write_text(UNSORTED)
    with pytest.warns(RunNoteWarning) as caught:
        result = tokenjoule.simulate(trace=path, profile=TOY)
    assert [(n["kind"], n["count"]) for n in result.summary["trace_notes"]] == [("unsorted_arrivals", 2),
                                                                                ("repeated_request_ids", 2)]
    messages = [str(w.message) for w in caught]
    assert [n["message"] for n in result.summary["trace_notes"]] == [m for m in messages if "arrivals out" in m or
                                                                     "ids repeat" in m]
    assert main(["simulate", "--trace", str(path), "--profile", TOY, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trace_notes"] == result.summary["trace_notes"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RunNoteWarning)  # a clean trace warns nothing about itself
        assert tokenjoule.simulate(trace="azure-code-2023", profile=TOY).summary["trace_notes"] == []


def test_simulate_reads_a_trace_with_the_trace_options(tmp_path, capsys):
    path = tmp_path / "lengths.csv"
    path.write_text("num_prefill_tokens,num_decode_tokens\n" + "".join(f"{200 + 53 * (i % 11)},{4 + 7 * (i % 5)}\n"
                                                                        for i in range(40)))
    with pytest.raises(TraceFormatError, match="no arrival times"):  # a length-only file has no arrival times
        tokenjoule.simulate(trace=path, profile=TOY)
    poisson = {"arrivals": "poisson", "rate_per_s": 2.0}
    result = tokenjoule.simulate(trace=path, profile=TOY, trace_options=poisson, seed=5)
    assert main(["simulate", "--trace", str(path), "--profile", TOY, "--arrivals", "poisson", "--rate", "2",
                 "--seed", "5", "--json"]) == 0
    assert result.summary["energy_total_j"] == json.loads(capsys.readouterr().out)["energy_total_j"]
    given = tokenjoule.simulate(trace=path, profile=TOY, trace_options=LoadOptions(seed=5, **poisson))
    assert given.summary == result.summary
    reseeded = tokenjoule.simulate(trace=path, profile=TOY, trace_options={**poisson, "seed": 6}, seed=5)
    assert reseeded.summary["energy_total_j"] != result.summary["energy_total_j"]
    with pytest.raises(ValueError, match="unknown load option"):
        tokenjoule.simulate(trace=path, profile=TOY, trace_options={"rate": 2.0})
    with pytest.raises(ValueError, match="loaded already"):
        tokenjoule.simulate(trace=load_trace("azure-code-2023"), profile=TOY, trace_options=poisson)


def test_simulate_takes_a_mapped_trace_and_its_format(tmp_path):
    mapped = tmp_path / "mine.csv"
    mapped.write_text("when_ms,prompt,answer\n0,100,5\n1500,200,6\n3000,300,7\n")
    canonical = tmp_path / "canonical.csv"
    canonical.write_text("arrival_s,input_tokens,output_tokens\n0,100,5\n1.5,200,6\n3,300,7\n")
    got = tokenjoule.simulate(trace=mapped, profile=TOY, trace_format="generic", trace_options={
        "mapping": {"arrival_s": "when_ms", "input_tokens": "prompt", "output_tokens": "answer"}, "time_unit": "ms"})
    assert got.summary == tokenjoule.simulate(trace=canonical, profile=TOY).summary


def test_simulate_takes_loaded_objects_and_config_fields():
    profile = load_profile(tokenjoule.DEFAULT_PROFILE)
    result = tokenjoule.simulate(trace="azure-code-2023", profile=profile, max_num_seqs=64, pue=1.2)
    assert result.config.max_num_seqs == 64 and result.summary["facility_overhead_j"] > 0
    with pytest.raises(ConfigError):
        tokenjoule.simulate(trace="azure-code-2023", policy="nope")


@pytest.mark.parametrize(("policy", "setting", "needle"), [
    ("static", {"max_num_seqs": 64}, "max_num_seqs=64: only policy 'continuous' and 'chunked' read it"),
    ("chunked", {"max_batch": 8}, "max_batch=8: only policy 'static' reads it (this run is policy 'chunked')"),
    ("continuous", {"batch_timeout_s": 1.0}, "batch_timeout_s=1.0: only policy 'static' reads it"),
])
def test_simulate_refuses_a_setting_its_policy_would_not_read(policy, setting, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        tokenjoule.simulate(trace="azure-code-2023", profile=TOY, policy=policy, **setting)


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
