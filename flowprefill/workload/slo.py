"""SLO assignment: turn trace records into `core.Request`s with declared, seeded SLOs.

Owns the two modes of `SLOConfig`:
- `by_type`: a table of TTFT/TBT seconds per request type; untyped rows (or types missing from
  the table) are typed by `type_rule`: `by_length` (prompt-length bounds per type) or `mix`
  (an exact, seeded class mix).
- `bands`: each request drawn into a class by exact shares (seeded), its TTFT SLO a multiple,
  uniform in [lo, hi], of its own isolated TTFT (from a callable the caller provides, usually
  the predictor), so experiments stay meaningful on any hardware.
`scale` multiplies every SLO, TTFT and TBT. Knows nothing of predictors or schedulers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from flowprefill.config import SLOConfig
from flowprefill.core import SLO, Request
from flowprefill.workload.record import TraceRecord


def exact_mix(n: int, shares: Mapping[str, float], rng: np.random.Generator) -> list[str]:
    """`n` labels whose counts match `shares` (normalized) by largest remainder, shuffled."""
    names = list(shares)
    if not names:
        raise ValueError("a class mix needs at least one class")
    p = np.array([float(shares[c]) for c in names])
    if (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"invalid shares {dict(shares)}")
    want = p / p.sum() * n
    counts = np.floor(want).astype(int)
    for i in np.argsort(-(want - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    labels = np.repeat(np.arange(len(names)), counts)
    return [names[i] for i in rng.permutation(labels)]


def type_by_length(prompt_len: int, bounds: Mapping[str, float]) -> str:
    """The type with the smallest inclusive upper bound >= prompt_len; prompts longer than
    every bound take the type with the largest bound."""
    ordered = sorted(bounds.items(), key=lambda kv: kv[1])
    for name, bound in ordered:
        if prompt_len <= bound:
            return name
    return ordered[-1][0]


def assign_types(records: Sequence[TraceRecord], scfg: SLOConfig) -> list[str]:
    """Each record's type: its own when the TTFT table knows it, else by `scfg.type_rule`."""
    types: list[str | None] = [r.req_type if r.req_type in scfg.ttft else None for r in records]
    untyped = [i for i, t in enumerate(types) if t is None]
    if untyped:
        if scfg.type_rule == "by_length":
            for i in untyped:
                types[i] = type_by_length(records[i].input_len, scfg.length_types)
        elif scfg.type_rule == "mix":
            rng = np.random.default_rng([scfg.seed, 1])
            for i, t in zip(untyped, exact_mix(len(untyped), scfg.type_mix, rng), strict=True):
                types[i] = t
        else:
            raise ValueError(f"unknown slo.type_rule {scfg.type_rule!r}; by_length or mix")
    unknown = {t for t in types if t not in scfg.ttft}
    if unknown:
        raise ValueError(f"types {sorted(unknown)} have no TTFT in slo.ttft {dict(scfg.ttft)}")
    return types  # type: ignore[return-value]


def _request(i: int, r: TraceRecord, slo: SLO, req_type: str | None, meta: dict) -> Request:
    return Request(
        request_id=r.request_id if r.request_id is not None else str(i),
        arrival=r.timestamp,
        prompt_len=r.input_len,
        slo=slo,
        max_tokens=max(1, r.output_len),
        req_type=req_type,
        meta=meta,
    )


def assign_slos(
    records: Sequence[TraceRecord],
    scfg: SLOConfig,
    isolated_ttft: Callable[[int], float] | None = None,
) -> list[Request]:
    """Requests with SLOs per `scfg` (see the module docstring); order and times kept.

    isolated_ttft: prompt length -> seconds of prefill alone on an idle system; required by
    `bands`, unused by `by_type`.
    """
    s = scfg.scale
    if scfg.mode == "by_type":
        types = assign_types(records, scfg)
        return [
            _request(
                i,
                r,
                SLO(scfg.ttft[t] * s, scfg.tbt.get(t, scfg.tbt_default) * s, t),
                t,
                {},
            )
            for i, (r, t) in enumerate(zip(records, types, strict=True))
        ]
    if scfg.mode == "bands":
        if isolated_ttft is None:
            raise ValueError("slo.mode=bands needs isolated_ttft (e.g. from the predictor)")
        shares = {name: band["share"] for name, band in scfg.bands.items()}
        classes = exact_mix(len(records), shares, np.random.default_rng([scfg.seed, 2]))
        rng = np.random.default_rng([scfg.seed, 3])
        out = []
        for i, (r, c) in enumerate(zip(records, classes, strict=True)):
            band = scfg.bands[c]
            mult = float(rng.uniform(float(band["lo"]), float(band["hi"])))
            iso = float(isolated_ttft(r.input_len))
            tbt = float(band.get("tbt", scfg.tbt_default))
            slo = SLO(mult * iso * s, tbt * s, c)
            meta = {"isolated_ttft": iso, "slo_multiple": mult}
            out.append(_request(i, r, slo, r.req_type, meta))
        return out
    raise ValueError(f"unknown slo.mode {scfg.mode!r}; expected by_type or bands")
