"""The flashinfer backend against the torch backend at real shapes, on CUDA, in bf16.

head_dim 128 and query/KV head ratios 7 (28/4, Qwen2-7B), 5 (40/8, Qwen2.5-14B), 4 (28/7)
and 1; ragged fresh prefill of several sequences, prefill over cached prefixes, token slices
run layer by layer as the executor runs them, paged decode over ragged context lengths, two
threads sharing one backend, and no host-device synchronization on the hot path.

Reference: the torch backend in float32 over the float32 copies of the same bf16 inputs and
the same metadata, i.e. the exact attention of what the kernel was given. Tolerance
atol = rtol = 1e-2 (elementwise |out - ref| <= 1e-2 + 1e-2 |ref|): with q/k/v ~ N(0, 1) an
output is a convex combination of V rows, |o| < 5. bf16 keeps 8 significant bits (unit
roundoff u = 2^-8 = 3.9e-3); rounding the output costs <= u |o| (inside rtol), and rounding
the softmax weights to bf16 before P @ V (flashinfer's MMA input) costs
<= u * sum_i p_i |v_i| in the worst case and ~u * sqrt(sum_i p_i^2 v_i^2) typically: at most
~2e-3 when the weights spread, and when one key dominates (p ~ 1, rounded with error
<= 2^-9) ~2e-3 |v| again inside rtol. Q K^T is bf16 x bf16 with fp32 accumulation: exact
products. A masking error (a row seeing one key too many or too few) moves outputs by
O(0.1 .. 1) and fails this by far. The torch backend in bf16 is held to the same bound, so
the tolerance also tests the scenarios themselves; the scenarios also run on the CPU with
the torch backend in bf16 (no flashinfer needed), which checks their logic everywhere.
"""

from __future__ import annotations

import random
import threading

import pytest
import torch

from flowprefill.attention import TorchBackend, make_backend
from flowprefill.attention.base import cdiv
from flowprefill.config import ModelConfig
from flowprefill.executor import Piece, build_decode_batch, build_prefill_batch
from flowprefill.kvcache import KVPool
from flowprefill.model import load_model

HEADS = [(28, 4), (40, 8), (28, 7), (16, 16)]  # (query heads, KV heads): ratios 7, 5, 4, 1
HD, BS, LAYERS, BLOCKS = 128, 16, 2, 512
TOL = dict(atol=1e-2, rtol=1e-2)
# the model only supplies rope tables and a device to the batch builders
TINY = ModelConfig(name="tiny", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=1,
                   num_heads=2, num_kv_heads=1, max_position=4096, tie_word_embeddings=False,
                   eos_token_id=None, seed=0)


class Pools:
    """The pool under test (dtype) and a float32 reference pool holding the same values;
    `blocks` is the part of the pool this scenario may use (threads share one pool)."""

    def __init__(self, kvh: int, device: str, dtype: torch.dtype, blocks: list[int],
                 pool: KVPool | None = None, ref: KVPool | None = None, seed: int = 0) -> None:
        self.pool = pool or KVPool(LAYERS, BLOCKS, BS, kvh, HD, dtype, device)
        self.ref = ref or KVPool(LAYERS, BLOCKS, BS, kvh, HD, torch.float32, device)
        self.dtype, self.device, self.kvh = dtype, device, kvh
        self.blocks = list(blocks)
        self.rng = random.Random(seed)
        self.gen = torch.Generator(device).manual_seed(seed)
        self.model = load_model(TINY, device, "bfloat16")

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen, device=self.device).to(self.dtype)

    def take(self, n_tokens: int) -> list[int]:
        """A block table for n_tokens: distinct blocks in random order."""
        n = cdiv(n_tokens, BS)
        table = self.rng.sample(self.blocks, n)
        self.blocks = [b for b in self.blocks if b not in table]
        return table

    def cache(self, slots: torch.Tensor) -> None:
        """Random K/V at `slots` in every layer of both pools (a cached prefix)."""
        for layer in range(LAYERS):
            k, v = self.randn(slots.numel(), self.kvh, HD), self.randn(slots.numel(), self.kvh, HD)
            self.pool.write(layer, slots, k, v)
            self.ref.write(layer, slots, k.float(), v.float())


def run_prefill(backend, p: Pools, nh: int, spans: list[tuple[int, int]],
                cuts: list[int] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefill of pieces (start, n) with their first `start` tokens already cached, run over
    the token slices split at `cuts` in the executor's order (per layer, every slice).
    Returns (output [LAYERS, T, nh, HD] of `backend`, float32 reference)."""
    pieces = [Piece([0] * n, start, p.take(start + n)) for start, n in spans]
    batch = build_prefill_batch(p.model, pieces, BS)
    for seg in batch.full.segments:
        if seg.ctx:
            p.cache(seg.kv_slots[:seg.ctx])
    t = batch.num_rows
    q = p.randn(LAYERS, t, nh, HD)
    k, v = p.randn(LAYERS, t, p.kvh, HD), p.randn(LAYERS, t, p.kvh, HD)
    out = torch.empty(LAYERS, t, nh, HD, dtype=p.dtype, device=p.device)
    ref = torch.empty(LAYERS, t, nh, HD, device=p.device)
    bounds = [0, *cuts, t]
    ref_be = TorchBackend()
    for layer in range(LAYERS):
        for a, b in zip(bounds, bounds[1:], strict=False):
            meta = batch.meta(a, b)
            x = (q[layer, a:b], k[layer, a:b], v[layer, a:b])
            out[layer, a:b] = backend.prefill(layer, *x, meta, p.pool)
            ref[layer, a:b] = ref_be.prefill(layer, *(y.float() for y in x), meta, p.ref)
    return out, ref


def run_decode(backend, p: Pools, nh: int, context_lens: list[int],
               steps: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """`steps` decode steps of sequences whose first L_b - 1 tokens are cached.
    Returns (output [steps, LAYERS, B, nh, HD], float32 reference)."""
    tables = [p.take(n + steps - 1) for n in context_lens]
    for n, table in zip(context_lens, tables, strict=True):
        if n > 1:
            p.cache(torch.tensor([table[i // BS] * BS + i % BS for i in range(n - 1)],
                                 device=p.device))
    b = len(context_lens)
    out = torch.empty(steps, LAYERS, b, nh, HD, dtype=p.dtype, device=p.device)
    ref = torch.empty(steps, LAYERS, b, nh, HD, device=p.device)
    ref_be = TorchBackend()
    for step in range(steps):
        batch = build_decode_batch(p.model, [0] * b, [n - 1 + step for n in context_lens],
                                   tables, BS)
        for layer in range(LAYERS):
            x = (p.randn(b, nh, HD), p.randn(b, p.kvh, HD), p.randn(b, p.kvh, HD))
            out[step, layer] = backend.decode(layer, *x, batch.meta, p.pool)
            ref[step, layer] = ref_be.decode(layer, *(y.float() for y in x), batch.meta, p.ref)
    return out, ref


FRESH = [(0, 1), (0, 17), (0, 130), (0, 300)]  # several fresh sequences, ragged lengths
CACHED = [(16, 16), (100, 37), (33, 1), (0, 40), (250, 90)]  # cached prefixes, mixed with fresh
SLICED = ([(0, 257), (40, 60)], [100, 180, 290])  # a fresh prompt and a chunk, cut in 4 slices
DECODE = [1, 2, 15, 16, 17, 33, 1000]  # context lengths incl. the new token


def scenarios(backend, device, dtype, nh, kvh):
    """(name, output, reference) of every scenario for one head configuration."""
    p = Pools(kvh, device, dtype, list(range(BLOCKS)), seed=nh * 100 + kvh)
    yield ("fresh", *run_prefill(backend, p, nh, FRESH))
    yield ("cached", *run_prefill(backend, p, nh, CACHED))
    yield ("sliced", *run_prefill(backend, p, nh, SLICED[0], SLICED[1]))
    yield ("decode", *run_decode(backend, p, nh, DECODE))


def assert_matches(name, out, ref):
    err = (out.float() - ref).abs().max().item()
    torch.testing.assert_close(out.float(), ref, **TOL, msg=lambda m: f"{name}: {m} (max {err})")


@pytest.mark.parametrize(("nh", "kvh"), HEADS[:2])
def test_scenarios_hold_for_the_torch_backend_in_bf16_on_cpu(nh, kvh):
    """The scenarios and tolerance themselves, checked without flashinfer or a GPU."""
    for name, out, ref in scenarios(TorchBackend(), "cpu", torch.bfloat16, nh, kvh):
        assert_matches(name, out, ref)


@pytest.mark.gpu
@pytest.mark.parametrize(("nh", "kvh"), HEADS)
def test_flashinfer_matches_the_torch_backend(nh, kvh):
    pytest.importorskip("flashinfer")
    fi = make_backend("flashinfer")
    torch_bf16 = list(scenarios(TorchBackend(), "cuda", torch.bfloat16, nh, kvh))
    for (name, out, ref), (_, tout, tref) in zip(
            scenarios(fi, "cuda", torch.bfloat16, nh, kvh), torch_bf16, strict=True):
        torch.testing.assert_close(ref, tref, atol=1e-5, rtol=1e-5)  # same seeds, same inputs
        assert_matches(name, out, ref)
        assert_matches(f"{name} (torch bf16)", tout, tref)
        torch.testing.assert_close(out, tout, atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
def test_flashinfer_plans_once_per_slice_and_reuses_wrappers():
    pytest.importorskip("flashinfer")
    fi = make_backend("flashinfer")
    nh, kvh = HEADS[0]
    p = Pools(kvh, "cuda", torch.bfloat16, list(range(BLOCKS)))
    out, ref = run_prefill(fi, p, nh, *SLICED)
    assert_matches("sliced", out, ref)
    (cache,) = fi._threads.get().caches.values()
    assert len(cache.wrappers("ragged")) == 1  # the first slice of the fresh prompt
    assert len(cache.wrappers("paged")) == 3  # the other three read cached context
    out, ref = run_decode(fi, p, nh, DECODE, steps=3)
    assert_matches("decode", out, ref)
    assert len(cache.wrappers("decode")) == 1  # each step's batch is gone before the next
    assert all(w.use_tensor_cores for w in cache.wrappers("decode"))


@pytest.mark.gpu
def test_two_threads_share_a_backend_and_a_pool_each_correct():
    """A colocated worker: a prefill thread and a decode thread (on its own stream) run the
    same backend object over disjoint blocks of one pool, concurrently."""
    pytest.importorskip("flashinfer")
    fi = make_backend("flashinfer")
    nh, kvh = HEADS[1]
    pool = KVPool(LAYERS, BLOCKS, BS, kvh, HD, torch.bfloat16, "cuda")
    ref = KVPool(LAYERS, BLOCKS, BS, kvh, HD, torch.float32, "cuda")
    half = BLOCKS // 2
    results, errors, states = {}, [], {}
    barrier = threading.Barrier(2)

    def prefill_thread():
        p = Pools(kvh, "cuda", torch.bfloat16, list(range(half)), pool, ref, seed=1)
        barrier.wait()
        for i in range(4):
            p.blocks = list(range(half))
            results[f"prefill {i} fresh"] = run_prefill(fi, p, nh, FRESH)
            p.blocks = list(range(half))
            results[f"prefill {i} sliced"] = run_prefill(fi, p, nh, *SLICED)
        torch.cuda.current_stream().synchronize()
        states["prefill"] = fi._threads.get()

    def decode_thread():
        p = Pools(kvh, "cuda", torch.bfloat16, list(range(half, BLOCKS)), pool, ref, seed=2)
        with torch.cuda.stream(torch.cuda.Stream()):
            barrier.wait()
            for i in range(4):
                p.blocks = list(range(half, BLOCKS))
                results[f"decode {i}"] = run_decode(fi, p, nh, DECODE, steps=3)
            torch.cuda.current_stream().synchronize()
        states["decode"] = fi._threads.get()

    def guarded(fn):
        def body():
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - reported in the main thread
                errors.append(e)
                barrier.abort()
        return body

    threads = [threading.Thread(target=guarded(f)) for f in (prefill_thread, decode_thread)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    assert states["prefill"] is not states["decode"]
    (pc,), (dc,) = states["prefill"].caches.values(), states["decode"].caches.values()
    assert not {id(w) for k in ("ragged", "paged", "decode") for w in pc.wrappers(k)} & {
        id(w) for k in ("ragged", "paged", "decode") for w in dc.wrappers(k)}
    assert len(results) == 12
    for name, (out, r) in results.items():
        assert_matches(name, out, r)


@pytest.mark.gpu
def test_flashinfer_hot_path_never_blocks_the_host():
    """After a warm-up on the same shapes (kernel loading, cached constants), building
    batches, planning and running three forwards neither synchronizes through PyTorch
    (sync-debug 'error') nor waits for the device in any other way: the device is kept
    asleep for ~1 s meanwhile and has not woken when the host is done."""
    pytest.importorskip("flashinfer")
    fi = make_backend("flashinfer")
    nh, kvh = HEADS[0]
    p = Pools(kvh, "cuda", torch.bfloat16, list(range(BLOCKS)))
    run_prefill(fi, p, nh, CACHED)
    run_prefill(fi, p, nh, FRESH)
    run_decode(fi, p, nh, DECODE[:3], steps=1)
    p = Pools(kvh, "cuda", torch.bfloat16, list(range(BLOCKS)), seed=5)
    cached = [Piece([0] * n, start, p.take(start + n)) for start, n in CACHED]
    fresh = [Piece([0] * n, 0, p.take(n)) for _, n in FRESH]
    tables = [p.take(n) for n in DECODE[:3]]
    tc, tf, b = sum(n for _, n in CACHED), sum(n for _, n in FRESH), 3
    xc = (p.randn(tc, nh, HD), p.randn(tc, kvh, HD), p.randn(tc, kvh, HD))
    xf = (p.randn(tf, nh, HD), p.randn(tf, kvh, HD), p.randn(tf, kvh, HD))
    xd = (p.randn(b, nh, HD), p.randn(b, kvh, HD), p.randn(b, kvh, HD))
    torch.cuda.synchronize()
    torch.cuda._sleep(2_000_000_000)  # ~1 s of device time at ~2 GHz
    awake = torch.cuda.Event()
    awake.record()
    torch.cuda.set_sync_debug_mode("error")
    try:
        batch = build_prefill_batch(p.model, cached, BS)
        for layer in range(LAYERS):
            fi.prefill(layer, *xc, batch.full, p.pool)
        batch = build_prefill_batch(p.model, fresh, BS)
        for layer in range(LAYERS):
            fi.prefill(layer, *xf, batch.full, p.pool)
        dec = build_decode_batch(p.model, [0] * b, [n - 1 for n in DECODE[:3]], tables, BS)
        for layer in range(LAYERS):
            fi.decode(layer, *xd, dec.meta, p.pool)
        still_asleep = not awake.query()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert still_asleep, "the host waited for the device (or the sleep was too short)"


@pytest.mark.gpu
def test_flashinfer_rejects_float32():
    pytest.importorskip("flashinfer")
    fi = make_backend("flashinfer")
    pool = KVPool(1, 4, BS, 2, HD, torch.float32, "cuda")
    x = torch.zeros(1, 4, HD, device="cuda")
    with pytest.raises(ValueError, match="engine.dtype bfloat16 or float16"):
        fi.decode(0, x, x[:, :2], x[:, :2], None, pool)


def test_flashinfer_rejects_cpu_tensors():
    pytest.importorskip("flashinfer")
    fi = make_backend("flashinfer")
    pool = KVPool(1, 4, BS, 2, 8)
    with pytest.raises(ValueError, match="runs on CUDA only"):
        fi.decode(0, torch.zeros(1, 4, 8), torch.zeros(1, 2, 8), torch.zeros(1, 2, 8), None, pool)
