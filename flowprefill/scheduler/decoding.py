"""The sequences a worker is decoding, as the scheduler sees them: when each owes its next
token, how much KV it holds, and which one gives its KV back when the pool runs short.

Continuous batching: every step appends one token to each of the first `limit` sequences
(join order); a sequence's next token is due `tbt` seconds after its last one. A batch may
instead ride a prefill job (a mixed batch): its sequences are then out of the decode batch
until the job completes. Under KV pressure the newest sequences are evicted (their blocks
freed; they come back as prefills of prompt plus generated tokens). Pure Python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from flowprefill.core import Request
from flowprefill.scheduler.kv import blocks_for


@dataclass(eq=False)
class Seq:
    request: Request
    last: float  # when its latest token was produced
    context: int  # tokens in its KV cache (the next step writes one more)

    @property
    def deadline(self) -> float:
        return self.last + self.request.slo.tbt


class DecodeSet:
    def __init__(self, limit: int = 64) -> None:
        if limit < 1:
            raise ValueError(f"the decode batch limit must be >= 1, not {limit}")
        self.limit = limit
        self._seqs: dict[str, Seq] = {}  # join order
        self._stepping: tuple[str, ...] = ()  # the batch the last decision asked for
        self._riding: set[str] = set()  # computed by a prefill job in flight

    def __len__(self) -> int:
        return len(self._seqs)

    def join(self, request: Request, now: float) -> None:
        """`request` has its latest token (KV of its `prompt_len` tokens is in place)."""
        self._seqs[request.request_id] = Seq(request, now, request.prompt_len)

    def leave(self, request_id: str) -> bool:
        self._riding.discard(request_id)
        return self._seqs.pop(request_id, None) is not None

    def _free_seqs(self) -> list[Seq]:
        """Sequences not riding a job, in join order, at most `limit`."""
        return [s for rid, s in self._seqs.items() if rid not in self._riding][: self.limit]

    def batch(self) -> list[Seq]:
        """The next step's sequences (remembered: `stepped` advances exactly these)."""
        seqs = self._free_seqs()
        self._stepping = tuple(s.request.request_id for s in seqs)
        return seqs

    def candidates(self) -> list[Seq]:
        """What could ride a job now: the next step's sequences."""
        return self._free_seqs()

    def board(self, ids: tuple[str, ...]) -> None:
        self._riding.update(ids)

    def unboard(self, ids: tuple[str, ...]) -> None:
        """Their job was dropped before computing them: they decode as before."""
        self._riding.difference_update(ids)

    def rode(self, ids: tuple[str, ...], now: float, finished: set[str]) -> None:
        """Their job completed: each has its next token."""
        for rid in ids:
            self._riding.discard(rid)
            s = self._seqs.get(rid)
            if s is None:
                continue
            if rid in finished:
                del self._seqs[rid]
            else:
                s.context += 1
                s.last = now

    def stepped(self, now: float, finished: tuple[str, ...]) -> None:
        for rid in self._stepping:
            s = self._seqs.get(rid)
            if s is not None:
                s.context += 1
                s.last = now
        for rid in finished:
            self._seqs.pop(rid, None)
        self._stepping = ()

    def growth(self, block_size: int, seqs: list[Seq] | None = None) -> int:
        """New KV blocks the next step needs (a sequence whose last block is full)."""
        return sum(1 for s in (self._free_seqs() if seqs is None else seqs)
                   if s.context % block_size == 0)

    def evict_for(self, free: int, block_size: int) -> tuple[str, ...]:
        """Evict the newest sequences until the next step's new blocks fit in `free`."""
        evicted: list[str] = []
        while (free_seqs := self._free_seqs()) and self.growth(block_size, free_seqs) > free:
            s = free_seqs[-1]
            rid = s.request.request_id
            free += blocks_for(s.context, block_size)
            del self._seqs[rid]
            evicted.append(rid)
        return tuple(evicted)


def token_due(seqs: list[Seq], pace: float | None) -> float:
    """When the next token of these sequences is due while a prefill runs: the earliest TBT
    deadline, and `pace` after the oldest token (None: the deadlines alone)."""
    due = min((s.deadline for s in seqs), default=math.inf)
    return due if pace is None else min(due, min(s.last for s in seqs) + pace)
