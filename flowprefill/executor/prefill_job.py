"""A resumable prefill job: a batch, the activations between units, and a cursor into its plan.

The plan (`core.plan`, made by the scheduler) lists the job's passes (the whole batch, or one
per chunk) and, per pass, the model's operators with attention and MLP possibly split into
token slices. `step()` runs exactly one unit and advances `done`; between two steps the job
is just data (hidden [T, H], the cursor, KV already in the pool), so suspending it is not
calling it, and any number of jobs may be interleaved. A token slice of an attention operator
attends over the full causal KV (its rows' keys and every earlier row's, already written by
the earlier slices), and one of an MLP is row-wise, so slicing changes no result. Must not
know about policies, events or clocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from flowprefill.core import Job, OpKind, op_kind
from flowprefill.executor.batch import Piece, PrefillBatch, build_prefill_batch
from flowprefill.executor.sampling import SamplingParams, sample

if TYPE_CHECKING:
    from flowprefill.executor.runner import ModelRunner


class PrefillJob:
    def __init__(self, runner: ModelRunner, job: Job, token_ids: list[list[int]],
                 rider_tokens: list[int] | None = None) -> None:
        self.runner = runner
        self.job = job
        self.plan = job.plan
        self.seq_ids = list(job.request_ids)
        self.token_ids = token_ids
        # riders: decoding sequences whose next token this job computes (one row each, at
        # the position their KV has reached; the runner has appended its slot)
        self.rider_ids = [r.request_id for r in job.riders]
        self.rider_tokens = rider_tokens or []
        self.done = 0  # units of the plan completed
        self._batch: PrefillBatch | None = None
        self._hidden: torch.Tensor | None = None  # [T, H] between units of a pass
        self.logits: torch.Tensor | None = None  # [B, V] once finished
        self.aborted = False

    @property
    def job_id(self) -> int:
        return self.job.job_id

    @property
    def finished(self) -> bool:
        return self.done >= self.plan.num_units

    def _pieces(self, p: int) -> list[Piece]:
        bm = self.runner.blocks
        if self.job.chunk_size is None:
            riders = [Piece([t], bm.num_tokens(s) - 1, bm.block_table(s))
                      for s, t in zip(self.rider_ids, self.rider_tokens, strict=True)]
            return [Piece(list(t), 0, bm.block_table(s))
                    for s, t in zip(self.seq_ids, self.token_ids, strict=True)] + riders
        (n, start), = self.plan.passes[p].shape
        return [Piece(list(self.token_ids[0][start:start + n]), start,
                      bm.block_table(self.seq_ids[0]))]

    def step(self) -> tuple[int, int]:
        """Run exactly one unit; returns its (pass, unit within the pass)."""
        if self.finished or self.aborted:
            raise RuntimeError(f"job {self.job_id} is {'aborted' if self.aborted else 'done'}")
        model, rn = self.runner.model, self.runner
        p, u = self.plan.locate(self.done)
        fplan = self.plan.passes[p]
        if self._batch is None:
            self._batch = build_prefill_batch(model, self._pieces(p), rn.blocks.block_size)
        batch = self._batch
        op, s, e = fplan.unit(u)
        kind = op_kind(op, model.num_layers)
        if kind is OpKind.FINAL:
            if fplan.logits:  # earlier chunks need no logits
                self.logits = model.head(self._hidden[batch.last_rows])
        else:
            meta = batch.meta(s, e)

            def attend(layer: int, q, k, v):
                return rn.backend.prefill(layer, q, k, v, meta, rn.pool)

            if (s, e) == (0, batch.num_rows):
                self._hidden = model.run_op(op, self._hidden, batch.token_ids, batch.cos,
                                            batch.sin, attend)
            else:  # a token slice: rows [s, e) of the operator, written in place
                self._hidden[s:e] = model.run_op(op, self._hidden[s:e], batch.token_ids[s:e],
                                                 batch.cos[s:e], batch.sin[s:e], attend)
        self.done += 1
        if u == fplan.num_units - 1:  # end of a pass (the whole prompt, or one chunk)
            self._batch = self._hidden = None
        return p, u

    def run(self) -> torch.Tensor:
        """Run to completion; last-position logits [B, V]."""
        while not self.finished:
            self.step()
        return self.logits

    def run_monolithic(self) -> torch.Tensor:
        """The uninterrupted forward in one model call (a fresh one-pass job)."""
        if len(self.plan.passes) != 1 or self.done:
            raise RuntimeError("run_monolithic needs a fresh one-pass job")
        rn = self.runner
        batch = build_prefill_batch(rn.model, self._pieces(0), rn.blocks.block_size)

        def attend(layer: int, q, k, v):
            return rn.backend.prefill(layer, q, k, v, batch.full, rn.pool)

        self.logits = rn.model.forward(batch.token_ids, batch.positions, batch.last_rows, attend)
        self.done = self.plan.num_units
        return self.logits

    # ------------------------------------------------------------------ results / teardown
    def sample(self, params: Sequence[SamplingParams],
               generators: Sequence[torch.Generator | None]) -> list[int]:
        """The token of each request (see executor.sampling.sample)."""
        if self.logits is None:
            raise RuntimeError(f"job {self.job_id} has no logits yet")
        return sample(self.logits, params, generators)

    def abort(self) -> None:
        """Drop activations, free every KV block of the job's requests, and give back each
        rider's new slot (its token was not computed)."""
        for s in self.seq_ids:
            self.runner.blocks.free(s)
        if not self.finished:
            for s in self.rider_ids:
                if self.runner.blocks.has(s):
                    self.runner.blocks.shrink(s, 1)
        self._batch = self._hidden = None
        self.aborted = True
