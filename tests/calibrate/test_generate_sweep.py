"""The generate()-based HF sweep: derived fit rows, planning, resume, and a whole calibration on a fake engine."""

import dataclasses
import logging
from pathlib import Path

import pytest

from tokenjoule.calibrate.fit_sweep import fit_rows, host_band
from tokenjoule.calibrate.measure import aligned
from tokenjoule.calibrate.measure.aligned import measure_aligned
from tokenjoule.calibrate.measure.fake import FakeMeter, FakeRunner, FakeTimeline
from tokenjoule.calibrate.pipeline import CalibrationConfig, calibrate
from tokenjoule.calibrate.profile import load_profile, resolve_profile_path
from tokenjoule.calibrate.refit import refit_profile
from tokenjoule.calibrate.summary import static_batch_cost
from tokenjoule.calibrate.sweep import generate as generate_sweep
from tokenjoule.calibrate.sweep.generate import (
    POINT_SHARE,
    GenerateGrid,
    TimeModel,
    call_id,
    derive_fit_rows,
    plan_points,
    run_generate_sweep,
)
from tokenjoule.calibrate.sweep.grid import GridConfig
from tokenjoule.calibrate.sweep.iterations import base_row, read_rows, shape_from_row, write_rows
from tokenjoule.kernels.shape import IterationShape
from tokenjoule.kernels.spec import ModelSpec

SPEC = ModelSpec.from_name("llama-3.1-8b")
TOY_PROFILE_PATH = Path(__file__).parent.parent / "fixtures" / "profiles" / "toy_h100_llama-3.1-8b.json"
SMALL = GenerateGrid(prefill_batches=(1, 4, 16), prefill_lengths_tokens=(128, 1024), new_tokens=8, target_s=0.3,
                     repeats=2, idle_s=0.5, settle_s=1.0, budget_s=1000.0)


class FakeGenerateRunner:
    """generate() on a FakeTimeline: a per-call setup, the profile's prefill, then per decode step the profile's
    decode cost plus a fixed host overhead at its own power (what generate() adds to a forward pass).

    Args:
        timeline: the simulated clock and power.
        profile: iteration costs (e.g. the toy profile).
        setup: (seconds, watts) of generate()'s per-call setup.
        overhead: (seconds, watts) added to every decode step.
        kv_capacity_tokens: what the engine reports; calls needing more KV tokens raise ValueError.
    """

    def __init__(self, timeline, profile, setup=(0.02, 150.0), overhead=(0.03, 120.0), kv_capacity_tokens=400_000):
        self.timeline, self.cost, self.spec = timeline, profile.cost, profile.model
        self.setup, self.overhead = setup, overhead
        self.kv_capacity_tokens = self.limit_tokens = kv_capacity_tokens
        self.calls = []

    def segments(self, batch, prompt, new):
        """(seconds, joules) of the setup, the prefill, then each decode step."""
        (s_s, s_w), (o_s, o_w) = self.setup, self.overhead
        segs = [(s_s, s_s * s_w), self.cost(IterationShape(prefill=((prompt, 0),) * batch))]
        for ctx in range(prompt, prompt + new - 1):
            t, e = self.cost(IterationShape(decode=(ctx,) * batch))
            segs.append((t + o_s, e + o_s * o_w))
        return segs

    def expected(self, batch, prompt, new):
        """The exact (seconds, joules) of one call."""
        segs = self.segments(batch, prompt, new)
        return sum(t for t, _ in segs), sum(e for _, e in segs)

    def generate(self, batch, prompt, new, streamer=None):
        if batch * (prompt + new) > self.limit_tokens:
            raise ValueError(f"needs {batch * (prompt + new)} KV tokens")
        self.calls.append((batch, prompt, new))
        for t, e in self.segments(batch, prompt, new):
            self.timeline.run(t, e / t)
            if streamer is not None:  # the prompt after the setup, then each step's tokens
                streamer.put(None)
        if streamer is not None:
            streamer.end()


def _fakes(toy_profile, **kwargs):
    timeline = FakeTimeline(idle_power_w=toy_profile.idle_power_w)
    meter = FakeMeter(timeline, (0,), update_period_s=0.1, phase_s=0.041)
    return timeline, meter, FakeGenerateRunner(timeline, toy_profile, **kwargs)


def _gen_row(batch, prompt, new, repeat, time_s, energy_j, bound=0.01, warmup=None):
    """A generate() raw row; warmed by the whole call unless `warmup` says otherwise (0: a legacy row, no record)."""
    row = base_row(call_id(batch, prompt, new), "generate", IterationShape(prefill=((prompt, 0),) * batch), repeat)
    row.update(output_tokens=new, warmup_tokens=(warmup if warmup is not None else new) or None, steps=1,
               step_time_s=time_s, energy_per_step_j=energy_j, error_bound=bound)
    return row


def test_derive_fit_rows_recovers_per_step_costs_repeat_by_repeat():
    idle = base_row("idle", "idle", IterationShape(), 0)
    idle.update(power_w=80.0)
    rows = [idle]
    for repeat, (step_s, step_j) in enumerate(((0.08, 25.0), (0.09, 27.0))):
        rows += [_gen_row(4, 1024, 1, repeat, 0.2 + repeat * 0.01, 60.0 + repeat),
                 _gen_row(4, 1024, 33, repeat, 0.2 + repeat * 0.01 + 32 * step_s, 60.0 + repeat + 32 * step_j)]
    rows.append(_gen_row(8, 128, 33, 0, 3.0, 900.0))  # a long call without its short one: no decode point
    skipped = _gen_row(8, 128, 1, 0, 0.1, 30.0)
    skipped.update(status="skipped", reason="out of memory")
    rows.append(skipped)
    out = derive_fit_rows(rows)
    assert out[0] is idle and not any(r["kind"] == "generate" for r in out)
    decode = {r["repeat"]: r for r in out if r["kind"] == "decode"}
    prefill = {r["repeat"]: r for r in out if r["kind"] == "prefill"}
    assert set(decode) == set(prefill) == {0, 1} and len(out) == 5
    for repeat, (step_s, step_j) in enumerate(((0.08, 25.0), (0.09, 27.0))):
        d = decode[repeat]
        assert d["step_time_s"] == pytest.approx(step_s) and d["energy_per_step_j"] == pytest.approx(step_j)
        assert shape_from_row(d) == IterationShape(decode=(1024 + 16,) * 4)  # contexts 1024 .. 1055
        assert d["reason"].startswith("derived from generate(4, 1024, 33)") and d["steps"] == 32
        e1, en = 60.0 + repeat, 60.0 + repeat + 32 * step_j
        assert d["error_bound"] == pytest.approx(0.01 * (e1 + en) / (en - e1))
        p = prefill[repeat]
        assert shape_from_row(p) == IterationShape(prefill=((1024, 0),) * 4)
        assert p["step_time_s"] == pytest.approx(0.2 + repeat * 0.01) and p["energy_per_step_j"] == 60.0 + repeat
    assert derive_fit_rows([idle]) == [idle]


def test_a_long_calls_first_window_after_a_short_warm_up_is_left_out_as_cold():
    # raw files before the whole-call warm-up: the long call's first window ran ~2x the later ones (three H200s)
    legacy = [_gen_row(4, 1024, 1, r, 0.2, 60.0, warmup=0) for r in (0, 1, 2)]
    legacy += [_gen_row(4, 1024, 33, r, 0.2 + 32 * s, 60.0 + 32 * 10 * s, warmup=0)
               for r, s in ((0, 0.09), (1, 0.04), (2, 0.05))]
    decode = {r["repeat"]: r["step_time_s"] for r in derive_fit_rows(legacy) if r["kind"] == "decode"}
    assert decode == {1: pytest.approx(0.04), 2: pytest.approx(0.05)}
    # the host band leaves the cold window out too
    many = legacy + [_gen_row(8, 128, n, r, 0.1 * n + 0.01 * r, 20.0 * n + r, warmup=0) for n in (1, 33)
                     for r in range(4)]
    kept = [{**r, "warmup_tokens": r["output_tokens"]} for r in many
            if not (r["output_tokens"] > 1 and r["repeat"] == 0)]
    assert host_band(many) == host_band(kept) and host_band(many).windows == len(kept) == 12
    assert host_band(many) != host_band([{**r, "warmup_tokens": r["output_tokens"]} for r in many])
    # a window warmed by the whole call is kept, first or not; so is a short call's first window
    warmed = [{**row, "warmup_tokens": row["output_tokens"]} for row in legacy]
    assert {r["repeat"] for r in derive_fit_rows(warmed) if r["kind"] == "decode"} == {0, 1, 2}
    assert {r["repeat"] for r in derive_fit_rows(legacy) if r["kind"] == "prefill"} == {0, 1, 2}


def test_derived_rows_skip_a_long_call_that_is_not_dearer(caplog):
    rows = [_gen_row(1, 128, 1, 0, 0.5, 100.0), _gen_row(1, 128, 9, 0, 0.4, 90.0)]
    with caplog.at_level(logging.WARNING):
        out = derive_fit_rows(rows)
    assert [r["kind"] for r in out] == ["prefill"] and "not dearer" in caplog.text


def test_old_forward_pass_hf_raw_file_refits_unchanged():
    path = resolve_profile_path("h100-llama-3.1-8b-hf-eager")
    shipped = load_profile(path)
    rows = read_rows(path.parent / shipped.raw_path)  # written before the output_tokens column existed
    assert derive_fit_rows(rows) == rows and all(r["output_tokens"] is None for r in rows)
    refitted = refit_profile(path)
    for mine, theirs in ((refitted.latency, shipped.latency), (refitted.energy, shipped.energy)):
        # the shipped curves were fitted on another machine: BLAS kernels differ there in the last bits
        a, b = dataclasses.asdict(mine), dataclasses.asdict(theirs)
        assert a.keys() == b.keys() and a["coef"].keys() == b["coef"].keys()
        for key in a:
            if key == "coef":
                assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-15)
            elif isinstance(a[key], tuple | list):
                assert list(a[key]) == pytest.approx(list(b[key]), rel=1e-9, abs=1e-15)
            else:
                assert a[key] == b[key]


def test_generate_grid_is_a_grid_config_with_its_own_checks():
    grid = GenerateGrid()
    assert isinstance(grid, GridConfig) and not grid.decode_batches and not grid.mixed
    assert (grid.new_tokens, grid.repeats, grid.budget_s) == (32, 3, 200.0)
    assert GenerateGrid.quick().new_tokens == 8
    with pytest.raises(ValueError, match="warmup_steps"):
        GenerateGrid(warmup_steps=0)
    with pytest.raises(ValueError, match="prefill_batches"):
        GenerateGrid(prefill_batches=())
    with pytest.raises(ValueError, match="budget_s"):
        GenerateGrid(budget_s=0)


def test_time_model_adds_modeled_work_to_the_probed_floors():
    m = TimeModel.from_spec(SPEC, call_s=0.05, step_s=0.08)
    assert m.call(1, 1, 1) == pytest.approx(0.05, rel=0.01)
    assert m.call(1, 128, 33) - m.call(1, 128, 1) == pytest.approx(32 * 0.08, rel=0.05)
    assert m.call(64, 4096, 1) > 20 * m.call(1, 4096, 1) > m.call(1, 128, 1)
    assert m.call(64, 4096, 33) - m.call(64, 4096, 1) > m.call(1, 4096, 33) - m.call(1, 4096, 1)


def test_plan_respects_kv_capacity_budget_and_goes_coarse_to_fine():
    grid = GenerateGrid()
    m = TimeModel.from_spec(SPEC, call_s=0.06, step_s=0.08)
    everything = plan_points(grid, 10**7, m, 10**6)
    assert len(everything) == 42
    capped = plan_points(grid, 100_000, m, 10**6)
    assert capped and all(b * (length + grid.new_tokens + 1) <= 95_000 for b, length in capped)
    assert (64, 4096) not in capped and (1, 4096) in capped
    budget = 300.0  # the long call runs twice per repeat (its warm-up is the whole call)
    plan = plan_points(grid, 10**7, m, budget)
    costs = {p: grid.repeats * m.point(grid, *p) for p in plan}
    assert sum(costs.values()) <= budget and max(costs.values()) <= POINT_SHARE * budget
    assert {(1, 128), (1, 4096), (64, 128), (8, 512)} <= set(plan)  # corners that fit, then the middle
    assert (64, 4096) not in plan  # alone it would take more than its share of the budget
    assert plan == sorted(plan, key=lambda p: (p[0] * p[1], p[0]))
    kept = plan_points(grid, 10**7, m, 1.0, keep=[(32, 2048)])
    assert kept == [(32, 2048)]  # a resumed point is completed even past the budget


def test_sweep_interleaves_repeats_and_resumes_per_window(toy_profile, tmp_path):
    path = tmp_path / "raw.parquet"
    timeline, meter, runner = _fakes(toy_profile)
    rows = run_generate_sweep(runner, meter, SMALL, path, wait=timeline.idle, progress=False)
    gen = [r for r in rows if r["kind"] == "generate"]
    assert len(gen) == 6 * 2 * SMALL.repeats and rows[-1]["kind"] == "idle"
    assert all(r["status"] == "ok" and r["output_tokens"] in (1, 9) for r in gen)
    assert [r["repeat"] for r in gen] == sorted(r["repeat"] for r in gen)  # pass 0 first, then pass 1
    order = [r["point_id"] for r in gen if r["output_tokens"] == 1]
    assert order[6:] == order[:6][::-1]  # the second pass goes back the other way
    assert read_rows(path) == rows
    dropped = {(call_id(4, 1024, 9), 1), (call_id(16, 128, 1), 0), ("idle", 0)}
    write_rows([r for r in rows if (r["point_id"], r["repeat"]) not in dropped], path)
    timeline, meter, runner = _fakes(toy_profile)
    again = run_generate_sweep(runner, meter, SMALL, path, wait=timeline.idle, progress=False)
    assert {(r["point_id"], r["repeat"]) for r in again[len(rows) - 3:]} == dropped
    assert len(again) == len(rows)
    timeline, meter, runner = _fakes(toy_profile)
    assert run_generate_sweep(runner, meter, SMALL, path, wait=timeline.idle, progress=False) == read_rows(path)
    assert len(runner.calls) == 3  # the probe only: every (point, call, repeat) is in the file


def test_sweep_records_refused_shapes_and_stops_at_its_deadline(toy_profile, tmp_path, monkeypatch, caplog):
    timeline, meter, runner = _fakes(toy_profile, kv_capacity_tokens=10**6)
    runner.limit_tokens = 16 * 1025  # the plan believes (16, 1024) fits; the engine runs its short call only
    rows = run_generate_sweep(runner, meter, SMALL, tmp_path / "raw.parquet", wait=timeline.idle, progress=False)
    refused = [r for r in rows if r["status"] == "skipped"]
    assert [r["point_id"] for r in refused] == [call_id(16, 1024, 9)] and "KV" in refused[0]["reason"]
    assert not any(r["point_id"] == call_id(16, 1024, 9) and r["repeat"] == 1 for r in rows)
    monkeypatch.setattr(generate_sweep, "OVERRUN", 0.0)
    timeline, meter, runner = _fakes(toy_profile)
    with caplog.at_level(logging.WARNING):
        rows = run_generate_sweep(runner, meter, SMALL, tmp_path / "late.parquet", wait=timeline.idle,
                                  progress=False)
    assert [r["kind"] for r in rows] == ["idle"] and "stopping before" in caplog.text


class _PhasedGenerate(FakeGenerateRunner):
    """Batch-4 calls take 1.6x longer in the 1st and 3rd run of back-to-back calls of their shape (a slow phase)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.runs = {}

    def generate(self, batch, prompt, new, streamer=None):
        key = (batch, prompt, new)
        if not self.calls or self.calls[-1] != key:
            self.runs[key] = self.runs.get(key, 0) + 1
        if batch == 4 and self.runs[key] in (1, 3):
            self.timeline.run(0.6 * self.expected(batch, prompt, new)[0], 100.0)
        super().generate(batch, prompt, new, streamer)


def test_points_whose_calls_disagree_get_extra_passes_in_the_budget_left(toy_profile, tmp_path):
    timeline, meter, _ = _fakes(toy_profile)
    runner = _PhasedGenerate(timeline, toy_profile)
    rows = run_generate_sweep(runner, meter, SMALL, tmp_path / "raw.parquet", wait=timeline.idle, progress=False)
    gen = [r for r in rows if r["kind"] == "generate"]
    extra = {(r["point_id"], r["repeat"]) for r in gen if r["repeat"] >= SMALL.repeats}
    # only the batch-4 points disagreed; each got both calls in each of the two extra passes
    assert extra == {(call_id(4, length, n), r) for length in (128, 1024) for n in (1, 9) for r in (2, 3)}
    assert rows[-1]["kind"] == "idle" and len(gen) == 6 * 2 * SMALL.repeats + len(extra)
    # with no budget left after the main passes, the extra passes are not started
    timeline, meter, _ = _fakes(toy_profile)
    rows = run_generate_sweep(_PhasedGenerate(timeline, toy_profile), meter, dataclasses.replace(SMALL, budget_s=1.0),
                              tmp_path / "late.parquet", wait=timeline.idle, progress=False)
    assert not any(r["repeat"] >= SMALL.repeats for r in rows if r["kind"] == "generate")


@pytest.fixture(scope="module")
def whole_grid(tmp_path_factory):
    """A generate() calibration of the whole default grid on the fake engine: (profile, runner, raw path)."""
    timeline, meter, runner = _fakes(load_profile(TOY_PROFILE_PATH))
    config = CalibrationConfig(engine="hf", mode="eager", grid=GenerateGrid(budget_s=5000.0, settle_s=2.0))
    path = tmp_path_factory.mktemp("whole") / "hf.json"
    profile = calibrate(SPEC, config, path, runner=runner, meter=meter, wait=timeline.idle, progress=False)
    return profile, runner, path.with_name("hf.raw.parquet")


def test_generate_calibration_records_raw_calls_and_its_method(whole_grid, toy_profile):
    profile, _, raw_path = whole_grid
    assert profile.method["time"].startswith("generate()-based") and profile.method["grid"]["new_tokens"] == 32
    assert profile.engine == "hf" and profile.idle_power_w == pytest.approx(toy_profile.idle_power_w)
    raw = read_rows(raw_path)
    assert {r["kind"] for r in raw} == {"generate", "idle"}
    assert fit_rows(raw)["fit_errors"]["latency"]["n_points"] == 2 * 42  # a prefill and a decode point each


@pytest.mark.parametrize("run", [(4, 1024, 128), (16, 2048, 64), (8, 512, 256), (32, 128, 512), (1, 128, 33)])
def test_generate_calibration_predicts_the_fake_generate_within_2pct(whole_grid, run):
    profile, runner, _ = whole_grid
    time_s, energy_j = runner.expected(*run)
    predicted = static_batch_cost(profile, *run)
    assert predicted["energy_j"] == pytest.approx(energy_j, rel=0.02)
    assert predicted["time_s"] == pytest.approx(time_s, rel=0.02)


def test_budgeted_calibration_still_predicts_the_issue_run(toy_profile, tmp_path):
    timeline, meter, runner = _fakes(toy_profile)
    config = CalibrationConfig(engine="hf", mode="eager", grid=GenerateGrid())
    profile = calibrate(SPEC, config, tmp_path / "hf.json", runner=runner, meter=meter, wait=timeline.idle,
                        progress=False)
    assert timeline.now_s < GenerateGrid().budget_s * 1.2  # the planned budget held (simulated seconds)
    time_s, energy_j = runner.expected(4, 1024, 128)
    assert static_batch_cost(profile, 4, 1024, 128)["energy_j"] == pytest.approx(energy_j, rel=0.02)


def test_generate_grid_needs_engine_hf_and_a_generate_runner(toy_profile, tmp_path):
    timeline = FakeTimeline(idle_power_w=toy_profile.idle_power_w)
    meter = FakeMeter(timeline, (0,), update_period_s=0.1)
    forward = FakeRunner(timeline, toy_profile.cost)
    for engine in ("tokenjoule", "hf"):
        with pytest.raises(ValueError, match="GenerateGrid"):
            calibrate(SPEC, CalibrationConfig(engine=engine, grid=SMALL), tmp_path / "p.json", runner=forward,
                      meter=meter, wait=timeline.idle, progress=False)


def test_a_window_from_a_tick_counts_a_non_steady_call_exactly(timeline):
    meter = FakeMeter(timeline, (0,), update_period_s=0.1, phase_s=0.037)

    def call():  # a hot head, then a long cool tail: one call per window
        timeline.run(0.15, 600.0)
        timeline.run(0.85, 200.0)

    exact_j = 0.15 * 600.0 + 0.85 * 200.0
    timeline.idle(0.05)
    from_tick = aligned.measure_from_tick(meter, call, target_s=0.25, wait=timeline.idle)
    assert from_tick.steps == 1 and from_tick.energy_per_step_j == pytest.approx(exact_j, rel=1e-6)
    assert from_tick.error_bound < 0.01
    timeline.idle(0.05)
    steady = measure_aligned(meter, call, target_s=0.25, min_steps=1, warmup_steps=0)
    assert abs(steady.energy_per_step_j / exact_j - 1) > 0.05  # the head before the first tick is lost
    continuous = FakeMeter(timeline, (0,), update_period_s=0.0)
    assert aligned.measure_from_tick(continuous, call, 0.25, timeline.idle).energy_per_step_j == (
        pytest.approx(exact_j))


def test_generate_check_keeps_the_shipped_keys_and_labels_the_prediction(whole_grid, toy_profile):
    from tokenjoule.calibrate.gpu_run import check_line, generate_check

    profile, _, _ = whole_grid
    timeline, meter, runner = _fakes(toy_profile)
    check = generate_check(runner, meter, profile, "hf.json", wait=timeline.idle)
    time_s, energy_j = runner.expected(4, 1024, 128)
    assert check["hf_generate_b4_1024in_128out_s"] == pytest.approx(time_s)
    assert check["hf_generate_b4_1024in_128out_j"] == pytest.approx(energy_j, rel=1e-3)
    assert check["hf_generate_j_per_output_token"] == pytest.approx(energy_j / 512, rel=1e-3)
    assert len(check["repeats"]) == 3 and set(check["provenance"]) >= {"gpu", "torch", "driver", "power_limit_w"}
    pred = check["modeled_prediction"]
    assert "modeled" in pred["source"] and abs(pred["energy_error"]) < 0.02 and abs(pred["time_error"]) < 0.02
    assert check_line(check).startswith("generate_b4_1024in_128out: measured")
