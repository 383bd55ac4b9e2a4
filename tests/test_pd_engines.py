"""The `deploy=pd` engines in-process: prefill-only handoff and lease, decode-only recompute."""

from __future__ import annotations

import asyncio

import pytest

from flowprefill import LLM
from flowprefill.config import (
    EngineConfig,
    HardwareConfig,
    ModelConfig,
    PolicyConfig,
    PredictorConfig,
)
from flowprefill.core import SLO, Request
from flowprefill.engine.api import SamplingParams
from flowprefill.engine.build import build_local_engine
from flowprefill.engine.disagg import PREFILLED, DecodeOnlyEngine, PrefillOnlyEngine
from tests.cpu_fp32 import CPU_FP32

MODEL = ModelConfig(num_layers=2)
ENGINE = EngineConfig(**CPU_FP32, num_kv_blocks=64)
PROMPT = tuple(range(300, 340))
GREEDY = SamplingParams(max_tokens=6, temperature=0.0)


def build(cls, **kw):
    return build_local_engine(MODEL, ENGINE, PolicyConfig(), PredictorConfig(),
                              HardwareConfig(), engine_cls=cls, **kw).start()


def request(rid: str) -> Request:
    return Request(rid, 0.0, len(PROMPT), SLO(10.0), max_tokens=6, prompt_token_ids=PROMPT)


@pytest.fixture(scope="module")
def expected() -> list[int]:
    return LLM(model="tiny", num_layers=2).generate([list(PROMPT)], max_tokens=6)[0].token_ids


def test_prefill_only_parks_kv_until_released(expected):
    eng = build(PrefillOnlyEngine, lease_timeout=60.0)

    async def go() -> list:
        return [o async for o in eng.generate(request("p1"), GREEDY)]

    try:
        outs = asyncio.run(go())
        assert [o.token_id for o in outs] == [expected[0], None]
        assert outs[-1].finish_reason == PREFILLED
        lease = eng.lease("p1")
        assert lease.num_tokens == len(PROMPT) and len(lease.blocks) == 3
        assert eng.runner.blocks.num_free == 64 - 3
        assert eng.release("p1") and not eng.release("p1")
        assert eng.runner.blocks.num_free == 64
    finally:
        eng.shutdown()


def test_decode_only_recompute_continues_like_colocated(expected):
    eng = build(DecodeOnlyEngine)

    async def go() -> list[int]:
        r = request("d1")
        eng.reserve("d1", r.prompt_len)  # the pull failed: prefill it here again
        stream = eng.resume(r, GREEDY, expected[0], recompute=True)
        return [o.token_id async for o in eng.outputs(stream)]

    try:
        assert [expected[0], *asyncio.run(go())] == expected
        assert eng.runner.blocks.num_free == 64 and not eng.streams
    finally:
        eng.shutdown()


def test_worker_group_rejects_bad_restart_settings():
    from flowprefill.server.pd_launch import WorkerGroup

    with pytest.raises(ValueError, match="deploy.max_restarts"):
        WorkerGroup({}, 8, max_restarts=-1)
    with pytest.raises(ValueError, match="deploy.restart_delay"):
        WorkerGroup({}, 8, max_restarts=1, restart_delay=-0.5)
