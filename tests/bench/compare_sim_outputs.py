"""Byte-identical check of `tokenjoule simulate` between two checkouts (e.g. main and a branch that speeds it up).

Runs each configuration below under both checkouts and compares, byte for byte: the `--json` summary (each checkout's
own path replaced by ROOT, since `profile_source` names the profile file), the per-request table (`--out`'s
requests.parquet) and, where asked, the iteration log (`--events`). Prints one line per configuration and exits 1 on
any difference.

Run: python tests/bench/compare_sim_outputs.py --base /path/to/other/checkout [--new /path/to/this/checkout]
(a checkout is a folder holding the package's files, as this repository's root; `git worktree add --detach DIR main`
makes one of main).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# The configurations: each simulate's flags; "EVENTS" adds --events (compared too). Together they cover the three
# policies, 1-8 replicas, the three routers, modeled TP, another GPU and model, a composed profile, the roofline cost
# models, host power, PUE and carbon, a synthetic trace, preemptions (the roofline's small KV at 4x the rate) and
# profiles that price the longest decode context.
CONFIGS = (
    (),
    ("--policy", "static", "--max-batch", "16"),
    ("--policy", "chunked", "--replicas", "2"),
    ("--trace", "azure-code-2023", "--rate-scale", "2"),
    ("--tp", "2", "--replicas", "2", "--router", "least-outstanding"),
    ("--gpu", "H200-SXM", "--model", "qwen2.5-32b"),
    ("--gpu", "H200-SXM", "--model", "olmoe-1b-7b", "--policy", "chunked"),
    ("--synthetic", "n=2000,input=512,output=128,rate=8", "--replicas", "3", "--router", "random", "--seed", "3"),
    ("--carbon", "DE", "--pue", "1.3", "--host-power-w", "300"),
    ("--replicas", "2", "--policy", "chunked", "EVENTS"),
    ("--policy", "static", "--batch-timeout-s", "0.5", "EVENTS"),
    ("--cost", "roofline", "--model", "qwen2.5-32b", "--gpu", "H100-SXM", "--rate-scale", "4"),
    ("--cost", "roofline-memory", "--model", "qwen2.5-32b", "--gpu", "H100-SXM", "--rate-scale", "4", "--policy",
     "chunked", "--replicas", "2", "EVENTS"),
    ("--replicas", "8", "--rate-scale", "8", "--policy", "chunked", "--router", "least-outstanding"),
    ("--synthetic", "n=3000,input=2000,output=1500,rate=50", "--cost", "roofline", "--model", "llama-3.1-70b",
     "--gpu", "H100-SXM", "--tp", "2", "--policy", "chunked", "EVENTS"),
    # a profile with the longest context's tail term, a decode split rule and host time per iteration
    ("--profile", "h200-llama-3.1-8b-tokenjoule-cudagraph", "--rate-scale", "3", "EVENTS"),
    ("--profile", "h200-llama-3.1-8b-tokenjoule-eager", "--policy", "chunked", "--replicas", "2", "--rate-scale", "4"),
    # decodes beyond the profile's measured context (16,384 tokens), which the range tally counts
    ("--synthetic", "n=400,input=15000,output=3000,rate=1", "--policy", "chunked", "--seed", "5"),
)


def _simulate(checkout: Path, flags: tuple[str, ...], work: Path) -> dict[str, bytes]:
    """Run one configuration under `checkout` (imported as `tokenjoule` through a symlink); its outputs by name."""
    path_dir = work / "path"
    path_dir.mkdir()
    (path_dir / "tokenjoule").symlink_to(checkout)
    out = work / "out"
    args = [a for a in flags if a != "EVENTS"] + ["--json", "--out", str(out)]
    if "EVENTS" in flags:
        args += ["--events", str(work / "events.parquet")]
    env = {**os.environ, "PYTHONPATH": str(path_dir)}
    proc = subprocess.run([sys.executable, "-m", "tokenjoule", "simulate", *args], env=env, capture_output=True,
                          cwd=work)
    if proc.returncode:
        raise SystemExit(f"{checkout}: simulate {' '.join(flags)} failed:\n{proc.stderr.decode()}")
    outputs = {"json": proc.stdout.replace(str(checkout).encode(), b"ROOT").replace(str(work).encode(), b"WORK"),
               "requests.parquet": (out / "requests.parquet").read_bytes()}
    if "EVENTS" in flags:
        outputs["events.parquet"] = (work / "events.parquet").read_bytes()
    return outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="the other checkout (e.g. main)")
    parser.add_argument("--new", type=Path, default=REPO, help="this checkout (default: the one holding this script)")
    parser.add_argument("--match", default="", help="run only the configurations whose flags contain this text")
    args = parser.parse_args()
    differ = 0
    configs = [flags for flags in CONFIGS if args.match in " ".join(flags)]
    for flags in configs:
        with tempfile.TemporaryDirectory() as tmp_a, tempfile.TemporaryDirectory() as tmp_b:
            a, b = Path(tmp_a) / "w", Path(tmp_b) / "w"
            a.mkdir(), b.mkdir()
            base = _simulate(args.base.resolve(), flags, a)
            new = _simulate(args.new.resolve(), flags, b)
        same = [k for k in base if base[k] == new[k]]
        bad = [k for k in base if base[k] != new[k]]
        differ += bool(bad)
        label = " ".join(flags) or "(defaults)"
        print(f"{'identical' if not bad else 'DIFFERENT'}  {label}  [{', '.join(same)}]"
              + (f"  differ: {', '.join(bad)}" if bad else ""), flush=True)
    print(f"{len(configs) - differ} of {len(configs)} configurations identical")
    raise SystemExit(1 if differ else 0)


if __name__ == "__main__":
    main()
