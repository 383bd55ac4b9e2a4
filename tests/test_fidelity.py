"""runners/fidelity.py's comparison of real and simulated records, on synthetic records."""

from __future__ import annotations

import pytest

from flowprefill.metrics import RequestRecord
from tests.test_profile import load_runner


def _rec(rid: str, arrival: float, ttft: float | None, slo: float = 1.0) -> RequestRecord:
    r = RequestRecord(rid, "default", arrival, 100, 1, slo)
    if ttft is not None:
        r.first_token_time = arrival + ttft
        r.finish_time = r.first_token_time
    return r


@pytest.fixture(scope="module")
def fidelity():
    return load_runner("fidelity")


def test_compare_ttft_errors_and_attainment(fidelity):
    real = [_rec(f"r{i}", i, 0.1 * (i + 1)) for i in range(10)]  # TTFTs 0.1 .. 1.0, SLO 1.0
    sim = [_rec(f"r{i}", i, 0.1 * (i + 1) * (1.1 if i % 2 else 0.8)) for i in range(10)]
    sim.append(_rec("extra", 0.0, 0.1))  # only in the simulation: not matched
    res = fidelity.compare(real, sim)
    assert res["matched"] == 10
    assert res["ttft_rel_err_median"] == pytest.approx(0.15, abs=0.051)  # 0.1s and 0.2s
    assert res["ttft_rel_err_p90"] == pytest.approx(0.2)
    assert res["attainment_real"] == 1.0
    # sim: request 9 (1.0 s x 1.1) misses; 10 of 11 met
    assert res["attainment_sim"] == pytest.approx(10 / 11)
    assert res["attainment_diff_points"] == pytest.approx(100 * (10 / 11 - 1.0))
    assert res["goodput_real_rps"] > 0 and res["goodput_rel_diff"] is not None


def test_compare_skips_unserved(fidelity):
    real = [_rec("a", 0.0, 0.2), _rec("b", 0.0, None)]
    sim = [_rec("a", 0.0, 0.3), _rec("b", 0.0, 0.5)]
    res = fidelity.compare(real, sim)
    assert res["matched"] == 1 and res["ttft_signed_err_median"] == pytest.approx(0.5)
    assert res["attainment_real"] == 0.5 and res["attainment_sim"] == 1.0


def test_policy_configs_load(fidelity):
    assert fidelity.policy_config("fcfs").granularity == "none"
    assert fidelity.policy_config("flowprefill").order == "sedf"
