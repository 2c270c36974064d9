"""IterationShape: what one forward pass of a replica processes. Torch-free.

The engine executes shapes, calibration measures them, and the simulator's cost models price them, so the
concept lives at the bottom of the import graph.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class IterationShape:
    """One engine iteration: prefill chunks plus decode sequences, run as a single forward pass.

    Attributes:
        prefill: `(new_tokens, context_before_tokens)` per prefill chunk: the chunk's fresh tokens and how many
            of the same sequence's tokens are already in the KV cache (0 for a first chunk).
        decode: per decode sequence, the tokens already in its KV cache; each decodes exactly one token.
    """

    prefill: tuple[tuple[int, int], ...] = ()
    decode: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for i, (new, before) in enumerate(self.prefill):
            if new <= 0 or before < 0:
                raise ValueError(f"prefill chunk {i}: new_tokens={new} must be > 0 and context_before={before} >= 0")
        for i, ctx in enumerate(self.decode):
            if ctx <= 0:
                raise ValueError(f"decode sequence {i}: context={ctx} must be > 0")

    @property
    def prefill_tokens(self) -> int:
        """Fresh prompt tokens in this iteration."""
        return sum(new for new, _ in self.prefill)

    @property
    def prefill_seqs(self) -> int:
        """Prefill chunks (one per sequence being prefilled)."""
        return len(self.prefill)

    @property
    def decode_seqs(self) -> int:
        """Sequences decoding one token each."""
        return len(self.decode)

    @property
    def new_tokens(self) -> int:
        """All tokens pushed through the weights: prefill tokens plus one per decode sequence."""
        return self.prefill_tokens + self.decode_seqs

    @property
    def prefill_attn_pairs(self) -> int:
        """Causal (query, key) pairs the prefill chunks score: each new token sees the cache plus its own prefix."""
        return sum(new * before + new * (new + 1) // 2 for new, before in self.prefill)

    @property
    def prefill_ctx_tokens(self) -> int:
        """KV entries the prefill chunks read from their sequences' earlier chunks (chunked prefill)."""
        return sum(before for _, before in self.prefill)

    @property
    def decode_ctx_tokens(self) -> int:
        """KV entries the decode sequences read (their cached contexts summed)."""
        return sum(self.decode)

    @property
    def decode_max_ctx_tokens(self) -> int:
        """The longest decode context: one program streams it alone when a batch is too wide to split contexts."""
        return max(self.decode, default=0)

    @property
    def ragged_decode(self) -> bool:
        """Whether the decode contexts differ (only such batches tell the longest context from the summed one)."""
        return len(set(self.decode)) > 1

    @property
    def is_empty(self) -> bool:
        """True when the iteration has nothing to do."""
        return not self.prefill and not self.decode


# How the paged decode kernel splits each sequence's context into programs (`decode_attention.py` launches with it).
# The split count depends only on the batch (so a CUDA graph captured for one batch size replays for any contexts):
# enough programs to fill the GPU, each sequence getting the same number. A batch too wide to split runs each
# sequence's whole context in one program, so one long context among short ones sets the kernel's time; calibration
# and the simulator price that critical path with the same rule. It lives here, torch-free, beside the shape it
# splits, because the cost form reads it on machines without torch.
TARGET_PROGRAMS = 528  # about 4 waves of programs on a 132-SM H100
MAX_SPLITS = 32


def graph_buckets(max_num_seqs: int) -> list[int]:
    """Batch sizes that get a decode CUDA graph: 1, 2, 4, 8, then every 16 up to `max_num_seqs` (and it).

    A decode batch runs padded to the smallest bucket that holds it (`kernels/runner.py`), so its weights pass costs
    what the bucket's does (`calibrate/compose.py` prices it so).
    """
    buckets = [b for b in (1, 2, 4, 8) if b < max_num_seqs] + list(range(16, max_num_seqs, 16))
    return buckets + [max_num_seqs]


def num_splits_for(batch: int, n_kv_heads: int, target_programs: int = TARGET_PROGRAMS,
                   max_splits: int = MAX_SPLITS) -> int:
    """Context splits per sequence: enough programs to fill the GPU, depending only on the batch shape."""
    return max(1, min(max_splits, -(-target_programs // max(1, batch * n_kv_heads))))
