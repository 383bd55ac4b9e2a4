"""Which worker gets a request under `deploy=pd`, and which workers are alive.

Prefill routing picks the live prefill worker with the least *predicted queueing delay*: the
predictor's isolated prefill time summed over the requests this proxy has sent it that have
not produced their first token yet. It is computed from the proxy's own bookkeeping, so it is
exact the moment a request is routed (a polled queue length would lag a burst by a poll
interval). Decode routing picks the live decode worker with the fewest open streams. Liveness comes
from polling each worker's stats endpoint, and from connection errors as they happen.
Torch-free; must not know about NIXL or the public API.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from flowprefill.server.pd_wire import DECODE, PREFILL


@dataclass(eq=False)
class Worker:
    role: str  # prefill | decode
    index: int
    url: str
    alive: bool = False
    stats: dict = field(default_factory=dict)  # the worker's last /internal/stats
    pending: dict[str, float] = field(default_factory=dict)  # request id -> predicted seconds
    routed: int = 0

    @property
    def name(self) -> str:
        return f"{self.role}{self.index}"

    @property
    def predicted_delay(self) -> float:
        return sum(self.pending.values())


class Router:
    def __init__(self, prefill_urls: list[str], decode_urls: list[str],
                 cost: Callable[[int], float]) -> None:
        if not prefill_urls or not decode_urls:
            raise ValueError("deploy=pd needs at least one prefill and one decode worker")
        self.prefill = [Worker(PREFILL, i, u.rstrip("/")) for i, u in enumerate(prefill_urls)]
        self.decode = [Worker(DECODE, i, u.rstrip("/")) for i, u in enumerate(decode_urls)]
        self.cost = cost  # prompt length -> predicted isolated prefill seconds

    @property
    def workers(self) -> list[Worker]:
        return self.prefill + self.decode

    def pick_prefill(self, request_id: str, prompt_len: int) -> Worker | None:
        live = [w for w in self.prefill if w.alive]
        if not live:
            return None
        w = min(live, key=lambda w: (w.predicted_delay, len(w.pending), w.index))
        w.pending[request_id] = self.cost(prompt_len)
        w.routed += 1
        return w

    def pick_decode(self, request_id: str) -> Worker | None:
        live = [w for w in self.decode if w.alive]
        if not live:
            return None
        w = min(live, key=lambda w: (len(w.pending), w.index))
        w.pending[request_id] = 1.0
        w.routed += 1
        return w

    def done(self, worker: Worker, request_id: str) -> None:
        """The request left the worker (first token out, or its decode stream ended)."""
        worker.pending.pop(request_id, None)

    def failed(self, worker: Worker, error: Exception) -> None:
        """A connection to the worker broke: stop routing to it until a poll sees it again."""
        if isinstance(error, httpx.TransportError):
            worker.alive = False

    async def poll(self, http: httpx.AsyncClient, timeout: float = 2.0) -> None:
        await asyncio.gather(*(self._poll_one(http, w, timeout) for w in self.workers))

    async def _poll_one(self, http: httpx.AsyncClient, w: Worker, timeout: float) -> None:
        try:
            r = await http.get(w.url + "/internal/stats", timeout=timeout)
            r.raise_for_status()
            w.stats = r.json()
            w.alive = True
        except (httpx.HTTPError, ValueError):
            w.alive = False

    def health(self) -> dict:
        ok = any(w.alive for w in self.prefill) and any(w.alive for w in self.decode)
        return {"status": "ok" if ok else "degraded",
                "workers": [{"name": w.name, "url": w.url, "alive": w.alive}
                            for w in self.workers]}
