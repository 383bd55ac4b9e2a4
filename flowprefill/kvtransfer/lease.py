"""KV a prefill worker holds for a decode worker to pull: who, which blocks, until when.

A lease starts when a prefill produces its first token and ends when the decode side has
pulled the blocks (release), when the request is aborted, or when it expires unpulled. The
caller frees the blocks of whatever `release`/`expire` return. Pure Python; thread-safe (the
prefill engine thread adds, the HTTP thread releases). Must not know about tensors or NIXL.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Lease:
    request_id: str
    blocks: tuple[int, ...]
    num_tokens: int
    expires: float


class LeaseTable:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._leases: dict[str, Lease] = {}
        self._lock = threading.Lock()
        self.released = 0
        self.expired = 0

    def add(self, request_id: str, blocks: list[int], num_tokens: int, now: float) -> Lease:
        lease = Lease(request_id, tuple(blocks), num_tokens, now + self.timeout)
        with self._lock:
            self._leases[request_id] = lease
        return lease

    def get(self, request_id: str) -> Lease | None:
        with self._lock:
            return self._leases.get(request_id)

    def release(self, request_id: str) -> Lease | None:
        """End a lease (pulled or aborted); None if there was none."""
        with self._lock:
            lease = self._leases.pop(request_id, None)
            self.released += lease is not None
        return lease

    def expire(self, now: float) -> list[Lease]:
        """End and return every lease past its deadline."""
        with self._lock:
            gone = [lease for lease in self._leases.values() if lease.expires <= now]
            for lease in gone:
                del self._leases[lease.request_id]
            self.expired += len(gone)
        return gone

    def __len__(self) -> int:
        return len(self._leases)
