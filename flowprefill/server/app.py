"""The OpenAI-compatible HTTP API over an `EngineClient`.

Owns validation, tokenization of prompts, SLO defaults, arrival stamping, streaming (SSE),
client-disconnect handling and server-side metrics. Knows nothing of model internals: it sees
the engine only through `flowprefill.engine.api.EngineClient`.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from flowprefill.config import ServerConfig
from flowprefill.core import SLO, Request
from flowprefill.engine.api import EngineClient, SamplingParams
from flowprefill.server import protocol as P
from flowprefill.server.guards import Admission, Guards, resolve_api_key
from flowprefill.server.outputs import TextStream
from flowprefill.server.prom import Counter, Histogram, render_gauges
from flowprefill.server.tasks import GONE, until_disconnect


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 kind: str = "invalid_request_error", headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind
        self.headers = headers


class ServerMetrics:
    def __init__(self) -> None:
        self.requests = Counter("flowprefill_requests_total", "HTTP generation requests by outcome")
        self.ttft = Histogram("flowprefill_ttft_seconds", "time to first token at the server")
        self.tbt = Histogram("flowprefill_tbt_seconds", "time between tokens at the server")
        self.e2e = Histogram("flowprefill_e2e_seconds", "request latency at the server")

    def render(self, engine_stats: dict) -> str:
        lines = []
        for m in (self.requests, self.ttft, self.tbt, self.e2e):
            lines += m.render()
        lines += render_gauges("flowprefill_engine", engine_stats)
        return "\n".join(lines) + "\n"


def build_app(engine: EngineClient, cfg: ServerConfig) -> FastAPI:
    app = FastAPI(title="FlowPrefill", version="0.1.0")
    app.add_middleware(Guards, max_body_bytes=cfg.max_body_bytes,
                       api_key=resolve_api_key(cfg.api_key))
    metrics = ServerMetrics()
    admission = Admission(cfg.max_waiting, cfg.max_queued_tokens)
    app.state.metrics = metrics

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: HTTPRequest, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        msg = f"{where}: {err.get('msg', 'invalid value')}"
        return JSONResponse(P.error_body(msg, param=where), status_code=400)

    @app.exception_handler(APIError)
    async def _api_error(_: HTTPRequest, exc: APIError) -> JSONResponse:
        return JSONResponse(P.error_body(exc.message, exc.kind, exc.param), status_code=exc.status,
                            headers=exc.headers)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": engine.model_name, **engine.health()}

    @app.get("/v1/models")
    async def models() -> dict:
        card = {"id": engine.model_name, "object": "model", "created": 0,
                "owned_by": "flowprefill", "max_model_len": engine.max_model_len}
        return {"object": "list", "data": [card]}

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        text = metrics.render({**engine.stats(), "admission_waiting": admission.waiting,
                               "admission_tokens": admission.tokens,
                               "admission_refused": admission.refused})
        if extra := engine.prometheus():  # e.g. the PD proxy's KV transfer metrics
            text += "\n".join(extra) + "\n"
        return PlainTextResponse(text)

    @app.get("/internal/stats")
    async def stats() -> dict:
        return engine.stats()

    @app.post("/v1/completions")
    async def completions(body: P.CompletionRequest, raw: HTTPRequest) -> Response:
        _check_model(body.model)
        if isinstance(body.prompt, str):
            ids = engine.tokenizer.encode(body.prompt)
        else:
            ids = _check_ids(body.prompt)
        return await _serve(raw, body, ids, body.max_tokens or 16, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(body: P.ChatCompletionRequest, raw: HTTPRequest) -> Response:
        _check_model(body.model)
        text = engine.tokenizer.apply_chat_template([m.model_dump() for m in body.messages])
        ids = engine.tokenizer.encode(text)
        max_tokens = body.max_completion_tokens or body.max_tokens
        if max_tokens is None:
            max_tokens = max(1, min(cfg.chat_max_tokens, engine.max_model_len - len(ids)))
        return await _serve(raw, body, ids, max_tokens, chat=True)

    def _check_model(name: str) -> None:
        if name != engine.model_name:
            raise APIError(404, f"model '{name}' does not exist; this server serves "
                           f"'{engine.model_name}'", "model", "not_found_error")

    def _check_ids(ids: list[int]) -> list[int]:
        bad = next((t for t in ids if not 0 <= t < engine.vocab_size), None)
        if bad is not None:
            raise APIError(400, f"prompt: token id {bad} is outside the vocabulary "
                           f"[0, {engine.vocab_size})", "prompt")
        return ids

    def _make_request(body: P.SamplingFields, ids: list[int], max_tokens: int) -> Request:
        if not ids:
            raise APIError(400, "prompt: tokenizes to zero tokens", "prompt")
        if len(ids) + max_tokens > engine.max_model_len:
            raise APIError(400, f"prompt ({len(ids)} tokens) plus max_tokens ({max_tokens}) "
                           f"exceeds the model's context of {engine.max_model_len} tokens",
                           "max_tokens")
        slo_class = body.slo_class or cfg.default_slo_class
        if body.ttft_slo is None and slo_class not in cfg.class_ttft:
            raise APIError(400, f"slo_class: unknown class '{slo_class}'; known: "
                           f"{sorted(cfg.class_ttft)}", "slo_class")
        ttft = body.ttft_slo if body.ttft_slo is not None else cfg.class_ttft[slo_class]
        tbt = body.tbt_slo if body.tbt_slo is not None else float("inf")
        return Request(request_id=P.new_id("cmpl"), arrival=engine.now(), prompt_len=len(ids),
                       slo=SLO(ttft=ttft, tbt=tbt, slo_class=slo_class), max_tokens=max_tokens,
                       prompt_token_ids=tuple(ids))

    async def _serve(raw: HTTPRequest, body: P.SamplingFields, ids: list[int], max_tokens: int,
                     chat: bool) -> Response:
        request = _make_request(body, ids, max_tokens)
        if not admission.admit(request.prompt_len):
            raise APIError(429, f"server busy: {admission.waiting} requests / "
                           f"{admission.tokens} prompt tokens waiting; retry later",
                           kind="rate_limit_error", headers={"Retry-After": "1"})
        sampling = SamplingParams(max_tokens=max_tokens, temperature=body.temperature,
                                  top_p=body.top_p, seed=body.seed, ignore_eos=body.ignore_eos)
        shape = P.chat_body if chat else P.completion_body
        model = engine.model_name
        pieces = _pieces(request, sampling, body.stop)
        if body.stream:
            separate = body.stream_options is not None and body.stream_options.include_usage
            return StreamingResponse(_sse(request, pieces, shape, model, chat, separate),
                                     media_type="text/event-stream")
        return await _collect(raw, request, pieces, shape, model)

    async def _pieces(request: Request, sampling: SamplingParams,
                      stop: list[str]) -> AsyncIterator[tuple[str, str | None, int]]:
        """(text delta, finish reason, tokens so far) per engine output; aborts on exit."""
        stream = TextStream(engine.tokenizer, stop)
        t_start = time.perf_counter()
        t_last = None
        finished = False
        queued = True  # counts against the admission bounds until its first output
        try:
            # aclosing: the engine's generator is closed here, on every path (finish, error,
            # disconnect), not whenever the garbage collector gets to it
            async with contextlib.aclosing(engine.generate(request, sampling)) as outs:
                async for out in outs:
                    if queued:
                        queued = False
                        admission.release(request.prompt_len)
                    if out.error is not None:
                        finished = True
                        if out.error_code == "rejected":
                            metrics.requests.inc(outcome="rejected")
                            raise APIError(429, out.error, kind="slo_unattainable")
                        metrics.requests.inc(outcome="error")
                        raise APIError(500, out.error, kind="engine_error")
                    finish = out.finish_reason
                    text = ""
                    if out.token_id is not None:
                        now = time.perf_counter()
                        if t_last is None:
                            metrics.ttft.observe(now - t_start)
                        else:
                            metrics.tbt.observe(now - t_last)
                        t_last = now
                        text = stream.add(out.token_id)
                        if stream.stopped:
                            finish = "stop"
                    if finish is not None:
                        finished = True
                        if not stream.stopped:
                            text += stream.flush()
                        else:
                            engine.abort(request.request_id)
                        metrics.requests.inc(outcome=finish)
                        metrics.e2e.observe(time.perf_counter() - t_start)
                        yield text, finish, len(stream.token_ids)
                        return
                    if text:
                        yield text, None, len(stream.token_ids)
        finally:
            if queued:
                admission.release(request.prompt_len)
            if not finished:
                engine.abort(request.request_id)
                metrics.requests.inc(outcome="disconnected")

    async def _sse(request: Request, pieces: AsyncIterator, shape, model: str,
                   chat: bool, separate_usage: bool) -> AsyncIterator[str]:
        """One chunk per text piece; usage rides on the finishing chunk, or (OpenAI's
        `stream_options.include_usage`) follows it in a chunk of its own."""
        rid, first = request.request_id, True
        try:
            async for text, finish, n in pieces:
                use = P.usage(request.prompt_len, n) if finish is not None else None
                kw = {"first": first} if chat else {}
                chunk = shape(rid, model, text, finish, None if separate_usage else use,
                              chunk=True, **kw)
                first = False
                yield f"data: {json.dumps(chunk)}\n\n"
                if separate_usage and use is not None:
                    yield f"data: {json.dumps(P.usage_chunk(rid, model, use, chat))}\n\n"
        except APIError as e:
            yield f"data: {json.dumps(P.error_body(e.message, e.kind))}\n\n"
        yield "data: [DONE]\n\n"

    async def _collect(raw: HTTPRequest, request: Request, pieces: AsyncIterator, shape,
                       model: str) -> Response:
        async def run() -> dict:
            texts, last = [], (None, 0)
            async for text, finish, n in pieces:
                texts.append(text)
                last = (finish, n)
            use = P.usage(request.prompt_len, last[1])
            return shape(request.request_id, model, "".join(texts), last[0], use)

        body = await until_disconnect(raw, run())  # a client gone: the request is aborted
        return Response(status_code=499) if body is GONE else JSONResponse(body)

    return app
