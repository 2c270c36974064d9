"""Cost models: one iteration's shape -> (seconds, joules), and k constant-batch decode steps in closed form.

Pure functions and small frozen classes; no SimPy. Three models share one interface (`CostModel`):

- `CalibratedCost`: a measured GPUProfile's fitted curves (latency and energy), see `tokenjoule.calibrate.profile`.
- `RooflineCost`: the paper's theoretical baseline (Fernandez et al. 2025, Sec. 3): time = FLOPs / peak FLOP/s and
  energy = time x TDP; with `memory_bound=True`, time = max(FLOPs / peak, bytes / HBM bandwidth) (Williams et al.
  2009, "Roofline").
- `ModeledTPCost`: a single-GPU calibrated profile stretched to tensor parallelism (compute split by `tp`, plus two
  ring all-reduces per layer). It is a model, not a measurement, and says so (`modeled=True`) in every output.

Every cost here is linear in an iteration's aggregate features, so a constant batch's decode steps are priced in
closed form (`sim.stretch.StretchCost`). The calibrated curves are evaluated by `tokenjoule.calibrate.cost_form`,
the one implementation the fitter and the profile file use too.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field

import numpy as np

from tokenjoule.calibrate.cost_form import CurveTable, IterFeatures, tail_ctx_tokens
from tokenjoule.calibrate.profile import GPUProfile, GPUSpec
from tokenjoule.kernels.shape import IterationShape
from tokenjoule.kernels.spec import ModelSpec
from tokenjoule.sim.stretch import Line, StretchCost

_MEMO_SIZE = 1 << 14


@dataclass(frozen=True, slots=True)
class CalibratedCost:
    """Costs from a measured profile's fitted curves (both per replica, all its GPUs summed), plus its host time.

    The curves time the forward pass alone. Where the profile measured the serving loop's host work per iteration
    (`GPUProfile.host_overhead`: scheduling and committing tokens, serial with the GPU), an iteration lasts its curve
    plus that host time, and the GPUs draw idle power while they wait on the host. That energy is modeled (idle power
    x host time), not measured per iteration. Profiles without host_overhead add nothing.

    Attributes:
        profile: the calibrated GPUProfile.
    """

    profile: GPUProfile
    _lat: CurveTable = field(init=False, repr=False)
    _en: CurveTable = field(init=False, repr=False)
    # (seconds, joules) of prefill-only iterations by features: a trace's prompts repeat their lengths, so a
    # simulation prices the same prefill many times (cleared past _MEMO_SIZE entries, so memory stays bounded)
    _prefills: dict[tuple[int, ...], tuple[float, float]] = field(init=False, repr=False, compare=False,
                                                                  default_factory=dict)
    # what a decode stretch's price takes from its batch size alone, by batch (`_decode_terms`): a simulation prices
    # a few hundred distinct batches, each thousands of times
    _decodes: dict[int, tuple] = field(init=False, repr=False, compare=False, default_factory=dict)
    # both curves' token terms of a mixed iteration (prefill chunks beside decodes), by its new tokens
    # (`_prefill_curves`): chunked prefill fills its token budget, so a few values recur (cleared past _MEMO_SIZE)
    _mixed: dict[int, tuple[float, float]] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_lat", self.profile.latency.table())
        object.__setattr__(self, "_en", self.profile.energy.table())

    @property
    def name(self) -> str:
        """"calibrated" for a measured profile, "composed" for one composed from a GPU profile's operator fits."""
        return "composed" if self.modeled else "calibrated"

    @property
    def modeled(self) -> bool:
        """True when no iteration of this model was measured: the profile was composed (`calibrate/compose.py`)."""
        return bool(self.profile.method.get("composed"))

    @property
    def tp(self) -> int:
        """GPUs per replica."""
        return self.profile.tp

    @property
    def idle_power_w(self) -> float:
        """Replica idle power (W)."""
        return self.profile.idle_power_w

    @property
    def kv_capacity_tokens(self) -> int:
        """KV-cache capacity measured by the engine."""
        return self.profile.kv_capacity_tokens

    @property
    def uses_longest_context(self) -> bool:
        """Whether a decode's cost reads its batch's longest context (the curves' tail term), or only their sum."""
        return self._lat.uses_longest_context or self._en.uses_longest_context

    def host_s(self, seqs: int, prefill_seqs: int = 0) -> float:
        """Host seconds of an iteration of `seqs` sequences, `prefill_seqs` of them chunks (0 if not measured)."""
        host = self.profile.host_overhead
        return 0.0 if host is None else host.seconds(seqs, prefill_seqs)

    def gpu_iteration(self, f: IterFeatures) -> tuple[float, float]:
        """(seconds, joules) of one iteration's forward pass: the fitted curves alone, without host time."""
        rule = self.profile.decode_split_rule
        return self._lat.iteration(f, rule), self._en.iteration(f, rule)

    def iteration(self, f: IterFeatures) -> tuple[float, float]:
        """(seconds, joules) of one iteration: the forward pass, then the host's work at idle power (modeled)."""
        return self.iteration_of(f.new_tokens, f.prefill_attn_pairs, f.prefill_ctx_tokens, f.decode_ctx_tokens,
                                 f.decode_seqs, f.prefill_seqs, f.decode_max_ctx_tokens)

    def iteration_of(self, x: int, pairs: int, pctx: int, dctx: int, decode_seqs: int, seqs: int,
                     longest: int) -> tuple[float, float]:
        """`iteration` of the features one by one, in IterFeatures' order: the simulator builds no IterFeatures."""
        p = self.profile
        if decode_seqs:  # `_iteration`, written out: every iteration with decodes is priced anew
            # both curves' `CurveTable.iteration`, written out (the same arithmetic)
            rule, lat, en = p.decode_split_rule, self._lat, self._en
            lc, ec = lat.coef, en.coef
            tail = tail_ctx_tokens(longest, dctx, decode_seqs, rule) if lc[4] or ec[4] else 0.0
            if seqs or pairs:
                curves = self._mixed.get(x)
                if curves is None:
                    curves = self._prefill_curves(x)
                tx, ex = curves
            else:
                k0, dk, v0, dv = lat.rows[bisect_right(lat.decode_knots, x)]
                ek0, edk, ev0, edv = en.rows[bisect_right(en.decode_knots, x)]
                tx, ex = v0 + (x - k0) / dk * dv, ev0 + (x - ek0) / edk * edv
            t = tx + lc[0] * pairs + lc[1] * pctx + lc[2] * seqs + lc[3] * dctx + lc[4] * (tail if lc[4] else 0.0)
            e = ex + ec[0] * pairs + ec[1] * pctx + ec[2] * seqs + ec[3] * dctx + ec[4] * (tail if ec[4] else 0.0)
            if p.host_overhead is None:
                return t, e
            host = p.host_overhead.seconds(decode_seqs + seqs, seqs)
            return t + host, e + p.idle_power_w * host
        key = (x, pairs, pctx, dctx, seqs, longest)
        cost = self._prefills.get(key)
        if cost is None:
            if len(self._prefills) >= _MEMO_SIZE:
                self._prefills.clear()
            cost = self._prefills[key] = self._iteration(IterFeatures(x, pairs, pctx, dctx, decode_seqs, seqs, longest))
        return cost

    def _prefill_curves(self, x: int) -> tuple[float, float]:
        """Both curves' token term (`_form`'s first, v0 + (x - k0) / dk * dv) in the prefill regime, memoized."""
        if len(self._mixed) >= _MEMO_SIZE:
            self._mixed.clear()
        k0, dk, v0, dv = self._lat._row(x, True)  # once per distinct x: the table's own lookup
        ek0, edk, ev0, edv = self._en._row(x, True)
        curves = self._mixed[x] = v0 + (x - k0) / dk * dv, ev0 + (x - ek0) / edk * edv
        return curves

    def _iteration(self, f: IterFeatures) -> tuple[float, float]:
        p = self.profile
        rule = p.decode_split_rule
        t, e = self._lat.iteration(f, rule), self._en.iteration(f, rule)  # `gpu_iteration`
        if p.host_overhead is None:
            return t, e
        host = p.host_overhead.seconds(f.decode_seqs + f.prefill_seqs, f.prefill_seqs)
        return t + host, e + p.idle_power_w * host

    def gpu_decode_lines(self, batch: int, ctx_sum_tokens: float, max_ctx_tokens: float) -> tuple[Line, Line]:
        """(time, energy) lines of the decode steps' forward passes, without host time."""
        rule = self.profile.decode_split_rule
        return (Line(*self._lat.decode_step(batch, ctx_sum_tokens, max_ctx_tokens, rule)),
                Line(*self._en.decode_step(batch, ctx_sum_tokens, max_ctx_tokens, rule)))

    def decode_stretch(self, batch: int, ctx_sum_tokens: float, max_ctx_tokens: float) -> StretchCost:
        """Closed-form cost of decode steps of `batch` sequences, each step with its iteration's host time.

        At step 0 the contexts sum to `ctx_sum_tokens` and the longest is `max_ctx_tokens`.
        """
        terms = self._decodes.get(batch)
        if terms is None:
            terms = self._decodes[batch] = self._decode_terms(batch)
        t_head, t_ctx, t_tail, td, e_head, e_ctx, e_tail, ed, host_s, host_j = terms
        # each curve's `decode_step`, written out with its terms looked up once (the same arithmetic)
        tail = tail_ctx_tokens(max_ctx_tokens, ctx_sum_tokens, batch, self.profile.decode_split_rule) \
            if t_tail or e_tail else 0.0
        ta = t_head + t_ctx * ctx_sum_tokens + t_tail * tail
        ea = e_head + e_ctx * ctx_sum_tokens + e_tail * tail
        if host_s is None:
            return StretchCost(ta, td, ea, ed)
        return StretchCost(ta + host_s, td, ea + host_j, ed)

    def _decode_terms(self, batch: int) -> tuple:
        """What `decode_stretch` takes from the batch size alone.

        Per curve its head, context and tail coefficients and growth per step; then the host's seconds and idle joules
        per iteration (None each without host time).
        """
        p, lat, en = self.profile, self._lat, self._en
        host_s = host_j = None
        if p.host_overhead is not None:
            host_s = p.host_overhead.seconds(batch)
            host_j = p.idle_power_w * host_s
        return (lat.decode_head(batch), lat.coef[3], lat.coef[4], lat.coef[3] * batch,
                en.decode_head(batch), en.coef[3], en.coef[4], en.coef[3] * batch, host_s, host_j)

    def evaluate(self, new_tokens, **features) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised (seconds, joules) over arrays of FEATURES (as `CostCurve.evaluate`) plus host time.

        The host time's sequences are the decode_seqs plus prefill_seqs arrays, as in `iteration`.
        """
        p = self.profile
        t, e = self._lat.evaluate(new_tokens, **features), self._en.evaluate(new_tokens, **features)
        if p.host_overhead is None:
            return t, e
        prefill = np.asarray(features.get("prefill_seqs", 0.0), dtype=np.float64)
        host = p.host_overhead.seconds(np.asarray(features.get("decode_seqs", 0.0), dtype=np.float64) + prefill,
                                       prefill)
        return t + host, e + p.idle_power_w * host


@dataclass(frozen=True, slots=True)
class AllReduce:
    """Ring all-reduce time model for tensor parallelism (two per layer: after attention and after the MLP).

    Time of one all-reduce of n bytes over p GPUs: latency_s + 2 (p - 1) / p * n / bus_bytes_per_s (the ring
    algorithm's traffic, Patarasuk & Yuan 2009; NCCL's "bus bandwidth" convention).

    Attributes:
        bus_bytes_per_s: achieved all-reduce bus bandwidth; default 360 GB/s, a typical NCCL all_reduce_perf
            figure on 8x H100 NVLink 4 (900 GB/s bidirectional per GPU); a documented assumption.
        latency_s: fixed cost per all-reduce (kernel launch and ring latency), default 10 us.
    """

    bus_bytes_per_s: float = 360e9
    latency_s: float = 10e-6

    def iteration_s(self, spec: ModelSpec, tp: int, new_tokens: float) -> float:
        """Seconds of all-reduces in one iteration of `new_tokens` tokens (0 without TP)."""
        if tp <= 1:
            return 0.0
        n_bytes = new_tokens * spec.hidden_size * spec.dtype_bytes
        return 2 * spec.n_layers * (self.latency_s + 2.0 * (tp - 1) / tp * n_bytes / self.bus_bytes_per_s)


@dataclass(frozen=True, slots=True)
class ModeledTPCost:
    """A tp=1 calibrated profile scaled to `tp` GPUs per replica (modeled, not measured).

    Time: the single-GPU forward-pass time divided by `tp` (weights and KV heads are split evenly) plus the
    all-reduces, plus the profile's host time per iteration, unsplit (one serving loop schedules for all tp GPUs).
    Energy: the single-GPU energy above idle (the work) is unchanged; each of the `tp` GPUs adds its idle power for
    the iteration's (shorter) time, host wait included. KV capacity grows by the freed weight memory:
    tp*C1 + (tp-1)*W/kv_bytes_per_token.

    Attributes:
        base: the single-GPU calibrated cost.
        tp: tensor-parallel degree.
        allreduce: the all-reduce model.
    """

    base: CalibratedCost
    tp: int
    allreduce: AllReduce = AllReduce()

    modeled = True

    @property
    def name(self) -> str:
        """The base's name: "calibrated", or "composed" for a profile composed from a GPU profile's operator fits."""
        return self.base.name

    def __post_init__(self) -> None:
        spec = self.base.profile.model
        check_tp(spec, self.tp)
        if self.base.profile.tp != 1:
            raise ValueError(f"profile is tp={self.base.profile.tp}; only a tp=1 profile can be scaled to tp={self.tp}")

    @property
    def profile(self) -> GPUProfile:
        """The tp=1 profile this model stretches."""
        return self.base.profile

    @property
    def idle_power_w(self) -> float:
        """Replica idle power: tp GPUs at the profile's single-GPU idle power."""
        return self.tp * self.base.idle_power_w

    @property
    def uses_longest_context(self) -> bool:
        """Whether a decode's cost reads its batch's longest context (as the base's does)."""
        return self.base.uses_longest_context

    @property
    def kv_capacity_tokens(self) -> int:
        """Calibrated capacity plus the weight memory freed on each GPU."""
        spec = self.base.profile.model
        extra = (self.tp - 1) * spec.weight_bytes // spec.kv_bytes_per_token
        return self.tp * self.base.kv_capacity_tokens + int(extra)

    def iteration_of(self, *features: int) -> tuple[float, float]:
        """`iteration` of the features one by one, in IterFeatures' order (the simulator's call)."""
        return self.iteration(IterFeatures(*features))

    def iteration(self, f: IterFeatures) -> tuple[float, float]:
        """(seconds, joules) of one iteration on the tp GPUs."""
        t1, e1 = self.base.gpu_iteration(f)
        p1 = self.base.idle_power_w
        t = (t1 / self.tp + self.allreduce.iteration_s(self.base.profile.model, self.tp, f.new_tokens)
             + self.base.host_s(f.decode_seqs + f.prefill_seqs, f.prefill_seqs))
        return t, (e1 - p1 * t1) + self.tp * p1 * t

    def decode_stretch(self, batch: int, ctx_sum_tokens: float, max_ctx_tokens: float) -> StretchCost:
        """Closed-form decode stretch (the same transformation applied to the base's forward-pass lines)."""
        lt, le = self.base.gpu_decode_lines(batch, ctx_sum_tokens, max_ctx_tokens)
        p1 = self.base.idle_power_w
        ar = self.allreduce.iteration_s(self.base.profile.model, self.tp, batch)
        a = lt.a / self.tp + ar + self.base.host_s(batch)
        return StretchCost(a, lt.d / self.tp, le.a - p1 * lt.a, le.d - p1 * lt.d, self.tp * p1)


@dataclass(frozen=True, slots=True)
class RooflineCost:
    """The theoretical baseline: FLOPs at peak FLOP/s (optionally memory-bound), energy = time x TDP per GPU.

    Attributes:
        spec: the model.
        gpu: datasheet numbers (peak FLOP/s, HBM bandwidth, TDP, memory).
        tp: GPUs per replica (compute, bandwidth and TDP scale by tp; all-reduces added).
        memory_bound: use max(FLOPs / peak, bytes / bandwidth) instead of FLOPs / peak.
        gpu_memory_utilization: fraction of GPU memory the engine may use (weights + KV), as vLLM's setting.
        idle_power_w: replica idle power charged between iterations (the paper's baseline has none: 0).
        allreduce: the all-reduce model for tp > 1.
    """

    spec: ModelSpec
    gpu: GPUSpec
    tp: int = 1
    memory_bound: bool = False
    gpu_memory_utilization: float = 0.9
    idle_power_w: float = 0.0
    allreduce: AllReduce = AllReduce()

    modeled = False
    profile = None  # datasheet numbers, no calibrated profile
    uses_longest_context = False  # FLOPs and bytes read the summed context only

    def __post_init__(self) -> None:
        check_tp(self.spec, self.tp)
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization={self.gpu_memory_utilization} must be in (0, 1]")
        if self.kv_capacity_tokens <= 0:
            raise ValueError(f"{self.spec.name} weights ({self.spec.weight_bytes / 1e9:.1f} GB) leave no KV memory "
                             f"on {self.tp} x {self.gpu.name} at utilization {self.gpu_memory_utilization}")

    @property
    def name(self) -> str:
        """Cost model name."""
        return "roofline-memory" if self.memory_bound else "roofline"

    @property
    def kv_capacity_tokens(self) -> int:
        """(memory x utilization x tp - weights) / KV bytes per token."""
        free = self.gpu.memory_bytes * self.gpu_memory_utilization * self.tp - self.spec.weight_bytes
        return int(free // self.spec.kv_bytes_per_token)

    def _lines(self, flops: Line, kv_tokens: Line, new_tokens: float) -> tuple[Line, ...]:
        ar = self.allreduce.iteration_s(self.spec, self.tp, new_tokens)
        peak, bw = self.gpu.peak_flops * self.tp, self.gpu.hbm_bytes_per_s * self.tp
        compute = Line(flops.a / peak + ar, flops.d / peak)
        if not self.memory_bound:
            return (compute,)
        kvb = self.spec.kv_bytes_per_token
        memory = Line((self.spec.weight_bytes + kvb * kv_tokens.a) / bw + ar, kvb * kv_tokens.d / bw)
        return (compute, memory)

    def _flop_terms(self) -> tuple[float, float]:
        # FLOPs: per token through the weights, and per attended (query, key) pair (`ModelSpec.flops_per_token`)
        return self.spec.matmul_flops_per_token, self.spec.attn_flops_per_context_token

    def iteration_of(self, *features: int) -> tuple[float, float]:
        """`iteration` of the features one by one, in IterFeatures' order (the simulator's call)."""
        return self.iteration(IterFeatures(*features))

    def iteration(self, f: IterFeatures) -> tuple[float, float]:
        """(seconds, joules) of one iteration."""
        per_token, per_pair = self._flop_terms()
        flops = per_token * f.new_tokens + per_pair * (f.prefill_attn_pairs + f.decode_ctx_tokens + f.decode_seqs)
        kv_tokens = f.prefill_ctx_tokens + f.decode_ctx_tokens + f.new_tokens
        t = max(line.a for line in self._lines(Line(flops), Line(kv_tokens), f.new_tokens))
        return t, t * self.gpu.tdp_w * self.tp

    def decode_stretch(self, batch: int, ctx_sum_tokens: float, max_ctx_tokens: float) -> StretchCost:
        """Closed-form decode stretch: FLOPs and bytes grow linearly with the context (the longest one adds none)."""
        per_token, per_pair = self._flop_terms()
        flops = Line(per_token * batch + per_pair * (ctx_sum_tokens + batch), per_pair * batch)
        kv_tokens = Line(ctx_sum_tokens + batch, batch)
        compute, *memory = self._lines(flops, kv_tokens, batch)
        return StretchCost(compute.a, compute.d, 0.0, 0.0, self.gpu.tdp_w * self.tp, memory[0] if memory else None)

    def evaluate(self, new_tokens, **features) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised (seconds, joules) over feature arrays (names as FEATURES, plus prefill_ctx_tokens)."""
        per_token, per_pair = self._flop_terms()
        n = np.asarray(new_tokens, dtype=np.float64)
        get = {k: np.asarray(features.get(k, 0.0), dtype=np.float64)
               for k in ("prefill_attn_pairs", "decode_ctx_tokens", "decode_seqs", "prefill_ctx_tokens")}
        flops = per_token * n + per_pair * (get["prefill_attn_pairs"] + get["decode_ctx_tokens"] + get["decode_seqs"])
        ar = np.asarray([self.allreduce.iteration_s(self.spec, self.tp, x) for x in np.atleast_1d(n)]).reshape(n.shape)
        t = flops / (self.gpu.peak_flops * self.tp) + ar
        if self.memory_bound:
            kv = get["prefill_ctx_tokens"] + get["decode_ctx_tokens"] + n
            mem = (self.spec.weight_bytes + self.spec.kv_bytes_per_token * kv) / (self.gpu.hbm_bytes_per_s * self.tp)
            t = np.maximum(t, mem + ar)
        return t, t * self.gpu.tdp_w * self.tp


CostModel = CalibratedCost | ModeledTPCost | RooflineCost


def check_tp(spec: ModelSpec, tp: int) -> None:
    """Raise ValueError unless `tp` >= 1 divides the model's query and KV heads."""
    if tp < 1:
        raise ValueError(f"--tp {tp}: must be >= 1")
    if spec.n_heads % tp or spec.n_kv_heads % tp:
        raise ValueError(f"--tp {tp}: must divide the {spec.n_heads} query heads and {spec.n_kv_heads} KV heads "
                         f"of {spec.name}")


def shape_cost(model: CostModel, shape: IterationShape) -> tuple[float, float]:
    """(seconds, joules) of one IterationShape under any cost model."""
    return model.iteration(IterFeatures.of_shape(shape))
