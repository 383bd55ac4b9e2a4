"""How busy the worker is: predicted prefill seconds arriving per second, recently.

An exponentially decaying sum over arrivals (time constant `window` s), from the arrivals'
own timestamps and predicted costs, so the engine and the simulator compute the same value.
Pure Python.
"""

from __future__ import annotations

import math


class Load:
    def __init__(self, window: float) -> None:
        self.window = window
        self._value = 0.0  # decayed sum of cost / window at `_t`
        self._t = -math.inf

    def add(self, t: float, cost: float) -> None:
        self._value = self.at(t) + cost / self.window
        self._t = max(self._t, t)

    def at(self, t: float) -> float:
        """Estimated utilization at time t (1.0: work arrives as fast as it is done)."""
        if self._t == -math.inf:
            return 0.0
        return self._value * math.exp(-max(0.0, t - self._t) / self.window)
