"""The compiled CPU decode kernel (attention.cpu_kernel) against a float64 reference and
against the PyTorch-ops path it replaces, and the fallback where it cannot be built."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

from flowprefill.attention import PrefillMeta, Segment, TorchBackend, cpu_kernel, make_backend
from flowprefill.executor.batch import build_decode_batch
from flowprefill.kvcache import KVPool, slot_ids

HAS_CXX = bool(shutil.which("g++") or shutil.which("c++"))
BS = 16


class _M:  # the batch builder only needs a device
    device = torch.device("cpu")


@pytest.fixture(scope="module")
def kernel():
    k = cpu_kernel.load()
    if k is None and not HAS_CXX:
        pytest.skip("no C++ compiler here: the kernel cannot be built (the fallback is tested)")
    assert k is not None, "a C++ compiler is here, yet the kernel did not build (see the log)"
    return k


def reference(q, kc, vc, slots, lens):
    """float64 attention of q [B, nh, hd] over each row's first lens[b] slots."""
    nh, kvh = q.shape[1], kc.shape[1]
    out = []
    for b, n in enumerate(lens.tolist()):
        k = kc[slots[b, :n]].double().repeat_interleave(nh // kvh, 1)  # [n, nh, hd]
        v = vc[slots[b, :n]].double().repeat_interleave(nh // kvh, 1)
        s = torch.einsum("hd,nhd->hn", q[b].double(), k) / q.shape[-1] ** 0.5
        out.append(torch.einsum("hn,nhd->hd", s.softmax(-1), v))
    return torch.stack(out)


def scattered(batch, lens, num_slots, gen):
    """[B, max(lens)] slots in randomly placed blocks; padding points at slot 0, which holds
    huge values (a kernel that read past a row's length would show it)."""
    width = max(lens)
    blocks = torch.randperm(num_slots // BS - 1, generator=gen)[: batch * (width // BS + 1)] + 1
    pos = torch.arange(width)[None, :].expand(batch, -1)
    slots = blocks.view(batch, -1).gather(1, pos // BS) * BS + pos % BS
    valid = torch.arange(width)[None, :] < torch.tensor(lens)[:, None]
    return slots * valid


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("nh,kvh,hd", [(4, 4, 16), (9, 3, 64), (8, 2, 128)])
def test_kernel_matches_a_float64_reference(kernel, dtype, nh, kvh, hd):
    gen = torch.Generator().manual_seed(nh * hd)
    num_slots = 128 * BS
    kc = torch.randn(num_slots, kvh, hd, generator=gen).to(dtype)
    vc = torch.randn(num_slots, kvh, hd, generator=gen).to(dtype)
    kc[0], vc[0] = 1e4, 1e4  # padding slot
    lens = [1, 37, 300, 16, 129]
    slots = scattered(len(lens), lens, num_slots, gen)
    q = (3 * torch.randn(len(lens), nh, hd, generator=gen)).to(dtype)
    assert kernel.supports(q, kc)
    out = kernel(q, kc, vc, slots, torch.tensor(lens))
    assert out.dtype == dtype and out.shape == q.shape
    tol = dict(atol=2e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(out.double(), reference(q, kc, vc, slots, torch.tensor(lens)),
                               **tol)


def test_kernel_refuses_what_it_cannot_run(kernel):
    kc = torch.zeros(32, 2, 24)
    assert not kernel.supports(torch.zeros(1, 4, 24), kc)  # head_dim not a multiple of 16
    assert not kernel.supports(torch.zeros(1, 4, 16, dtype=torch.float16),
                               torch.zeros(32, 2, 16, dtype=torch.float16))
    with pytest.raises(ValueError, match="contiguous"):
        kernel(torch.zeros(1, 4, 16), torch.zeros(32, 4, 2, 16).transpose(1, 2)[:, 0],
               torch.zeros(32, 2, 16), torch.zeros(1, 4, dtype=torch.int64),
               torch.ones(1, dtype=torch.int64))


def _pool_with_context(lens, tables, kvh, hd, dtype, gen):
    pool = KVPool(1, 40, BS, kvh, hd, dtype)
    for n, t in zip(lens, tables, strict=True):
        s = slot_ids(torch.tensor(t), torch.arange(n - 1), BS)
        pool.write(0, s, torch.randn(n - 1, kvh, hd, generator=gen).to(dtype),
                   torch.randn(n - 1, kvh, hd, generator=gen).to(dtype))
    return pool


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backend_with_the_kernel_equals_pytorch_ops(kernel, dtype):
    """Decode steps and decoding rows riding a prefill give what the PyTorch-ops path gives."""
    gen = torch.Generator().manual_seed(3)
    nh, kvh, hd = 9, 3, 64
    lens, tables = [40, 3, 70], [[4, 9, 1], [0], [6, 5, 2, 3, 8]]
    tol = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    with_k, ops = TorchBackend(kernel), TorchBackend(None)

    batch = build_decode_batch(_M(), [0] * 3, [n - 1 for n in lens], tables, BS)
    q = torch.randn(3, nh, hd, generator=gen).to(dtype)
    k, v = (torch.randn(3, kvh, hd, generator=gen).to(dtype) for _ in range(2))
    outs = [be.decode(0, q, k, v, batch.meta, _pool_with_context(lens, tables, kvh, hd, dtype,
                                                                 torch.Generator().manual_seed(4)))
            for be in (with_k, ops)]
    torch.testing.assert_close(outs[0], outs[1], **tol)

    # a fresh 20-token prompt (blocks 20, 21) and the three sequences riding it
    fresh = slot_ids(torch.tensor([20, 21]), torch.arange(20), BS)
    segs = [Segment(0, 20, 0, fresh, (20, 21))]
    slots = [fresh]
    for i, (n, t) in enumerate(zip(lens, tables, strict=True)):
        kv = slot_ids(torch.tensor(t), torch.arange(n), BS)
        segs.append(Segment(20 + i, 1, n - 1, kv, tuple(t)))
        slots.append(kv[-1:])
    meta = PrefillMeta(torch.cat(slots), tuple(segs))
    q = torch.randn(23, nh, hd, generator=gen).to(dtype)
    k, v = (torch.randn(23, kvh, hd, generator=gen).to(dtype) for _ in range(2))
    outs = [be.prefill(0, q, k, v, meta, _pool_with_context(lens, tables, kvh, hd, dtype,
                                                            torch.Generator().manual_seed(4)))
            for be in (with_k, ops)]
    torch.testing.assert_close(outs[0], outs[1], **tol)


def test_backend_takes_the_kernel_on_the_cpu_unless_told_not_to(kernel):
    assert make_backend("torch", "cpu").kernel is kernel
    assert make_backend("torch", "cpu", cpu_kernel=False).kernel is None
    assert make_backend("torch", "cuda").kernel is None


def test_a_kernel_that_cannot_be_built_falls_back_to_pytorch_ops(monkeypatch, tmp_path,
                                                                   caplog):
    monkeypatch.setenv("CXX", "false")  # a "compiler" that always fails
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cpu_kernel.load.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger=cpu_kernel.__name__):
            be = make_backend("torch", "cpu")
        assert be.kernel is None
        assert "CPU decode kernel unavailable" in caplog.text and "false failed" in caplog.text
        assert not list(tmp_path.rglob("*.so"))  # no half-built file left behind
        pool = KVPool(1, 8, BS, 2, 16)

        batch = build_decode_batch(_M(), [0], [0], [[1]], BS)
        out = be.decode(0, torch.randn(1, 4, 16), torch.randn(1, 2, 16), torch.randn(1, 2, 16),
                        batch.meta, pool)
        assert out.shape == (1, 4, 16) and torch.isfinite(out).all()
    finally:
        cpu_kernel.load.cache_clear()  # later tests build (or find) the real one again


def test_loading_the_kernel_leaves_subnormal_arithmetic_alone(kernel):
    """A shared object linked with -ffast-math switches the process to flush-to-zero when it
    loads (it broke hypothesis's float strategies here); the kernel is linked without it."""
    tiny = torch.tensor([1e-40])  # a float32 subnormal
    assert (tiny * 1.0).item() > 0 and (tiny / 2).item() > 0
    smallest_normal = torch.finfo(torch.float64).tiny
    assert smallest_normal / 2 > 0  # Python floats too


def test_out_of_range_slots_and_lengths_are_errors_not_crashes(kernel):
    kc = vc = torch.zeros(32, 2, 16)
    q = torch.zeros(2, 4, 16)
    ok = torch.tensor([[1, 2, 3], [4, 5, 0]])
    kernel(q, kc, vc, ok, torch.tensor([3, 2]))
    with pytest.raises(IndexError, match="slot outside the pool's 32"):
        kernel(q, kc, vc, torch.tensor([[1, 2, 32], [4, 5, 0]]), torch.tensor([3, 2]))
    with pytest.raises(IndexError, match="length outside 1..3"):
        kernel(q, kc, vc, ok, torch.tensor([4, 2]))
    with pytest.raises(IndexError):
        kernel(q, kc, vc, ok, torch.tensor([3, 0]))
    with pytest.raises(ValueError, match="do not agree"):
        kernel(q, kc, vc, ok, torch.tensor([3]))
