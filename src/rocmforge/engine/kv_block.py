"""KV cache blocks, the chained hash that names a full block's content, and the LRU queue of free blocks."""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

BlockHash = bytes

# Tags keep the encoding prefix-free: a root block and a child block can never encode to the same bytes.
_ROOT_TAG = b"\x00"
_CHILD_TAG = b"\x01"


def hash_block_tokens(parent_hash: BlockHash | None, token_ids: Sequence[int]) -> BlockHash:
    """The chained hash of a full block: sha256 over the parent block's hash and this block's token ids.

    sha256 rather than Python's ``hash``: it is stable across processes and versions (a future multi-process
    engine or an offloaded cache can share names), and 256 bits make a collision — which would only cost a
    cache miss, since every hit is confirmed exactly — practically impossible. Its cost, about a microsecond
    per 16-token block, is noise next to a forward pass.
    """
    digest = hashlib.sha256()
    if parent_hash is None:
        digest.update(_ROOT_TAG)
    else:
        digest.update(_CHILD_TAG)
        digest.update(parent_hash)
    digest.update(struct.pack(f"<{len(token_ids)}q", *token_ids))
    return digest.digest()


@dataclass(slots=True, eq=False)
class KVBlock:
    """One physical block of the paged KV cache and what the prefix cache knows about its content.

    ``content_id`` names the exact content — this block's tokens on top of its whole prefix — with a
    number the manager never hands out twice for different content. ``parent_content_id`` is the parent
    block's ``content_id`` at commit time; together with ``token_ids`` it confirms a hash hit exactly.
    """

    block_id: int
    ref_count: int = 0
    block_hash: BlockHash | None = None
    token_ids: tuple[int, ...] = ()
    content_id: int | None = None
    parent_content_id: int | None = None

    def reset_content(self) -> None:
        """Forget the cached content (the block is about to be overwritten or was never committed)."""
        self.block_hash = None
        self.token_ids = ()
        self.content_id = None
        self.parent_content_id = None


class FreeBlockQueue:
    """Free blocks in eviction order: taken from the head, cached blocks appended at the tail; O(1) each way.

    An OrderedDict keyed by block id gives O(1) removal from the middle, which a prefix hit on a free
    cached block (its revival) needs.
    """

    def __init__(self, blocks: Iterable[KVBlock]) -> None:
        self._blocks: OrderedDict[int, KVBlock] = OrderedDict((block.block_id, block) for block in blocks)

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, block: KVBlock) -> bool:
        return block.block_id in self._blocks

    def __iter__(self) -> Iterator[KVBlock]:
        """Head (next to be reused) to tail (most recently freed cached content)."""
        return iter(self._blocks.values())

    def popleft(self) -> KVBlock:
        """Take the block at the head; the caller has checked the queue is not empty."""
        return self._blocks.popitem(last=False)[1]

    def append(self, block: KVBlock) -> None:
        """Put a block at the tail: reused last."""
        self._blocks[block.block_id] = block

    def appendleft(self, block: KVBlock) -> None:
        """Put a block at the head: reused first."""
        self._blocks[block.block_id] = block
        self._blocks.move_to_end(block.block_id, last=False)

    def remove(self, block: KVBlock) -> None:
        """Take a block out of the middle (a prefix hit revives it)."""
        del self._blocks[block.block_id]
