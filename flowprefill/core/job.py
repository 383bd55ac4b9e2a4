"""A prefill job as the scheduler sees it: which requests, in what units (its plan).

Immutable: progress is not stored here. The engine and the simulator count the units they
have completed and report them in events (`Progress`, `Completion`); the scheduler keeps its
own record. The executor owns a job's tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

from flowprefill.core.plan import JobPlan
from flowprefill.core.request import Request


@dataclass(frozen=True, eq=False)
class Job:
    """A batch of requests prefilled together (or one request, chunk by chunk).

    `chunk_size` set: exactly one request, one pass of `plan` per chunk.
    `riders`: decoding requests whose next token the job computes beside its prompts (a mixed
    batch: one new row each, attending to its cached context; the weights are read once for
    both); they follow the prompts in the plan's shape, and their tokens come at the end.
    """

    job_id: int
    requests: tuple[Request, ...]
    plan: JobPlan
    chunk_size: int | None = None
    riders: tuple[Request, ...] = ()

    def __post_init__(self) -> None:
        if not self.requests:
            raise ValueError("a job needs at least one request")
        if self.chunk_size is not None and len(self.requests) != 1:
            raise ValueError("a chunked job holds exactly one request")
        if self.riders and self.chunk_size is not None:
            raise ValueError("a chunked job carries no riders")

    @classmethod
    def unsliced(cls, job_id: int, requests: tuple[Request, ...], num_layers: int,
                 chunk_size: int | None = None) -> Job:
        """A job whose plan runs every operator whole (chunk by chunk with `chunk_size` when
        its one prompt is longer): what offline runs and profiling use."""
        plan = JobPlan.unsliced([r.prompt_len for r in requests], num_layers, chunk_size)
        return cls(job_id, tuple(requests), plan, chunk_size if len(plan.passes) > 1 else None)

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

    @property
    def newest_arrival(self) -> float:
        return max(r.arrival for r in self.requests)
