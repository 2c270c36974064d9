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
    assert "short re-calibration (4 points): latency x0.9500, energy x1.0700" in carried.notes
    assert carried.model == toy_profile.model and carried.kv_capacity_tokens == toy_profile.kv_capacity_tokens


def test_the_median_ratio_ignores_one_outlier_point(toy_profile):
    points = [{"shape": s, "time_s": toy_profile.latency.of_shape(s), "energy_j": toy_profile.energy.of_shape(s)}
              for s in SHAPES]
    points[0] = {**points[0], "time_s": 5 * points[0]["time_s"]}  # one window hit by a host hiccup
    carried = short_recalibration(toy_profile, points + points[1:], toy_profile.idle_power_w, None, "x")
    assert carried.latency == toy_profile.latency and carried.host_overhead == toy_profile.host_overhead
    with pytest.raises(ValueError, match="at least one"):
        short_recalibration(toy_profile, [], 100.0, None, "none")


def test_scaled_scales_every_term(toy_profile):
    curve = scaled(toy_profile.energy, 2.0)
    assert curve.knot_values == tuple(2 * v for v in toy_profile.energy.knot_values)
    assert curve.coef == {k: 2 * v for k, v in toy_profile.energy.coef.items()}
