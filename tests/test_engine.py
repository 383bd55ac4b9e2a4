"""The colocated engine without HTTP: instrumentation, failures that must not stop it."""

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
from flowprefill.core import SLO, Request, SamplingParams
from flowprefill.engine.build import build_local_engine
from tests.cpu_fp32 import CPU_FP32


@pytest.fixture(scope="module")
def engine():
    eng = build_local_engine(ModelConfig(num_layers=1, max_position=512),
                             EngineConfig(**CPU_FP32, num_kv_blocks=64), PolicyConfig(),
                             PredictorConfig(), HardwareConfig()).start()
    yield eng
    eng.shutdown()


def request(eng, rid: str, n: int, max_tokens: int = 4) -> Request:
    return Request(rid, eng.now(), n, SLO(ttft=1.0), max_tokens, tuple(range(100, 100 + n)))


async def collect(eng, req: Request, temperature: float = 0.0) -> list:
    params = SamplingParams(max_tokens=req.max_tokens, temperature=temperature)
    return [out async for out in eng.generate(req, params)]


def test_tokens_and_instrumentation(engine):
    outs = asyncio.run(collect(engine, request(engine, "r1", 40)))
    assert [o.finish_reason for o in outs] == [None, None, None, "length"]
    rec = engine.records[-1]
    assert rec.request_id == "r1"
    assert rec.arrival <= rec.prefill_start <= rec.prefill_end <= rec.first_token_time
    assert len(rec.token_times) == 3 and rec.finish_time == rec.token_times[-1]
    assert engine.stats()["kv_blocks_free"] == 64


def test_failed_prefill_is_reported_and_engine_keeps_serving(engine):
    bad = request(engine, "too-long", 600)  # past max_position: the runner refuses it
    outs = asyncio.run(collect(engine, bad))
    assert outs[-1].finish_reason == "error" and "max_position" in outs[-1].error
    good = asyncio.run(collect(engine, request(engine, "after", 10)))
    assert good[-1].finish_reason == "length"
    assert engine.stats()["kv_blocks_free"] == 64


def test_prompt_larger_than_the_whole_pool_is_rejected(engine):
    outs = asyncio.run(collect(engine, request(engine, "huge", 1100, 2)))  # 69 > 64 blocks
    assert outs[-1].finish_reason == "error" and "the pool has 64" in outs[-1].error
    assert engine.records[-1].rejected
    outs = asyncio.run(collect(engine, request(engine, "fits", 500, 2)))
    assert outs[-1].finish_reason == "length"
    assert engine.stats()["kv_blocks_free"] == 64


def test_vanishing_temperature_is_greedy_not_a_crash(engine):
    req = request(engine, "cold", 12, 3)
    cold = asyncio.run(collect(engine, req, temperature=1e-300))
    greedy = asyncio.run(collect(engine, request(engine, "greedy", 12, 3)))
    assert [o.token_id for o in cold] == [o.token_id for o in greedy]


def test_a_failing_decode_step_fails_its_requests_and_the_engine_goes_on(engine):
    calls = {"n": 0}
    real = engine.runner.decode

    def flaky(ids, tokens):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected")
        return real(ids, tokens)

    engine.runner.decode = flaky
    try:
        outs = asyncio.run(collect(engine, request(engine, "flaky", 20)))
        assert outs[-1].finish_reason == "error" and "decode failed: injected" in outs[-1].error
        again = asyncio.run(collect(engine, request(engine, "after", 20)))  # still serving
        assert again[-1].finish_reason == "length"
    finally:
        engine.runner.decode = real
    assert engine.stats()["kv_blocks_free"] == 64 and not engine.streams
