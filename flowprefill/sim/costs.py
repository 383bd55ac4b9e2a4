"""What a preemption granularity costs, from the cost model alone (no simulation).

Owns two per-workload numbers for the granularity ablation: `compute_inflation` (extra
prefill work the granularity causes: chunked prefill re-reads weights and attends over the
prefix chunk by chunk; operator and layer boundaries add nothing) and the longest stretch the
device runs without a preemption point (`blocking_*`: how long an urgent arrival may wait
before the scheduler can switch). Both price each request alone, as the truth model does.
Must not import torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from flowprefill.config import PolicyConfig
from flowprefill.core import Request
from flowprefill.metrics import percentile
from flowprefill.predictor import Predictor


def blocking_span(prompt_len: int, policy: PolicyConfig, cost: Predictor) -> float:
    """Seconds of the longest non-preemptible stretch of one prompt's prefill."""
    g = policy.granularity
    if g == "chunk" and policy.chunk_size < prompt_len:
        n = math.ceil(prompt_len / policy.chunk_size)
        # later chunks attend over a longer prefix, so the last full chunk is the longest
        starts = {(n - 1) * policy.chunk_size, max(n - 2, 0) * policy.chunk_size}
        return max(cost.chunk_forward(prompt_len, policy.chunk_size, s).total for s in starts)
    f = cost.forward(((prompt_len, 0),), 1)
    if g == "operator":
        return max(f.embed, f.attention, f.mlp, f.final)
    if g == "layer":
        return max(f.embed, f.attention + f.mlp, f.final)
    return f.total  # none, or a prompt that fits in one chunk


def granularity_costs(requests: Sequence[Request], policy: PolicyConfig,
                      cost: Predictor) -> dict[str, float | None]:
    """compute_inflation (fraction of extra work vs whole-prompt prefill) and blocking
    percentiles (seconds) over the workload's prompts."""
    lengths = [r.prompt_len for r in requests]
    whole = sum(cost.request_cost(n) for n in lengths)
    chunk = policy.chunk_size if policy.granularity == "chunk" else None
    actual = sum(cost.request_cost(n, chunk) for n in lengths)
    spans = [blocking_span(n, policy, cost) for n in lengths]
    return {
        "compute_inflation": actual / whole - 1.0 if whole > 0 else 0.0,
        "blocking_p50": percentile(spans, 50),
        "blocking_p99": percentile(spans, 99),
        "blocking_max": max(spans) if spans else None,
    }
