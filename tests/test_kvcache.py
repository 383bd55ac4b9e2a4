"""Block manager bookkeeping and the device pool's slot addressing."""

from __future__ import annotations

import pytest
import torch

from flowprefill.config import EngineConfig, ModelConfig
from flowprefill.core import SLO, Job, Request
from flowprefill.executor import ModelRunner
from flowprefill.kvcache import BlockManager, KVPool, OutOfBlocksError, slot_ids
from tests.cpu_fp32 import CPU_FP32


def test_allocate_append_free():
    bm = BlockManager(num_blocks=8, block_size=16)
    assert bm.allocate("a", 17) == [0, 1] and bm.num_free == 6
    assert bm.append("a", 15) == []  # 32 tokens still fit in 2 blocks
    assert bm.append("a", 1) == [2] and bm.num_tokens("a") == 33
    bm.allocate("b", 16)
    assert bm.block_table("b") == [3] and bm.num_free == 4
    bm.free("a")
    assert bm.num_free == 7 and not bm.has("a")
    bm.free("a")  # idempotent
    assert bm.num_free == 7
    with pytest.raises(ValueError):
        bm.allocate("b", 1)


def test_fork_shares_blocks_with_reference_counts():
    bm = BlockManager(num_blocks=4, block_size=16)
    bm.allocate("a", 20)
    bm.fork("a", "b")
    assert bm.block_table("b") == bm.block_table("a") and bm.ref_count(0) == 2
    bm.free("a")
    assert bm.num_free == 2 and bm.ref_count(0) == 1
    bm.free("b")
    assert bm.num_free == 4 and bm.ref_count(0) == 0


def test_exhaustion_raises_and_allocates_nothing():
    bm = BlockManager(num_blocks=3, block_size=16)
    bm.allocate("a", 32)
    with pytest.raises(OutOfBlocksError) as e:
        bm.allocate("b", 17)
    assert (e.value.needed, e.value.free) == (2, 1) and "exhausted" in str(e.value)
    assert bm.num_free == 1 and not bm.has("b")
    bm.append("a", 16)
    with pytest.raises(OutOfBlocksError):
        bm.append("a", 1)
    assert bm.num_tokens("a") == 48


def test_runner_prefill_job_exhaustion_holds_nothing():
    cfg = ModelConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=1,
                      num_heads=2, num_kv_heads=1, max_position=256)
    rn = ModelRunner(cfg, EngineConfig(**CPU_FP32, num_kv_blocks=4))
    reqs = tuple(Request(f"r{i}", 0.0, 40, SLO(1.0), prompt_token_ids=(1,) * 40)
                 for i in range(2))
    with pytest.raises(OutOfBlocksError):
        rn.prefill_job(Job.unsliced(0, reqs, cfg.num_layers))  # 3 + 3 blocks > 4
    assert rn.blocks.num_free == 4 and not rn.blocks.has("r0")


def test_pool_write_and_gather_by_slot():
    pool = KVPool(num_layers=2, num_blocks=4, block_size=4, num_kv_heads=2, head_dim=3)
    table = torch.tensor([2, 0])
    slots = slot_ids(table, torch.arange(6), 4)
    assert slots.tolist() == [8, 9, 10, 11, 0, 1]
    k, v = torch.randn(6, 2, 3), torch.randn(6, 2, 3)
    pool.write(1, slots, k, v)
    gk, gv = pool.gather(1, slots)
    assert torch.equal(gk, k) and torch.equal(gv, v)
    assert pool.kv[0].abs().sum() == 0  # other layer untouched
    assert torch.equal(pool.kv[1, 0].view(4, 4, 2, 3)[2, 1], k[1])  # block 2, offset 1


def test_multi_sequence_updates_are_all_or_nothing():
    from flowprefill.kvcache import BlockManager, OutOfBlocksError

    bm = BlockManager(num_blocks=4, block_size=16)
    with pytest.raises(OutOfBlocksError):
        bm.allocate_all(["a", "b"], [32, 40])  # 2 + 3 blocks > 4
    assert bm.num_free == 4 and not bm.has("a")
    bm.allocate_all(["a", "b"], [16, 32])  # 1 + 2 blocks
    with pytest.raises(OutOfBlocksError):
        bm.append_all(["a", "b"], 16)  # each needs one more block: 2 > 1 free
    assert (bm.num_tokens("a"), bm.num_tokens("b"), bm.num_free) == (16, 32, 1)


def test_concurrent_allocation_and_free_keep_counts_consistent():
    import threading

    from flowprefill.kvcache import BlockManager, OutOfBlocksError

    bm = BlockManager(num_blocks=64, block_size=16)

    def churn(tag: str) -> None:
        for i in range(2000):
            sid = f"{tag}{i}"
            try:
                bm.allocate_all([sid], [40])
                bm.append_all([sid], 9)
            except OutOfBlocksError:
                continue
            bm.free(sid)

    threads = [threading.Thread(target=churn, args=(t,)) for t in "abcd"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bm.num_free == 64
    assert sorted(set(bm._free)) == list(range(64))  # no block lost or duplicated
