import dataclasses
import json

import pytest

from tokenjoule.calibrate.cost_form import CostCurve, ProfileError
from tokenjoule.calibrate.profile import SCHEMA_VERSION, GPUProfile, HostOverhead, load_profile, save_profile
from tokenjoule.calibrate.summary import profile_summary, targets_met
from tokenjoule.kernels.shape import IterationShape


def test_toy_profile_is_valid_and_marked_synthetic(toy_profile):
    assert "SYNTHETIC" in toy_profile.notes
    assert toy_profile.method["synthetic"] is True
    assert toy_profile.datasheet.name == "H100-SXM"
    time_s, energy_j = toy_profile.cost(IterationShape(decode=(1024,) * 32))
    assert 0 < time_s < 0.1 and energy_j > toy_profile.idle_power_w * time_s


def test_round_trip(toy_profile, tmp_path):
    path = save_profile(toy_profile, tmp_path / "p.json")
    again = load_profile(path)
    assert again == toy_profile
    assert again.content_sha256 == toy_profile.content_sha256
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]  # no temp file left


def _write(tmp_path, data):
    path = tmp_path / "bad.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(schema_version=0), "schema_version=0"),
    (lambda d: d.update(kind="other"), "not a tokenjoule profile"),
    (lambda d: d.pop("latency"), "missing field 'latency'"),
    (lambda d: d["energy"].update(unit="s"), "unit"),
    (lambda d: d["latency"].update(knots_tokens=[1, 1, 2, 3, 4, 5]), "increase"),
    (lambda d: d["latency"]["coef"].update(flops=1.0), "unknown feature"),
    (lambda d: d.update(tp=0), "tp=0"),
    (lambda d: d["model"].update(n_layers=-1), "n_layers"),
])
def test_malformed_profiles_are_rejected(toy_profile_path, tmp_path, mutate, message):
    data = json.loads(toy_profile_path.read_text())
    mutate(data)
    with pytest.raises(ProfileError, match=message) as info:
        load_profile(_write(tmp_path, data))
    assert str(tmp_path / "bad.json") in str(info.value)


def test_old_schema_error_says_what_to_do(toy_profile_path, tmp_path):
    data = json.loads(toy_profile_path.read_text())
    data["schema_version"] = SCHEMA_VERSION - 1
    with pytest.raises(ProfileError, match="re-run `tokenjoule calibrate`"):
        load_profile(_write(tmp_path, data))


def test_not_json_and_missing_file(tmp_path):
    with pytest.raises(ProfileError, match="not valid JSON"):
        load_profile(_write(tmp_path, "{nope"))
    with pytest.raises(ProfileError, match="no such profile"):
        load_profile(tmp_path / "absent.json")


def test_summary_keys_and_figures(toy_profile):
    s = profile_summary(toy_profile, "x.json")
    assert {"label", "fit_errors", "targets_met", "prefill", "decode", "gpu", "software", "idle_power_w"} <= set(s)
    decode = {p["batch"]: p for p in s["decode"]}
    assert decode[1]["j_per_token"] > decode[128]["j_per_token"]  # batching saves energy per token
    assert decode[8]["energy_j"] == pytest.approx(toy_profile.cost(IterationShape(decode=(1024,) * 8))[1])
    json.dumps(s)


def test_targets_met():
    ok = {"cv_median": 0.02, "cv_p95": 0.08, "mixed_median": 0.02, "mixed_p95": 0.09}
    assert targets_met({"latency": ok, "energy": ok}) == {"latency": True, "energy": True}
    assert targets_met({"latency": {**ok, "mixed_p95": 0.2}})["latency"] is False
    assert targets_met({"latency": {**ok, "cv_median": 0.04}, "energy": {**ok, "cv_median": 0.04}}) == {
        "latency": False, "energy": True}
    assert targets_met({}) == {"latency": None, "energy": None}


def test_cost_curve_extrapolates_last_slope():
    c = CostCurve((1.0, 10.0, 20.0), (1.0, 1.0, 3.0), {}, "s")
    assert c.token_curve(30.0) == pytest.approx(5.0)
    assert GPUProfile  # imported for the type


def test_static_batch_cost_sums_prefill_and_decodes(toy_profile):
    from tokenjoule.calibrate.summary import static_batch_cost

    got = static_batch_cost(toy_profile, 2, 100, 3)
    parts = [toy_profile.cost(IterationShape(prefill=((100, 0),) * 2)),
             toy_profile.cost(IterationShape(decode=(100, 100))), toy_profile.cost(IterationShape(decode=(101, 101)))]
    assert got["time_s"] == pytest.approx(sum(p[0] for p in parts))
    assert got["energy_j"] == pytest.approx(sum(p[1] for p in parts))
    assert got["j_per_output_token"] == pytest.approx(got["energy_j"] / 6)
    with pytest.raises(ValueError):
        static_batch_cost(toy_profile, 0, 100, 3)


def test_host_overhead_round_trips_and_joins_the_content_hash(toy_profile, tmp_path):
    assert toy_profile.host_overhead is None and "host_overhead" not in toy_profile.to_dict()
    measured = dataclasses.replace(toy_profile, host_overhead=HostOverhead(2e-5, 4e-6, 1e-9, ({"seqs": 8},), "m"))
    back = load_profile(save_profile(measured, tmp_path / "h.json"))
    assert back.host_overhead == measured.host_overhead and back.host_overhead.seconds(8) == pytest.approx(
        2e-5 + 8 * 4e-6 + 64 * 1e-9)
    assert back.content_sha256 == measured.content_sha256 != toy_profile.content_sha256


def test_tail_context_is_the_longest_ones_excess_over_the_mean_per_split(toy_profile, tmp_path):
    from tokenjoule.calibrate.cost_form import DecodeSplitRule, shape_features

    ragged = IterationShape(decode=(8192,) + (256,) * 63)  # mean context 380
    rule = DecodeSplitRule(528, 32, 8)  # 64 sequences x 8 KV heads: 2 splits each
    assert shape_features(ragged)["decode_tail_ctx_tokens"] == 8192 - 380  # no rule: the whole excess
    assert shape_features(ragged, rule)["decode_tail_ctx_tokens"] == (8192 - 380) / 2
    assert shape_features(IterationShape(decode=(4096,) * 8), rule)["decode_tail_ctx_tokens"] == 0.0  # uniform
    assert shape_features(IterationShape(prefill=((64, 0),)), rule)["decode_tail_ctx_tokens"] == 0.0
    with pytest.raises(ProfileError, match="positive"):
        DecodeSplitRule(528, 0, 8)
    ruled = dataclasses.replace(toy_profile, decode_split_rule=rule)
    back = load_profile(save_profile(ruled, tmp_path / "r.json"))
    assert back.decode_split_rule == rule and back.content_sha256 != toy_profile.content_sha256


def _raw_maxima(path) -> tuple[int, int, int, int]:
    """(decode seqs, new tokens with prefill, prompt end, decode context): the largest a raw sweep measured."""
    import pyarrow.parquet as pq

    rows = [r for r in pq.read_table(path).to_pylist() if r["status"] == "ok" and r["kind"] != "idle"]
    prefill = [r for r in rows if r["has_prefill"]]
    # a generate() call (kind "generate") prefills its prompts, then decodes them to prompt + output_tokens - 1
    calls = [(json.loads(r["prefill_json"]), r["output_tokens"]) for r in rows if r["kind"] == "generate"]
    decoding = [(prompts, out) for prompts, out in calls if out > 1]
    return (max([r["decode_seqs"] for r in rows] + [len(prompts) for prompts, _ in decoding]),
            max(r["new_tokens"] for r in prefill),
            max(c + before for r in prefill for c, before in json.loads(r["prefill_json"])),
            max([c for r in rows for c in json.loads(r["decode_json"] or "[]")]
                + [c + out - 1 for prompts, out in decoding for c, _ in prompts]))


def test_measured_range_of_each_shipped_profile_is_what_its_raw_sweep_measured():
    from tokenjoule.calibrate.profile import shipped_profiles

    checked = 0
    for name, path in shipped_profiles().items():
        profile = load_profile(path)
        if profile.raw_path is None:
            continue
        r = profile.measured_range
        assert r.source == "grid", name
        assert (r.decode_seqs, r.iteration_tokens, r.prompt_tokens, r.context_tokens) == \
            _raw_maxima(path.parent / profile.raw_path), name
        checked += 1
    assert checked >= 5


def test_measured_range_without_a_grid_is_the_curves_knots(toy_profile):
    r = toy_profile.measured_range
    assert r.source == "knots" and r.prompt_tokens is None and r.context_tokens is None
    assert r.decode_seqs == toy_profile.latency.knots_tokens[-1]
    assert r.iteration_tokens == toy_profile.latency.prefill_knots_tokens[-1]
    grid = {"prefill_batches": [1, 4], "prefill_lengths_tokens": [128, 1024], "prefill_chunks": [[512, 1024]],
            "decode_batches": [1, 16, 128], "decode_contexts_tokens": [256, 2048]}
    measured = dataclasses.replace(toy_profile, method={"grid": grid, "max_batched_tokens": 2048})
    assert measured.measured_range == type(r)(128, 1024, 1536, 2048, "grid")  # 4 x 1024 exceeds the token limit
    short = dataclasses.replace(measured, method={**measured.method, "short_recalibration_of": {"date": "x"}})
    assert short.measured_range == r  # its curves are its base's, whose grid it does not record


def test_a_profile_without_its_models_context_takes_the_presets_or_none(toy_profile_path, tmp_path):
    data = json.loads(toy_profile_path.read_text())
    del data["model"]["max_position_embeddings"]
    assert load_profile(_write(tmp_path, data)).model.max_position_embeddings == 131072  # llama-3.1-8b's
    data["model"]["name"] = "my-finetune"
    unknown = load_profile(_write(tmp_path, data))
    assert unknown.model.max_position_embeddings is None
    assert load_profile(save_profile(unknown, tmp_path / "again.json")).model.max_position_embeddings is None
