"""The backend interface and the metadata the executor hands it.

A prefill call covers packed rows of one or more sequences. Each `Segment` is a run of
consecutive rows of one sequence whose query positions are `ctx .. ctx + num - 1`: the first
`ctx` tokens of that sequence are already in the KV pool (earlier chunks, earlier token
slices). `ctx == 0` is a fresh prefill; the backend may then attend over the new k/v directly.

Metadata carries each thing twice where backends differ in what they read: device tensors of
pool slots (the `torch` backend gathers by slot) and host-side block tables and lengths
(plain Python ints; the `flashinfer` backend plans from them without reading the device).
Both describe the same pages; `executor.batch` builds them together, once per forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

import torch

from flowprefill.kvcache.pool import KVPool


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class Segment:
    row: int  # first row of the segment in the packed q/k/v of this call
    num: int  # query rows
    ctx: int  # tokens of the same sequence already cached before these rows
    kv_slots: torch.Tensor  # [ctx + num] pool slots of positions 0 .. ctx + num - 1 (device)
    # host: the pool blocks holding positions 0 .. ctx + num - 1, exactly
    # cdiv(ctx + num, block_size) of them, so kv_slots[p] == blocks[p // bs] * bs + p % bs
    blocks: tuple[int, ...]

    @property
    def kv_len(self) -> int:
        return self.ctx + self.num

    @property
    def single(self) -> bool:
        """One query row over cached context (a decoding sequence riding a prefill job)."""
        return self.num == 1 and self.ctx > 0


@dataclass(frozen=True, eq=False)  # identity: a backend's plan is keyed by the object
class PrefillMeta:
    slots: torch.Tensor  # [T] pool slots where the new k/v rows go (device)
    segments: tuple[Segment, ...]

    @property
    def fresh(self) -> bool:
        """True when no segment has cached context: attention needs only this call's k/v."""
        return all(s.ctx == 0 for s in self.segments)

    @cached_property
    def single_rows(self) -> SingleRows | None:
        """The segments of one query row over cached context (decoding sequences riding a
        prefill job, one-token chunks), for a backend that attends to them as one batch;
        None when there are none. Derived on the device once per call's metadata."""
        segs = [s for s in self.segments if s.single]
        if not segs:
            return None
        dev = self.slots.device
        lens = [s.kv_len for s in segs]
        width = max(lens)
        slots = torch.zeros(len(segs), width, dtype=torch.int64, device=dev)  # pad: slot 0
        for i, s in enumerate(segs):
            slots[i, : s.kv_len] = s.kv_slots
        valid = torch.arange(width, device=dev)[None, :] < torch.tensor(lens, device=dev)[:, None]
        rows = tuple(s.row for s in segs)
        return SingleRows(rows, torch.tensor(rows, device=dev), slots,
                          torch.tensor(lens, device=dev), valid[:, None, None, :])


@dataclass(frozen=True, eq=False)
class SingleRows:
    rows: tuple[int, ...]  # host: the query rows
    index: torch.Tensor  # [B] the same rows (device)
    ctx_slots: torch.Tensor  # [B, Lmax] slots of each row's positions 0 .. kv_len - 1, padded
    lens: torch.Tensor  # [B] int64 kv_len of each row
    mask: torch.Tensor  # [B, 1, 1, Lmax] bool, True where a position is real


@dataclass(frozen=True, eq=False)  # identity, as PrefillMeta
class DecodeMeta:
    """One new token per sequence. The padded [B, Lmax] slot table and mask that the torch
    backend reads are derived on the device on first use (a backend that plans from the host
    block tables never pays for them)."""

    slots: torch.Tensor  # [B] pool slot of each sequence's new token (device)
    tables: torch.Tensor  # [B, W] int64 block tables padded with block 0 (device)
    lens: torch.Tensor  # [B] int64 L_b, context incl. the new token (device)
    context_lens: tuple[int, ...]  # host: L_b
    block_tables: tuple[tuple[int, ...], ...]  # host: exactly cdiv(L_b, block_size) blocks each
    block_size: int

    @cached_property
    def ctx_slots(self) -> torch.Tensor:
        """[B, Lmax] slots of positions 0 .. L_b - 1, padded with slot 0."""
        p = torch.arange(max(self.context_lens), device=self.tables.device)  # [Lmax]
        bs = self.block_size
        return (self.tables[:, p // bs] * bs + p % bs) * self._valid  # padding reads slot 0

    @cached_property
    def mask(self) -> torch.Tensor:
        """[B, 1, 1, Lmax] bool, True where position < L_b."""
        return self._valid[:, None, None, :]

    @cached_property
    def _valid(self) -> torch.Tensor:
        p = torch.arange(max(self.context_lens), device=self.lens.device)  # [Lmax]
        return p[None, :] < self.lens[:, None]  # [B, Lmax] bool


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
