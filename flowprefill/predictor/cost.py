"""The cost of one forward pass, operator by operator, and the batch shape it is priced for.

A forward is `embed`, then (`attention`, `mlp`) per layer, then `final` (norm + lm_head on the
positions that need logits): `core.ops_per_forward(num_layers)` operators, op index k in
0..num_ops-1. Every layer costs the same, so a forward is four numbers and prefix sums are
O(1) arithmetic; nothing here loops over operators. Pure standard library.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# One sequence's part of a forward: (new tokens computed now, tokens already in its KV cache).
SeqShape = tuple[int, int]
BatchShape = tuple[SeqShape, ...]

OP_KINDS = ("embed", "attention", "mlp", "final")


def op_kind(k: int, num_layers: int) -> str:
    """Kind of operator index k of a forward with `num_layers` layers."""
    if k == 0:
        return "embed"
    if k == 2 * num_layers + 1:
        return "final"
    return "attention" if k % 2 == 1 else "mlp"


@dataclass(frozen=True)
class ForwardCost:
    """Seconds per operator of one forward: embed, L x (attention, mlp), final."""

    embed: float
    attention: float
    mlp: float
    final: float
    num_layers: int

    @property
    def num_ops(self) -> int:
        return 2 * self.num_layers + 2

    @property
    def total(self) -> float:
        return self.embed + self.num_layers * (self.attention + self.mlp) + self.final

    def op(self, k: int) -> float:
        """Cost of operator index k."""
        return getattr(self, op_kind(k, self.num_layers))

    def op_costs(self) -> list[float]:
        return [self.op(k) for k in range(self.num_ops)]

    def prefix(self, k: int) -> float:
        """Seconds to run the first k operators (0 <= k <= num_ops)."""
        if k <= 0:
            return 0.0
        if k >= self.num_ops:
            return self.total
        layer_ops = k - 1  # operators done after embed, all inside layers
        full, partial = divmod(layer_ops, 2)
        return self.embed + full * (self.attention + self.mlp) + partial * self.attention

    def remaining(self, ops_done: int) -> float:
        return self.total - self.prefix(ops_done)

    def ops_after(self, ops_done: int, elapsed: float) -> int:
        """Operators completed `elapsed` seconds after starting at op index `ops_done`.

        The smallest k >= ops_done whose boundary is reached no earlier than `elapsed` after
        the start: the first preemption point at or after that moment (ties count as reached).
        """
        if elapsed <= 0.0:
            return ops_done
        target = self.prefix(ops_done) + elapsed
        # Analytic guess, then fix up by at most a few steps (float rounding, partial layers).
        if target <= self.embed:
            k = 1
        else:
            per_layer = self.attention + self.mlp
            full = math.floor((target - self.embed) / per_layer) if per_layer > 0 else 0
            k = 1 + 2 * full
        k = min(max(k, ops_done), self.num_ops)
        eps = 1e-12 * max(1.0, target)
        while k > ops_done and self.prefix(k - 1) >= target - eps:
            k -= 1
        while k < self.num_ops and self.prefix(k) < target - eps:
            k += 1
        return k
