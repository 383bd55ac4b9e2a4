"""The shared vocabulary every layer speaks: requests, SLOs, jobs, events, decisions, clocks.

Owns plain dataclasses only. Must not import anything outside the standard library, so the
scheduler, the simulator and the workload tools stay free of torch.
"""

from flowprefill.core.clock import Clock, VirtualClock, WallClock
from flowprefill.core.events import Abort, Arrival, Boundary, Completion, Decision, Event
from flowprefill.core.job import Granularity, Job, ops_per_forward
from flowprefill.core.request import SLO, Request, RequestState
from flowprefill.core.sampling import SamplingParams

__all__ = [
    "SLO",
    "Abort",
    "Arrival",
    "Boundary",
    "Clock",
    "Completion",
    "Decision",
    "Event",
    "Granularity",
    "Job",
    "Request",
    "RequestState",
    "SamplingParams",
    "VirtualClock",
    "WallClock",
    "ops_per_forward",
]
