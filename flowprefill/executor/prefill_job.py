"""A resumable prefill job: a batch, the activations between operators, and a cursor.

A job is a list of *passes* (one pass over all its requests in whole-prompt mode; one pass per
chunk of `chunk_size` prompt tokens in chunked mode), each pass the model's operators in order,
each operator one *unit* or, when it covers more than `max_op_tokens` rows, several token-slice
units. `step()` runs exactly one unit and advances the cursor; between two steps the job is
just data (hidden [T, H], cursor, KV already in the pool), so suspending it is not calling it,
and any number of jobs may be interleaved. Progress is mirrored into the scheduler's
`core.Job` (`ops_done`, `tokens_done`, `started`). Must not know about policies or events.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from flowprefill.core.job import Granularity, Job
from flowprefill.executor.batch import Piece, PrefillBatch, build_prefill_batch
from flowprefill.executor.sampling import SamplingParams, sample
from flowprefill.model.decoder import OpKind

if TYPE_CHECKING:
    from flowprefill.executor.runner import ModelRunner


class PrefillJob:
    def __init__(self, runner: ModelRunner, job: Job, token_ids: list[list[int]],
                 granularity: Granularity, max_op_tokens: int = 0) -> None:
        self.runner = runner
        self.job = job
        self.seq_ids = list(job.request_ids)
        self.token_ids = token_ids
        self.granularity = granularity
        self.max_op_tokens = max_op_tokens
        n = len(token_ids[0])
        step = job.chunk_size or 0
        # passes: (start, end) token ranges of the (single) request, or None for whole prompts
        self._passes: list[tuple[int, int] | None] = (
            [(s, min(s + step, n)) for s in range(0, n, step)] if step else [None])
        self._pass = 0
        self._op = 0  # next operator of the current pass
        self._row = 0  # next row of the current operator (token slicing)
        self._batch: PrefillBatch | None = None
        self._hidden: torch.Tensor | None = None  # [T, H] between operators
        self._at_point = False
        self.logits: torch.Tensor | None = None  # [B, V] once done
        self.done = False
        self.aborted = False

    # ------------------------------------------------------------------ state
    @property
    def job_id(self) -> int:
        return self.job.job_id

    @property
    def chunked(self) -> bool:
        return self.job.chunk_size is not None

    @property
    def at_preemption_point(self) -> bool:
        """True when the last step ended where the job's granularity allows suspension."""
        return self._at_point or self.done

    @property
    def cursor(self) -> tuple[int, int, int]:
        """(pass, operator, row) of the next unit."""
        return self._pass, self._op, self._row

    def _pieces(self) -> list[Piece]:
        bm = self.runner.blocks
        span = self._passes[self._pass]
        if span is None:
            return [Piece(list(t), 0, bm.block_table(s))
                    for s, t in zip(self.seq_ids, self.token_ids, strict=True)]
        a, b = span
        return [Piece(list(self.token_ids[0][a:b]), a, bm.block_table(self.seq_ids[0]))]

    # ------------------------------------------------------------------ running
    def step(self) -> None:
        """Run exactly one unit: an operator, or one token slice of it."""
        if self.done:
            raise RuntimeError(f"job {self.job_id} is {'aborted' if self.aborted else 'done'}")
        model, rn = self.runner.model, self.runner
        if self._batch is None:
            self._batch = build_prefill_batch(model, self._pieces(), rn.blocks.block_size)
        batch, op = self._batch, self._op
        self.job.started = True
        kind, layer = model.op_kind(op)
        t = batch.num_rows
        if kind is OpKind.HEAD:
            if self._pass == len(self._passes) - 1:  # earlier chunks need no logits
                self.logits = model.head(self._hidden[batch.last_rows])
            self._finish_op(kind, layer)
            return
        s = self._row
        e = min(s + self.max_op_tokens, t) if self.max_op_tokens > 0 else t
        meta = batch.meta(s, e)

        def attend(layer: int, q, k, v):
            return rn.backend.prefill(layer, q, k, v, meta, rn.pool)

        if (s, e) == (0, t):
            self._hidden = model.run_op(op, self._hidden, batch.token_ids, batch.cos, batch.sin,
                                        attend)
        else:  # a token slice: rows [s, e) of the operator, written in place
            if kind is OpKind.EMBED and s == 0:
                self._hidden = torch.empty(t, model.cfg.hidden_size, dtype=model.dtype,
                                           device=model.device)
            h = None if kind is OpKind.EMBED else self._hidden[s:e]
            self._hidden[s:e] = model.run_op(op, h, batch.token_ids[s:e], batch.cos[s:e],
                                             batch.sin[s:e], attend)
        if e < t:
            self._row = e
            self._at_point = self.granularity is Granularity.OPERATOR
            return
        self._finish_op(kind, layer)

    def _finish_op(self, kind: OpKind, layer: int) -> None:
        self._row = 0
        self._op += 1
        self.job.ops_done += 1
        g = self.granularity
        layer_end = g is Granularity.LAYER and kind is OpKind.MLP
        self._at_point = g is Granularity.OPERATOR or layer_end
        if self._op < self.runner.model.num_ops:
            return
        # end of a pass (the whole prompt, or one chunk)
        span = self._passes[self._pass]
        if span is not None:
            self.job.tokens_done = span[1]
            self.job.ops_done = 0
        self._pass += 1
        self._op = 0
        self._batch = None
        self._hidden = None
        self._at_point = g is not Granularity.NONE
        if self._pass == len(self._passes):
            self.done = True

    def run_until_preemption_point(self) -> int:
        """Run units until the granularity allows suspension (or the job ends); units run."""
        n = 0
        while True:
            self.step()
            n += 1
            if self.at_preemption_point:
                return n

    def run(self) -> torch.Tensor:
        """Run to completion; last-position logits [B, V]."""
        while not self.done:
            self.step()
        return self.logits

    def run_monolithic(self) -> torch.Tensor:
        """The uninterrupted forward in one model call (whole-prompt jobs that have not started)."""
        if self.chunked or self.job.started:
            raise RuntimeError("run_monolithic needs a fresh whole-prompt job")
        rn = self.runner
        batch = build_prefill_batch(rn.model, self._pieces(), rn.blocks.block_size)

        def attend(layer: int, q, k, v):
            return rn.backend.prefill(layer, q, k, v, batch.full, rn.pool)

        self.job.started = True
        self.logits = rn.model.forward(batch.token_ids, batch.positions, batch.last_rows, attend)
        self.job.ops_done = rn.model.num_ops
        self.done = True
        return self.logits

    # ------------------------------------------------------------------ results / teardown
    def sample(self, params: Sequence[SamplingParams],
               generators: Sequence[torch.Generator | None]) -> list[int]:
        """First token of each request (see executor.sampling.sample)."""
        if self.logits is None:
            raise RuntimeError(f"job {self.job_id} has no logits yet")
        return sample(self.logits, params, generators)

    def abort(self) -> None:
        """Drop activations and free every KV block of the job's requests."""
        for s in self.seq_ids:
            self.runner.blocks.free(s)
        self._batch = self._hidden = None
        self.done = self.aborted = True
