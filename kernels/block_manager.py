"""Paged KV-cache block accounting: which physical blocks each sequence owns. Pure Python, no torch.

Block 0 is reserved as a scratch block: padded (graph-captured) batch slots write their K/V there, so it is never
handed to a sequence. Blocks carry reference counts so that a block can be shared (`fork`) and is only returned to
the free list when its last owner lets go.
"""

from __future__ import annotations

import logging
from collections import deque

logger = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE = 16
SCRATCH_BLOCK = 0


def blocks_for_tokens(n_tokens: int, block_size: int = DEFAULT_BLOCK_SIZE) -> int:
    """Blocks needed to hold `n_tokens` KV entries (ceil division)."""
    return -(-n_tokens // block_size)


def kv_capacity_blocks(
    total_bytes: int,
    used_bytes: int,
    utilization: float,
    reserve_bytes: int,
    bytes_per_block: int,
) -> int:
    """KV blocks that fit in the memory budget, vLLM style.

    The engine may use `utilization x total_bytes`; what is already used (weights, the CUDA context) and a reserve
    for activations come off that budget, and the rest becomes KV blocks.

    Args:
        total_bytes: device memory in bytes.
        used_bytes: bytes in use now (after the weights are loaded).
        utilization: fraction of the device the engine may use, in (0, 1].
        reserve_bytes: bytes kept free for activations and temporary buffers.
        bytes_per_block: KV bytes one block occupies over all layers (K and V).

    Returns:
        The number of blocks, never negative.
    """
    if not 0.0 < utilization <= 1.0:
        raise ValueError(f"utilization={utilization} must be in (0, 1]")
    if bytes_per_block <= 0:
        raise ValueError(f"bytes_per_block={bytes_per_block} must be > 0")
    budget_bytes = int(total_bytes * utilization) - used_bytes - reserve_bytes
    return max(0, budget_bytes // bytes_per_block)


class BlockManager:
    """Hands out fixed-size KV blocks to sequences and takes them back.

    Args:
        num_blocks: physical blocks in the cache, the scratch block included.
        block_size: tokens per block.
    """

    def __init__(self, num_blocks: int, block_size: int = DEFAULT_BLOCK_SIZE) -> None:
        if num_blocks < 2:
            raise ValueError(f"num_blocks={num_blocks} must be >= 2 (block 0 is scratch)")
        if block_size <= 0:
            raise ValueError(f"block_size={block_size} must be > 0")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(1, num_blocks))
        self._ref_counts = [0] * num_blocks
        self._tables: dict[int, list[int]] = {}
        self._tokens: dict[int, int] = {}

    # ---- queries -------------------------------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        """Blocks nobody holds."""
        return len(self._free)

    @property
    def capacity_tokens(self) -> int:
        """Tokens the whole cache can hold (scratch block excluded)."""
        return (self.num_blocks - 1) * self.block_size

    def has(self, seq_id: int) -> bool:
        """Whether `seq_id` holds blocks."""
        return seq_id in self._tables

    def block_table(self, seq_id: int) -> list[int]:
        """The physical blocks of `seq_id`, in logical order (a copy)."""
        return list(self._tables[seq_id])

    def block_table_view(self, seq_id: int) -> list[int]:
        """The live block table of `seq_id`, not copied (read it, never change it): the hot path's accessor."""
        return self._tables[seq_id]

    def slot(self, seq_id: int, position: int) -> int:
        """Flat KV slot (block * block_size + offset) holding token `position` of `seq_id`."""
        return self._tables[seq_id][position // self.block_size] * self.block_size + position % self.block_size

    def num_tokens(self, seq_id: int) -> int:
        """KV entries `seq_id` has reserved room for."""
        return self._tokens[seq_id]

    def ref_count(self, block: int) -> int:
        """Owners of `block`."""
        return self._ref_counts[block]

    def can_allocate(self, n_tokens: int) -> bool:
        """Whether a new sequence of `n_tokens` fits now."""
        return blocks_for_tokens(n_tokens, self.block_size) <= len(self._free)

    def can_append(self, seq_id: int, n_new_tokens: int) -> bool:
        """Whether `seq_id` can grow by `n_new_tokens`."""
        return self._extra_blocks(seq_id, n_new_tokens) <= len(self._free)

    # ---- mutations -----------------------------------------------------------------------------------------------
    def allocate(self, seq_id: int, n_tokens: int) -> list[int]:
        """Give a new sequence room for `n_tokens` KV entries; returns its block table."""
        if seq_id in self._tables:
            raise ValueError(f"sequence {seq_id} already holds blocks")
        if n_tokens < 0:
            raise ValueError(f"n_tokens={n_tokens} must be >= 0")
        if not self.can_allocate(n_tokens):
            raise MemoryError(f"no room for {n_tokens} tokens ({self.num_free_blocks} free blocks)")
        self._tables[seq_id] = [self._take() for _ in range(blocks_for_tokens(n_tokens, self.block_size))]
        self._tokens[seq_id] = n_tokens
        return list(self._tables[seq_id])

    def append(self, seq_id: int, n_new_tokens: int) -> list[int]:
        """Grow `seq_id` by `n_new_tokens` KV entries; returns the blocks added (often none)."""
        if n_new_tokens < 0:
            raise ValueError(f"n_new_tokens={n_new_tokens} must be >= 0")
        extra = self._extra_blocks(seq_id, n_new_tokens)
        if extra > len(self._free):
            raise MemoryError(f"no room for {n_new_tokens} more tokens of sequence {seq_id}")
        added = [self._take() for _ in range(extra)]
        self._tables[seq_id].extend(added)
        self._tokens[seq_id] += n_new_tokens
        return added

    def fork(self, src_id: int, dst_id: int) -> list[int]:
        """Let `dst_id` share all of `src_id`'s blocks (prefix sharing); ref-counts go up."""
        if dst_id in self._tables:
            raise ValueError(f"sequence {dst_id} already holds blocks")
        table = list(self._tables[src_id])
        for block in table:
            self._ref_counts[block] += 1
        self._tables[dst_id] = table
        self._tokens[dst_id] = self._tokens[src_id]
        return list(table)

    def free(self, seq_id: int) -> None:
        """Release `seq_id`'s blocks; a block returns to the pool when its last owner frees it."""
        if seq_id not in self._tables:
            raise KeyError(f"sequence {seq_id} holds no blocks (double free?)")
        for block in self._tables.pop(seq_id):
            assert self._ref_counts[block] > 0, f"block {block} ref-count underflow"
            self._ref_counts[block] -= 1
            if self._ref_counts[block] == 0:
                self._free.append(block)
        del self._tokens[seq_id]

    # ---- internals -----------------------------------------------------------------------------------------------
    def _extra_blocks(self, seq_id: int, n_new_tokens: int) -> int:
        have = len(self._tables[seq_id])
        return max(0, blocks_for_tokens(self._tokens[seq_id] + n_new_tokens, self.block_size) - have)

    def _take(self) -> int:
        block = self._free.popleft()
        assert self._ref_counts[block] == 0, f"free block {block} has owners"
        self._ref_counts[block] = 1
        return block
