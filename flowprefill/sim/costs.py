"""What a preemption granularity costs, from the cost model alone (no simulation).

Owns two per-workload numbers for the granularity ablation: `compute_inflation` (extra
prefill work the granularity causes: chunked prefill re-reads weights and attends over the
prefix chunk by chunk; token slices under operator granularity add their per-unit overhead;
operator and layer boundaries add nothing) and the longest stretch the
device runs without a preemption point (`blocking_*`: how long an urgent arrival may wait
before the scheduler can switch). Both price each request alone, as the truth model does.
Must not import torch.
"""

from __future__ import annotations

from collections.abc import Sequence

from flowprefill.config import PolicyConfig
from flowprefill.core import Granularity, Request
from flowprefill.metrics import percentile
from flowprefill.predictor import Predictor
from flowprefill.predictor.plan import Planner


def blocking_span(prompt_len: int, planner: Planner, cost: Predictor) -> float:
    """Seconds of the longest stretch between two preemption points of one prompt's plan."""
    plan = planner.plan((prompt_len,))
    longest = stretch = 0.0
    for p, f in enumerate(plan.passes):
        units = cost.units(f)
        for u in range(f.num_units):
            stretch += units.unit(u)
            if plan.is_point(plan.starts[p] + u + 1, planner.granularity):
                longest, stretch = max(longest, stretch), 0.0
    return longest


def granularity_costs(requests: Sequence[Request], policy: PolicyConfig, cost: Predictor,
                      max_unit_s: float = 0.0) -> dict[str, float | None]:
    """compute_inflation (fraction of extra work vs whole-prompt prefill) and blocking
    percentiles (seconds) over the workload's prompts."""
    lengths = [r.prompt_len for r in requests]
    planner = Planner(cost, Granularity(policy.granularity), policy.chunk_size, max_unit_s)
    whole = sum(cost.isolated_ttft(n) for n in lengths)
    actual = sum(cost.total(planner.plan((n,))) for n in lengths)
    span: dict[int, float] = {}  # one walk over the plan per distinct prompt length
    for n in lengths:
        if n not in span:
            span[n] = blocking_span(n, planner, cost)
    spans = [span[n] for n in lengths]
    return {
        "compute_inflation": actual / whole - 1.0 if whole > 0 else 0.0,
        "blocking_p50": percentile(spans, 50),
        "blocking_p99": percentile(spans, 99),
        "blocking_max": max(spans) if spans else None,
    }
