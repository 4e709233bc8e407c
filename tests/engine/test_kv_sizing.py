"""KV cache sizing: an engine's cache fills its own share of the GPU (vLLM's ``gpu_memory_utilization``), so two
engines on one card coexist when their shares add up to at most 1, and an engine that cannot get a cache says so
when it starts instead of refusing every request later.

The GPU test uses the first model of tests/engine/gpu_models.py (smollm2-135m unless ROCMFORGE_TEST_MODEL).
"""

from __future__ import annotations

import pytest
import torch

from rocmforge import LLM, EngineConfig, SamplingParams
from rocmforge.engine.kv_sizing import gpu_kv_budget_bytes
from rocmforge.errors import ConfigError, EngineDeadError
from rocmforge.hub import resolve_model
from rocmforge.models.kv_cache import PagedKVCache
from tests.engine.gpu_models import gpu_test_models, resolve_test_model
from tests.engine.test_llm import PROMPTS

GiB = 2**30
CARD = 80 * GiB


def test_budget_is_the_share_less_the_engines_own_weights_and_activations() -> None:
    # Alone on the card (the CUDA context holds 0.5 GiB): 0.9 of 80 GiB, less 2 GiB of weights and 1 of activations.
    free = CARD - GiB // 2 - 2 * GiB
    assert gpu_kv_budget_bytes(CARD, free, 0.9, 2 * GiB, GiB) == int(CARD * 0.9) - 3 * GiB


def test_a_second_engine_gets_its_own_share_whatever_the_first_holds() -> None:
    # The first engine holds its whole share of 0.45 (weights, activations and cache); the second loads 2 GiB.
    first = int(CARD * 0.45)
    free = CARD - GiB // 2 - first - 2 * GiB
    assert gpu_kv_budget_bytes(CARD, free, 0.45, 2 * GiB, GiB) == int(CARD * 0.45) - 3 * GiB
    # Asking for 0.9 of the card when less than 0.55 of it was free: refused, naming the way out.
    with pytest.raises(ConfigError, match=r"were free when this engine started.*own share"):
        gpu_kv_budget_bytes(CARD, free, 0.9, 2 * GiB, GiB)


def test_a_share_smaller_than_the_weights_and_activations_is_refused() -> None:
    with pytest.raises(ConfigError, match="leaves no room for a KV cache"):
        gpu_kv_budget_bytes(CARD, CARD - GiB, 0.05, 3 * GiB, 2 * GiB)


def test_a_cpu_engine_whose_budget_holds_no_block_does_not_start() -> None:
    config = EngineConfig(device="cpu", dtype="f32", kv_cache_memory=1024, max_num_seqs=2)
    with pytest.raises(EngineDeadError, match=r"holds no block of .* raise kv_cache_memory"):
        LLM(resolve_model("smollm2-135m"), config)


@pytest.mark.gpu
@pytest.mark.timeout(600)
def test_two_engines_share_one_gpu_and_a_third_is_refused_its_share() -> None:
    path = resolve_test_model(gpu_test_models()[0])
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    # Enough sequences that the share, not max_num_seqs full-length sequences, bounds each cache; eager: no
    # graphs to capture for 1024 sequences.
    config = EngineConfig(device="cuda", dtype="f32", max_num_seqs=1024, enforce_eager=True, gpu_memory_utilization=0.4)
    total = torch.cuda.mem_get_info()[1]
    with LLM(path, config) as first, LLM(path, config) as second:
        outputs = [[o.outputs[0].token_ids for o in llm.generate(PROMPTS[:4], params)] for llm in (first, second)]
        assert outputs[0] == outputs[1]
        for llm in (first, second):
            core = llm.engine.core  # type: ignore[union-attr]
            per_block = PagedKVCache.bytes_per_block(core.model.config, config.block_size, core.model.dtype)
            cache_bytes = core.scheduler.block_manager.num_blocks * per_block
            # Each cache fills its engine's share less the weights and activations, not what the other left.
            assert 0.3 * total < cache_bytes < 0.4 * total
        with pytest.raises(EngineDeadError, match="were free when this engine started"):
            LLM(path, EngineConfig(device="cuda", dtype="f32", enforce_eager=True, gpu_memory_utilization=0.5))
