"""The decision log: each scheduler call's events and decision as plain tuples, so that two
drivers of the same scheduler (the engine and the simulator) can be compared call by call."""

from __future__ import annotations

from typing import Any

from flowprefill.core import (
    Abort,
    Arrival,
    Completion,
    Decision,
    DecodeDone,
    Handoff,
    Progress,
)


def summarize(obj: Any) -> tuple:
    if isinstance(obj, Arrival):
        return ("arrival", obj.request.request_id)
    if isinstance(obj, Abort):
        return ("abort", obj.request_id)
    if isinstance(obj, Progress):
        return ("progress", obj.job_id, obj.done)
    if isinstance(obj, Completion):
        return ("completion", obj.job_id, tuple(sorted(obj.finished)))
    if isinstance(obj, DecodeDone):
        return ("decoded", tuple(sorted(obj.finished)))
    if isinstance(obj, Handoff):
        return ("handoff", obj.request.request_id)
    if isinstance(obj, Decision):
        run = None if obj.run is None else (obj.run.job_id, obj.run.request_ids,
                                            tuple(r.request_id for r in obj.run.riders))
        return ("decision", run, obj.suspend, obj.drop,
                tuple(r.request_id for r in obj.rejected), obj.decode, obj.decode_at, obj.evict)
    raise TypeError(f"cannot summarize {obj!r}")
