"""Ranked candidates (waiting requests, or suspended jobs): a ready heap and a demoted heap.

Ranks are static keys (see orders.py), so heaps stay valid as time passes; the only thing
time changes is feasibility under a slack-aware order, and for work that is not running that
flips once, at `latest_start = deadline - predicted remaining`. Late entries are moved lazily
to the demoted heap when they surface (or, with `reject_late`, taken out and listed in
`late`). Removal is lazy too: an index says where each entry is; stale heap entries are
skipped. The scheduler keeps one queue of waiting requests and one of suspended jobs.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any


@dataclass(eq=False)
class Waiting:
    """A queued candidate: `obj` is a core.Request (ident: its id) or a core.Job (its id)."""

    obj: Any
    ident: Hashable
    key: tuple[float, ...]
    seq: int  # arrival order at this scheduler: the final tie-break
    deadline: float
    cost: float  # predicted prefill seconds still needed
    latest_start: float  # deadline - cost: last start time with non-negative slack

    @property
    def request(self) -> Any:
        return self.obj


class WaitQueue:
    def __init__(self, slack_aware: bool, reject_late: bool = False) -> None:
        self.slack_aware = slack_aware
        self.reject_late = reject_late
        self.late: list[Any] = []  # objects taken out as late (reject_late); caller drains
        self._ready: dict[Hashable, Waiting] = {}
        self._demoted: dict[Hashable, Waiting] = {}
        self._heaps: dict[bool, list] = {False: [], True: []}  # demoted? -> heap

    def __len__(self) -> int:
        return len(self._ready) + len(self._demoted)

    @property
    def num_ready(self) -> int:
        """Entries not demoted (some may be found late, and demoted, when they surface)."""
        return len(self._ready)

    def __contains__(self, ident: Hashable) -> bool:
        return ident in self._ready or ident in self._demoted

    def push(self, item: Waiting) -> None:
        self._ready[item.ident] = item
        heapq.heappush(self._heaps[False], (item.key, item.seq, item))

    def remove(self, ident: Hashable) -> Waiting | None:
        return self._ready.pop(ident, None) or self._demoted.pop(ident, None)

    def demote(self, ident: Hashable) -> None:
        item = self._ready.pop(ident, None)
        if item is not None:
            self._demoted[ident] = item
            heapq.heappush(self._heaps[True], (item.key, item.seq, item))

    def is_demoted(self, ident: Hashable) -> bool:
        return ident in self._demoted

    def ready(self) -> list[Waiting]:
        """Every ready (not demoted) entry, in insertion order (unranked)."""
        return list(self._ready.values())

    def _pop(self, demoted: bool, now: float) -> Waiting | None:
        """Pop the best live entry of one heap; under slack-awareness demote late ready ones."""
        heap, live = self._heaps[demoted], self._demoted if demoted else self._ready
        while heap:
            _, _, item = heapq.heappop(heap)
            rid = item.ident
            if live.get(rid) is not item:
                continue  # stale: removed or moved
            if not demoted and self.slack_aware and item.latest_start < now:
                if self.reject_late:
                    del self._ready[rid]
                    self.late.append(item.obj)
                else:
                    self.demote(rid)
                continue
            return item
        return None

    def ordered(self, now: float, limit: int) -> list[Waiting]:
        """Up to `limit` entries in rank order: ready ones, then demoted ones."""
        out: list[tuple[bool, Waiting]] = []
        for demoted in (False, True):
            while len(out) < limit:
                item = self._pop(demoted, now)
                if item is None:
                    break
                out.append((demoted, item))
        for demoted, item in out:  # popping only peeked: put them back
            heapq.heappush(self._heaps[demoted], (item.key, item.seq, item))
        return [item for _, item in out]
