"""The device block pool: the tensors that hold every layer's paged K and V.

Layout `[num_layers, 2, num_blocks * block_size, num_kv_heads, head_dim]` (K at index 0, V at
1): a flat *slot* index `block * block_size + offset` addresses one token, so writes and
gathers are single `index_copy_` / `index_select` calls. Which slots belong to whom is the
block manager's business; this module must not know about sequences or scheduling.
"""

from __future__ import annotations

import torch


class KVPool:
    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        # [L, 2, S, kvh, hd] with S = num_blocks * block_size slots
        self.kv = torch.zeros(
            num_layers, 2, num_blocks * block_size, num_kv_heads, head_dim, dtype=dtype,
            device=device,
        )

    def layer(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V slot tensors of one layer, each [S, kvh, hd] (views, writable)."""
        return self.kv[layer, 0], self.kv[layer, 1]

    def pages(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of one layer as blocks, each [num_blocks, block_size, kvh, hd] (views): slot
        `b * block_size + o` is page b, entry o. Contiguous, K and V with equal strides: the
        NHD paged layout (page = block) that paged attention kernels such as flashinfer's read."""
        k, v = self.layer(layer)
        shape = (self.num_blocks, self.block_size, *k.shape[1:])
        return k.view(shape), v.view(shape)

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k, v ([T, kvh, hd]) at flat slots ([T], int64)."""
        k_cache, v_cache = self.layer(layer)
        k_cache.index_copy_(0, slots, k)
        v_cache.index_copy_(0, slots, v)

    def gather(self, layer: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K, V at the given slots ([N] or [B, N]) -> [..., kvh, hd] each."""
        k_cache, v_cache = self.layer(layer)
        flat = slots.reshape(-1)
        k = k_cache.index_select(0, flat).view(*slots.shape, *k_cache.shape[1:])
        v = v_cache.index_select(0, flat).view(*slots.shape, *v_cache.shape[1:])
        return k, v


def slot_ids(block_table: torch.Tensor, positions: torch.Tensor, block_size: int) -> torch.Tensor:
    """Flat slots of token `positions` ([...]) of a sequence with `block_table` ([nblocks])."""
    return block_table[positions // block_size] * block_size + positions % block_size
