"""Metrics on a hand-computed example: per-request latencies, attainment, goodput,
percentiles, per-class tables, the SLO-scale curve, and the flat logging keys."""

from __future__ import annotations

import pytest

from flowprefill.metrics import RequestRecord, flat_metrics, percentile, summarize


def _records() -> list[RequestRecord]:
    a = RequestRecord(
        "a",
        "urgent",
        0.0,
        100,
        3,
        ttft_slo=1.0,
        tbt_slo=0.5,
        first_token_time=0.5,
        token_times=[1.0, 1.2],
        finish_time=1.2,
        preemptions=1,
        preemption_latencies=[0.01],
    )
    b = RequestRecord(
        "b",
        "urgent",
        1.0,
        200,
        2,
        ttft_slo=1.0,
        first_token_time=3.0,
        token_times=[3.1],
        finish_time=3.1,
        preemptions=2,
        preemption_latencies=[0.02, 0.03],
    )
    c = RequestRecord(
        "c",
        "relaxed",
        2.0,
        300,
        2,
        ttft_slo=4.0,
        tbt_slo=0.1,
        first_token_time=3.0,
        token_times=[3.5],
        finish_time=3.5,
    )
    d = RequestRecord("d", "relaxed", 3.0, 400, 2, ttft_slo=4.0, rejected=True)
    return [a, b, c, d]  # fmt: skip


def test_request_record_derived_values() -> None:
    a, b, c, d = _records()
    assert a.ttft == 0.5 and a.tbt == pytest.approx([0.5, 0.2]) and a.e2e == 1.2
    assert a.ttft_met and a.tbt_met and a.completed
    assert b.ttft == 2.0 and not b.ttft_met and b.ttft_met_at(2.0) and b.tbt_met
    assert c.ttft_met and not c.tbt_met
    assert d.ttft is None and d.tbt == [] and d.e2e is None
    assert not d.ttft_met and not d.tbt_met and not d.completed
    single = RequestRecord("s", "x", 0.0, 1, 1, 1.0, 0.1, first_token_time=0.2, finish_time=0.2)
    assert single.tbt == [] and single.tbt_met
    assert RequestRecord.from_dict(a.to_dict()) == a


def test_record_for_request() -> None:
    from flowprefill.core import SLO, Request

    req = Request("r1", 2.5, 300, SLO(0.25, 0.1, "text"), max_tokens=17, req_type="text")
    rec = RequestRecord.for_request(req)
    assert (rec.request_id, rec.slo_class, rec.arrival) == ("r1", "text", 2.5)
    assert (rec.prompt_len, rec.output_len, rec.ttft_slo, rec.tbt_slo) == (300, 17, 0.25, 0.1)
    assert rec.first_token_time is None and rec.token_times == [] and not rec.rejected


def test_summary_hand_computed() -> None:
    s = summarize(_records())
    assert (s["requests"], s["completed"], s["rejected"]) == (4, 3, 1)
    assert s["ttft_attainment"] == 0.5 and s["tbt_attainment"] == 0.5
    assert s["duration"] == pytest.approx(3.5)
    assert s["goodput_rps"] == pytest.approx(2 / 3.5)
    assert s["throughput_rps"] == pytest.approx(3 / 3.5)
    assert s["output_tokens_per_s"] == pytest.approx(7 / 3.5)
    assert s["offered_rps"] == pytest.approx(1.0)
    # TTFTs of served requests: 0.5, 2.0, 1.0 (linear interpolation)
    assert (s["ttft_p50"], s["ttft_p90"], s["ttft_p99"]) == pytest.approx((1.0, 1.8, 1.98))
    # every inter-token gap pooled: 0.5, 0.2, 0.1, 0.5
    assert s["tbt_p50"] == pytest.approx(0.35) and s["tbt_p99"] == pytest.approx(0.5)
    assert s["e2e_p50"] == pytest.approx(1.5)
    assert s["preemptions"] == 3
    assert s["preemption_latency_p50"] == pytest.approx(0.02)
    assert s["preemption_latency_p99"] == pytest.approx(0.0298)
    assert summarize(_records(), duration=7.0)["goodput_rps"] == pytest.approx(2 / 7)


def test_summary_by_class() -> None:
    by = summarize(_records())["by_class"]
    assert list(by) == ["relaxed", "urgent"]
    assert by["urgent"] == pytest.approx(
        {"requests": 2, "ttft_attainment": 0.5, "tbt_attainment": 1.0,
         "ttft_p50": 1.25, "ttft_p99": 1.985}
    )  # fmt: skip
    assert by["relaxed"] == pytest.approx(
        {"requests": 2, "ttft_attainment": 0.5, "tbt_attainment": 0.0,
         "ttft_p50": 1.0, "ttft_p99": 1.0}
    )  # fmt: skip


def test_attainment_vs_slo_scale() -> None:
    curve = summarize(_records())["attainment_vs_slo_scale"]
    assert list(curve) == ["0.4", "0.6", "0.8", "1.0", "1.2", "1.4", "1.6", "1.8", "2.0"]
    # TTFT/SLO ratios: a 0.5, b 2.0, c 0.25, d never
    assert curve["0.4"] == 0.25 and curve["0.6"] == 0.5 and curve["1.8"] == 0.5
    assert curve["2.0"] == 0.75
    assert curve["1.0"] == summarize(_records())["ttft_attainment"]


def test_empty_and_percentile() -> None:
    s = summarize([])
    assert s["requests"] == 0 and s["ttft_attainment"] == 0.0 and s["ttft_p99"] is None
    assert percentile([], 50) is None and percentile([1.0, 3.0], 50) == 2.0


def test_flat_metrics_keys() -> None:
    flat = flat_metrics({**summarize(_records()), "policy": "fcfs", "max_goodput_rps": 3.0})
    assert flat["slo/attainment"] == 0.5
    assert flat["goodput/rps"] == pytest.approx(2 / 3.5)
    assert flat["ttft/p99"] == pytest.approx(1.98) and flat["e2e/p50"] == pytest.approx(1.5)
    assert flat["tbt/p50"] == pytest.approx(0.35)
    assert flat["preempt/count"] == 3 and flat["requests/total"] == 4
    assert flat["class/urgent/ttft_attainment"] == 0.5 and flat["slo_scale/2.0"] == 0.75
    assert flat["goodput/max_rps"] == 3.0
    assert "policy" not in flat and all(isinstance(v, int | float) for v in flat.values())
