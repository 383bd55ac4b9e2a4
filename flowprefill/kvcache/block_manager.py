"""Block bookkeeping for the paged KV cache, in pure Python (no torch).

A sequence (keyed by its request id) owns an ordered list of block ids, its *block table*;
token `t` of the sequence lives in block `table[t // block_size]` at offset `t % block_size`.
Blocks carry reference counts so a block may be shared (e.g. a forked prefix); a block returns
to the free list when its last reference goes. Must not know about tensors or scheduling.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field


class OutOfBlocksError(RuntimeError):
    """Raised when an allocation needs more free KV blocks than the pool has left."""

    def __init__(self, needed: int, free: int) -> None:
        super().__init__(f"KV cache exhausted: need {needed} block(s), {free} free")
        self.needed = needed
        self.free = free


@dataclass
class _Seq:
    blocks: list[int] = field(default_factory=list)
    num_tokens: int = 0


class BlockManager:
    """Allocates fixed-size KV blocks to sequences; all methods are O(blocks touched)."""

    def __init__(self, num_blocks: int, block_size: int = 16) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(num_blocks))
        self._refs = [0] * num_blocks
        self._seqs: dict[str, _Seq] = {}
        # The prefill and decode loops of a colocated engine share one manager: every update
        # holds this lock, and the *_all methods make a multi-sequence update all or nothing.
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ queries
    @property
    def num_free(self) -> int:
        return len(self._free)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def can_allocate(self, num_tokens: int) -> bool:
        return self.blocks_needed(num_tokens) <= self.num_free

    def has(self, seq_id: str) -> bool:
        return seq_id in self._seqs

    def block_table(self, seq_id: str) -> list[int]:
        return list(self._seqs[seq_id].blocks)

    def num_tokens(self, seq_id: str) -> int:
        return self._seqs[seq_id].num_tokens

    def ref_count(self, block: int) -> int:
        return self._refs[block]

    # ------------------------------------------------------------------ updates
    def _take(self, n: int) -> list[int]:
        if n > len(self._free):
            raise OutOfBlocksError(n, len(self._free))
        out = [self._free.popleft() for _ in range(n)]
        for b in out:
            self._refs[b] = 1
        return out

    def allocate_all(self, seq_ids: Sequence[str], lengths: Sequence[int]) -> None:
        """Allocate several new sequences at once; if any cannot be, none is."""
        with self._lock:
            if dup := [s for s in seq_ids if s in self._seqs]:
                raise ValueError(f"sequences already hold KV blocks: {dup}")
            need = sum(self.blocks_needed(n) for n in lengths)
            if need > len(self._free):
                raise OutOfBlocksError(need, len(self._free))
            for s, n in zip(seq_ids, lengths, strict=True):
                self.allocate(s, n)

    def append_all(self, seq_ids: Sequence[str], num_tokens: int = 1) -> None:
        """Grow several sequences at once; if any cannot grow, none does."""
        with self._lock:
            need = sum(self.blocks_needed(self._seqs[s].num_tokens + num_tokens)
                       - len(self._seqs[s].blocks) for s in seq_ids)
            if need > len(self._free):
                raise OutOfBlocksError(need, len(self._free))
            for s in seq_ids:
                self.append(s, num_tokens)

    def allocate(self, seq_id: str, num_tokens: int) -> list[int]:
        """Reserve blocks for the first `num_tokens` tokens of a new sequence; all or nothing."""
        with self._lock:
            return self._allocate(seq_id, num_tokens)

    def _allocate(self, seq_id: str, num_tokens: int) -> list[int]:
        if seq_id in self._seqs:
            raise ValueError(f"sequence {seq_id!r} already has KV blocks")
        blocks = self._take(self.blocks_needed(num_tokens))
        self._seqs[seq_id] = _Seq(blocks, num_tokens)
        return list(blocks)

    def append(self, seq_id: str, num_tokens: int = 1) -> list[int]:
        """Grow a sequence by `num_tokens`; returns the newly added block ids (often none)."""
        with self._lock:
            return self._append(seq_id, num_tokens)

    def _append(self, seq_id: str, num_tokens: int) -> list[int]:
        seq = self._seqs[seq_id]
        need = self.blocks_needed(seq.num_tokens + num_tokens) - len(seq.blocks)
        new = self._take(need) if need > 0 else []
        seq.blocks.extend(new)
        seq.num_tokens += num_tokens
        return new

    def shrink(self, seq_id: str, num_tokens: int = 1) -> None:
        """Undo an append: drop the last `num_tokens` tokens; blocks left empty go back."""
        with self._lock:
            seq = self._seqs[seq_id]
            seq.num_tokens -= num_tokens
            for b in seq.blocks[self.blocks_needed(seq.num_tokens):]:
                self._refs[b] -= 1
                if self._refs[b] == 0:
                    self._free.append(b)
            del seq.blocks[self.blocks_needed(seq.num_tokens):]

    def fork(self, seq_id: str, new_seq_id: str) -> None:
        """Share every block of `seq_id` with a new sequence (reference counts go up)."""
        with self._lock:
            self._fork(seq_id, new_seq_id)

    def _fork(self, seq_id: str, new_seq_id: str) -> None:
        if new_seq_id in self._seqs:
            raise ValueError(f"sequence {new_seq_id!r} already has KV blocks")
        src = self._seqs[seq_id]
        for b in src.blocks:
            self._refs[b] += 1
        self._seqs[new_seq_id] = _Seq(list(src.blocks), src.num_tokens)

    def free(self, seq_id: str) -> None:
        """Drop a sequence; blocks whose last reference it held go back to the free list."""
        with self._lock:
            self._free_seq(seq_id)

    def _free_seq(self, seq_id: str) -> None:
        seq = self._seqs.pop(seq_id, None)
        if seq is None:
            return
        for b in seq.blocks:
            self._refs[b] -= 1
            if self._refs[b] == 0:
                self._free.append(b)

    def snapshot(self) -> tuple[tuple[int, ...], tuple[tuple[str, tuple[int, ...], int], ...]]:
        """The whole state, comparable between two managers fed the same calls: the free list
        in order, and each sequence's (id, blocks, tokens) sorted by id."""
        with self._lock:
            return tuple(self._free), tuple(sorted(
                (s, tuple(q.blocks), q.num_tokens) for s, q in self._seqs.items()))
