"""The paper's theoretical ("ideal") estimate: every FLOP at the GPU's peak rate, drawing its TDP.

Per request, E = TDP x FLOPs / peak FLOP/s (Fernandez et al., ACL 2025, Sec. 3). FLOPs are those of the forward
passes the request needs: its prompt tokens (prefill, which emits the first output token) and one decode pass for
each further output token, i.e. N = input + max(output, 1) - 1 tokens whose contexts run 0, 1, ..., N - 1. With
`ModelSpec.flops_per_token(c) = a + d c` (d: `ModelSpec.attn_flops_per_context_token`), the request's FLOPs are
N a + d N (N - 1) / 2: the same count the simulator's roofline cost model charges, so a roofline replay's busy energy
equals this estimate. Peak FLOP/s and TDP default to the GPU's datasheet (dense, not sparse) and can be overridden.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tokenjoule.calibrate.profile import GPUSpec
from tokenjoule.kernels.spec import ConfigError, ModelSpec


@dataclass(frozen=True, slots=True)
class TheoryInputs:
    """What the estimate multiplies.

    Attributes:
        model: model name.
        peak_flops: dense peak FLOP/s of one GPU.
        tdp_w: TDP of one GPU (W).
        source: where the two numbers come from (datasheet or a flag).
    """

    model: str
    peak_flops: float
    tdp_w: float
    source: str

    def __post_init__(self) -> None:
        if not self.peak_flops > 0 or not self.tdp_w > 0:
            raise ConfigError(f"--peak-flops {self.peak_flops:g} and --tdp-w {self.tdp_w:g}: must be > 0")

    @classmethod
    def of(cls, spec: ModelSpec, gpu: GPUSpec, peak_flops: float | None = None,
           tdp_w: float | None = None) -> TheoryInputs:
        """Datasheet numbers of `gpu`, each replaced by the override when given."""
        parts = [f"peak FLOP/s {'from --peak-flops' if peak_flops else gpu.name + ' datasheet'}",
                 f"TDP {'from --tdp-w' if tdp_w else gpu.name + ' datasheet'}"]
        return cls(spec.name, float(peak_flops or gpu.peak_flops), float(tdp_w or gpu.tdp_w),
                   "; ".join(parts) + f" ({gpu.source})")


@dataclass(frozen=True, slots=True)
class TheoryEstimate:
    """The theoretical estimate.

    Attributes:
        energy_j: TDP x FLOPs / peak over all requests (J).
        flops: FLOPs of all requests.
        requests: requests counted.
        inputs: the multipliers.
    """

    energy_j: float
    flops: float
    requests: int
    inputs: TheoryInputs

    @property
    def gpu_s(self) -> float:
        """GPU-seconds the FLOPs take at peak."""
        return self.flops / self.inputs.peak_flops

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"energy_j": self.energy_j, "j_per_request": self.energy_j / self.requests if self.requests else None,
                "gpu_s": self.gpu_s, "flops": self.flops, "requests": self.requests, "model": self.inputs.model,
                "peak_flops": self.inputs.peak_flops, "tdp_w": self.inputs.tdp_w, "source": self.inputs.source}


def request_flops(spec: ModelSpec, input_tokens: np.ndarray, output_tokens: np.ndarray) -> np.ndarray:
    """Forward FLOPs of each request (prompt plus output - 1 decode passes), float64."""
    n = np.asarray(input_tokens, np.float64) + np.maximum(np.asarray(output_tokens, np.float64), 1.0) - 1.0
    a = spec.flops_per_token(0.0)
    d = spec.attn_flops_per_context_token
    return n * a + d * n * (n - 1.0) / 2.0


class TheoryAccumulator:
    """Sums FLOPs batch by batch.

    Args:
        spec: the model.
        inputs: peak FLOP/s and TDP.
    """

    def __init__(self, spec: ModelSpec, inputs: TheoryInputs) -> None:
        self.spec, self.inputs = spec, inputs
        self.flops = 0.0
        self.requests = 0

    def add(self, input_tokens: np.ndarray, output_tokens: np.ndarray) -> None:
        """Count a batch of requests."""
        self.flops += float(request_flops(self.spec, input_tokens, output_tokens).sum())
        self.requests += len(input_tokens)

    def merge(self, other: TheoryAccumulator) -> None:
        """Add the counts of another stretch of the same trace."""
        self.flops += other.flops
        self.requests += other.requests

    def result(self) -> TheoryEstimate:
        """The estimate so far."""
        return TheoryEstimate(self.inputs.tdp_w * self.flops / self.inputs.peak_flops, self.flops, self.requests,
                              self.inputs)
