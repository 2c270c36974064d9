"""Where the profiles shipped as package data live, and how a short name finds one.

Apart from `profile.py` (the file format): the lookup is what the CLI, the simulator's TP chooser and the benchmark
scripts share, and tests point `SHIPPED_DIR` elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenjoule.calibrate.errors import ProfileError
from tokenjoule.calibrate.profile import PROFILE_KIND

SHIPPED_DIR = Path(__file__).parent / "profiles"


def shipped_profiles() -> dict[str, Path]:
    """Short name (file stem) -> path of each profile shipped as package data.

    JSON files of another kind beside them (measurement checks) are skipped; unreadable ones are kept, so that
    listing them reports them as invalid rather than hiding them.
    """
    return {p.stem: p for p in sorted(SHIPPED_DIR.glob("*.json")) if _may_be_profile(p)}


def _may_be_profile(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return True
    return not isinstance(data, dict) or data.get("kind", PROFILE_KIND) == PROFILE_KIND


def resolve_profile_path(name_or_path: str | Path) -> Path:
    """A path as given if it exists, else a shipped profile's short name; the error lists shipped names."""
    path = Path(name_or_path)
    if path.exists():
        return path
    shipped = shipped_profiles()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    names = ", ".join(shipped) or "none"
    raise ProfileError(f"{name_or_path}: no such profile file or shipped profile (shipped: {names})")
