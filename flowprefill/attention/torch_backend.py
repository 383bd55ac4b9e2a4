"""The `torch` attention backend: PyTorch SDPA and batched matmuls, on CPU and CUDA.

Fresh prefill segments attend over their own contiguous k/v with `is_causal` (no gather from
the pool); segments with cached context gather their keys from the pool by slot and use a
bottom-right-aligned causal mask. Decode pads the batch to the longest context and attends
with two batched fp32 matmuls around the softmax, each query head group against its KV head
(so do the one-row segments of a prefill call: decoding sequences riding a prefill job):
with one query row per sequence, SDPA's fused CPU kernel is built for long queries and was
~3x slower here (SmolLM2 shapes, 16 sequences of 256 tokens, bf16); at 1024-token contexts
the two are even.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flowprefill.attention.base import DecodeMeta, PrefillMeta
from flowprefill.kvcache.pool import KVPool


class TorchBackend:
    name = "torch"

    def prefill(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                meta: PrefillMeta, pool: KVPool) -> torch.Tensor:
        pool.write(layer, meta.slots, k, v)
        if len(meta.segments) == 1 and meta.segments[0].ctx == 0:
            return _causal(q, k, v)  # the common single-request fresh prefill: no copies
        out = torch.empty_like(q)  # [T, nh, hd]
        single = meta.single_rows  # decoding rows riding the job: one batched attention
        if single is not None:
            kc, vc = pool.gather(layer, single.ctx_slots)
            out.index_copy_(0, single.index, _one_row(q.index_select(0, single.index), kc, vc,
                                                      single.mask))
        for seg in meta.segments:
            rows = slice(seg.row, seg.row + seg.num)
            if single is not None and seg.num == 1 and seg.ctx > 0:
                continue
            if seg.ctx == 0:
                out[rows] = _causal(q[rows], k[rows], v[rows])
            else:
                kc, vc = pool.gather(layer, seg.kv_slots)  # [ctx + num, kvh, hd]
                # query i sits at position ctx + i and sees keys 0 .. ctx + i
                mask = torch.ones(seg.num, seg.ctx + seg.num, dtype=torch.bool,
                                  device=q.device).tril(diagonal=seg.ctx)
                o = F.scaled_dot_product_attention(
                    _heads_first(q[rows]), _heads_first(kc), _heads_first(vc),
                    attn_mask=mask, enable_gqa=True)
                out[rows] = o[0].transpose(0, 1)
        return out

    def decode(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               meta: DecodeMeta, pool: KVPool) -> torch.Tensor:
        pool.write(layer, meta.slots, k, v)
        kc, vc = pool.gather(layer, meta.ctx_slots)  # [B, Lmax, kvh, hd]
        return _one_row(q, kc, vc, meta.mask)


def _one_row(q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, mask: torch.Tensor
             ) -> torch.Tensor:
    """One query row per sequence: q [B, nh, hd] over its padded context kc/vc
    [B, Lmax, kvh, hd] (`mask` [B, 1, 1, Lmax] True where real) -> [B, nh, hd]."""
    b, nh, hd = q.shape
    kvh = kc.shape[2]
    # in fp32, as SDPA computes: bf16 scores of 64-term dot products move the softmax by
    # a few percent; the copies cost less than SDPA's overhead at these shapes
    qg = q.reshape(b, kvh, nh // kvh, hd).float()  # query heads grouped by their KV head
    scores = torch.matmul(qg, kc.permute(0, 2, 3, 1).float()) * hd ** -0.5  # [B,kvh,g,L]
    scores = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    o = torch.matmul(scores, vc.transpose(1, 2).float())  # [B, kvh, g, hd]
    return o.reshape(b, nh, hd).to(q.dtype)


def _causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q [T, nh, hd], k/v [T, kvh, hd] -> causal attention [T, nh, hd]."""
    o = F.scaled_dot_product_attention(
        _heads_first(q), _heads_first(k), _heads_first(v), is_causal=True, enable_gqa=True)
    return o[0].transpose(0, 1)


def _heads_first(x: torch.Tensor) -> torch.Tensor:
    """[T, heads, hd] -> [1, heads, T, hd] (a view). The batch dim matters: SDPA on CPU takes
    its fused (flash) kernel only for 4-D inputs and falls back to the O(T^2)-memory math path
    for 3-D ones."""
    return x.transpose(0, 1)[None]
