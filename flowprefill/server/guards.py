"""What the server refuses before anything reaches the engine: oversized bodies, missing or
wrong API keys, and requests beyond the admission bounds.

Owns the limits' bookkeeping, all on the event loop's thread (no locks). Knows nothing of
the engine beyond the counts it is told.
"""

from __future__ import annotations

import hmac
import json
import os

from flowprefill.server.protocol import error_body

API_KEY_ENV = "FLOWPREFILL_API_KEY"
INTERNAL_SECRET_ENV = "FLOWPREFILL_INTERNAL_SECRET"
LOOPBACK = ("127.", "localhost", "::1", "[::1]")


def resolve_api_key(configured: str | None) -> str | None:
    """`server.api_key`, else the FLOWPREFILL_API_KEY environment variable, else none."""
    return configured or os.environ.get(API_KEY_ENV) or None


def internal_secret(configured: str | None, host: str) -> str | None:
    """The PD workers' shared secret: `deploy.secret`, else FLOWPREFILL_INTERNAL_SECRET.

    Workers reachable beyond loopback must have one: their endpoints move KV and start work.
    """
    secret = configured or os.environ.get(INTERNAL_SECRET_ENV) or None
    if secret is None and not host.startswith(LOOPBACK):
        raise ValueError(f"deploy.worker_host={host} is not loopback: set deploy.secret (or "
                         f"{INTERNAL_SECRET_ENV}) so the internal worker APIs need it")
    return secret


def bearer(secret: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"} if secret else {}


class Guards:
    """ASGI middleware: body size limit (413) and bearer-token auth (401), before routing."""

    def __init__(self, app, max_body_bytes: int, api_key: str | None,
                 open_paths: tuple[str, ...] = ("/health",)) -> None:
        self.app, self.max_body, self.api_key, self.open_paths = (app, max_body_bytes, api_key,
                                                                  open_paths)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.api_key and scope["path"] not in self.open_paths:
            given = headers.get(b"authorization", b"").decode("latin-1")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
                return await _reply(send, 401, "missing or invalid API key (Authorization: "
                                    "Bearer ...)", "authentication_error")
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return await _reply(send, 413, f"request body over {self.max_body} bytes",
                                "request_too_large")
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:  # chunked upload without a Content-Length
                    raise BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except BodyTooLarge:
            await _reply(send, 413, f"request body over {self.max_body} bytes",
                         "request_too_large")


class BodyTooLarge(Exception):
    pass


async def _reply(send, status: int, message: str, kind: str) -> None:
    body = json.dumps(error_body(message, kind)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class Admission:
    """Counts requests admitted but not yet given their first token, and their prompt tokens."""

    def __init__(self, max_waiting: int, max_tokens: int) -> None:
        self.max_waiting, self.max_tokens = max_waiting, max_tokens
        self.waiting = 0
        self.tokens = 0
        self.refused = 0

    def admit(self, prompt_tokens: int) -> bool:
        if self.waiting >= self.max_waiting or self.tokens + prompt_tokens > self.max_tokens:
            self.refused += 1
            return False
        self.waiting += 1
        self.tokens += prompt_tokens
        return True

    def release(self, prompt_tokens: int) -> None:
        self.waiting -= 1
        self.tokens -= prompt_tokens
