"""The replay client: sends a timed workload to a live OpenAI-compatible server and measures.

Each request is sent at its arrival offset (asyncio, streaming), with a seeded random prompt of
exactly its `prompt_len` token ids and its SLO in the body: `ttft_slo`, `tbt_slo`,
`slo_class` (read by FlowPrefill) and `priority` (read by vLLM's `--scheduling-policy
priority`; lower is served first), so every engine gets the same bytes. TTFT and every gap
between streamed chunks are measured here, at the client, on one monotonic clock whose zero
is the start of the replay; the server's token count comes from the usage chunk that
`stream_options.include_usage` asks for. Knows nothing of the engine; speaks HTTP only.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import httpx

from flowprefill.core import Request
from flowprefill.metrics import RequestRecord


@dataclass(frozen=True)
class ReplaySettings:
    url: str
    model: str
    max_output_tokens: int = 64  # caps each request's trace output length
    vocab: tuple[int, int] = (1000, 30000)  # range of random prompt token ids
    timeout: float = 600.0
    seed: int = 0
    api_key: str | None = None
    priority: Mapping[str, int] | None = None  # SLO class -> `priority`; None: not sent


def _prompt(request: Request, lo: int, hi: int, seed: int) -> list[int]:
    rng = random.Random(f"{seed}:{request.request_id}")
    return [rng.randrange(lo, hi) for _ in range(request.prompt_len)]


async def _one(client: httpx.AsyncClient, request: Request, s: ReplaySettings, t0: float,
               record: RequestRecord) -> None:
    body = {
        "model": s.model,
        "prompt": list(request.prompt_token_ids or _prompt(request, *s.vocab, s.seed)),
        "max_tokens": max(1, min(request.max_tokens, s.max_output_tokens)),
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ttft_slo": request.slo.ttft,
        "slo_class": request.slo.slo_class,
    }
    if request.slo.tbt != float("inf"):
        body["tbt_slo"] = request.slo.tbt
    if s.priority is not None:
        body["priority"] = s.priority.get(request.slo.slo_class, len(s.priority))
    try:
        async with client.stream("POST", f"{s.url}/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                await resp.aread()
                record.rejected = True
                return
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    record.rejected = True
                    return
                if chunk.get("usage"):
                    record.output_tokens = chunk["usage"].get("completion_tokens")
                if not chunk.get("choices"):  # the usage-only chunk carries no token
                    continue
                now = time.perf_counter() - t0
                if record.first_token_time is None:
                    record.first_token_time = now
                else:
                    record.token_times.append(now)
                if chunk["choices"][0].get("finish_reason") is not None:
                    record.finish_time = now
    except httpx.HTTPError:
        record.rejected = record.first_token_time is None


async def replay(requests: Sequence[Request], s: ReplaySettings,
                 progress: Callable[[], None] | None = None) -> list[RequestRecord]:
    """Send every request at its arrival time; return client-side records (times from 0)."""
    headers = {"Authorization": f"Bearer {s.api_key}"} if s.api_key else {}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    records = [RequestRecord.for_request(r) for r in requests]
    async with httpx.AsyncClient(timeout=s.timeout, limits=limits, headers=headers) as client:
        t0 = time.perf_counter()

        async def fire(r: Request, rec: RequestRecord) -> None:
            delay = r.arrival - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            rec.arrival = time.perf_counter() - t0  # the actual send time
            await _one(client, r, s, t0, rec)
            if progress is not None:
                progress()

        await asyncio.gather(*(fire(r, rec) for r, rec in zip(requests, records, strict=True)))
    return records


async def warm_up(s: ReplaySettings, n: int = 3, prompt_len: int = 64) -> None:
    """A few short requests, so first-call costs (allocation, caches) are not measured."""
    async with httpx.AsyncClient(timeout=s.timeout) as client:
        for i in range(n):
            body = {"model": s.model, "prompt": [1000 + i] * prompt_len, "max_tokens": 2,
                    "temperature": 0.0, "ignore_eos": True}
            resp = await client.post(f"{s.url}/v1/completions", json=body,
                                     headers={"Authorization": f"Bearer {s.api_key}"}
                                     if s.api_key else {})
            resp.raise_for_status()
