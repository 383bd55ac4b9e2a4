"""One worker's NIXL agent: registers the KV pool once and pulls block lists from peers.

The pool is registered and prepared as one descriptor list (one descriptor per block per
layer per K/V) at start; a transfer is then just two index arrays into the prepared lists,
so per-request cost is proportional to the blocks moved, not to the pool. Metadata travels
as bytes through the workers' own HTTP APIs (`metadata()` / `add_peer()`), so NIXL's TCP
listener thread is not needed. UCX backend; CPU DRAM, or GPU memory when the pool is on CUDA.

Not thread-safe (the agent runs without NIXL's internal locking): call it from one thread,
the worker's event loop. Must not know about requests, scheduling or HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from dataclasses import dataclass
from typing import Any

from flowprefill.kvtransfer.layout import KVLayout


class TransferError(RuntimeError):
    """A pull that failed, timed out, or could not be set up."""


@dataclass
class _Peer:
    name: str
    layout: KVLayout
    prepped: Any  # nixl_prepped_dlist_handle over the peer's whole pool


def layout_of(tensor: Any, num_layers: int, num_blocks: int) -> KVLayout:
    """The layout of a contiguous `[L, 2, S, kvh, hd]` pool tensor."""
    if not tensor.is_contiguous():
        raise ValueError("the KV pool must be contiguous to be registered")
    total = tensor.numel() * tensor.element_size()
    block_bytes = total // (2 * num_layers * num_blocks)
    cuda = tensor.device.type == "cuda"
    return KVLayout(tensor.data_ptr(), num_layers, num_blocks, block_bytes,
                    "VRAM" if cuda else "DRAM", (tensor.device.index or 0) if cuda else 0)


class KVAgent:
    def __init__(self, pool: Any, num_layers: int, num_blocks: int, role: str = "worker",
                 backend: str = "UCX") -> None:
        from nixl._api import nixl_agent, nixl_agent_config

        self.name = f"{role}-{uuid.uuid4().hex[:10]}"  # unique across restarts
        self.backend = backend
        self._agent = nixl_agent(self.name, nixl_agent_config(backends=[backend]))
        self.pool = pool  # keep the registered tensor alive as long as the agent
        self.layout = layout_of(pool, num_layers, num_blocks)
        self._reg = self._agent.register_memory(pool)
        self._local = self._agent.prep_xfer_dlist("NIXL_INIT_AGENT", self.layout.descs(),
                                                  self.layout.mem_type)
        self._peers: dict[str, _Peer] = {}

    # ------------------------------------------------------------------ metadata
    def metadata(self) -> dict:
        """What a peer needs to read from this agent (JSON-safe)."""
        md = base64.b64encode(self._agent.get_agent_metadata()).decode()
        return {"agent": self.name, "metadata": md, "layout": self.layout.to_dict()}

    def has_peer(self, name: str) -> bool:
        return name in self._peers

    def add_peer(self, info: dict) -> str:
        """Load a peer's metadata (from its `metadata()`) and prepare its pool's descriptors."""
        layout = KVLayout.from_dict(info["layout"])
        if not self.layout.compatible(layout):
            raise TransferError(f"peer {info['agent']} has an incompatible KV layout "
                                f"{layout} (local {self.layout})")
        name = self._agent.add_remote_agent(base64.b64decode(info["metadata"]))
        name = name.decode() if isinstance(name, bytes) else name
        prepped = self._agent.prep_xfer_dlist(name, layout.descs(), layout.mem_type)
        self._peers[name] = _Peer(name, layout, prepped)
        return name

    def remove_peer(self, name: str) -> None:
        peer = self._peers.pop(name, None)
        if peer is not None:
            self._agent.release_dlist_handle(peer.prepped)
            self._agent.remove_remote_agent(name)

    # ------------------------------------------------------------------ transfers
    def start_read(self, peer: str, remote_blocks: list[int], local_blocks: list[int]) -> Any:
        """Post a READ of the peer's blocks into ours (same order, same count)."""
        if len(remote_blocks) != len(local_blocks):
            raise TransferError(f"{len(remote_blocks)} remote vs {len(local_blocks)} local "
                                "blocks")
        p = self._peers.get(peer)
        if p is None:
            raise TransferError(f"unknown peer {peer!r}")
        handle = self._agent.make_prepped_xfer(
            "READ", self._local, self.layout.indices(local_blocks), p.prepped,
            p.layout.indices(remote_blocks))
        if self._agent.transfer(handle) == "ERR":
            self._agent.release_xfer_handle(handle)
            raise TransferError(f"NIXL could not post the read from {peer}")
        return handle

    def poll(self, handle: Any) -> str:
        """DONE | PROC | ERR."""
        return self._agent.check_xfer_state(handle)

    def release(self, handle: Any) -> None:
        try:
            self._agent.release_xfer_handle(handle)
        except Exception:  # noqa: BLE001 - a handle NIXL still considers busy; it leaks, we go on
            pass

    def bytes_for(self, num_blocks: int) -> int:
        return num_blocks * self.layout.num_regions * self.layout.block_bytes

    async def pull(self, peer: str, remote_blocks: list[int], local_blocks: list[int],
                   timeout: float) -> float:
        """Read blocks from `peer`; returns seconds taken. Polls without blocking the loop:
        short sleeps first (small KV finishes in well under a millisecond), growing to 1 ms."""
        t0 = time.perf_counter()
        handle = self.start_read(peer, remote_blocks, local_blocks)
        delay = 1e-4
        try:
            while True:
                state = self.poll(handle)
                if state == "DONE":
                    return time.perf_counter() - t0
                if state == "ERR":
                    raise TransferError(f"NIXL read from {peer} failed")
                if time.perf_counter() - t0 > timeout:
                    raise TransferError(f"NIXL read from {peer} timed out after {timeout} s")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1e-3)
        finally:
            self.release(handle)

    def close(self) -> None:
        for name in list(self._peers):
            self.remove_peer(name)
        self._agent.release_dlist_handle(self._local)
        self._agent.deregister_memory(self._reg)
