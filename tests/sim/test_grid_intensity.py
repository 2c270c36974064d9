"""Grid intensity by region name: the number is CodeCarbon's, unknown names are refused with suggestions."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tokenjoule.kernels.spec import ConfigError
from tokenjoule.sim import grid_intensity
from tokenjoule.sim.grid_intensity import CLOUD_FILE, COUNTRIES_FILE, region_intensity

needs_codecarbon = pytest.mark.skipif(importlib.util.find_spec("codecarbon") is None,
                                      reason="needs the carbon extra: pip install 'tokenjoule[carbon]'")


def _installed(relative: str) -> Path:
    """The file as codecarbon installed it, found independently of the module under test."""
    return Path(importlib.util.find_spec("codecarbon").submodule_search_locations[0]) / relative


@needs_codecarbon
@pytest.mark.parametrize("name", ["DE", "DEU", "deu", "Germany", "germany"])
def test_country_by_code_or_name_is_the_datasets_number(name):
    countries = json.loads(_installed(COUNTRIES_FILE).read_text())
    found = region_intensity(name)
    assert found.region == "DEU" and found.g_per_kwh == countries["DEU"]["carbon_intensity"]
    assert found.dataset.startswith("codecarbon 3.3.2")
    assert COUNTRIES_FILE in found.source and f"Germany, {countries['DEU']['year']}" in found.source


@needs_codecarbon
@pytest.mark.parametrize("name", ["gcp:europe-west1", "GCP:Europe-West1", " gcp : europe-west1 "])
def test_cloud_region_is_the_datasets_number(name):
    rows = list(csv.DictReader(_installed(CLOUD_FILE).read_text(encoding="utf-8-sig").splitlines()))
    want = next(float(r["impact"]) for r in rows if (r["provider"], r["region"]) == ("gcp", "europe-west1"))
    found = region_intensity(name)
    assert (found.region, found.g_per_kwh) == ("gcp:europe-west1", want)
    assert CLOUD_FILE in found.source and "Belgium" in found.source


@needs_codecarbon
def test_france_is_not_germany():
    assert region_intensity("FRA").g_per_kwh < region_intensity("DE").g_per_kwh / 2  # nuclear vs coal and gas


@needs_codecarbon
@pytest.mark.parametrize("name, needles", [
    ("Germny", ["--carbon Germny", "no such region", "close: Germany"]),
    ("gcp:europe-west99", ["--carbon gcp:europe-west99", CLOUD_FILE,
                           "close: gcp:europe-west9"]),
    ("QQ", ["--carbon QQ", "country code (DE, FRA) or name"]),
    ("aws:us-east-1", ["--carbon aws:us-east-1", "gcp only", "no aws regions", "give the region's country"]),
    ("azure:eastus", ["no azure regions"]),
])
def test_unknown_regions_are_refused_in_one_line(name, needles):
    with pytest.raises(ConfigError) as err:
        region_intensity(name)
    message = str(err.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message


def test_without_the_extra_the_error_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(grid_intensity.importlib.util, "find_spec",
                        lambda name, package=None: None if name == "codecarbon" else real(name, package))
    assert grid_intensity.codecarbon_data() is None
    with pytest.raises(ConfigError, match=r"--carbon DE: .*pip install 'tokenjoule\[carbon\]'"):
        region_intensity("DE")


@needs_codecarbon
def test_a_lookup_never_runs_codecarbons_heavy_init():
    code = ("import sys; from tokenjoule.sim.grid_intensity import region_intensity; region_intensity('DE'); "
            "region_intensity('gcp:us-east1'); print(sorted(m for m in ('codecarbon', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
