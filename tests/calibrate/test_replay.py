"""The replay harness on this package's real engine (tiny model, CPU) and the device entry end to end."""

import dataclasses
import json
import sys
import time

import pyarrow.parquet as pq
import pytest
from fake_pynvml import make_pynvml

from tokenjoule.calibrate.measure.meters import TimeOnlyMeter
from tokenjoule.calibrate.profile import load_profile
from tokenjoule.calibrate.sweep.grid import GridConfig
from tokenjoule.calibrate.validate.replay import PrefillFirstScheduler, ReplayRequest, replay, use_policy
from tokenjoule.kernels.block_manager import BlockManager
from tokenjoule.kernels.sequence import Sequence, SequenceStatus
from tokenjoule.kernels.spec import ModelSpec

TINY = dataclasses.replace(ModelSpec.from_name("llama-3.2-1b"), n_layers=2, hidden_size=64, n_heads=4, n_kv_heads=2,
                           head_dim=16, intermediate_size=128, vocab_size=512, dtype="float32")


def _seq(seq_id, prompt, decoding=False):
    seq = Sequence(seq_id=seq_id, token_ids=[1] * (prompt + decoding), prompt_len=prompt, max_output_tokens=50)
    if decoding:
        seq.num_computed_tokens, seq.status = prompt, SequenceStatus.RUNNING
    return seq


def test_prefill_first_admits_whole_prompts_within_budget_and_seats():
    bm = BlockManager(64, 16)
    sched = PrefillFirstScheduler(bm, max_num_seqs=3, max_num_batched_tokens=100)
    running = _seq(0, 10, decoding=True)
    bm.allocate(0, 10)
    sched.running.append(running)
    for i, n in ((1, 40), (2, 50), (3, 5)):
        sched.add(_seq(i, n))
    batch = sched.schedule()  # 40 + 50 fit the 100-token budget; seat limit 3 (one running) stops the third
    assert [(s.seq_id, n) for s, n in batch.prefill] == [(1, 40), (2, 50)] and batch.decode == ()
    for seq, n in batch.prefill:
        seq.commit(n, 7, 0.0)
    batch = sched.schedule()  # no seat left: a decode-only step of everyone
    assert batch.prefill == () and {s.seq_id for s in batch.decode} == {0, 1, 2}


def test_prefill_first_keeps_arrival_order_when_the_head_does_not_fit():
    sched = PrefillFirstScheduler(BlockManager(64, 16), max_num_seqs=8, max_num_batched_tokens=100)
    sched.add(_seq(1, 90))
    sched.add(_seq(2, 20))
    batch = sched.schedule()
    assert [s.seq_id for s, _ in batch.prefill] == [1]  # 2 would fit the leftover budget but waits its turn


torch = pytest.importorskip("torch")


class FakeClock:
    """Engine time: 1 ms per reading (the work), plus whatever the harness sleeps."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        self.t += 1e-3
        return self.t

    def sleep(self, s):
        self.t += s


@pytest.fixture(scope="module")
def clock():
    return FakeClock()


@pytest.fixture(scope="module")
def engine(clock):
    from tokenjoule.calibrate.validate.replay import build_engine
    from tokenjoule.kernels.runner import RunnerConfig

    return build_engine(TINY, RunnerConfig(mode="eager", device="cpu", max_num_seqs=8, max_num_batched_tokens=256,
                                           num_kv_blocks=256), clock=clock)


def _meter():
    return TimeOnlyMeter((0,), reason="test", sync=lambda: None)


@pytest.mark.parametrize("policy", ["continuous", "chunked"])
def test_online_replay_honours_arrivals_and_policy(engine, clock, policy):
    use_policy(engine, policy, max_num_seqs=8, max_num_batched_tokens=64 if policy == "chunked" else 256)
    reqs = [ReplayRequest(10, 0.0, 100, 6), ReplayRequest(11, 0.0, 30, 4), ReplayRequest(12, 1.0, 20, 3)]
    slept = []
    result = replay(engine, reqs, _meter(), name=policy, sleep=lambda s: (slept.append(s), clock.sleep(s)))
    assert result.completed and not engine.has_unfinished and result.energy_j is None
    got = {r["request_id"]: r for r in result.requests}
    assert set(got) == {10, 11, 12}
    for q in reqs:
        r = got[q.request_id]
        assert r["arrival_s"] == q.arrival_s and r["output_tokens"] == q.output_tokens
        assert q.arrival_s <= r["first_token_s"] <= r["finish_s"] <= result.meta["window_end_s"]
    first_12 = min(i["start_s"] for i in result.iterations if i["prefill_tokens"] == 20)
    assert first_12 >= 1.0  # not fed before its arrival time
    assert sum(i["new_tokens"] for i in result.iterations) == 100 + 30 + 20 + (5 + 3 + 2)
    for i in result.iterations:  # the longest decode context sits between the mean and the sum
        n = i["decode_seqs"]
        assert (i["decode_max_ctx_tokens"] == 0) if n == 0 else (
            i["decode_ctx_tokens"] / n <= i["decode_max_ctx_tokens"] <= i["decode_ctx_tokens"])
    mixed = [i for i in result.iterations if i["prefill_seqs"] and i["decode_seqs"]]
    if policy == "continuous":
        assert not mixed  # prefill-first: an iteration prefills or decodes, never both
        assert result.iterations[0]["prefill_seqs"] == 2  # both t=0 prompts admitted together
    else:
        assert max(i["new_tokens"] for i in result.iterations) <= 64  # the chunk budget
    assert slept and result.idle_s == pytest.approx(sum(slept))  # idle between the t=0 pair and the third
    assert first_12 == pytest.approx(1.0, abs=0.01)


def test_static_replay_runs_one_batch_at_a_time(engine):
    use_policy(engine, "continuous", max_num_seqs=8, max_num_batched_tokens=256)
    reqs = [ReplayRequest(i, 0.0, 16, 5) for i in range(4)]
    result = replay(engine, reqs, _meter(), static_batch=2)
    got = {r["request_id"]: r for r in result.requests}
    assert max(got[i]["finish_s"] for i in (0, 1)) <= min(got[i]["first_token_s"] for i in (2, 3))
    prefills = [i for i in result.iterations if i["prefill_seqs"]]
    assert [i["prefill_seqs"] for i in prefills] == [2, 2]
    assert len(result.iterations) == 2 * (1 + 4)


def test_use_policy_refuses_limits_beyond_the_runner_and_busy_engines(engine):
    with pytest.raises(ValueError, match="exceed"):
        use_policy(engine, "chunked", max_num_seqs=9, max_num_batched_tokens=64)
    with pytest.raises(ValueError, match="policy"):
        use_policy(engine, "static", max_num_seqs=8, max_num_batched_tokens=64)
    use_policy(engine, "continuous", max_num_seqs=8, max_num_batched_tokens=64)
    with pytest.raises(ValueError, match="max_num_batched_tokens=64"):
        replay(engine, [ReplayRequest(1, 0.0, 60, 6)], _meter())
    with pytest.raises(ValueError, match="arrival order"):
        replay(engine, [ReplayRequest(1, 1.0, 4, 2), ReplayRequest(2, 0.5, 4, 2)], _meter())


def test_scenario_requests_slice_scale_and_offline():
    from tokenjoule.calibrate.validate.scenarios import MAX_TOTAL_TOKENS, SCENARIOS, Scenario, scenario_requests

    s = Scenario("c", "chunked", trace="azure-code-2023", start_s=600.0, window_s=10.0, rate_scale=2.0)
    reqs = scenario_requests(s)
    assert reqs and all(0 <= r.arrival_s < 5.0 for r in reqs)
    assert all(r.input_tokens + r.output_tokens <= MAX_TOTAL_TOKENS for r in reqs)
    off = scenario_requests(Scenario("o", "continuous", static_batch=3, static_batches=2, static_input_tokens=7,
                                     static_output_tokens=5))
    assert len(off) == 6 and {(r.arrival_s, r.input_tokens, r.output_tokens) for r in off} == {(0.0, 7, 5)}
    assert len({s.name for s in SCENARIOS}) == len(SCENARIOS) >= 6


def _validate_run(monkeypatch, out, plan):
    """`tokenjoule validate run --out OUT` with `plan` in place of the one its flags make; the exit code."""
    from tokenjoule.calibrate.validate import device as vd
    from tokenjoule.cli import main

    monkeypatch.setattr(vd, "make_plan", lambda *args, **kwargs: plan)
    return main(["validate", "run", "--out", out])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:tick timing bounds")
def test_device_entry_end_to_end_on_cpu(tmp_path, monkeypatch):
    from tokenjoule.calibrate.validate import device as vd
    from tokenjoule.calibrate.validate import scenarios as scenario_data

    start = time.perf_counter()
    monkeypatch.setitem(sys.modules, "pynvml", make_pynvml(
        energy_mj=lambda i: int(100.0 * int((time.perf_counter() - start) / 0.01) * 0.01 * 1000)))
    grid = GridConfig(prefill_batches=(1, 2), prefill_lengths_tokens=(16, 64), prefill_chunks=(), decode_batches=(1, 4),
                      decode_contexts_tokens=(32, 128), mixed=False, target_s=0.02, warmup_steps=1, idle_s=0.05,
                      settle_s=0.0)
    trace = tmp_path / "tiny.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.0,40,3\n"
                     "2023-11-16 18:15:46.2,900,3\n2023-11-16 18:15:46.4,20,4\n2023-11-16 18:15:49.0,50,2\n")
    scenarios = (vd.Scenario("online", "continuous", max_num_seqs=8, max_num_batched_tokens=256, trace=str(trace),
                             start_s=0.0, window_s=2.0, rate_scale=4.0),
                 vd.Scenario("offline", "continuous", max_num_seqs=8, max_num_batched_tokens=256, static_batch=2,
                             static_batches=2, static_input_tokens=16, static_output_tokens=4))
    plan = vd.Plan(TINY, mode="eager", device="cpu", grid=grid, scenarios=scenarios, max_num_seqs=8,
                   max_num_batched_tokens=256, num_kv_blocks=512, warmup_requests=3, idle_end_s=0.05)
    monkeypatch.setattr(scenario_data, "MAX_TOTAL_TOKENS", 256)
    out = tmp_path / "out"
    assert _validate_run(monkeypatch, str(out), plan) == 0
    tmp_path = out
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and {"requests.parquet", "iterations.parquet", "timeline.parquet", "validation.json",
                                "validate.log"} <= set(files)
    doc = json.loads((tmp_path / "validation.json").read_text())
    assert [s["scenario"]["name"] for s in doc["scenarios"]] == ["online", "offline"]
    assert (tmp_path / doc["profile"]).exists() and doc["kv_capacity_tokens"] == 512 * 16 - 16
    reqs = pq.read_table(tmp_path / "requests.parquet").to_pylist()
    for s in doc["scenarios"]:
        rows = [r for r in reqs if r["scenario"] == s["scenario"]["name"]]
        assert len(rows) == s["n_requests"] == s["n_finished"] == (2 if s["scenario"]["name"] == "online" else 4)
        assert s["completed"]
        assert s["energy_j"] == pytest.approx(100.0 * s["duration_s"], abs=2.0)  # the fake counter's 100 W
    profile = json.loads((out / doc["profile"]).read_text())
    assert profile["host_overhead"]["per_seq_s"] > 0 and not doc["profile_reused"]

    # a second call replays against the first call's profile (copied beside its files, raw data too)...
    again = tmp_path.parent / "again"
    assert _validate_run(monkeypatch, str(again), dataclasses.replace(plan, profile=out / doc["profile"])) == 0
    doc2 = json.loads((again / "validation.json").read_text())
    assert doc2["profile_reused"] and doc2["profile"] == doc["profile"]
    assert (again / doc["profile"]).read_text() == (out / doc["profile"]).read_text()
    assert (again / profile["raw_path"]).exists()
    # ...but not one calibrated on another GPU
    profile["gpu"]["devices"] = [{"uuid": "GPU-someone-else"}]
    other = tmp_path.parent / "other.json"
    other.write_text(json.dumps(profile))
    assert _validate_run(monkeypatch, str(tmp_path.parent / "x"), dataclasses.replace(plan, profile=other)) == 2
    # a short re-calibration carries a full profile here and replays against the carried one
    short = tmp_path.parent / "short"
    small = dataclasses.replace(grid, prefill_batches=(1,), prefill_lengths_tokens=(64,), decode_batches=(4,),
                                decode_contexts_tokens=(128,))
    assert _validate_run(monkeypatch, str(short), dataclasses.replace(plan, short_from=out / doc["profile"],
                                                                   short_grid=small)) == 0
    doc3 = json.loads((short / "validation.json").read_text())
    carried = json.loads((short / doc3["profile"]).read_text())
    assert doc3["profile_short_from"] == doc["profile"] and doc3["profile"] != doc["profile"]
    base_sha = load_profile(out / doc["profile"]).content_sha256
    assert carried["method"]["short_recalibration_of"]["content_sha256"] == base_sha
    assert len(pq.read_table(short / carried["raw_path"])) < len(pq.read_table(out / profile["raw_path"]))
    # a base of another mode is refused in one line, before the engine is built
    graphs = json.loads((out / doc["profile"]).read_text())
    graphs["mode"] = "cudagraph"
    (tmp_path.parent / "graphs.json").write_text(json.dumps(graphs))
    assert _validate_run(monkeypatch, str(tmp_path.parent / "y"), dataclasses.replace(
        plan, short_from=tmp_path.parent / "graphs.json", short_grid=small)) == 2
    assert not (tmp_path.parent / "y" / "validation.json").exists()


def test_device_entry_refuses_unknown_scenarios_in_one_line(tmp_path, capsys):
    from tokenjoule.cli import main

    assert main(["validate", "run", "--out", str(tmp_path), "--quick", "--scenarios", "code_chunked_x1,nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --scenarios: unknown ['nope']") and "code_chunked_x1" in err and "\n" not in err
    assert not (tmp_path / "validation.json").exists()


def test_scenario_table_prints_a_window_without_energy(capsys):
    from tokenjoule.calibrate.validate.device import scenario_table

    lines = scenario_table([{"scenario": {"name": "s"}, "n_requests": 2, "n_finished": 2, "duration_s": 1.5,
                             "energy_j": None}])
    assert lines[1].split()[-3:] == ["-", "-", "-"]
