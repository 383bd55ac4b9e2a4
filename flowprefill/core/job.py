"""A prefill job as the scheduler sees it: which requests, how they run, how far they got.

The executor owns the tensors of a job; this object carries only what scheduling needs.
The engine (or simulator) advances `ops_done` / `tokens_done` as work completes, so the
scheduler can ask the predictor for the remaining time at any event without a callback.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from flowprefill.core.request import Request


class Granularity(str, Enum):
    """Where a running prefill may be suspended."""

    NONE = "none"  # run to completion
    CHUNK = "chunk"  # between chunks of `chunk_size` prompt tokens
    LAYER = "layer"  # between decoder layers
    OPERATOR = "operator"  # between any two operators (attention block, MLP block, ...)


def ops_per_forward(num_layers: int) -> int:
    """Operators in one forward pass: embed, (attention, MLP) per layer, final norm + lm_head."""
    return 2 * num_layers + 2


@dataclass(eq=False)
class Job:
    """A batch of requests prefilled together (or one request, chunk by chunk).

    Progress: in whole-prompt mode `ops_done` counts finished operators of the single forward
    pass. In chunked mode (`chunk_size` set, exactly one request) `tokens_done` counts prompt
    tokens whose chunks have finished and `ops_done` counts operators of the current chunk.
    """

    job_id: int
    requests: tuple[Request, ...]
    chunk_size: int | None = None
    ops_done: int = 0
    tokens_done: int = 0
    started: bool = False  # has any operator of this job run yet

    def __post_init__(self) -> None:
        if not self.requests:
            raise ValueError("a job needs at least one request")
        if self.chunk_size is not None and len(self.requests) != 1:
            raise ValueError("a chunked job holds exactly one request")

    @property
    def num_tokens(self) -> int:
        return sum(r.prompt_len for r in self.requests)

    @property
    def request_ids(self) -> tuple[str, ...]:
        return tuple(r.request_id for r in self.requests)

    @property
    def deadline(self) -> float:
        """The earliest deadline among the job's requests."""
        return min(r.deadline for r in self.requests)
