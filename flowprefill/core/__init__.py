"""The shared vocabulary every layer speaks: requests, SLOs, jobs and their plans, the
operator table, events, decisions, clocks.

Owns plain dataclasses and the rules every layer must agree on (which units a forward has,
where a job may be suspended, what a switch costs). Must not import anything outside the
standard library, so the scheduler, the simulator and the workload tools stay free of torch.
"""

from flowprefill.core.clock import Clock, VirtualClock, WallClock
from flowprefill.core.events import (
    Abort,
    Arrival,
    Completion,
    Decision,
    DecodeDone,
    Event,
    Handoff,
    Progress,
    Rejection,
    is_due,
    preemption_latency,
)
from flowprefill.core.job import Job
from flowprefill.core.ops import OP_KINDS, Granularity, OpKind, op_kind, op_layer, ops_per_forward
from flowprefill.core.plan import ForwardPlan, JobPlan, Shape, even_bounds, slice_shape
from flowprefill.core.request import SLO, Request
from flowprefill.core.sampling import SamplingParams

__all__ = [
    "OP_KINDS",
    "SLO",
    "Abort",
    "Arrival",
    "Clock",
    "Completion",
    "Decision",
    "DecodeDone",
    "Event",
    "ForwardPlan",
    "Granularity",
    "Handoff",
    "Job",
    "JobPlan",
    "OpKind",
    "Progress",
    "Rejection",
    "Request",
    "SamplingParams",
    "Shape",
    "VirtualClock",
    "WallClock",
    "even_bounds",
    "is_due",
    "op_kind",
    "op_layer",
    "ops_per_forward",
    "preemption_latency",
    "slice_shape",
]
