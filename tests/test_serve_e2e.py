"""End to end: a real `serve.py` process, the official `openai` client, the offline API."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from flowprefill import LLM
from tests.server_proc import ServerProcess

pytestmark = pytest.mark.slow
SMALL = ("model.num_layers=2",)
PROMPTS = ["Hello world, this is a test", "The quick brown fox", [11, 22, 33, 44, 55, 66, 77]]


@pytest.fixture(scope="module")
def server():
    s = ServerProcess(*SMALL)
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def offline():
    return LLM(model="tiny", num_layers=2)


def wait_all_free(server: ServerProcess, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = server.stats()
        if st["kv_blocks_free"] == st["kv_blocks_total"] and st["requests_in_flight"] == 0:
            return st
        if time.monotonic() > deadline:
            return st
        time.sleep(0.1)


def test_completions_greedy_equal_offline_api(client, offline):
    expected = offline.generate(PROMPTS, max_tokens=8, temperature=0.0)
    for prompt, exp in zip(PROMPTS, expected, strict=True):
        resp = client.completions.create(model="tiny", prompt=prompt, max_tokens=8,
                                         temperature=0.0)
        assert resp.choices[0].text == exp.text
        assert resp.usage.completion_tokens == len(exp.token_ids) == 8
        assert resp.choices[0].finish_reason == "length"


def test_streaming_equals_non_streaming(client):
    full = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=10,
                                     temperature=0.0)
    chunks = list(client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=10,
                                            temperature=0.0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == full.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_chat_streaming_and_not(client):
    msgs = [{"role": "user", "content": "Say something."}]
    full = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=6,
                                          temperature=0.0)
    assert full.choices[0].message.role == "assistant"
    assert full.usage.completion_tokens == 6
    chunks = list(client.chat.completions.create(model="tiny", messages=msgs, max_tokens=6,
                                                 temperature=0.0, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == full.choices[0].message.content


def test_slo_fields_via_extra_body_and_seeded_sampling(client):
    kw = dict(model="tiny", prompt="abc", max_tokens=6, temperature=0.9, seed=7,
              extra_body={"ttft_slo": 0.5, "slo_class": "urgent"})
    a = client.completions.create(**kw).choices[0].text
    b = client.completions.create(**kw).choices[0].text
    assert a == b  # same seed, same sample


def test_models_health_metrics(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    text = httpx.get(server.url + "/metrics").text
    assert "flowprefill_ttft_seconds_count" in text
    assert "flowprefill_engine_kv_blocks_free" in text


@pytest.mark.parametrize("body,param", [
    ({"model": "tiny", "prompt": "x", "temperature": -1}, "temperature"),
    ({"model": "tiny", "prompt": "x", "top_p": 0}, "top_p"),
    ({"model": "tiny", "prompt": ""}, "prompt"),
    ({"model": "tiny", "prompt": [1, 2, 10**9]}, "prompt"),
    ({"model": "tiny", "prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"model": "tiny", "prompt": "x", "slo_class": "nope"}, "slo_class"),
    ({"model": "tiny", "prompt": "x", "ttft_slo": -1}, "ttft_slo"),
    ({"prompt": "x"}, "model"),
])
def test_bad_input_is_400_naming_the_field(server, body, param):
    r = httpx.post(server.url + "/v1/completions", json=body)
    assert r.status_code == 400, r.text
    assert param in r.json()["error"]["message"]


def test_unknown_model_is_404(server):
    r = httpx.post(server.url + "/v1/completions", json={"model": "gpt-9", "prompt": "x"})
    assert r.status_code == 404


def test_disconnect_mid_decode_frees_kv(server):
    body = {"model": "tiny", "prompt": "go on", "max_tokens": 2000, "stream": True,
            "ignore_eos": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert json.loads(first[6:])["choices"][0]["text"] is not None
        assert server.stats()["decode_running"] >= 1
    st = wait_all_free(server)
    assert st["kv_blocks_free"] == st["kv_blocks_total"]
    assert st["decode_running"] == 0


def test_disconnect_mid_prefill_frees_kv(server):
    body = {"model": "tiny", "prompt": list(range(1000, 7000)), "max_tokens": 4}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(server.url + "/v1/completions", json=body, timeout=0.05)
    st = wait_all_free(server)
    assert st["kv_blocks_free"] == st["kv_blocks_total"], st
    assert st["prefill_running"] == 0 and st["prefill_suspended"] == 0, st
