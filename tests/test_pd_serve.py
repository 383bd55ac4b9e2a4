"""`serve.py deploy=pd` end to end: real proxy, two prefill and one decode worker processes,
real NIXL. Idle prefill workers tie on predicted delay and the lower index wins, so serial
requests all go to prefill0. Module order matters: the last tests kill workers (the launcher
restarts them after deploy.restart_delay, long enough for the tests to see them dead first).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import openai
import pytest

from flowprefill import LLM
from tests.server_proc import ServerProcess

pytestmark = pytest.mark.slow
SMALL = ("model.num_layers=2",)
SECRET = "internal-test-secret"  # without one, role=all makes a fresh secret per launch
AUTH = {"Authorization": f"Bearer {SECRET}"}
PD = ("deploy=pd", "deploy.prefill_workers=2", "deploy.lease_timeout=3",
      "deploy.health_interval=0.2", f"deploy.secret={SECRET}", "deploy.restart_delay=4")
PROMPTS = ["Hello world, this is a test", "The quick brown fox", [11, 22, 33, 44, 55, 66, 77],
           list(range(2000, 2300))]
CHAT = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def pd():
    s = ServerProcess(*SMALL, *PD)
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def colocated():
    s = ServerProcess(*SMALL)
    yield s
    assert s.stop() == 0


def workers(server: ServerProcess) -> dict[str, str]:
    return {w["name"]: w["url"] for w in server.stats()["workers"]}


def wstats(url: str) -> dict:
    return httpx.get(url + "/internal/stats", timeout=5, headers=AUTH).json()


def wait_free(url: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = wstats(url)
        idle = st["kv_blocks_free"] == st["kv_blocks_total"] and st["requests_in_flight"] == 0
        if (idle and st.get("kv_leased", 0) == 0) or time.monotonic() > deadline:
            return st
        time.sleep(0.05)


def pid_of(url: str) -> int:
    return httpx.get(url + "/internal/info", headers=AUTH, timeout=5).json()["pid"]


def routed(server: ServerProcess) -> dict[str, int]:
    return {w["name"]: w["routed"] for w in server.stats()["workers"]}


def wait_alive(server: ServerProcess, name: str, alive: bool, timeout: float) -> None:
    """Until the proxy's health report shows worker `name` alive (or dead)."""
    deadline = time.monotonic() + timeout
    while True:
        health = httpx.get(server.url + "/health", timeout=5).json()
        state = {x["name"]: x["alive"] for x in health["workers"]}
        if state[name] == alive:
            return
        assert time.monotonic() < deadline, (name, alive, health, server.logs())
        time.sleep(0.1)


def outputs(url: str) -> list:
    c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    out = []
    for p in PROMPTS:
        kw = dict(model="tiny", prompt=p, max_tokens=8, temperature=0.0)
        out.append(c.completions.create(**kw).choices[0].text)
        out.append("".join(x.choices[0].text for x in c.completions.create(**kw, stream=True)))
    kw = dict(model="tiny", messages=CHAT, max_tokens=6, temperature=0.0)
    out.append(c.chat.completions.create(**kw).choices[0].message.content)
    chunks = c.chat.completions.create(**kw, stream=True)
    out.append("".join(x.choices[0].delta.content or "" for x in chunks))
    seeded = dict(model="tiny", prompt="abc", max_tokens=6, temperature=0.9, seed=7)
    out.append(c.completions.create(**seeded).choices[0].text)
    return out


def test_greedy_outputs_identical_to_colocated_and_offline(pd, colocated):
    got = outputs(pd.url)
    assert got == outputs(colocated.url)
    offline = LLM(model="tiny", num_layers=2).generate(PROMPTS, max_tokens=8, temperature=0.0)
    assert got[0:2 * len(PROMPTS):2] == [o.text for o in offline]


def test_prefill_blocks_return_after_every_transfer(pd):
    w = workers(pd)
    before = wstats(w["prefill0"])
    c = openai.OpenAI(base_url=pd.url + "/v1", api_key="unused", max_retries=0)
    for n in (5, 40, 300):
        c.completions.create(model="tiny", prompt=list(range(100, 100 + n)), max_tokens=3)
        st = wait_free(w["prefill0"])
        assert st["kv_blocks_free"] == st["kv_blocks_total"] and st["kv_leased"] == 0
    after = wstats(w["prefill0"])
    assert after["leases_released"] - before["leases_released"] == 3
    assert after["leases_expired"] == before["leases_expired"]  # freed by the pull, not a timeout
    dec = wait_free(w["decode0"])
    assert dec["kv_blocks_free"] == dec["kv_blocks_total"] and dec["transfers"] >= 3
    text = httpx.get(pd.url + "/metrics").text
    assert 'flowprefill_kv_transfers_total{outcome="ok"}' in text
    assert "flowprefill_kv_transfer_seconds_count" in text
    assert "flowprefill_engine_prefill0_queue" in text


def test_client_disconnect_after_first_token_frees_both_sides(pd):
    w = workers(pd)
    expired = wstats(w["prefill0"])["leases_expired"]
    body = {"model": "tiny", "prompt": list(range(500, 1500)), "max_tokens": 2000,
            "stream": True, "ignore_eos": True}
    for _ in range(3):
        with httpx.stream("POST", pd.url + "/v1/completions", json=body, timeout=30) as r:
            first = next(x for x in r.iter_lines() if x.startswith("data: "))
            assert json.loads(first[6:])["choices"][0]["text"] is not None
    for name in ("prefill0", "decode0"):
        st = wait_free(w[name])
        assert st["kv_blocks_free"] == st["kv_blocks_total"], (name, st)
    assert wstats(w["prefill0"])["leases_expired"] == expired
    assert pd.stats()["requests_in_flight"] == 0


def test_worker_apis_need_the_shared_secret(pd):
    for name, url in workers(pd).items():
        assert httpx.get(url + "/health").status_code == 200, name
        assert httpx.get(url + "/internal/stats").status_code == 401, name
        assert httpx.post(url + "/internal/abort", json={"request_id": "x"}).status_code == 401
        assert httpx.get(url + "/internal/stats", headers=AUTH).status_code == 200, name


def test_unpulled_kv_is_freed_by_the_lease_timeout(pd):
    url = workers(pd)["prefill0"]
    req = {"request_id": "direct-1", "age": 0.0, "prompt_token_ids": list(range(64)),
           "max_tokens": 4, "ttft": 10.0, "tbt": "inf", "slo_class": "default"}
    sampling = {"max_tokens": 4, "temperature": 0.0, "top_p": 1.0, "seed": None,
                "ignore_eos": False}
    hand = httpx.post(url + "/internal/prefill", json={"request": req, "sampling": sampling},
                      headers=AUTH,
                      timeout=30).json()
    assert len(hand["kv"]["blocks"]) == 4 and hand["kv"]["num_tokens"] == 64
    st = wstats(url)
    assert st["kv_leased"] == 1 and st["kv_blocks_free"] == st["kv_blocks_total"] - 4
    st = wait_free(url, timeout=8.0)  # deploy.lease_timeout=3
    assert st["kv_blocks_free"] == st["kv_blocks_total"] and st["leases_expired"] >= 1


def test_two_prefill_workers_route_by_predicted_delay(pd):
    def routed() -> tuple[int, int]:
        r = {w["name"]: w["routed"] for w in pd.stats()["workers"]}
        return r["prefill0"], r["prefill1"]

    before = routed()
    long = {"model": "tiny", "prompt": list(range(1000, 5000)), "max_tokens": 1}
    short = {"model": "tiny", "prompt": "hi there", "max_tokens": 2}
    with httpx.Client(timeout=60) as c:
        t = threading.Thread(target=c.post, args=(pd.url + "/v1/completions",),
                             kwargs={"json": long})
        t.start()
        deadline = time.monotonic() + 10
        while pd.stats()["prefill0_pending"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        for _ in range(3):  # round-robin would send the second of these behind the long one
            assert c.post(pd.url + "/v1/completions", json=short).status_code == 200
        t.join()
    after = routed()
    assert (after[0] - before[0], after[1] - before[1]) == (1, 3), (before, after)


def test_failed_transfer_fails_the_request_and_frees_both_sides(pd):
    w = workers(pd)
    req = {"request_id": "direct-2", "age": 0.0, "prompt_token_ids": list(range(40)),
           "max_tokens": 4, "ttft": 10.0, "tbt": "inf", "slo_class": "default"}
    sampling = {"max_tokens": 4, "temperature": 0.0, "top_p": 1.0, "seed": None,
                "ignore_eos": False}
    hand = httpx.post(w["prefill0"] + "/internal/prefill", timeout=30, headers=AUTH,
                      json={"request": req, "sampling": sampling}).json()
    failures = wstats(w["decode0"])["transfer_failures"]
    body = {"request": req, "sampling": sampling, "first_token": hand["first_token"],
            "kv": {**hand["kv"], "agent": "not-that-agent", "url": w["prefill0"]}}
    lines = httpx.post(w["decode0"] + "/internal/decode", json=body, timeout=30,
                       headers=AUTH).text.splitlines()
    err = json.loads(lines[-1])
    assert err["finish_reason"] == "error" and "KV transfer" in err["error"]
    dec = wait_free(w["decode0"])
    assert dec["kv_blocks_free"] == dec["kv_blocks_total"]
    assert dec["transfer_failures"] == failures + 1
    pre = wait_free(w["prefill0"], timeout=2.0)  # released at once, not by the lease timeout
    assert pre["kv_blocks_free"] == pre["kv_blocks_total"] and pre["kv_leased"] == 0


def test_killed_prefill_worker_is_routed_around_then_restarted_and_used_again(pd):
    w = workers(pd)
    pid = pid_of(w["prefill0"])
    long = {"model": "tiny", "prompt": list(range(100, 16100)), "max_tokens": 4}
    result: dict = {}

    def go() -> None:
        result["r"] = httpx.post(pd.url + "/v1/completions", json=long, timeout=60)
    t = threading.Thread(target=go)
    t.start()
    deadline = time.monotonic() + 20
    while wstats(w["prefill0"])["prefill_running"] == 0:  # in prefill0's engine now
        assert time.monotonic() < deadline and t.is_alive()
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    t.join()
    r = result["r"]
    assert r.status_code == 500 and "prefill worker prefill0" in r.json()["error"]["message"]
    wait_alive(pd, "prefill0", False, timeout=5)
    before = routed(pd)
    short = {"model": "tiny", "prompt": "still here?", "max_tokens": 3}
    ok = httpx.post(pd.url + "/v1/completions", json=short, timeout=30)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 3
    after = routed(pd)
    assert (after["prefill0"] - before["prefill0"], after["prefill1"] - before["prefill1"]) == (
        0, 1)
    # the launcher restarts prefill0 on its port; the proxy's health poll routes to it again,
    # and the decode worker pulls KV from the new process's NIXL agent
    wait_alive(pd, "prefill0", True, timeout=120)
    assert pid_of(w["prefill0"]) != pid
    again = httpx.post(pd.url + "/v1/completions", json=short, timeout=30)
    assert again.status_code == 200 and again.json()["usage"]["completion_tokens"] == 3
    assert routed(pd)["prefill0"] == after["prefill0"] + 1  # idle tie: the lower index
    for name in ("prefill0", "prefill1", "decode0"):
        st = wait_free(w[name])
        assert st["kv_blocks_free"] == st["kv_blocks_total"] and st.get("kv_leased", 0) == 0, name


def test_killed_decode_worker_fails_the_request_and_the_rest_keeps_serving(pd):
    w = workers(pd)
    pid = httpx.get(w["decode0"] + "/internal/info", headers=AUTH).json()["pid"]
    body = {"model": "tiny", "prompt": "go on", "max_tokens": 5000, "stream": True,
            "ignore_eos": True}
    events = []
    with httpx.stream("POST", pd.url + "/v1/completions", json=body, timeout=30) as r:
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            events.append(line[6:])
            if len(events) == 3:
                os.kill(pid, signal.SIGKILL)
    assert events[-1] == "[DONE]"
    err = json.loads(events[-2])
    assert "error" in err and "decode worker" in err["error"]["message"]
    deadline = time.monotonic() + 5
    while httpx.get(pd.url + "/health").json()["status"] == "ok" and time.monotonic() < deadline:
        time.sleep(0.1)
    health = httpx.get(pd.url + "/health").json()
    alive = {x["name"]: x["alive"] for x in health["workers"]}
    assert alive == {"prefill0": True, "prefill1": True, "decode0": False}
    st = wait_free(w["prefill0"])
    assert st["kv_blocks_free"] == st["kv_blocks_total"]
    # prefill-only requests are still served; ones that need decoding fail cleanly
    one = httpx.post(pd.url + "/v1/completions", timeout=30,
                     json={"model": "tiny", "prompt": "abc", "max_tokens": 1})
    assert one.status_code == 200 and one.json()["usage"]["completion_tokens"] == 1
    more = httpx.post(pd.url + "/v1/completions", timeout=30,
                      json={"model": "tiny", "prompt": "abc", "max_tokens": 4})
    assert more.status_code == 500 and "no live decode worker" in more.json()["error"]["message"]
    assert wait_free(w["prefill0"])["kv_leased"] == 0
    wait_alive(pd, "decode0", True, timeout=120)  # restarted by the launcher, picked up again
    assert pid_of(w["decode0"]) != pid
    back = httpx.post(pd.url + "/v1/completions", timeout=30,
                      json={"model": "tiny", "prompt": "abc", "max_tokens": 4,
                            "ignore_eos": True})
    assert back.status_code == 200 and back.json()["usage"]["completion_tokens"] == 4
    assert httpx.get(pd.url + "/health").json()["status"] == "ok"


def test_sigterm_drains_in_flight_requests_then_stops_every_worker():
    s = ServerProcess(*SMALL, "deploy=pd", f"deploy.secret={SECRET}", "server.grace_period=30")
    pids = {name: pid_of(url) for name, url in workers(s).items()}
    result: dict = {}

    def go() -> None:
        result["r"] = httpx.post(s.url + "/v1/completions", timeout=90, json={
            "model": "tiny", "prompt": "tell me", "max_tokens": 200, "ignore_eos": True})
    t = threading.Thread(target=go)
    t.start()
    deadline = time.monotonic() + 30
    while wstats(workers(s)["decode0"])["decode_running"] == 0:
        assert time.monotonic() < deadline and t.is_alive(), s.logs()
        time.sleep(0.02)
    s.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10  # stops accepting while it drains
    while True:
        try:
            httpx.get(s.url + "/health", timeout=1)
        except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
            break  # refused, or reset as the listener closed under it
        assert time.monotonic() < deadline, s.logs()
        time.sleep(0.05)
    t.join()
    assert s.proc.wait(timeout=60) == 0, s.logs()
    s.stop()
    r = result["r"]
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 200
    for name, pid in pids.items():  # reaped by the launcher before it exited: no orphans
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
            pytest.fail(f"{name} (pid {pid}) outlived the server")
