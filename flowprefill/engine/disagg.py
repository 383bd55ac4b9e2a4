"""`deploy=pd` engines: a prefill-only engine that parks KV for pulling, and a decode-only
engine that continues requests whose KV arrived from elsewhere.

Both are `LocalEngine`s (the same device loop); they differ only at the handoff. The prefill
side ends a request's stream after its first token with finish reason `prefilled` and keeps
its blocks under a lease (freed when pulled, aborted or expired). The decode side reserves
blocks for an incoming request, lets the caller fill them with a NIXL pull, then hands the
request to its loop (or, when the pull failed, has the loop prefill it again). Must not
know about NIXL or HTTP.
"""

from __future__ import annotations

import asyncio

from flowprefill.core import Arrival, Handoff, Request
from flowprefill.engine.api import SamplingParams, TokenOutput
from flowprefill.engine.local import LocalEngine
from flowprefill.engine.streams import OutputStream
from flowprefill.executor import make_generator
from flowprefill.kvtransfer.lease import Lease, LeaseTable
from flowprefill.metrics import RequestRecord

PREFILLED = "prefilled"  # finish reason of a prefill-only stream whose KV is parked


class PrefillOnlyEngine(LocalEngine):
    """Runs FlowPrefill scheduling and prefill only: a request leaves after its first token,
    its KV parked under a lease until the decode side pulls it."""

    decodes = False

    def __init__(self, *args, lease_timeout: float = 30.0, **kwargs) -> None:
        self.leases = LeaseTable(lease_timeout)
        self.completed = 0  # prefills handed off (KV parked)
        self.generator_states: dict[str, bytes] = {}  # sampling RNG state at the handoff
        super().__init__(*args, **kwargs)

    def _prefilled(self, stream: OutputStream, first_token: int) -> None:
        """Engine thread: the first token is out; keep the KV until it is pulled."""
        rid = stream.request.request_id
        blocks = self.runner.blocks
        self.leases.add(rid, blocks.block_table(rid), blocks.num_tokens(rid), self.clock.now())
        if stream.generator is not None:  # so a seeded request samples on as if colocated
            self.generator_states[rid] = bytes(stream.generator.get_state().numpy())
        self.completed += 1
        stream.put(TokenOutput(None, PREFILLED))

    def lease(self, request_id: str) -> Lease | None:
        return self.leases.get(request_id)

    def release(self, request_id: str) -> bool:
        """The KV was pulled (or is no longer wanted): free its blocks."""
        self.generator_states.pop(request_id, None)
        if self.leases.release(request_id) is None:
            return False
        self.runner.free(request_id)
        return True

    def expire_leases(self) -> int:
        for lease in self.leases.expire(self.clock.now()):
            self.generator_states.pop(lease.request_id, None)
            self.runner.free(lease.request_id)
        return self.leases.expired

    def abort(self, request_id: str) -> None:
        if not self.release(request_id):
            super().abort(request_id)

    def stats(self) -> dict:
        return {**super().stats(), "kv_leased": len(self.leases),
                "leases_released": self.leases.released, "leases_expired": self.leases.expired,
                "prefills_completed": self.completed}


class DecodeOnlyEngine(LocalEngine):
    """Decodes requests prefilled elsewhere (their KV pulled into blocks reserved here); the
    same loop prefills only what must be recomputed (a failed pull, an evicted sequence)."""

    def reserve(self, request_id: str, num_tokens: int) -> list[int]:
        """Blocks for a request's prompt KV (raises OutOfBlocksError); the caller fills them."""
        return self.runner.allocate(request_id, num_tokens)

    def resume(self, request: Request, sampling: SamplingParams, first_token: int,
               generator_state: bytes | None = None, recompute: bool = False) -> OutputStream:
        """Continue a request whose prefill produced `first_token` elsewhere: its KV is in
        the reserved blocks, or (`recompute`) it is prefilled here again, prompt and first
        token, and decodes on. From here on an abort (or the end of `outputs`) is what frees
        its blocks."""
        rid = request.request_id
        if rid in self.streams:
            raise ValueError(f"request id {rid!r} is already in flight")
        gen = make_generator(sampling, self.runner.device)
        if gen is not None and generator_state is not None:
            import torch

            gen.set_state(torch.frombuffer(bytearray(generator_state), dtype=torch.uint8))
        if recompute:
            self.runner.free(rid)
            ids = (*request.prompt_token_ids, first_token)
            request = Request(rid, request.arrival, len(ids), request.slo,
                              max_tokens=request.max_tokens, prompt_token_ids=ids,
                              req_type=request.req_type, generated=1, meta=request.meta)
        stream = OutputStream(request, sampling, asyncio.get_running_loop(),
                              RequestRecord.for_request(request), generator=gen)
        stream.num_generated = 1  # the prefill worker produced the first token
        self.streams[rid] = stream
        self.loop.submit(Arrival(request) if recompute else Handoff(request, first_token))
        return stream

    def abort(self, request_id: str) -> None:
        """The loop frees the blocks when the abort reaches it; the stream ends now."""
        stream = self.streams.get(request_id)
        if stream is None or stream.aborted:
            return
        super().abort(request_id)
        if not stream.finished:
            stream.put(TokenOutput(None, "abort"))
