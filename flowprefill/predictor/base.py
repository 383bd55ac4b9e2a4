"""The predictor interface: seconds of operators, of a plan's units, of a job's remaining
work, of a decode step, and a prompt's isolated TTFT.

Owns the mapping from shapes and plans to seconds. Subclasses only price one operator kind
for one batch shape (`op_cost`; `decode_cost` where a fitted decode model exists); whole
forwards, unit costs, remaining time and memoization live here. Must not import torch, the
model or the engine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from flowprefill.core import ForwardPlan, JobPlan, slice_shape
from flowprefill.predictor.cost import BatchShape, ForwardCost, UnitCosts

_MEMO_LIMIT = 1 << 14  # distinct shapes kept per table (a long simulation sees many batches)


class Predictor(ABC):
    """Prices work. `op_cost` is the only method a kind must implement."""

    def __init__(self, num_layers: int) -> None:
        self.num_layers = num_layers
        self._forwards: dict[tuple[BatchShape, int], ForwardCost] = {}
        self._units: dict[ForwardPlan, UnitCosts] = {}
        self._memo_version = self.version

    @property
    def version(self) -> int:
        """Bumped when the costs change (an online correction); memoized costs are dropped."""
        return 0

    @abstractmethod
    def op_cost(self, kind: str, shape: BatchShape, logits: int) -> float:
        """Seconds of one operator of `kind` (embed | attention | mlp | final) over `shape`.

        `logits` counts the sequences whose last position goes through lm_head in this forward.
        """

    def _memo(self, table: dict) -> dict:
        if self._memo_version != self.version:
            self._forwards.clear()
            self._units.clear()
            self._memo_version = self.version
        if len(table) > _MEMO_LIMIT:
            table.clear()
        return table

    def forward(self, shape: BatchShape, logits: int | None = None) -> ForwardCost:
        """Per-operator costs of one unsliced forward over `shape` (logits: one per sequence)."""
        logits = len(shape) if logits is None else logits
        memo = self._memo(self._forwards)
        cost = memo.get((shape, logits))
        if cost is None:
            cost = ForwardCost(*(self.op_cost(k, shape, logits)
                                 for k in ("embed", "attention", "mlp", "final")),
                               num_layers=self.num_layers)
            memo[(shape, logits)] = cost
        return cost

    def units(self, plan: ForwardPlan) -> UnitCosts:
        """Seconds of each unit of one forward plan (token slices priced as their own shape)."""
        memo = self._memo(self._units)
        cost = memo.get(plan)
        if cost is None:
            def slices(kind: str, bounds: tuple[int, ...]) -> tuple[float, ...]:
                return tuple(self.op_cost(kind, slice_shape(plan.shape, a, b), plan.logits)
                             for a, b in zip(bounds, bounds[1:], strict=False))

            f = self.forward(plan.shape, plan.logits)
            attn = (f.attention,) if len(plan.attn) == 2 else slices("attention", plan.attn)
            mlp = (f.mlp,) if len(plan.mlp) == 2 else slices("mlp", plan.mlp)
            cost = UnitCosts(f.embed, attn, mlp, f.final, plan.num_layers)
            memo[plan] = cost
        return cost

    def remaining(self, plan: JobPlan, done: int) -> float:
        """Predicted seconds of the units of `plan` not yet run (`done` completed)."""
        if done >= plan.num_units:
            return 0.0
        p, u = plan.locate(done)
        return self.units(plan.passes[p]).remaining(u) + sum(
            self.units(f).total for f in plan.passes[p + 1:])

    def total(self, plan: JobPlan) -> float:
        return self.remaining(plan, 0)

    def decode_cost(self, shape: BatchShape) -> float:
        """Seconds of one decode step over `shape` (one new token per sequence: ((1, cached
        tokens), ...)): by default its forward priced by the operator models."""
        return self.forward(shape, len(shape)).total

    def isolated_ttft(self, prompt_len: int) -> float:
        """TTFT of a prompt prefilled alone on an idle worker, in one unsliced forward."""
        return self.forward(((prompt_len, 0),), 1).total
