"""Planning a job's units: which passes it runs, and which operators are split into token
slices so that no unit is predicted to take longer than a bound.

The one rule (ARCHITECTURE.md): under operator granularity, an attention or MLP operator
whose predicted time exceeds `max_unit_s` is split into the fewest even row slices whose
longest is within the bound (never below `MIN_SLICE_ROWS` rows). Embed and final are never
split (they are cheap, and final covers one row per sequence). Other granularities do not
slice: their slices would not be preemption points, only overhead. A chunked job (granularity
chunk, prompt longer than the chunk) is one pass per chunk. The scheduler plans; the engine's
executor runs the plan and the simulator charges it. Must not import torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from flowprefill.core import ForwardPlan, Granularity, JobPlan, Shape, even_bounds, slice_shape
from flowprefill.predictor.base import Predictor

MIN_SLICE_ROWS = 16  # smaller GEMMs cost more than the preemption they buy
_MEMO_LIMIT = 1 << 14


def slice_bounds(predictor: Predictor, kind: str, shape: Shape, logits: int,
                 max_unit_s: float) -> tuple[int, ...]:
    """Row boundaries of the slices operator `kind` over `shape` runs in (0, ..., rows)."""
    rows = sum(n for n, _ in shape)
    whole = predictor.op_cost(kind, shape, logits)
    if max_unit_s <= 0 or whole <= max_unit_s:
        return (0, rows)
    most = max(1, rows // MIN_SLICE_ROWS)
    n = min(math.ceil(whole / max_unit_s), most)
    while True:
        bounds = even_bounds(rows, n)
        worst = max(predictor.op_cost(kind, slice_shape(shape, a, b), logits)
                    for a, b in zip(bounds, bounds[1:], strict=False))
        if worst <= max_unit_s or n >= most:
            return bounds
        n = min(most, max(n + 1, math.ceil(n * worst / max_unit_s)))


class Planner:
    """Plans jobs for one policy: its granularity, chunk size and unit bound."""

    def __init__(self, predictor: Predictor, granularity: Granularity, chunk_size: int,
                 max_unit_s: float = 0.0) -> None:
        self.predictor = predictor
        self.granularity = granularity
        self.chunk_size = chunk_size
        self.max_unit_s = max_unit_s if granularity is Granularity.OPERATOR else 0.0
        self._plans: dict[tuple[tuple[int, ...], bool], JobPlan] = {}

    def chunked(self, prompt_len: int) -> bool:
        """Is a lone prompt of this length prefilled chunk by chunk?"""
        return self.granularity is Granularity.CHUNK and prompt_len > self.chunk_size

    def plan(self, prompt_lens: Sequence[int], rider_contexts: Sequence[int] = ()) -> JobPlan:
        """The plan of a job over these prompts (chunked when a lone prompt needs it), and
        one new row for each rider (a decoding sequence holding that many tokens)."""
        lens, riders = tuple(prompt_lens), tuple(rider_contexts)
        chunked = len(lens) == 1 and not riders and self.chunked(lens[0])
        key = (lens, riders, chunked)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) > _MEMO_LIMIT:
                self._plans.clear()
            L = self.predictor.num_layers
            shape = tuple((n, 0) for n in lens) + tuple((1, c) for c in riders)
            if chunked:
                plan = JobPlan.unsliced(lens, L, self.chunk_size)
            elif self.max_unit_s <= 0:
                plan = JobPlan((ForwardPlan.whole(shape, len(shape), L),))
            else:
                plan = JobPlan((self._sliced(shape, len(shape)),))
            self._plans[key] = plan
        return plan

    def _sliced(self, shape: Shape, logits: int) -> ForwardPlan:
        p, bound = self.predictor, self.max_unit_s
        return ForwardPlan(shape, logits, p.num_layers,
                           slice_bounds(p, "attention", shape, logits, bound),
                           slice_bounds(p, "mlp", shape, logits, bound))
