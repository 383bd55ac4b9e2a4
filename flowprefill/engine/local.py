"""`deploy=colocated`: prefill and decode engines in one process, sharing one KV pool.

Implements `EngineClient` for the HTTP server: stamps nothing itself (the server stamps
arrivals with `now()`), registers a stream per request, feeds the prefill engine's event
queue, and turns an abort into the one path that frees a request's blocks and state.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

from flowprefill.config import PolicyConfig
from flowprefill.core import Abort, Arrival, Request, WallClock
from flowprefill.engine.api import SamplingParams, Tokenizer, TokenOutput
from flowprefill.engine.decode import DecodeEngine
from flowprefill.engine.prefill import PrefillEngine
from flowprefill.engine.streams import OutputStream
from flowprefill.executor import ModelRunner, make_generator
from flowprefill.kvcache import BlockManager
from flowprefill.metrics import RequestRecord
from flowprefill.predictor import Predictor
from flowprefill.scheduler import Scheduler


class BlockManagerView:
    """The scheduler's torch-free KV view over the runner's block manager."""

    def __init__(self, blocks: BlockManager) -> None:
        self._blocks = blocks
        self.block_size = blocks.block_size

    def free_blocks(self) -> int:
        return self._blocks.num_free

    def total_blocks(self) -> int:
        return self._blocks.num_blocks


class LocalEngine:
    def __init__(self, runner: ModelRunner, tokenizer: Tokenizer, policy: PolicyConfig,
                 predictor: Predictor, model_name: str, max_decode_batch: int = 64) -> None:
        self.runner = runner
        self.tokenizer = tokenizer
        self.model_name = model_name
        # a request must fit the model's context and, with its output, the KV pool
        self.max_model_len = min(runner.model_cfg.max_position,
                                 runner.blocks.num_blocks * runner.blocks.block_size)
        self.vocab_size = runner.model_cfg.vocab_size
        self.clock = WallClock()
        self.streams: dict[str, OutputStream] = {}
        self.records: deque[RequestRecord] = deque(maxlen=100_000)  # finished requests
        self.scheduler = Scheduler(policy, predictor, BlockManagerView(runner.blocks))
        self.decode = DecodeEngine(runner, self.clock, max_decode_batch)
        self.prefill = PrefillEngine(runner, self.scheduler, self.clock, self.streams,
                                     self.decode.submit)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> LocalEngine:
        self.prefill.thread.start()
        self.decode.thread.start()
        return self

    def shutdown(self) -> None:
        for rid in list(self.streams):
            self.abort(rid)
        self.prefill.stop()
        self.decode.stop()

    # ------------------------------------------------------------------ EngineClient
    def now(self) -> float:
        return self.clock.now()

    async def generate(self, request: Request,
                       sampling: SamplingParams) -> AsyncIterator[TokenOutput]:
        rid = request.request_id
        if rid in self.streams:
            raise ValueError(f"request id {rid!r} is already in flight")
        stream = OutputStream(request, sampling, asyncio.get_running_loop(),
                              RequestRecord.for_request(request),
                              generator=make_generator(sampling, self.runner.pool.kv.device))
        self.streams[rid] = stream
        self.prefill.submit(Arrival(request))
        async for out in self.outputs(stream):
            yield out

    async def outputs(self, stream: OutputStream) -> AsyncIterator[TokenOutput]:
        """A registered stream's outputs until it finishes; leaving early aborts it.

        The stream is retired before its last output is handed over, so whoever sees the last
        token also sees the request gone from the engine (as its KV blocks already are).
        """
        try:
            while True:
                out = await stream.queue.get()
                last = out.finish_reason is not None
                if last:
                    self._retire(stream)
                yield out
                if last:
                    return
        finally:
            if not stream.finished:
                self.abort(stream.request.request_id)
            self._retire(stream)

    def _retire(self, stream: OutputStream) -> None:
        if self.streams.get(stream.request.request_id) is stream:
            del self.streams[stream.request.request_id]
            self.records.append(stream.record)

    def abort(self, request_id: str) -> None:
        stream = self.streams.get(request_id)
        if stream is None or stream.aborted:
            return
        stream.aborted = True  # the decode loop and the prefill completion check this flag
        self.prefill.submit(Abort(request_id))  # the scheduler drops it from queue or job

    def health(self) -> dict:
        return {}

    def prometheus(self) -> list[str]:
        return []

    def stats(self) -> dict:
        blocks = self.runner.blocks
        lat = sorted(self.prefill.preemption_latencies)
        return {
            "requests_in_flight": len(self.streams),
            "prefill_waiting": self.scheduler.num_waiting,
            "prefill_running": int(self.prefill.current is not None),
            "prefill_suspended": self.prefill.num_suspended,
            "decode_running": len(self.decode.running),
            "decode_steps": self.decode.steps,
            "preemptions": self.prefill.preemptions,
            "preemption_latency_p50": _pct(lat, 0.5),
            "preemption_latency_p99": _pct(lat, 0.99),
            "scheduler_calls": self.prefill.scheduler_calls,
            "kv_blocks_total": blocks.num_blocks,
            "kv_blocks_free": blocks.num_free,
            "kv_usage": 1.0 - blocks.num_free / blocks.num_blocks,
        }


def _pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]
