"""The `flashinfer` attention backend (CUDA only; `pip install flowprefill[gpu]`).

Import-guarded: importing this module without flashinfer raises ImportError with the fix.
K/V are written to the pool first. A prefill call whose segments have no cached context runs
flashinfer's ragged kernel over this call's own k/v; any other prefill call (later chunks,
later token slices) and every decode step read the pool as paged KV: each layer's K and V
slot tensors `[S, kvh, hd]` viewed as `[num_blocks, block_size, kvh, hd]`, flashinfer's NHD
layout with page = block, and the blocks of the metadata's host block tables as page ids.

Plans are made from host-side metadata only (no device reads), once per metadata object and
thread, and reused by every layer (see `flashinfer_plan.PlanCache`). Each thread that calls
the backend (a colocated worker's prefill and decode threads) has its own float workspace and
its own wrappers: a planned wrapper is never shared between threads.
Not exercised on CPU machines; its tests carry the `gpu` marker.
"""

from __future__ import annotations

import torch

try:
    import flashinfer
except ImportError as e:  # pragma: no cover - depends on the optional extra
    raise ImportError("attention=flashinfer needs `pip install flowprefill[gpu]` and CUDA") from e

from flowprefill.attention.base import DecodeMeta, PrefillMeta
from flowprefill.attention.flashinfer_plan import (
    PerThread,
    PlanCache,
    decode_page_table,
    prefill_page_table,
)
from flowprefill.kvcache.pool import KVPool

# Float workspace per thread (split-KV partial results), shared by that thread's wrappers,
# whose kernels run in its stream order. 128 MB is flashinfer's recommended size.
_WORKSPACE_BYTES = 128 * 1024 * 1024
# Planned wrappers per kind and thread; each holds 8 MB device + 8 MB pinned int workspace.
_WRAPPERS_PER_KIND = 4
# Tensor-core decode (flashinfer's prefill kernels at one query row) for every head ratio:
# the CUDA-core decode kernels exist only for ratios 1, 2, 3, 4, 6, 8, 16 (Qwen2-7B's 7 and
# Qwen2.5-14B's 5 fail there). vLLM uses tensor cores for every ratio (PR #23214: as fast
# or faster); flashinfer issue #520 measured equal time at ratio 1 on H100, #703 1.25x
# faster at ratio 4 (a 2024 note in vLLM #7887 found CUDA cores faster at ratio 4).
_DECODE_TENSOR_CORES = True
_DTYPES = (torch.float16, torch.bfloat16)


class _ThreadState:
    """One thread's workspace and planned wrappers, per device."""

    def __init__(self) -> None:
        self.caches: dict[torch.device, PlanCache] = {}

    def cache(self, device: torch.device) -> PlanCache:
        if device not in self.caches:
            ws = torch.zeros(_WORKSPACE_BYTES, dtype=torch.uint8, device=device)  # zeroed once

            def make(kind: str):
                if kind == "ragged":
                    return flashinfer.BatchPrefillWithRaggedKVCacheWrapper(ws, "NHD")
                if kind == "paged":
                    return flashinfer.BatchPrefillWithPagedKVCacheWrapper(ws, "NHD")
                return flashinfer.BatchDecodeWithPagedKVCacheWrapper(
                    ws, "NHD", use_tensor_cores=_DECODE_TENSOR_CORES)

            def fence() -> torch.cuda.Event:
                ev = torch.cuda.Event()
                ev.record(torch.cuda.current_stream(device))
                return ev

            self.caches[device] = PlanCache(make, fence, _WRAPPERS_PER_KIND)
        return self.caches[device]


class FlashInferBackend:
    name = "flashinfer"

    def __init__(self) -> None:
        self._threads: PerThread[_ThreadState] = PerThread(_ThreadState)

    def prefill(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                meta: PrefillMeta, pool: KVPool) -> torch.Tensor:
        _check(q, pool)
        pool.write(layer, meta.slots, k, v)
        cache = self._threads.get().cache(q.device)
        nh, kvh, hd = q.shape[1], k.shape[1], q.shape[2]
        q = q.contiguous()
        if meta.fresh:  # every segment attends to its own new rows only
            def plan_ragged(w):
                t = prefill_page_table(meta, pool.block_size, pin=True)
                w.plan(t.qo_indptr, t.qo_indptr, nh, kvh, hd, causal=True,
                       q_data_type=q.dtype, kv_data_type=k.dtype, non_blocking=True)
                return t

            w = cache.get("ragged", meta, plan_ragged)
            return w.run(q, k.contiguous(), v.contiguous())

        def plan_paged(w):
            t = prefill_page_table(meta, pool.block_size, pin=True)
            # causal with qo_len < kv_len is bottom-right aligned in flashinfer: row i of a
            # segment (position ctx + i) sees keys 0 .. ctx + i
            w.plan(t.qo_indptr, t.kv_indptr, t.kv_indices, t.kv_last_page_len, nh, kvh, hd,
                   pool.block_size, causal=True, q_data_type=q.dtype,
                   kv_data_type=pool.kv.dtype, non_blocking=True)
            return t

        w = cache.get("paged", meta, plan_paged)
        # every row sees >= 1 key, so the kernel writes all of `out` (run() would zero it)
        return w.run(q, pool.pages(layer), out=torch.empty_like(q))

    def decode(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               meta: DecodeMeta, pool: KVPool) -> torch.Tensor:
        _check(q, pool)
        pool.write(layer, meta.slots, k, v)
        cache = self._threads.get().cache(q.device)
        nh, kvh, hd = q.shape[1], k.shape[1], q.shape[2]

        def plan(w):
            t = decode_page_table(meta, pin=True)
            w.plan(t.kv_indptr, t.kv_indices, t.kv_last_page_len, nh, kvh, hd, pool.block_size,
                   q_data_type=q.dtype, kv_data_type=pool.kv.dtype, non_blocking=True)
            return t

        w = cache.get("decode", meta, plan)
        return w.run(q.contiguous(), pool.pages(layer))


def _check(q: torch.Tensor, pool: KVPool) -> None:
    if q.device.type != "cuda":
        raise ValueError(f"attention=flashinfer runs on CUDA only (engine.device is {q.device})")
    if q.dtype not in _DTYPES or pool.kv.dtype != q.dtype:
        raise ValueError("attention=flashinfer needs engine.dtype bfloat16 or float16 for both "
                         f"activations and KV cache (got q {q.dtype}, KV {pool.kv.dtype})")
