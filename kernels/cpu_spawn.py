"""Run a function on N fresh CPU processes joined over gloo: the TP code paths without GPUs (tests, smoke runs).

Apart from `calibrate/tp_run.py` (the torchrun entry on GPUs): this is only the launcher, a file-store rendezvous and a
clean teardown, shared by the TP tests and `tp_run --cpu`.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from tokenjoule.kernels.tp import init_tp, shutdown_tp


def _cpu_rank(rank: int, world_size: int, path: str, fn: Callable[..., Any], args: tuple, out: str | None) -> None:
    torch.set_num_threads(1)  # N processes on a small CI machine: no thread oversubscription
    os.environ.pop("TRITON_INTERPRET", None)  # torch decode attention: Triton's CPU interpreter is slow
    store = dist.FileStore(path, world_size)
    tp = init_tp("gloo", store=store, rank=rank, world_size=world_size, local_rank=0, timeout_s=60.0)
    try:
        result = fn(tp, *args)
        if out is not None and tp.is_driver:
            Path(out).write_text(json.dumps(result))
        dist.barrier(group=tp.control_group)
    finally:
        shutdown_tp()
    # Exit only once every rank has torn gloo down: a peer closing its sockets mid-teardown can abort a rank.
    store.add("down", 1)
    deadline = time.monotonic() + 30.0
    while store.add("down", 0) < world_size and time.monotonic() < deadline:
        time.sleep(0.01)
    # Leave without running C++ static destructors: gloo's threads, torn down above, can still be joinable then, and
    # their destructor aborts the process ("terminate called without an active exception", SIGABRT; seen once in CI
    # after every rank had finished its work). The result is written and the peers are down, so nothing is lost.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn_cpu(fn: Callable[..., Any], world_size: int, args: tuple = (), timeout_s: float = 120.0) -> Any:
    """Run `fn(tp, *args)` in `world_size` fresh CPU processes joined over gloo; returns rank 0's result (JSON).

    The rendezvous is a file store in a temporary directory (no port to pick); a rank that fails stops the others,
    and all of them are terminated after `timeout_s` (TimeoutError).
    """
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        ctx = mp.start_processes(_cpu_rank, args=(world_size, os.path.join(tmp, "store"), fn, args, out),
                                 nprocs=world_size, join=False, start_method="spawn")
        deadline = time.monotonic() + timeout_s
        while not ctx.join(timeout=0.5):
            if time.monotonic() > deadline:
                for proc in ctx.processes:
                    if proc.is_alive():
                        proc.terminate()
                raise TimeoutError(f"{world_size} CPU ranks did not finish within {timeout_s:.0f} s")
        return json.loads(Path(out).read_text()) if os.path.exists(out) else None
