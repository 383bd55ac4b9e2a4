"""Paged KV cache: the block manager (pure Python bookkeeping) and the device block pool (torch).

Owns which blocks belong to which sequence and the tensors that hold them. Must not know about
scheduling policies or the engine loop.
"""

from flowprefill.kvcache.block_manager import BlockManager, OutOfBlocksError
from flowprefill.kvcache.pool import KVPool, slot_ids

__all__ = ["BlockManager", "KVPool", "OutOfBlocksError", "slot_ids"]
