"""Where independent tasks run: in this process one after another, on local worker processes, or as Ray tasks.

Covers:
- One interface for the three (`open_executor(backend)` gives an object whose `map(fn, items, shared)` returns one
  `Outcome` per item, in item order), so `compare` (one task per what-if cell) and `project` (one task per shard of
  the trace, then one per window simulation) never know which runs them.
- Data every task reads (`shared`: a compare's trace, a projection's cost model) travels once per worker, not once
  per task: Ray keeps it in its object store; local workers read it from a temp file once each.
- A task that raises is an `Outcome` holding its error (its traceback as text beside it); the other tasks go on. A
  worker that dies fails the tasks it had.
- Progress: `on_done(done, total)` after each task, as tasks finish (in any order).

Scenario:
    A what-if grid of 1,000 cells on a 2-core laptop runs with `--jobs 2`; the same grid on a cluster runs with
    `--ray auto` from a node of the cluster, each cell a Ray task.
    Results are the same as running the cells one after another: each task is a pure function of its inputs.

Ray is optional (`pip install 'tokenjoule[ray]'`) and imported only when asked for.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import pickle
import tempfile
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenjoule.kernels.spec import ConfigError

logger = logging.getLogger(__name__)

Task = Callable[[Any, Any], Any]  # fn(shared, item) -> result
DoneFn = Callable[[int, int], None]  # (tasks done, tasks in all)


@dataclass(frozen=True, slots=True)
class Backend:
    """Where tasks run, as the `--jobs` and `--ray` flags say.

    Attributes:
        jobs: local worker processes; 1 runs every task in this process, one after another.
        ray: None (no Ray); "auto" (the Ray cluster this machine belongs to, found as `ray.init()` finds it:
            RAY_ADDRESS, then a cluster started here with `ray start`; else a new local instance); or the address
            of a running cluster's head (`HOST:PORT`).
    """

    jobs: int = 1
    ray: str | None = None

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise ConfigError(f"--jobs {self.jobs}: must be >= 1")
        if self.ray is not None and not self.ray.strip():
            raise ConfigError("--ray: give 'auto' or a cluster address, e.g. --ray auto")
        if self.ray is not None and self.jobs > 1:
            raise ConfigError("give --jobs or --ray, not both (Ray runs as many tasks at once as its cluster has CPUs)")

    @property
    def parallel(self) -> bool:
        """True when tasks run outside this process (worker processes or Ray)."""
        return self.ray is not None or self.jobs > 1


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one task gave.

    Attributes:
        value: the task's result (None when it failed).
        error: the exception that ended it, or None.
        traceback: where it was raised, as text ("" when it succeeded or the worker died).
    """

    value: Any = None
    error: BaseException | None = None
    traceback: str = ""

    @property
    def ok(self) -> bool:
        """True when the task returned."""
        return self.error is None


def guarded(fn: Task, shared: Any, item: Any) -> Outcome:
    """Run one task, turning an exception into a failed `Outcome` that can travel back from a worker."""
    try:
        return Outcome(fn(shared, item))
    except Exception as err:  # every task failure is reported per task; the caller decides what it means
        return Outcome(error=_portable(err), traceback=traceback.format_exc())


def _portable(err: Exception) -> BaseException:
    """`err`, or a RuntimeError with its text when it cannot be pickled back to the caller."""
    try:
        pickle.loads(pickle.dumps(err))
    except Exception:  # any pickling failure: send the text
        return RuntimeError(f"{type(err).__name__}: {err}")
    return err


class SerialExecutor:
    """Runs every task in this process, one after another."""

    workers = 1

    def map(self, fn: Task, items: Sequence[Any], shared: Any = None, on_done: DoneFn | None = None) -> list[Outcome]:
        """`fn(shared, item)` for each item, in order (see `open_executor`)."""
        out = []
        for i, item in enumerate(items):
            out.append(guarded(fn, shared, item))
            if on_done is not None:
                on_done(i + 1, len(items))
        return out

    def close(self) -> None:
        """Nothing to release."""


@functools.lru_cache(maxsize=2)
def _read_shared(path: str) -> Any:
    """A worker's copy of the shared data, read from its file once per worker (the file is unique per `map`)."""
    with open(path, "rb") as f:
        return pickle.load(f)


def _process_task(fn: Task, shared_path: str | None, item: Any) -> Outcome:
    return guarded(fn, _read_shared(shared_path) if shared_path else None, item)


class ProcessExecutor:
    """Runs tasks on `jobs` local worker processes (started fresh: `spawn`, so no thread or lock of ours is copied).

    Args:
        jobs: worker processes.
    """

    def __init__(self, jobs: int) -> None:
        self.workers = jobs
        self.pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))

    def map(self, fn: Task, items: Sequence[Any], shared: Any = None, on_done: DoneFn | None = None) -> list[Outcome]:
        """`fn(shared, item)` for each item on the workers; outcomes in item order (see `open_executor`)."""
        with tempfile.TemporaryDirectory(prefix="tokenjoule-shared-") as tmp:
            path = None
            if shared is not None:
                path = str(Path(tmp) / "shared.pickle")
                with open(path, "wb") as f:
                    pickle.dump(shared, f, protocol=pickle.HIGHEST_PROTOCOL)
            futures = {self.pool.submit(_process_task, fn, path, item): i for i, item in enumerate(items)}
            return _collect(futures, len(items), on_done)

    def close(self) -> None:
        """Stop the workers (tasks not yet started are cancelled)."""
        self.pool.shutdown(wait=True, cancel_futures=True)


def _collect(futures: dict[Future, int], total: int, on_done: DoneFn | None) -> list[Outcome]:
    out: list[Outcome | None] = [None] * total
    pending = set(futures)
    while pending:
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        for future in done:
            try:
                out[futures[future]] = future.result()
            except Exception as err:  # the worker died (BrokenProcessPool) or the item could not be sent
                out[futures[future]] = Outcome(error=err)
        if on_done is not None:
            on_done(total - len(pending), total)
    return [o for o in out if o is not None]


class RayExecutor:
    """Runs tasks as Ray tasks (one CPU each) on a cluster; `workers` is the cluster's CPU count.

    Args:
        address: "auto" or a cluster address (see `Backend.ray`).
    """

    def __init__(self, address: str) -> None:
        ray = _import_ray()
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            try:
                ray.init(address=None if address == "auto" else address, include_dashboard=False,
                         logging_level=logging.WARNING)
            except (ConnectionError, ValueError, RuntimeError) as err:
                raise ConfigError(f"--ray {address}: cannot start or reach a Ray cluster "
                                  f"({str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__})"
                                  ) from err
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.remote = ray.remote(guarded)

    def map(self, fn: Task, items: Sequence[Any], shared: Any = None, on_done: DoneFn | None = None) -> list[Outcome]:
        """`fn(shared, item)` for each item as a Ray task; outcomes in item order (see `open_executor`)."""
        ray = self.ray
        shared_ref = ray.put(shared)
        refs = [self.remote.remote(fn, shared_ref, item) for item in items]
        index = {ref: i for i, ref in enumerate(refs)}
        out: list[Outcome | None] = [None] * len(refs)
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                try:
                    out[index[ref]] = ray.get(ref)
                except Exception as err:  # the worker or its node died (RayError), or the result was lost
                    out[index[ref]] = Outcome(error=err)
            if on_done is not None:
                on_done(len(refs) - len(pending), len(refs))
        return [o for o in out if o is not None]

    def close(self) -> None:
        """Shut down the Ray instance this process started (a cluster we only joined is left running)."""
        if self.started:
            self.ray.shutdown()


def _import_ray():
    try:
        import ray
    except ImportError as err:
        raise ConfigError("--ray needs Ray: pip install 'tokenjoule[ray]'") from err
    return ray


@contextmanager
def open_executor(backend: Backend | None = None) -> Iterator[SerialExecutor | ProcessExecutor | RayExecutor]:
    """The executor `backend` asks for, shut down on exit.

    Its `map(fn, items, shared=None, on_done=None)` calls `fn(shared, item)` for every item and returns one
    `Outcome` per item, in item order; `fn` must be a module-level function (workers import it by name).

    Args:
        backend: where tasks run (default: in this process).

    Yields:
        The executor; its `workers` says how many tasks run at once.
    """
    backend = backend or Backend()
    if backend.ray is not None:
        executor: SerialExecutor | ProcessExecutor | RayExecutor = RayExecutor(backend.ray)
    elif backend.jobs > 1:
        executor = ProcessExecutor(backend.jobs)
    else:
        executor = SerialExecutor()
    logger.info("tasks run on %s (%d at once)", type(executor).__name__, executor.workers)
    try:
        yield executor
    finally:
        executor.close()
