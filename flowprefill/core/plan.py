"""A job's plan: the units a prefill runs, in order, and which unit ends are preemption points.

A job is one or more *passes* (one forward over the whole batch, or one per chunk of a
chunked prefill); a pass is the operator table of `ops.py` where the attention and MLP
operators may each be split into token slices (row ranges of the packed batch, each its own
unit; attention slices attend against the full causal KV, so results are identical). The
scheduler's side decides the slices (from predicted times, `predictor/plan.py`), the executor
runs them, the simulator charges them, and all three count progress the same way: `done`, the
number of units of the job completed. Standard library only.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from flowprefill.core.ops import Granularity, ops_per_forward

# One sequence's part of a forward: (new tokens computed now, tokens already in its KV cache).
SeqShape = tuple[int, int]
Shape = tuple[SeqShape, ...]


def even_bounds(rows: int, n: int) -> tuple[int, ...]:
    """Boundaries of `n` slices of `rows` rows that differ by at most one row: (0, ..., rows)."""
    n = max(1, min(n, rows))
    return tuple(i * rows // n for i in range(n + 1))


def slice_shape(shape: Shape, start: int, end: int) -> Shape:
    """The part of a packed forward in rows [start, end): per sequence, the rows it has there
    and the tokens before them (cached, or earlier rows of the same forward)."""
    out, row = [], 0
    for n, ctx in shape:
        a, b = max(start, row), min(end, row + n)
        if a < b:
            out.append((b - a, ctx + a - row))
        row += n
    return tuple(out)


@dataclass(frozen=True)
class ForwardPlan:
    """Units of one forward over `shape`: embed, then per layer the attention slices and the
    MLP slices, then final (norm + lm_head on `logits` last rows). `attn` / `mlp` are the
    slices' row boundaries (0, ..., rows); one slice is (0, rows)."""

    shape: Shape
    logits: int
    num_layers: int
    attn: tuple[int, ...]
    mlp: tuple[int, ...]

    @classmethod
    def whole(cls, shape: Shape, logits: int, num_layers: int) -> ForwardPlan:
        rows = sum(n for n, _ in shape)
        return cls(shape, logits, num_layers, (0, rows), (0, rows))

    @property
    def rows(self) -> int:
        return sum(n for n, _ in self.shape)

    @property
    def per_layer(self) -> int:
        return len(self.attn) + len(self.mlp) - 2

    @property
    def num_units(self) -> int:
        return 2 + self.num_layers * self.per_layer

    def unit(self, u: int) -> tuple[int, int, int]:
        """(operator index, first row, end row) of unit u of this forward."""
        if u == 0:
            return 0, 0, self.rows
        if u == self.num_units - 1:
            return ops_per_forward(self.num_layers) - 1, 0, self.rows
        layer, r = divmod(u - 1, self.per_layer)
        na = len(self.attn) - 1
        if r < na:
            return 1 + 2 * layer, self.attn[r], self.attn[r + 1]
        r -= na
        return 2 + 2 * layer, self.mlp[r], self.mlp[r + 1]

    def layer_end(self, u: int) -> bool:
        """Is unit u the last unit of some layer (its MLP's last slice)?"""
        return 0 < u < self.num_units - 1 and (u - 1) % self.per_layer == self.per_layer - 1


@dataclass(frozen=True)
class JobPlan:
    """The passes of a job; progress is counted in units over all passes (`done`)."""

    passes: tuple[ForwardPlan, ...]
    starts: tuple[int, ...] = field(init=False)  # job-unit index where each pass begins

    def __post_init__(self) -> None:
        if not self.passes:
            raise ValueError("a job plan needs at least one pass")
        starts, acc = [], 0
        for p in self.passes:
            starts.append(acc)
            acc += p.num_units
        object.__setattr__(self, "starts", tuple(starts))

    @classmethod
    def unsliced(cls, prompt_lens: tuple[int, ...] | list[int], num_layers: int,
                 chunk_size: int | None = None) -> JobPlan:
        """One pass over the prompts, operators whole; or, with `chunk_size` and one prompt
        longer than it, one pass per chunk (the last one computes the logits)."""
        lens = tuple(prompt_lens)
        if chunk_size and len(lens) == 1 and lens[0] > chunk_size:
            n, c = lens[0], chunk_size
            return cls(tuple(ForwardPlan.whole(((min(c, n - s), s),), int(s + c >= n),
                                               num_layers) for s in range(0, n, c)))
        return cls((ForwardPlan.whole(tuple((n, 0) for n in lens), len(lens), num_layers),))

    @property
    def num_units(self) -> int:
        return self.starts[-1] + self.passes[-1].num_units

    def locate(self, done: int) -> tuple[int, int]:
        """(pass, unit within it) of the next unit after `done` completed ones."""
        if not 0 <= done < self.num_units:
            raise IndexError(f"unit {done} of a {self.num_units}-unit plan")
        p = bisect.bisect_right(self.starts, done) - 1
        return p, done - self.starts[p]

    def pass_end(self, done: int) -> bool:
        """Does `done` (> 0) end a pass (a chunk, or the job)?"""
        return done == self.num_units or (done > 0 and done in self.starts)

    def is_point(self, done: int, granularity: Granularity) -> bool:
        """May the job be suspended after `done` units? Before any unit and at the end: always.

        operator: after every unit; layer: after each layer's last unit; chunk: between passes;
        none: never in between.
        """
        if done == 0 or done == self.num_units:
            return True
        if granularity is Granularity.OPERATOR:
            return True
        if granularity is Granularity.CHUNK:
            return self.pass_end(done)
        if granularity is Granularity.LAYER:
            p, u = self.locate(done - 1)
            return self.passes[p].layer_end(u)
        return False

    def tokens_done(self, done: int) -> int:
        """Prompt tokens whose passes are complete (a chunked job's finished chunks)."""
        full = len(self.passes) if done >= self.num_units else bisect.bisect_right(
            self.starts, done) - 1
        return sum(p.rows for p in self.passes[:full])
