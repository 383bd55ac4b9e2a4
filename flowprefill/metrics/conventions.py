"""Other systems' metric conventions over our records: `vllm bench serve`'s result keys.

Owns computing, from `RequestRecord`s, the keys of the JSON that `vllm bench serve
--save-result` writes, with the definitions of vLLM 0.32 (`vllm/benchmarks/serve.py`,
`calculate_metrics`), so a summary of ours reads side by side with one of vLLM's:

- a request is `completed` when it streamed a first token and finished (vLLM: `success`);
  every latency statistic is over completed requests only; `failed` = the rest.
- `duration`: the run's wall time (vLLM: first request sent to last response done).
- TTFT: send to first streamed chunk. E2EL: send to last chunk. TPOT of a request with more
  than one output token: (E2EL - TTFT) / (output tokens - 1), the first token excluded;
  requests with one token have no TPOT. ITL: every gap between consecutive chunks, pooled
  over requests (chunks, not tokens: a chunk may carry several tokens).
- output tokens: the server's `usage.completion_tokens` when it sent one (else one per
  chunk; vLLM re-tokenizes the text instead).
- `request_goodput`: requests meeting their SLOs per second of `duration`. vLLM tests every
  request against one global `--goodput ttft:MS tpot:MS`; we test each request against its
  own TTFT SLO and its own TBT SLO applied to its TPOT (a one-token request meets the TPOT
  part, as in vLLM). Our `goodput_rps` (the FlowPrefill paper's) counts the TTFT SLO alone.
- percentiles: numpy's linear interpolation, as vLLM; times in milliseconds.

Pure arithmetic over records; torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from flowprefill.metrics.records import RequestRecord

VLLM_KEYS = (
    "completed", "failed", "duration", "request_throughput", "request_goodput",
    "output_throughput", "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms",
    "median_tpot_ms", "p99_tpot_ms", "mean_itl_ms", "median_itl_ms", "p99_itl_ms",
    "mean_e2el_ms", "median_e2el_ms", "p99_e2el_ms",
)  # fmt: skip


def _ms_stats(name: str, values: Sequence[float]) -> dict[str, float]:
    """mean/median/p99 in ms; 0.0 for no values (vLLM's `np.mean(x or 0)`)."""
    a = np.asarray(values if len(values) else [0.0], dtype=float) * 1000.0
    return {f"mean_{name}_ms": float(a.mean()), f"median_{name}_ms": float(np.median(a)),
            f"p99_{name}_ms": float(np.percentile(a, 99))}


def tpot(record: RequestRecord) -> float | None:
    """(E2EL - TTFT) / (output tokens - 1), seconds; None below two tokens or unfinished."""
    n = record.generated
    if record.e2e is None or record.ttft is None or n <= 1:
        return None
    return (record.e2e - record.ttft) / (n - 1)


def vllm_metrics(records: Sequence[RequestRecord], duration: float) -> dict[str, float | int]:
    """The `vllm bench serve` keys (VLLM_KEYS) over `records`, measured in `duration` s."""
    done = [r for r in records if r.completed and r.first_token_time is not None]
    tpots = [t for t in (tpot(r) for r in done) if t is not None]
    good = sum(r.ttft_met and r.tbt_met for r in done)
    per_s = (lambda x: x / duration) if duration > 0 else (lambda x: 0.0)
    return {
        "completed": len(done),
        "failed": len(records) - len(done),
        "duration": duration,
        "request_throughput": per_s(len(done)),
        "request_goodput": per_s(good),
        "output_throughput": per_s(sum(r.generated for r in done)),
        **_ms_stats("ttft", [r.ttft for r in done]),
        **_ms_stats("tpot", tpots),
        **_ms_stats("itl", [g for r in done for g in r.tbt]),
        **_ms_stats("e2el", [r.e2e for r in done]),
    }
