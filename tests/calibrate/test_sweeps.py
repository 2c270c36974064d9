import pyarrow.parquet as pq
import pytest

from tokenjoule.calibrate.fit_sweep import fit_rows
from tokenjoule.calibrate.measure.fake import FakeMeter, FakeRunner, FakeTimeline
from tokenjoule.calibrate.measure.machine import datasheet_name, host_info
from tokenjoule.calibrate.measure.meters import MeterError, TimeOnlyMeter
from tokenjoule.calibrate.pipeline import CalibrationConfig, calibrate
from tokenjoule.calibrate.profile import load_profile
from tokenjoule.calibrate.sweep.grid import GridConfig, decode_points, grid_points, mixed_points, prefill_points
from tokenjoule.calibrate.sweep.iterations import read_rows, run_sweep, shape_from_row, write_rows
from tokenjoule.kernels.spec import ModelSpec

SMALL = GridConfig(prefill_batches=(1, 2, 4), prefill_lengths_tokens=(128, 512, 1024, 4096),
                   decode_batches=(1, 8, 64, 128, 512),
                   decode_contexts_tokens=(256, 4096), target_s=0.2, idle_s=0.5, settle_s=1.0)


def _setup(toy_profile, uniform_only=False, capacity=None):
    timeline = FakeTimeline(idle_power_w=toy_profile.idle_power_w)
    meter = FakeMeter(timeline, (0,), update_period_s=0.1, phase_s=0.041)
    runner = FakeRunner(timeline, toy_profile.cost, capacity or toy_profile.kv_capacity_tokens, uniform_only)
    return timeline, meter, runner


def _sweep(toy_profile, path, cfg=SMALL, **kwargs):
    timeline, meter, runner = _setup(toy_profile, **kwargs)
    rows = run_sweep(runner, meter, cfg, path, max_num_batched_tokens=16384, max_num_seqs=512, wait=timeline.idle,
                     uniform_only=kwargs.get("uniform_only", False), progress=False)
    return rows, runner, timeline


def test_grid_is_pruned_to_limits():
    cfg = GridConfig()
    prefill = prefill_points(cfg, max_num_batched_tokens=16384, kv_capacity_tokens=10**6, max_num_seqs=512)
    assert all(p.shape.prefill_tokens <= 16384 for p in prefill)
    assert "prefill_b1_l16384" in {p.point_id for p in prefill}
    decode = decode_points(cfg, kv_capacity_tokens=100_000, max_num_seqs=256)
    assert all(p.shape.decode_ctx_tokens + p.shape.decode_seqs <= 95_000 for p in decode)
    assert max(p.shape.decode_seqs for p in decode) == 256
    assert "decode_b1_c16384" in {p.point_id for p in decode}
    assert mixed_points(cfg, 16384, 10**6, 512) and not mixed_points(GridConfig(mixed=False), 16384, 10**6, 512)
    ids = [p.point_id for p in grid_points(cfg, 16384, 10**6, 512)]
    assert len(ids) == len(set(ids))
    assert not any(i.startswith("mixed") for i in ids if i in {p.point_id for p in grid_points(
        cfg, 16384, 10**6, 512, uniform_only=True)})


def test_ragged_points_hold_a_few_long_contexts_among_short_ones():
    cfg = GridConfig(decode_ragged=((128, 1, 8192, 256), (4, 2, 1024, 64), (600, 1, 64, 64)),
                     mixed_chunks=((512, 0),), mixed_decodes=((64, 256, 1, 8192),))
    ragged = {p.point_id: p.shape for p in decode_points(cfg, 10**6, 512) if "_l" in p.point_id}
    assert set(ragged) == {"decode_b128_c256_l1x8192", "decode_b4_c64_l2x1024"}  # b600 is over the batch limit
    shape = ragged["decode_b128_c256_l1x8192"]
    assert shape.decode_max_ctx_tokens == 8192 and shape.decode_ctx_tokens == 8192 + 127 * 256
    (mixed,) = mixed_points(cfg, 16384, 10**6, 512)
    assert mixed.point_id == "mixed_p512_b0_d64_c256_l1x8192" and mixed.shape.decode_max_ctx_tokens == 8192
    with pytest.raises(ValueError, match="do not fit"):
        decode_points(GridConfig(decode_ragged=((4, 5, 64, 32),)), 10**6, 512)


def test_grid_config_validates():
    with pytest.raises(ValueError, match="repeats"):
        GridConfig(repeats=1)
    with pytest.raises(ValueError, match="decode_batches"):
        GridConfig(decode_batches=())
    assert len(grid_points(GridConfig.quick(), 16384, 400_000, 512)) <= 25


def test_sweep_rows_are_tidy_and_exact(toy_profile, tmp_path):
    rows, _, _ = _sweep(toy_profile, tmp_path / "raw.parquet")
    points = grid_points(SMALL, 16384, toy_profile.kv_capacity_tokens, 512)
    assert len(rows) == len(points) * SMALL.repeats + 1
    for row in rows[:-1]:
        shape = shape_from_row(row)
        time_s, energy_j = toy_profile.cost(shape)
        assert row["step_time_s"] == pytest.approx(time_s)
        assert row["energy_per_step_j"] == pytest.approx(energy_j, rel=1e-9)
        assert row["window_s"] >= SMALL.target_s
    idle = rows[-1]
    assert idle["kind"] == "idle" and idle["power_w"] == pytest.approx(toy_profile.idle_power_w)
    assert read_rows(tmp_path / "raw.parquet") == rows
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw.parquet"]


def test_sweep_resumes_where_it_stopped(toy_profile, tmp_path):
    path = tmp_path / "raw.parquet"
    rows, runner, _ = _sweep(toy_profile, path)
    done_ids = {r["point_id"] for r in rows}
    kept = [r for r in rows if not r["point_id"].startswith("decode_b64") and r["kind"] != "idle"]
    write_rows(kept, path)
    again, runner2, _ = _sweep(toy_profile, path)
    assert {r["point_id"] for r in again} == done_ids
    redone = {shape_from_row(r).decode_seqs for r in again[len(kept):] if r["kind"] == "decode"}
    assert redone == {64}
    # a complete file: nothing left to run
    _, runner3, _ = _sweep(toy_profile, path)
    assert runner3.steps == 0


def test_repeats_are_interleaved_passes_and_resume_per_window(toy_profile, tmp_path):
    path = tmp_path / "raw.parquet"
    rows, _, _ = _sweep(toy_profile, path)
    points = [p.point_id for p in grid_points(SMALL, 16384, toy_profile.kv_capacity_tokens, 512)]
    windows = [(r["point_id"], r["repeat"]) for r in rows if r["kind"] != "idle"]
    # pass 0 forward, pass 1 backward, ...: no point's repeats sit back to back except at a turn
    assert SMALL.repeats >= 2
    assert windows == [(p, r) for r in range(SMALL.repeats) for p in (points if r % 2 == 0 else points[::-1])]
    lost = ("decode_b8_c256", 1)
    write_rows([r for r in rows if (r["point_id"], r["repeat"]) != lost], path)
    again, runner2, _ = _sweep(toy_profile, path)
    assert [(r["point_id"], r["repeat"]) for r in again][-1] == lost and runner2.steps > 0
    assert sorted((r["point_id"], r["repeat"]) for r in again) == sorted((r["point_id"], r["repeat"]) for r in rows)


class _PhasedRunner(FakeRunner):
    """A fake engine whose 8-sequence decode steps run 1.5x slower in their 1st and 3rd windows (slow host phases)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.prepares = {}

    def prepare(self, shape):
        super().prepare(shape)
        self.prepares[shape] = self.prepares.get(shape, 0) + 1

    def step(self):
        time_s, energy_j = self.cost(self.shape)
        slow = 1.5 if self.shape.decode_seqs == 8 and self.prepares[self.shape] in (1, 3) else 1.0
        self.timeline.run(time_s * slow, energy_j / time_s)
        self.steps += 1


def test_points_whose_repeats_disagree_get_extra_passes(toy_profile, tmp_path):
    timeline, meter, _ = _setup(toy_profile)
    runner = _PhasedRunner(timeline, toy_profile.cost, toy_profile.kv_capacity_tokens)
    path = tmp_path / "raw.parquet"
    rows = run_sweep(runner, meter, SMALL, path, max_num_batched_tokens=16384, max_num_seqs=512, wait=timeline.idle,
                     progress=False)
    points = grid_points(SMALL, 16384, toy_profile.kv_capacity_tokens, 512)
    extra = [(r["point_id"], r["repeat"]) for r in rows if r["kind"] != "idle" and r["repeat"] >= SMALL.repeats]
    noisy = [p.point_id for p in points if p.shape.decode_seqs == 8]
    assert noisy and SMALL.extra_repeats == 2
    # one more pass per extra repeat over the noisy points only, every other one backwards, then idle last
    assert extra == [(p, 3) for p in noisy[::-1]] + [(p, 4) for p in noisy]
    assert rows[-1]["kind"] == "idle" and len(rows) == len(points) * SMALL.repeats + len(extra) + 1
    # the main three windows ran slow, fast, slow; the extra two fast: the median moves to the fast time
    decode8 = [r for r in rows if r["point_id"] == noisy[0]]
    fast_s = toy_profile.cost(shape_from_row(decode8[0]))[0]
    assert sorted(r["step_time_s"] for r in decode8[:3])[1] == pytest.approx(1.5 * fast_s)
    assert sorted(r["step_time_s"] for r in decode8)[2] == pytest.approx(fast_s)
    # resuming a sweep that stopped inside the extra passes measures only the missing window
    write_rows([r for r in rows if (r["point_id"], r["repeat"]) != (noisy[0], 4)], path)
    runner2 = _PhasedRunner(timeline, toy_profile.cost, toy_profile.kv_capacity_tokens)
    again = run_sweep(runner2, meter, SMALL, path, max_num_batched_tokens=16384, max_num_seqs=512, wait=timeline.idle,
                      progress=False)
    assert sorted((r["point_id"], r["repeat"]) for r in again) == sorted((r["point_id"], r["repeat"]) for r in rows)
    with pytest.raises(ValueError, match="extra_repeats"):
        GridConfig(extra_repeats=-1)


def test_uniform_only_engine_skips_mixed_and_records_refusals(toy_profile, tmp_path):
    rows, _, _ = _sweep(toy_profile, tmp_path / "raw.parquet", uniform_only=True)
    assert not any(r["kind"] == "mixed" for r in rows)
    timeline, meter, runner = _setup(toy_profile, uniform_only=True)  # the engine refuses what the grid asks
    rows = run_sweep(runner, meter, SMALL, tmp_path / "raw2.parquet", max_num_batched_tokens=16384, max_num_seqs=512,
                     wait=timeline.idle, progress=False)
    skipped = [r for r in rows if r["status"] == "skipped"]
    # mixed iterations, chunked prefills (a chunk after a cached prefix) and ragged decodes are what a uniform-only
    # engine refuses
    assert skipped and all("uniform" in r["reason"] for r in skipped)
    assert {r["kind"] for r in skipped} <= {"mixed", "prefill", "decode"} and any(r["kind"] == "mixed" for r in skipped)
    assert all("_l" in r["point_id"] for r in skipped if r["kind"] == "decode")
    assert fit_rows(rows)["fit_errors"]["latency"]["n_mixed"] == 0


def test_read_rows_rejects_foreign_parquet(tmp_path):
    import pyarrow as pa

    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="missing columns"):
        read_rows(tmp_path / "other.parquet")


def test_whole_sweep_fit_and_save(toy_profile, tmp_path):
    timeline, meter, runner = _setup(toy_profile)
    config = CalibrationConfig(grid=GridConfig(settle_s=2.0))  # the full grid: its knots include the toy's
    profile = calibrate(ModelSpec.from_name("llama-3.1-8b"), config, tmp_path / "h100.json", runner=runner,
                        meter=meter, wait=timeline.idle, progress=False)
    assert (tmp_path / "h100.raw.parquet").exists()
    loaded = load_profile(tmp_path / "h100.json")
    assert loaded == profile and loaded.raw_path == "h100.raw.parquet"
    errs = loaded.fit_errors
    for curve in ("latency", "energy"):
        assert errs[curve]["cv_p95"] < 1e-6 and errs[curve]["mixed_p95"] < 1e-6
    assert loaded.idle_power_w == pytest.approx(toy_profile.idle_power_w)
    assert loaded.kv_capacity_tokens == toy_profile.kv_capacity_tokens
    assert loaded.method["energy"] == "fake" and "grid" in loaded.method
    assert loaded.host["cores"] >= 1 and "git_sha" in loaded.software
    for shape in (runner.shape,):
        assert loaded.cost(shape)[1] == pytest.approx(toy_profile.cost(shape)[1], rel=0.01)


def test_calibrate_refuses_without_energy(toy_profile, tmp_path):
    timeline, _, runner = _setup(toy_profile)
    meter = TimeOnlyMeter((0,), reason="NVML missing", clock=timeline.clock, sync=lambda: None)
    with pytest.raises(MeterError, match="NVML missing"):
        calibrate(ModelSpec.from_name("llama-3.1-8b"), CalibrationConfig(grid=SMALL), tmp_path / "p.json",
                  runner=runner, meter=meter, progress=False)
    assert not list(tmp_path.iterdir())


def test_fit_rows_needs_idle_and_points(toy_profile, tmp_path):
    rows, _, _ = _sweep(toy_profile, tmp_path / "raw.parquet")
    with pytest.raises(ValueError, match="idle"):
        fit_rows([r for r in rows if r["kind"] != "idle"])
    with pytest.raises(ValueError, match=">= 4"):
        fit_rows(rows[:2])


def test_metadata_helpers(tmp_path):
    assert datasheet_name("NVIDIA H100 80GB HBM3") == "H100-SXM"
    assert datasheet_name("NVIDIA H200") == "H200-SXM"
    assert datasheet_name("Tesla T4") is None and datasheet_name(None) is None
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9654 96-Core Processor\n")
    assert host_info(str(cpuinfo))["cpu_model"] == "AMD EPYC 9654 96-Core Processor"
