"""The `torch` attention backend: PyTorch SDPA and batched matmuls, on CPU and CUDA.

Fresh prefill segments attend over their own contiguous k/v with `is_causal` (no gather from
the pool); segments with cached context gather their keys from the pool by slot and use a
bottom-right-aligned causal mask. Decode pads the batch to the longest context and attends
with two fp32 batched matmuls over (sequence, KV head) around the softmax, each KV head's
query head group as the rows (so do the one-row segments of a prefill call: decoding
sequences riding a prefill job): with one query row per sequence, SDPA's fused CPU kernel
is built for long queries and was ~2-5x slower (SmolLM2 shapes, 8-16 sequences of 257
tokens, bf16, 2 threads). On the CPU, where it can be built, the compiled kernel of
`attention.cpu_kernel` does those one-row attentions instead, reading the pool in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flowprefill.attention.base import DecodeMeta, PrefillMeta, SingleRows
from flowprefill.attention.cpu_kernel import PagedKernel
from flowprefill.kvcache.pool import KVPool


class TorchBackend:
    name = "torch"

    def __init__(self, kernel: PagedKernel | None = None) -> None:
        self.kernel = kernel  # the CPU one-row kernel; None: PyTorch ops only

    def prefill(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                meta: PrefillMeta, pool: KVPool) -> torch.Tensor:
        pool.write(layer, meta.slots, k, v)
        if len(meta.segments) == 1 and meta.segments[0].ctx == 0:
            return _causal(q, k, v)  # the common single-request fresh prefill: no copies
        out = torch.empty_like(q)  # [T, nh, hd]
        single = meta.single_rows  # decoding rows riding the job: one batched attention
        if single is not None:
            attended = self._rows(layer, q.index_select(0, single.index), pool, single)
            out.index_copy_(0, single.index, attended)
        for seg in meta.segments:
            rows = slice(seg.row, seg.row + seg.num)
            if seg.single:  # attended above
                continue
            if seg.ctx == 0:
                out[rows] = _causal(q[rows], k[rows], v[rows])
            else:
                kc, vc = pool.gather(layer, seg.kv_slots)  # [ctx + num, kvh, hd]
                # query i sits at position ctx + i and sees keys 0 .. ctx + i
                mask = torch.ones(seg.num, seg.ctx + seg.num, dtype=torch.bool,
                                  device=q.device).tril(diagonal=seg.ctx)
                o = F.scaled_dot_product_attention(*_sdpa_heads(q[rows], kc, vc),
                                                   attn_mask=mask, enable_gqa=True)
                out[rows] = o[0].transpose(0, 1)
        return out

    def decode(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               meta: DecodeMeta, pool: KVPool) -> torch.Tensor:
        pool.write(layer, meta.slots, k, v)
        return self._rows(layer, q, pool, meta)

    def _rows(self, layer: int, q: torch.Tensor, pool: KVPool,
              rows: DecodeMeta | SingleRows) -> torch.Tensor:
        """q [B, nh, hd], one row per sequence, over its first rows.lens[b] slots of
        rows.ctx_slots (the padding mask is read only by the PyTorch-ops path)."""
        kc, vc = pool.layer(layer)
        if self.kernel is not None and self.kernel.supports(q, kc):
            return self.kernel(q, kc, vc, rows.ctx_slots, rows.lens)
        kc, vc = pool.gather(layer, rows.ctx_slots)  # [B, Lmax, kvh, hd]
        return _one_row(q, kc, vc, rows.mask)


def _one_row(q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, mask: torch.Tensor
             ) -> torch.Tensor:
    """One query row per sequence: q [B, nh, hd] over its padded context kc/vc
    [B, Lmax, kvh, hd] (`mask` [B, 1, 1, Lmax] True where real) -> [B, nh, hd]."""
    b, nh, hd = q.shape
    length, kvh = kc.shape[1], kc.shape[2]
    g = nh // kvh
    # in fp32, as SDPA computes: bf16 scores of 64-term dot products move the softmax by a
    # few percent. K and V go to [B, kvh, L, hd] in the one copy that converts them, so each
    # of the two matmuls is one batched call over (sequence, KV head), its query head group
    # as the rows: at 8 x 257 tokens (SmolLM2 heads, 2 threads) 172 us per layer vs 463+ us
    # for a pair of strided matmuls per KV head (1.5x at 1 sequence, 5x at 16)
    kf = _fp32_heads_first(kc).view(b * kvh, length, hd)
    vf = _fp32_heads_first(vc).view(b * kvh, length, hd)
    qg = q.float().view(b * kvh, g, hd)  # query heads grouped by their KV head
    scores = torch.bmm(qg, kf.transpose(1, 2)).view(b, kvh, g, length)
    scores.mul_(hd ** -0.5).masked_fill_(~mask, float("-inf"))
    out = torch.bmm(scores.softmax(-1).view(b * kvh, g, length), vf)  # [B kvh, g, hd]
    return out.view(b, nh, hd).to(q.dtype)


def _fp32_heads_first(x: torch.Tensor) -> torch.Tensor:
    """[B, L, kvh, hd] (any dtype) -> a contiguous fp32 [B, kvh, L, hd], in one copy. (Not
    `.to(float32, memory_format=contiguous_format)`: for an fp32 input that returns the
    permuted view itself, uncopied and not contiguous.)"""
    b, length, kvh, hd = x.shape
    out = torch.empty(b, kvh, length, hd, dtype=torch.float32, device=x.device)
    return out.copy_(x.permute(0, 2, 1, 3))


def _causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q [T, nh, hd], k/v [T, kvh, hd] -> causal attention [T, nh, hd]."""
    q, k, v = _sdpa_heads(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)[0].transpose(0, 1)


def _sdpa_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SDPA's inputs [1, heads, T, hd], KV heads repeated for each query head on the CPU:
    there SDPA's own GQA path (`enable_gqa`) was 1.8x slower than the repeat (256 tokens,
    SmolLM2 heads, bf16, 2 threads)."""
    q, k, v = _heads_first(q), _heads_first(k), _heads_first(v)
    if q.device.type == "cpu" and k.shape[1] != q.shape[1]:
        g = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    return q, k, v


def _heads_first(x: torch.Tensor) -> torch.Tensor:
    """[T, heads, hd] -> [1, heads, T, hd] (a view). The batch dim matters: SDPA on CPU takes
    its fused (flash) kernel only for 4-D inputs and falls back to the O(T^2)-memory math path
    for 3-D ones."""
    return x.transpose(0, 1)[None]
