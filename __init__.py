"""tokenjoule: the energy of LLM serving, calibrated on a GPU and simulated on a CPU.

The repository root is this package: `traces/`, `kernels/`, `calibrate/` and `sim/` are its subpackages (one job
each), and `cli.py` is the `tokenjoule` command that mounts their commands. `simulate` is the Python entry to the
main job; it imports the simulator only when called, so `import tokenjoule` stays cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokenjoule.calibrate.profile import GPUProfile
    from tokenjoule.sim.run import SimResult
    from tokenjoule.traces.checks import TraceNote
    from tokenjoule.traces.loaders import LoadOptions
    from tokenjoule.traces.schema import Trace

try:
    __version__ = version("tokenjoule")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__", "simulate"]

DEFAULT_TRACE = "azure-conv-2023"
DEFAULT_PROFILE = "h100-llama-3.1-8b-tokenjoule-cudagraph"


def simulate(trace: str | Path | Trace = DEFAULT_TRACE, profile: str | Path | GPUProfile | None = DEFAULT_PROFILE,
             policy: str = "continuous", iterations: bool = False, *, trace_format: str | None = None,
             trace_options: Mapping[str, Any] | LoadOptions | None = None, **config: Any) -> SimResult:
    """Simulate serving a trace, as `tokenjoule simulate` does, and return the result in memory (nothing written).

    Args:
        trace: a trace file (CSV, Parquet, JSONL; format detected), a bundled trace's name, or a loaded `Trace`.
        profile: a profile file, a shipped profile's name, a loaded `GPUProfile`, or None (with `cost="roofline"`).
        policy: "static", "continuous" or "chunked".
        iterations: also return every iteration and idle interval of every replica (`.iterations`, the table that
            `tokenjoule simulate --events` writes).
        trace_format: the trace file's format (`tokenjoule.traces.loaders.FORMAT_NAMES`; `--format`), None to detect.
        trace_options: how to read a trace file, as the trace flags of `tokenjoule simulate` do: a
            `tokenjoule.traces.loaders.LoadOptions` or a dict of its fields, e.g. `{"arrivals": "poisson",
            "rate_per_s": 4}` or `{"mapping": {"arrival_s": "ts", "input_tokens": "in", "output_tokens": "out"},
            "time_unit": "ms"}`; seeded by `seed` (as `--seed` seeds the flags) unless it names its own.
        **config: any other `tokenjoule.sim.run.SimConfig` field, e.g. `replicas=4`, `max_num_seqs=128`,
            `pue=1.2`, `carbon_g_per_kwh=400.0` (its docstring lists them with their units); one the policy does not
            read (`max_batch` under "continuous", `max_num_seqs` under "static") is refused, as the command does.

    Returns:
        A `SimResult`: `.summary` (the dict `tokenjoule simulate --json` prints, with its `notes` and
        `trace_notes`), `.requests` (a pyarrow Table, one row per request: latencies and the GPU energy attributed
        to it) and, when asked, `.iterations`.

    Warns:
        RunNoteWarning: once per note in `.summary["notes"]` (overload, pricing beyond the profile's measured range,
            requests rejected for the model's context length) and in `.summary["trace_notes"]` (arrivals out of
            order, sorted; request ids that repeat), as `tokenjoule simulate` prints them.
    """
    import dataclasses
    import warnings

    from tokenjoule.calibrate.profile import GPUProfile, load_profile
    from tokenjoule.kernels.spec import ConfigError
    from tokenjoule.sim.notes import RunNoteWarning
    from tokenjoule.sim.run import POLICY_SETTINGS, SimConfig, run

    ignored = [name for name in config if policy not in POLICY_SETTINGS.get(name, (policy,))]
    if ignored:  # the policy would run without it, silently
        readers = POLICY_SETTINGS[ignored[0]]
        raise ConfigError(f"{ignored[0]}={config[ignored[0]]!r}: only policy {' and '.join(map(repr, readers))} "
                          f"{'reads' if len(readers) == 1 else 'read'} it (this run is policy {policy!r}); drop it")
    loaded, trace_notes = _read(trace, trace_format, trace_options, config.get("seed", 0))
    prof = profile if profile is None or isinstance(profile, GPUProfile) else load_profile(profile)
    result = run(SimConfig(policy=policy, **config), loaded, prof, record_iterations=iterations)
    result = dataclasses.replace(result, summary={**result.summary,
                                                  "trace_notes": [note.to_dict() for note in trace_notes]})
    for note in result.summary["notes"] + result.summary["trace_notes"]:
        warnings.warn(note["message"], RunNoteWarning, stacklevel=2)
    return result


def _read(trace: str | Path | Trace, fmt: str | None, options: Mapping[str, Any] | LoadOptions | None,
          seed: int) -> tuple[Trace, tuple[TraceNote, ...]]:
    """The trace to simulate and the notes reading it left; a loaded Trace as it is (it was read already)."""
    from tokenjoule.traces.loaders import LoadOptions, read_trace
    from tokenjoule.traces.schema import Trace

    if isinstance(trace, Trace):
        if fmt is not None or options is not None:
            raise ValueError("trace_format and trace_options read a trace file; this trace is loaded already")
        return trace, ()
    if isinstance(options, LoadOptions):
        loaded, report = read_trace(trace, fmt, options=options)
    else:  # the fields as keywords: read_trace names one it does not know
        loaded, report = read_trace(trace, fmt, **{"seed": seed, **(options or {})})
    return loaded, report.notes
