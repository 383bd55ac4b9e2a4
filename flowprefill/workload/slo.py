"""SLO assignment: turn trace records into `core.Request`s with declared, seeded SLOs.

Owns the modes of `SLOConfig`:
- `by_type`: a table of TTFT/TBT seconds per request type; untyped rows (or types missing from
  the table) are typed by `type_rule`: `by_length` (prompt-length bounds per type) or `mix`
  (an exact, seeded class mix).
- `paper`: `by_type` with the table of one model (`table`) from `tables`, the FlowPrefill
  paper's Table 2 (conf/slo/paper.yaml).
- `scaled_by_type`: `by_type` with each type's TTFT SLO a declared multiple of the isolated
  TTFT of a declared prompt length on the machine served (from the caller's callable), so
  per-type SLOs keep the paper's shape on any hardware.
- `bands`: each request drawn into a class by exact shares (seeded), its TTFT SLO a multiple,
  uniform in [lo, hi], of its own isolated TTFT (from a callable the caller provides, usually
  the predictor), so experiments stay meaningful on any hardware.
`scale` multiplies every SLO, TTFT and TBT. Knows nothing of predictors or schedulers.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

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


def type_tables(
    scfg: SLOConfig, isolated_ttft: Callable[[int], float] | None = None
) -> tuple[dict[str, float], dict[str, float]]:
    """The (TTFT, TBT) seconds per type that `by_type`, `paper` and `scaled_by_type` use,
    before `scale`."""
    if scfg.mode == "by_type":
        return dict(scfg.ttft), dict(scfg.tbt)
    if scfg.mode == "paper":
        if scfg.table not in scfg.tables:
            raise ValueError(f"slo.table={scfg.table!r} is not in slo.tables "
                             f"{sorted(scfg.tables)}")
        row = scfg.tables[scfg.table]
        missing = [k for k in ("ttft", "tbt") if k not in row]
        if missing:
            raise ValueError(f"slo.tables.{scfg.table} lacks {missing}")
        return {k: float(v) for k, v in row["ttft"].items()}, dict(row["tbt"])
    if scfg.mode == "scaled_by_type":
        if not scfg.scaled:
            raise ValueError("slo.mode=scaled_by_type needs slo.scaled {type: {multiple, "
                             "prompt_len}}")
        if isolated_ttft is None:
            raise ValueError("slo.mode=scaled_by_type needs isolated_ttft (measured or "
                             "predicted on the machine served)")
        ttft = {}
        for t, rule in scfg.scaled.items():
            if "multiple" not in rule or "prompt_len" not in rule:
                raise ValueError(f"slo.scaled.{t} needs multiple and prompt_len, got {rule}")
            ttft[t] = float(rule["multiple"]) * float(isolated_ttft(int(rule["prompt_len"])))
        return ttft, dict(scfg.tbt)
    raise ValueError(f"slo.mode {scfg.mode!r} has no type table")


def class_priority(requests: Sequence[Request]) -> dict[str, int]:
    """SLO class -> its rank by the mean TTFT SLO of its requests, tightest 0: the
    `priority` a request carries (vLLM's convention: lower is served first)."""
    sums: dict[str, list[float]] = {}
    for r in requests:
        sums.setdefault(r.slo.slo_class, []).append(r.slo.ttft)
    mean = {c: sum(v) / len(v) for c, v in sums.items()}
    return {c: i for i, c in enumerate(sorted(mean, key=lambda c: (mean[c], c)))}


def assign_types(records: Sequence[TraceRecord], scfg: SLOConfig,
                 known: Collection[str] | None = None) -> list[str]:
    """Each record's type: its own when the TTFT table (`known`, default `scfg.ttft`'s
    types) knows it, else by `scfg.type_rule`."""
    known = set(scfg.ttft if known is None else known)
    types: list[str | None] = [r.req_type if r.req_type in known else None for r in records]
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
    unknown = {t for t in types if t not in known}
    if unknown:
        raise ValueError(f"types {sorted(unknown)} have no TTFT SLO (known: {sorted(known)})")
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
    `bands` and `scaled_by_type`, unused by `by_type` and `paper`.
    """
    s = scfg.scale
    if scfg.mode in ("by_type", "paper", "scaled_by_type"):
        ttft, tbt = type_tables(scfg, isolated_ttft)
        types = assign_types(records, scfg, ttft)
        return [
            _request(i, r, SLO(ttft[t] * s, tbt.get(t, scfg.tbt_default) * s, t), t, {})
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
    raise ValueError(f"unknown slo.mode {scfg.mode!r}; expected by_type, paper, "
                     "scaled_by_type or bands")
