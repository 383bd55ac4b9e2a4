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


@pytest.mark.slow
def test_replay_against_a_real_server_with_serving_calibration(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from flowprefill.predictor.fitted import save_artifact
    from tests.server_proc import ROOT

    ops = {"embed": {"const": 2e-5, "tokens": 1e-7}, "attention": {"const": 1e-4, "tokens": 3e-6},
           "mlp": {"const": 5e-5, "tokens": 6e-6}, "final": {"const": 3e-3}}
    art = tmp_path / "art"
    art.mkdir()
    save_artifact(art / "predictor.json", ops, num_layers=1, model="tiny", hardware="cpu")
    out = tmp_path / "fidelity.json"
    subprocess.run(
        [sys.executable, str(ROOT / "runners" / "fidelity.py"), "model.num_layers=1",
         f"predictor.path={art}", "policies=[fcfs]", "workload.max_requests=4",
         "workload.rate_scale=10", "warmup=1", "calibrate_lengths=[32,32,300]",
         f"out={out}", f"hydra.run.dir={tmp_path}/run"],
        cwd=ROOT, env=dict(os.environ, WANDB_MODE="disabled"), check=True, timeout=300)
    res = json.loads(out.read_text())["policies"]["fcfs"]
    assert res["requests"] == 4 and res["matched"] == 4
    cal = res["calibrated"]
    assert [c["prompt_len"] for c in cal["isolated"]] == [32, 32, 300]
    assert all(c["ttft"] > 0 and c["predicted"] > 0 for c in cal["isolated"])
    ratio = sorted(c["ttft"] / c["predicted"] for c in cal["isolated"][:2])
    assert cal["factors"]["mlp/6"] == pytest.approx(sum(ratio) / 2)  # 32 tokens: bucket 6
    assert cal["matched"] == 4
    for side in ("real", "sim"):
        lines = (tmp_path / "run" / "fcfs" / side / "records.jsonl").read_text().splitlines()
        assert len(lines) == 4


def test_compare_tbt_errors_when_requests_decode(fidelity):
    def decoded(rid: str, gap: float) -> RequestRecord:
        r = _rec(rid, 0.0, 0.1)
        r.tbt_slo = 0.05
        r.token_times = [0.1 + gap * (k + 1) for k in range(4)]
        r.finish_time = r.token_times[-1]
        return r

    real = [decoded("a", 0.04), decoded("b", 0.04)]
    sim = [decoded("a", 0.05), decoded("b", 0.06)]  # +25%, +50%; b misses its TBT SLO
    res = fidelity.compare(real, sim)
    assert res["tbt_matched"] == 2
    assert 0.25 < res["tbt_rel_err_median"] < res["tbt_rel_err_p90"] <= 0.5
    assert res["tbt_signed_err_median"] > 0  # the simulation decodes slower
    assert res["tbt_attainment_real"] == 1.0 and res["tbt_attainment_sim"] < 1.0
    assert "tbt_matched" not in fidelity.compare([_rec("a", 0, 0.1)], [_rec("a", 0, 0.1)])
