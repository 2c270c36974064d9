"""The calibration contract on CPU: build_runner / prepare / step / release, for both engines."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from tokenjoule.kernels.iteration import IterationRunner, build_runner  # noqa: E402
from tokenjoule.kernels.shape import IterationShape  # noqa: E402

MIXED = IterationShape(prefill=((20, 0), (7, 33)), decode=(5, 64, 17))


@pytest.mark.slow
def test_tokenjoule_runner_steps_a_mixed_shape_repeatably(tiny_spec):
    runner = build_runner(tiny_spec, device="cpu", max_num_seqs=8, max_num_batched_tokens=64)
    assert isinstance(runner, IterationRunner)
    assert (runner.engine, runner.mode, runner.device, runner.dtype) == ("tokenjoule", "eager", "cpu", "float32")
    bm = runner.runner.block_manager
    free = bm.num_free_blocks
    runner.prepare(MIXED)
    # blocks for 20, 40, 6, 65, 18 tokens: 2 + 3 + 1 + 5 + 2
    assert free - bm.num_free_blocks == 13
    before = bm.num_free_blocks
    runner.step()
    runner.step()
    assert bm.num_free_blocks == before  # step does not grow the sequences
    runner.release()
    assert bm.num_free_blocks == free
    runner.release()  # harmless twice


def test_tokenjoule_runner_rejects_what_cannot_fit(tiny_spec):
    runner = build_runner(tiny_spec, device="cpu", max_num_seqs=2, max_num_batched_tokens=64)
    with pytest.raises(ValueError, match="max_num_seqs"):
        runner.prepare(IterationShape(decode=(1, 2, 3)))
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        runner.prepare(IterationShape(prefill=((65, 0),)))
    with pytest.raises(ValueError, match="KV blocks"):
        runner.prepare(IterationShape(decode=(runner.kv_capacity_tokens, 5)))
    with pytest.raises(RuntimeError, match="prepare"):
        runner.step()


def test_build_runner_argument_errors(tiny_spec):
    with pytest.raises(ValueError, match="engine"):
        build_runner(tiny_spec, engine="vllm", device="cpu")
    with pytest.raises(ValueError, match="eager"):
        build_runner(tiny_spec, engine="hf", mode="cudagraph", device="cpu")
    with pytest.raises(ValueError, match="CUDA"):
        build_runner(tiny_spec, mode="cudagraph", device="cpu")


def test_hf_runner_uniform_shapes_only(tiny_spec):
    pytest.importorskip("transformers")
    runner = build_runner(tiny_spec, engine="hf", device="cpu")
    assert (runner.engine, runner.mode, runner.dtype) == ("hf", "eager", "float32")
    runner.prepare(IterationShape(prefill=((16, 0),) * 3))
    runner.step()
    runner.prepare(IterationShape(decode=(40,) * 2))
    runner.step()
    runner.step()
    for bad in (MIXED, IterationShape(prefill=((16, 4),)), IterationShape(prefill=((16, 0), (8, 0))),
                IterationShape(decode=(3, 4))):
        with pytest.raises(ValueError):
            runner.prepare(bad)
    runner.release()
