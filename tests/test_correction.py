"""Online correction: converges to a known ratio, scales remaining(), and the engine feeds it
one observation per operator."""

from __future__ import annotations

import asyncio

import pytest

from flowprefill.config import (
    EngineConfig,
    HardwareConfig,
    ModelConfig,
    PolicyConfig,
    PredictorConfig,
)
from flowprefill.core import SLO, JobPlan, Request, SamplingParams
from flowprefill.engine.build import build_local_engine
from flowprefill.predictor import CorrectedPredictor, OnlineCorrection, make_predictor
from flowprefill.predictor.correction import size_bucket
from tests.cpu_fp32 import CPU_FP32
from tests.test_scheduler_helpers import UnitPredictor


def test_converges_to_a_known_ratio_per_kind_and_bucket():
    c = OnlineCorrection(alpha=0.2)
    assert c.factor("mlp", 1000) == 1.0  # nothing seen: the base prediction
    for _ in range(300):
        c.observe("mlp", 1000, measured=1.5e-3, predicted=1e-3)
        c.observe("mlp", 16, measured=0.8e-3, predicted=1e-3)
    assert c.factor("mlp", 1000) == pytest.approx(1.5, rel=0.01)
    assert c.factor("mlp", 900) == c.factor("mlp", 1000)  # same log2 bucket
    assert c.factor("mlp", 16) == pytest.approx(0.8, rel=0.01)
    assert 0.8 < c.factor("mlp", 100_000) < 1.5  # unseen bucket: the kind's overall ratio
    for _ in range(10):  # the machine gets 3x slower: every kind and size follows at once
        c.observe("mlp", 16, measured=2.4e-3, predicted=1e-3)
    assert 3.5 < c.factor("mlp", 1000) <= 4.5  # a bucket not observed since: most of the way
    c.observe("mlp", 1000, measured=1.0, predicted=1e-3)  # a wild one is clamped
    assert c.factor("mlp", 1000) < 6.0  # clamped at 10x: moved by at most alpha of that
    assert size_bucket(1024) == size_bucket(2047) != size_bucket(2048)


def test_corrected_predictor_scales_remaining_and_refreshes_memoized_costs():
    base = UnitPredictor()
    pred = CorrectedPredictor(base, OnlineCorrection(alpha=1.0))
    whole = JobPlan.unsliced((1000,), 2)
    chunked = JobPlan.unsliced((1000,), 2, chunk_size=300)
    before = (pred.remaining(whole, 0), pred.remaining(chunked, 0))
    assert before == pytest.approx((base.remaining(whole, 0), base.remaining(chunked, 0)))
    for kind in ("embed", "attention", "mlp", "final"):
        for shape in (((1000, 0),), ((300, 0),), ((100, 900),)):
            pred.observe(kind, shape, 1, 2 * getattr(base.forward(shape, 1), kind))
    assert pred.remaining(whole, 0) == pytest.approx(2 * before[0])
    assert pred.remaining(chunked, 0) == pytest.approx(2 * before[1])


def test_engine_feeds_one_observation_per_unit():
    model = ModelConfig(num_layers=1, max_position=512)
    eng = build_local_engine(model, EngineConfig(**CPU_FP32, num_kv_blocks=64, max_unit_ms=0),
                             PolicyConfig(), PredictorConfig(correction=0.3),
                             HardwareConfig()).start()
    try:
        corrected = eng.scheduler.predictor
        assert isinstance(corrected, CorrectedPredictor)
        assert eng.loop.units.observer is corrected

        async def go(rid: str, n: int) -> None:
            r = Request(rid, eng.now(), n, SLO(ttft=5.0), 1, tuple(range(100, 100 + n)))
            async for _ in eng.generate(r, SamplingParams(max_tokens=1)):
                pass

        asyncio.run(go("a", 40))
        asyncio.run(go("b", 200))
    finally:
        eng.shutdown()
    c = corrected.correction
    assert c.observations == 2 * 4  # embed, attention, mlp, final for each request
    assert set(c.snapshot()) >= {"machine", "embed/all", "attention/all", "mlp/all",
                                 "final/all"}
    assert all(r > 0 for r in c.snapshot().values())


def test_config_without_correction_is_the_plain_predictor():
    p = make_predictor(PredictorConfig(), ModelConfig(), HardwareConfig())
    assert not isinstance(p, CorrectedPredictor)
    with pytest.raises(ValueError, match="correction"):
        OnlineCorrection(alpha=0.0)


def test_calibrate_sets_per_size_factors_from_whole_forwards():
    c = OnlineCorrection()
    c.observe("mlp", 100, measured=3e-3, predicted=1e-3)  # replaced by the calibration
    version = c.version
    c.calibrate([(128, 1.5), (128, 1.7), (130, 1.6), (1024, 1.2), (2048, 1.1)])
    assert c.version > version
    for kind in ("embed", "attention", "mlp", "final"):
        assert c.factor(kind, 128) == pytest.approx(1.6)  # median of its bucket
        assert c.factor(kind, 1500) == pytest.approx(1.2)  # 1024 and 1500 share a bucket
        assert c.factor(kind, 2048) == pytest.approx(1.1)
        assert c.factor(kind, 9000) == pytest.approx(1.5)  # unmeasured: median of all
    base = UnitPredictor()
    corrected = CorrectedPredictor(base, c)
    assert corrected.isolated_ttft(128) == pytest.approx(1.6 * base.isolated_ttft(128))
    with pytest.raises(ValueError, match="at least one"):
        OnlineCorrection().calibrate([])


def test_engine_without_correction_has_no_observer():
    eng = build_local_engine(ModelConfig(num_layers=1, max_position=512),
                             EngineConfig(**CPU_FP32, num_kv_blocks=16), PolicyConfig(),
                             PredictorConfig(), HardwareConfig())
    assert eng.loop.units.observer is None
