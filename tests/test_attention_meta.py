"""Batch metadata: host block tables agree with the device slots, slices, staging, errors."""

from __future__ import annotations

import random

import pytest
import torch

from flowprefill.attention.base import cdiv
from flowprefill.config import EngineConfig, ModelConfig
from flowprefill.executor import ModelRunner, Piece, build_decode_batch, build_prefill_batch
from flowprefill.executor.batch import _host_buffer, _to_device
from flowprefill.kvcache import KVPool
from tests.cpu_fp32 import CPU_FP32

CFG = ModelConfig(name="t", vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=1,
                  num_heads=4, num_kv_heads=2, max_position=4096, tie_word_embeddings=False,
                  eos_token_id=None, seed=3)


@pytest.fixture(scope="module")
def model():
    return ModelRunner(CFG, EngineConfig(**CPU_FP32, num_kv_blocks=64)).model


def implied_slots(blocks, n, bs) -> torch.Tensor:
    """The slots of positions 0..n-1 that a block table implies."""
    return torch.tensor([blocks[p // bs] * bs + p % bs for p in range(n)])


def random_pieces(rng, bs):
    pieces = []
    for _ in range(rng.randint(1, 4)):
        start, n = rng.choice([0, 0, rng.randint(1, 50)]), rng.randint(1, 50)
        spare = rng.randint(0, 3)  # block tables may cover more than this forward
        pieces.append(Piece([rng.randrange(512) for _ in range(n)], start,
                            rng.sample(range(400), cdiv(start + n, bs) + spare)))
    return pieces


def check_segments(meta, bs):
    row = 0
    for seg in meta.segments:
        assert seg.row == row  # packed in order: the rows of a call are the segments' rows
        assert len(seg.blocks) == cdiv(seg.kv_len, bs) and seg.kv_slots.numel() == seg.kv_len
        kv_slots = seg.kv_slots.cpu()
        assert torch.equal(kv_slots, implied_slots(seg.blocks, seg.kv_len, bs))
        assert torch.equal(meta.slots[seg.row:seg.row + seg.num].cpu(), kv_slots[seg.ctx:])
        row += seg.num
    assert row == meta.slots.numel()


@pytest.mark.parametrize("bs", [1, 4, 16])
def test_prefill_host_blocks_imply_the_device_slots(model, bs):
    rng = random.Random(bs)
    for _ in range(30):
        pieces = random_pieces(rng, bs)
        batch = build_prefill_batch(model, pieces, bs)
        t = batch.num_rows
        check_segments(batch.full, bs)
        assert batch.full.fresh == all(p.start == 0 for p in pieces)
        for seg, p in zip(batch.full.segments, pieces, strict=True):
            assert seg.ctx == p.start and seg.blocks == tuple(p.block_table[:len(seg.blocks)])
        cuts = sorted(rng.sample(range(1, t), min(3, t - 1))) if t > 1 else []
        for s, e in zip([0, *cuts], [*cuts, t], strict=True):  # token slices
            sl = batch.meta(s, e)
            assert sl is batch.meta(s, e)  # one object per slice: plans key on it
            check_segments(sl, bs)
            assert sum(g.num for g in sl.segments) == e - s


def test_a_later_slice_of_a_fresh_prompt_reads_cached_context(model):
    batch = build_prefill_batch(model, [Piece(list(range(40)), 0, [5, 9, 2])], 16)
    first, second = batch.meta(0, 24), batch.meta(24, 40)
    assert first.fresh and not second.fresh
    (seg,) = second.segments
    assert (seg.row, seg.num, seg.ctx, seg.blocks) == (0, 16, 24, (5, 9, 2))
    (seg,) = batch.meta(0, 10).segments
    assert seg.blocks == (5,)  # only the blocks covering its 10 positions


@pytest.mark.parametrize("bs", [1, 4, 16])
def test_decode_host_tables_imply_the_device_slots(model, bs):
    rng = random.Random(100 + bs)
    for _ in range(30):
        b = rng.randint(1, 6)
        positions = [rng.randint(0, 70) for _ in range(b)]
        tables = [rng.sample(range(400), cdiv(p + 1, bs) + rng.randint(0, 2)) for p in positions]
        batch = build_decode_batch(model, [rng.randrange(512) for _ in range(b)], positions,
                                   tables, bs)
        m = batch.meta
        assert m.context_lens == tuple(p + 1 for p in positions)
        assert torch.equal(batch.positions, torch.tensor(positions))
        lmax = max(m.context_lens)
        assert m.ctx_slots.shape == (b, lmax) and m.mask.shape == (b, 1, 1, lmax)
        for i, (n, blocks) in enumerate(zip(m.context_lens, m.block_tables, strict=True)):
            assert len(blocks) == cdiv(n, bs) and blocks == tuple(tables[i][:len(blocks)])
            assert torch.equal(m.ctx_slots[i, :n], implied_slots(blocks, n, bs))
            assert int(m.slots[i]) == implied_slots(blocks, n, bs)[-1]
            assert m.mask[i, 0, 0].tolist() == [p < n for p in range(lmax)]
            assert not m.ctx_slots[i, n:].any()  # padding reads slot 0 (masked)


def test_short_block_tables_are_rejected_by_name(model):
    with pytest.raises(ValueError, match=r"pieces\[1\]\.block_table has 1 blocks"):
        build_prefill_batch(model, [Piece([1, 2], 0, [0]), Piece([3] * 5, 0, [1])], 4)
    with pytest.raises(ValueError, match=r"block_tables\[0\] has 1 blocks"):
        build_decode_batch(model, [7], [4], [[3]], 4)


def test_staging_on_cpu_is_the_host_buffer_itself():
    cpu = torch.device("cpu")
    host = _host_buffer(8, cpu)
    assert host.dtype == torch.int64 and not host.is_pinned()  # pinning needs CUDA
    assert _to_device(host, cpu) is host  # no copy on the CPU


def test_batch_tensors_share_one_host_buffer_on_cpu(model):
    batch = build_prefill_batch(model, [Piece([1, 2, 3], 2, [0, 1])], 4)
    base = batch.host.untyped_storage().data_ptr()
    for t in (batch.token_ids, batch.positions, batch.last_rows, batch.full.slots,
              batch.full.segments[0].kv_slots):
        assert t.untyped_storage().data_ptr() == base
    dec = build_decode_batch(model, [5], [2], [[3]], 4)
    assert dec.meta.tables.untyped_storage().data_ptr() == dec.host.untyped_storage().data_ptr()


@pytest.mark.gpu
def test_building_batches_on_cuda_never_blocks_the_host():
    """Host buffers are pinned and copied non-blocking: under sync-debug 'error' any blocking
    copy or device read raises."""
    runner = ModelRunner(CFG, EngineConfig(num_kv_blocks=64, device="cuda"))
    m = runner.model
    pieces = [Piece(list(range(30)), 0, [1, 2]), Piece(list(range(9)), 17, [3, 4])]
    build_prefill_batch(m, pieces, 16)  # warm-up: lazy CUDA init may synchronize once
    build_decode_batch(m, [1, 2], [5, 40], [[1], [2, 3, 4]], 16)
    torch.cuda._sleep(100_000_000)  # keep the device busy: a blocking copy would wait on it
    torch.cuda.set_sync_debug_mode("error")
    try:
        batch = build_prefill_batch(m, pieces, 16)
        sl = batch.meta(5, 39)
        dec = build_decode_batch(m, [1, 2], [5, 40], [[1], [2, 3, 4]], 16)
        _ = dec.meta.ctx_slots, dec.meta.mask
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert batch.host.is_pinned() and dec.host.is_pinned()
    assert batch.token_ids.is_cuda and sl.slots.is_cuda and dec.meta.tables.is_cuda
    torch.cuda.synchronize()
    assert batch.token_ids.tolist() == list(range(30)) + list(range(9))
    check_segments(batch.full, 16)
    check_segments(sl, 16)


def test_pool_pages_are_the_slots_in_nhd_block_layout():
    pool = KVPool(2, 6, 4, 3, 8)  # 6 blocks of 4 slots
    k, v = torch.randn(24, 3, 8), torch.randn(24, 3, 8)
    pool.write(1, torch.arange(24), k, v)
    kp, vp = pool.pages(1)
    assert kp.shape == vp.shape == (6, 4, 3, 8)
    assert kp.is_contiguous() and vp.is_contiguous() and kp.stride() == vp.stride()
    assert torch.equal(kp[5, 2], k[5 * 4 + 2]) and torch.equal(vp.reshape(24, 3, 8), v)
    kp[0, 1] = 0  # views: a page write is a slot write
    assert not pool.gather(1, torch.tensor([1]))[0].any()
    assert not pool.pages(0)[0].any()  # layer 0 untouched
