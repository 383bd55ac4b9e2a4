"""Metric definitions on hand-computed records: the paper's TBT attainment, warm-up exclusion,
mean TTFT/TBT, and `vllm bench serve`'s keys (TPOT without the first token, ITL per gap,
goodput against each request's own SLOs)."""

from __future__ import annotations

import pytest

from flowprefill.metrics import RequestRecord, flat_metrics, summarize
from flowprefill.metrics.conventions import VLLM_KEYS, tpot, vllm_metrics


def _rec(rid: str, arrival: float, first: float | None, later: list[float], *,
         ttft_slo: float = 1.0, tbt_slo: float = 0.125, finish: bool = True,
         rejected: bool = False, tokens: int | None = None) -> RequestRecord:
    end = (later[-1] if later else first) if finish else None
    return RequestRecord(rid, "c", arrival, 10, 4, ttft_slo=ttft_slo, tbt_slo=tbt_slo,
                         first_token_time=first, token_times=list(later), finish_time=end,
                         rejected=rejected, output_tokens=tokens)


def _records() -> list[RequestRecord]:
    return [
        # (times are exact in binary, so "within" is not decided by rounding)
        # TTFT 0.25; gaps 0.0625, 0.1875, 0.125 (2 of 3 within 0.125); TPOT 0.375 / 3 = 0.125
        _rec("a", 0.0, 0.25, [0.3125, 0.5, 0.625]),
        # TTFT 1.5 (misses 1.0); gaps 0.125, 0.125; TPOT 0.125
        _rec("b", 1.0, 2.5, [2.625, 2.75]),
        # one token: no gaps, no TPOT; TTFT 0.5
        _rec("c", 2.0, 2.5, []),
        # rejected: no first token
        _rec("d", 3.0, None, [], finish=False, rejected=True),
    ]


def test_tbt_attainment_is_the_fraction_of_gaps_averaged_over_requests() -> None:
    a, b, c, d = _records()
    assert a.tbt_fraction_at() == pytest.approx(2 / 3)
    assert b.tbt_fraction_at() == 1.0 and c.tbt_fraction_at() == 1.0
    assert d.tbt_fraction_at() == 0.0
    assert a.tbt_fraction_at(1.5) == 1.0  # 0.1875 <= 1.5 x 0.125
    s = summarize(_records())
    assert s["tbt_attainment"] == pytest.approx((2 / 3 + 1 + 1 + 0) / 4)
    # the old definition (mean gap within the SLO) is kept under its own name
    assert a.tbt_met and s["tpot_attainment"] == pytest.approx(3 / 4)
    assert s["by_class"]["c"]["tbt_attainment"] == pytest.approx(s["tbt_attainment"])


def test_mean_ttft_and_mean_tbt() -> None:
    s = summarize(_records())
    assert s["mean_ttft"] == pytest.approx((0.25 + 1.5 + 0.5) / 3)
    assert s["mean_tbt"] == pytest.approx((0.0625 + 0.1875 + 0.125 + 0.125 + 0.125) / 5)


def test_warmup_excludes_the_first_requests_by_arrival() -> None:
    recs = _records()
    late_first = [recs[2], recs[0], recs[3], recs[1]]  # input order is not arrival order
    s = summarize(late_first, warmup=2)  # a and b arrive first
    assert s["requests"] == 2 and s["warmup_excluded"] == 2
    assert s["ttft_attainment"] == 0.5  # c met, d rejected
    # the measured span: c's arrival to the last event of c and d (d's arrival, unserved)
    assert s["duration"] == pytest.approx(3.0 - 2.0)
    with pytest.raises(ValueError, match="metrics.warmup_requests=4 excludes all 4"):
        summarize(recs, warmup=4)
    with pytest.raises(ValueError, match="warmup_requests must be >= 0"):
        summarize(recs, warmup=-1)


def test_vllm_keys_hand_computed() -> None:
    a, b, c, _ = recs = _records()
    assert tpot(a) == pytest.approx(0.125) and tpot(b) == pytest.approx(0.125)
    assert tpot(c) is None  # one output token: no TPOT (vLLM skips it)
    m = vllm_metrics(recs, duration=4.0)
    assert set(m) == set(VLLM_KEYS)
    assert (m["completed"], m["failed"]) == (3, 1)
    assert m["request_throughput"] == pytest.approx(3 / 4)
    # a: TTFT met, TPOT 0.125 <= 0.125; b: TTFT missed; c: TTFT met, no TPOT (meets) -> 2 good
    assert m["request_goodput"] == pytest.approx(2 / 4)
    assert m["output_throughput"] == pytest.approx((4 + 3 + 1) / 4)
    assert m["mean_ttft_ms"] == pytest.approx(1000 * (0.25 + 1.5 + 0.5) / 3)
    assert m["median_ttft_ms"] == pytest.approx(500.0)
    assert m["p99_ttft_ms"] == pytest.approx(1480.0)  # 0.5 + 0.98 x (1.5 - 0.5)
    assert m["mean_tpot_ms"] == pytest.approx(125.0)  # a and b; c has no TPOT
    assert m["mean_itl_ms"] == pytest.approx(125.0)  # every gap pooled: 0.625 s / 5
    assert m["p99_itl_ms"] == pytest.approx(185.0)  # 0.125 + 0.96 x 0.0625
    assert m["mean_e2el_ms"] == pytest.approx(1000 * (0.625 + 1.75 + 0.5) / 3)


def test_server_token_count_wins_over_chunks() -> None:
    # two chunks, but the server said 5 tokens: TPOT over 4 gaps' worth of tokens
    r = _rec("x", 0.0, 0.1, [0.5], tokens=5)
    assert r.generated == 5 and tpot(r) == pytest.approx(0.4 / 4)
    assert vllm_metrics([r], 1.0)["output_throughput"] == 5.0


def test_summaries_carry_the_vllm_keys() -> None:
    s = summarize(_records())
    assert set(VLLM_KEYS) <= set(s)
    assert s["duration"] == pytest.approx(3.0)  # first arrival to the last event (d, 3.0)
    assert s["completed"] == 3 and s["failed"] == 1
    flat = flat_metrics(s)
    assert flat["vllm/mean_ttft_ms"] == pytest.approx(s["mean_ttft_ms"])
    assert flat["ttft/mean"] == pytest.approx(s["mean_ttft"])
    empty = vllm_metrics([], 0.0)
    assert empty["completed"] == 0 and empty["mean_ttft_ms"] == 0.0
