"""The `deploy=pd` proxy: an `EngineClient` whose engine is a set of worker processes.

The public API (`server/app.py`) runs unchanged over it. Per request: route to a prefill
worker (least predicted queueing delay), wait for the first token and stream it, then open a
decode stream on a decode worker, which pulls the KV itself and streams the rest. An abort or
a broken connection is forwarded to whichever workers hold the request; a prefill worker's
leased KV is released whenever the request ends without the decode side having pulled it.
Owns the transfer metrics. Must not know about model internals, tensors or NIXL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

from flowprefill.core import Request, WallClock
from flowprefill.engine.api import SamplingParams, Tokenizer, TokenOutput
from flowprefill.server.pd_router import Router, Worker
from flowprefill.server.pd_wire import request_to_wire, sampling_to_wire
from flowprefill.server.prom import Counter, Histogram
from flowprefill.server.tasks import BackgroundTasks

log = logging.getLogger("flowprefill.proxy")
TRANSFER_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 10.0)


@dataclass(eq=False)
class _Flight:
    """Where one request is: the workers holding it and whether KV waits on the prefill side."""

    prefill: Worker | None = None
    decode: Worker | None = None
    leased: bool = False  # the prefill worker holds KV the decode side has not confirmed
    aborted: bool = False


class TransferMetrics:
    def __init__(self) -> None:
        self.transfers = Counter("flowprefill_kv_transfers_total", "KV pulls by outcome")
        self.bytes = Counter("flowprefill_kv_transfer_bytes_total", "KV bytes pulled")
        self.latency = Histogram("flowprefill_kv_transfer_seconds", "KV pull latency",
                                 TRANSFER_BUCKETS)

    def render(self) -> list[str]:
        return self.transfers.render() + self.bytes.render() + self.latency.render()


def _error(message: str, code: str | None = "error") -> TokenOutput:
    return TokenOutput(None, "error", message, code)


class ProxyEngine:
    def __init__(self, router: Router, tokenizer: Tokenizer, model_name: str,
                 max_model_len: int, vocab_size: int, health_interval: float = 0.5,
                 headers: dict[str, str] | None = None) -> None:
        self.headers = headers or {}  # the workers' shared secret
        self.router, self.tokenizer = router, tokenizer
        self.model_name, self.max_model_len, self.vocab_size = (model_name, max_model_len,
                                                                vocab_size)
        self.health_interval = health_interval
        self.clock = WallClock()
        self.flights: dict[str, _Flight] = {}
        self.metrics = TransferMetrics()
        self.http: httpx.AsyncClient | None = None
        self._poller: asyncio.Task | None = None
        self._tasks = BackgroundTasks()  # fire-and-forget aborts

    # ------------------------------------------------------------------ lifecycle (in the loop)
    async def start(self) -> ProxyEngine:
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None),
                                      headers=self.headers,
                                      limits=httpx.Limits(max_connections=None,
                                                          max_keepalive_connections=64))
        await self.router.poll(self.http)
        self._poller = asyncio.ensure_future(self._poll_forever())
        return self

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        await self._tasks.drain()  # aborts on their way (e.g. for requests a shutdown cancelled)
        if self.http is not None:
            await self.http.aclose()

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval)
            await self.router.poll(self.http)

    # ------------------------------------------------------------------ EngineClient
    def now(self) -> float:
        return self.clock.now()

    async def generate(self, request: Request,
                       sampling: SamplingParams) -> AsyncIterator[TokenOutput]:
        rid = request.request_id
        flight = self.flights[rid] = _Flight()
        done = False
        try:  # aclosing: an early exit closes the worker streams now, not at collection
            async with contextlib.aclosing(self._run(request, sampling, flight)) as outs:
                async for out in outs:
                    done = out.finish_reason is not None
                    yield out
                    if done:
                        return
        finally:
            self.flights.pop(rid, None)
            if flight.prefill is not None and (flight.leased or not done):
                self._tell(flight.prefill, "/internal/abort", rid)  # aborts or frees the lease
            if flight.decode is not None and not done:
                self._tell(flight.decode, "/internal/abort", rid)

    async def _run(self, request: Request, sampling: SamplingParams,
                   flight: _Flight) -> AsyncIterator[TokenOutput]:
        rid = request.request_id
        pw = flight.prefill = self.router.pick_prefill(rid, request.prompt_len)
        if pw is None:
            yield _error("no live prefill worker")
            return
        body = {"request": request_to_wire(request, self.now()),
                "sampling": sampling_to_wire(sampling)}
        try:
            r = await self.http.post(pw.url + "/internal/prefill", json=body)
            r.raise_for_status()
            hand = r.json()
        except (httpx.HTTPError, ValueError) as e:
            self.router.failed(pw, e)
            yield _error(f"prefill worker {pw.name} failed: {e!r}")
            return
        finally:
            self.router.done(pw, rid)
        if hand["finish_reason"] == "error":
            yield _error(hand.get("error") or "prefill failed", hand.get("error_code"))
            return
        if hand["first_token"] is None:
            yield TokenOutput(None, hand["finish_reason"] or "abort")
            return
        flight.leased = "kv" in hand
        yield TokenOutput(hand["first_token"], hand["finish_reason"])
        if hand["finish_reason"] is not None or flight.aborted:
            return
        async with contextlib.aclosing(self._decode(request, sampling, flight, hand)) as outs:
            async for out in outs:
                yield out

    async def _decode(self, request: Request, sampling: SamplingParams, flight: _Flight,
                      hand: dict) -> AsyncIterator[TokenOutput]:
        rid = request.request_id
        dw = flight.decode = self.router.pick_decode(rid)
        if dw is None:
            yield _error("no live decode worker")
            return
        body = {"request": request_to_wire(request, self.now()),
                "sampling": sampling_to_wire(sampling), "first_token": hand["first_token"],
                "generator_state": hand.get("generator_state"),
                "kv": {**hand["kv"], "url": flight.prefill.url}}
        try:
            async with self.http.stream("POST", dw.url + "/internal/decode", json=body) as r:
                r.raise_for_status()
                async for line in r.aiter_lines():
                    if not line:
                        continue
                    msg = json.loads(line)
                    if "kv" in msg:
                        self._transferred(msg["kv"])
                        flight.leased = False  # pulled; the decode worker released it
                        continue
                    if flight.leased:  # an error before the pull completed
                        self.metrics.transfers.inc(outcome="failed")
                    yield TokenOutput(msg["token_id"], msg["finish_reason"], msg["error"])
                    if msg["finish_reason"] is not None:
                        return
        except (httpx.HTTPError, ValueError) as e:
            self.router.failed(dw, e)
            yield _error(f"decode worker {dw.name} failed: {e!r}")
            return
        finally:
            self.router.done(dw, rid)
        yield _error(f"decode worker {dw.name} ended the stream early")

    def _transferred(self, kv: dict) -> None:
        self.metrics.transfers.inc(outcome="ok")
        self.metrics.bytes.inc(kv["bytes"])
        if kv["bytes"]:  # 0: recomputed on the decode side, nothing moved
            self.metrics.latency.observe(kv["seconds"])

    def abort(self, request_id: str) -> None:
        flight = self.flights.get(request_id)
        if flight is None or flight.aborted:
            return
        flight.aborted = True
        for w in (flight.prefill, flight.decode):
            if w is not None:
                self._tell(w, "/internal/abort", request_id)

    def _tell(self, worker: Worker, path: str, request_id: str) -> None:
        self._tasks.spawn(self._post(worker, path, request_id))

    async def _post(self, worker: Worker, path: str, request_id: str) -> None:
        try:
            await self.http.post(worker.url + path, json={"request_id": request_id},
                                 timeout=5.0)
        except httpx.HTTPError as e:  # its lease timeout (or death) frees the state anyway
            log.warning("%s %s for %s failed: %r", worker.name, path, request_id, e)

    # ------------------------------------------------------------------ observability
    def health(self) -> dict:
        return self.router.health()

    def prometheus(self) -> list[str]:
        return self.metrics.render()

    def stats(self) -> dict:
        out: dict = {"requests_in_flight": len(self.flights),
                     "workers": [{"name": w.name, "url": w.url, "alive": w.alive,
                                  "routed": w.routed} for w in self.router.workers]}
        for w in self.router.workers:
            out[f"{w.name}_alive"] = int(w.alive)
            out[f"{w.name}_routed"] = w.routed
            out[f"{w.name}_pending"] = len(w.pending)
            if w.role == "prefill":
                out[f"{w.name}_predicted_delay"] = w.predicted_delay
                out[f"{w.name}_queue"] = w.stats.get("prefill_waiting", 0)
                out[f"{w.name}_kv_leased"] = w.stats.get("kv_leased", 0)
            else:
                out[f"{w.name}_queue"] = w.stats.get("decode_running", 0)
            out[f"{w.name}_kv_blocks_free"] = w.stats.get("kv_blocks_free", 0)
        # the colocated engine's keys, summed over workers as of their last poll, so runners
        # and dashboards read either deployment the same way
        for key in _SUMMED:
            out[key] = sum(w.stats.get(key, 0) for w in self.router.workers)
        for key in ("preemption_latency_p50", "preemption_latency_p99"):
            out[key] = max((w.stats.get(key, 0.0) for w in self.router.prefill), default=0.0)
        return out


_SUMMED = ("prefill_waiting", "prefill_running", "prefill_suspended", "decode_running",
           "decode_steps", "preemptions", "scheduler_calls", "kv_blocks_total", "kv_blocks_free",
           "transfers", "transfer_bytes", "transfer_failures", "leases_expired")
