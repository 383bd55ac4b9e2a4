"""Attention backends against a naive reference (explicit masks and softmax)."""

from __future__ import annotations

import pytest
import torch

from flowprefill.attention import PrefillMeta, Segment, make_backend
from flowprefill.executor.batch import build_decode_batch
from flowprefill.kvcache import KVPool, slot_ids

NH, KVH, HD, BS = 4, 2, 8, 4


def naive(q, k, v, ctx):
    """q [n, nh, hd] at positions ctx..; k/v [ctx + n, kvh, hd] -> [n, nh, hd]."""
    k = k.repeat_interleave(NH // KVH, dim=1)
    v = v.repeat_interleave(NH // KVH, dim=1)
    s = torch.einsum("qhd,khd->hqk", q, k) / HD**0.5
    n, total = q.shape[0], k.shape[0]
    allowed = torch.arange(total)[None, :] <= (ctx + torch.arange(n))[:, None]
    p = s.masked_fill(~allowed, float("-inf")).softmax(-1)
    return torch.einsum("hqk,khd->qhd", p, v)


def _setup(seed=0):
    torch.manual_seed(seed)
    return KVPool(1, 32, BS, KVH, HD), make_backend("torch")


def test_packed_fresh_prefill_is_causal_per_request():
    pool, be = _setup()
    lens, tables = [5, 9, 1], [[0, 1], [2, 3, 4], [5]]
    q, k, v = torch.randn(15, NH, HD), torch.randn(15, KVH, HD), torch.randn(15, KVH, HD)
    segs, slots, row = [], [], 0
    for n, t in zip(lens, tables, strict=True):
        s = slot_ids(torch.tensor(t), torch.arange(n), BS)
        segs.append(Segment(row, n, 0, s, tuple(t)))
        slots.append(s)
        row += n
    out = be.prefill(0, q, k, v, PrefillMeta(torch.cat(slots), tuple(segs)), pool)
    row = 0
    for n in lens:
        r = slice(row, row + n)
        torch.testing.assert_close(out[r], naive(q[r], k[r], v[r], 0))
        row += n
    gk, _ = pool.gather(0, torch.cat(slots))
    assert torch.equal(gk, k)


def test_chunk_attends_to_cached_context():
    pool, be = _setup(1)
    table = torch.tensor([7, 3, 9, 1])
    ctx, n = 6, 7
    k_all, v_all = torch.randn(ctx + n, KVH, HD), torch.randn(ctx + n, KVH, HD)
    kv_slots = slot_ids(table, torch.arange(ctx + n), BS)
    pool.write(0, kv_slots[:ctx], k_all[:ctx], v_all[:ctx])
    q = torch.randn(n, NH, HD)
    meta = PrefillMeta(kv_slots[ctx:], (Segment(0, n, ctx, kv_slots, tuple(table.tolist())),))
    out = be.prefill(0, q, k_all[ctx:], v_all[ctx:], meta, pool)
    torch.testing.assert_close(out, naive(q, k_all, v_all, ctx))


def test_batched_decode_over_paged_kv():
    pool, be = _setup(2)
    lens = [3, 9, 5]  # context incl. the new token
    tables = [[4], [0, 8, 2], [6, 5]]
    ks = [torch.randn(n, KVH, HD) for n in lens]
    vs = [torch.randn(n, KVH, HD) for n in lens]
    for t, k, v, n in zip(tables, ks, vs, lens, strict=True):
        s = slot_ids(torch.tensor(t), torch.arange(n - 1), BS)
        pool.write(0, s, k[:-1], v[:-1])

    class _M:  # the batch builder only needs a device
        device = torch.device("cpu")

    batch = build_decode_batch(_M(), [0, 0, 0], [n - 1 for n in lens], tables, BS)
    q = torch.randn(3, NH, HD)
    out = be.decode(0, q, torch.stack([k[-1] for k in ks]), torch.stack([v[-1] for v in vs]),
                    batch.meta, pool)
    for b, n in enumerate(lens):
        ref = naive(q[b:b + 1], ks[b], vs[b], n - 1)
        torch.testing.assert_close(out[b:b + 1], ref)


def test_unknown_backend_is_an_error():
    with pytest.raises(ValueError, match="unknown attention backend"):
        make_backend("nope")
