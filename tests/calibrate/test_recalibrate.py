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
    assert "short re-calibration (4 points): latency x0.9500 decode / x0.9500 prefill, energy x1.0700 / x1.0700" \
        in carried.notes
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
    with pytest.raises(ProfileError, match="short re-calibration"):
        refit_profile(out)
    with pytest.raises(ValueError, match="keeps all four"):
        calibrate(ModelSpec.from_name("llama-3.1-8b"), CalibrationConfig(mode="eager", grid=grid), tmp_path / "x.json",
                  runner=runner, meter=meter, wait=timeline.idle, progress=False, base=toy_profile)
