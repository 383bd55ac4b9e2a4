"""Events that wake the scheduler, and the decision it returns.

The scheduler runs only on these; between them the engine keeps executing the current job.
"""

from __future__ import annotations

from dataclasses import dataclass

from flowprefill.core.job import Job
from flowprefill.core.request import Request


@dataclass(frozen=True)
class Arrival:
    request: Request


@dataclass(frozen=True)
class Completion:
    """Job `job_id` finished its prefill (every request in it has its first token)."""

    job_id: int


@dataclass(frozen=True)
class Abort:
    """The client went away or the request failed; drop it wherever it is."""

    request_id: str


@dataclass(frozen=True)
class Boundary:
    """Job `job_id` reached a preemption point it was asked to report (a chunk boundary)."""

    job_id: int


Event = Arrival | Completion | Abort | Boundary


@dataclass(frozen=True)
class Decision:
    """What the engine should do next.

    run: the job to execute from now on (new when the engine has not seen its id, otherwise a
        suspended job to resume); None means idle.
    suspend: ids of jobs that stop running but keep their state (KV, activations, cursor).
    drop: ids of jobs to discard entirely (all their requests aborted or rejected); the engine
        frees their state.
    rejected: request ids the policy refuses (e.g. hopeless under an admission rule); the
        engine fails them to the client.
    """

    run: Job | None
    suspend: tuple[int, ...] = ()
    drop: tuple[int, ...] = ()
    rejected: tuple[str, ...] = ()
