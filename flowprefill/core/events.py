"""Events that wake the scheduler, the decision it returns, and what a switch costs.

The scheduler runs only on these; between them the engine keeps executing units. Progress
travels in events (`Progress`, `Completion`, `DecodeDone`): the scheduler never reads the
engine's state, and its callers never write the scheduler's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from flowprefill.core.job import Job
from flowprefill.core.request import Request


@dataclass(frozen=True)
class Arrival:
    """A request to prefill (a new one, or one whose KV was evicted while decoding)."""

    request: Request


@dataclass(frozen=True)
class Abort:
    """The client went away or the request failed; drop it wherever it is."""

    request_id: str


@dataclass(frozen=True)
class Progress:
    """The running job has completed `done` units of its plan (reported at a preemption point
    where something else is to be told, and at the end of every pass of a chunked job)."""

    job_id: int
    done: int


@dataclass(frozen=True)
class Completion:
    """The running job's last unit is done: every request has its token. `finished`: those
    whose generation ended with it (the rest start decoding, where this scheduler decodes)."""

    job_id: int
    finished: tuple[str, ...] = ()


@dataclass(frozen=True)
class DecodeDone:
    """The decode step the last decision asked for ran: each of its sequences has one more
    token. `finished`: sequences whose generation ended with it."""

    finished: tuple[str, ...] = ()


@dataclass(frozen=True)
class Handoff:
    """A request prefilled elsewhere (its KV is here now) joins the decode batch; `token` is
    the one its prefill produced (the next step's input)."""

    request: Request
    token: int


Event = Arrival | Abort | Progress | Completion | DecodeDone | Handoff


@dataclass(frozen=True)
class Rejection:
    request_id: str
    reason: str  # said to the client


@dataclass(frozen=True)
class Decision:
    """What the engine should do next.

    run: the prefill job to execute from now on (new when the engine has not seen its id,
        otherwise a suspended job to resume); None: no prefill work.
    suspend: ids of jobs that stop running but keep their state (KV, activations, cursor).
    drop: ids of jobs to discard entirely (all their requests aborted or rejected); the engine
        frees their state.
    rejected: requests the policy refuses (the reason goes to the client).
    decode: the sequences of the next decode step, in order (empty: none).
    decode_at: the step runs at the first preemption point at or after this time.
    evict: decoding sequences whose KV must be freed before that step (the pool is short);
        each comes back as an `Arrival` of its prompt plus what it generated.
    """

    run: Job | None
    suspend: tuple[int, ...] = ()
    drop: tuple[int, ...] = ()
    rejected: tuple[Rejection, ...] = ()
    decode: tuple[str, ...] = ()
    decode_at: float = math.inf
    evict: tuple[str, ...] = ()


def preemption_latency(new_start: float, previous_point: float, newest_arrival: float) -> float:
    """Seconds a switch took: from the moment it could first have been asked for (the later of
    the suspended job's previous preemption point and the newest arrival among the requests
    switched to) to the moment the new job's first unit starts on the device."""
    return new_start - max(previous_point, newest_arrival)


def is_due(now: float, at: float) -> bool:
    """Has time `at` come by `now`? Within float rounding (1e-9 relative): the engine sums
    unit times one by one where the simulator takes prefix sums, and a decision made at a
    time equal to a deadline must come out the same in both."""
    return now >= at - 1e-9 * max(1.0, abs(at))
