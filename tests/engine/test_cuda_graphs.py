"""Decode steps replayed from CUDA graphs against the same engine run op by op (``enforce_eager``).

The GPU test uses the first model of tests/engine/gpu_models.py (smollm2-135m unless ROCMFORGE_TEST_MODEL). The
batch sizes are chosen to need padding rows (5 and 12 prompts against graphs of 8 and 16), whose K/V go to a
reserved block: if they touched a real sequence's cache, the greedy paths would part.
"""

from __future__ import annotations

import pytest

from rocmforge import LLM, EngineConfig, SamplingParams
from rocmforge.engine.cuda_graphs import capture_sizes, replayable
from rocmforge.engine.scheduler_output import ScheduledRequest
from tests.engine.gpu_models import gpu_test_models, resolve_test_model
from tests.engine.test_llm import PROMPTS


def test_capture_sizes_cover_every_batch_up_to_the_maximum() -> None:
    assert capture_sizes(1) == (1,)
    assert capture_sizes(64) == (1, 2, 4, 8, 16, 32, 48, 64)
    assert capture_sizes(40) == (1, 2, 4, 8, 16, 32, 40)
    for max_batch in (1, 3, 17, 64, 100):
        sizes = capture_sizes(max_batch)
        assert max(sizes) == max_batch
        assert all(any(s >= batch for s in sizes) for batch in range(1, max_batch + 1))


def _item(tokens: int, samples: bool = True, blocks: int = 2) -> ScheduledRequest:
    return ScheduledRequest("r", (7,) * tokens, 20, tuple(range(blocks)), tokens > 1, samples, SamplingParams())


def test_only_sampling_single_token_steps_replay_graphs() -> None:
    assert replayable([_item(1), _item(1)], max_batch=4, table_width=8)
    assert not replayable([], max_batch=4, table_width=8)
    assert not replayable([_item(1)] * 5, max_batch=4, table_width=8)  # more than the largest graph
    assert not replayable([_item(1), _item(3)], max_batch=4, table_width=8)  # a prefill chunk
    # A one-token chunk in the middle of a prompt samples nothing: replaying would hand the sampler its logits.
    assert not replayable([_item(1), _item(1, samples=False)], max_batch=4, table_width=8)
    assert not replayable([_item(1, blocks=9)], max_batch=4, table_width=8)  # longer than max_model_len's table


def test_cpu_engine_never_uses_graphs() -> None:
    from rocmforge.hub import resolve_model

    llm = LLM(resolve_model("smollm2-135m"), EngineConfig(device="cpu", max_num_seqs=4, num_kv_blocks=64))
    try:
        llm.generate(PROMPTS[:2], SamplingParams(max_tokens=4, temperature=0))
        assert llm.stats.num_steps > 0 and llm.stats.num_cuda_graph_steps == 0
    finally:
        llm.shutdown()


@pytest.mark.gpu
@pytest.mark.timeout(900)
@pytest.mark.parametrize("num_prompts", [5, 12])
def test_graph_decode_matches_eager_decode(num_prompts: int) -> None:
    path = resolve_test_model(gpu_test_models()[0])
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True, logprobs=0)
    prompts = PROMPTS[:num_prompts]
    runs = {}
    for eager in (True, False):
        config = EngineConfig(device="cuda", dtype="f32", max_num_seqs=16, max_model_len=512, enforce_eager=eager)
        llm = LLM(path, config)
        try:
            outputs = llm.generate(prompts, params)
            graph_steps = llm.stats.num_cuda_graph_steps
        finally:
            llm.shutdown()
        runs[eager] = [output.outputs[0] for output in outputs]
        # Eager: never; graphs: every pure-decode step (23 per request here, batched).
        assert (graph_steps == 0) if eager else (graph_steps >= 20), (eager, graph_steps)
    same = sum(a.token_ids == b.token_ids for a, b in zip(runs[True], runs[False], strict=True))
    worst = 0.0
    for eager_out, graph_out in zip(runs[True], runs[False], strict=True):
        assert eager_out.logprobs is not None and graph_out.logprobs is not None
        for a, b in zip(eager_out.logprobs, graph_out.logprobs, strict=True):
            if a.token_id == b.token_id:
                assert a.logprob is not None and b.logprob is not None
                worst = max(worst, abs(a.logprob - b.logprob))
    print(f"graphs vs eager ({num_prompts} prompts): {same} equal greedy runs, worst logprob gap {worst:.2e}")
    # float32 activations: the graphs run the same kernels at the padded batch size, so only the summation
    # order of batch-size-dependent matmul tiling differs.
    assert same == len(prompts)
    assert worst < 1e-3
