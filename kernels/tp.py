"""Tensor parallelism (Megatron-LM style): process groups, column/row-parallel linears, rank-0 command channel.

Each rank holds 1/tp of every block's attention heads (q and kv) and of its SwiGLU width. The fused QKV and
gate/up projections are column-parallel: each output segment (q, k, v or gate, up) is split into tp equal parts
and rank r keeps part r of each, so the local heads stay contiguous. `wo` and `w_down` are row-parallel and
end in an all-reduce: two all-reduces per layer (Shoeybi et al. 2019, "Megatron-LM", section 3). The LM head is
split over the vocabulary and its logits all-gathered; the embedding and the norms are replicated.

Weights are drawn full-size from the same seeded generator as the single-process model and sliced, so a TP model
holds exactly the shards of the single-process model's weights (see `Transformer.init_weights`).

NCCL carries the all-reduces on GPUs, gloo on CPUs (tests). NVLink multicast stays off: `init_tp` sets
`MULTICAST_OFF_ENV` before any communicator exists (it can take a shared host's GPUs out of service).
Rank 0 drives: it sends small int64 commands over a gloo group (`send_command`), the other ranks wait in
`recv_command` and then run the same work, so every collective lines up.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from tokenjoule.kernels.spec import ModelSpec

logger = logging.getLogger(__name__)

MULTICAST_OFF_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
DEFAULT_TIMEOUT_S = 1800.0  # workers wait for rank 0 through its idle windows and fits


def multicast_off_env(env: MutableMapping[str, str] | None = None) -> None:
    """Force NVLink multicast off in NCCL, PyTorch symmetric memory and NVSHMEM (overrides any other value)."""
    env = os.environ if env is None else env
    for name, value in MULTICAST_OFF_ENV.items():
        env[name] = value


@dataclass(frozen=True, slots=True)
class TPGroup:
    """One rank's place in a tensor-parallel group.

    Attributes:
        rank: this process's rank, 0 .. world_size - 1 (rank 0 drives).
        world_size: the tensor-parallel degree.
        group: process group of the model's collectives (NCCL on GPUs, gloo on CPUs); None means the default group.
        control: gloo process group rank 0's commands travel on (CPU tensors); None means `group`.
        local_rank: index of this rank's GPU among the visible ones.
    """

    rank: int
    world_size: int
    group: Any = None
    control: Any = None
    local_rank: int = 0

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank={self.rank} must be in [0, world_size={self.world_size})")

    @property
    def is_driver(self) -> bool:
        """Whether this rank drives (rank 0)."""
        return self.rank == 0

    @property
    def control_group(self) -> Any:
        """The group commands travel on."""
        return self.control if self.control is not None else self.group


def _env_int(name: str, value: int | None) -> int:
    if value is not None:
        return value
    try:
        return int(os.environ[name])
    except KeyError as err:
        raise RuntimeError(f"{name} is not set: launch with torchrun (or pass rank/world_size)") from err


def init_tp(backend: str | None = None, *, init_method: str = "env://", rank: int | None = None,
            world_size: int | None = None, local_rank: int | None = None,
            timeout_s: float = DEFAULT_TIMEOUT_S, store: Any = None) -> TPGroup:
    """Join (or reuse) the default process group and return this rank's TPGroup.

    Args:
        backend: "nccl" or "gloo"; None picks NCCL when CUDA is available, else gloo.
        init_method: torch.distributed rendezvous ("env://" under torchrun, "file://..." in tests).
        rank: this rank; None reads RANK.
        world_size: the group size; None reads WORLD_SIZE.
        local_rank: this rank's GPU; None reads LOCAL_RANK (default: rank).
        timeout_s: how long a collective may wait before failing.
        store: a torch.distributed Store to rendezvous on instead of `init_method`.

    Returns:
        The TPGroup (NCCL ranks also get a gloo control group and their GPU set as the current device).
    """
    multicast_off_env()
    timeout = timedelta(seconds=timeout_s)
    if not dist.is_initialized():
        rank, world_size = _env_int("RANK", rank), _env_int("WORLD_SIZE", world_size)
        local_rank = local_rank if local_rank is not None else int(os.environ.get("LOCAL_RANK", rank))
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        kwargs: dict[str, Any] = {}
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
            kwargs["device_id"] = torch.device("cuda", local_rank)  # eager communicator: ready before graph capture
        if store is not None:
            kwargs["store"] = store
        else:
            kwargs["init_method"] = init_method
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timeout, **kwargs)
    local_rank = local_rank if local_rank is not None else int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    control = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo", timeout=timeout)
    tp = TPGroup(rank=dist.get_rank(), world_size=dist.get_world_size(), group=dist.group.WORLD, control=control,
                 local_rank=local_rank)
    logger.info("tensor parallel: rank %d of %d (%s), local GPU %d", tp.rank, tp.world_size, dist.get_backend(),
                local_rank)
    return tp


def shutdown_tp() -> None:
    """Destroy the default process group (and every group made from it), if any."""
    if dist.is_initialized():
        dist.destroy_process_group()


def split_spec(spec: ModelSpec, world_size: int) -> ModelSpec:
    """The shape one rank holds: 1/world_size of the q heads, kv heads and SwiGLU width (ValueError if uneven)."""
    for field in ("n_heads", "n_kv_heads", "intermediate_size"):
        if getattr(spec, field) % world_size:
            raise ValueError(f"tensor parallel {world_size} must divide {spec.name} {field}={getattr(spec, field)}")
    return dataclasses.replace(spec, n_heads=spec.n_heads // world_size, n_kv_heads=spec.n_kv_heads // world_size,
                               intermediate_size=spec.intermediate_size // world_size)


class ShardedLinear(nn.Linear):
    """A linear layer holding one rank's shard; `full_shape`/`shard` say how its weights map to the full ones."""

    def full_shape(self, name: str) -> tuple[int, ...]:
        """Shape of the unsharded parameter `name` ("weight" or "bias")."""
        raise NotImplementedError

    def shard(self, full: torch.Tensor, name: str) -> torch.Tensor:
        """This rank's part of the unsharded parameter `name`."""
        raise NotImplementedError


class ColumnParallelLinear(ShardedLinear):
    """y = x W^T + b with W's output rows split over ranks, segment by segment.

    Args:
        in_features: input width (every rank sees all of it).
        segments: widths of the fused output's parts (e.g. q, k, v); each must divide by the world size.
        tp: the group.
        bias: whether there is a bias (sharded like the rows).
        gather_output: all-gather the output shards into the full width (the LM head); otherwise keep the shard.
        device: weight device.
        dtype: weight dtype.
    """

    def __init__(self, in_features: int, segments: Sequence[int], tp: TPGroup, *, bias: bool = False,
                 gather_output: bool = False, device=None, dtype=None) -> None:
        for width in segments:
            if width % tp.world_size:
                raise ValueError(f"tensor parallel {tp.world_size} must divide output width {width}")
        super().__init__(in_features, sum(segments) // tp.world_size, bias=bias, device=device, dtype=dtype)
        self.segments, self.tp, self.gather_output = tuple(segments), tp, gather_output

    def full_shape(self, name: str) -> tuple[int, ...]:  # noqa: D102
        return (sum(self.segments), self.in_features) if name == "weight" else (sum(self.segments),)

    def shard(self, full: torch.Tensor, name: str) -> torch.Tensor:  # noqa: D102
        parts = full.split(list(self.segments), dim=0)
        return torch.cat([p.chunk(self.tp.world_size, dim=0)[self.tp.rank] for p in parts], dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        y = F.linear(x, self.weight, self.bias)  # (T, out / tp)
        if not self.gather_output or self.tp.world_size == 1:
            return y
        ws, n, width = self.tp.world_size, y.shape[0], y.shape[-1]
        out = torch.empty(ws * n, width, device=y.device, dtype=y.dtype)  # (tp * T, out / tp), rank-major
        _all_gather_single(out, y.contiguous(), group=self.tp.group)
        return out.view(ws, n, width).transpose(0, 1).reshape(n, ws * width)  # (T, out)


class RowParallelLinear(ShardedLinear):
    """y = all_reduce(x_r W_r^T): the input columns are split over ranks, partial outputs summed. No bias.

    Args:
        in_features: full input width (each rank gets in_features / tp of it).
        out_features: output width.
        tp: the group.
        device: weight device.
        dtype: weight dtype.
    """

    def __init__(self, in_features: int, out_features: int, tp: TPGroup, *, device=None, dtype=None) -> None:
        if in_features % tp.world_size:
            raise ValueError(f"tensor parallel {tp.world_size} must divide input width {in_features}")
        super().__init__(in_features // tp.world_size, out_features, bias=False, device=device, dtype=dtype)
        self.tp = tp

    def full_shape(self, name: str) -> tuple[int, ...]:  # noqa: D102
        return (self.out_features, self.in_features * self.tp.world_size)

    def shard(self, full: torch.Tensor, name: str) -> torch.Tensor:  # noqa: D102
        return full.chunk(self.tp.world_size, dim=1)[self.tp.rank]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        y = F.linear(x, self.weight)  # (T, out): this rank's partial sum
        if self.tp.world_size > 1:
            dist.all_reduce(y, group=self.tp.group)
        return y


def _all_gather_single(out: torch.Tensor, x: torch.Tensor, group: Any) -> None:
    """All-gather into one tensor: torch >= 2.13 names it `all_gather_single`, older ones `all_gather_into_tensor`."""
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, x, group=group)


def parallel_block_linears(spec: ModelSpec, tp: TPGroup, device, dtype) -> tuple[nn.Module, ...]:
    """A block's (wqkv, wo, w_gate_up, w_down), sharded: column, row, column, row."""
    kw = dict(device=device, dtype=dtype)
    return (
        ColumnParallelLinear(spec.hidden_size, (spec.q_size, spec.kv_size, spec.kv_size), tp, bias=spec.qkv_bias,
                             **kw),
        RowParallelLinear(spec.q_size, spec.hidden_size, tp, **kw),
        ColumnParallelLinear(spec.hidden_size, (spec.intermediate_size, spec.intermediate_size), tp, **kw),
        RowParallelLinear(spec.intermediate_size, spec.hidden_size, tp, **kw),
    )


def parallel_lm_head(spec: ModelSpec, tp: TPGroup, device, dtype) -> nn.Module | None:
    """A vocabulary-parallel LM head, or None (keep it replicated) when tied or the vocabulary does not split."""
    if spec.tie_embeddings or spec.vocab_size % tp.world_size:
        return None
    return ColumnParallelLinear(spec.hidden_size, (spec.vocab_size,), tp, gather_output=True, device=device,
                                dtype=dtype)


# ---- rank 0's command channel --------------------------------------------------------------------------------------
def send_command(tp: TPGroup, code: int, payload: Sequence[int] = ()) -> None:
    """Rank 0: broadcast a command code and an int payload to the other ranks."""
    header = torch.tensor([code, len(payload)], dtype=torch.int64)
    dist.broadcast(header, src=0, group=tp.control_group)
    if payload:
        dist.broadcast(torch.tensor(list(payload), dtype=torch.int64), src=0, group=tp.control_group)


def recv_command(tp: TPGroup) -> tuple[int, list[int]]:
    """Other ranks: wait for rank 0's next command; returns (code, payload)."""
    header = torch.zeros(2, dtype=torch.int64)
    dist.broadcast(header, src=0, group=tp.control_group)
    code, n = (int(v) for v in header)
    if not n:
        return code, []
    payload = torch.zeros(n, dtype=torch.int64)
    dist.broadcast(payload, src=0, group=tp.control_group)
    return code, payload.tolist()


def agree_min(tp: TPGroup, value: int) -> int:
    """The smallest of every rank's `value` (e.g. KV blocks that fit on every GPU)."""
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=tp.control_group)
    return int(t.item())
