"""The internal wire format of `deploy=pd`: what the proxy and the workers send each other.

Requests travel with their arrival expressed as `age` (seconds since the proxy stamped it),
so each worker re-stamps it on its own clock: deadlines stay right across processes and
machines without synchronized clocks. Torch-free; must not know about engines or NIXL.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable

from fastapi import FastAPI

from flowprefill.core import SLO, Request
from flowprefill.engine.api import SamplingParams

PREFILL = "prefill"
DECODE = "decode"


def _num(x: float) -> float | str:
    return "inf" if math.isinf(x) else x  # JSON has no infinity


def request_to_wire(r: Request, now: float) -> dict:
    return {"request_id": r.request_id, "age": max(0.0, now - r.arrival),
            "prompt_token_ids": list(r.prompt_token_ids or ()), "max_tokens": r.max_tokens,
            "ttft": _num(r.slo.ttft), "tbt": _num(r.slo.tbt), "slo_class": r.slo.slo_class}


def request_from_wire(d: dict, now: float) -> Request:
    ids = tuple(d["prompt_token_ids"])
    return Request(request_id=d["request_id"], arrival=now - float(d["age"]),
                   prompt_len=len(ids), prompt_token_ids=ids, max_tokens=d["max_tokens"],
                   slo=SLO(float(d["ttft"]), float(d["tbt"]), d["slo_class"]))


def sampling_to_wire(s: SamplingParams) -> dict:
    return dataclasses.asdict(s)


def sampling_from_wire(d: dict) -> SamplingParams:
    return SamplingParams(**d)


def worker_app(role: str, engine, agent_name: str, stats: Callable[[], dict]) -> FastAPI:
    """The endpoints every PD worker has: /health, /internal/info, /internal/stats and
    /internal/abort; each role adds its own."""
    app = FastAPI(title=f"FlowPrefill {role} worker")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "role": role, "agent": agent_name}

    @app.get("/internal/info")
    async def info() -> dict:
        return {"role": role, "pid": os.getpid(), "model": engine.model_name,
                "max_model_len": engine.max_model_len, "vocab_size": engine.vocab_size,
                "hardware": engine.hardware}

    @app.get("/internal/stats")
    async def stats_() -> dict:
        return stats()

    @app.post("/internal/abort")
    async def abort(body: dict) -> dict:
        engine.abort(body["request_id"])
        return {"ok": True}

    return app
