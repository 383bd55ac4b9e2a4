"""Predictor interface, roofline sanity, and the fitted artifact loader."""

from __future__ import annotations

import json

import pytest

from flowprefill.config import HardwareConfig, ModelConfig, PredictorConfig
from flowprefill.core import ForwardPlan, Granularity, JobPlan, ops_per_forward
from flowprefill.predictor import (
    FittedPredictor,
    RooflinePredictor,
    make_predictor,
    op_kind,
    save_artifact,
)
from flowprefill.predictor.plan import MIN_SLICE_ROWS, Planner
from tests.test_scheduler_helpers import UnitPredictor

LLAMA3_8B = ModelConfig(name="llama3_8b", arch="llama", vocab_size=128256, hidden_size=4096,
                        intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8)
A800 = HardwareConfig(name="a800", peak_flops=312e12, mem_bandwidth=2.039e12, bytes_per_param=2,
                      max_efficiency=0.75, half_efficiency_tokens=128, op_overhead=2e-5)


@pytest.fixture(scope="module")
def roof():
    return RooflinePredictor(LLAMA3_8B, A800)


def test_unit_costs_prefix_and_boundaries():
    p = UnitPredictor()
    plan = JobPlan.unsliced((1000,), 2).passes[0]
    u = p.units(plan)
    assert u.num_units == plan.num_units == ops_per_forward(2) == 6
    assert [op_kind(k, 2) for k in range(6)] == ["embed", "attention", "mlp", "attention",
                                                 "mlp", "final"]
    assert [u.unit(k) for k in range(6)] == pytest.approx([0.001, 0.1, 0.1, 0.1, 0.1, 0.001])
    assert [u.prefix(k) for k in range(7)] == pytest.approx(
        [0, 0.001, 0.101, 0.201, 0.301, 0.401, 0.402])
    assert u.units_after(0, 0.05) == 2  # inside unit 1 -> the boundary after it
    assert u.units_after(0, 0.101) == 2  # exactly on a boundary
    assert u.units_after(2, 0.05) == 3
    assert u.units_after(0, 99.0) == 6
    assert u.longest == pytest.approx(0.1)


def test_sliced_units_price_each_slice_as_its_own_shape():
    p = UnitPredictor()
    f = ForwardPlan(((1000, 0),), 1, 2, attn=(0, 250, 500, 750, 1000), mlp=(0, 500, 1000))
    u = p.units(f)
    assert f.num_units == 2 + 2 * (4 + 2) and u.num_units == f.num_units
    assert u.attn == pytest.approx((0.025,) * 4) and u.mlp == pytest.approx((0.05,) * 2)
    assert u.total == pytest.approx(p.forward(((1000, 0),)).total)  # linear: slicing is free
    assert [f.unit(k) for k in (1, 4, 5, 6, 7)] == [(1, 0, 250), (1, 750, 1000), (2, 0, 500),
                                                    (2, 500, 1000), (3, 0, 250)]
    for t in (0.0005, 0.03, 0.2, 0.37):  # the first boundary at or after t
        k = u.units_after(0, t)
        assert u.prefix(k) >= t - 1e-12 and (k == 0 or u.prefix(k - 1) < t)


def test_remaining_whole_and_chunked():
    p = UnitPredictor()
    plan = JobPlan.unsliced((1000, 500), 2)
    whole = p.forward(((1000, 0), (500, 0))).total
    assert p.remaining(plan, 0) == pytest.approx(whole)
    assert p.remaining(plan, 3) == pytest.approx(whole - 0.001 - 4 * 0.15 / 2)
    chunked = JobPlan.unsliced((1000,), 2, chunk_size=300)  # chunks 300, 300, 300, 100
    assert len(chunked.passes) == 4 and chunked.passes[3].shape == ((100, 900),)
    assert p.total(chunked) == pytest.approx(4 * 0.002 + 4 * 1000 * 1e-4)
    done = chunked.starts[2] + 1  # two chunks done, and embed of the third
    assert p.remaining(chunked, done) == pytest.approx((0.002 + 0.12 - 0.001) + (0.002 + 0.04))
    assert chunked.tokens_done(done) == 600


def test_planner_slices_operators_over_the_bound():
    p = UnitPredictor()
    plans = Planner(p, Granularity.OPERATOR, 512, max_unit_s=0.03)
    f = plans.plan((1000,)).passes[0]
    assert len(f.attn) - 1 == 4 and len(f.mlp) - 1 == 4  # 0.1 s each -> 4 x 0.025 s
    assert p.units(f).longest <= 0.03
    assert Planner(p, Granularity.LAYER, 512, 0.03).plan((1000,)).passes[0].attn == (0, 1000)
    assert plans.plan((100,)).passes[0].attn == (0, 100)  # 0.01 s: within the bound
    # never below MIN_SLICE_ROWS rows per slice
    tiny = Planner(p, Granularity.OPERATOR, 512, max_unit_s=1e-6).plan((64,)).passes[0]
    assert len(tiny.attn) - 1 == 64 // MIN_SLICE_ROWS


def test_roofline_attention_slices_cover_the_causal_pairs(roof):
    """Slices of a causal attention attend to every earlier row: their sum is the whole."""
    n = 8192
    slices = [roof.op_cost("attention", ((n // 4, i * n // 4),), 1) for i in range(4)]
    assert slices == sorted(slices)  # later rows see more keys
    assert sum(slices) > roof.op_cost("attention", ((n, 0),), 1)  # + per-slice overheads


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
    whole = roof.isolated_ttft(8192)
    by_size = [roof.total(JobPlan.unsliced((8192,), 32, c)) for c in (512, 2048, 8192)]
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
    with pytest.raises(ValueError, match="predictor.kind: 'magic' is not one of roofline"):
        make_predictor(PredictorConfig(kind="magic"), ModelConfig(), HardwareConfig())
    with pytest.raises(ValueError, match="the simulator's"):
        make_predictor(PredictorConfig(kind="oracle"), ModelConfig(), HardwareConfig())
    with pytest.raises(ValueError, match="hardware=auto"):
        make_predictor(PredictorConfig(), ModelConfig(), HardwareConfig(name="auto"))
