"""No silent wrong answers: `tokenjoule simulate` (and `compare`) say when a run is overloaded, priced beyond the
profile's measured range, or asked for more than the model's context; each case a user hit, through the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tokenjoule.cli import app
from tokenjoule.sim.notes import QUEUE_GROWTH_S_PER_S

TOY = str(Path(__file__).parents[1] / "fixtures" / "profiles" / "toy_h100_llama-3.1-8b.json")
H100 = "h100-llama-3.1-8b-tokenjoule-cudagraph"  # measured on a recorded grid: 512 seqs, 16,384 tokens
OVERLOADED = ["--synthetic", "n=2000,input=512,output=64,rate=200"]  # ~4x what one replica serves
STEADY = ["--synthetic", "n=40,input=512,output=64,rate=20"]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def summary_of(*args: str) -> dict:
    result = invoke("simulate", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def note(summary: dict, kind: str) -> dict:
    found = [n for n in summary["notes"] if n["kind"] == kind]
    assert len(found) == 1, summary["notes"]
    return found[0]


# 1. Overload


def test_overloaded_run_says_offered_load_exceeds_what_was_served():
    summary = summary_of("--profile", TOY, *OVERLOADED)
    overload = note(summary, "overload")
    assert overload["offered_req_s"] > 2 * overload["served_req_s"]
    assert overload["served_req_s"] == summary["throughput_req_s"]
    assert overload["offered_tokens_s"] > 2 * overload["served_tokens_s"]
    assert overload["queue_last_tenth_s"] > 10 * overload["queue_first_tenth_s"]
    assert overload["queue_growth_s_per_s"] > QUEUE_GROWTH_S_PER_S
    assert overload["drain_s"] > overload["arrival_span_s"]
    assert overload["message"].startswith("overload: ")


def test_overload_is_shown_under_the_table():
    result = invoke("simulate", "--profile", TOY, *OVERLOADED)
    assert result.exit_code == 0, result.output
    assert "overload (below)" in result.output  # the table's warnings row
    assert "warning: overload: " in result.output and "req/s offered" in result.output


def test_static_batching_behind_the_bundled_trace_is_overloaded():
    # The user's case: TTFT p50 of 2,793 s against a 3,502 s trace, reported without a word.
    summary = summary_of("--policy", "static", "--max-batch", "16")
    assert summary["ttft_p50_s"] > 1000
    overload = note(summary, "overload")
    assert overload["arrival_span_s"] == pytest.approx(3501.7, abs=1)
    assert overload["offered_req_s"] > 2 * overload["served_req_s"]
    padded = note(summary, "extrapolation")["dimensions"]["iteration_tokens"]  # 16 prompts padded to 14,050 tokens
    assert padded["priced_max"] == 16 * 14050 and padded["times"] == pytest.approx(13.7, abs=0.05)


def test_requests_all_at_t0_are_a_growing_queue():
    summary = summary_of("--profile", TOY, "--synthetic", "n=20000,input=256,output=32", "--policy", "static",
                         "--max-batch", "64")
    overload = note(summary, "overload")
    assert overload["offered_req_s"] is None and overload["arrival_span_s"] == 0
    assert overload["queue_growth_s_per_s"] is None
    assert overload["queue_last_tenth_s"] > overload["service_p50_s"] > 0
    assert "arrive at once" in overload["message"]


def test_readme_default_run_has_no_notes():
    summary = summary_of()
    assert summary["requests"] == 19366 and summary["notes"] == []


def test_steady_small_run_has_no_notes_and_no_warning_lines():
    assert summary_of("--profile", TOY, *STEADY)["notes"] == []
    result = invoke("simulate", "--profile", TOY, *STEADY)
    assert result.exit_code == 0 and "warning" not in result.output


def test_compare_prints_each_cells_notes_with_its_label():
    result = invoke("compare", "--profiles", TOY, "--policies", "static,continuous", *OVERLOADED)
    assert result.exit_code == 0, result.output
    assert result.output.count("warning: ") == 2
    data = json.loads(invoke("compare", "--profiles", TOY, "--policies", "static,continuous", *OVERLOADED,
                             "--json").stdout)
    assert all(note(cell["summary"], "overload") for cell in data["cells"])


# 2. Extrapolation beyond the profile's measured range


def test_long_prompts_are_priced_beyond_the_measured_range():
    summary = summary_of("--profile", H100, "--synthetic", "n=4,input=40000,output=16,rate=1", "--policy", "chunked")
    extra = note(summary, "extrapolation")
    assert extra["range_source"] == "grid" and extra["requests_beyond"] == 4
    assert set(extra["dimensions"]) == {"prompt_tokens", "context_tokens"}  # chunks stay within 2,048 tokens
    prompt = extra["dimensions"]["prompt_tokens"]
    assert prompt["measured_max"] == 16384 and prompt["priced_max"] == 40000
    assert prompt["times"] == pytest.approx(40000 / 16384)
    assert extra["dimensions"]["context_tokens"]["priced_max"] == 40000 + 16 - 2  # the last step's context
    assert extra["max_times"] == pytest.approx(40014 / 16384)
    assert 0 < extra["iterations_beyond"] < extra["iterations"]


def test_a_decode_batch_beyond_the_measured_one_is_counted():
    summary = summary_of("--profile", H100, "--synthetic", "n=1024,input=128,output=16", "--max-num-seqs", "1024")
    batch = note(summary, "extrapolation")["dimensions"]["decode_seqs"]
    assert batch["measured_max"] == 512 and batch["priced_max"] == 1024 and batch["times"] == 2.0


def test_extrapolation_is_shown_under_the_table():
    result = invoke("simulate", "--profile", H100, "--synthetic", "n=2,input=30000,output=4", "--policy", "static")
    assert result.exit_code == 0, result.output
    assert "warning: extrapolation: " in result.output and "the measured 16,384" in result.output


def test_within_the_measured_range_says_nothing():
    summary = summary_of("--profile", H100, "--synthetic", "n=64,input=4096,output=64,rate=2", "--policy", "chunked")
    assert summary["notes"] == []


# 3. The model's context length


def test_requests_longer_than_the_context_are_rejected_not_simulated(tmp_path):
    trace = tmp_path / "long.parquet"
    pq.write_table(pa.table({"request_id": [0, 1, 2, 3], "arrival_s": [0.0, 0.5, 1.0, 1.5],
                             "input_tokens": pa.array([100, 400_000, 300, 131_000], pa.int32()),
                             "output_tokens": pa.array([10, 20, 30, 100], pa.int32())}), trace)
    summary = summary_of("--profile", TOY, "--trace", str(trace), "--policy", "chunked")
    assert summary["finished"] == 2 and summary["rejected_by_reason"] == {"context_length": 2}
    assert summary["input_tokens"] == 400  # only the two short requests were simulated
    context = note(summary, "context_length")
    assert context["max_context_tokens"] == 131072 and context["longest_tokens"] == 400_020
    table = invoke("simulate", "--profile", TOY, "--trace", str(trace), "--policy", "chunked")
    assert "rejected by reason" in table.output and "context_length 2" in table.output
    assert "warning: context length: 2 requests rejected" in table.output


def test_context_of_a_model_the_profile_does_not_record_comes_from_its_preset(tmp_path):
    data = json.loads(Path(TOY).read_text())
    del data["model"]["max_position_embeddings"]  # llama-3.1-8b is a preset: 131,072 tokens
    profile = tmp_path / "no_context.json"
    profile.write_text(json.dumps(data))
    summary = summary_of("--profile", str(profile), "--synthetic", "n=2,input=200000,output=10")
    assert summary["rejected_by_reason"] == {"context_length": 2}
    assert note(summary, "context_length")["max_context_tokens"] == 131072


def test_unknown_context_is_not_checked_and_says_so(tmp_path):
    data = json.loads(Path(TOY).read_text())
    del data["model"]["max_position_embeddings"]
    data["model"]["name"] = "my-finetune"  # no preset to ask
    profile = tmp_path / "unknown_context.json"
    profile.write_text(json.dumps(data))
    args = ("--profile", str(profile), "--synthetic", "n=2,input=200000,output=10", "--policy", "chunked")
    summary = summary_of(*args)
    assert summary["rejected"] == 0 and summary["finished"] == 2
    assert note(summary, "context_unchecked")["model"] == "my-finetune"
    result = invoke("simulate", *args)
    assert "warning: context length unknown" in result.output
