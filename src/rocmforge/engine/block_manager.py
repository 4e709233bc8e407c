"""The paged KV cache's block manager: block tables per request, ref counts, and automatic prefix caching.

A request's KV lives in fixed-size blocks listed in its block table. A full block whose KV has been
computed is *committed*: it gets a chained hash (its tokens on top of its parent's hash) and is indexed,
so a later request whose prompt starts with the same tokens reuses it instead of recomputing it. Freed
blocks keep their cached content in an LRU free queue until an allocation needs the space.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rocmforge.engine.checks import cdiv, check_positive_int
from rocmforge.engine.kv_block import BlockHash, FreeBlockQueue, KVBlock, hash_block_tokens
from rocmforge.errors import RocmForgeError, ValidationError


class UnknownRequestError(RocmForgeError, LookupError):
    """The block manager holds no blocks for this request id: never allocated, or already freed."""


@dataclass(frozen=True)
class PrefixCacheStats:
    """Prefix-cache lookups counted at each request's first successful allocation."""

    num_queries: int
    num_query_tokens: int
    num_hit_tokens: int

    @property
    def hit_rate(self) -> float:
        """Fraction of looked-up prompt tokens served from the cache."""
        return self.num_hit_tokens / self.num_query_tokens if self.num_query_tokens else 0.0


@dataclass
class _RequestBlocks:
    blocks: list[KVBlock]
    # Chained hashes of the first len(block_hashes) blocks, which are committed; later blocks are not (yet).
    block_hashes: list[BlockHash]
    num_cached_tokens: int


class BlockManager:
    """Hands out KV cache blocks to requests and shares full blocks between requests by content.

    Invariants: ``num_free_blocks`` plus the blocks in use equals ``num_blocks``; a block in the free queue
    has ref_count 0 and one with ref_count > 0 is never handed out again; a shared block is always full
    and committed, so no request ever writes KV into a block another request reads.
    """

    def __init__(self, num_blocks: int, block_size: int = 16, enable_prefix_caching: bool = True) -> None:
        self.num_blocks = check_positive_int("num_blocks", num_blocks)
        self.block_size = check_positive_int("block_size", block_size)
        self.enable_prefix_caching = bool(enable_prefix_caching)
        self._blocks = [KVBlock(block_id) for block_id in range(num_blocks)]
        self._free = FreeBlockQueue(self._blocks)
        # One indexed block per hash; a colliding block with other content simply stays unindexed.
        self._cached: dict[BlockHash, KVBlock] = {}
        self._requests: dict[str, _RequestBlocks] = {}
        self._next_content_id = 0
        self._num_queries = 0
        self._num_query_tokens = 0
        self._num_hit_tokens = 0

    # ------------------------------------------------------------------ queries

    @property
    def num_free_blocks(self) -> int:
        """Blocks no request holds, cached or not: all of them can be allocated."""
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        """Blocks held by at least one request."""
        return self.num_blocks - len(self._free)

    @property
    def usage(self) -> float:
        """Fraction of the blocks in use, 0.0 to 1.0."""
        return self.num_used_blocks / self.num_blocks

    @property
    def prefix_cache_stats(self) -> PrefixCacheStats:
        """A snapshot of the prefix-cache counters."""
        return PrefixCacheStats(self._num_queries, self._num_query_tokens, self._num_hit_tokens)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._requests

    def block_table(self, request_id: str) -> list[int]:
        """The block ids of a request's KV, in token order."""
        return [block.block_id for block in self._get(request_id).blocks]

    def num_cached_tokens(self, request_id: str) -> int:
        """Tokens a request's first allocation took from the prefix cache: its initial ``num_computed_tokens``."""
        return self._get(request_id).num_cached_tokens

    def find_cached_prefix(self, token_ids: Sequence[int]) -> tuple[list[int], int]:
        """The block ids of the longest cached full-block prefix of ``token_ids`` and the tokens it covers.

        Never the whole prompt: the last token is always recomputed, since its logits are needed. Changes
        nothing; ``allocate`` repeats the lookup, so call the two back to back.
        """
        blocks, _ = self._lookup(token_ids)
        return [block.block_id for block in blocks], len(blocks) * self.block_size

    # ------------------------------------------------------------------ changes

    def allocate(self, request_id: str, token_ids: Sequence[int], num_tokens: int) -> list[int] | None:
        """Make a request's block table cover at least ``num_tokens`` tokens; the new table, or None.

        ``token_ids`` are the request's tokens so far (prompt and output); ``num_tokens`` is its
        ``num_computed_tokens`` plus the tokens scheduled this step. The first call takes the cached prefix
        (see ``num_cached_tokens``); later calls append blocks as the sequence grows, in decode or chunked
        prefill. None means too few free blocks and nothing was changed: the scheduler should preempt.
        """
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 1:
            raise ValidationError(f"num_tokens must be a positive integer, got {num_tokens!r}")
        if num_tokens > len(token_ids):
            raise ValidationError(f"num_tokens ({num_tokens}) exceeds the request's {len(token_ids)} token ids")
        state = self._requests.get(request_id)
        if state is not None:
            num_new_blocks = cdiv(num_tokens, self.block_size) - len(state.blocks)
            if num_new_blocks > len(self._free):
                return None
            state.blocks.extend(self._take_free_block() for _ in range(num_new_blocks))
            return [block.block_id for block in state.blocks]

        hit_blocks, hit_hashes = self._lookup(token_ids)
        num_new_blocks = max(cdiv(num_tokens, self.block_size) - len(hit_blocks), 0)
        # Reviving a free cached block uses up a free block just as a new one does.
        num_revived = sum(1 for block in hit_blocks if block.ref_count == 0)
        if num_new_blocks + num_revived > len(self._free):
            return None
        # Take the hits out of the free queue first, so the new blocks below cannot evict them.
        for block in hit_blocks:
            if block.ref_count == 0:
                self._free.remove(block)
            block.ref_count += 1
        blocks = hit_blocks + [self._take_free_block() for _ in range(num_new_blocks)]
        num_hit_tokens = len(hit_blocks) * self.block_size
        self._requests[request_id] = _RequestBlocks(blocks, hit_hashes, num_hit_tokens)
        if self.enable_prefix_caching:
            self._num_queries += 1
            self._num_query_tokens += len(token_ids)
            self._num_hit_tokens += num_hit_tokens
        return [block.block_id for block in blocks]

    def commit_full_blocks(self, request_id: str, token_ids: Sequence[int], num_computed_tokens: int) -> None:
        """Register the blocks that ``num_computed_tokens`` fills, so that later requests can hit them.

        Call after the step that computed their KV: a block committed earlier could be hit by a request
        that reads its KV before it is written.
        """
        state = self._get(request_id)
        capacity = len(state.blocks) * self.block_size
        if not 0 <= num_computed_tokens <= min(len(token_ids), capacity):
            raise ValidationError(
                f"num_computed_tokens ({num_computed_tokens}) must be within the request's {len(token_ids)} "
                f"token ids and its block table's {capacity} slots"
            )
        if not self.enable_prefix_caching:
            return
        block_size = self.block_size
        for index in range(len(state.block_hashes), num_computed_tokens // block_size):
            block_token_ids = tuple(token_ids[index * block_size : (index + 1) * block_size])
            parent_hash = state.block_hashes[index - 1] if index else None
            block_hash = hash_block_tokens(parent_hash, block_token_ids)
            state.block_hashes.append(block_hash)
            block = state.blocks[index]
            if block.content_id is not None:
                continue  # a block shared by fork, already committed by its other owner
            parent_content_id = state.blocks[index - 1].content_id if index else None
            block.block_hash = block_hash
            block.token_ids = block_token_ids
            block.parent_content_id = parent_content_id
            indexed = self._cached.get(block_hash)
            if indexed is None:
                self._cached[block_hash] = block
                block.content_id = self._new_content_id()
            elif indexed.token_ids == block_token_ids and indexed.parent_content_id == parent_content_id:
                # The same content computed twice (two identical prompts in flight): one name for both,
                # so chains built on either copy stay reachable through the indexed one.
                block.content_id = indexed.content_id
            else:
                block.content_id = self._new_content_id()  # a hash collision: the indexed block stays

    def free(self, request_id: str) -> None:
        """Release a request's blocks (finished, aborted or preempted); freeing twice raises."""
        state = self._requests.pop(request_id, None)
        if state is None:
            raise UnknownRequestError(
                f"cannot free request {request_id!r}: it holds no blocks (never allocated or already freed)"
            )
        # Last block first: a request's deeper blocks are the least likely to be shared, and a child
        # block is useless once its parent is gone, so they should be evicted before the prefix.
        for block in reversed(state.blocks):
            block.ref_count -= 1
            if block.ref_count:
                continue
            if self._is_indexed(block):
                self._free.append(block)
            else:
                # Content no lookup can reach: reuse these before any cached block.
                block.reset_content()
                self._free.appendleft(block)

    def fork(self, parent_request_id: str, child_request_id: str, num_tokens: int) -> list[tuple[int, int]] | None:
        """Give a child request (n > 1 sampling) the parent's first ``num_tokens`` tokens of KV.

        The child shares the parent's full blocks and gets a fresh block for a partial last block. Returns
        the (source block id, destination block id) pairs whose KV the model runner must copy — empty when
        ``num_tokens`` ends on a block boundary — or None, changing nothing, if no block is free.
        """
        parent = self._get(parent_request_id)
        if child_request_id in self._requests:
            raise ValidationError(f"cannot fork into request {child_request_id!r}: it already holds blocks")
        capacity = len(parent.blocks) * self.block_size
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or not 1 <= num_tokens <= capacity:
            raise ValidationError(
                f"num_tokens must be between 1 and the parent's {capacity} block-table slots, got {num_tokens!r}"
            )
        num_full_blocks, num_tail_tokens = divmod(num_tokens, self.block_size)
        if num_tail_tokens and not self._free:
            return None
        blocks = parent.blocks[:num_full_blocks]
        for block in blocks:
            block.ref_count += 1
        copies: list[tuple[int, int]] = []
        if num_tail_tokens:
            tail = self._take_free_block()
            copies.append((parent.blocks[num_full_blocks].block_id, tail.block_id))
            blocks.append(tail)
        self._requests[child_request_id] = _RequestBlocks(blocks, parent.block_hashes[:num_full_blocks], 0)
        return copies

    def reset_prefix_cache(self) -> None:
        """Forget all cached content (e.g. after new weights are loaded); blocks in use stay allocated.

        Blocks in use keep their content ids, so that blocks their requests commit later chain onto an
        unindexed parent and can never be mistaken for another prefix.
        """
        self._cached.clear()
        for block in self._free:
            block.reset_content()

    # ------------------------------------------------------------------ internals

    def _get(self, request_id: str) -> _RequestBlocks:
        state = self._requests.get(request_id)
        if state is None:
            raise UnknownRequestError(f"request {request_id!r} holds no blocks (never allocated or already freed)")
        return state

    def _lookup(self, token_ids: Sequence[int]) -> tuple[list[KVBlock], list[BlockHash]]:
        """The longest confirmed chain of cached blocks for ``token_ids``, stopping short of the last token."""
        if not self.enable_prefix_caching:
            return [], []
        block_size = self.block_size
        blocks: list[KVBlock] = []
        hashes: list[BlockHash] = []
        parent_hash: BlockHash | None = None
        parent_content_id: int | None = None
        for index in range(max(len(token_ids) - 1, 0) // block_size):
            block_token_ids = tuple(token_ids[index * block_size : (index + 1) * block_size])
            block_hash = hash_block_tokens(parent_hash, block_token_ids)
            block = self._cached.get(block_hash)
            # Confirm the hit exactly: same tokens on top of the very prefix we matched so far.
            if block is None or block.token_ids != block_token_ids or block.parent_content_id != parent_content_id:
                break
            blocks.append(block)
            hashes.append(block_hash)
            parent_hash = block_hash
            parent_content_id = block.content_id
        return blocks, hashes

    def _take_free_block(self) -> KVBlock:
        block = self._free.popleft()
        if block.block_hash is not None and self._cached.get(block.block_hash) is block:
            del self._cached[block.block_hash]  # evict: this block's content is about to be overwritten
        block.reset_content()
        block.ref_count = 1
        return block

    def _is_indexed(self, block: KVBlock) -> bool:
        return block.block_hash is not None and self._cached.get(block.block_hash) is block

    def _new_content_id(self) -> int:
        self._next_content_id += 1
        return self._next_content_id
