"""Scheduler: FCFS, token budget, chunked prefill, prefix hits, preemption by recompute, stops, aborts, forks."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rocmforge.engine.block_manager import BlockManager
from rocmforge.engine.request import Request, RequestStatus
from rocmforge.engine.scheduler import Scheduler
from rocmforge.engine.scheduler_output import ScheduledRequest
from rocmforge.errors import ConfigError, ValidationError
from rocmforge.sampling_params import SamplingParams
from tests.engine.factories import (
    BLOCK_SIZE,
    EOS,
    expected_outputs,
    fake_sample,
    make_request,
    make_scheduler,
    run_to_completion,
    step,
)
from tests.engine.test_block_manager import check_invariants


def scheduled_ids(scheduler: Scheduler) -> list[tuple[str, int]]:
    output, _ = step(scheduler)
    return [(item.request_id, item.num_tokens) for item in output.scheduled]


# ---------------------------------------------------------------------- order and budget


def test_first_come_first_served_and_prompts_chunked_to_the_budget() -> None:
    scheduler = make_scheduler(max_num_batched_tokens=8)
    for name in "abc":
        scheduler.add_request(make_request(name, prompt=8, max_tokens=5, start=ord(name) * 100))
    assert scheduled_ids(scheduler) == [("a", 8)]
    assert scheduled_ids(scheduler) == [("a", 1), ("b", 7)]  # a decodes, b's prompt takes the rest
    assert scheduled_ids(scheduler) == [("a", 1), ("b", 1), ("c", 6)]
    assert scheduler.num_running == 3 and scheduler.num_waiting == 0


def test_token_budget_is_filled_exactly_whenever_there_is_enough_work() -> None:
    scheduler = make_scheduler(num_blocks=256, max_num_batched_tokens=13, max_num_seqs=16)
    for index in range(10):
        scheduler.add_request(make_request(f"r{index}", prompt=5 + 3 * index, max_tokens=6, start=1000 * index))
    while scheduler.has_unfinished_requests():
        pending = sum(r.num_tokens - r.num_computed_tokens for r in scheduler.requests.values())
        output, _ = step(scheduler)
        assert output.num_batched_tokens == min(13, pending)


def test_max_num_seqs_caps_the_running_set() -> None:
    scheduler = make_scheduler(max_num_batched_tokens=100, max_num_seqs=2)
    for name in "abc":
        scheduler.add_request(make_request(name, prompt=4, max_tokens=2, start=ord(name) * 100))
    assert scheduled_ids(scheduler) == [("a", 4), ("b", 4)]
    assert scheduler.num_waiting == 1
    assert scheduled_ids(scheduler) == [("a", 1), ("b", 1)]  # both finish at max_tokens=2
    assert scheduled_ids(scheduler) == [("c", 4)]


def test_chunked_prefill_positions_are_contiguous_and_block_tables_grow() -> None:
    scheduler = make_scheduler(max_num_batched_tokens=8)
    request = make_request("a", prompt=20, max_tokens=2)
    scheduler.add_request(request)
    chunks = [step(scheduler)[0].scheduled[0] for _ in range(3)]
    assert [c.start_position for c in chunks] == [0, 8, 16]
    assert [c.num_tokens for c in chunks] == [8, 8, 4]
    assert [len(c.block_table) for c in chunks] == [2, 4, 5]
    for earlier, later in itertools.pairwise(chunks):
        assert later.block_table[: len(earlier.block_table)] == earlier.block_table
    assert [c.samples_token for c in chunks] == [False, False, True]
    assert all(c.is_prefill for c in chunks)
    assert sum((c.token_ids for c in chunks), ()) == request.prompt_token_ids
    decode = step(scheduler)[0].scheduled[0]
    assert (decode.start_position, decode.token_ids, decode.is_prefill) == (20, (request.output_token_ids[0],), False)
    assert decode.slot_mapping(BLOCK_SIZE) == [decode.block_table[5] * BLOCK_SIZE]
    assert not scheduler.has_unfinished_requests()


def test_decodes_and_a_prefill_chunk_share_one_step() -> None:
    scheduler = make_scheduler(max_num_batched_tokens=10)
    scheduler.add_request(make_request("a", prompt=6, max_tokens=8))
    step(scheduler)
    scheduler.add_request(make_request("b", prompt=30, max_tokens=2, start=500))
    output, updates = step(scheduler)
    a, b = output.scheduled
    assert (a.request_id, a.is_prefill, a.num_tokens, a.samples_token) == ("a", False, 1, True)
    assert (b.request_id, b.is_prefill, b.num_tokens, b.samples_token) == ("b", True, 9, False)
    assert b.slot_mapping(BLOCK_SIZE)[:4] == [b.block_table[0] * BLOCK_SIZE + i for i in range(4)]
    assert [u.request_id for u in updates] == ["a"]  # a chunk mid-prompt samples nothing


# ---------------------------------------------------------------------- prefix cache


def test_prefix_hit_skips_computed_tokens_and_shares_blocks() -> None:
    scheduler = make_scheduler()
    prompt = list(range(100, 118))  # four full blocks and two tokens
    scheduler.add_request(make_request("a", prompt, max_tokens=3))
    first = step(scheduler)[0].scheduled[0]
    scheduler.add_request(make_request("b", prompt, max_tokens=3))
    b = next(item for item in step(scheduler)[0].scheduled if item.request_id == "b")
    assert (b.start_position, b.num_tokens) == (16, 2)
    assert b.block_table[:4] == first.block_table[:4] and b.block_table[4] != first.block_table[4]
    assert scheduler.block_manager.prefix_cache_stats.num_hit_tokens == 16
    assert run_to_completion(scheduler)["b"] == expected_outputs(prompt, 3)[1:]


def test_a_whole_prompt_hit_still_recomputes_the_last_token() -> None:
    scheduler = make_scheduler()
    prompt = list(range(100, 116))  # exactly four blocks
    scheduler.add_request(make_request("a", prompt, max_tokens=1))
    step(scheduler)
    request = make_request("b", prompt, max_tokens=1)
    scheduler.add_request(request)
    item = step(scheduler)[0].scheduled[0]
    assert (item.start_position, item.num_tokens, item.samples_token) == (12, 4, True)
    assert request.num_cached_tokens == 12


# ---------------------------------------------------------------------- preemption


def test_preemption_frees_the_newest_which_resumes_first_with_identical_outputs() -> None:
    # Each request needs ceil((8 + 12 - 1) / 4) = 5 blocks; 7 blocks cannot hold two of them.
    scheduler = make_scheduler(num_blocks=7, max_num_batched_tokens=32, enable_prefix_caching=False)
    a, b = make_request("a", prompt=8, max_tokens=12), make_request("b", prompt=8, max_tokens=12, start=300)
    scheduler.add_request(a)
    scheduler.add_request(b)
    tokens: dict[str, list[int]] = {}
    preempted_at = None
    for index in range(100):
        output, updates = step(scheduler)
        for update in updates:
            tokens.setdefault(update.request_id, []).extend(update.new_token_ids)
        if output.preempted_request_ids and preempted_at is None:
            preempted_at = index
            assert output.preempted_request_ids == ("b",)
            assert [item.request_id for item in output.scheduled] == ["a"]
            assert b.status is RequestStatus.PREEMPTED and b.num_computed_tokens == 0
            scheduler.add_request(make_request("c", prompt=4, max_tokens=2, start=700))
            assert [r.request_id for r in scheduler.waiting] == ["b", "c"]  # never starved by later arrivals
        check_invariants(scheduler.block_manager)
        if not scheduler.has_unfinished_requests():
            break
    assert preempted_at is not None and b.num_preemptions >= 1
    assert tokens["a"] == expected_outputs(a.prompt_token_ids, 12)
    assert tokens["b"] == expected_outputs(b.prompt_token_ids, 12)  # recompute changed nothing
    assert b.status is RequestStatus.FINISHED_LENGTH and len(b.output_token_ids) == 12
    assert scheduler.block_manager.num_free_blocks == 7


def test_a_request_that_preempts_itself_stops_the_step() -> None:
    scheduler = make_scheduler(num_blocks=4, max_num_batched_tokens=64, enable_prefix_caching=False)
    scheduler.add_request(make_request("a", prompt=7, max_tokens=8))
    scheduler.add_request(make_request("b", prompt=7, max_tokens=8, start=300))
    run_to_completion(scheduler)
    check_invariants(scheduler.block_manager)
    assert scheduler.block_manager.num_free_blocks == 4


# ---------------------------------------------------------------------- stopping


def sample_eos_at(position: int):
    def sample(item: ScheduledRequest) -> int:
        return EOS if item.context_len - 1 == position else fake_sample(item)

    return sample


def test_stop_at_eos_unless_ignore_eos() -> None:
    scheduler = make_scheduler()
    scheduler.add_request(make_request("a", prompt=4, max_tokens=10))
    scheduler.add_request(make_request("b", prompt=4, max_tokens=10, start=300, ignore_eos=True))
    updates = [u for _ in range(4) for u in step(scheduler, sample_eos_at(5))[1]]
    finished = {u.request_id: u for u in updates if u.finished}
    assert finished["a"].finish_reason == "stop" and finished["a"].stop_token_id == EOS
    assert finished["a"].new_token_ids == (EOS,)
    assert "b" not in finished and scheduler.requests["b"].output_token_ids[2] == EOS
    assert scheduler.block_manager.num_used_blocks == len(scheduler.block_manager.block_table("b"))


def test_stop_token_ids_stop_even_with_ignore_eos() -> None:
    prompt = list(range(100, 104))
    stop_token = expected_outputs(prompt, 3)[2]
    scheduler = make_scheduler()
    request = make_request("a", prompt, max_tokens=10, stop_token_ids=[stop_token], ignore_eos=True)
    scheduler.add_request(request)
    assert run_to_completion(scheduler)["a"] == expected_outputs(prompt, 3)
    assert (request.status, request.stop_token_id) == (RequestStatus.FINISHED_STOPPED, stop_token)


def test_max_tokens_finishes_with_length_and_frees_blocks() -> None:
    scheduler = make_scheduler()
    request = make_request("a", prompt=5, max_tokens=7)
    scheduler.add_request(request)
    assert len(run_to_completion(scheduler)["a"]) == 7
    assert request.status.finish_reason == "length" and request.num_computed_tokens == 5 + 7 - 1
    assert scheduler.block_manager.num_free_blocks == scheduler.block_manager.num_blocks
    assert step(scheduler)[0].finished_request_ids == ("a",)


def test_min_tokens_suppresses_early_stops() -> None:
    scheduler = make_scheduler()
    params = SamplingParams(max_tokens=6, min_tokens=3)
    scheduler.add_request(Request("a", [5, 6, 7, 8], params, eos_token_ids=(EOS,)))
    tokens = [t for _ in range(6) for u in step(scheduler, lambda item: EOS)[1] for t in u.new_token_ids]
    assert tokens == [EOS] * 3  # EOS before min_tokens outputs exist is ignored; the third output may stop
    assert not scheduler.has_unfinished_requests()


def test_a_missing_sampled_token_is_rejected_before_anything_changes() -> None:
    scheduler = make_scheduler()
    scheduler.add_request(make_request("a", prompt=4))
    output = scheduler.schedule()
    with pytest.raises(ValidationError, match="no sampled token"):
        scheduler.update(output, {})
    assert scheduler.requests["a"].num_computed_tokens == 0
    assert scheduler.update(output, {"a": 7})[0].new_token_ids == (7,)


# ---------------------------------------------------------------------- aborts


def test_abort_waiting_and_running_frees_blocks_and_unknown_is_a_no_op() -> None:
    scheduler = make_scheduler(max_num_batched_tokens=8)
    scheduler.add_request(make_request("a", prompt=8))
    scheduler.add_request(make_request("b", prompt=8, start=300))
    step(scheduler)
    assert scheduler.block_manager.num_used_blocks == 2
    assert scheduler.abort("b") and scheduler.abort("a")
    assert scheduler.block_manager.num_free_blocks == scheduler.block_manager.num_blocks
    assert not scheduler.abort("a") and not scheduler.abort("never")
    assert not scheduler.has_unfinished_requests()
    output = scheduler.schedule()
    assert output.is_empty and set(output.finished_request_ids) == {"a", "b"}


def test_abort_between_schedule_and_update_is_skipped() -> None:
    scheduler = make_scheduler()
    scheduler.add_request(make_request("a", prompt=4))
    output = scheduler.schedule()
    assert scheduler.abort("a")
    assert scheduler.update(output, {"a": 1234}) == []
    check_invariants(scheduler.block_manager)
    assert scheduler.block_manager.num_free_blocks == scheduler.block_manager.num_blocks


# ---------------------------------------------------------------------- submission


def test_rejections_at_submission_name_the_numbers() -> None:
    scheduler = make_scheduler(num_blocks=4, max_model_len=64)
    with pytest.raises(ValidationError, match=r"60 tokens plus max_tokens=5 is 65 .* context length of 64"):
        scheduler.add_request(make_request("a", prompt=60, max_tokens=5))
    with pytest.raises(ValidationError, match=r"needs 5 KV cache blocks of 4 tokens, but the cache has only 4"):
        scheduler.add_request(make_request("b", prompt=10, max_tokens=8))
    scheduler.add_request(make_request("c", prompt=10, max_tokens=7))  # 16 tokens of KV: exactly 4 blocks
    with pytest.raises(ValidationError, match="already in use"):
        scheduler.add_request(make_request("c", prompt=3))
    assert scheduler.num_waiting == 1
    with pytest.raises(ValidationError, match="at least one token"):
        Request("d", [])


@pytest.mark.parametrize("field", ["max_num_batched_tokens", "max_num_seqs", "max_model_len"])
def test_invalid_configuration(field: str) -> None:
    values = {"max_num_batched_tokens": 8, "max_num_seqs": 2, "max_model_len": 64, field: 0}
    with pytest.raises(ConfigError, match=field):
        Scheduler(BlockManager(8), **values)


# ---------------------------------------------------------------------- hooks and forks


def test_logits_processors_are_carried_to_the_model_runner() -> None:
    def ban_token_zero(output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        return logits.index_fill(-1, torch.tensor([0]), float("-inf"))

    scheduler = make_scheduler()
    scheduler.add_request(Request("a", [5, 6, 7], SamplingParams(max_tokens=4), logits_processors=[ban_token_zero]))
    (item,) = scheduler.schedule().scheduled
    assert item.logits_processors == (ban_token_zero,)
    assert item.logits_processors[0]([], torch.zeros(3))[0] == float("-inf")


def test_fork_request_shares_full_blocks_copies_the_tail_and_recomputes_the_last_prompt_token() -> None:
    scheduler = make_scheduler()
    prompt = list(range(100, 110))  # two full blocks and two tokens
    scheduler.add_request(make_request("p", prompt, max_tokens=4))
    parent = step(scheduler)[0].scheduled[0]
    child = make_request("p-1", prompt, max_tokens=4)
    assert scheduler.fork_request("p", child)
    output, _ = step(scheduler)
    _, child_item = output.scheduled
    assert (child_item.start_position, child_item.token_ids, child_item.is_prefill) == (9, (109,), True)
    assert child_item.block_table[:2] == parent.block_table[:2]
    assert output.block_copies == ((parent.block_table[2], child_item.block_table[2]),)
    assert not scheduler.fork_request("missing", make_request("x", prompt))
    parent_request = scheduler.requests["p"]
    run_to_completion(scheduler)
    assert child.output_token_ids == parent_request.output_token_ids == expected_outputs(prompt, 4)
    check_invariants(scheduler.block_manager)
    assert scheduler.block_manager.num_free_blocks == scheduler.block_manager.num_blocks


# ---------------------------------------------------------------------- random workloads


PREFIXES = ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [1, 2, 3, 4, 9, 9, 9, 9, 9], [7] * 12)

workload_request = st.tuples(
    st.sampled_from(range(len(PREFIXES))),  # shared prefix
    st.integers(0, 12),  # its length
    st.lists(st.integers(20, 40), max_size=6),  # a private tail
    st.integers(1, 12),  # max_tokens
    st.integers(0, 6),  # arrival step
    st.none() | st.integers(0, 30),  # abort at this step
    st.booleans(),  # a stop token from the fake vocabulary
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=st.lists(workload_request, min_size=1, max_size=10),
    num_blocks=st.integers(3, 14),
    budget=st.integers(1, 24),
    max_num_seqs=st.integers(1, 5),
    prefix_caching=st.booleans(),
)
def test_random_workloads_finish_exactly_and_free_every_block(
    specs: list[tuple[int, int, list[int], int, int, int | None, bool]],
    num_blocks: int,
    budget: int,
    max_num_seqs: int,
    prefix_caching: bool,
) -> None:
    scheduler = make_scheduler(
        num_blocks,
        block_size=2,
        max_num_batched_tokens=budget,
        max_num_seqs=max_num_seqs,
        max_model_len=40,
        enable_prefix_caching=prefix_caching,
    )
    manager = scheduler.block_manager
    requests: dict[str, Request] = {}
    tokens: dict[str, list[int]] = {}
    kv: dict[tuple[int, int], tuple[int, ...]] = {}  # (block id, slot) -> the token prefix its KV encodes
    for step_index in range(3000):
        for index, (base, prefix_len, tail, max_tokens, arrival, _, with_stop) in enumerate(specs):
            prompt = PREFIXES[base][:prefix_len] + tail
            if arrival != step_index or not prompt:
                continue
            stop = [expected_outputs(prompt, 3)[-1]] if with_stop else []
            request = make_request(f"r{index}", prompt, max_tokens, stop_token_ids=stop)
            fits = len(prompt) + max_tokens <= 40 and -(-(len(prompt) + max_tokens - 1) // 2) <= num_blocks
            if not fits:
                with pytest.raises(ValidationError):
                    scheduler.add_request(request)
                continue
            scheduler.add_request(request)
            requests[request.request_id] = request
        for index, spec in enumerate(specs):
            if spec[5] == step_index and f"r{index}" in requests:
                was_live = f"r{index}" in scheduler.requests
                assert scheduler.abort(f"r{index}") == was_live
        output = scheduler.schedule()
        assert output.num_batched_tokens <= budget and len(output.scheduled) <= max_num_seqs
        for item in output.scheduled:
            all_ids = requests[item.request_id].all_token_ids
            for position in range(item.start_position):  # KV read: computed earlier, or a prefix hit
                slot = (item.block_table[position // 2], position % 2)
                assert kv.get(slot) == tuple(all_ids[: position + 1]), "wrong KV reused"
            for position in item.positions:
                assert manager._blocks[item.block_table[position // 2]].ref_count == 1, "write to a shared block"
                kv[item.block_table[position // 2], position % 2] = tuple(all_ids[: position + 1])
        sampled = {item.request_id: fake_sample(item) for item in output.scheduled if item.samples_token}
        for update in scheduler.update(output, sampled):
            tokens.setdefault(update.request_id, []).extend(update.new_token_ids)
        check_invariants(manager)
        if not scheduler.has_unfinished_requests() and step_index > 6:
            break
    else:
        raise AssertionError("a request starved: the workload did not finish")

    assert manager.num_free_blocks == num_blocks and not manager._requests
    for request_id, request in requests.items():
        expected = expected_outputs(
            request.prompt_token_ids, request.max_tokens, request.sampling_params.stop_token_ids.__contains__
        )
        assert request.is_finished
        assert tokens.get(request_id, []) == request.output_token_ids
        if request.status is RequestStatus.FINISHED_ABORTED:
            assert request.output_token_ids == expected[: len(request.output_token_ids)]
        else:
            assert request.output_token_ids == expected
            assert (request.status is RequestStatus.FINISHED_LENGTH) == (
                len(expected) == request.max_tokens and request.stop_token_id is None
            )
