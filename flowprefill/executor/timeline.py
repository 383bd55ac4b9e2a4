"""The device timeline: when each launched unit completed on the device, read from the device.

On CUDA the host only enqueues: a unit that returned on the host may not have started. The
engine records every unit here right after launching it, and before launching the next one
waits until the unit `launch_ahead` back has completed, so a switch of jobs waits for at most
that many queued units. Completion times are read from CUDA events (anchored to the engine's
clock), never from host launch times; a unit's device time is from its start (the later of
its launch and the previous unit's completion) to its completion. On the CPU a unit is done
when it returns, so the timeline is complete at once and costs one clock read.

`record(tag, launched)` -> unit index k; `wait(k)`; `is_done(k)`; `completed_at(k)`;
`started_at(k)`; `drain()` -> (tag, device seconds) of units completed since the last drain.
Entries older than `keep` units are forgotten (they are long complete). Must not know about
jobs, schedulers or events: a tag is whatever the caller wants back from `drain`.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import torch

from flowprefill.core import Clock


class CPUTimeline:
    """Units complete when the host call returns: `record` stamps the clock."""

    def __init__(self, clock: Clock, keep: int = 256) -> None:
        self.clock = clock
        self.last = -1  # index of the newest recorded unit
        self._entries: deque[tuple[Any, float, float]] = deque(maxlen=keep)  # tag, launch, end
        self._drained = -1

    def record(self, tag: Any, launched: float) -> int:
        self.last += 1
        self._entries.append((tag, launched, self.clock.now()))
        return self.last

    def _entry(self, k: int) -> tuple[Any, float, float]:
        i = len(self._entries) - 1 - (self.last - k)
        if not 0 <= i < len(self._entries):
            raise IndexError(f"unit {k} is not on the timeline (last {self.last})")
        return self._entries[i]

    def wait(self, k: int) -> None:
        """Block until unit k has completed on the device (a no-op here)."""

    def is_done(self, k: int) -> bool:
        return k <= self.last

    def completed_at(self, k: int) -> float:
        return self._entry(k)[2]

    def started_at(self, k: int) -> float:
        launched = self._entry(k)[1]
        if k == 0 or k - 1 <= self.last - len(self._entries):
            return launched
        return max(launched, self.completed_at(k - 1))

    def _done_through(self) -> int:
        return self.last

    def drain(self) -> list[tuple[Any, float]]:
        """(tag, device seconds) of every unit completed since the last drain."""
        upto = self._done_through()
        first = max(self._drained + 1, self.last - len(self._entries) + 1)
        out = [(self._entry(k)[0], self.completed_at(k) - self.started_at(k))
               for k in range(first, upto + 1)]
        self._drained = upto
        return out

    def idle(self) -> None:
        """The engine has nothing queued (it is about to sleep)."""


class CUDATimeline(CPUTimeline):
    """Units complete when the CUDA event recorded after them on `stream` has; times are the
    events' elapsed times from an anchor event whose clock time is known."""

    def __init__(self, clock: Clock, stream: torch.cuda.Stream, keep: int = 256) -> None:
        super().__init__(clock, keep)
        self.stream = stream
        self._events: deque[torch.cuda.Event] = deque(maxlen=keep)
        self._done = -1  # every unit up to this one is known to be complete
        self._anchor()

    def _anchor(self) -> None:
        """A reference event with a known clock time (synchronizes the stream once)."""
        self._ref = torch.cuda.Event(enable_timing=True)
        self._ref.record(self.stream)
        self._ref.synchronize()
        self._ref_time = self.clock.now()

    def record(self, tag: Any, launched: float) -> int:
        ev = torch.cuda.Event(enable_timing=True)
        ev.record(self.stream)
        self._events.append(ev)
        self.last += 1
        self._entries.append((tag, launched, float("nan")))
        return self.last

    def _event(self, k: int) -> torch.cuda.Event:
        return self._events[len(self._events) - 1 - (self.last - k)]

    def wait(self, k: int) -> None:
        if k <= self._done or k <= self.last - len(self._events):
            return
        self._event(k).synchronize()
        self._done = k

    def is_done(self, k: int) -> bool:
        if k <= self._done or k <= self.last - len(self._events):
            return True
        if self._event(k).query():
            self._done = k
            return True
        return False

    def completed_at(self, k: int) -> float:
        i = len(self._entries) - 1 - (self.last - k)
        tag, launched, end = self._entries[i]
        if end != end:  # nan: not read yet
            self.wait(k)
            end = self._ref_time + self._ref.elapsed_time(self._event(k)) / 1e3
            self._entries[i] = (tag, launched, end)
        return end

    def _done_through(self) -> int:
        k = self._done
        while k < self.last and self.is_done(k + 1):
            k += 1
        return k

    def idle(self) -> None:
        """Nothing is queued: re-anchor, so host and device clocks cannot drift apart."""
        self.stream.synchronize()
        self._done = self.last
        for k in range(max(0, self.last - len(self._entries) + 1), self.last + 1):
            self.completed_at(k)  # read the pending completions against the old anchor
        self._anchor()


def make_timeline(clock: Clock, stream: torch.cuda.Stream | None) -> CPUTimeline:
    """The timeline of a stream (None: the CPU)."""
    return CPUTimeline(clock) if stream is None else CUDATimeline(clock, stream)
