"""Workload building: a config in, the list of timed requests a run replays out.

Owns format dispatch, windows, rebasing, rate scaling, request limits and prompt clipping
(`load_workload`), and the one-call `build_requests` (load + SLO assignment). Knows nothing
of how requests are served: the simulator, the benchmark client and tests all start here.
"""

from __future__ import annotations

from collections.abc import Callable

from flowprefill.config import SLOConfig, WorkloadConfig
from flowprefill.core import Request
from flowprefill.workload.loaders import load_trace
from flowprefill.workload.record import TraceRecord
from flowprefill.workload.slo import assign_slos
from flowprefill.workload.synthetic import generate


def _load_raw(wcfg: WorkloadConfig) -> list[TraceRecord]:
    if wcfg.format == "synthetic":
        return generate(
            preset=wcfg.preset,
            num_requests=wcfg.num_requests,
            rate=wcfg.rate,
            arrival=wcfg.arrival,
            cv=wcfg.cv,
            seed=wcfg.seed,
        )
    if not wcfg.path:
        raise ValueError(f"workload {wcfg.name!r}: format {wcfg.format!r} needs workload.path")
    return load_trace(wcfg.path, wcfg.format)


def shape_workload(records: list[TraceRecord], wcfg: WorkloadConfig) -> list[TraceRecord]:
    """Apply, in order: sort by time (stable), window [start, end) in seconds from the first
    request on the trace's own clock, rebase so the first kept request arrives at 0, divide
    arrival times (hence every inter-arrival gap) by `rate_scale`, keep the first
    `max_requests`, and clip prompts to `max_prompt_len` tokens (and to at least 1)."""
    if wcfg.rate_scale <= 0:
        raise ValueError("workload.rate_scale must be positive")
    recs = sorted(records, key=lambda r: r.timestamp)
    if not recs:
        return []
    t0 = recs[0].timestamp
    lo = -float("inf") if wcfg.start is None else t0 + wcfg.start
    hi = float("inf") if wcfg.end is None else t0 + wcfg.end
    recs = [r for r in recs if lo <= r.timestamp < hi]
    if wcfg.max_requests is not None:
        recs = recs[: wcfg.max_requests]
    if not recs:
        return []
    base = recs[0].timestamp
    cap = wcfg.max_prompt_len
    out = []
    for r in recs:
        n = max(1, r.input_len if cap is None else min(r.input_len, cap))
        out.append(
            TraceRecord(
                (r.timestamp - base) / wcfg.rate_scale,
                n,
                max(0, r.output_len),
                r.req_type,
                r.request_id,
                r.parent_id,
                r.turn,
            )
        )
    return out


def load_workload(wcfg: WorkloadConfig) -> list[TraceRecord]:
    """The records a run replays: arrivals from 0, in order, window/rate/limits applied."""
    return shape_workload(_load_raw(wcfg), wcfg)


def build_requests(
    wcfg: WorkloadConfig,
    scfg: SLOConfig,
    isolated_ttft: Callable[[int], float] | None = None,
) -> list[Request]:
    """`load_workload` then `assign_slos`."""
    return assign_slos(load_workload(wcfg), scfg, isolated_ttft)
