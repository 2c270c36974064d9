"""Scheduler and Engine on CPU: continuous batching, chunked prefill, preemption, static batching, timestamps.

The scheduler's tests need no torch; the engine's skip without it.
"""

from __future__ import annotations

import pytest

from tokenjoule.kernels.block_manager import BlockManager
from tokenjoule.kernels.scheduler import Scheduler
from tokenjoule.kernels.sequence import Sequence
from tokenjoule.kernels.shape import IterationShape


def seq(seq_id, prompt, out=4):
    return Sequence(seq_id=seq_id, token_ids=[1] * prompt, prompt_len=prompt, max_output_tokens=out)


def fake_run(batch):
    """Commit a plan as if it ran: every completing prefill and decode samples token 5."""
    for s, n in batch.prefill:
        s.commit(n, 5 if s.num_computed_tokens + n == s.num_tokens else None, 0.0)
    for s in batch.decode:
        s.commit(1, 5, 0.0)


def test_chunked_prefill_respects_token_budget_and_decodes_go_first():
    sched = Scheduler(BlockManager(100, 16), max_num_seqs=8, max_num_batched_tokens=32)
    a, b = seq(1, 50), seq(2, 10)
    sched.add(a)
    sched.add(b)
    plan = sched.schedule()
    assert plan.to_shape() == IterationShape(prefill=((32, 0),))
    fake_run(plan)
    plan = sched.schedule()
    assert plan.to_shape() == IterationShape(prefill=((18, 32), (10, 0)))
    fake_run(plan)
    plan = sched.schedule()  # both decode now; budget left for nothing else
    assert plan.to_shape() == IterationShape(decode=(50, 10))
    assert sched.block_manager.num_tokens(1) == 51


def test_preemption_when_cache_is_full():
    bm = BlockManager(4, 4)  # 3 usable blocks = 12 tokens
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=64)
    a, b = seq(1, 4, out=8), seq(2, 4, out=8)
    sched.add(a)
    sched.add(b)
    preempted, finished = False, []
    for _ in range(40):
        plan = sched.schedule()
        if plan.is_empty:
            break
        preempted |= b in sched.waiting
        held = sum(len(bm.block_table(s.seq_id)) for s in sched.running)
        assert held + bm.num_free_blocks == 3
        fake_run(plan)
        for s in list(sched.running):
            if s.is_finished:
                sched.finish(s)
                finished.append(s.seq_id)
    assert preempted, "b should have been preempted when a needed its block"
    assert finished == [1, 2] and a.num_output_tokens == b.num_output_tokens == 8
    assert bm.num_free_blocks == 3


def test_sequence_rejects_bad_lengths():
    with pytest.raises(ValueError, match="prompt_len"):
        Sequence(seq_id=1, token_ids=[], prompt_len=0, max_output_tokens=1)
    with pytest.raises(ValueError, match="max_output_tokens"):
        Sequence(seq_id=1, token_ids=[1], prompt_len=1, max_output_tokens=0)


def cpu_engine(tiny_spec, blocks=64, max_tokens=48):
    pytest.importorskip("torch")
    from tokenjoule.kernels.engine import Engine
    from tokenjoule.kernels.runner import RunnerConfig

    config = RunnerConfig(device="cpu", num_kv_blocks=blocks, max_num_batched_tokens=max_tokens, max_num_seqs=4,
                          decode_backend="torch", max_model_len=512)
    return Engine(tiny_spec, config, seed=1)


def test_engine_serves_requests_to_completion(tiny_spec):
    engine = cpu_engine(tiny_spec)
    for rid, (prompt, out) in enumerate([(30, 3), (70, 5), (5, 1), (12, 6), (40, 2)]):
        engine.add_request(rid, prompt, out)
    done = engine.run_until_done()
    assert sorted(r.request_id for r in done) == [0, 1, 2, 3, 4]
    for r in done:
        assert r.arrival_s <= r.first_token_s <= r.finish_s
    assert {r.request_id: r.output_tokens for r in done} == {0: 3, 1: 5, 2: 1, 3: 6, 4: 2}
    assert engine.runner.block_manager.num_free_blocks == 63


def test_engine_greedy_tokens_do_not_depend_on_batching(tiny_spec):
    prompt = list(range(3, 40))
    crowded = cpu_engine(tiny_spec, max_tokens=16)  # chunked prefill, sharing iterations with others
    crowded.add_request(1, 20, 6)
    crowded.add_request(0, len(prompt), 4, token_ids=prompt)
    crowded.add_request(2, 9, 3)
    seqs = {s.seq_id: s for s in crowded.scheduler.waiting}
    crowded.run_until_done()
    assert seqs[0].token_ids[len(prompt):] == alone_tokens(tiny_spec, prompt)


def alone_tokens(tiny_spec, prompt):
    engine = cpu_engine(tiny_spec)
    engine.add_request(0, len(prompt), 4, token_ids=prompt)
    (s,) = list(engine.scheduler.waiting)
    engine.run_until_done()
    return s.token_ids[len(prompt):]


def test_generate_static(tiny_spec):
    engine = cpu_engine(tiny_spec)
    done = engine.generate_static(prompt_tokens=10, output_tokens=3, batch=3)
    assert len(done) == 3 and all(r.output_tokens == 3 for r in done)
    assert len({r.finish_s for r in done}) == 1  # lockstep: all finish in the same iteration


def test_graph_buckets_and_mode_checks():
    pytest.importorskip("torch")
    from tokenjoule.kernels.runner import RunnerConfig, graph_buckets

    assert graph_buckets(64) == [1, 2, 4, 8, 16, 32, 48, 64]
    assert graph_buckets(1) == [1]
    with pytest.raises(ValueError, match="CUDA"):
        RunnerConfig(mode="cudagraph", device="cpu")
    with pytest.raises(ValueError, match="mode"):
        RunnerConfig(mode="fast")
