"""Which profile prices a what-if with `tp` GPUs per replica: a measured one of that TP degree, else a tp=1 one.

Without a measured TP profile, the tp=1 profile is stretched by `ModeledTPCost` (a model, labelled so in every
output). A measured TP profile (`torchrun ... -m tokenjoule.calibrate.tp_run calibrate`, saved as
`<gpu>x<tp>-<model>-<engine>-<mode>.json`) stands in for a tp=1 profile when both measured the same GPU type, model,
engine and mode. Candidates are the profiles beside the given file (a device run writes its tp=1 and TP profiles into
one folder) and the shipped profiles. When several match, the most recently measured one wins: superseded
calibrations belong in `profiles/archive/`, which is not searched.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenjoule.calibrate.cost_form import ProfileError
from tokenjoule.calibrate.profile import PROFILE_KIND, GPUProfile, load_profile, resolve_profile_path, shipped_profiles

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ProfileChoice:
    """The profile a run uses, its file, and the TP degree it was chosen for.

    Attributes:
        profile: the profile (None: a roofline run without one).
        path: the profile's file (None without a profile).
        tp: GPUs per replica asked for.
        calibrated: whether the run prices iterations with this profile's curves (False for the roofline models,
            which read only its model and GPU).
        composed: the profile was composed from a GPU profile (`calibrate/compose.py`): every cost modeled.
    """

    profile: GPUProfile | None
    path: Path | None
    tp: int = 1
    calibrated: bool = True
    composed: bool = False

    @property
    def modeled_tp(self) -> bool:
        """Whether the run's TP costs are modeled from a tp=1 profile rather than measured."""
        return self.calibrated and self.profile is not None and self.profile.tp != self.tp

    @property
    def source(self) -> str | None:
        """Where the calibrated costs come from, naming the file; None when no profile prices the run."""
        if self.profile is None or not self.calibrated:
            return None
        if self.composed:
            return f"composed (modeled) for {self.profile.model.name} from GPU profile {self.path}"
        if self.modeled_tp:
            return f"modeled from tp=1 {self.path}"
        return f"measured tp profile {self.path}" if self.tp > 1 else f"profile {self.path}"


def same_setup(a: GPUProfile, b: GPUProfile) -> bool:
    """Whether two profiles measured the same GPU type, model, engine and mode (their TP degrees may differ)."""
    def key(p: GPUProfile) -> tuple[Any, ...]:
        return p.gpu.get("name"), p.gpu.get("datasheet"), p.model, p.engine, p.mode

    return key(a) == key(b)


def _read_profile(path: Path) -> GPUProfile | None:
    """The profile in `path`; None for JSON files of another kind (a device run's check and bench results)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        logger.warning("skipping %s while looking for TP profiles: %s", path, err)
        return None
    if not isinstance(data, dict) or data.get("kind") != PROFILE_KIND:
        return None
    try:
        return GPUProfile.from_dict(data, source=str(path))
    except ProfileError as err:
        logger.warning("skipping %s while looking for TP profiles: %s", path, err)
        return None


def candidates(path: Path) -> list[Path]:
    """Where a profile's TP siblings may be: the JSON files beside `path`, then the shipped profiles."""
    return [*sorted(path.parent.glob("*.json")), *shipped_profiles().values()]


def profiles_by_tp(base: GPUProfile, paths: Iterable[Path]) -> dict[int, tuple[GPUProfile, Path]]:
    """Per TP degree, the newest profile among `paths` with `base`'s setup (see `same_setup`), and its file.

    Args:
        base: the profile whose GPU, model, engine and mode must match.
        paths: candidate JSON files (files of another kind and unreadable ones are skipped; duplicates count once).

    Returns:
        {tp: (profile, path)}; `base`'s own degree is included when its file is among `paths`.
    """
    found: dict[int, tuple[str, str, GPUProfile, Path]] = {}
    seen: set[Path] = set()
    for path in paths:
        if path.resolve() in seen:
            continue
        seen.add(path.resolve())
        profile = _read_profile(path)
        if profile is None or not same_setup(profile, base):
            continue
        best = found.get(profile.tp)
        if best is not None:
            logger.info("two tp=%d profiles match %s: %s and %s; using the newer", profile.tp, base.label, best[1],
                        path)
        if best is None or (profile.date, str(path)) > best[:2]:
            found[profile.tp] = (profile.date, str(path), profile, path)
    return {tp: (entry[2], entry[3]) for tp, entry in sorted(found.items())}


def find_tp_profile(base: GPUProfile, tp: int, paths: Iterable[Path]) -> tuple[GPUProfile, Path] | None:
    """The newest profile among `paths` with `base`'s setup measured at `tp` GPUs, and its file (None: no match)."""
    return profiles_by_tp(base, paths).get(tp)


def choose_profile(name: str | None, cost: str, tp: int, default: str) -> ProfileChoice:
    """The profile a run with `tp` GPUs per replica uses (see the module docstring).

    Args:
        name: a profile file or shipped name (None: `default`, or no profile for the roofline models).
        cost: the cost model ("calibrated" searches for a measured TP profile; the roofline models do not).
        tp: GPUs per replica.
        default: the shipped profile used when `name` is None.

    Returns:
        The choice; its `source` says whether TP is measured or modeled, and from which file.

    Raises:
        ProfileError: the profile cannot be read (a missing default names itself and the alternatives), or it was
            measured at a TP degree other than 1 and `tp`.
    """
    calibrated = cost == "calibrated"
    if name is None and not calibrated:
        return ProfileChoice(None, None, tp, calibrated)
    try:
        path = resolve_profile_path(name or default)
        profile = load_profile(path)
    except ProfileError as err:
        if name is None:
            raise ProfileError(f"default profile {default!r} is not installed ({err}); pass --profile FILE "
                               "or use --cost roofline") from err
        raise
    if not calibrated or profile.tp == tp:
        return ProfileChoice(profile, path, tp, calibrated)
    if profile.tp != 1:
        raise ProfileError(f"{path}: a tp={profile.tp} profile cannot price --tp {tp}; pass a tp={tp} profile, or a "
                           f"tp=1 profile to model tp={tp} from")
    found = find_tp_profile(profile, tp, candidates(path))
    return ProfileChoice(*found, tp) if found else ProfileChoice(profile, path, tp)


def choose_for_model(name: str | None, model: str | None, gpu: str | None, cost: str, tp: int,
                     default: str) -> ProfileChoice | None:
    """The profile `--model` (and `--gpu`) pick, where they pick one; None: `choose_profile(name)` decides as before.

    `--profile` naming a GPU profile (a file, or a shipped one's short name such as `h200-gpu-tokenjoule-eager`)
    composes it for `--model`. Without `--profile`, a `--model` that the default profile is not for (or another
    `--gpu`) gets a shipped model-specific profile of that model (and GPU) when one exists, else the shipped GPU
    profile of the GPU (`--gpu`, default H200-SXM) composed for the model, its CUDA-graph one where there are several.

    Raises:
        ConfigError: a GPU profile without `--model`, or a model that does not fit on the GPU.
        ProfileError: no shipped GPU profile for the GPU.
    """
    from tokenjoule.calibrate import profile as profile_files  # SHIPPED_DIR read at call time: tests point it elsewhere
    from tokenjoule.calibrate.compose import compose_profile
    from tokenjoule.calibrate.gpu_profile import is_gpu_profile_file, load_gpu_profile
    from tokenjoule.kernels.spec import ConfigError, load_spec

    if cost != "calibrated":
        return None
    if name is not None:
        shipped = profile_files.SHIPPED_DIR / f"{name}.json"  # a shipped GPU profile by its short name
        path = Path(name) if Path(name).exists() or not shipped.is_file() else shipped
        if not is_gpu_profile_file(path):
            return None
        if not model:
            raise ConfigError(f"{name} is a GPU profile: pass --model NAME or a config.json to compose it for")
        return ProfileChoice(compose_profile(load_gpu_profile(path), load_spec(model), str(path)), path, tp,
                             composed=True)
    if not model:
        return None
    spec = load_spec(model)
    if _serves(load_profile(resolve_profile_path(default)), spec.name, gpu):
        return None
    measured = shipped_for(spec.name, gpu)
    if measured is not None:
        return choose_profile(str(measured), cost, tp, default)
    sheet = gpu or "H200-SXM"
    found = [(path, load_gpu_profile(path)) for path in sorted(profile_files.SHIPPED_DIR.glob("*.json"))
             if is_gpu_profile_file(path)]
    found = [(path, p) for path, p in found if p.gpu.get("datasheet") == sheet]
    # the engine's default mode (CUDA graphs) first; other modes are picked by name with --profile
    if found:
        path, gpu_profile = min(found, key=lambda f: f[1].mode != "cudagraph")
        return ProfileChoice(compose_profile(gpu_profile, spec, str(path)), path, tp, composed=True)
    raise ProfileError(f"no shipped GPU profile for {sheet}; pass --profile GPU_PROFILE.json")


def _serves(profile: GPUProfile, model: str, gpu: str | None) -> bool:
    """Whether `profile` is for `model` on `gpu` (a datasheet or NVML name; any GPU when None)."""
    return profile.model.name == model and gpu in (None, profile.gpu.get("datasheet"), profile.gpu.get("name"))


def shipped_for(model: str, gpu: str | None) -> Path | None:
    """A shipped model-specific tp=1 profile of `model` (on `gpu`'s datasheet when given), or None."""
    for path in shipped_profiles().values():
        try:
            p = load_profile(path)
        except ProfileError:
            continue
        if p.tp == 1 and _serves(p, model, gpu):
            return path
    return None
