"""The internal HTTP API of a `deploy=pd` prefill worker.

`POST /internal/prefill` schedules a request with the worker's FlowPrefill engine and answers
once its first token exists: the token, a finish reason when the request is already done,
and otherwise where its KV lies (this worker's NIXL agent, block ids, token count) for a
decode worker to pull. The blocks stay leased until `POST /internal/kv/release`, an abort, or
the lease timeout. Knows nothing of decoding or routing.
"""

from __future__ import annotations

import base64

from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse, Response

from flowprefill.engine.disagg import PREFILLED, PrefillOnlyEngine
from flowprefill.kvtransfer import KVAgent
from flowprefill.server.pd_wire import (
    PREFILL,
    request_from_wire,
    sampling_from_wire,
    worker_app,
)
from flowprefill.server.tasks import GONE, until_disconnect


def build_prefill_app(engine: PrefillOnlyEngine, agent: KVAgent) -> FastAPI:
    app = worker_app(PREFILL, engine, agent.name, engine.stats)

    @app.get("/internal/kv/meta")
    async def kv_meta() -> dict:
        return agent.metadata()

    @app.post("/internal/kv/release")
    async def release(body: dict) -> dict:
        return {"released": engine.release(body["request_id"])}

    @app.post("/internal/prefill")
    async def prefill(body: dict, raw: HTTPRequest) -> Response:
        request = request_from_wire(body["request"], engine.now())
        sampling = sampling_from_wire(body["sampling"])
        out = await until_disconnect(raw, _first_token(engine, agent, request, sampling))
        if out is GONE:  # the proxy went away: the request (or its lease) goes too
            engine.abort(request.request_id)
            return Response(status_code=499)
        return JSONResponse(out)

    return app


async def _first_token(engine: PrefillOnlyEngine, agent: KVAgent, request, sampling) -> dict:
    rid = request.request_id
    out: dict = {"request_id": rid, "first_token": None, "finish_reason": None}
    async for o in engine.generate(request, sampling):
        if o.error is not None:  # error_code "rejected": the policy refused it (a 429)
            return {**out, "finish_reason": "error", "error": o.error,
                    "error_code": getattr(o, "error_code", None)}
        if o.token_id is not None:
            out["first_token"] = o.token_id
        if o.finish_reason == PREFILLED:
            lease = engine.lease(rid)
            if lease is None:  # aborted between the handoff and here
                return {**out, "finish_reason": "abort"}
            state = engine.generator_states.pop(rid, None)
            out["kv"] = {"agent": agent.name, "blocks": list(lease.blocks),
                         "num_tokens": lease.num_tokens}
            out["generator_state"] = base64.b64encode(state).decode() if state else None
            return out
        if o.finish_reason is not None:
            return {**out, "finish_reason": o.finish_reason}
    return {**out, "finish_reason": "abort"}
