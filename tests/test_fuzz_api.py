"""Property-based fuzzing of the public API on a real server: a thousand generated bodies,
valid and not. Never a 5xx, the server keeps serving, and the KV pool ends fully free."""

from __future__ import annotations

import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.server_proc import ServerProcess

pytestmark = pytest.mark.slow
EXAMPLES = 1000

anything = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                     st.floats(allow_nan=False, allow_infinity=False),
                     st.text(max_size=20), st.lists(st.integers(), max_size=3))
# Valid values of each field, and the requests built from them.
valid = {
    "model": st.just("tiny"),
    "prompt": st.one_of(st.text(min_size=1, max_size=200),
                        st.lists(st.integers(0, 151_935), min_size=1, max_size=64)),
    "messages": st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant"]),
         "content": st.text(max_size=50)}), min_size=1, max_size=3),
    "max_tokens": st.integers(1, 4),
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0.01, 1),
    "stream": st.booleans(),
    "stop": st.one_of(st.text(min_size=1, max_size=3),
                      st.lists(st.text(min_size=1, max_size=3), max_size=3)),
    "seed": st.integers(0, 2**31),
    "ttft_slo": st.floats(0.01, 5),
    "slo_class": st.sampled_from(["urgent", "relaxed", "default"]),
}
OPTIONAL = ("temperature", "top_p", "stream", "stop", "seed", "ttft_slo", "slo_class")


def request(chat: bool) -> st.SearchStrategy[dict]:
    required = ("model", "messages" if chat else "prompt", "max_tokens")
    return st.fixed_dictionaries({k: valid[k] for k in required},
                                 optional={k: valid[k] for k in OPTIONAL})


@st.composite
def broken(draw, chat: bool) -> dict:
    """A valid request with one to three fields replaced by junk or removed."""
    body = draw(request(chat))
    for key in draw(st.lists(st.sampled_from(sorted(valid)), min_size=1, max_size=3)):
        if draw(st.booleans()) and key in body and key != "max_tokens":
            del body[key]
        else:
            junk = st.one_of(anything, st.integers(-3, 0), st.just(10**9))
            if key == "max_tokens":  # a valid but large value would just be slow, not bad
                junk = junk.filter(lambda v: not isinstance(v, int) or v <= 4 or v > 10**6)
            body[key] = draw(junk)
    return body


cases = st.booleans().flatmap(
    lambda chat: st.tuples(st.just(chat), st.one_of(request(chat), broken(chat))))


@pytest.fixture(scope="module")
def server():
    s = ServerProcess("model.num_layers=1", "server.chat_max_tokens=4")
    yield s
    s.stop()


def test_fuzzed_requests_never_5xx_and_free_everything(server):
    client = httpx.Client(base_url=server.url, timeout=15)
    seen: dict[int, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def one(case: tuple[bool, dict]) -> None:
        chat, body = case
        path = "/v1/chat/completions" if chat else "/v1/completions"
        r = client.post(path, json=body)
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        assert r.status_code < 500, (path, body, r.text)
        if r.status_code != 200:
            assert "message" in r.json()["error"]

    one()
    assert sum(seen.values()) == EXAMPLES
    assert seen.get(200, 0) > 0 and sum(v for k, v in seen.items() if k >= 400) > 0
    deadline = time.monotonic() + 30
    while True:
        stats = client.get("/internal/stats").json()
        if stats["kv_blocks_free"] == stats["kv_blocks_total"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert stats["kv_blocks_free"] == stats["kv_blocks_total"]
    assert stats["requests_in_flight"] == 0
    print("fuzz status counts:", dict(sorted(seen.items())))
