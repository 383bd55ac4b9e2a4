"""Predicted seconds of one forward, per operator (`ForwardCost`) and per unit of a plan
(`UnitCosts`: the same forward with attention and MLP split into the plan's token slices).

Every layer costs the same, so prefix sums are O(1) arithmetic; nothing here loops over
layers. The operator table and the unit order are `core.ops` / `core.plan`'s. Pure standard
library.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from itertools import accumulate

from flowprefill.core import OP_KINDS, Shape, op_kind

BatchShape = Shape  # ((new tokens, cached tokens), ...) per sequence of a forward

__all__ = ["OP_KINDS", "BatchShape", "ForwardCost", "UnitCosts", "op_kind"]


@dataclass(frozen=True)
class ForwardCost:
    """Seconds per operator of one forward: embed, L x (attention, mlp), final."""

    embed: float
    attention: float
    mlp: float
    final: float
    num_layers: int

    @property
    def total(self) -> float:
        return self.embed + self.num_layers * (self.attention + self.mlp) + self.final

    def op(self, k: int) -> float:
        """Cost of operator index k."""
        return getattr(self, op_kind(k, self.num_layers).value)


@dataclass(frozen=True)
class UnitCosts:
    """Seconds of each unit of one forward plan: embed, per layer the attention slices then
    the MLP slices, final. Unit u's cost is `unit(u)`; the first u units take `prefix(u)`."""

    embed: float
    attn: tuple[float, ...]
    mlp: tuple[float, ...]
    final: float
    num_layers: int
    _layer: tuple[float, ...] = field(init=False, repr=False)  # prefix sums within a layer

    def __post_init__(self) -> None:
        object.__setattr__(self, "_layer", (0.0, *accumulate(self.attn + self.mlp)))

    @property
    def per_layer(self) -> int:
        return len(self.attn) + len(self.mlp)

    @property
    def num_units(self) -> int:
        return 2 + self.num_layers * self.per_layer

    @property
    def layer_total(self) -> float:
        return self._layer[-1]

    @property
    def total(self) -> float:
        return self.embed + self.num_layers * self.layer_total + self.final

    @property
    def longest(self) -> float:
        """The longest unit: how long a switch may wait for the unit in flight."""
        return max(self.embed, self.final, *self.attn, *self.mlp)

    def unit(self, u: int) -> float:
        if u == 0:
            return self.embed
        if u == self.num_units - 1:
            return self.final
        r = (u - 1) % self.per_layer
        return self._layer[r + 1] - self._layer[r]

    def prefix(self, u: int) -> float:
        """Seconds to run the first u units (0 <= u <= num_units)."""
        if u <= 0:
            return 0.0
        if u >= self.num_units:
            return self.total
        full, r = divmod(u - 1, self.per_layer)
        return self.embed + full * self.layer_total + self._layer[r]

    def remaining(self, done: int) -> float:
        return self.total - self.prefix(done)

    def units_after(self, done: int, elapsed: float) -> int:
        """Units completed `elapsed` seconds after starting at unit `done`: the smallest
        k >= done whose end is reached no earlier than `elapsed` after the start (the first
        unit boundary at or after that moment; a boundary exactly then counts as reached)."""
        if elapsed <= 0.0:
            return done
        target = self.prefix(done) + elapsed
        # an O(1) guess from the layer structure, then fix-up steps (float rounding)
        if target <= self.embed or self.layer_total <= 0.0:
            k = 1
        else:
            full = min(int((target - self.embed) // self.layer_total), self.num_layers)
            within = target - self.embed - full * self.layer_total
            k = 1 + full * self.per_layer + bisect.bisect_left(self._layer, within)
        k = min(max(k, done), self.num_units)
        eps = 1e-12 * max(1.0, target)
        while k > done and self.prefix(k - 1) >= target - eps:
            k -= 1
        while k < self.num_units and self.prefix(k) < target - eps:
            k += 1
        return k
