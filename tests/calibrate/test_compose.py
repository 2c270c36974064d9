"""GPU operator fits, the GPU profile file, composition, and the CLI's composed runs."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tokenjoule.calibrate.compose import (
    ATTN_LAUNCHES,
    DENSE_MLP_LAUNCHES,
    ITERATION_LAUNCHES,
    compose_profile,
    decode_knot,
    eager_launches,
)
from tokenjoule.calibrate.gpu_fit import fit_operator_once
from tokenjoule.calibrate.gpu_profile import (
    GPU_PROFILE_KIND,
    GPU_SCHEMA_VERSION,
    OVERHEAD_TERMS,
    IterationOverheads,
    load_gpu_profile,
    save_gpu_profile,
)
from tokenjoule.calibrate.overhead_fit import fit_overheads
from tokenjoule.calibrate.profile import SHIPPED_DIR, ProfileError
from tokenjoule.calibrate.sweep.operator_grid import decode_attn_point, gemm_point, rest_point, sample_point
from tokenjoule.kernels.shape import IterationShape
from tokenjoule.kernels.spec import PRESETS, ConfigError, ModelSpec

H200 = SHIPPED_DIR / "h200-gpu-tokenjoule-cudagraph.json"


def test_fit_recovers_additive_parameters():
    rng = np.random.default_rng(0)
    b, f = rng.uniform(1e6, 1e9, 40), rng.uniform(1e8, 1e12, 40)
    t = 3e-6 + b / 4e12 + f / 7e14
    e = 150 * t + 1e-10 * b + 1e-12 * f
    fit = fit_operator_once("prefill_attn", {"bytes": b, "flops": f}, t, e)
    pred_t, pred_e = fit.cost(bytes=b, flops=f)
    assert np.max(np.abs(pred_t / t - 1)) < 0.03
    assert np.max(np.abs(pred_e / e - 1)) < 0.03
    assert fit.time_coef["bytes"] == pytest.approx(1 / 4e12, rel=0.1)


def test_gpu_profile_round_trips_and_rejects_bad_files(tmp_path: Path):
    gpu = load_gpu_profile(H200)
    again = load_gpu_profile(save_gpu_profile(gpu, tmp_path / "g.json"))
    assert again.to_dict() == gpu.to_dict()
    data = gpu.to_dict()
    for bad in ({**data, "kind": "x"}, {**data, "schema_version": 99}, {k: v for k, v in data.items() if k != "launch"},
                {**data, "operators": {k: v for k, v in data["operators"].items() if k != "moe"}}):
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(ProfileError) as err:
            load_gpu_profile(tmp_path / "bad.json")
        assert "\n" not in str(err.value)
    assert data["kind"] == GPU_PROFILE_KIND


def test_dense_decode_knot_matches_hand_computation():
    gpu = load_gpu_profile(H200)
    spec = ModelSpec.from_name("llama-3.1-8b")
    ops, x = gpu.operators, 64

    def cost(op, p):
        t, e = ops[op].cost(bytes=p.bytes_moved, flops=p.flops, row_tokens=p.params.get("vocab", 0))
        return float(t), float(e)

    parts = [cost("gemm", gemm_point(x, 6144, 4096)), cost("gemm", gemm_point(x, 4096, 4096)),
             cost("gemm", gemm_point(x, 28672, 4096)), cost("gemm", gemm_point(x, 4096, 14336)),
             cost("rest", rest_point(x, 4096, 14336, 32, 8, 128)),
             cost("decode_attn", decode_attn_point(x, 0, 32, 8, 128))]
    head = [cost("gemm", gemm_point(x, 128256, 4096)), cost("sample", sample_point(x, 128256))]
    host = gpu.launch.graph_replay_sync_s
    ov = gpu.overheads
    gap, prep = 32 * ov.graph_gap_s_per_layer, x * ov.decode_host_s_per_seq
    t = 32 * sum(p[0] for p in parts) + sum(h[0] for h in head) + host + gap + prep
    e = (32 * sum(p[1] for p in parts) + sum(h[1] for h in head) + (host + prep) * gpu.idle_power_w
         + gap * ov.graph_gap_power_w)
    assert decode_knot(gpu, spec, x) == pytest.approx((t, e), rel=1e-9)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_composes_and_prices_finite_positive(name: str):
    gpu = load_gpu_profile(H200)
    spec = ModelSpec.from_name(name)
    if name == "llama-3.1-70b":  # 141 GB of weights: no room for KV on one H200
        with pytest.raises(ConfigError, match="does not fit"):
            compose_profile(gpu, spec)
        return
    profile = compose_profile(gpu, spec)
    assert profile.method["composed"] and "COMPOSED" in profile.notes
    for shape in (IterationShape(decode=(300,) * 8), IterationShape(prefill=((512, 0),)),
                  IterationShape(prefill=((256, 128),), decode=(1000,) * 4)):
        t, e = profile.cost(shape)
        assert math.isfinite(t) and math.isfinite(e) and t > 0 and e > 0


def _simulate(*args: str):
    from tokenjoule.cli import app

    return CliRunner().invoke(app, ["simulate", "--synthetic", "n=16,input=256,output=16", "--json", *args])


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_cli_simulates_every_preset_with_the_h200_gpu_profile(name: str):
    result = _simulate("--model", name, "--profile", str(H200))
    if name == "llama-3.1-70b":
        assert result.exit_code != 0 and "does not fit" in result.output and len(result.output.splitlines()) == 1
        return
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["profile_source"].startswith("composed (modeled)")
    assert summary["modeled"] is True and summary["cost_model"] == "composed"
    assert summary["energy_total_j"] > 0 and math.isfinite(summary["energy_total_j"])


def test_cli_composes_for_a_model_without_a_shipped_profile_and_keeps_measured_ones():
    composed = json.loads(_simulate("--model", "qwen2.5-32b", "--gpu", "H200-SXM").output)
    assert composed["profile_source"].startswith("composed (modeled)")
    measured = json.loads(_simulate("--model", "llama-3.1-8b", "--gpu", "H200-SXM").output)
    assert "h200-llama-3.1-8b" in measured["profile_source"]
    assert measured["modeled"] is False and measured["cost_model"] == "calibrated"


def test_cli_picks_the_eager_gpu_profile_by_its_shipped_name_and_cuda_graphs_by_default():
    eager = SHIPPED_DIR / "h200-gpu-tokenjoule-eager.json"
    assert load_gpu_profile(eager).mode == "eager" and load_gpu_profile(H200).mode == "cudagraph"
    default = json.loads(_simulate("--model", "qwen2.5-32b", "--gpu", "H200-SXM").output)
    by_name = json.loads(_simulate("--model", "qwen2.5-32b", "--profile", "h200-gpu-tokenjoule-eager").output)
    assert "h200-gpu-tokenjoule-cudagraph" in default["profile_source"]
    assert "h200-gpu-tokenjoule-eager" in by_name["profile_source"] and by_name["modeled"] is True
    # the same requests, every decode step launched from Python: slower per output token than graph replays
    assert by_name["tpot_p50_s"] > default["tpot_p50_s"]


# ---- whole-iteration overheads (GPU profile schema 2) -------------------------------------------------------------

def _synthetic_points(gpu, spec, truth):
    """Iterations priced by `truth`'s overheads: the measured points a fit should recover them from."""
    profile = compose_profile(dataclasses.replace(gpu, overheads=truth), spec)
    shapes = [("decode", IterationShape(decode=(512,) * n)) for n in (1, 4, 16, 64, 128, 256)]
    shapes += [("prefill", IterationShape(prefill=((n, 0),))) for n in (16, 64, 128, 256, 4096, 8192)]
    shapes += [("mixed", IterationShape(prefill=((n, 0),), decode=(300,) * 8)) for n in (32, 128)]
    return [{"kind": kind, "shape": s, "time_s": profile.cost(s)[0], "energy_j": profile.cost(s)[1]}
            for kind, s in shapes]


def _synthetic_replays(gpu, spec, truth):
    """Warm-up replay iterations priced by `truth`: run time by the composed curve, host time by its serving terms."""
    from tokenjoule.calibrate.cost_form import IterFeatures

    profile = compose_profile(dataclasses.replace(gpu, overheads=truth), spec)
    rows = []
    for pre_tokens, pre_seqs, dec in ((0, 0, 1), (0, 0, 3), (0, 0, 12), (0, 0, 40), (0, 0, 150), (0, 0, 600),
                                      (2000, 1, 0), (6000, 3, 0), (900, 1, 20), (3000, 2, 90)):
        f = IterFeatures(pre_tokens + dec, pre_tokens * (pre_tokens + 1) // 2, 0, 400 * dec, dec, pre_seqs,
                         400 if dec else 0)
        kind = "mixed" if pre_seqs and dec else "prefill" if pre_seqs else "decode"
        host = (truth.serving_host_s_per_iteration + truth.serving_host_s_per_seq * (dec + pre_seqs)
                + truth.serving_host_s_per_prefill_seq * pre_seqs)
        rows.append({"kind": kind, "features": f, "host_s": host,
                     "time_s": profile.latency.table().iteration(f, profile.decode_split_rule)})
    return rows


def test_overhead_fit_recovers_known_terms_on_synthetic_iterations():
    gpu = dataclasses.replace(load_gpu_profile(H200), overheads=None)
    truth = IterationOverheads(eager_host_s_per_launch=40e-6, host_wait_power_w=180.0, graph_gap_s_per_layer=45e-6,
                               graph_gap_power_w=300.0, decode_host_s_per_seq=5e-6, host_exposed_fraction=0.2,
                               serving_host_s_per_iteration=50e-6, serving_host_s_per_seq=4e-6,
                               serving_host_s_per_prefill_seq=15e-6)
    specs = [ModelSpec.from_name(name) for name in ("llama-3.1-8b", "olmoe-1b-7b")]
    data = [(spec, _synthetic_points(gpu, spec, truth)) for spec in specs]
    replays = [(spec, _synthetic_replays(gpu, spec, truth)) for spec in specs]
    fit = fit_overheads(gpu, data, ["synthetic"], replays=replays)
    for name in OVERHEAD_TERMS:
        assert getattr(fit, name) == pytest.approx(getattr(truth, name), rel=0.03), name
    assert fit.fitted_on == ("synthetic",)
    # without the overlap and without replays, the plain max and no serving time come back, as before these terms
    plain = dataclasses.replace(truth, host_exposed_fraction=0.0)
    fit = fit_overheads(gpu, [(spec, _synthetic_points(gpu, spec, plain)) for spec in specs])
    assert fit.host_exposed_fraction < 0.03 and fit.serving_host_s_per_iteration == 0.0  # the launch grid's step
    assert fit.eager_host_s_per_launch == pytest.approx(40e-6, rel=0.03)


def test_exposed_host_share_and_serving_host_time_price_as_their_physics_says():
    from tokenjoule.calibrate.cost_form import IterFeatures
    from tokenjoule.sim.cost import CalibratedCost

    gpu = load_gpu_profile(H200)
    spec = ModelSpec.from_name("llama-3.1-8b")
    plain = dataclasses.replace(gpu.overheads, host_exposed_fraction=0.0, serving_host_s_per_iteration=0.0,
                                serving_host_s_per_seq=0.0, serving_host_s_per_prefill_seq=0.0)
    base = compose_profile(dataclasses.replace(gpu, overheads=plain), spec)
    assert base.host_overhead is None
    bare = compose_profile(dataclasses.replace(gpu, overheads=dataclasses.replace(plain, eager_host_s_per_launch=0.0)),
                           spec)
    ov = dataclasses.replace(plain, host_exposed_fraction=0.25, serving_host_s_per_iteration=60e-6,
                             serving_host_s_per_seq=3e-6, serving_host_s_per_prefill_seq=10e-6)
    profile = compose_profile(dataclasses.replace(gpu, overheads=ov), spec)
    host = eager_launches(spec) * ov.eager_host_s_per_launch
    for tokens in (64, 512, 8192):  # host-bound, near the crossover, GPU-bound
        i = profile.latency.prefill_knots_tokens.index(float(tokens))
        gpu_t, gpu_e = bare.latency.prefill_knot_values[i], bare.energy.prefill_knot_values[i]
        want = max(host, gpu_t) + 0.25 * min(host, gpu_t)
        assert profile.latency.prefill_knot_values[i] == pytest.approx(want, rel=1e-9)
        # host-bound: the GPU waits at its waiting power; GPU-bound: the bubbles between its kernels draw its own power
        extra_w = ov.host_wait_power_w if host > gpu_t else gpu_e / gpu_t
        assert profile.energy.prefill_knot_values[i] == pytest.approx(gpu_e + (want - gpu_t) * extra_w, rel=1e-9)
        assert base.latency.prefill_knot_values[i] == pytest.approx(max(host, gpu_t), rel=1e-9)
    assert host < bare.latency.prefill_knot_values[-1]  # the largest prefill is GPU-bound, the smallest host-bound
    assert host > bare.latency.prefill_knot_values[0]
    # decode with CUDA graphs is not eager: the share leaves it alone
    assert profile.latency.knot_values == base.latency.knot_values
    # the serving loop's host time joins every iteration in the simulator, the GPU idle meanwhile
    assert profile.host_overhead.seconds(10, 2) == pytest.approx(60e-6 + 10 * 3e-6 + 2 * 10e-6)
    f = IterFeatures(100, decode_seqs=100, decode_ctx_tokens=100 * 300)
    t0, e0 = CalibratedCost(base).iteration(f)
    t1, e1 = CalibratedCost(profile).iteration(f)
    assert t1 - t0 == pytest.approx(60e-6 + 100 * 3e-6) and e1 - e0 == pytest.approx((t1 - t0) * gpu.idle_power_w)
    with pytest.raises(ValueError, match="host_exposed_fraction=1.5 must be <= 1"):
        dataclasses.replace(ov, host_exposed_fraction=1.5)
    # a file written before these terms reads them as 0: the old prices
    new_terms = ("host_exposed_fraction", "serving_host_s_per_iteration", "serving_host_s_per_seq",
                 "serving_host_s_per_prefill_seq")
    old = {k: v for k, v in plain.to_dict().items() if k not in new_terms}
    assert IterationOverheads.from_dict(old) == dataclasses.replace(plain, fitted_on=plain.fitted_on)


def test_overheads_raise_composed_costs_where_the_engine_adds_them():
    shipped = load_gpu_profile(H200)
    assert shipped.overheads is not None and shipped.overheads.fitted_on
    bare = dataclasses.replace(shipped, overheads=None)
    spec = ModelSpec.from_name("llama-3.1-8b")
    with_ov, without = compose_profile(shipped, spec), compose_profile(bare, spec)
    small_prefill = IterationShape(prefill=((64, 0),))
    host = eager_launches(spec) * shipped.overheads.eager_host_s_per_launch
    gpu_t = compose_profile(dataclasses.replace(shipped, overheads=dataclasses.replace(
        shipped.overheads, eager_host_s_per_launch=0.0)), spec).latency.token_curve(64.0, 1.0)
    assert with_ov.cost(small_prefill)[0] == pytest.approx(
        host + shipped.overheads.host_exposed_fraction * gpu_t
        + with_ov.latency.coef["prefill_attn_pairs"] * small_prefill.prefill_attn_pairs, rel=1e-6)
    decode = IterationShape(decode=(100,) * 4)
    extra = spec.n_layers * shipped.overheads.graph_gap_s_per_layer + 4 * shipped.overheads.decode_host_s_per_seq
    assert with_ov.cost(decode)[0] - without.cost(decode)[0] == pytest.approx(extra, rel=1e-6)
    assert with_ov.method["compose"]["overheads"]["label"].startswith("fitted")


def test_overheads_round_trip_and_reject_negative_terms(tmp_path: Path):
    gpu = load_gpu_profile(H200)
    again = load_gpu_profile(save_gpu_profile(gpu, tmp_path / "g.json"))
    assert again.overheads == gpu.overheads and again.to_dict()["schema_version"] == GPU_SCHEMA_VERSION
    old = {k: v for k, v in gpu.to_dict().items() if k != "overheads"} | {"schema_version": 1}
    (tmp_path / "v1.json").write_text(json.dumps(old))
    assert load_gpu_profile(tmp_path / "v1.json").overheads is None
    for name in OVERHEAD_TERMS:
        bad = gpu.to_dict()
        bad["overheads"][name] = -1.0
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(ProfileError, match=f"overheads.{name}=-1.0 must be"):
            load_gpu_profile(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="graph_gap_s_per_layer"):
        dataclasses.replace(gpu.overheads, graph_gap_s_per_layer=float("nan"))


def test_eager_launch_counts_follow_the_layer_kinds():
    dense, moe = ModelSpec.from_name("llama-3.1-8b"), ModelSpec.from_name("olmoe-1b-7b")
    assert eager_launches(dense) == ITERATION_LAUNCHES + 32 * (ATTN_LAUNCHES + DENSE_MLP_LAUNCHES)
    assert eager_launches(dataclasses.replace(dense, n_layers=64)) - eager_launches(dense) == 32 * 18
    assert eager_launches(moe) > eager_launches(dataclasses.replace(moe, n_layers=8))


def test_graph_decode_is_priced_at_its_padded_bucket_and_eager_decode_is_not():
    from tokenjoule.kernels.shape import graph_buckets

    gpu = load_gpu_profile(H200)
    gpu = dataclasses.replace(gpu, overheads=dataclasses.replace(gpu.overheads, host_exposed_fraction=0.0))
    spec = ModelSpec.from_name("olmoe-1b-7b")
    graphs, eager = compose_profile(gpu, spec), compose_profile(dataclasses.replace(gpu, mode="eager"), spec)
    per_seq = gpu.overheads.decode_host_s_per_seq
    assert 16 in graph_buckets(512) and not {9, 10, 15} & set(graph_buckets(512))
    from tokenjoule.calibrate.cost_form import IterFeatures

    def decode(profile, b):  # b sequences, no context: the weights pass alone
        return profile.latency.table().iteration(IterFeatures(b, decode_seqs=b))

    step = [decode(graphs, b) for b in (9, 10, 15, 16)]
    # 9..16 sequences run as the 16-row graph: only the per-sequence input preparation differs
    for b, t in zip((9, 10, 15), step, strict=False):
        assert t == pytest.approx(step[-1] - (16 - b) * per_seq, rel=1e-9)
    assert decode(graphs, 17) > step[-1] + per_seq  # the next bucket, 32 rows
    host = eager_launches(spec) * gpu.overheads.eager_host_s_per_launch  # eager: unpadded, launch-bound here
    assert decode(eager, 9) == pytest.approx(host, rel=1e-9) == decode(eager, 16)


def test_tail_term_is_recovered_from_ragged_decode_iterations():
    from tokenjoule.calibrate.cost_form import IterFeatures
    from tokenjoule.calibrate.overhead_fit import _fit_decode

    gpu = load_gpu_profile(H200)
    truth = dataclasses.replace(gpu.overheads, decode_tail_s_per_token=7e-9)
    specs = [ModelSpec.from_name(name) for name in ("llama-3.1-8b", "olmoe-1b-7b")]
    data, ragged = [], []
    for spec in specs:
        profile = compose_profile(dataclasses.replace(gpu, overheads=truth), spec)
        table = profile.latency.table()
        points = []
        for seqs, mean, longest in ((4, 300, 2000), (24, 800, 4000), (40, 1200, 3000), (64, 500, 6000)):
            f = IterFeatures(seqs, 0, 0, seqs * mean, seqs, 0, longest)
            points.append({"features": f, "time_s": table.iteration(f, profile.decode_split_rule)})
        ragged.append((spec, points))
        data.append((spec, _synthetic_points(gpu, spec, truth)))
    fit = _fit_decode(dataclasses.replace(gpu, overheads=None), data, ragged)
    assert fit["decode_tail_s_per_token"] == pytest.approx(7e-9, rel=1e-3)
    assert fit["graph_gap_s_per_layer"] == pytest.approx(truth.graph_gap_s_per_layer, rel=1e-3)
    assert fit["decode_host_s_per_seq"] == pytest.approx(truth.decode_host_s_per_seq, rel=1e-3)
    profile = compose_profile(dataclasses.replace(gpu, overheads=truth), specs[0])
    assert profile.latency.coef["decode_tail_ctx_tokens"] == pytest.approx(7e-9 * specs[0].n_layers)
    assert _fit_decode(gpu, [], []) == {}


def test_operator_energy_is_fitted_at_the_time_the_composition_evaluates_it():
    """Energy is priced at the fitted time, so it is fitted against that time, not the measured one.

    Points whose measured time the time form cannot follow (here a third of them 30% faster, with energy to match):
    energy fitted against the measured time and evaluated at the fitted one misses those points by the time error;
    fitted against the fitted time, the per-byte term takes up what it can.
    """
    from tokenjoule.calibrate.fit import solve_relative
    from tokenjoule.calibrate.gpu_fit import ENERGY_TERMS

    rng = np.random.default_rng(1)
    b, f = rng.uniform(1e6, 1e9, 60), rng.uniform(1e8, 1e12, 60)
    t = (3e-6 + b / 4e12 + f / 7e14) * np.where(b > np.quantile(b, 2 / 3), 0.7, 1.0)
    e = 100 * t + 3e-10 * b
    fit = fit_operator_once("prefill_attn", {"bytes": b, "flops": f}, t, e)
    fitted_t, pred_e = fit.cost(bytes=b, flops=f)
    assert np.max(np.abs(fitted_t / t - 1)) > 0.1  # the time form misses the slow third
    on_measured = dict(zip(ENERGY_TERMS, solve_relative(np.column_stack([t, b, f]), e), strict=True))
    old_e = dataclasses.replace(fit, energy_coef=on_measured).energy_j(fitted_t, bytes=b, flops=f)
    err, old_err = np.abs(pred_e / e - 1), np.abs(old_e / e - 1)
    assert np.mean(err**2) < 0.8 * np.mean(old_err**2)


def test_energy_fit_finds_the_power_cap_and_prices_capped_calls_at_it():
    """Calls whose bytes and FLOPs would ask for more than the board's limit draw the limit: E = cap x t there.

    Synthetic points under a 650 W cap: the fit finds a cap near it and the linear terms below it; a fit without a
    cap (the form before it) misses the capped points by far more. The cap survives the profile file.
    """
    from tokenjoule.calibrate.fit import solve_relative
    from tokenjoule.calibrate.gpu_fit import ENERGY_TERMS, OperatorFit

    rng = np.random.default_rng(2)
    b, f = rng.uniform(1e6, 1e9, 80), rng.uniform(1e8, 1e12, 80)
    t = 3e-6 + b / 4e12 + f / 7e14
    linear = 150 * t + 1e-10 * b + 1e-12 * f
    e = np.minimum(linear, 650.0 * t)
    assert (linear > 650.0 * t).mean() > 0.2  # a good share of the points is capped
    fit = fit_operator_once("prefill_attn", {"bytes": b, "flops": f}, t, e)
    assert fit.power_cap_w == pytest.approx(650.0, rel=0.03)
    fitted_t, pred = fit.cost(bytes=b, flops=f)
    linear_fit = dict(zip(ENERGY_TERMS, solve_relative(np.column_stack([fitted_t, b, f]), e), strict=True))
    pred_uncapped = dataclasses.replace(fit, energy_coef=linear_fit, power_cap_w=None).energy_j(fitted_t, bytes=b,
                                                                                                  flops=f)
    assert np.median(np.abs(pred / e - 1)) < 0.02
    assert np.max(np.abs(pred / e - 1)) < 0.5 * np.max(np.abs(pred_uncapped / e - 1))
    data = fit.to_dict()
    assert OperatorFit.from_dict(data).power_cap_w == fit.power_cap_w
    assert OperatorFit.from_dict({k: v for k, v in data.items() if k != "power_cap_w"}).power_cap_w is None
    with pytest.raises(ValueError, match="power_cap_w"):
        dataclasses.replace(fit, power_cap_w=-1.0)
