"""The validation scenarios: trace slices replayed in real time, and offline static batches.

Data for `validate_device` (and `validate_hf`, which reuses the offline kind): each scenario names a bundled trace,
a slice of it and a rate scale, or a static batch shape, with the policy and limits the engine and the simulator
both use.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenjoule.calibrate.validate.replay import ReplayRequest

MAX_TOTAL_TOKENS = 8192  # requests with prompt + output above the continuous token budget are left out (both sides)


@dataclass(frozen=True, slots=True)
class Scenario:
    """One replayed scenario.

    Attributes:
        name: unique name.
        policy: "continuous" (prefill-first) or "chunked" (token budget).
        max_num_seqs: most sequences per iteration.
        max_num_batched_tokens: token budget per iteration.
        trace: bundled trace name (online), or "" for a synthetic offline batch.
        start_s: slice start in the original trace (s).
        window_s: slice length in the original trace (s).
        rate_scale: arrival-rate multiplier applied after slicing.
        static_batch: offline: requests per static batch (0 for online).
        static_batches: offline: number of batches.
        static_input_tokens: offline: prompt length.
        static_output_tokens: offline: output length.
    """

    name: str
    policy: str
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    trace: str = ""
    start_s: float = 0.0
    window_s: float = 0.0
    rate_scale: float = 1.0
    static_batch: int = 0
    static_batches: int = 0
    static_input_tokens: int = 0
    static_output_tokens: int = 0

    @property
    def offline(self) -> bool:
        """Whether this is an offline static-batching scenario."""
        return self.static_batch > 0

    def expected_s(self, mode: str = "cudagraph") -> float:
        """A rough wall-time guess (trace time, plus drain), for the run's time guard.

        Eager steps are launched from Python: small decode batches run about 3x slower than with CUDA graphs (the
        offline batches), loaded online slices about 1.5x (simulated with the H100 eager profile).
        """
        if self.offline:
            return 30.0 if mode == "eager" else 12.0
        return (self.window_s / self.rate_scale * 1.3 + 4.0) * (1.5 if mode == "eager" else 1.0)


SCENARIOS = (  # in priority order: a short device budget skips the last ones
    Scenario("conv_continuous_x3", "continuous", trace="azure-conv-2023", start_s=600.0, window_s=60.0,
             rate_scale=3.0),
    Scenario("code_chunked_x1", "chunked", max_num_batched_tokens=2048, trace="azure-code-2023", start_s=600.0,
             window_s=20.0, rate_scale=1.0),
    Scenario("conv_chunked_x1", "chunked", max_num_batched_tokens=2048, trace="azure-conv-2023", start_s=900.0,
             window_s=20.0, rate_scale=1.0),
    Scenario("code_continuous_x0.5", "continuous", trace="azure-code-2023", start_s=600.0, window_s=10.0,
             rate_scale=0.5),
    Scenario("static_b8_i1024_o256", "continuous", static_batch=8, static_batches=4, static_input_tokens=1024,
             static_output_tokens=256),
    Scenario("conv_continuous_x0.5", "continuous", trace="azure-conv-2023", start_s=600.0, window_s=10.0,
             rate_scale=0.5),
    Scenario("conv_chunked_x3", "chunked", max_num_batched_tokens=2048, trace="azure-conv-2023", start_s=1200.0,
             window_s=60.0, rate_scale=3.0),
    Scenario("static_b64_i128_o512", "continuous", static_batch=64, static_batches=2, static_input_tokens=128,
             static_output_tokens=512),
    Scenario("code_continuous_x1", "continuous", trace="azure-code-2023", start_s=1400.0, window_s=20.0,
             rate_scale=1.0),
)
# Longer slices (about 90 s of wall time each, 1.5-4.5 minutes of trace), for a second device call that replays
# with the profile the first one measured (`--profile`): two loaded conversation slices, one coding slice near
# saturation, one at lighter load.
LONG_SCENARIOS = (
    Scenario("conv_continuous_x3_long", "continuous", trace="azure-conv-2023", start_s=2400.0, window_s=270.0,
             rate_scale=3.0),
    Scenario("code_chunked_x1_long", "chunked", max_num_batched_tokens=2048, trace="azure-code-2023", start_s=1440.0,
             window_s=90.0, rate_scale=1.0),
    Scenario("conv_chunked_x2_long", "chunked", max_num_batched_tokens=2048, trace="azure-conv-2023", start_s=3000.0,
             window_s=180.0, rate_scale=2.0),
    Scenario("code_continuous_x0.7_long", "continuous", trace="azure-code-2023", start_s=600.0, window_s=63.0,
             rate_scale=0.7),
)
# One model of many in a device lease (leave-one-model-out validation of a composed profile): about a minute of
# replays covering both traces, both policies, a light and a loaded rate, and one offline static batch.
MODEL_SCENARIOS = (
    Scenario("conv_continuous_x3_m", "continuous", trace="azure-conv-2023", start_s=600.0, window_s=30.0,
             rate_scale=3.0),
    Scenario("code_chunked_x1_m", "chunked", max_num_batched_tokens=2048, trace="azure-code-2023", start_s=600.0,
             window_s=10.0, rate_scale=1.0),
    Scenario("conv_chunked_x0.5_m", "chunked", max_num_batched_tokens=2048, trace="azure-conv-2023", start_s=900.0,
             window_s=5.0, rate_scale=0.5),
    Scenario("code_continuous_x0.5_m", "continuous", trace="azure-code-2023", start_s=1400.0, window_s=5.0,
             rate_scale=0.5),
    Scenario("static_b8_i1024_o256_m", "continuous", static_batch=8, static_batches=2, static_input_tokens=1024,
             static_output_tokens=256),
)
SCENARIO_SETS = {"short": SCENARIOS, "long": LONG_SCENARIOS, "all": SCENARIOS + LONG_SCENARIOS,
                 "models": MODEL_SCENARIOS}


def scenario_requests(s: Scenario) -> list[ReplayRequest]:
    """The scenario's requests: a sliced, rate-scaled trace (long requests left out), or uniform offline batches."""
    if s.offline:
        return [ReplayRequest(i, 0.0, s.static_input_tokens, s.static_output_tokens)
                for i in range(s.static_batch * s.static_batches)]
    from tokenjoule.traces.loaders import load_trace
    from tokenjoule.traces.transforms import scale_rate, slice_window

    trace, _ = slice_window(load_trace(s.trace), s.start_s, s.start_s + s.window_s)
    trace, _ = scale_rate(trace, s.rate_scale)
    cols = [trace.column(c) for c in ("request_id", "arrival_s", "input_tokens", "output_tokens")]
    return [ReplayRequest(int(i), float(a), int(n), int(o)) for i, a, n, o in zip(*cols, strict=True)
            if n + o <= MAX_TOTAL_TOKENS and n >= 1 and o >= 1]
