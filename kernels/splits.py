"""How the paged decode kernel splits each sequence's context into programs. Torch-free.

The split count depends only on the batch (so a CUDA graph captured for one batch size replays for any contexts):
enough programs to fill the GPU, each sequence getting the same number. A batch too wide to split runs each
sequence's whole context in one program, so one long context among short ones sets the kernel's time. Calibration
and the simulator price that critical path (`calibrate.profile.DecodeSplitRule`) with the same rule.
"""

from __future__ import annotations

TARGET_PROGRAMS = 528  # about 4 waves of programs on a 132-SM H100
MAX_SPLITS = 32


def num_splits_for(batch: int, n_kv_heads: int, target_programs: int = TARGET_PROGRAMS,
                   max_splits: int = MAX_SPLITS) -> int:
    """Context splits per sequence: enough programs to fill the GPU, depending only on the batch shape."""
    return max(1, min(max_splits, -(-target_programs // max(1, batch * n_kv_heads))))
