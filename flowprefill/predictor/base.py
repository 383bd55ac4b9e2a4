"""The predictor interface: per-operator costs, remaining prefill of a job, isolated TTFT.

Owns the mapping from a `core.Job`'s progress to seconds. Subclasses only price one operator
kind for one batch shape (`op_cost`); everything else (whole forwards, chunk schedules,
remaining time, caching) lives here. Must not import torch, the model or the engine.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

from flowprefill.core import Job
from flowprefill.predictor.cost import BatchShape, ForwardCost


def chunk_shape(prompt_len: int, chunk_size: int, tokens_done: int) -> BatchShape:
    """Shape of the chunk that starts at `tokens_done` of a prompt prefilled chunk by chunk."""
    return ((min(chunk_size, prompt_len - tokens_done), tokens_done),)


def job_shape(job: Job) -> tuple[BatchShape, int]:
    """(shape, sequences needing logits) of the job's current forward."""
    if job.chunk_size is None:
        return tuple((r.prompt_len, 0) for r in job.requests), len(job.requests)
    prompt_len = job.requests[0].prompt_len
    shape = chunk_shape(prompt_len, job.chunk_size, job.tokens_done)
    last = job.tokens_done + shape[0][0] >= prompt_len
    return shape, int(last)


class Predictor(ABC):
    """Prices prefill work. `op_cost` is the only method a kind must implement."""

    def __init__(self, num_layers: int) -> None:
        self.num_layers = num_layers
        # Per-instance memo tables (batch shapes recur: every request's isolated TTFT, every
        # chunk schedule); bounded by the number of distinct jobs of a run.
        self._forwards: dict[tuple[BatchShape, int], ForwardCost] = {}
        self._chunk_suffix: dict[tuple[int, int], tuple[float, ...]] = {}

    @abstractmethod
    def op_cost(self, kind: str, shape: BatchShape, logits: int) -> float:
        """Seconds of one operator of `kind` (embed | attention | mlp | final) over `shape`.

        `logits` counts the sequences whose last position goes through lm_head in this forward.
        """

    def forward(self, shape: BatchShape, logits: int | None = None) -> ForwardCost:
        """Per-operator costs of one forward over `shape` (logits: default one per sequence)."""
        logits = len(shape) if logits is None else logits
        key = (shape, logits)
        cost = self._forwards.get(key)
        if cost is None:
            cost = ForwardCost(
                embed=self.op_cost("embed", shape, logits),
                attention=self.op_cost("attention", shape, logits),
                mlp=self.op_cost("mlp", shape, logits),
                final=self.op_cost("final", shape, logits),
                num_layers=self.num_layers,
            )
            self._forwards[key] = cost
        return cost

    def job_forward(self, job: Job) -> ForwardCost:
        """Costs of the forward the job is in now (the whole batch, or its current chunk)."""
        shape, logits = job_shape(job)
        return self.forward(shape, logits)

    def chunk_forward(self, prompt_len: int, chunk_size: int, tokens_done: int) -> ForwardCost:
        last = tokens_done + chunk_size >= prompt_len
        return self.forward(chunk_shape(prompt_len, chunk_size, tokens_done), int(last))

    def _chunk_suffix_sums(self, prompt_len: int, chunk_size: int) -> tuple[float, ...]:
        """suffix[i] = seconds of chunks i.. of a chunked prefill (suffix[num_chunks] = 0)."""
        key = (prompt_len, chunk_size)
        sums = self._chunk_suffix.get(key)
        if sums is None:
            n = math.ceil(prompt_len / chunk_size)
            totals = [self.chunk_forward(prompt_len, chunk_size, i * chunk_size).total
                      for i in range(n)]
            acc, out = 0.0, [0.0]
            for t in reversed(totals):
                acc += t
                out.append(acc)
            sums = tuple(reversed(out))
            self._chunk_suffix[key] = sums
        return sums

    def request_cost(self, prompt_len: int, chunk_size: int | None = None) -> float:
        """Seconds to prefill one prompt alone, whole or chunk by chunk."""
        if chunk_size is None or chunk_size >= prompt_len:
            return self.forward(((prompt_len, 0),), 1).total
        return self._chunk_suffix_sums(prompt_len, chunk_size)[0]

    def isolated_ttft(self, prompt_len: int) -> float:
        """TTFT of a prompt prefilled alone on an idle worker, in one forward."""
        return self.request_cost(prompt_len)

    def remaining(self, job: Job) -> float:
        """Predicted seconds of prefill the job still needs (operators not yet run)."""
        current = self.job_forward(job).remaining(job.ops_done)
        if job.chunk_size is None:
            return current
        prompt_len = job.requests[0].prompt_len
        next_chunk = job.tokens_done // job.chunk_size + 1
        suffix = self._chunk_suffix_sums(prompt_len, job.chunk_size)
        return current + suffix[min(next_chunk, len(suffix) - 1)]
