"""Host-side planning for the `flashinfer` backend: page tables in flashinfer's CSR form and
the per-thread cache of planned wrappers. Imports no flashinfer, so it runs and tests on CPU.

flashinfer splits attention into `plan()` (host: read the page table, pick a schedule, copy
it to the device) and `run()` (device: one kernel per layer). A plan lives inside a wrapper
object, together with the wrapper's int workspace on the device and its page-locked staging
buffer on the host. This module decides which wrapper holds which plan; it must not know
about layers, kernels or the engine.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import torch

from flowprefill.attention.base import DecodeMeta, PrefillMeta, cdiv

W = TypeVar("W")
T = TypeVar("T")


@dataclass(frozen=True)
class PageTable:
    """A batch's paged KV as flashinfer's plan() takes it: int32 tensors on the host (pinned
    when planning for CUDA: plan() copies them to the device itself, non-blocking), one entry
    per sequence (prefill: per segment)."""

    qo_indptr: torch.Tensor  # [n + 1] prefix sums of query rows per sequence
    kv_indptr: torch.Tensor  # [n + 1] prefix sums of pages per sequence
    kv_indices: torch.Tensor  # [kv_indptr[-1]] page ids: the pool's blocks, in position order
    kv_last_page_len: torch.Tensor  # [n] tokens in each sequence's last page, 1 .. page_size


def page_table(q_lens: Sequence[int], kv_lens: Sequence[int],
               blocks: Sequence[Sequence[int]], page_size: int, pin: bool) -> PageTable:
    """Sequence i has q_lens[i] query rows over kv_lens[i] tokens held by blocks[i]."""
    n = len(kv_lens)
    if not (len(q_lens) == len(blocks) == n) or n == 0:
        raise ValueError(f"page_table: {len(q_lens)} q_lens, {n} kv_lens, {len(blocks)} "
                         "block lists: need one of each per sequence, at least one")
    qo, kv, indices, last = [0], [0], [], []
    for i, (q, length, bl) in enumerate(zip(q_lens, kv_lens, blocks, strict=True)):
        if not 1 <= q <= length or len(bl) != cdiv(length, page_size):
            raise ValueError(f"page_table: sequence {i} has {q} query rows over {length} "
                             f"tokens in {len(bl)} pages of {page_size}")
        qo.append(qo[-1] + q)
        kv.append(kv[-1] + len(bl))
        indices.extend(bl)
        last.append(length - (len(bl) - 1) * page_size)
    sizes = [n + 1, n + 1, len(indices), n]
    flat = torch.tensor([*qo, *kv, *indices, *last], dtype=torch.int32)
    if pin:
        flat = flat.pin_memory()
    return PageTable(*flat.split(sizes))


def prefill_page_table(meta: PrefillMeta, page_size: int, pin: bool) -> PageTable:
    """One sequence per segment: its rows against positions 0 .. ctx + num - 1."""
    segs = meta.segments
    return page_table([s.num for s in segs], [s.kv_len for s in segs],
                      [s.blocks for s in segs], page_size, pin)


def decode_page_table(meta: DecodeMeta, pin: bool) -> PageTable:
    """One query row per sequence against its whole context (the new token included)."""
    return page_table([1] * len(meta.context_lens), meta.context_lens, meta.block_tables,
                      meta.block_size, pin)


class Fence(Protocol):
    """A point in the device's work (a CUDA event): done yet, or wait until it is."""

    def query(self) -> bool: ...

    def synchronize(self) -> None: ...


class _Slot(Generic[W]):
    def __init__(self, wrapper: W) -> None:
        self.wrapper = wrapper
        self.meta: Callable[[], object | None] = lambda: None  # weak: planned for whom
        self.fence: Fence | None = None  # recorded after the last plan
        self.keep: object = None  # that plan's host inputs, alive while the plan is


class PlanCache(Generic[W]):
    """The planned wrappers of one thread, looked up by metadata object (identity).

    Each metadata object (a forward, or one token slice of it) is planned once; every layer
    that runs it reuses that plan, also when other metadata ran in between (token slices and
    interleaved jobs alternate). Wrappers are made on first need, at most `capacity` per kind,
    and reused for later metadata: first those whose metadata is gone, then the least
    recently used. Re-planning a wrapper rewrites its page-locked staging buffer on the host
    at once, while the copy out of it that the previous plan queued may not have run yet; the
    fence recorded after that plan is waited on first. It has long completed unless the host
    runs more than `capacity` plans of one kind ahead of the device.
    """

    def __init__(self, make: Callable[[str], W], fence: Callable[[], Fence],
                 capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"PlanCache capacity must be >= 1, got {capacity}")
        self._make = make
        self._fence = fence
        self.capacity = capacity
        self._slots: dict[str, list[_Slot[W]]] = {}  # per kind, least recently used first

    def get(self, kind: str, meta: object, plan: Callable[[W], object]) -> W:
        """The wrapper planned for `meta`; `plan(wrapper)` runs only if there is none. What
        plan returns is kept referenced as long as that plan is (its host input tensors)."""
        slots = self._slots.setdefault(kind, [])
        for i, s in enumerate(slots):
            if s.meta() is meta:
                slots.append(slots.pop(i))
                return s.wrapper
        free = [i for i, s in enumerate(slots) if s.meta() is None]
        if free:
            s = slots.pop(free[0])
        elif len(slots) < self.capacity:
            s = _Slot(self._make(kind))
        else:
            s = slots.pop(0)
        slots.append(s)
        if s.fence is not None and not s.fence.query():
            s.fence.synchronize()  # the one wait this backend may make, bounded as above
        s.meta, s.keep = (lambda: None), None  # a plan that raises leaves no stale match
        s.keep = plan(s.wrapper)
        s.fence = self._fence()
        s.meta = weakref.ref(meta)
        return s.wrapper

    def wrappers(self, kind: str) -> list[W]:
        return [s.wrapper for s in self._slots.get(kind, [])]


class PerThread(Generic[T]):
    """One `factory()` value per thread, made on the thread's first `get()` and dropped with
    the thread. What one thread plans is never visible to another."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._local = threading.local()

    def get(self) -> T:
        value = getattr(self._local, "value", None)
        if value is None:
            value = self._local.value = self._factory()
        return value
