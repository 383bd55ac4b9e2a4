"""Run summaries: SLO attainment, goodput, latency percentiles, preemption statistics.

Owns turning a list of `RequestRecord`s into one JSON-ready dict (`summarize`) and the flat,
namespaced view of it that sinks log (`flat_metrics`: `ttft/p99`, `slo/attainment`, ...).
Pure arithmetic over records; knows nothing of engines or schedulers.

Conventions (the FlowPrefill paper's): the first `warmup` requests by arrival are excluded
(runs set 32, `metrics.warmup_requests`); TTFT attainment = share of requests whose first
token came within their TTFT SLO; TBT attainment = the fraction of each request's
inter-token gaps within its TBT SLO, averaged over requests; mean TTFT and mean TBT (every
gap pooled) are reported. Every summary also carries `vllm bench serve`'s keys
(`metrics.conventions`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from flowprefill.metrics.conventions import VLLM_KEYS, vllm_metrics
from flowprefill.metrics.records import RequestRecord

SLO_SCALES = (0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0)
PERCENTILES = (50, 90, 99)


def percentile(values: Sequence[float], q: float) -> float | None:
    """numpy's linear-interpolation percentile; None for no values."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else None


def _share(flags: Iterable[bool], n: int) -> float:
    return sum(flags) / n if n else 0.0


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if len(values) else 0.0


def _pcts(prefix: str, values: Sequence[float]) -> dict[str, float | None]:
    return {f"{prefix}_p{q}": percentile(values, q) for q in PERCENTILES}


def _by_class(records: Sequence[RequestRecord]) -> dict[str, dict]:
    groups: dict[str, list[RequestRecord]] = {}
    for r in records:
        groups.setdefault(r.slo_class, []).append(r)
    out = {}
    for name in sorted(groups):
        rs = groups[name]
        ttfts = [r.ttft for r in rs if r.ttft is not None and not r.rejected]
        out[name] = {
            "requests": len(rs),
            "ttft_attainment": _share((r.ttft_met for r in rs), len(rs)),
            "tbt_attainment": _mean([r.tbt_fraction_at(1.0) for r in rs]),
            "ttft_p50": percentile(ttfts, 50),
            "ttft_p99": percentile(ttfts, 99),
        }
    return out


def _span(records: Sequence[RequestRecord]) -> float:
    """Last event (finish, else first token, else arrival) minus first arrival."""
    start = min(r.arrival for r in records)
    end = max(
        r.finish_time
        if r.finish_time is not None
        else r.first_token_time
        if r.first_token_time is not None
        else r.arrival
        for r in records
    )
    return end - start


def measured(records: Sequence[RequestRecord], warmup: int) -> list[RequestRecord]:
    """`records` without the first `warmup` by arrival (ties: input order)."""
    if warmup < 0:
        raise ValueError(f"metrics.warmup_requests must be >= 0, got {warmup}")
    if records and warmup >= len(records):
        raise ValueError(f"metrics.warmup_requests={warmup} excludes all {len(records)} "
                         "requests of the run: replay more requests or lower it")
    order = sorted(range(len(records)), key=lambda i: records[i].arrival)
    kept = sorted(order[warmup:])
    return [records[i] for i in kept]


def summarize(records: Sequence[RequestRecord], duration: float | None = None,
              warmup: int = 0) -> dict:
    """One run's headline numbers over the requests after the first `warmup` (by arrival).

    Attainment counts every measured request in the denominator (rejected and unserved ones
    miss). goodput_rps: requests meeting their TTFT SLO per second of `duration` (default:
    the measured requests' span, last finish minus first arrival). offered_rps: requests per
    second of the arrival span (what the workload asked for). TBT percentiles pool every
    inter-token gap of every request. tbt_attainment: the paper's (per-request fraction of
    gaps within the TBT SLO, averaged); tpot_attainment: share of requests whose mean gap
    (TPOT) is within it. attainment_vs_slo_scale: TTFT attainment with every TTFT SLO
    multiplied by the key. Also carries `vllm bench serve`'s keys (see `conventions`).
    """
    records = measured(records, warmup)
    n = len(records)
    if duration is None:
        duration = _span(records) if records else 0.0
    served = [r for r in records if not r.rejected]
    ttfts = [r.ttft for r in served if r.ttft is not None]
    gaps = [g for r in served for g in r.tbt]
    e2es = [r.e2e for r in served if r.e2e is not None]
    pre_lat = [x for r in records for x in r.preemption_latencies]
    met = sum(r.ttft_met for r in records)
    completed = sum(r.completed for r in records)
    arrivals = [r.arrival for r in records]
    arrival_span = max(arrivals) - min(arrivals) if arrivals else 0.0
    out_tokens = sum(r.generated for r in served)
    per_s = (lambda x: x / duration) if duration > 0 else (lambda x: 0.0)
    summary: dict = {
        "requests": n,
        "completed": completed,
        "rejected": sum(r.rejected for r in records),
        "ttft_attainment": met / n if n else 0.0,
        "tbt_attainment": _mean([r.tbt_fraction_at(1.0) for r in records]),
        "tpot_attainment": _share((r.tbt_met for r in records), n),
        "goodput_rps": per_s(met),
        "throughput_rps": per_s(completed),
        "output_tokens_per_s": per_s(out_tokens),
        "offered_rps": (n - 1) / arrival_span if arrival_span > 0 else 0.0,
        "duration": duration,
        "warmup_excluded": warmup,
        "mean_ttft": _mean(ttfts) if ttfts else None,
        "mean_tbt": _mean(gaps) if gaps else None,
        **_pcts("ttft", ttfts),
        **_pcts("tbt", gaps),
        **_pcts("e2e", e2es),
        "preemptions": sum(r.preemptions for r in records),
        "preemption_latency_p50": percentile(pre_lat, 50),
        "preemption_latency_p99": percentile(pre_lat, 99),
        "by_class": _by_class(records),
        "attainment_vs_slo_scale": {
            f"{s:.1f}": _share((r.ttft_met_at(s) for r in records), n) for s in SLO_SCALES
        },
    }
    summary.update(vllm_metrics(records, duration))
    return summary


_FLAT_NAMES = {
    "requests": "requests/total",
    "completed": "requests/completed",
    "rejected": "requests/rejected",
    "ttft_attainment": "slo/attainment",
    "tbt_attainment": "slo/tbt_attainment",
    "tpot_attainment": "slo/tpot_attainment",
    "mean_ttft": "ttft/mean",
    "mean_tbt": "tbt/mean",
    "goodput_rps": "goodput/rps",
    "throughput_rps": "throughput/rps",
    "output_tokens_per_s": "throughput/output_tokens_per_s",
    "offered_rps": "rate/offered_rps",
    "duration": "run/duration",
    "preemptions": "preempt/count",
    "preemption_latency_p50": "preempt/latency_p50",
    "preemption_latency_p99": "preempt/latency_p99",
    "max_goodput_rps": "goodput/max_rps",
    "max_rate_scale": "goodput/max_rate_scale",
}


def flat_metrics(summary: dict) -> dict[str, float]:
    """Namespaced scalar keys for loggers: `ttft/p99`, `slo/attainment`, `goodput/rps`,
    `class/<name>/ttft_attainment`, `slo_scale/<s>`, `vllm/mean_ttft_ms`; None values and
    non-numbers are left out (lists, strings), unknown numeric keys go under `misc/`."""
    flat: dict[str, float] = {}
    for key, value in summary.items():
        if key == "by_class":
            for cls, stats in value.items():
                for k, v in stats.items():
                    if isinstance(v, int | float) and not isinstance(v, bool):
                        flat[f"class/{cls}/{k}"] = v
        elif key == "attainment_vs_slo_scale":
            for s, v in value.items():
                flat[f"slo_scale/{s}"] = v
        elif isinstance(value, bool) or not isinstance(value, int | float):
            continue
        elif key in _FLAT_NAMES:
            flat[_FLAT_NAMES[key]] = value
        elif key in VLLM_KEYS:
            flat[f"vllm/{key}"] = value
        elif key.split("_p")[0] in ("ttft", "tbt", "e2e") and "_p" in key:
            metric, q = key.rsplit("_", 1)
            flat[f"{metric}/{q}"] = value
        else:
            flat[f"misc/{key}"] = value
    return flat
