"""The tensors that describe one forward: packed prefill rows or one decode step.

A prefill forward covers one *piece* per sequence: tokens `start .. start + len - 1` of it,
whose first `start` tokens are already cached (0 for a whole prompt, > 0 for later chunks).
Pieces are packed row-wise in order. Must not know about scheduling or job progress.

Everything a forward's metadata holds is computed on the host, into one int64 buffer per
batch, and reaches the device in one copy. On CUDA that buffer is pinned and the copy is
non-blocking, so building a batch never waits for the device (a pageable copy would wait
for every kernel already queued). The batch keeps the host buffer referenced until it is
dropped; PyTorch's pinned allocator also holds the block until the copy has run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from flowprefill.attention.base import DecodeMeta, PrefillMeta, Segment, cdiv
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
    block_size: int
    host: torch.Tensor  # the host buffer the device tensors were copied from (kept alive)
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
                kv_len = seg.ctx + b - seg.row  # rows a..b-1 see positions 0..kv_len-1
                segs.append(Segment(row=a - start, num=b - a, ctx=seg.ctx + a - seg.row,
                                    kv_slots=seg.kv_slots[:kv_len],
                                    blocks=seg.blocks[: cdiv(kv_len, self.block_size)]))
            self._metas[key] = PrefillMeta(self.full.slots[start:end], tuple(segs))
        return self._metas[key]


def build_prefill_batch(model: Decoder, pieces: list[Piece], block_size: int) -> PrefillBatch:
    dev = model.device
    ns = [len(p.token_ids) for p in pieces]
    kv_lens = [p.start + n for p, n in zip(pieces, ns, strict=True)]
    t, b, kv_total = sum(ns), len(pieces), sum(kv_lens)
    sizes = [t, t, t, b, kv_total]
    host = _host_buffer(sum(sizes), dev)
    ids, pos, slots, last, kv = host.split(sizes)  # views; kv: every piece's slots 0..start+n-1
    blocks, row, off = [], 0, 0
    for i, (p, n, kv_len) in enumerate(zip(pieces, ns, kv_lens, strict=True)):
        blocks.append(_covering(p.block_table, kv_len, block_size, f"pieces[{i}].block_table"))
        s = slot_ids(torch.tensor(blocks[-1], dtype=torch.int64), torch.arange(kv_len),
                     block_size)  # [start + n]
        kv[off:off + kv_len] = s
        ids[row:row + n] = torch.tensor(p.token_ids, dtype=torch.int64)
        pos[row:row + n] = torch.arange(p.start, kv_len)
        slots[row:row + n] = s[p.start:]
        last[i] = row + n - 1
        row, off = row + n, off + kv_len
    d_ids, d_pos, d_slots, d_last, d_kv = _to_device(host, dev).split(sizes)
    segs, row, off = [], 0, 0
    for p, n, kv_len, bl in zip(pieces, ns, kv_lens, blocks, strict=True):
        segs.append(Segment(row=row, num=n, ctx=p.start, kv_slots=d_kv[off:off + kv_len],
                            blocks=bl))
        row, off = row + n, off + kv_len
    cos, sin = model.rope(d_pos)
    return PrefillBatch(token_ids=d_ids, positions=d_pos, cos=cos, sin=sin, last_rows=d_last,
                        full=PrefillMeta(d_slots, tuple(segs)), block_size=block_size,
                        host=host)


@dataclass(frozen=True)
class DecodeBatch:
    token_ids: torch.Tensor  # [B]
    positions: torch.Tensor  # [B]
    meta: DecodeMeta
    host: torch.Tensor  # the host buffer the device tensors were copied from (kept alive)


def build_decode_batch(model: Decoder, token_ids: list[int], positions: list[int],
                       block_tables: list[list[int]], block_size: int) -> DecodeBatch:
    """One new token per sequence at `positions[b]` (its KV slot already allocated)."""
    dev = model.device
    bsz = len(positions)
    lens = [p + 1 for p in positions]  # context incl. the new token
    tables = tuple(_covering(t, n, block_size, f"block_tables[{i}]")
                   for i, (t, n) in enumerate(zip(block_tables, lens, strict=True)))
    width = max(len(t) for t in tables)
    new_slots = [t[p // block_size] * block_size + p % block_size
                 for t, p in zip(tables, positions, strict=True)]
    padded = [x for t in tables for x in (*t, *(0,) * (width - len(t)))]  # [B * W], pad block 0
    sizes = [bsz, bsz, bsz, bsz, bsz * width]
    host = _host_buffer(sum(sizes), dev)
    host.copy_(torch.tensor([*token_ids, *positions, *lens, *new_slots, *padded],
                            dtype=torch.int64))
    d_ids, d_pos, d_lens, d_slots, d_tables = _to_device(host, dev).split(sizes)
    meta = DecodeMeta(slots=d_slots, tables=d_tables.view(bsz, width), lens=d_lens,
                      context_lens=tuple(lens), block_tables=tables, block_size=block_size)
    return DecodeBatch(d_ids, d_pos, meta, host)


def _covering(table: list[int], num_tokens: int, block_size: int, name: str) -> tuple[int, ...]:
    """The first cdiv(num_tokens, block_size) blocks of `table`: exactly those holding tokens."""
    need = cdiv(num_tokens, block_size)
    if len(table) < need:
        raise ValueError(f"{name} has {len(table)} blocks of {block_size} tokens; "
                         f"{num_tokens} tokens need {need}")
    return tuple(table[:need])


def _host_buffer(n: int, dev: torch.device) -> torch.Tensor:
    """[n] int64 on the host; pinned when the batch goes to a CUDA device, so that its copy
    there is asynchronous (page-locked memory is what lets a copy skip waiting)."""
    return torch.empty(n, dtype=torch.int64, pin_memory=dev.type == "cuda")


def _to_device(host: torch.Tensor, dev: torch.device) -> torch.Tensor:
    """`host` on `dev` without blocking the host: a non-blocking copy, or `host` itself when
    it is already there (the CPU)."""
    return host if host.device == dev else host.to(dev, non_blocking=True)
