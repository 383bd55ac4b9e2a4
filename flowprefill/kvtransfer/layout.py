"""Where each KV block of a worker's pool lives in memory, as NIXL descriptors.

The pool tensor is `[L, 2, S, kvh, hd]` with `S = num_blocks * block_size` slots (see
`kvcache.pool`), so block `b` of layer `l`, K or V (`kv` 0/1), is one contiguous run of
`block_bytes` at `base + ((l * 2 + kv) * num_blocks + b) * block_bytes`: descriptor index
`(l * 2 + kv) * num_blocks + b` of a list that covers the whole pool. Torch-free (numpy only);
must not know about sequences, requests or scheduling.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class KVLayout:
    base: int  # address of the pool's first byte
    num_layers: int
    num_blocks: int
    block_bytes: int  # one block of one layer's K (or V)
    mem_type: str = "DRAM"  # DRAM | VRAM
    device_id: int = 0

    @property
    def num_regions(self) -> int:
        """(layer, K/V) regions, each `num_blocks` blocks long."""
        return 2 * self.num_layers

    @property
    def num_descs(self) -> int:
        return self.num_regions * self.num_blocks

    @property
    def total_bytes(self) -> int:
        return self.num_descs * self.block_bytes

    def descs(self) -> np.ndarray:
        """[num_descs, 3] (address, length, device) rows for every block of every region."""
        idx = np.arange(self.num_descs, dtype=np.uint64)
        out = np.empty((self.num_descs, 3), dtype=np.uint64)
        out[:, 0] = np.uint64(self.base) + idx * np.uint64(self.block_bytes)
        out[:, 1] = self.block_bytes
        out[:, 2] = self.device_id
        return out

    def indices(self, blocks: list[int]) -> np.ndarray:
        """Descriptor indices of `blocks` in every region, region-major: [regions * len]."""
        b = np.asarray(blocks, dtype=np.int64)
        if b.size and (b.min() < 0 or b.max() >= self.num_blocks):
            raise ValueError(f"block ids outside [0, {self.num_blocks})")
        regions = np.arange(self.num_regions, dtype=np.int64)[:, None] * self.num_blocks
        return (regions + b[None, :]).reshape(-1).astype(np.int32)

    def compatible(self, other: KVLayout) -> bool:
        """Blocks of `other` can be copied into blocks of this layout one for one."""
        return (self.num_layers, self.block_bytes) == (other.num_layers, other.block_bytes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> KVLayout:
        return cls(**d)
