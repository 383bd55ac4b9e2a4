"""The `flashinfer` attention backend (CUDA only; `pip install flowprefill[gpu]`).

Import-guarded: importing this module without flashinfer raises ImportError with the fix.
K/V are written to the pool first; prefill and decode then read them as paged KV (the pool's
per-layer slot tensors viewed as [num_blocks, block_size, kvh, hd], flashinfer's NHD layout).
Plans are made once per metadata object and reused by every layer of the forward.
Not exercised on CPU machines; its tests carry the `gpu` marker.
"""

from __future__ import annotations

import torch

try:
    import flashinfer
except ImportError as e:  # pragma: no cover - depends on the optional extra
    raise ImportError("attention=flashinfer needs `pip install flowprefill[gpu]` and CUDA") from e

from flowprefill.attention.base import DecodeMeta, PrefillMeta
from flowprefill.kvcache.pool import KVPool

_WORKSPACE_BYTES = 128 * 1024 * 1024


def _paged(kv_slots: list[torch.Tensor], block_size: int, device: torch.device):
    """indptr, page indices, last-page lengths for sequences given their slot lists."""
    pages, indptr, last = [], [0], []
    for s in kv_slots:
        p = s[::block_size] // block_size
        pages.append(p)
        indptr.append(indptr[-1] + p.numel())
        last.append(s.numel() - (p.numel() - 1) * block_size)
    as_t = lambda x: torch.tensor(x, dtype=torch.int32, device=device)  # noqa: E731
    return as_t(indptr), torch.cat(pages).to(torch.int32), as_t(last)


class FlashInferBackend:
    name = "flashinfer"

    def __init__(self) -> None:
        self._ws: torch.Tensor | None = None
        self._planned: tuple[object, object] | None = None  # (meta, wrapper)

    def _workspace(self, device: torch.device) -> torch.Tensor:
        if self._ws is None:
            self._ws = torch.empty(_WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        return self._ws

    def _wrapper(self, meta: object, make) -> object:
        if self._planned is None or self._planned[0] is not meta:
            self._planned = (meta, make())
        return self._planned[1]

    def _caches(self, pool: KVPool, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = pool.layer(layer)
        shape = (pool.num_blocks, pool.block_size, *k.shape[1:])
        return k.view(shape), v.view(shape)

    def prefill(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                meta: PrefillMeta, pool: KVPool) -> torch.Tensor:
        pool.write(layer, meta.slots, k, v)

        def make():
            w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(self._workspace(q.device), "NHD")
            qo = [0]
            for s in meta.segments:
                qo.append(qo[-1] + s.num)
            indptr, pages, last = _paged([s.kv_slots for s in meta.segments], pool.block_size,
                                         q.device)
            w.plan(torch.tensor(qo, dtype=torch.int32, device=q.device), indptr, pages, last,
                   q.shape[1], k.shape[1], q.shape[2], pool.block_size, causal=True,
                   q_data_type=q.dtype)
            return w

        return self._wrapper(meta, make).run(q.contiguous(), self._caches(pool, layer))

    def decode(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               meta: DecodeMeta, pool: KVPool) -> torch.Tensor:
        pool.write(layer, meta.slots, k, v)

        def make():
            w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(self._workspace(q.device), "NHD")
            seqs = [meta.ctx_slots[b, :n] for b, n in enumerate(meta.context_lens)]
            indptr, pages, last = _paged(seqs, pool.block_size, q.device)
            w.plan(indptr, pages, last, q.shape[1], k.shape[1], q.shape[2], pool.block_size,
                   q_data_type=q.dtype)
            return w

        return self._wrapper(meta, make).run(q.contiguous(), self._caches(pool, layer))
