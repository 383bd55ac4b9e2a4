"""`deploy=colocated`: one device loop prefilling and decoding over one KV pool.

Implements `EngineClient` for the HTTP server: stamps nothing itself (the server stamps
arrivals with `now()`), registers a stream per request, feeds the loop's event queue, and
turns an abort into the one path that frees a request's blocks and state.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

from flowprefill.config import PolicyConfig
from flowprefill.core import Abort, Arrival, Request, WallClock
from flowprefill.engine.api import SamplingParams, Tokenizer, TokenOutput
from flowprefill.engine.loop import EngineLoop
from flowprefill.engine.streams import OutputStream
from flowprefill.executor import ModelRunner, make_generator
from flowprefill.kvcache import BlockManager
from flowprefill.metrics import RequestRecord, percentile
from flowprefill.predictor import CorrectedPredictor, Predictor
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
    decodes = True  # this worker decodes what it prefills (a PD prefill worker does not)

    def __init__(self, runner: ModelRunner, tokenizer: Tokenizer, policy: PolicyConfig,
                 predictor: Predictor, model_name: str, max_decode_batch: int = 64,
                 hardware: str = "unknown") -> None:
        self.runner = runner
        self.hardware = hardware  # the hardware preset its predictor prices
        self.tokenizer = tokenizer
        self.model_name = model_name
        # a request must fit the model's context and, with its output, the KV pool
        self.max_model_len = min(runner.model_cfg.max_position,
                                 runner.blocks.num_blocks * runner.blocks.block_size)
        self.vocab_size = runner.model_cfg.vocab_size
        self.clock = WallClock()
        self.streams: dict[str, OutputStream] = {}
        self.records: deque[RequestRecord] = deque(maxlen=100_000)  # finished requests
        cfg = runner.engine_cfg
        self.scheduler = Scheduler(policy, predictor, BlockManagerView(runner.blocks),
                                   max_unit_s=cfg.max_unit_s, decode=self.decodes,
                                   decode_batch=max_decode_batch)
        # an online correction observes the device time of every unit; otherwise nothing does
        observer = predictor if isinstance(predictor, CorrectedPredictor) else None
        self.loop = EngineLoop(runner, self.scheduler, self.clock, self.streams,
                               on_prefilled=self._prefilled, observer=observer,
                               launch_ahead=cfg.launch_ahead)

    _prefilled = None  # a PD prefill worker parks the KV here

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> LocalEngine:
        self.loop.thread.start()
        return self

    def shutdown(self) -> None:
        for rid in list(self.streams):
            self.abort(rid)
        self.loop.stop()
        self.runner.close()

    def fail_all(self, message: str) -> None:
        """Any thread: the runner can no longer run (a tensor-parallel rank died). Every
        request in flight fails with `message` now, and the loop drops it (its KV too)."""
        now = self.clock.now()
        for rid, stream in list(self.streams.items()):
            if not stream.finished:
                stream.fail(message, now)
            stream.aborted = True
            self.loop.submit(Abort(rid))

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
        self.loop.submit(Arrival(request))
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
        stream.aborted = True  # the prefill completion checks this flag
        self.loop.submit(Abort(request_id))  # the scheduler drops it wherever it is

    def health(self) -> dict:
        return {}

    def prometheus(self) -> list[str]:
        return []

    def stats(self) -> dict:
        blocks = self.runner.blocks
        lat = list(self.loop.preemption_latencies)
        return {
            "requests_in_flight": len(self.streams),
            "prefill_waiting": self.scheduler.num_waiting,
            "prefill_running": int(self.loop.current is not None),
            "prefill_suspended": self.loop.num_suspended,
            "decode_running": len(self.loop.units.tokens),
            "decode_steps": self.loop.units.decode_steps,
            "decode_evictions": self.loop.evictions,
            "preemptions": self.loop.preemptions,
            "preemption_latency_p50": percentile(lat, 50) or 0.0,
            "preemption_latency_p99": percentile(lat, 99) or 0.0,
            "scheduler_calls": self.loop.scheduler_calls,
            "kv_blocks_total": blocks.num_blocks,
            "kv_blocks_free": blocks.num_free,
            "kv_usage": 1.0 - blocks.num_free / blocks.num_blocks,
            "tp_size": self.runner.engine_cfg.tp,
        }
