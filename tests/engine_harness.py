"""Test doubles for driving the real device loop in virtual time (no tests here).

`DeviceModel` stands in for an accelerator whose completions the test controls: every unit
the host launches takes `cost(tag)` seconds and runs after the previous one (one stream, in
order), so the host may run ahead exactly as it can on CUDA; the virtual clock moves only
when the host waits for a unit. With `engine.sources.ScriptedSource` on the same virtual
clock, `EngineLoop.run()` runs in the test's own thread and every time it sees is the device
model's. This is not a GPU: it checks the loop's logic.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from flowprefill.core import VirtualClock
from flowprefill.engine.units import unit_info
from flowprefill.executor import CPUTimeline
from flowprefill.predictor import Predictor


def predicted_cost(predictor: Predictor) -> Callable[[Any], float]:
    """A unit's seconds as the predictor prices it (a decode step by its decode model)."""

    def cost(tag: Any) -> float:
        kind, shape, logits = unit_info(tag)
        if kind == "decode":
            return predictor.decode_cost(shape)
        return predictor.op_cost(kind, shape, logits)

    return cost


class DeviceModel:
    """One in-order device: unit k starts at max(its launch, unit k-1's end) and takes
    cost(tag) seconds. Shared by the prefill and decode timelines of a test."""

    def __init__(self, clock: VirtualClock, cost: Callable[[Any], float]) -> None:
        self.clock, self.cost = clock, cost
        self.busy_until = -math.inf
        self.launches: list[tuple[float, float, float]] = []  # (launch, start, end) per unit

    def run(self, tag: Any, launched: float) -> float:
        start = max(launched, self.busy_until)
        self.busy_until = start + self.cost(tag)
        self.launches.append((launched, start, self.busy_until))
        return self.busy_until


class ModelTimeline(CPUTimeline):
    """A timeline over a `DeviceModel`: completions are the model's, waiting moves the clock."""

    def __init__(self, device: DeviceModel) -> None:
        super().__init__(device.clock)
        self.device = device
        self.outstanding_max = 0  # most units not complete when the host launched another

    def record(self, tag: Any, launched: float) -> int:
        now = self.clock.now()
        self.outstanding_max = max(self.outstanding_max, sum(
            1 for _, _, e in self._entries if e > now))
        end = self.device.run(tag, launched)
        self.last += 1
        self._entries.append((tag, launched, end))
        return self.last

    def wait(self, k: int) -> None:
        if 0 <= k <= self.last:
            end = self.completed_at(k)
            if end > self.clock.now():
                self.clock.advance_to(end)

    def is_done(self, k: int) -> bool:
        return k <= self.last and self.completed_at(k) <= self.clock.now()

    def _done_through(self) -> int:
        k = self.last - len(self._entries)
        while k < self.last and self.is_done(k + 1):
            k += 1
        return k
