"""Per-request cost terms of a continuous-batching server, tabulated once from a cost model.

The load-aware projection (`sim.project_load`) splits a server's energy into terms known per request (its prefill
priced alone, each decode seat's line in its context) and the decode step's base cost that a batch shares; this
module holds the first kind.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tokenjoule.calibrate.cost_form import IterFeatures
from tokenjoule.sim.cost import CostModel


@dataclass(frozen=True, slots=True)
class SeatModel:
    """Per-request cost terms from a cost model: prefill alone (tabulated) and one decode seat's line in context.

    Attributes:
        grid_tokens: prompt lengths where the prefill is tabulated (interpolated between).
        prefill_j: energy of a prefill of that many tokens alone (J).
        prefill_s: its time (s).
        seat_j: (a, c): energy of one decode step of one sequence with context x is a + c x (J), without the step's
            longest-context term: that one is paid once per step by the whole batch, like the step's base cost, so
            the simulations measure it in u_j (in a seat's line it would be charged once per sequence).
        seat_s: (a, c) for the time (s).
        full_batch_s: base time per decode token when the batch is full (s): the fastest the server can decode.
    """

    grid_tokens: np.ndarray
    prefill_j: np.ndarray
    prefill_s: np.ndarray
    seat_j: tuple[float, float]
    seat_s: tuple[float, float]
    full_batch_s: float

    @classmethod
    def of(cls, cost: CostModel, full_batch: int = 256, max_exact: int = 4096, max_tokens: int = 1 << 21) -> SeatModel:
        """Tabulate `cost`: every length up to `max_exact`, then 512 log-spaced points to `max_tokens`."""
        grid = np.unique(np.concatenate([np.arange(1, max_exact + 1),
                                         np.geomspace(max_exact, max_tokens, 512).round()])).astype(np.int64)
        pre = np.array([cost.iteration(IterFeatures(int(n), int(n * (n + 1) // 2), 0, 0, 0, 1)) for n in grid])
        x0, x1 = 1, 1 + 1024
        # decode_max_ctx_tokens stays 0: the batch's longest context is a per-step term (see seat_j)
        t0, e0 = cost.iteration(IterFeatures(1, 0, 0, x0, 1, decode_max_ctx_tokens=0))
        t1, e1 = cost.iteration(IterFeatures(1, 0, 0, x1, 1, decode_max_ctx_tokens=0))
        cj, cs = (e1 - e0) / (x1 - x0), (t1 - t0) / (x1 - x0)
        full = IterFeatures(full_batch, 0, 0, 0, full_batch, decode_max_ctx_tokens=0)
        full_s = cost.iteration(full)[0] / full_batch
        return cls(grid, pre[:, 1].copy(), pre[:, 0].copy(), (e0 - cj * x0, cj), (t0 - cs * x0, cs), full_s)

    def terms(self, input_tokens: np.ndarray, output_tokens: np.ndarray) -> dict[str, np.ndarray]:
        """Per-request prefill_j, prefill_s, decode_steps and context_tokens (float64 arrays)."""
        i = np.asarray(input_tokens, np.float64)
        d = np.maximum(np.asarray(output_tokens, np.float64) - 1.0, 0.0)
        return {"prefill_j": np.interp(i, self.grid_tokens, self.prefill_j),
                "prefill_s": np.interp(i, self.grid_tokens, self.prefill_s),
                "decode_steps": d, "context_tokens": d * i + d * (d - 1.0) / 2.0}


def base_per_decode_step(total: float, terms: dict[str, np.ndarray], seat: tuple[float, float],
              prefix: str = "prefill_j") -> float:
    """Solve total = sum(prefill) + c x context + u x decode_steps for u (the seat's own a when no decode step)."""
    steps = float(terms["decode_steps"].sum())
    if steps < 1:
        return seat[0]
    return (total - float(terms[prefix].sum()) - seat[1] * float(terms["context_tokens"].sum())) / steps
