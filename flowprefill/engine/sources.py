"""Where the device loop's external events come from.

`QueueSource`: other threads (the HTTP side) put events; the loop drains it at preemption
points and sleeps on it when idle. `ScriptedSource`: a fixed list of (time, event), released
when the loop's clock reaches each time (a virtual clock is advanced to it, a wall clock
slept until it): benchmarks and the device check replay arrivals with it, and tests drive
the loop in virtual time. Both hand the loop STOP when it should end.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Sequence

from flowprefill.core import Clock, VirtualClock

STOP = object()


class QueueSource:
    """Events from other threads: a queue the loop drains at points."""

    def __init__(self) -> None:
        self._q: queue.SimpleQueue = queue.SimpleQueue()

    def put(self, event: object) -> None:
        self._q.put(event)

    def wait(self) -> list[object]:
        """Block until something is queued; everything queued by then."""
        return [self._q.get(), *self.drain()]

    def drain(self) -> list[object]:
        out = []
        while not self._q.empty():
            out.append(self._q.get_nowait())
        return out


class ScriptedSource:
    """(time, event) pairs released at their time on `clock`; STOP once the script is spent
    and the loop would sleep."""

    def __init__(self, clock: Clock, script: Sequence[tuple[float, object]]) -> None:
        self.clock = clock
        self.script = sorted(script, key=lambda te: te[0])  # stable: input order at ties
        self._next = 0
        self._extra: list[object] = []

    def put(self, event: object) -> None:
        self._extra.append(event)

    def drain(self) -> list[object]:
        out, self._extra = self._extra, []
        now = self.clock.now()
        while self._next < len(self.script) and self.script[self._next][0] <= now:
            out.append(self.script[self._next][1])
            self._next += 1
        return out

    def wait(self) -> list[object]:
        if self._next == len(self.script) and not self._extra:
            return [STOP]
        if not self._extra:
            t = self.script[self._next][0]
            if isinstance(self.clock, VirtualClock):
                self.clock.advance_to(max(t, self.clock.now()))
            else:
                while (delay := t - self.clock.now()) > 0:
                    time.sleep(delay)
        return self.drain()
