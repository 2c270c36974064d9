"""BlockManager: allocation arithmetic, ref-counts, and a property test that blocks never leak or double-free."""

from __future__ import annotations

import pytest

pytest.importorskip("hypothesis")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tokenjoule.kernels.block_manager import SCRATCH_BLOCK, BlockManager, blocks_for_tokens, kv_capacity_blocks


def test_allocate_append_free_round_trip():
    bm = BlockManager(num_blocks=10, block_size=16)
    assert bm.num_free_blocks == 9 and bm.capacity_tokens == 144
    table = bm.allocate(1, 17)
    assert len(table) == 2 and SCRATCH_BLOCK not in table
    assert bm.append(1, 15) == []  # 32 tokens still fit two blocks
    assert len(bm.append(1, 1)) == 1
    assert bm.num_tokens(1) == 33 and bm.num_free_blocks == 6
    bm.free(1)
    assert bm.num_free_blocks == 9 and not bm.has(1)


def test_errors():
    bm = BlockManager(num_blocks=3, block_size=4)
    bm.allocate(1, 4)
    with pytest.raises(ValueError, match="already holds"):
        bm.allocate(1, 1)
    assert not bm.can_allocate(5)
    with pytest.raises(MemoryError):
        bm.allocate(2, 5)
    with pytest.raises(MemoryError):
        bm.append(1, 8)
    bm.free(1)
    with pytest.raises(KeyError, match="double free"):
        bm.free(1)
    with pytest.raises(ValueError, match="num_blocks"):
        BlockManager(1)


def test_fork_shares_blocks_until_last_owner_frees():
    bm = BlockManager(num_blocks=5, block_size=2)
    table = bm.allocate(1, 4)
    assert bm.fork(1, 2) == table
    assert all(bm.ref_count(b) == 2 for b in table)
    bm.free(1)
    assert bm.num_free_blocks == 2 and all(bm.ref_count(b) == 1 for b in table)
    bm.free(2)
    assert bm.num_free_blocks == 4


def test_capacity_formula():
    # 80 GB card, 90% usable, 20 GB used, 2 GB reserve, 2 MiB blocks
    blocks = kv_capacity_blocks(80_000_000_000, 20_000_000_000, 0.9, 2_000_000_000, 2 << 20)
    assert blocks == (72_000_000_000 - 22_000_000_000) // (2 << 20)
    assert kv_capacity_blocks(100, 99, 0.5, 0, 1) == 0
    with pytest.raises(ValueError, match="utilization"):
        kv_capacity_blocks(1, 0, 0.0, 0, 1)
    assert blocks_for_tokens(0) == 0 and blocks_for_tokens(16) == 1 and blocks_for_tokens(17) == 2


ops = st.lists(st.tuples(st.sampled_from(["alloc", "append", "fork", "free"]), st.integers(0, 7),
                         st.integers(0, 40)), max_size=80)


@settings(max_examples=200, deadline=None)
@given(ops=ops, num_blocks=st.integers(2, 12), block_size=st.sampled_from([1, 4, 16]))
def test_never_leaks_or_double_frees(ops, num_blocks, block_size):
    bm = BlockManager(num_blocks, block_size)
    for op, seq, n in ops:
        try:
            if op == "alloc":
                bm.allocate(seq, n)
            elif op == "append" and bm.has(seq):
                bm.append(seq, n)
            elif op == "fork" and bm.has(seq):
                bm.fork(seq, (seq + n) % 8)
            elif op == "free":
                bm.free(seq)
        except (MemoryError, ValueError, KeyError):
            pass  # refused requests must leave the state consistent, which the checks below verify
        owners = [0] * num_blocks
        for s in range(8):
            if bm.has(s):
                table = bm.block_table(s)
                assert len(table) == blocks_for_tokens(bm.num_tokens(s), block_size)
                for block in table:
                    owners[block] += 1
        free = list(bm._free)
        assert len(free) == len(set(free)), "a block is free twice"
        assert SCRATCH_BLOCK not in free and owners[SCRATCH_BLOCK] == 0
        for block in range(1, num_blocks):
            assert bm.ref_count(block) == owners[block]
            assert (block in free) == (owners[block] == 0)
    for s in range(8):
        if bm.has(s):
            bm.free(s)
    assert bm.num_free_blocks == num_blocks - 1
