"""`serve.py engine.tp=2` end to end on the CPU: the same greedy tokens as one process, and a
rank that dies fails its requests with a clear error, the server exits non-zero, nothing is
left behind (nor when rank 0 itself is killed)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from flowprefill import LLM
from tests.server_proc import ServerProcess

pytestmark = pytest.mark.slow
SETTINGS = ("model.num_layers=2", "engine.device=cpu", "engine.dtype=float32")
PROMPTS = ["Hello world, this is a test", [11, 22, 33, 44, 55, 66, 77]]


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def gone(pid: int, timeout: float = 15.0) -> bool:
    """True once `pid` no longer exists (or is a zombie: it has exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


def complete(url: str, prompt, max_tokens: int, timeout: float = 120.0) -> dict:
    return httpx.post(url + "/v1/completions", timeout=timeout, json={
        "model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
        "ignore_eos": True}).json()


def test_greedy_output_equals_one_process():
    expected = LLM(model="tiny", num_layers=2, device="cpu", dtype="float32").generate(
        PROMPTS, max_tokens=8, temperature=0.0)
    server = ServerProcess(*SETTINGS, "engine.tp=2")
    try:
        assert len(children(server.proc.pid)) == 1  # rank 1
        for prompt, exp in zip(PROMPTS, expected, strict=True):
            out = complete(server.url, prompt, 8)
            assert out["choices"][0]["text"] == exp.text
            assert out["usage"]["completion_tokens"] == 8
        stats = server.stats()
        assert stats["tp_size"] == 2
        assert stats["kv_blocks_free"] == stats["kv_blocks_total"]
    finally:
        assert server.stop() == 0  # a clean stop stops rank 1 too


def test_rank_killed_mid_prefill_fails_requests_and_exits_nonzero():
    server = ServerProcess(*SETTINGS, "engine.tp=2")
    (rank1,) = children(server.proc.pid)
    results: list[dict] = [{}, {}]
    # one request decoding, and one prompt long enough to be prefilling when rank 1 dies
    threads = [threading.Thread(target=lambda i=i, p=p, m=m: results[i].update(
        complete(server.url, p, m))) for i, (p, m) in enumerate(
            (([5, 6, 7], 10_000), (list(range(1, 12_000)), 4)))]
    threads[0].start()
    deadline = time.monotonic() + 60
    while server.stats()["decode_running"] == 0:
        assert time.monotonic() < deadline and not results[0], f"no decode: {results[0]}"
        time.sleep(0.02)
    threads[1].start()
    while server.stats()["prefill_running"] == 0:
        assert time.monotonic() < deadline, "the prefill never started"
        time.sleep(0.02)
    os.kill(rank1, signal.SIGKILL)
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive(), "a request hung after its rank died"
    for result in results:  # whichever unit was running: both fail, naming the rank
        assert "tensor-parallel rank 1" in result["error"]["message"]
        assert "SIGKILL" in result["error"]["message"]
    server.proc.wait(timeout=30)  # the server stops by itself, not a clean exit
    assert server.proc.returncode not in (0, None)
    assert "tensor-parallel rank 1" in server.logs()
    assert gone(rank1)
    server.stop()


def test_rank0_killed_takes_its_ranks_along():
    server = ServerProcess(*SETTINGS, "engine.tp=2")
    (rank1,) = children(server.proc.pid)
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(timeout=10)
    assert gone(rank1), "rank 1 outlived rank 0"
    server.stop()
