"""SLO assignment: the by_type table, type rules for untyped traces, bands, and scale."""

from __future__ import annotations

from collections import Counter

import pytest

from flowprefill.config import SLOConfig
from flowprefill.workload import TraceRecord, assign_slos, exact_mix, type_by_length

TABLE = {"text": (0.25, 0.1), "image": (0.5, 0.1), "search": (4.0, 0.2), "file": (6.0, 0.2)}


def test_by_type_table_is_exact() -> None:
    recs = [TraceRecord(float(i), 100 * (i + 1), 10 + i, t, f"q{i}")
            for i, t in enumerate(TABLE)]  # fmt: skip
    reqs = assign_slos(recs, SLOConfig(mode="by_type"))
    for q, r in zip(reqs, recs, strict=True):
        ttft, tbt = TABLE[r.req_type]
        assert (q.slo.ttft, q.slo.tbt, q.slo.slo_class) == (ttft, tbt, r.req_type)
        assert q.request_id == r.request_id and q.req_type == r.req_type
        assert (q.arrival, q.prompt_len, q.max_tokens) == (r.timestamp, r.input_len, r.output_len)


def test_scale_multiplies_every_slo() -> None:
    recs = [TraceRecord(0.0, 10, 5, t) for t in TABLE]
    reqs = assign_slos(recs, SLOConfig(mode="by_type", scale=0.4))
    for q, t in zip(reqs, TABLE, strict=True):
        assert q.slo.ttft == pytest.approx(TABLE[t][0] * 0.4)
        assert q.slo.tbt == pytest.approx(TABLE[t][1] * 0.4)


def test_untyped_by_length_rule() -> None:
    bounds = {"text": 1024, "search": 4096, "file": 16384}
    assert [type_by_length(n, bounds) for n in (1, 1024, 1025, 4096, 4097, 99999)] == [
        "text", "text", "search", "search", "file", "file"
    ]  # fmt: skip
    recs = [TraceRecord(float(i), n, 1) for i, n in enumerate((500, 2000, 9000))]
    reqs = assign_slos(recs, SLOConfig(type_rule="by_length"))
    assert [q.slo.slo_class for q in reqs] == ["text", "search", "file"]
    assert [q.slo.ttft for q in reqs] == [0.25, 4.0, 6.0]
    assert [q.request_id for q in reqs] == ["0", "1", "2"]  # index when the trace has no id
    assert reqs[0].req_type == "text"


def test_untyped_mix_rule_is_exact_and_seeded() -> None:
    recs = [TraceRecord(float(i), 100, 1) for i in range(1000)]
    scfg = SLOConfig(type_rule="mix", seed=3)
    a = [q.slo.slo_class for q in assign_slos(recs, scfg)]
    b = [q.slo.slo_class for q in assign_slos(recs, scfg)]
    c = [q.slo.slo_class for q in assign_slos(recs, SLOConfig(type_rule="mix", seed=4))]
    assert a == b and a != c
    # shares 0.69/0.07/0.20/0.03 sum to 0.99: normalized, largest remainder
    assert Counter(a) == {"text": 697, "image": 71, "search": 202, "file": 30}


def test_exact_mix_counts() -> None:
    import numpy as np

    labels = exact_mix(10, {"a": 1, "b": 1, "c": 1}, np.random.default_rng(0))
    assert sorted(Counter(labels).values()) == [3, 3, 4]
    assert exact_mix(5, {"a": 1.0, "z": 0.0}, np.random.default_rng(0)) == ["a"] * 5


def test_bands_shares_and_multiples() -> None:
    recs = [TraceRecord(float(i), 100 + i, 3) for i in range(1000)]
    iso = {r.input_len: 0.001 * r.input_len for r in recs}
    scfg = SLOConfig(mode="bands", seed=1)
    reqs = assign_slos(recs, scfg, lambda n: iso[n])
    counts = Counter(q.slo.slo_class for q in reqs)
    assert counts == {"urgent": 300, "relaxed": 700}
    for q in reqs:
        mult = q.slo.ttft / iso[q.prompt_len]
        lo, hi = (1.2, 2.0) if q.slo.slo_class == "urgent" else (3.0, 10.0)
        assert lo <= mult <= hi
        assert q.meta["slo_multiple"] == pytest.approx(mult)
        assert q.slo.tbt == 0.2 and q.req_type is None
    mults = [q.meta["slo_multiple"] for q in reqs if q.slo.slo_class == "relaxed"]
    assert sum(mults) / len(mults) == pytest.approx(6.5, abs=0.3)  # uniform in [3, 10]
    again = assign_slos(recs, scfg, lambda n: iso[n])
    assert [q.slo for q in again] == [q.slo for q in reqs]
    scaled = assign_slos(recs, SLOConfig(mode="bands", seed=1, scale=2.0), lambda n: iso[n])
    for q, s in zip(reqs, scaled, strict=True):
        assert s.slo.ttft == pytest.approx(2 * q.slo.ttft) and s.slo.tbt == pytest.approx(0.4)


def test_bands_needs_isolated_ttft_and_unknown_mode() -> None:
    recs = [TraceRecord(0.0, 10, 1)]
    with pytest.raises(ValueError, match="isolated_ttft"):
        assign_slos(recs, SLOConfig(mode="bands"))
    with pytest.raises(ValueError, match="slo.mode"):
        assign_slos(recs, SLOConfig(mode="nope"))
