"""The tensors that describe one forward: packed prefill rows or one decode step.

A prefill forward covers one *piece* per sequence: tokens `start .. start + len - 1` of it,
whose first `start` tokens are already cached (0 for a whole prompt, > 0 for later chunks).
Pieces are packed row-wise in order. Must not know about scheduling or job progress.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from flowprefill.attention.base import DecodeMeta, PrefillMeta, Segment
from flowprefill.kvcache.pool import slot_ids
from flowprefill.model.decoder import Decoder


@dataclass(frozen=True)
class Piece:
    token_ids: list[int]  # the tokens this forward computes
    start: int  # position of the first of them (= tokens of this sequence already cached)
    block_table: list[int]  # covers at least start + len(token_ids) tokens


@dataclass
class PrefillBatch:
    token_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    cos: torch.Tensor  # [T, hd]
    sin: torch.Tensor  # [T, hd]
    last_rows: torch.Tensor  # [B] row of each piece's last token
    full: PrefillMeta  # attention metadata for all T rows
    _metas: dict[tuple[int, int], PrefillMeta] = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return self.token_ids.shape[0]

    def meta(self, start: int, end: int) -> PrefillMeta:
        """Metadata for the row slice [start, end): same layers reuse the same object."""
        if (start, end) == (0, self.num_rows):
            return self.full
        key = (start, end)
        if key not in self._metas:
            segs = []
            for seg in self.full.segments:
                a, b = max(start, seg.row), min(end, seg.row + seg.num)
                if a >= b:
                    continue
                segs.append(Segment(row=a - start, num=b - a, ctx=seg.ctx + a - seg.row,
                                    kv_slots=seg.kv_slots[: seg.ctx + b - seg.row]))
            self._metas[key] = PrefillMeta(self.full.slots[start:end], tuple(segs))
        return self._metas[key]


def build_prefill_batch(model: Decoder, pieces: list[Piece], block_size: int) -> PrefillBatch:
    dev = model.device
    ids, pos, slots, segs, last = [], [], [], [], []
    row = 0
    for p in pieces:
        n = len(p.token_ids)
        table = torch.tensor(p.block_table, dtype=torch.int64)
        kv_slots = slot_ids(table, torch.arange(p.start + n), block_size).to(dev)  # [start + n]
        ids.append(torch.tensor(p.token_ids, dtype=torch.int64))
        pos.append(torch.arange(p.start, p.start + n))
        slots.append(kv_slots[p.start:])
        segs.append(Segment(row=row, num=n, ctx=p.start, kv_slots=kv_slots))
        row += n
        last.append(row - 1)
    positions = torch.cat(pos).to(dev)
    cos, sin = model.rope(positions)
    return PrefillBatch(
        token_ids=torch.cat(ids).to(dev),
        positions=positions,
        cos=cos,
        sin=sin,
        last_rows=torch.tensor(last, dtype=torch.int64, device=dev),
        full=PrefillMeta(torch.cat(slots), tuple(segs)),
    )


@dataclass(frozen=True)
class DecodeBatch:
    token_ids: torch.Tensor  # [B]
    positions: torch.Tensor  # [B]
    meta: DecodeMeta


def build_decode_batch(model: Decoder, token_ids: list[int], positions: list[int],
                       block_tables: list[list[int]], block_size: int) -> DecodeBatch:
    """One new token per sequence at `positions[b]` (its KV slot already allocated)."""
    dev = model.device
    lens = torch.tensor(positions, dtype=torch.int64) + 1  # [B] context incl. the new token
    width = max(len(t) for t in block_tables)
    tables = torch.zeros(len(block_tables), width, dtype=torch.int64)  # [B, nblocks], pad 0
    for b, t in enumerate(block_tables):
        tables[b, : len(t)] = torch.tensor(t, dtype=torch.int64)
    p = torch.arange(int(lens.max()))  # [Lmax]
    ctx_slots = tables[:, p // block_size] * block_size + p % block_size  # [B, Lmax]
    mask = p[None, :] < lens[:, None]  # [B, Lmax]
    ctx_slots = ctx_slots * mask  # padded positions read slot 0 (masked out anyway)
    slots = ctx_slots[torch.arange(len(positions)), lens - 1]
    meta = DecodeMeta(slots=slots.to(dev), ctx_slots=ctx_slots.to(dev),
                      mask=mask[:, None, None, :].to(dev), context_lens=tuple(lens.tolist()))
    return DecodeBatch(torch.tensor(token_ids, dtype=torch.int64, device=dev),
                       torch.tensor(positions, dtype=torch.int64, device=dev), meta)
