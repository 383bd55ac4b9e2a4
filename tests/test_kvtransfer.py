"""KV transfer: descriptor layout, leases, and a real NIXL pull between two processes."""

from __future__ import annotations

import asyncio
import multiprocessing as mp

import numpy as np
import pytest
import torch

from flowprefill.kvcache import KVPool
from flowprefill.kvtransfer import KVAgent, KVLayout, LeaseTable, TransferError, layout_of

L, NB, BS, KVH, HD = 2, 8, 4, 2, 8


def test_layout_addresses_match_the_pool_tensor():
    pool = KVPool(L, NB, BS, KVH, HD)
    lay = layout_of(pool.kv, L, NB)
    assert lay.block_bytes == BS * KVH * HD * 4
    descs = lay.descs()
    for layer, kv, block in [(0, 0, 0), (1, 1, 7), (1, 0, 3)]:
        i = lay.indices([block])[layer * 2 + kv]
        view = pool.kv[layer, kv, block * BS:(block + 1) * BS]
        assert int(descs[i, 0]) == view.data_ptr() and int(descs[i, 1]) == lay.block_bytes
    assert lay.indices([1, 5]).tolist() == [1, 5, 9, 13, 17, 21, 25, 29]
    with pytest.raises(ValueError):
        lay.indices([NB])
    assert lay.compatible(KVLayout(0, L, 99, lay.block_bytes))
    assert not lay.compatible(KVLayout(0, L + 1, NB, lay.block_bytes))


def test_lease_release_and_expiry():
    leases = LeaseTable(timeout=1.0)
    leases.add("a", [1, 2], 20, now=0.0)
    leases.add("b", [3], 5, now=0.5)
    assert leases.release("a").blocks == (1, 2)
    assert leases.release("a") is None
    assert [x.request_id for x in leases.expire(now=1.6)] == ["b"]
    assert len(leases) == 0 and (leases.released, leases.expired) == (1, 1)


def _serve_pool(meta_q, done_q) -> None:
    pool = KVPool(L, NB, BS, KVH, HD)
    pool.kv.copy_(torch.arange(pool.kv.numel(), dtype=torch.float32).view_as(pool.kv))
    agent = KVAgent(pool.kv, L, NB, role="prefill")
    meta_q.put(agent.metadata())
    done_q.get(timeout=60)


@pytest.mark.slow
def test_nixl_pull_copies_exactly_the_named_blocks():
    ctx = mp.get_context("spawn")
    meta_q, done_q = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=_serve_pool, args=(meta_q, done_q), daemon=True)
    proc.start()
    try:
        info = meta_q.get(timeout=60)
        local = KVPool(L, NB + 4, BS, KVH, HD)  # pools may differ in size, not in block shape
        agent = KVAgent(local.kv, L, NB + 4, role="decode")
        peer = agent.add_peer(info)
        secs = asyncio.run(agent.pull(peer, [3, 1], [0, 10], timeout=10.0))
        assert secs > 0
        src = torch.arange(L * 2 * NB * BS * KVH * HD, dtype=torch.float32).view(
            L, 2, NB * BS, KVH, HD)
        for layer in range(L):
            for kv in range(2):
                got = local.kv[layer, kv]
                assert torch.equal(got[0:BS], src[layer, kv, 3 * BS:4 * BS])
                assert torch.equal(got[10 * BS:11 * BS], src[layer, kv, 1 * BS:2 * BS])
                assert not got[BS:10 * BS].any()  # nothing else written
        with pytest.raises(TransferError):
            agent.start_read("nobody", [0], [0])
        assert np.isclose(agent.bytes_for(2), 2 * 2 * L * BS * KVH * HD * 4)
        agent.close()
    finally:
        done_q.put(1)
        proc.join(timeout=30)
