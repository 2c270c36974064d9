"""Grid carbon intensity by region name (DE, FRA, Germany, gcp:europe-west1), read from CodeCarbon's data files.

CodeCarbon (PyPI `codecarbon`, MIT license, installed by the extra `tokenjoule[carbon]`) ships, as package data, the
intensities its tracker uses: one per country in `data/private_infra/global_energy_mix.json` (gCO2e/kWh and the
year of the energy mix), and one per cloud region in `data/cloud/impact.csv` (in 3.3.2 Google Cloud's regions only;
CodeCarbon itself prices an AWS or Azure machine at its country's figure). Both files are read in place: the package
is located without running its `__init__`, which imports its tracker (pandas, requests, psutil, ...), so a region
lookup costs one file read. A region is looked up exactly (case-insensitive); close names are only suggested.
"""

from __future__ import annotations

import csv
import difflib
import importlib.metadata
import importlib.resources
import importlib.util
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tokenjoule.kernels.spec import ConfigError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

DATASET = "codecarbon"
COUNTRIES_FILE = "data/private_infra/global_energy_mix.json"
CLOUD_FILE = "data/cloud/impact.csv"
INSTALL_HINT = "pip install 'tokenjoule[carbon]'"


@dataclass(frozen=True, slots=True)
class RegionIntensity:
    """A region's grid intensity and where it was read.

    Attributes:
        region: the dataset's key: an ISO 3166 alpha-3 country code, or "provider:region".
        g_per_kwh: grid intensity, gCO2e/kWh.
        dataset: the dataset and its version, e.g. "codecarbon 3.3.2".
        file: the data file inside the dataset.
        detail: what the entry says about itself (country name and year, or the provider's source).
    """

    region: str
    g_per_kwh: float
    dataset: str
    file: str
    detail: str

    @property
    def source(self) -> str:
        """One line naming the dataset, its version, the file and the entry, for outputs."""
        return f"{self.dataset} {self.file}: {self.region} ({self.detail})"


def codecarbon_data() -> tuple[Traversable, str] | None:
    """CodeCarbon's package folder and version, or None when it is not installed.

    The module object is built from its spec but never executed, so its heavy `__init__` does not run.
    """
    spec = importlib.util.find_spec(DATASET)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = importlib.resources.files(importlib.util.module_from_spec(spec))
    try:
        version = importlib.metadata.version(DATASET)
    except importlib.metadata.PackageNotFoundError:  # a source checkout on the path, without metadata
        version = "unknown version"
    return folder, version


def region_intensity(name: str) -> RegionIntensity:
    """The grid intensity of a country or cloud region named `name`.

    Args:
        name: an ISO 3166 country code (alpha-2 "DE" or alpha-3 "DEU"), a country name as the dataset spells it
            ("Germany"), or "provider:region" ("gcp:europe-west1"); case-insensitive.

    Returns:
        The intensity and its provenance.

    Raises:
        ConfigError: the dataset is not installed, or names no such region (the message suggests close ones).
    """
    found = codecarbon_data()
    if found is None:
        raise ConfigError(f"--carbon {name}: not a number or a file, and region names need CodeCarbon's data: "
                          f"{INSTALL_HINT}")
    folder, version = found
    dataset = f"{DATASET} {version}"
    key = name.strip()
    if ":" in key:
        return _cloud_region(key, folder / CLOUD_FILE, dataset)
    return _country(key, folder / COUNTRIES_FILE, dataset)


def _country(key: str, path: Traversable, dataset: str) -> RegionIntensity:
    countries = json.loads(path.read_text(encoding="utf-8"))
    by_name = {str(row.get("country_name", "")).lower(): code for code, row in countries.items()}
    code = key.upper() if key.upper() in countries else by_name.get(key.lower())
    if code is None and len(key) == 2:
        code = _alpha3(key)
    if code is None or code not in countries:
        names = sorted(countries) + sorted(str(row.get("country_name", "")) for row in countries.values())
        raise ConfigError(_unknown(key, names, f"{dataset} {COUNTRIES_FILE}", "a country code (DE, FRA) or name"))
    row = countries[code]
    return RegionIntensity(code, float(row["carbon_intensity"]), dataset, COUNTRIES_FILE,
                           f"{row.get('country_name', code)}, {row.get('year', 'year not given')}")


def _alpha3(alpha2: str) -> str | None:
    """ISO 3166 alpha-3 code of an alpha-2 one, from pycountry (a CodeCarbon dependency) when it is there."""
    try:
        import pycountry
    except ImportError:
        return None
    country = pycountry.countries.get(alpha_2=alpha2.upper())
    return country.alpha_3 if country is not None else None


def _cloud_region(key: str, path: Traversable, dataset: str) -> RegionIntensity:
    provider, _, region = (part.strip().lower() for part in key.partition(":"))
    rows = list(csv.DictReader(path.read_text(encoding="utf-8-sig").splitlines()))
    providers = sorted({r["provider"].lower() for r in rows})
    if provider not in providers:
        raise ConfigError(f"--carbon {key}: {dataset} {CLOUD_FILE} has regions of {', '.join(providers)} only, no "
                          f"{provider} regions; give the region's country instead (e.g. --carbon USA, --carbon DE)")
    mine = {r["region"].lower(): r for r in rows if r["provider"].lower() == provider}
    if region not in mine:
        raise ConfigError(_unknown(key, [f"{provider}:{r}" for r in sorted(mine)], f"{dataset} {CLOUD_FILE}",
                                   f"one of {len(mine)} {provider} regions"))
    row = mine[region]
    detail = ", ".join(x for x in (row.get("city"), row.get("country_name"), row.get("source")) if x)
    return RegionIntensity(f"{provider}:{row['region']}", float(row["impact"]), dataset, CLOUD_FILE, detail)


def _unknown(key: str, names: list[str], where: str, expected: str) -> str:
    spelled = {n.lower(): n for n in names}
    close = [spelled[m] for m in difflib.get_close_matches(key.lower(), list(spelled), n=3, cutoff=0.6)]
    hint = f"; close: {', '.join(close)}" if close else ""
    return f"--carbon {key}: no such region in {where} (expected {expected}, a number or a CSV file){hint}"
