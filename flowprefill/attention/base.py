"""The backend interface and the metadata the executor hands it.

A prefill call covers packed rows of one or more sequences. Each `Segment` is a run of
consecutive rows of one sequence whose query positions are `ctx .. ctx + num - 1`: the first
`ctx` tokens of that sequence are already in the KV pool (earlier chunks, earlier token
slices). `ctx == 0` is a fresh prefill; the backend may then attend over the new k/v directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from flowprefill.kvcache.pool import KVPool


@dataclass(frozen=True)
class Segment:
    row: int  # first row of the segment in the packed q/k/v of this call
    num: int  # query rows
    ctx: int  # tokens of the same sequence already cached before these rows
    kv_slots: torch.Tensor  # [ctx + num] pool slots of positions 0 .. ctx + num - 1


@dataclass(frozen=True)
class PrefillMeta:
    slots: torch.Tensor  # [T] pool slots where the new k/v rows go
    segments: tuple[Segment, ...]


@dataclass(frozen=True)
class DecodeMeta:
    slots: torch.Tensor  # [B] pool slot of each sequence's new token
    ctx_slots: torch.Tensor  # [B, Lmax] slots of positions 0 .. L_b - 1, padded with slot 0
    mask: torch.Tensor  # [B, 1, 1, Lmax] bool, True where position < L_b
    context_lens: tuple[int, ...]  # L_b, the new token included


class AttentionBackend(Protocol):
    name: str

    def prefill(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                meta: PrefillMeta, pool: KVPool) -> torch.Tensor:
        """Store k/v [T, kvh, hd] at meta.slots; causal attention per segment -> [T, nh, hd]."""
        ...

    def decode(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               meta: DecodeMeta, pool: KVPool) -> torch.Tensor:
        """One new token per sequence: q [B, nh, hd] over its paged context -> [B, nh, hd]."""
        ...
