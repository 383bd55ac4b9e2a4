"""The internal HTTP API of a `deploy=pd` decode worker.

`POST /internal/decode` takes a prefilled request (its first token and where its KV lies),
reserves local blocks, pulls the KV from the prefill worker with NIXL, tells that worker to
free its copy, and streams the remaining tokens as JSON lines. The first line reports the
transfer (`{"kv": {"bytes", "seconds"}}`). A pull that fails or times out frees the local
blocks and either fails the request or, with `on_transfer_failure=recompute`, prefills it
here. Knows nothing of routing or the public API.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from flowprefill.engine.disagg import DecodeOnlyEngine
from flowprefill.kvcache import OutOfBlocksError
from flowprefill.kvtransfer import KVAgent, TransferError
from flowprefill.server.pd_wire import (
    DECODE,
    request_from_wire,
    sampling_from_wire,
    worker_app,
)
from flowprefill.server.tasks import BackgroundTasks

log = logging.getLogger("flowprefill.decode_worker")


class DecodeWorker:
    def __init__(self, engine: DecodeOnlyEngine, agent: KVAgent, transfer_timeout: float,
                 on_failure: str = "fail", headers: dict[str, str] | None = None) -> None:
        if on_failure not in ("fail", "recompute"):
            raise ValueError(f"on_transfer_failure must be fail | recompute, not {on_failure}")
        self.engine, self.agent = engine, agent
        self.timeout, self.on_failure = transfer_timeout, on_failure
        self.http = httpx.AsyncClient(timeout=5.0, headers=headers or {})  # secret for peers
        self.peers: dict[str, str] = {}  # prefill URL -> its agent's name
        self.transfers = self.transfer_bytes = self.transfer_failures = self.recomputes = 0
        self._tasks = BackgroundTasks()  # fire-and-forget releases
        self._peer_lock = asyncio.Lock()

    async def _peer(self, url: str, agent_name: str) -> str:
        """The peer's agent, loading its metadata on first use or after it restarted."""
        if self.peers.get(url) == agent_name and self.agent.has_peer(agent_name):
            return agent_name
        async with self._peer_lock:  # concurrent first requests load the metadata once
            return await self._load_peer(url, agent_name)

    async def _load_peer(self, url: str, agent_name: str) -> str:
        if self.peers.get(url) == agent_name and self.agent.has_peer(agent_name):
            return agent_name
        old = self.peers.pop(url, None)
        if old is not None:
            self.agent.remove_peer(old)
        info = (await self.http.get(url + "/internal/kv/meta")).json()
        if info["agent"] != agent_name:
            raise TransferError(f"prefill worker {url} restarted (agent {info['agent']}, "
                                f"request names {agent_name})")
        self.peers[url] = self.agent.add_peer(info)
        return agent_name

    def _release_remote(self, url: str, rid: str) -> None:
        self._tasks.spawn(self._post(url + "/internal/kv/release", rid))

    async def _post(self, url: str, rid: str) -> None:
        try:
            await self.http.post(url, json={"request_id": rid})
        except httpx.HTTPError as e:  # the lease timeout frees it on that side
            log.warning("release of %s at %s failed: %s", rid, url, e)

    async def _pull(self, request, src: dict) -> tuple[int, float]:
        """Reserve and fill the request's KV; returns (bytes, seconds), seconds < 0 when the
        pull failed and the request must be prefilled here again."""
        rid = request.request_id
        try:
            local = self.engine.reserve(rid, src["num_tokens"])
        except OutOfBlocksError:
            self._release_remote(src["url"], rid)
            raise
        try:
            peer = await self._peer(src["url"], src["agent"])
            secs = await self.agent.pull(peer, src["blocks"], local, self.timeout)
        except (TransferError, httpx.HTTPError, OSError) as e:
            self.transfer_failures += 1
            if self.on_failure != "recompute":
                self.engine.runner.free(rid)
                raise TransferError(f"KV transfer from {src['url']} failed: {e}") from e
            log.warning("pull of %s failed (%s); recomputing its prefill here", rid, e)
            self.recomputes += 1
            return 0, -1.0  # no KV arrived: the engine prefills it again
        except BaseException:
            self.engine.runner.free(rid)
            raise
        finally:
            self._release_remote(src["url"], rid)  # done, failed or cancelled: not needed
        nbytes = self.agent.bytes_for(len(local))
        self.transfers += 1
        self.transfer_bytes += nbytes
        return nbytes, secs

    async def decode(self, body: dict) -> AsyncIterator[str]:
        request = request_from_wire(body["request"], self.engine.now())
        sampling = sampling_from_wire(body["sampling"])
        state = body.get("generator_state")
        try:
            nbytes, secs = await self._pull(request, body["kv"])
        except (TransferError, OutOfBlocksError) as e:
            yield _line({"token_id": None, "finish_reason": "error", "error": str(e)})
            return
        stream = self.engine.resume(request, sampling, body["first_token"],
                                    base64.b64decode(state) if state else None,
                                    recompute=secs < 0)
        try:  # from here the decode loop owns the blocks; an abort is what frees them
            yield _line({"kv": {"bytes": nbytes, "seconds": secs}})
            async for out in self.engine.outputs(stream):
                yield _line({"token_id": out.token_id, "finish_reason": out.finish_reason,
                             "error": out.error})
        finally:
            if not stream.finished:
                self.engine.abort(request.request_id)
            self.engine.streams.pop(request.request_id, None)

    async def close(self) -> None:
        """Let the releases on their way reach the prefill workers, then close the client."""
        await self._tasks.drain()
        await self.http.aclose()

    def stats(self) -> dict:
        return {**self.engine.stats(), "transfers": self.transfers,
                "transfer_bytes": self.transfer_bytes,
                "transfer_failures": self.transfer_failures, "recomputes": self.recomputes}


def _line(d: dict) -> str:
    return json.dumps(d) + "\n"


def build_decode_app(worker: DecodeWorker) -> FastAPI:
    app = worker_app(DECODE, worker.engine, worker.agent.name, worker.stats)

    @app.post("/internal/decode")
    async def decode(body: dict) -> StreamingResponse:
        return StreamingResponse(worker.decode(body), media_type="application/x-ndjson")

    return app
