"""The paper's binned offline estimate: requests binned by length, each bin served as full static batches.

Fernandez et al. (ACL 2025) estimate a trace's energy offline: bin requests by (prompt, output) length with ceiling
bins, price one batch per bin at the bin's upper edges, and scale by the number of batches the bin needs:

    E = sum over bins of (count / B) x E_batch(B, input_edge, output_edge)

B is the largest batch whose KV cache fits: floor(kv_capacity_tokens / (input_edge + output_edge)), capped by
`max_batch` (default 256, vLLM's default `max_num_seqs`). E_batch is one padded static batch priced by the cost
model: a prefill of B x input_edge tokens (which emits the first token), then output_edge - 1 decode steps of B
sequences whose contexts grow by one token a step (the forward passes Hugging Face `generate` runs). count / B is
kept fractional, as in the paper's formula: a part-filled last batch is charged pro rata. The estimate has no idle
time: it is the energy of back-to-back full batches. A bin whose single request does not fit (B = 0) is left out
and its requests are reported as `unfit`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tokenjoule.calibrate.cost_form import IterFeatures
from tokenjoule.kernels.spec import ConfigError
from tokenjoule.sim.cost import CostModel
from tokenjoule.traces.binning import BinCounts


@dataclass(frozen=True, slots=True)
class PaperBin:
    """One (input, output) bin of the estimate.

    Attributes:
        input_tokens: the bin's input edge (tokens).
        output_tokens: the bin's output edge (tokens).
        count: requests in the bin.
        batch: B, requests per batch (0 when one request does not fit the KV cache).
        batch_energy_j: energy of one batch of B (J).
        energy_j: count / B x batch_energy_j (J).
        batch_time_s: time of one batch of B on one replica (s).
    """

    input_tokens: int
    output_tokens: int
    count: int
    batch: int
    batch_energy_j: float
    energy_j: float
    batch_time_s: float = 0.0

    @property
    def busy_s(self) -> float:
        """Replica-seconds the bin's batches run, count / B x batch_time_s (0 for a bin that does not fit)."""
        return self.count / self.batch * self.batch_time_s if self.batch else 0.0

    @property
    def j_per_request(self) -> float | None:
        """batch_energy_j / B, or None for a bin that does not fit."""
        return self.batch_energy_j / self.batch if self.batch else None


@dataclass(frozen=True, slots=True)
class PaperEstimate:
    """The binned estimate and what it left out.

    Attributes:
        energy_j: total over the bins that fit (J).
        requests: requests seen.
        binned: requests in some bin (including those in bins that do not fit).
        excluded: requests above the last edges, left out (out_of_range="exclude").
        clamped: requests above the last edges, moved into the last bins (out_of_range="clamp").
        unfit: requests in bins where one request does not fit the KV cache (not in energy_j).
        max_batch: the batch cap.
        kv_capacity_tokens: the KV capacity used for B.
        bins: the non-empty bins.
        out_of_range: "exclude" or "clamp".
    """

    energy_j: float
    requests: int
    binned: int
    excluded: int
    clamped: int
    unfit: int
    max_batch: int
    kv_capacity_tokens: int
    bins: tuple[PaperBin, ...]
    out_of_range: str

    @property
    def estimated(self) -> int:
        """Requests whose energy is in the estimate."""
        return self.binned - self.unfit

    @property
    def busy_s(self) -> float:
        """Replica-seconds the batches run back to back (the estimate has no idle time)."""
        return sum(b.busy_s for b in self.bins)

    @property
    def j_per_request(self) -> float | None:
        """Energy per estimated request (J)."""
        return self.energy_j / self.estimated if self.estimated else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "energy_j": self.energy_j, "j_per_request": self.j_per_request, "busy_s": self.busy_s,
            "requests": self.requests,
            "binned": self.binned, "estimated": self.estimated, "excluded": self.excluded, "clamped": self.clamped,
            "unfit": self.unfit, "out_of_range": self.out_of_range, "max_batch": self.max_batch,
            "kv_capacity_tokens": self.kv_capacity_tokens,
            "bins": [{"input_tokens": b.input_tokens, "output_tokens": b.output_tokens, "count": b.count,
                      "batch": b.batch, "batch_energy_j": b.batch_energy_j, "energy_j": b.energy_j}
                     for b in self.bins],
        }


def batch_size(input_tokens: int, output_tokens: int, kv_capacity_tokens: int, max_batch: int) -> int:
    """B: the most requests of (input, output) tokens whose KV fits, at most `max_batch` (0 if none fits)."""
    if max_batch < 1:
        raise ConfigError(f"--max-batch {max_batch}: must be >= 1")
    return min(max_batch, kv_capacity_tokens // max(1, input_tokens + output_tokens))


def batch_cost(cost: CostModel, batch: int, input_tokens: int, output_tokens: int) -> tuple[float, float]:
    """One padded static batch: prefill of batch x input tokens, then output - 1 decode steps.

    Args:
        cost: the cost model.
        batch: requests in the batch (>= 1).
        input_tokens: prompt length of each.
        output_tokens: tokens generated per request (>= 1; the prefill emits the first).

    Returns:
        (time_s, energy_j) of the batch.
    """
    if batch < 1 or input_tokens < 1 or output_tokens < 1:
        raise ConfigError(f"batch={batch}, input_tokens={input_tokens} and output_tokens={output_tokens} must be >= 1")
    pairs = batch * input_tokens * (input_tokens + 1) // 2
    prefill_s, prefill_j = cost.iteration(IterFeatures(batch * input_tokens, pairs, 0, 0, 0, batch))
    decode = cost.decode_stretch(batch, batch * input_tokens, input_tokens)
    return prefill_s + decode.time_s(output_tokens - 1), prefill_j + decode.energy_j(output_tokens - 1)


def paper_estimate(counts: BinCounts, cost: CostModel, max_batch: int = 256) -> PaperEstimate:
    """The paper's estimate from bin counts (summed over windows).

    Args:
        counts: requests per bin (see `tokenjoule.traces.binning`).
        cost: the cost model (its `kv_capacity_tokens` sets B).
        max_batch: cap on B.

    Returns:
        The estimate.
    """
    matrix = counts.matrix()
    capacity = int(cost.kv_capacity_tokens)
    bins: list[PaperBin] = []
    unfit = 0
    for i, in_edge in enumerate(counts.spec.input_edges):
        for o, out_edge in enumerate(counts.spec.output_edges):
            n = int(matrix[i, o])
            if n == 0:
                continue
            b = batch_size(int(in_edge), int(out_edge), capacity, max_batch)
            if b == 0:
                unfit += n
                bins.append(PaperBin(int(in_edge), int(out_edge), n, 0, 0.0, 0.0))
                continue
            t_batch, e_batch = batch_cost(cost, b, max(1, int(in_edge)), max(1, int(out_edge)))
            bins.append(PaperBin(int(in_edge), int(out_edge), n, b, e_batch, n / b * e_batch, t_batch))
    return PaperEstimate(sum(b.energy_j for b in bins), counts.rows, counts.binned, counts.excluded, counts.clamped,
                         unfit, max_batch, capacity, tuple(bins), counts.spec.out_of_range)
