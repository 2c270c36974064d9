import numpy as np
import pytest

from tokenjoule.calibrate.cost_form import FEATURES, REGIME, CostCurve, design_matrix, shape_features
from tokenjoule.calibrate.fit import choose_knots, fit_curve
from tokenjoule.kernels.shape import IterationShape


def _grid():
    shapes = [IterationShape(prefill=((length, 0),) * b) for b in (1, 2, 4, 8, 16)
              for length in (64, 256, 1024, 4096) if b * length <= 16384]
    shapes += [IterationShape(decode=(ctx,) * b) for b in (1, 4, 16, 64, 256) for ctx in (128, 1024, 8192)]
    return shapes


def _columns(shapes):
    x = np.array([s.new_tokens for s in shapes], float)
    feats = {f: np.array([shape_features(s)[f] for s in shapes]) for f in (*FEATURES, REGIME)}
    return x, feats


def test_design_matrix_reproduces_curve(toy_profile):
    shapes = _grid()
    x, feats = _columns(shapes)
    curve = toy_profile.latency
    params = np.array([*curve.knot_values, *curve.prefill_knot_values, *(curve.coef.get(f, 0.0) for f in FEATURES)])
    a = design_matrix(x, feats, curve.knots_tokens, curve.prefill_knots_tokens)
    expected = np.array([curve.of_shape(s) for s in shapes])
    np.testing.assert_allclose(a @ params, expected, rtol=1e-12)


@pytest.mark.parametrize("curve_name", ["latency", "energy"])
def test_fit_recovers_known_parameters_with_noise(toy_profile, rng, curve_name):
    truth = getattr(toy_profile, curve_name)
    shapes = _grid()
    x, feats = _columns(shapes)
    clean = np.array([truth.of_shape(s) for s in shapes])
    noisy = clean * (1 + 0.01 * rng.standard_normal(clean.size))
    curve, stats = fit_curve(x, feats, noisy, truth.knots_tokens, truth.unit, prefill_knots=truth.prefill_knots_tokens)
    # the curve itself: within a few % everywhere on the grid
    assert np.max(np.abs(curve.evaluate(x, **feats) - clean) / clean) < 0.03
    # knot values where data pins them (decodes reach 256 tokens, prefills start at 64), and the coefficients
    np.testing.assert_allclose(curve.knot_values[:3], truth.knot_values[:3], rtol=0.05)
    np.testing.assert_allclose(curve.prefill_knot_values[2:], truth.prefill_knot_values[2:], rtol=0.05)
    assert curve.coef["decode_ctx_tokens"] == pytest.approx(truth.coef["decode_ctx_tokens"], rel=0.05)
    assert curve.coef["prefill_attn_pairs"] == pytest.approx(truth.coef["prefill_attn_pairs"], rel=0.25)
    assert stats.n_points == len(shapes) and stats.folds == 5
    assert stats.train_median < 0.015 and stats.cv_median < 0.02 and stats.cv_p95 < 0.05
    assert curve.unit == truth.unit


def test_cross_validation_exposes_a_wrong_form(rng):
    # a quadratic in tokens cannot be fitted with two knots: CV error must say so
    x = np.geomspace(1, 4096, 40)
    y = 1e-3 + 1e-8 * x**2
    _, stats = fit_curve(x, {}, y, (1.0, 4096.0), "s")
    assert stats.cv_median > 0.1


def test_mixed_points_are_fitted_and_scored_apart(toy_profile):
    truth = toy_profile.latency
    mixed = [IterationShape(prefill=((chunk, before),), decode=(1024,) * n)
             for chunk, before in ((256, 0), (512, 4096), (2048, 2048)) for n in (8, 64)]
    shapes = _grid() + mixed
    x, feats = _columns(shapes)
    y = np.array([truth.of_shape(s) for s in shapes])
    is_mixed = [s.prefill != () and s.decode != () for s in shapes]
    _, stats = fit_curve(x, feats, y, truth.knots_tokens, "s", mixed_mask=is_mixed,
                         prefill_knots=truth.prefill_knots_tokens)
    assert stats.n_mixed == len(mixed) and stats.mixed_median < 1e-6 and stats.cv_median < 1e-6
    # one mixed point twice as costly as the form allows: held out, it cannot be predicted, and it says so
    y[-1] *= 2
    _, stats = fit_curve(x, feats, y, truth.knots_tokens, "s", mixed_mask=is_mixed,
                         prefill_knots=truth.prefill_knots_tokens)
    assert stats.mixed_p95 > 0.2 and stats.cv_median < 0.05
    with pytest.raises(ValueError, match="mixed_mask"):
        fit_curve(x, feats, y, truth.knots_tokens, "s", mixed_mask=is_mixed[:-1])


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="> 0"):
        fit_curve([1, 2, 3], {}, [1.0, 0.0, 2.0], (1.0, 3.0), "s")
    with pytest.raises(ValueError, match="equal length"):
        fit_curve([1, 2], {}, [1.0, 2.0, 3.0], (1.0, 3.0), "s")
    with pytest.raises(ValueError, match="unknown feature"):
        fit_curve([1, 2, 3], {"flops": [1, 2, 3]}, [1.0, 2.0, 3.0], (1.0, 3.0), "s")


def test_choose_knots_cover_the_data():
    assert choose_knots([1, 8, 512, 3000]) == (1.0, 3000.0)  # no candidate has two points near it
    assert choose_knots([1, 1, 16, 20, 512, 512, 600, 3000]) == (1.0, 16.0, 512.0, 3000.0)
    assert choose_knots([1, 8, 512, 3000], min_support=1) == (1.0, 512.0, 3000.0)
    assert choose_knots([5, 5]) == (5.0, 6.0)
    knots = choose_knots([1, 16, 16, 100])
    assert knots == (1.0, 16.0, 100.0)
    CostCurve(knots, (1.0,) * len(knots), {}, "s")  # valid for a CostCurve


def test_fit_recovers_the_critical_context_from_ragged_points(toy_profile, rng):
    import dataclasses

    from tokenjoule.calibrate.cost_form import DecodeSplitRule

    rule = DecodeSplitRule(528, 32, 8)
    truth = dataclasses.replace(toy_profile.latency, coef={**toy_profile.latency.coef, "decode_tail_ctx_tokens": 1e-6})
    shapes = _grid() + [IterationShape(decode=(long,) + (256,) * (b - 1)) for b in (16, 32, 64, 128, 256)
                        for long in (4096, 16384)]
    x = np.array([s.new_tokens for s in shapes], float)
    feats = {f: np.array([shape_features(s, rule)[f] for s in shapes]) for f in (*FEATURES, REGIME)}
    clean = np.array([truth.of_shape(s, rule) for s in shapes])
    noisy = clean * (1 + 0.01 * rng.standard_normal(clean.size))
    curve, stats = fit_curve(x, feats, noisy, truth.knots_tokens, "s", prefill_knots=truth.prefill_knots_tokens)
    assert curve.coef["decode_tail_ctx_tokens"] == pytest.approx(1e-6, rel=0.1)
    assert stats.cv_median < 0.02
    # without the feature the ragged points are missed by far more than the noise
    blind = {k: v for k, v in feats.items() if k != "decode_tail_ctx_tokens"}
    blind_curve, worse = fit_curve(x, blind, noisy, truth.knots_tokens, "s", prefill_knots=truth.prefill_knots_tokens)
    assert "decode_tail_ctx_tokens" not in blind_curve.coef and worse.cv_p95 > 3 * stats.cv_p95


def test_a_held_out_end_point_is_predicted_by_extrapolation_not_an_empty_knot():
    # linear data; the last knot (512) holds one point: held out, the fold must extrapolate the slope it has
    x = np.array([1.0, 2, 4, 8, 16, 32, 64, 128, 256, 512])
    y = 5e-3 + 2e-5 * x
    _, stats = fit_curve(x, {}, y, (1.0, 256.0, 512.0), "s", folds=len(x))
    # leave-one-out on exact linear data: the held-out 512 is extrapolated exactly, the held-out 1 (below the first
    # supported knot) reads the flat start, 0.2% off; a knot left empty would read 0 and miss by 100%
    assert stats.cv_p95 < 0.01
