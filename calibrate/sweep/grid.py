"""The calibration grid: which prefill, decode and mixed iterations a sweep measures. Pure and torch-free."""

from __future__ import annotations

from dataclasses import dataclass

from tokenjoule.kernels.shape import IterationShape

# Keep a little KV headroom: engines allocate whole blocks and some keep a spare block per sequence.
KV_HEADROOM = 0.95


@dataclass(frozen=True, slots=True)
class GridConfig:
    """Grid and window settings of one calibration sweep.

    Attributes:
        prefill_batches: sequences per prefill iteration.
        prefill_lengths_tokens: prompt lengths (each sequence one chunk, nothing cached before).
        prefill_chunks: (chunk tokens, tokens already cached) of single chunked-prefill iterations, so the fit sees
            a prefill reading its own earlier chunks (as continuous and chunked batching run it).
        decode_batches: sequences per decode iteration.
        decode_contexts_tokens: cached tokens per decoding sequence.
        decode_ragged: (batch, long sequences, long context, short context) of ragged decode iterations: a few
            long contexts among short ones, as served batches hold. Uniform points cannot tell the summed context
            from the longest one, which sets a split-KV kernel's time once the batch is too wide to split contexts.
        mixed: include mixed iterations (chunked prefills beside decodes); fitted, their error reported apart.
        mixed_chunks: (chunk tokens, tokens cached before it) of the mixed iterations' prefill chunk.
        mixed_decodes: (decoding sequences, context tokens each) beside each chunk; a 4-tuple (sequences, context,
            long sequences, long context) makes that many of them long (a ragged batch).
        target_s: least window per repeat (the aligned measurement extends it to two counter ticks).
        repeats: measured windows per point, one per pass over the grid (>= 2; median fitted, spread recorded).
        extra_repeats: more passes, after the main ones, over the points whose main repeats disagree by more than
            `noisy_spread` (relative max - min of their step times). Launch-bound steps follow the host's speed,
            which on these VMs shifts between phases seconds apart (the same eager step at 16 or 32 ms,
            `tests/bench/bench_host_contention_gpu.py`); more windows spread over the sweep move their median
            towards the long-run one a replay sees, at little cost, since such steps are short.
        noisy_spread: the repeat spread above which a point gets the extra passes.
        warmup_steps: steps right before each window.
        idle_s: window for idle power with the model resident.
        settle_s: most time spent on thermal settling before the sweep.
    """

    prefill_batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    prefill_lengths_tokens: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
    prefill_chunks: tuple[tuple[int, int], ...] = ((256, 1024), (512, 4096), (1024, 8192), (2048, 2048),
                                                   (2048, 12288), (4096, 4096))
    decode_batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
    decode_contexts_tokens: tuple[int, ...] = (128, 512, 2048, 8192, 16384)
    decode_ragged: tuple[tuple[int, int, int, int], ...] = ((16, 1, 16384, 256), (32, 1, 8192, 256),
                                                           (64, 1, 8192, 256), (128, 1, 8192, 256),
                                                           (128, 8, 8192, 512), (128, 1, 16384, 1024),
                                                           (256, 1, 8192, 256), (256, 16, 4096, 512))
    mixed: bool = True
    mixed_chunks: tuple[tuple[int, int], ...] = ((64, 0), (256, 0), (512, 4096), (1024, 1024), (2048, 0),
                                                 (2048, 2048), (4096, 0))
    mixed_decodes: tuple[tuple[int, ...], ...] = ((1, 1024), (8, 1024), (64, 2048), (256, 512), (64, 256, 1, 8192))
    # 0.5 s spans ~5 counter ticks on an H100 (tick-timing bound ~1.5% per window; 0.25 s gave 3-8%); the median of
    # three interleaved windows then beats two back-to-back 0.8 s ones, whose error was host drift, not the counter.
    target_s: float = 0.5
    repeats: int = 3
    extra_repeats: int = 2
    noisy_spread: float = 0.10
    warmup_steps: int = 2
    idle_s: float = 3.0
    settle_s: float = 20.0

    def __post_init__(self) -> None:
        if self.repeats < 2:
            raise ValueError(f"repeats={self.repeats} must be >= 2 (the spread between repeats is recorded)")
        if self.extra_repeats < 0 or self.noisy_spread < 0:
            raise ValueError(f"extra_repeats={self.extra_repeats} and noisy_spread={self.noisy_spread} must be >= 0")
        if self.target_s <= 0 or self.idle_s <= 0 or self.settle_s < 0:
            raise ValueError(f"target_s={self.target_s}, idle_s={self.idle_s} must be > 0, settle_s >= 0")
        for name in ("prefill_batches", "prefill_lengths_tokens", "decode_batches", "decode_contexts_tokens"):
            values = getattr(self, name)
            if not values or min(values) < 1:
                raise ValueError(f"{name}={values} must be non-empty positive integers")

    @classmethod
    def quick(cls) -> GridConfig:
        """A smoke-test grid: a few points per kind, short windows, no settling."""
        return cls(prefill_batches=(1, 4), prefill_lengths_tokens=(128, 1024), prefill_chunks=((512, 1024),),
                   decode_batches=(1, 16, 128), decode_contexts_tokens=(256, 2048),
                   decode_ragged=((128, 1, 4096, 256),),
                   mixed_chunks=((256, 0), (512, 1024)), mixed_decodes=((8, 256), (64, 512)), target_s=0.15,
                   repeats=2, extra_repeats=0, warmup_steps=1, idle_s=1.0, settle_s=0.0)


@dataclass(frozen=True, slots=True)
class GridPoint:
    """One point of the grid.

    Attributes:
        point_id: stable name, e.g. "decode_b32_c2048" (resuming skips ids already measured).
        kind: "prefill", "decode" or "mixed".
        shape: the iteration measured.
    """

    point_id: str
    kind: str
    shape: IterationShape


def prefill_points(cfg: GridConfig, max_num_batched_tokens: int, kv_capacity_tokens: int,
                   max_num_seqs: int) -> list[GridPoint]:
    """Uniform prefills (B chunks of L fresh tokens), then single chunks with a cached prefix, within the limits."""
    limit = min(max_num_batched_tokens, int(kv_capacity_tokens * KV_HEADROOM))
    points = [GridPoint(f"prefill_b{b}_l{length}", "prefill", IterationShape(prefill=((length, 0),) * b))
              for length in cfg.prefill_lengths_tokens for b in cfg.prefill_batches
              if b * length <= limit and b <= max_num_seqs]
    kv_limit = int(kv_capacity_tokens * KV_HEADROOM)
    points += [GridPoint(f"prefill_b1_l{chunk}_c{before}", "prefill", IterationShape(prefill=((chunk, before),)))
               for chunk, before in cfg.prefill_chunks
               if chunk <= max_num_batched_tokens and chunk + before <= kv_limit]
    return points


def ragged_contexts(batch: int, context: int, n_long: int = 0, long_context: int = 0) -> tuple[int, ...]:
    """Decode contexts of a batch: `n_long` sequences of `long_context` first, the rest of `context` each."""
    if not 0 <= n_long <= batch:
        raise ValueError(f"{n_long} long sequences do not fit a batch of {batch}")
    return (long_context,) * n_long + (context,) * (batch - n_long)


def _decode_id(contexts: tuple[int, ...]) -> str:
    """"b{B}_c{C}", with "_l{N}x{L}" for N long contexts of L tokens."""
    short, n_long = contexts[-1], sum(c != contexts[-1] for c in contexts)
    return f"b{len(contexts)}_c{short}" + (f"_l{n_long}x{contexts[0]}" if n_long else "")


def decode_points(cfg: GridConfig, kv_capacity_tokens: int, max_num_seqs: int) -> list[GridPoint]:
    """Uniform decodes (B sequences with C cached tokens each), then ragged ones, within KV capacity and batch limit."""
    limit = int(kv_capacity_tokens * KV_HEADROOM)
    batches = [ragged_contexts(b, ctx) for ctx in cfg.decode_contexts_tokens for b in cfg.decode_batches]
    batches += [ragged_contexts(b, short, n_long, long) for b, n_long, long, short in cfg.decode_ragged]
    return [GridPoint(f"decode_{_decode_id(c)}", "decode", IterationShape(decode=c)) for c in batches
            if sum(c) + len(c) <= limit and len(c) <= max_num_seqs]


def mixed_points(cfg: GridConfig, max_num_batched_tokens: int, kv_capacity_tokens: int,
                 max_num_seqs: int) -> list[GridPoint]:
    """Chunked prefills beside decodes: what continuous and chunked batching run most of the time."""
    if not cfg.mixed:
        return []
    limit = int(kv_capacity_tokens * KV_HEADROOM)
    out = []
    for chunk, before in cfg.mixed_chunks:
        for spec in cfg.mixed_decodes:
            contexts = ragged_contexts(*spec)
            kv = chunk + before + sum(contexts) + len(contexts)
            if chunk + len(contexts) > max_num_batched_tokens or kv > limit or len(contexts) + 1 > max_num_seqs:
                continue
            shape = IterationShape(prefill=((chunk, before),), decode=contexts)
            out.append(GridPoint(f"mixed_p{chunk}_b{before}_d{_decode_id(contexts)[1:]}", "mixed", shape))
    return out


def grid_points(cfg: GridConfig, max_num_batched_tokens: int, kv_capacity_tokens: int, max_num_seqs: int,
                uniform_only: bool = False) -> list[GridPoint]:
    """All points of a sweep in measuring order (prefill, decode, then mixed; `uniform_only` keeps uniform batches)."""
    points = prefill_points(cfg, max_num_batched_tokens, kv_capacity_tokens, max_num_seqs)
    if uniform_only:  # an engine without chunked prefill (HF generate) cannot run a chunk with a cached prefix
        points = [p for p in points if not p.shape.prefill_ctx_tokens]
    decode = decode_points(cfg, kv_capacity_tokens, max_num_seqs)
    points += [p for p in decode if not p.shape.ragged_decode] if uniform_only else decode
    if not uniform_only:
        points += mixed_points(cfg, max_num_batched_tokens, kv_capacity_tokens, max_num_seqs)
    return points
