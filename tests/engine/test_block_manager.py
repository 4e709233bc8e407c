"""BlockManager: prefix hits, exact confirmation of hash hits, LRU eviction, growth, fork, errors, invariants."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from rocmforge.engine import block_manager as block_manager_module
from rocmforge.engine.block_manager import BlockManager, UnknownRequestError
from rocmforge.engine.kv_block import BlockHash
from rocmforge.errors import ConfigError, ValidationError

BLOCK_SIZE = 4


def make_manager(
    num_blocks: int = 16, block_size: int = BLOCK_SIZE, enable_prefix_caching: bool = True
) -> BlockManager:
    return BlockManager(num_blocks, block_size=block_size, enable_prefix_caching=enable_prefix_caching)


def prompt(num_tokens: int, start: int = 100) -> list[int]:
    return list(range(start, start + num_tokens))


def run_prefill(manager: BlockManager, request_id: str, token_ids: Sequence[int]) -> list[int]:
    """Allocate a whole prompt and commit it as if one step computed its KV."""
    block_table = manager.allocate(request_id, token_ids, len(token_ids))
    assert block_table is not None
    manager.commit_full_blocks(request_id, token_ids, len(token_ids))
    return block_table


def check_invariants(manager: BlockManager) -> None:
    """Everything the accounting promises, read from the manager's own structures."""
    free_ids = [block.block_id for block in manager._free]
    assert len(free_ids) == len(set(free_ids)) == manager.num_free_blocks
    holders = Counter(block.block_id for state in manager._requests.values() for block in state.blocks)
    for state in manager._requests.values():
        ids = [block.block_id for block in state.blocks]
        assert len(ids) == len(set(ids)), "a block appears twice in one block table"
    for block in manager._blocks:
        assert block.ref_count >= 0
        assert block.ref_count == holders[block.block_id], "ref count differs from the tables that hold the block"
        assert (block.ref_count == 0) == (block.block_id in set(free_ids))
    assert manager.num_free_blocks + len(holders) == manager.num_blocks
    assert manager.usage == pytest.approx(len(holders) / manager.num_blocks)
    for block_hash, block in manager._cached.items():
        assert block.block_hash == block_hash and block.content_id is not None
        assert len(block.token_ids) == manager.block_size


def snapshot(manager: BlockManager) -> tuple[object, ...]:
    return (
        [block.block_id for block in manager._free],
        [(b.ref_count, b.block_hash, b.content_id) for b in manager._blocks],
        {rid: manager.block_table(rid) for rid in manager._requests},
        dict(manager._cached),
        manager.prefix_cache_stats,
    )


# ---------------------------------------------------------------------- prefix hits


def test_second_identical_prompt_hits_full_blocks_but_never_the_partial_one() -> None:
    manager = make_manager()
    tokens = prompt(10)  # two full blocks and a partial one
    table_a = run_prefill(manager, "a", tokens)
    assert manager.find_cached_prefix(tokens) == (table_a[:2], 8)
    table_b = manager.allocate("b", tokens, len(tokens))
    assert table_b is not None
    assert table_b[:2] == table_a[:2] and table_b[2] != table_a[2]
    assert manager.num_cached_tokens("b") == 8
    assert manager.num_cached_tokens("a") == 0
    check_invariants(manager)


def test_last_prompt_token_is_always_recomputed() -> None:
    manager = make_manager()
    tokens = prompt(12)  # exactly three full blocks
    table_a = run_prefill(manager, "a", tokens)
    assert manager.find_cached_prefix(tokens) == (table_a[:2], 8)
    assert manager.find_cached_prefix([*tokens, 7]) == (table_a, 12)
    assert manager.find_cached_prefix(tokens[:1]) == ([], 0)
    assert manager.find_cached_prefix([]) == ([], 0)


def test_shared_prefix_then_divergence() -> None:
    manager = make_manager()
    table_a = run_prefill(manager, "a", prompt(9))
    other = prompt(4) + prompt(5, start=500)
    assert manager.find_cached_prefix(other) == (table_a[:1], 4)


def test_blocks_are_not_hit_before_their_kv_is_committed() -> None:
    manager = make_manager()
    tokens = prompt(10)
    assert manager.allocate("a", tokens, len(tokens)) is not None
    assert manager.find_cached_prefix(tokens) == ([], 0)
    manager.commit_full_blocks("a", tokens, 4)
    assert manager.find_cached_prefix(tokens) == (manager.block_table("a")[:1], 4)


def test_prefix_caching_disabled_never_hits() -> None:
    manager = make_manager(enable_prefix_caching=False)
    tokens = prompt(10)
    run_prefill(manager, "a", tokens)
    assert manager.find_cached_prefix(tokens) == ([], 0)
    assert manager.allocate("b", tokens, len(tokens)) is not None
    assert manager.num_cached_tokens("b") == 0
    assert manager.prefix_cache_stats.num_queries == 0


# ---------------------------------------------------------------------- collisions


def test_hash_collision_never_yields_other_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(block_manager_module, "hash_block_tokens", lambda parent, tokens: b"collide")
    manager = make_manager()
    table_a = run_prefill(manager, "a", prompt(9))
    assert manager.find_cached_prefix(prompt(9, start=300)) == ([], 0)
    # Every block collides with the first one: only the true first block may hit.
    assert manager.find_cached_prefix(prompt(9)) == (table_a[:1], 4)
    check_invariants(manager)


def test_collision_confirmed_against_the_whole_prefix_not_just_the_block(monkeypatch: pytest.MonkeyPatch) -> None:
    # A hash that ignores the parent: the same block tokens after different prefixes collide.
    def tokens_only(parent: BlockHash | None, tokens: Sequence[int]) -> BlockHash:
        return hashlib.sha256(repr(tuple(tokens)).encode()).digest()

    monkeypatch.setattr(block_manager_module, "hash_block_tokens", tokens_only)
    manager = make_manager()
    shared_tail = prompt(4, start=900)
    run_prefill(manager, "a", prompt(4, start=100) + shared_tail + [1])
    manager.free("a")
    table_b = run_prefill(manager, "b", prompt(4, start=200) + shared_tail + [1])
    # b's first block hits; its second has the same tokens as a's but sits on another prefix: a miss.
    assert manager.find_cached_prefix(prompt(4, start=200) + shared_tail + [2]) == (table_b[:1], 4)
    check_invariants(manager)


# ---------------------------------------------------------------------- free queue


def test_freed_uncached_blocks_are_reused_before_cached_ones_and_deepest_cached_first() -> None:
    manager = make_manager(num_blocks=3)
    tokens = prompt(9)
    table_a = run_prefill(manager, "a", tokens)  # blocks 0, 1 cached; block 2 partial
    manager.free("a")
    assert [block.block_id for block in manager._free] == [table_a[2], table_a[1], table_a[0]]
    assert manager.allocate("c", prompt(1, start=0), 1) == [table_a[2]]
    assert manager.find_cached_prefix(tokens) == (table_a[:2], 8)
    assert manager.allocate("d", prompt(1, start=0), 1) == [table_a[1]]
    assert manager.find_cached_prefix(tokens) == (table_a[:1], 4)
    check_invariants(manager)


def test_least_recently_freed_content_is_evicted_first() -> None:
    manager = make_manager(num_blocks=4)
    first, second = prompt(5, start=100), prompt(5, start=200)
    table_first = run_prefill(manager, "first", first)
    table_second = run_prefill(manager, "second", second)
    manager.free("first")
    manager.free("second")
    # Partials go first, then the first-freed cached block.
    assert manager.allocate("x", prompt(12, start=0), 12) == [table_second[1], table_first[1], table_first[0]]
    assert manager.find_cached_prefix(first) == ([], 0)
    assert manager.find_cached_prefix(second) == (table_second[:1], 4)


def test_freed_cached_block_is_revived_by_a_hit() -> None:
    manager = make_manager(num_blocks=8)
    tokens = prompt(10)
    table_a = run_prefill(manager, "a", tokens)
    manager.free("a")
    assert manager.num_free_blocks == 8
    table_b = manager.allocate("b", tokens, len(tokens))
    assert table_b is not None and table_b[:2] == table_a[:2]
    assert manager.num_free_blocks == 5
    assert all(manager._blocks[i].ref_count == 1 for i in table_b)
    check_invariants(manager)


def test_allocation_failure_returns_none_and_changes_nothing() -> None:
    manager = make_manager(num_blocks=4)
    tokens = prompt(9)
    run_prefill(manager, "a", tokens)
    manager.free("a")
    run_prefill(manager, "b", prompt(2, start=0))
    before = snapshot(manager)
    # Needs 2 revived hits + 2 new blocks, but only 3 are free.
    assert manager.allocate("c", tokens + prompt(4, start=50), 13) is None
    assert snapshot(manager) == before
    assert "c" not in manager
    assert manager.allocate("b", prompt(20, start=0), 20) is None
    assert snapshot(manager) == before
    check_invariants(manager)


# ---------------------------------------------------------------------- growth


def test_decode_grows_across_a_block_boundary() -> None:
    manager = make_manager()
    tokens = prompt(3)
    table = manager.allocate("a", tokens, 3)
    assert table is not None and len(table) == 1
    for num_tokens in (4, 5):
        tokens.append(num_tokens)
        grown = manager.allocate("a", tokens, num_tokens)
        assert grown is not None and grown[:1] == table
    assert len(manager.block_table("a")) == 2
    check_invariants(manager)


def test_chunked_prefill_allocates_and_commits_chunk_by_chunk() -> None:
    manager = make_manager()
    tokens = prompt(20)
    for num_tokens, num_blocks in ((6, 2), (12, 3), (18, 5), (20, 5)):
        table = manager.allocate("a", tokens, num_tokens)
        assert table is not None and len(table) == num_blocks
        manager.commit_full_blocks("a", tokens, num_tokens)
        num_hit_blocks = min(num_tokens // BLOCK_SIZE, (len(tokens) - 1) // BLOCK_SIZE)
        assert manager.find_cached_prefix(tokens)[1] == num_hit_blocks * BLOCK_SIZE
    check_invariants(manager)


# ---------------------------------------------------------------------- fork


def test_fork_shares_full_blocks_and_copies_the_partial_tail() -> None:
    manager = make_manager(num_blocks=8)
    tokens = prompt(10)
    table_a = run_prefill(manager, "a", tokens)
    copies = manager.fork("a", "a.1", 10)
    table_child = manager.block_table("a.1")
    assert table_child[:2] == table_a[:2] and table_child[2] not in table_a
    assert copies == [(table_a[2], table_child[2])]
    assert [manager._blocks[i].ref_count for i in table_a] == [2, 2, 1]
    # The child decodes on its own.
    assert manager.allocate("a.1", [*tokens, 1, 2, 3], 13) is not None
    check_invariants(manager)
    manager.free("a")
    manager.free("a.1")
    assert manager.num_free_blocks == 8
    check_invariants(manager)


def test_fork_on_a_block_boundary_copies_nothing() -> None:
    manager = make_manager()
    table_a = run_prefill(manager, "a", prompt(8))
    assert manager.fork("a", "a.1", 8) == []
    assert manager.block_table("a.1") == table_a


def test_fork_without_a_free_block_returns_none_and_changes_nothing() -> None:
    manager = make_manager(num_blocks=3)
    run_prefill(manager, "a", prompt(10))
    before = snapshot(manager)
    assert manager.fork("a", "a.1", 10) is None
    assert snapshot(manager) == before


# ---------------------------------------------------------------------- usage, stats, reset


def test_usage_and_stats() -> None:
    manager = make_manager(num_blocks=10)
    assert manager.usage == 0.0
    tokens = prompt(10)
    run_prefill(manager, "a", tokens)
    assert manager.usage == pytest.approx(0.3)
    assert manager.allocate("b", tokens, 10) is not None
    assert manager.usage == pytest.approx(0.4)
    stats = manager.prefix_cache_stats
    assert (stats.num_queries, stats.num_query_tokens, stats.num_hit_tokens) == (2, 20, 8)
    assert stats.hit_rate == pytest.approx(0.4)


def test_reset_prefix_cache_forgets_content_and_keeps_requests_consistent() -> None:
    manager = make_manager()
    tokens = prompt(13)
    assert manager.allocate("a", tokens, 13) is not None
    manager.commit_full_blocks("a", tokens, 4)
    manager.reset_prefix_cache()
    assert manager.find_cached_prefix(tokens) == ([], 0)
    manager.commit_full_blocks("a", tokens, 13)
    # The blocks committed after the reset hang off an unindexed parent: unreachable, never a false root.
    assert manager.find_cached_prefix(tokens) == ([], 0)
    assert manager.find_cached_prefix(tokens[4:]) == ([], 0)
    manager.free("a")
    check_invariants(manager)


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize(("num_blocks", "block_size"), [(0, 16), (-1, 16), (4, 0), (4, True), (2.5, 16)])
def test_invalid_configuration(num_blocks: object, block_size: object) -> None:
    with pytest.raises(ConfigError, match="must be a positive integer"):
        BlockManager(num_blocks, block_size=block_size)  # type: ignore[arg-type]


def test_invalid_arguments_and_unknown_requests() -> None:
    manager = make_manager()
    with pytest.raises(ValidationError, match="num_tokens"):
        manager.allocate("a", prompt(3), 0)
    with pytest.raises(ValidationError, match="exceeds"):
        manager.allocate("a", prompt(3), 4)
    run_prefill(manager, "a", prompt(6))
    with pytest.raises(ValidationError, match="num_computed_tokens"):
        manager.commit_full_blocks("a", prompt(20), 9)
    with pytest.raises(ValidationError, match="already holds blocks"):
        manager.fork("a", "a", 4)
    with pytest.raises(ValidationError, match="num_tokens"):
        manager.fork("a", "a.1", 9)
    for call in (
        lambda: manager.block_table("zzz"),
        lambda: manager.num_cached_tokens("zzz"),
        lambda: manager.commit_full_blocks("zzz", prompt(3), 3),
        lambda: manager.fork("zzz", "child", 1),
    ):
        with pytest.raises(UnknownRequestError, match="'zzz'"):
            call()
    manager.free("a")
    with pytest.raises(UnknownRequestError, match="already freed"):
        manager.free("a")
    check_invariants(manager)


# ---------------------------------------------------------------------- random workloads


class BlockManagerMachine(RuleBasedStateMachine):
    """Random allocate / grow / commit / fork / free workloads over prompts that share prefixes.

    Besides the accounting invariants it simulates the KV itself: every slot records the token prefix its
    KV was computed from, and every prefix hit must read slots computed from exactly the request's prefix.
    Writes must only ever land in blocks the writer holds alone.
    """

    BASES = ([1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3], [1, 2, 3, 1, 0, 0, 0, 0, 2, 2], [0, 1, 0, 1, 0, 1, 0, 1])

    def __init__(self) -> None:
        super().__init__()
        self.manager = BlockManager(num_blocks=12, block_size=2)
        self.token_ids: dict[str, list[int]] = {}
        self.num_computed: dict[str, int] = {}
        self.kv: dict[tuple[int, int], tuple[int, ...]] = {}  # (block id, slot) -> prefix its KV encodes
        self.freed: list[str] = []
        self.next_id = 0

    def _new_id(self) -> str:
        self.next_id += 1
        return f"r{self.next_id}"

    def _compute(self, request_id: str, num_tokens: int) -> None:
        """Run a step: write KV for tokens num_computed..num_tokens, then commit."""
        tokens = self.token_ids[request_id]
        table = self.manager.block_table(request_id)
        block_size = self.manager.block_size
        for position in range(self.num_computed[request_id], num_tokens):
            block = self.manager._blocks[table[position // block_size]]
            assert block.ref_count == 1, "a request wrote KV into a shared block"
            self.kv[block.block_id, position % block_size] = tuple(tokens[: position + 1])
        self.num_computed[request_id] = num_tokens
        self.manager.commit_full_blocks(request_id, tokens, num_tokens)

    def _check_kv(self, request_id: str, num_tokens: int) -> None:
        tokens = self.token_ids[request_id]
        table = self.manager.block_table(request_id)
        block_size = self.manager.block_size
        for position in range(num_tokens):
            key = (table[position // block_size], position % block_size)
            assert self.kv.get(key) == tuple(tokens[: position + 1]), f"wrong KV reused at position {position}"

    @rule(
        base=st.sampled_from(range(len(BASES))),
        prefix_len=st.integers(0, 12),
        tail=st.lists(st.integers(0, 3), max_size=6),
        chunk=st.integers(1, 16),
    )
    def add_request(self, base: int, prefix_len: int, tail: list[int], chunk: int) -> None:
        tokens = self.BASES[base][:prefix_len] + tail
        if not tokens:
            return
        request_id = self._new_id()
        hit_ids, num_hit_tokens = self.manager.find_cached_prefix(tokens)
        assert num_hit_tokens < len(tokens)
        num_tokens = min(len(tokens), num_hit_tokens + chunk)
        before = snapshot(self.manager)
        table = self.manager.allocate(request_id, tokens, num_tokens)
        if table is None:
            assert snapshot(self.manager) == before
            return
        assert table[: len(hit_ids)] == hit_ids
        assert self.manager.num_cached_tokens(request_id) == num_hit_tokens
        self.token_ids[request_id] = tokens
        self.num_computed[request_id] = num_hit_tokens
        self._check_kv(request_id, num_hit_tokens)
        self._compute(request_id, num_tokens)

    @precondition(lambda self: self.token_ids)
    @rule(data=st.data(), chunk=st.integers(1, 8), new_token=st.integers(0, 3))
    def step(self, data: st.DataObject, chunk: int, new_token: int) -> None:
        request_id = data.draw(st.sampled_from(sorted(self.token_ids)))
        tokens = self.token_ids[request_id]
        if self.num_computed[request_id] == len(tokens):
            tokens.append(new_token)  # decode: the token sampled last step needs its KV
        num_tokens = min(len(tokens), self.num_computed[request_id] + chunk)
        before = snapshot(self.manager)
        table = self.manager.allocate(request_id, tokens, num_tokens)
        if table is None:
            assert snapshot(self.manager) == before
            return
        assert len(table) * self.manager.block_size >= num_tokens
        self._compute(request_id, num_tokens)

    @precondition(lambda self: self.token_ids)
    @rule(data=st.data())
    def fork(self, data: st.DataObject) -> None:
        parent_id = data.draw(st.sampled_from(sorted(self.token_ids)))
        num_tokens = self.num_computed[parent_id]
        if num_tokens == 0:
            return
        child_id = self._new_id()
        before = snapshot(self.manager)
        copies = self.manager.fork(parent_id, child_id, num_tokens)
        if copies is None:
            assert snapshot(self.manager) == before
            return
        for source, destination in copies:
            for slot in range(self.manager.block_size):
                if (source, slot) in self.kv:
                    self.kv[destination, slot] = self.kv[source, slot]
        self.token_ids[child_id] = self.token_ids[parent_id][:num_tokens]
        self.num_computed[child_id] = num_tokens
        self._check_kv(child_id, num_tokens)

    @precondition(lambda self: self.token_ids)
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        request_id = data.draw(st.sampled_from(sorted(self.token_ids)))
        self.manager.free(request_id)
        del self.token_ids[request_id], self.num_computed[request_id]
        self.freed.append(request_id)

    @precondition(lambda self: self.freed)
    @rule(data=st.data())
    def double_free_raises(self, data: st.DataObject) -> None:
        request_id = data.draw(st.sampled_from(self.freed))
        with pytest.raises(UnknownRequestError):
            self.manager.free(request_id)

    @rule()
    def reset_prefix_cache(self) -> None:
        self.manager.reset_prefix_cache()

    @invariant()
    def accounting_holds(self) -> None:
        check_invariants(self.manager)
        for request_id in self.token_ids:
            assert len(self.manager.block_table(request_id)) * self.manager.block_size >= self.num_computed[request_id]
            self._check_kv(request_id, self.num_computed[request_id])

    def teardown(self) -> None:
        # Freeing everything returns every block: nothing leaked.
        for request_id in list(self.token_ids):
            self.manager.free(request_id)
        check_invariants(self.manager)
        assert self.manager.num_free_blocks == self.manager.num_blocks


STATEFUL_SETTINGS = settings(
    max_examples=150, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def test_random_workloads_keep_accounting_and_kv_exact() -> None:
    run_state_machine_as_test(BlockManagerMachine, settings=STATEFUL_SETTINGS)


def test_random_workloads_with_a_weak_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    # Four possible hash values: collisions everywhere, and every hit must still be exact.
    def weak_hash(parent: BlockHash | None, tokens: Sequence[int]) -> BlockHash:
        return bytes([hashlib.sha256(repr((parent, tuple(tokens))).encode()).digest()[0] % 4])

    monkeypatch.setattr(block_manager_module, "hash_block_tokens", weak_hash)
    run_state_machine_as_test(BlockManagerMachine, settings=STATEFUL_SETTINGS)
