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


PAPER = {  # the FlowPrefill paper's Table 2: TTFT seconds by type, per model
    "llama3_8b": {"text": 0.25, "image": 0.5, "search": 4.0, "file": 6.0},
    "qwen2_5_14b": {"text": 0.4, "image": 0.8, "search": 6.5, "file": 9.0},
    "llama3_70b": {"text": 1.0, "image": 2.0, "search": 15.0, "file": 18.0},
}


def _paper(*overrides: str) -> SLOConfig:
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from flowprefill.config import from_hydra, register_configs

    register_configs()
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        cfg = compose(config_name="simulate", overrides=["slo=paper", *overrides])
    return from_hydra(SLOConfig, cfg.slo)


@pytest.mark.parametrize("model", sorted(PAPER))
def test_slo_paper_composes_and_assigns_table_2(model: str) -> None:
    scfg = _paper(f"slo.table={model}")
    assert scfg.mode == "paper" and scfg.table == model
    recs = [TraceRecord(float(i), 100, 5, t, f"q{i}") for i, t in enumerate(PAPER[model])]
    untyped = [TraceRecord(10.0 + i, n, 5) for i, n in enumerate((500, 3000, 9000))]
    reqs = assign_slos(recs + untyped, scfg)
    tbt = {"text": 0.1, "image": 0.1, "search": 0.2, "file": 0.2}
    for q, r in zip(reqs, recs, strict=False):
        assert (q.slo.ttft, q.slo.tbt) == (PAPER[model][r.req_type], tbt[r.req_type])
    # untyped rows typed by the declared by_length rule: text <= 1024 < search <= 4096 < file
    assert [q.req_type for q in reqs[4:]] == ["text", "search", "file"]
    assert [q.slo.ttft for q in reqs[4:]] == [PAPER[model][t] for t in ("text", "search", "file")]


def test_slo_paper_mix_rule_and_unknown_table() -> None:
    scfg = _paper("slo.type_rule=mix")
    reqs = assign_slos([TraceRecord(float(i), 100, 5) for i in range(100)], scfg)
    # shares 0.69/0.07/0.20/0.03 normalized (they sum to 0.99), largest remainder
    assert Counter(q.req_type for q in reqs) == {"text": 70, "search": 20, "image": 7, "file": 3}
    again = assign_slos([TraceRecord(float(i), 100, 5) for i in range(100)], scfg)
    assert [q.req_type for q in reqs] == [q.req_type for q in again]  # seeded
    with pytest.raises(ValueError, match="slo.table='llama2' is not in slo.tables"):
        assign_slos([TraceRecord(0.0, 10, 1)], _paper("slo.table=llama2"))


def test_scaled_by_type_multiplies_the_isolated_ttft_of_a_declared_length() -> None:
    scfg = SLOConfig(mode="scaled_by_type", length_types={"text": 1024, "file": 8192},
                     scaled={"text": {"multiple": 3.0, "prompt_len": 1024},
                             "file": {"multiple": 4.0, "prompt_len": 8000}},
                     tbt={"text": 0.5, "file": 1.0}, scale=0.5)
    reqs = assign_slos([TraceRecord(0.0, 100, 5), TraceRecord(1.0, 5000, 5)], scfg,
                       isolated_ttft=lambda n: n / 1000)
    assert [(q.req_type, q.slo.ttft, q.slo.tbt) for q in reqs] == [
        ("text", pytest.approx(3.0 * 1.024 * 0.5), 0.25), ("file", pytest.approx(16.0), 0.5)]
    with pytest.raises(ValueError, match="needs isolated_ttft"):
        assign_slos([TraceRecord(0.0, 100, 5)], scfg)
    bad = SLOConfig(mode="scaled_by_type", scaled={"text": {"multiple": 3.0}})
    with pytest.raises(ValueError, match="slo.scaled.text needs multiple and prompt_len"):
        assign_slos([TraceRecord(0.0, 100, 5)], bad, isolated_ttft=lambda n: 1.0)


def test_class_priority_ranks_by_ttft_slo() -> None:
    from flowprefill.workload import class_priority

    reqs = assign_slos([TraceRecord(float(i), n, 5) for i, n in enumerate((9000, 100, 3000))],
                       SLOConfig(mode="by_type"))
    assert class_priority(reqs) == {"text": 0, "search": 1, "file": 2}
