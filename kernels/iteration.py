"""The contract calibration and validation use: run one IterationShape, repeatably, on either engine.

`build_runner(spec, engine, mode, ...)` gives an `IterationRunner`. `prepare(shape)` creates synthetic sequences
whose KV caches already hold the shape's contexts; `step()` runs exactly one iteration of that shape the way the
serving loop runs it (host-side metadata, launch, greedy sampling, a device sync at the end) without committing
its tokens, so it can be called many times and does the same work each time; `release()` frees the blocks.

Tensor parallel (`build_runner(..., tp=group)`): every rank builds a `TPIterationRunner`. Rank 0 drives it like
any runner and ends with `close()`; the other ranks call `serve()`, which repeats each of rank 0's calls until
`close()`. All ranks build the same synthetic sequences from the same seed, so they step together.
"""

from __future__ import annotations

import itertools
import logging
import random
from typing import Any

import torch

from tokenjoule.kernels.block_manager import blocks_for_tokens
from tokenjoule.kernels.runner import ModelRunner, RunnerConfig
from tokenjoule.kernels.scheduler import ScheduledBatch
from tokenjoule.kernels.sequence import Sequence, SequenceStatus
from tokenjoule.kernels.shape import IterationShape
from tokenjoule.kernels.spec import ModelSpec
from tokenjoule.kernels.tp import TPGroup, recv_command, send_command

logger = logging.getLogger(__name__)

ENGINES = ("tokenjoule", "hf")


class IterationRunner:
    """Runs one prepared IterationShape on a real engine. Use `build_runner` to make one.

    Attributes:
        engine: "tokenjoule" or "hf".
        mode: "eager", "cudagraph" or "compile" ("eager" only for hf).
        kv_capacity_tokens: KV-cache tokens the engine can hold.
        device: the torch device string.
        dtype: the weights' dtype name, e.g. "bfloat16".
    """

    engine: str
    mode: str
    kv_capacity_tokens: int
    device: str
    dtype: str

    def prepare(self, shape: IterationShape) -> None:
        """Set up synthetic sequences for `shape`; raises ValueError if it cannot fit."""
        raise NotImplementedError

    def step(self) -> None:
        """Run exactly one iteration of the prepared shape and synchronize the device."""
        raise NotImplementedError

    def release(self) -> None:
        """Free the synthetic sequences' KV blocks."""
        raise NotImplementedError


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TokenjouleIterationRunner(IterationRunner):
    """IterationRunner over this package's engine (paged KV cache, continuous-batching metadata).

    Args:
        spec: the model shape.
        config: runner options.
        runner: an existing ModelRunner to share (e.g. an idle Engine's); built from `config` when None.
    """

    def __init__(self, spec: ModelSpec, config: RunnerConfig, runner: ModelRunner | None = None) -> None:
        self.spec, self.config = spec, config
        self.runner = runner or ModelRunner(spec, config)
        self.engine, self.mode, self.device = "tokenjoule", config.mode, config.device
        self.dtype = str(self.runner.model.dtype).removeprefix("torch.")
        self.kv_capacity_tokens = self.runner.kv_capacity_tokens
        self._batch: ScheduledBatch | None = None
        self._ids = itertools.count()
        self._rng = random.Random(config.seed)

    def _check(self, shape: IterationShape) -> None:
        if shape.is_empty:
            raise ValueError("shape is empty")
        n_seqs = len(shape.prefill) + len(shape.decode)
        if n_seqs > self.config.max_num_seqs:
            raise ValueError(f"shape has {n_seqs} sequences > max_num_seqs={self.config.max_num_seqs}")
        if shape.new_tokens > self.config.max_num_batched_tokens:
            raise ValueError(f"shape has {shape.new_tokens} tokens > "
                             f"max_num_batched_tokens={self.config.max_num_batched_tokens}")
        lengths = [new + before for new, before in shape.prefill] + [ctx + 1 for ctx in shape.decode]
        if max(lengths) > self.config.max_model_len:
            raise ValueError(f"a sequence of {max(lengths)} tokens exceeds max_model_len={self.config.max_model_len}")
        bm = self.runner.block_manager
        need = sum(blocks_for_tokens(n, bm.block_size) for n in lengths)
        if need > bm.num_free_blocks:
            raise ValueError(f"shape needs {need} KV blocks, {bm.num_free_blocks} free "
                             f"({self.kv_capacity_tokens} tokens of KV cache)")

    def _sequence(self, context: int, new: int, decoding: bool) -> Sequence:
        seq_id = next(self._ids)
        fresh = [self._rng.randrange(self.spec.vocab_size) for _ in range(new)]
        prompt_len = context if decoding else context + new
        seq = Sequence(seq_id=seq_id, token_ids=[1] * context + fresh, prompt_len=prompt_len,
                       max_output_tokens=1 << 30, status=SequenceStatus.RUNNING, num_computed_tokens=context)
        self.runner.block_manager.allocate(seq_id, context + new)
        return seq

    def prepare(self, shape: IterationShape) -> None:
        """Allocate synthetic sequences for `shape` and run it once (compiles kernels, captures graphs)."""
        if self._batch is not None:
            self.release()
        self._check(shape)
        prefill = tuple((self._sequence(before, new, False), new) for new, before in shape.prefill)
        decode = tuple(self._sequence(ctx, 1, True) for ctx in shape.decode)
        self._batch = ScheduledBatch(prefill=prefill, decode=decode)
        self.step()

    def step(self) -> None:
        """One iteration: build metadata, run, sample, sync. Sequence state is not advanced."""
        if self._batch is None:
            raise RuntimeError("call prepare(shape) before step()")
        self.runner.run(self._batch)
        _sync(self.runner.device)

    def release(self) -> None:
        """Free the synthetic sequences."""
        if self._batch is None:
            return
        for seq in [s for s, _ in self._batch.prefill] + list(self._batch.decode):
            self.runner.block_manager.free(seq.seq_id)
        self._batch = None


_PREPARE, _STEP, _RELEASE, _CLOSE = 1, 2, 3, 4


def encode_shape(shape: IterationShape) -> list[int]:
    """An IterationShape as ints: [n_prefill, new0, before0, new1, before1, ..., ctx0, ctx1, ...]."""
    return [len(shape.prefill), *(v for chunk in shape.prefill for v in chunk), *shape.decode]


def decode_shape(values: list[int]) -> IterationShape:
    """Inverse of `encode_shape`."""
    n = values[0]
    flat = values[1:1 + 2 * n]
    return IterationShape(prefill=tuple(zip(flat[::2], flat[1::2], strict=True)), decode=tuple(values[1 + 2 * n:]))


class TPIterationRunner(IterationRunner):
    """A tensor-parallel IterationRunner: rank 0 calls prepare/step/release/close, the others `serve()`.

    Args:
        inner: this rank's runner over its shard of the model.
        tp: the group.
    """

    def __init__(self, inner: TokenjouleIterationRunner, tp: TPGroup) -> None:
        self.inner, self.tp = inner, tp
        self.engine, self.mode, self.device, self.dtype = inner.engine, inner.mode, inner.device, inner.dtype
        self.kv_capacity_tokens = inner.kv_capacity_tokens
        self._closed = False

    @property
    def runner(self) -> ModelRunner:
        """This rank's ModelRunner."""
        return self.inner.runner

    def _send(self, code: int, payload: list[int] | None = None) -> None:
        if not self.tp.is_driver:
            raise RuntimeError(f"rank {self.tp.rank} does not drive; call serve() there")
        if self._closed:
            raise RuntimeError("runner is closed")
        send_command(self.tp, code, payload or [])

    def prepare(self, shape: IterationShape) -> None:
        """Every rank sets up `shape` and runs it once; ValueError on every rank if it cannot fit."""
        self._send(_PREPARE, encode_shape(shape))
        self.inner.prepare(shape)

    def step(self) -> None:
        """Every rank runs one iteration; returns when rank 0's device is synchronized."""
        self._send(_STEP)
        self.inner.step()

    def release(self) -> None:
        """Every rank frees its synthetic sequences."""
        self._send(_RELEASE)
        self.inner.release()

    def close(self) -> None:
        """Rank 0: release, then let the other ranks' `serve()` return. Harmless twice."""
        if self._closed or not self.tp.is_driver:
            return
        self.release()
        send_command(self.tp, _CLOSE)
        self._closed = True

    def serve(self) -> int:
        """Other ranks: run rank 0's commands until it closes; returns how many steps ran (prepare's included)."""
        if self.tp.is_driver:
            raise RuntimeError("rank 0 drives; serve() is for the other ranks")
        steps = 0
        while True:
            code, payload = recv_command(self.tp)
            if code == _CLOSE:
                return steps
            if code == _PREPARE:
                try:
                    self.inner.prepare(decode_shape(payload))
                    steps += 1
                except ValueError as err:  # rank 0 refuses the same shape for the same reason
                    logger.debug("rank %d: shape refused: %s", self.tp.rank, err)
            elif code == _STEP:
                self.inner.step()
                steps += 1
            elif code == _RELEASE:
                self.inner.release()
            else:
                raise RuntimeError(f"rank {self.tp.rank}: unknown command {code}")


class HFIterationRunner(IterationRunner):
    """IterationRunner over the transformers baseline: uniform shapes only (static batching)."""

    def __init__(self, spec: ModelSpec, device: str, gpu_memory_utilization: float, seed: int) -> None:
        from tokenjoule.kernels.hf_adapter import HFAdapter

        self.spec = spec
        self.adapter = HFAdapter(spec, device, seed)
        self.engine, self.mode, self.device = "hf", "eager", device
        self.dtype = str(self.adapter.model.dtype).removeprefix("torch.")
        self.kv_capacity_tokens = self._capacity(gpu_memory_utilization)
        self._run = None
        self._prompt: torch.Tensor | None = None  # the prompt `generate` reuses for its shape

    def _capacity(self, utilization: float) -> int:
        dev = self.adapter.device
        if dev.type != "cuda":
            return 1 << 20
        free_bytes, total_bytes = torch.cuda.mem_get_info(dev)
        budget = int(total_bytes * utilization) - (total_bytes - free_bytes) - (2 << 30)
        return max(0, budget // self.spec.kv_bytes_per_token)

    def prepare(self, shape: IterationShape) -> None:
        """Accept B equal first prefill chunks, or B decodes of equal context; anything else is a ValueError."""
        self.release()
        if shape.prefill and shape.decode or shape.is_empty:
            raise ValueError("hf engine runs only pure-prefill or pure-decode shapes (static batching)")
        a = self.adapter
        if shape.prefill:
            if len(set(shape.prefill)) != 1 or shape.prefill[0][1] != 0:
                raise ValueError("hf prefill shapes need equal chunks with context_before=0")
            batch, tokens = len(shape.prefill), shape.prefill[0][0]
            self._check_fit(batch * tokens)
            ids = a.random_ids(batch, tokens)
            mask = torch.ones_like(ids)
            self._run = lambda: a.forward(ids, a.new_cache(), mask)
        else:
            if len(set(shape.decode)) != 1:
                raise ValueError("hf decode shapes need equal contexts")
            batch, ctx = len(shape.decode), shape.decode[0]
            self._check_fit(batch * (ctx + 1))
            cache = a.filled_cache(batch, ctx)
            ids = a.random_ids(batch, 1)
            mask = torch.ones(batch, ctx + 1, dtype=torch.int64, device=a.device)

            def decode_once():
                a.forward(ids, cache, mask)
                cache.crop(-1)  # back to `ctx` entries, so every step does the same work

            self._run = decode_once
        self.step()

    def _check_fit(self, tokens: int) -> None:
        if tokens > self.kv_capacity_tokens:
            raise ValueError(f"shape needs {tokens} KV tokens > capacity {self.kv_capacity_tokens}")

    def step(self) -> None:
        """One generate()-style forward of the prepared shape, greedy sampling, then sync."""
        if self._run is None:
            raise RuntimeError("call prepare(shape) before step()")
        self._run()
        _sync(self.adapter.device)

    def release(self) -> None:
        """Drop the prepared inputs and cache."""
        self._run = None

    def generate(self, batch: int, prompt_tokens: int, new_tokens: int, streamer: Any = None) -> None:
        """One whole `model.generate()` call on a (batch, prompt_tokens) prompt, synchronized at its end.

        The prompt is drawn once per shape and reused, so repeated calls do the same work and no token drawing sits
        inside a measured window. Running out of GPU memory is a ValueError (the shape cannot run), as in `prepare`.
        """
        if self._prompt is None or tuple(self._prompt.shape) != (batch, prompt_tokens):
            self._prompt = self.adapter.random_ids(batch, prompt_tokens)
        try:
            self.adapter.generate_ids(self._prompt, new_tokens, streamer)
        except torch.cuda.OutOfMemoryError as err:
            self._prompt = None
            torch.cuda.empty_cache()
            raise ValueError(f"generate({batch}, {prompt_tokens}, {new_tokens}) ran out of GPU memory") from err
        _sync(self.adapter.device)


def build_runner(spec: ModelSpec, engine: str = "tokenjoule", mode: str = "eager", device: str = "cuda",
                 gpu_memory_utilization: float = 0.9, max_num_seqs: int = 512, max_num_batched_tokens: int = 16384,
                 seed: int = 0, tp: TPGroup | None = None) -> IterationRunner:
    """Build an IterationRunner.

    Args:
        spec: the model shape.
        engine: "tokenjoule" (this package's engine) or "hf" (transformers, eager only).
        mode: "eager", "cudagraph" or "compile".
        device: "cuda" or "cpu".
        gpu_memory_utilization: fraction of GPU memory the engine may use.
        max_num_seqs: most sequences in one iteration.
        max_num_batched_tokens: most tokens in one iteration.
        seed: weight seed.
        tp: this rank's tensor-parallel group (tokenjoule engine only); every rank calls build_runner, and gets a
            TPIterationRunner (rank 0 drives it, the others call `serve()`). None: no tensor parallelism.

    Returns:
        The runner, with weights loaded and the KV cache allocated.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r} must be one of {ENGINES}")
    if engine == "hf":
        if mode != "eager":
            raise ValueError(f"engine 'hf' runs only mode 'eager', not {mode!r}")
        if tp is not None:
            raise ValueError("engine 'hf' has no tensor parallelism here; use engine 'tokenjoule'")
        return HFIterationRunner(spec, device, gpu_memory_utilization, seed)
    config = RunnerConfig(mode=mode, device=device, gpu_memory_utilization=gpu_memory_utilization,
                          max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens, seed=seed)
    if tp is None:
        return TokenjouleIterationRunner(spec, config)
    return TPIterationRunner(TokenjouleIterationRunner(spec, config, ModelRunner(spec, config, tp)), tp)
