"""`calibrate/validate/tp_comparison.py` and `tokenjoule validate tp` on synthetic profiles and raw sweeps whose
errors are known by construction.

The "measured" tp=2 sweep is the modeled tp=2 cost times 1.25 (latency) and 0.8 (energy), so the modeled cost is off
by exactly -20% and +25% at every point; the tp=2 profile's curves are that sweep's exact line (fit error 0).
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from sim_profiles import make_profile

from tokenjoule.calibrate.cost_form import IterFeatures
from tokenjoule.calibrate.profile import save_profile
from tokenjoule.calibrate.sweep.iterations import RAW_SCHEMA, write_rows
from tokenjoule.calibrate.validate import tp_comparison as script
from tokenjoule.cli import main
from tokenjoule.kernels.shape import IterationShape
from tokenjoule.sim.cost import CalibratedCost, ModeledTPCost

LAT, EN = 1.25, 0.8  # measured tp=2 / modeled tp=2
SHAPES = {
    **{f"decode_b1_c{c}": ("decode", IterationShape(decode=(c,))) for c in (128, 512, 2048, 8192, 16384)},
    **{f"prefill_b1_l{n}": ("prefill", IterationShape(prefill=((n, 0),))) for n in (64, 128, 512, 2048, 8192)},
    "prefill_b1_l512_c4096": ("prefill", IterationShape(prefill=((512, 4096),))),
    "decode_b16_c512": ("decode", IterationShape(decode=(512,) * 16)),
    "mixed_p256_d8_c1024": ("mixed", IterationShape(prefill=((256, 0),), decode=(1024,) * 8)),
}


def _rows(cost, scale=(1.0, 1.0), skip=()) -> list[dict]:
    """Two repeats per point at cost x (1 -+ 1%) (median = the cost), an idle row and a skipped row."""
    rows = []
    for point_id, (kind, shape) in SHAPES.items():
        if point_id in skip:
            continue
        t, e = cost.iteration(IterFeatures.of_shape(shape))
        for repeat, wobble in enumerate((0.99, 1.01)):
            row = dict.fromkeys(RAW_SCHEMA.names)
            row.update(point_id=point_id, kind=kind, repeat=repeat, status="ok", reason="",
                       prefill_json=json.dumps([list(c) for c in shape.prefill]),
                       decode_json=json.dumps(list(shape.decode)), new_tokens=shape.new_tokens,
                       step_time_s=t * scale[0] * wobble, energy_per_step_j=e * scale[1] * wobble)
            rows.append(row)
    rows.append({**dict.fromkeys(RAW_SCHEMA.names), "point_id": "idle", "kind": "idle", "repeat": 0, "status": "ok",
                 "power_w": 100.0})
    rows.append({**rows[0], "point_id": "decode_b512_c16384", "status": "skipped", "step_time_s": None})
    return rows


def _tp2_line(modeled: ModeledTPCost):
    """The tp=2 'measurement' as profile curves: modeled x (LAT, EN), linear in new_tokens (so two points fix it)."""
    def at(n):
        return modeled.iteration(IterFeatures(new_tokens=n, decode_seqs=n))

    (t0, e0), (t1, e1) = at(0), at(1000)
    return (t0 * LAT, (t1 - t0) / 1000 * LAT), (e0 * EN, (e1 - e0) / 1000 * EN)


@pytest.fixture
def measured(tmp_path):
    """A run folder: tp=1 profile + raw (measured = its own curves), tp=2 profile + raw (modeled x LAT, EN)."""
    tp1 = dataclasses.replace(make_profile(), raw_path="h200.raw.parquet")
    save_profile(tp1, tmp_path / "h200.json")
    write_rows(_rows(CalibratedCost(tp1)), tmp_path / "h200.raw.parquet")
    modeled = ModeledTPCost(CalibratedCost(tp1), 2)
    lat, en = _tp2_line(modeled)
    tp2 = dataclasses.replace(make_profile(tp=2, lat=lat, en=en, idle_power_w=200.0), raw_path="h200x2.raw.parquet")
    save_profile(tp2, tmp_path / "h200x2.json")
    write_rows(_rows(modeled, (LAT, EN), skip={"decode_b1_c512"}), tmp_path / "h200x2.raw.parquet")
    return tmp_path, tp1, modeled


def test_errors_of_the_modeled_cost_and_the_fit(measured):
    folder, _, _ = measured
    report = script.build_report(folder / "h200.json", [folder / "h200x2.json"])
    (tp,) = report["tps"]
    assert tp["tp"] == 2 and len(tp["points"]) == len(SHAPES) - 1  # no idle, skipped or missing point
    e = tp["errors"]
    assert e["modeled_time_err"]["median_abs"] == pytest.approx(1 - 1 / LAT)
    assert e["modeled_time_err"]["p95_abs"] == pytest.approx(1 - 1 / LAT)
    assert e["modeled_time_err"]["median"] == pytest.approx(1 / LAT - 1)
    assert e["modeled_energy_err"]["median"] == pytest.approx(1 / EN - 1)
    assert e["fit_time_err"]["p95_abs"] < 1e-9 and e["fit_energy_err"]["p95_abs"] < 1e-9
    point = next(p for p in tp["points"] if p["point_id"] == "decode_b16_c512")
    assert point["measured_time_s"] == pytest.approx(point["modeled_time_s"] * LAT)


def test_paper_check_at_batch_1(measured):
    folder, tp1, modeled = measured
    rows = script.build_report(folder / "h200.json", [folder / "h200x2.json"])["paper_check"]
    decode = [r["tokens"] for r in rows if r["kind"] == "decode"]
    prefill = [r["tokens"] for r in rows if r["kind"] == "prefill"]
    assert decode == [128, 512, 8192, 16384] and prefill == [64, 128, 2048, 8192]  # 4 spread, fresh prompts only
    r = rows[2]
    assert r["point_id"] == "decode_b1_c8192"
    f = IterFeatures.of_shape(SHAPES["decode_b1_c8192"][1])
    (t1, e1), (t2, e2) = CalibratedCost(tp1).iteration(f), modeled.iteration(f)
    assert r["tp"][2]["modeled"]["latency"] == pytest.approx(t2 / t1 - 1)
    assert r["tp"][2]["measured"]["latency"] == pytest.approx(t2 * LAT / t1 - 1)
    assert r["tp"][2]["measured"]["energy"] == pytest.approx(e2 * EN / e1 - 1)
    assert r["tp"][4]["measured"] is None and r["tp"][4]["modeled"]["latency"] < r["tp"][2]["modeled"]["latency"]
    assert rows[1]["tp"][2]["measured"] is None  # decode_b1_c512 was not in the tp=2 sweep


def test_command_writes_markdown_and_json(measured, capsys):
    folder, _, _ = measured
    out, js = folder / "docs" / "tp.md", folder / "docs" / "tp.json"
    out.parent.mkdir()
    args = ["validate", "tp", "--tp1", str(folder / "h200.json"), "--out", str(out), "--json", str(js)]
    assert main(args) == 0  # the tp=2 profile found beside --tp1
    text = out.read_text()
    assert "| 2 | 12 | 20.0% / 20.0% / -20.0% | 25.0% / 25.0% / +25.0% |" in text
    assert "TP2 latency -40.0%, energy +29.0%; TP4 latency -61.0%, energy +55.0%" in text
    assert "*measured*" in text and "*modeled*" in text and "decode b1 ctx 8192" in text
    data = json.loads(js.read_text())
    assert data["tps"][0]["profile"] == str(folder / "h200x2.json") and data["paper_check"][0]["tp"]["2"]
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []


def test_no_tp_profile_is_one_line(measured, capsys):
    folder, _, _ = measured
    (folder / "h200x2.json").unlink()
    assert main(["validate", "tp", "--tp1", str(folder / "h200.json"), "--out", str(folder / "tp.md")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no TP profile") and not (folder / "tp.md").exists()


@pytest.mark.parametrize("spoil,needle", [
    (lambda f: (f / "h200x2.raw.parquet").unlink(), "raw sweep file"),
    (lambda f: save_profile(dataclasses.replace(make_profile(tp=2), mode="eager"), f / "h200x2.json"),
     "is not the setup of --tp1"),
    (lambda f: save_profile(make_profile(tp=1), f / "h200x2.json"), "tp >= 2"),
])
def test_bad_inputs_are_one_line(measured, capsys, spoil, needle):
    folder, _, _ = measured
    spoil(folder)
    code = main(["validate", "tp", "--tp1", str(folder / "h200.json"), "--tp", str(folder / "h200x2.json"),
                        "--out", str(folder / "tp.md")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and needle in err[0]
    assert not (folder / "tp.md").exists()
