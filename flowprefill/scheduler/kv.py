"""The scheduler's view of KV-cache capacity, in blocks; torch-free.

The scheduler only reads it (`free_blocks`, `total_blocks`, `block_size`); whoever owns the
cache allocates a new job's blocks when it starts the job and frees them when the prefill's
KV leaves the worker. A suspended job keeps its blocks. `BlockBudget` is a plain counter that
implements the view, for the simulator and tests; the engine's block manager can implement
the same three members.
"""

from __future__ import annotations

from typing import Protocol


class KVView(Protocol):
    block_size: int

    def free_blocks(self) -> int: ...

    def total_blocks(self) -> int: ...


def blocks_for(num_tokens: int, block_size: int) -> int:
    """Blocks a prompt of `num_tokens` occupies (ceil)."""
    return -(-num_tokens // block_size)


class BlockBudget:
    """A counter of free KV blocks (no block tables): allocate on start, free on finish."""

    def __init__(self, num_blocks: int, block_size: int = 16) -> None:
        self.block_size = block_size
        self._total = num_blocks
        self._free = num_blocks

    def free_blocks(self) -> int:
        return self._free

    def total_blocks(self) -> int:
        return self._total

    def allocate(self, num_tokens: int) -> int:
        n = blocks_for(num_tokens, self.block_size)
        if n > self._free:
            raise RuntimeError(f"KV: {n} blocks requested, {self._free} free")
        self._free -= n
        return n

    def free(self, num_blocks: int) -> None:
        self._free += num_blocks
        if self._free > self._total:
            raise RuntimeError("KV: freed more blocks than allocated")
