"""What vLLM's benchmark client relies on, on a real serve.py: `stream_options.include_usage`
(a last chunk with usage and no choices) and a `priority` field in the body; and the replay
client reading the server's token count from that chunk."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from flowprefill.core import SLO, Request
from flowprefill.workload.replay import ReplaySettings, replay
from tests.server_proc import ServerProcess


@pytest.fixture(scope="module")
def server():
    proc = ServerProcess("model=tiny", "model.num_layers=2")
    yield proc
    proc.stop()


def _chunks(url: str, **extra) -> list[dict]:
    body = {"model": "tiny", "prompt": [1000, 1001, 1002], "max_tokens": 4, "stream": True,
            "temperature": 0.0, "ignore_eos": True, **extra}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as resp:
        assert resp.status_code == 200
        lines = [x[6:] for x in resp.iter_lines() if x.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(x) for x in lines[:-1]]


def test_include_usage_sends_a_usage_chunk_last(server) -> None:
    chunks = _chunks(server.url, stream_options={"include_usage": True}, priority=3)
    *tokens, last = chunks
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 4
    assert last["usage"]["prompt_tokens"] == 3
    assert all(c["choices"] and "usage" not in c for c in tokens)
    assert tokens[-1]["choices"][0]["finish_reason"] == "length"


def test_without_stream_options_usage_rides_on_the_finishing_chunk(server) -> None:
    chunks = _chunks(server.url)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 4


def test_replay_records_the_servers_token_count(server) -> None:
    reqs = [Request(f"r{i}", 0.05 * i, 16, SLO(5.0, 1.0, c), max_tokens=5)
            for i, c in enumerate(("text", "file"))]
    s = ReplaySettings(url=server.url, model="tiny", priority={"text": 0, "file": 1})
    records = asyncio.run(replay(reqs, s))
    for rec in records:
        assert rec.completed and rec.output_tokens == 5 and rec.generated == 5
        assert rec.first_token_time is not None and rec.finish_time >= rec.first_token_time
