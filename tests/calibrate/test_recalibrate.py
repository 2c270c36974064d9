"""A short re-calibration carries a profile to another machine: idle, host, one scale per curve."""

from __future__ import annotations

import pytest

from tokenjoule.calibrate.profile import HostOverhead
from tokenjoule.calibrate.recalibrate import scaled, short_recalibration
from tokenjoule.kernels.shape import IterationShape

SHAPES = (IterationShape(decode=(512,)), IterationShape(decode=(512,) * 64), IterationShape(prefill=((1024, 0),)),
          IterationShape(prefill=((2048, 0),), decode=(2048,) * 64))


def test_a_machine_that_draws_7_percent_more_is_recovered_exactly(toy_profile):
    points = [{"shape": s, "time_s": 0.95 * toy_profile.latency.of_shape(s),
               "energy_j": 1.07 * toy_profile.energy.of_shape(s)} for s in SHAPES]
    host = HostOverhead(5e-5, 4e-6)
    carried = short_recalibration(toy_profile, points, 131.5, host, "4 points")
    for s in (*SHAPES, IterationShape(decode=(100,) * 7), IterationShape(prefill=((300, 64),), decode=(64,) * 3)):
        assert carried.latency.of_shape(s) == pytest.approx(0.95 * toy_profile.latency.of_shape(s), rel=1e-12)
        assert carried.energy.of_shape(s) == pytest.approx(1.07 * toy_profile.energy.of_shape(s), rel=1e-12)
    assert carried.idle_power_w == 131.5 and carried.host_overhead == host
    assert ("short re-calibration (4 points, against its curves): latency x0.9500 decode / x0.9500 prefill, "
            "energy x1.0700 / x1.0700") in carried.notes
    assert carried.model == toy_profile.model and carried.kv_capacity_tokens == toy_profile.kv_capacity_tokens
    assert carried.fit_errors["latency"] == toy_profile.fit_errors["latency"]  # the shape's CV, as the base had it
    assert carried.fit_errors["short_recalibration"] == {"points": 4, "latency_median_abs_error": pytest.approx(0.0),
                                                         "energy_median_abs_error": pytest.approx(0.0)}


def test_the_median_ratio_ignores_one_outlier_point(toy_profile):
    points = [{"shape": s, "time_s": toy_profile.latency.of_shape(s), "energy_j": toy_profile.energy.of_shape(s)}
              for s in SHAPES]
    points[0] = {**points[0], "time_s": 5 * points[0]["time_s"]}  # one window hit by a host hiccup
    carried = short_recalibration(toy_profile, points + points[1:], toy_profile.idle_power_w, None, "x")
    assert carried.latency == toy_profile.latency and carried.host_overhead == toy_profile.host_overhead
    with pytest.raises(ValueError, match="at least one"):
        short_recalibration(toy_profile, [], 100.0, None, "none")


def test_decode_and_prefill_regimes_get_a_scale_each(toy_profile):
    # decode draws 13% more on the new machine, prefill (at the power limit) 2% more
    points = [{"shape": s, "time_s": toy_profile.latency.of_shape(s),
               "energy_j": (1.02 if s.prefill else 1.13) * toy_profile.energy.of_shape(s)} for s in SHAPES]
    carried = short_recalibration(toy_profile, points, 100.0, None, "x")
    decode, prefill = IterationShape(decode=(900,) * 17), IterationShape(prefill=((700, 0),))
    assert carried.energy.of_shape(decode) == pytest.approx(1.13 * toy_profile.energy.of_shape(decode), rel=1e-12)
    assert carried.energy.of_shape(prefill) == pytest.approx(1.02 * toy_profile.energy.of_shape(prefill), rel=1e-12)


def _points(profile, energy_factor, ids=None):
    """SHAPES as measured points whose energy is `energy_factor(shape)` x the profile's curve."""
    return [{"point_id": f"p{i}", "shape": s, "time_s": profile.latency.of_shape(s),
             "energy_j": energy_factor(s) * profile.energy.of_shape(s)} for i, s in enumerate(SHAPES)
            if ids is None or i in ids]


def test_the_scales_are_taken_against_the_bases_measurements_not_its_curve(toy_profile):
    # the base's curve over-predicts its own prefill points by 2.5% (a fit residual, as the H200 curves did at
    # SHORT_GRID's points); the new machine draws 5% more than the base machine measured, at every point
    def base_level(s):
        return 0.975 if s.prefill else 1.0

    base_points = _points(toy_profile, base_level)
    here = _points(toy_profile, lambda s: 1.05 * base_level(s))
    carried = short_recalibration(toy_profile, here, 100.0, None, "x", base_points)
    decode, prefill = IterationShape(decode=(900,) * 17), IterationShape(prefill=((700, 0),))
    assert carried.energy.of_shape(decode) == pytest.approx(1.05 * toy_profile.energy.of_shape(decode), rel=1e-12)
    assert carried.energy.of_shape(prefill) == pytest.approx(1.05 * toy_profile.energy.of_shape(prefill), rel=1e-12)
    assert "against the base's measurements at 4 of 4 points" in carried.notes
    # against the curve, the residual reads as a machine difference: prefill carried 2.5% low
    biased = short_recalibration(toy_profile, here, 100.0, None, "x")
    assert biased.energy.of_shape(prefill) == pytest.approx(1.05 * 0.975 * toy_profile.energy.of_shape(prefill),
                                                            rel=1e-12)


def test_a_point_the_base_did_not_measure_is_taken_against_the_curve(toy_profile):
    here = _points(toy_profile, lambda s: 1.1)
    base_points = _points(toy_profile, lambda s: 0.5, ids={0})  # only the first decode point, at half the curve
    carried = short_recalibration(toy_profile, here, 100.0, None, "x", base_points)
    assert "against the base's measurements at 1 of 4 points" in carried.notes
    # decode: median of 2.2 (against the base's point) and 1.1 (against the curve); prefill: 1.1 against the curve
    assert "energy x1.6500 / x1.1000" in carried.notes


def test_base_rows_reads_the_raw_sweep_beside_the_base(toy_profile, tmp_path):
    import dataclasses

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tokenjoule.calibrate.recalibrate import base_rows
    from tokenjoule.calibrate.sweep.iterations import RAW_SCHEMA

    assert base_rows(dataclasses.replace(toy_profile, raw_path=None), tmp_path / "base.json") == []
    assert base_rows(dataclasses.replace(toy_profile, raw_path="base.raw.parquet"), tmp_path / "base.json") == []
    pq.write_table(pa.Table.from_pylist([], schema=RAW_SCHEMA), tmp_path / "base.raw.parquet")
    assert base_rows(dataclasses.replace(toy_profile, raw_path="base.raw.parquet"), tmp_path / "base.json") == []


def test_scaled_scales_each_regime_and_its_terms(toy_profile):
    curve = scaled(toy_profile.energy, 2.0, 3.0)
    assert curve.knot_values == tuple(2 * v for v in toy_profile.energy.knot_values)
    assert curve.prefill_knot_values == tuple(3 * v for v in toy_profile.energy.prefill_knot_values)
    assert curve.coef == {k: (2 if k.startswith("decode_") else 3) * v for k, v in toy_profile.energy.coef.items()}


def test_calibrate_short_from_a_base_measures_the_short_grid_and_rescales(toy_profile, tmp_path):
    import dataclasses

    from test_sweeps import _setup

    from tokenjoule.calibrate.cost_form import ProfileError
    from tokenjoule.calibrate.pipeline import CalibrationConfig, calibrate
    from tokenjoule.calibrate.recalibrate import SHORT_GRID, SHORT_POINTS
    from tokenjoule.calibrate.refit import refit_profile
    from tokenjoule.calibrate.sweep.iterations import read_rows
    from tokenjoule.kernels.spec import ModelSpec

    timeline, meter, runner = _setup(toy_profile)  # a machine that runs exactly as the toy profile says
    grid = dataclasses.replace(SHORT_GRID, settle_s=0.0)
    out = tmp_path / "here.json"
    carried = calibrate(ModelSpec.from_name("llama-3.1-8b"), CalibrationConfig(grid=grid), out, runner=runner,
                        meter=meter, wait=timeline.idle, progress=False, base=toy_profile)
    measured = {r["point_id"] for r in read_rows(tmp_path / "here.raw.parquet") if r["kind"] != "idle"}
    assert measured == set(SHORT_POINTS)
    assert "latency x1.00" in carried.notes and "energy x1.00" in carried.notes  # same machine: nothing to re-scale
    shape = IterationShape(decode=(700,) * 40)
    assert carried.energy.of_shape(shape) == pytest.approx(toy_profile.energy.of_shape(shape), rel=0.02)
    assert carried.method["short_recalibration_of"]["content_sha256"] == toy_profile.content_sha256
    # against the base machine's own rows (here: this same machine's), every ratio is the same point twice
    again = calibrate(ModelSpec.from_name("llama-3.1-8b"), CalibrationConfig(grid=grid), tmp_path / "again.json",
                      runner=runner, meter=meter, wait=timeline.idle, progress=False, base=toy_profile,
                      base_rows=read_rows(tmp_path / "here.raw.parquet"))
    assert f"against the base's measurements at {len(SHORT_POINTS)} of {len(SHORT_POINTS)} points" in again.notes
    with pytest.raises(ProfileError, match="short re-calibration"):
        refit_profile(out)
    with pytest.raises(ValueError, match="keeps all four"):
        calibrate(ModelSpec.from_name("llama-3.1-8b"), CalibrationConfig(mode="eager", grid=grid), tmp_path / "x.json",
                  runner=runner, meter=meter, wait=timeline.idle, progress=False, base=toy_profile)
