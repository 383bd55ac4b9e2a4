"""Predictor interface, roofline sanity, and the fitted artifact loader."""

from __future__ import annotations

import json

import pytest

from flowprefill.config import HardwareConfig, ModelConfig, PredictorConfig
from flowprefill.core import Job, ops_per_forward
from flowprefill.predictor import (
    FittedPredictor,
    RooflinePredictor,
    make_predictor,
    op_kind,
    save_artifact,
)
from tests.test_scheduler_helpers import UnitPredictor, req

LLAMA3_8B = ModelConfig(name="llama3_8b", arch="llama", vocab_size=128256, hidden_size=4096,
                        intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8)
A800 = HardwareConfig(name="a800", peak_flops=312e12, mem_bandwidth=2.039e12, bytes_per_param=2,
                      max_efficiency=0.75, half_efficiency_tokens=128, op_overhead=2e-5)


@pytest.fixture(scope="module")
def roof():
    return RooflinePredictor(LLAMA3_8B, A800)


def test_forward_cost_prefix_and_boundaries():
    p = UnitPredictor()
    f = p.forward(((1000, 0),))
    assert f.num_ops == ops_per_forward(2) == 6
    assert [op_kind(k, 2) for k in range(6)] == ["embed", "attention", "mlp", "attention",
                                                 "mlp", "final"]
    assert f.op_costs() == pytest.approx([0.001, 0.1, 0.1, 0.1, 0.1, 0.001])
    assert [f.prefix(k) for k in range(7)] == pytest.approx(
        [0, 0.001, 0.101, 0.201, 0.301, 0.401, 0.402])
    assert f.ops_after(0, 0.05) == 2  # inside op 1 -> boundary after it
    assert f.ops_after(0, 0.101) == 2  # exactly on a boundary
    assert f.ops_after(2, 0.05) == 3
    assert f.ops_after(0, 99.0) == 6


def test_remaining_whole_and_chunked():
    p = UnitPredictor()
    job = Job(0, (req("a", 0, 1000, 1.0), req("b", 0, 500, 1.0)))
    whole = p.forward(((1000, 0), (500, 0))).total
    assert p.remaining(job) == pytest.approx(whole)
    job.ops_done = 3
    assert p.remaining(job) == pytest.approx(whole - 0.001 - 4 * 0.15 / 2)
    chunked = Job(1, (req("c", 0, 1000, 1.0),), chunk_size=300)  # chunks 300, 300, 300, 100
    assert p.remaining(chunked) == pytest.approx(p.request_cost(1000, 300))
    assert p.request_cost(1000, 300) == pytest.approx(4 * 0.002 + 4 * 1000 * 1e-4)
    chunked.tokens_done, chunked.ops_done = 600, 1
    assert p.remaining(chunked) == pytest.approx((0.002 + 0.12 - 0.001) + (0.002 + 0.04))


def test_roofline_monotone_in_tokens(roof):
    costs = [roof.isolated_ttft(n) for n in (1, 16, 128, 512, 1024, 4096, 8192, 16384)]
    assert costs == sorted(costs) and len(set(costs)) == len(costs)
    assert 0.05 < roof.isolated_ttft(1024) < 0.1  # ~70 ms: Llama-3-8B on an A100-class GPU


def test_roofline_attention_is_quadratic(roof):
    mlp = [roof.op_cost("mlp", ((n, 0),), 1) for n in (8192, 16384, 32768)]
    attn = [roof.op_cost("attention", ((n, 0),), 1) for n in (8192, 16384, 32768)]
    assert mlp[2] / mlp[1] == pytest.approx(2, rel=0.02)  # linear
    assert attn[2] / attn[1] > 2.5 and attn[2] / attn[1] > attn[1] / attn[0]  # superlinear
    # a chunk attending to a long prefix costs more than the same chunk alone
    assert roof.op_cost("attention", ((512, 8192),), 1) > roof.op_cost("attention", ((512, 0),), 1)


def test_roofline_chunking_costs_more_than_whole(roof):
    whole = roof.request_cost(8192)
    by_size = [roof.request_cost(8192, c) for c in (512, 2048, 8192)]
    assert by_size[2] == pytest.approx(whole)
    assert by_size[0] > by_size[1] > whole


def test_roofline_small_batches_are_memory_bound(roof):
    # one token and 16 tokens both stream all the weights once: nearly the same time
    assert roof.isolated_ttft(16) / roof.isolated_ttft(1) < 1.2
    batch = roof.forward(((100, 0),) * 4).total
    assert batch < 4 * roof.isolated_ttft(100)  # batching amortizes the weight reads


def test_fitted_artifact_roundtrip(tmp_path):
    ops = {
        "embed": {"const": 1e-4},
        "attention": {"const": 1e-4, "tokens": 1e-6, "attn_pairs": 1e-9},
        "mlp": {"tokens": 2e-6},
        "final": {"const": 5e-5, "logits": 1e-5},
    }
    path = save_artifact(tmp_path / "predictor.json", ops, num_layers=2, model="tiny",
                         hardware="cpu", meta={"heldout_mape": 0.05})
    for where in (path, tmp_path):  # a file, or the directory holding predictor.json
        p = make_predictor(PredictorConfig(kind="fitted", path=str(where)),
                           ModelConfig(num_layers=2), HardwareConfig())
        assert isinstance(p, FittedPredictor) and p.meta["heldout_mape"] == 0.05
    f = p.forward(((100, 0),))
    assert f.attention == pytest.approx(1e-4 + 100e-6 + 5050e-9)
    assert f.total == pytest.approx(1e-4 + 2 * (f.attention + 200e-6) + 6e-5)
    with pytest.raises(ValueError, match="layers"):
        FittedPredictor.load(path, num_layers=32)


def test_fitted_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_predictor.py"):
        FittedPredictor.load(tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError, match="predictor.path"):
        make_predictor(PredictorConfig(kind="fitted"), ModelConfig(), HardwareConfig())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "flowprefill-predictor", "version": 99}))
    with pytest.raises(ValueError, match="version"):
        FittedPredictor.load(bad)
    with pytest.raises(ValueError, match="unknown predictor kind"):
        make_predictor(PredictorConfig(kind="magic"), ModelConfig(), HardwareConfig())
