"""ModelRunner: turns a ScheduledBatch into tensors, runs the model (eager, CUDA graphs or compiled), samples.

CUDA graphs (as nano-vllm's `capture_cudagraph`): decode-only iterations replay a graph captured for the smallest
batch-size bucket >= the batch, over static input buffers; padded slots attend to nothing and write their K/V to
the scratch block 0. Prefill and mixed iterations run eagerly. Graphs are captured lazily, on first use.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from tokenjoule.kernels.block_manager import BlockManager, kv_capacity_blocks
from tokenjoule.kernels.decode_attention import precompile, triton_available
from tokenjoule.kernels.model import MOE_BACKENDS, MOE_ROUTINGS, AttentionMetadata, Transformer
from tokenjoule.kernels.scheduler import ScheduledBatch
from tokenjoule.kernels.shape import graph_buckets
from tokenjoule.kernels.spec import ModelSpec
from tokenjoule.kernels.tp import TPGroup, agree_min

logger = logging.getLogger(__name__)

MODES = ("eager", "cudagraph", "compile")
CPU_KV_BLOCKS = 1024
GiB = 1 << 30


def activation_reserve_bytes(spec: ModelSpec, max_num_batched_tokens: int, max_num_seqs: int) -> int:
    """Memory kept free for one iteration's activations: a few live (tokens x widest layer) buffers plus logits."""
    # an MoE layer holds k rows per token through its experts (gate/up, then down) beside the router's E logits
    moe_width = spec.n_experts_per_token * (2 * spec.moe_intermediate_size + spec.hidden_size) + spec.n_experts
    widest = max(2 * spec.intermediate_size, moe_width) + spec.q_size + 2 * spec.kv_size + 4 * spec.hidden_size
    return GiB + 2 * max_num_batched_tokens * widest * spec.dtype_bytes + 2 * max_num_seqs * spec.vocab_size * 4


@dataclass(frozen=True, slots=True)
class RunnerConfig:
    """How the runner is built.

    Attributes:
        mode: "eager", "cudagraph" or "compile".
        device: "cuda" or "cpu".
        gpu_memory_utilization: fraction of GPU memory the engine may use (weights + KV + activations).
        max_num_seqs: most sequences in one iteration (also the largest graph bucket).
        max_num_batched_tokens: most tokens in one iteration.
        max_model_len: longest sequence, in tokens (sets the static block-table width).
        block_size: tokens per KV block.
        seed: weight seed.
        decode_backend: "auto", "triton" or "torch" (see decode_attention).
        num_kv_blocks: force the cache size in blocks (None: from memory on GPU, CPU_KV_BLOCKS on CPU).
        moe_backend: how MoE layers run their experts: "auto", "grouped" (torch._grouped_mm) or "loop" (one GEMM
            pair per expert; it reads the expert counts on the host, so it cannot run in "cudagraph" mode).
        moe_routing: how MoE layers choose their experts: "balanced" (uniform, as a trained router's balanced loads;
            the default) or "computed" (the random router's own choice; see `kernels.model.MOE_ROUTINGS`).
    """

    mode: str = "eager"
    device: str = "cuda"
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 512
    max_num_batched_tokens: int = 16384
    max_model_len: int = 32768
    block_size: int = 16
    seed: int = 0
    decode_backend: str = "auto"
    num_kv_blocks: int | None = None
    moe_backend: str = "auto"
    moe_routing: str = "balanced"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r} must be one of {MODES}")
        if self.mode != "eager" and not self.device.startswith("cuda"):
            raise ValueError(f"mode={self.mode!r} needs a CUDA device, got device={self.device!r}")
        if self.moe_backend not in MOE_BACKENDS:
            raise ValueError(f"moe_backend={self.moe_backend!r} must be one of {MOE_BACKENDS}")
        if self.moe_routing not in MOE_ROUTINGS:
            raise ValueError(f"moe_routing={self.moe_routing!r} must be one of {MOE_ROUTINGS}")


class ModelRunner:
    """Owns the model, its paged KV cache and the captured graphs.

    Args:
        spec: the model shape.
        config: build options.
        tp: this rank's tensor-parallel group (every rank builds a runner and runs the same batches); None: no TP.
    """

    def __init__(self, spec: ModelSpec, config: RunnerConfig, tp: TPGroup | None = None) -> None:
        self.spec, self.config, self.tp = spec, config, tp
        self.device = torch.device(config.device)
        self.model = Transformer(spec, self.device, seed=config.seed, tp=tp, moe_backend=config.moe_backend,
                                 moe_routing=config.moe_routing,
                                 max_rows=config.max_num_batched_tokens + config.max_num_seqs)
        moe_backends = {layer.moe.backend for layer in self.model.layers if layer.moe is not None}
        if config.mode == "cudagraph" and "loop" in moe_backends:
            raise ValueError(f"{spec.name}: moe_backend='loop' reads expert counts on the host, which a CUDA graph "
                             "cannot capture; use moe_backend='grouped' or mode='eager'")
        self.model.decode_backend = config.decode_backend
        num_blocks = config.num_kv_blocks or self._blocks_from_memory()
        if tp is not None:
            num_blocks = agree_min(tp, num_blocks)  # every rank must hold the same blocks
        if num_blocks < 2:
            raise ValueError(f"no room for a KV cache: {num_blocks} blocks fit (raise gpu_memory_utilization?)")
        self.model.setup_kv_cache(num_blocks, config.block_size)
        if self.device.type == "cuda" and config.decode_backend != "torch" and triton_available(self.device):
            n = precompile(self.model.kv_cache[0], self.model.local_spec.n_heads, config.max_num_seqs)
            logger.info("decode attention: %d kernel variants compiled before serving", n)
        self.block_manager = BlockManager(num_blocks, config.block_size)
        self.max_blocks_per_seq = -(-config.max_model_len // config.block_size)
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._graph_pool = None
        self._static: dict[str, torch.Tensor] = {}
        self._compiled = torch.compile(self.model, dynamic=True) if config.mode == "compile" else None
        logger.info("runner: %s on %s, mode=%s, %d KV blocks of %d tokens", spec.name, self.device,
                    config.mode, num_blocks, config.block_size)

    @property
    def kv_capacity_tokens(self) -> int:
        """Tokens the KV cache holds (scratch block excluded)."""
        return self.block_manager.capacity_tokens

    def _blocks_from_memory(self) -> int:
        if self.device.type != "cuda":
            return CPU_KV_BLOCKS
        torch.cuda.synchronize(self.device)
        free_bytes, total_bytes = torch.cuda.mem_get_info(self.device)
        local = self.model.local_spec  # this rank's KV heads and widths under TP
        bytes_per_block = local.kv_bytes_per_token * self.config.block_size
        reserve = activation_reserve_bytes(local, self.config.max_num_batched_tokens, self.config.max_num_seqs)
        return kv_capacity_blocks(total_bytes, total_bytes - free_bytes, self.config.gpu_memory_utilization,
                                  reserve, bytes_per_block)

    # ---- metadata ------------------------------------------------------------------------------------------------
    def _slots(self, seq_id: int, start: int, stop: int) -> torch.Tensor:
        """Flat cache slots of token positions [start, stop) of a sequence, (stop - start,) int64 on the CPU."""
        table = torch.tensor(self.block_manager.block_table(seq_id), dtype=torch.int64)
        pos = torch.arange(start, stop, dtype=torch.int64)
        return table[pos // self.config.block_size] * self.config.block_size + pos % self.config.block_size

    def prepare_inputs(self, batch: ScheduledBatch):
        """Pack a plan into (input_ids, positions, AttentionMetadata), all on the runner's device."""
        ids, pos, slots, kv_slots, q_lens, k_lens, logit_rows = [], [], [], [], [], [], []
        any_context = False
        row = 0
        for seq, n in batch.prefill:
            start = seq.num_computed_tokens
            ids.append(torch.tensor(seq.token_ids[start:start + n], dtype=torch.int64))
            pos.append(torch.arange(start, start + n, dtype=torch.int64))
            slots.append(self._slots(seq.seq_id, start, start + n))
            kv_slots.append(self._slots(seq.seq_id, 0, start + n))
            any_context |= start > 0
            q_lens.append(n)
            k_lens.append(start + n)
            row += n
            if start + n == seq.num_tokens:  # the chunk ends the uncached tokens: its last row samples
                logit_rows.append(row - 1)
        decode = self._decode_rows(batch.decode, None) if batch.decode else None
        if decode is not None:
            ids.append(decode["input_ids"])
            pos.append(decode["positions"])
            slots.append(decode["slot_mapping"])
            logit_rows.extend(range(row, row + len(batch.decode)))
        dev = self.device
        meta = AttentionMetadata(
            slot_mapping=torch.cat(slots).to(dev),
            n_prefill_tokens=sum(q_lens),
            prefill_q_lens=tuple(q_lens),
            prefill_k_lens=tuple(k_lens),
            cu_seqlens_q=_cumsum(q_lens, dev) if q_lens else None,
            cu_seqlens_k=_cumsum(k_lens, dev) if q_lens else None,
            prefill_kv_slots=torch.cat(kv_slots).to(dev) if any_context else None,
            block_tables=decode["block_tables"].to(dev) if decode else None,
            context_lens=decode["context_lens"].to(dev) if decode else None,
            logits_indices=torch.tensor(logit_rows, dtype=torch.int64).to(dev),
        )
        return torch.cat(ids).to(dev), torch.cat(pos).to(dev), meta

    def _decode_rows(self, seqs, width: int | None) -> dict[str, torch.Tensor]:
        """CPU tensors for decode rows, built from plain lists (this runs every iteration: keep it cheap)."""
        bm = self.block_manager
        positions = [s.num_tokens - 1 for s in seqs]
        views = [bm.block_table_view(s.seq_id) for s in seqs]
        tables = np.zeros((len(seqs), width or max(len(v) for v in views)), dtype=np.int32)
        for i, view in enumerate(views):
            tables[i, : len(view)] = view
        return {
            "input_ids": torch.tensor([s.token_ids[-1] for s in seqs], dtype=torch.int64),
            "positions": torch.tensor(positions, dtype=torch.int64),
            "slot_mapping": torch.tensor([bm.slot(s.seq_id, p) for s, p in zip(seqs, positions, strict=True)],
                                         dtype=torch.int64),
            "context_lens": torch.tensor([p + 1 for p in positions], dtype=torch.int32),
            "block_tables": torch.from_numpy(tables),
        }

    # ---- execution -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, batch: ScheduledBatch) -> list[int]:
        """Execute one iteration and sample greedily.

        Returns:
            The sampled token of every row that produces one: completing prefill chunks (in plan order), then each
            decode sequence.
        """
        if batch.is_empty:
            return []
        return self.execute(batch).argmax(dim=-1).tolist()

    @torch.no_grad()
    def execute(self, batch: ScheduledBatch) -> torch.Tensor:
        """Execute one non-empty iteration; returns the sampling rows' logits, (N, vocab) float32, in `run`'s order."""
        if not batch.prefill and self.config.mode == "cudagraph" and len(batch.decode) <= self.config.max_num_seqs:
            logits = self._run_graph(batch)
        else:
            input_ids, positions, meta = self.prepare_inputs(batch)
            model = self._compiled if (self._compiled is not None and not batch.prefill) else self.model
            logits = model(input_ids, positions, meta)
        return logits

    def _run_graph(self, batch: ScheduledBatch) -> torch.Tensor:
        n = len(batch.decode)
        bucket = next(b for b in graph_buckets(self.config.max_num_seqs) if b >= n)
        graph, logits = self._graphs.get(bucket) or self._capture(bucket)
        st = self._static
        rows = self._decode_rows(batch.decode, None)
        for name, value in rows.items():
            if name == "block_tables":
                st[name][:n, : value.shape[1]].copy_(value)
                st[name][:n, value.shape[1]:].zero_()
            else:
                st[name][:n].copy_(value)
        for name in ("input_ids", "positions", "slot_mapping", "context_lens"):
            st[name][n:bucket].zero_()  # padded rows: attend to nothing, write into scratch block 0
        graph.replay()
        return logits[:n]

    def _static_meta(self, bucket: int) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        if not self._static:
            size, dev = self.config.max_num_seqs, self.device
            self._static = {
                "input_ids": torch.zeros(size, dtype=torch.int64, device=dev),
                "positions": torch.zeros(size, dtype=torch.int64, device=dev),
                "slot_mapping": torch.zeros(size, dtype=torch.int64, device=dev),
                "context_lens": torch.zeros(size, dtype=torch.int32, device=dev),
                "block_tables": torch.zeros(size, self.max_blocks_per_seq, dtype=torch.int32, device=dev),
                "logits_indices": torch.arange(size, dtype=torch.int64, device=dev),
            }
        st = self._static
        meta = AttentionMetadata(
            slot_mapping=st["slot_mapping"][:bucket], n_prefill_tokens=0, prefill_q_lens=(), prefill_k_lens=(),
            cu_seqlens_q=None, cu_seqlens_k=None, prefill_kv_slots=None,
            block_tables=st["block_tables"][:bucket], context_lens=st["context_lens"][:bucket],
            logits_indices=st["logits_indices"][:bucket],
        )
        return st["input_ids"][:bucket], st["positions"][:bucket], meta

    def _capture(self, bucket: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        input_ids, positions, meta = self._static_meta(bucket)
        self._static["context_lens"][:bucket].fill_(1)
        torch.cuda.synchronize(self.device)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            self.model(input_ids, positions, meta)  # warm-up: Triton compiles outside the capture
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._graph_pool):
            logits = self.model(input_ids, positions, meta)
        self._graph_pool = graph.pool()
        self._graphs[bucket] = (graph, logits)
        torch.cuda.synchronize(self.device)
        logger.info("captured decode CUDA graph for batch bucket %d (%d graphs)", bucket, len(self._graphs))
        return graph, logits


def _cumsum(lengths: list[int], device) -> torch.Tensor:
    out = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    out[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int32), 0)
    return out.to(device)
