"""Maximum-goodput search on synthetic attainment curves with known answers."""

from __future__ import annotations

import pytest

from flowprefill.metrics import max_goodput


def _step(threshold: float, rps_per_scale: float = 2.0):
    calls: list[float] = []

    def run(scale: float) -> dict:
        calls.append(scale)
        att = 1.0 if scale <= threshold else 0.5
        return {"ttft_attainment": att, "offered_rps": rps_per_scale * scale,
                "goodput_rps": att * rps_per_scale * scale}  # fmt: skip

    return run, calls


@pytest.mark.parametrize("threshold", [3.7, 0.3, 1.0, 1.5])
def test_finds_the_threshold(threshold: float) -> None:
    run, calls = _step(threshold)
    out = max_goodput(run, target=0.9, iters=12)
    assert threshold / 1.021 <= out["max_rate_scale"] <= threshold
    assert out["max_goodput_rps"] == pytest.approx(2.0 * out["max_rate_scale"])
    assert len(calls) == len(set(calls)) == len(out["points"])  # no scale run twice
    assert out["best"]["ttft_attainment"] >= 0.9


def test_linear_attainment_curve() -> None:
    # attainment falls linearly from 1 at scale 0 to 0 at scale 10: 0.9 is met up to 1.0
    out = max_goodput(lambda s: {"ttft_attainment": 1 - s / 10, "offered_rps": s}, iters=20,
                      rtol=1e-4)  # fmt: skip
    assert out["max_rate_scale"] == pytest.approx(1.0, rel=1e-3)


def test_limits_and_base_rps() -> None:
    always = max_goodput(lambda s: {"ttft_attainment": 1.0}, hi=16.0, base_rps=5.5)
    assert always["max_rate_scale"] == 16.0 and always["max_goodput_rps"] == 88.0
    never = max_goodput(lambda s: {"ttft_attainment": 0.0, "offered_rps": s}, lo=0.25)
    assert never["max_rate_scale"] == 0.0 and never["max_goodput_rps"] == 0.0
    assert never["best"] is None and min(p["rate_scale"] for p in never["points"]) == 0.25


def test_non_monotone_takes_highest_passing_probe() -> None:
    # passes at <= 1 and again exactly at 4 (noise); the highest tested passing scale wins
    def run(s: float) -> dict:
        return {"ttft_attainment": 1.0 if s <= 1.0 or s == 4.0 else 0.0, "offered_rps": s}

    out = max_goodput(run, start=2.0)
    assert out["max_rate_scale"] == pytest.approx(1.0, rel=0.03)
    out = max_goodput(run, start=4.0)
    assert out["max_rate_scale"] == 4.0
