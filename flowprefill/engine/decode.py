"""The decode engine loop: continuous batching over the paged KV cache.

One thread; each step appends one token to every running sequence (new sequences join at
the next step, finished or aborted ones leave and free their KV blocks at once). Sleeps on
its inbox when nothing runs. Knows nothing of prefill scheduling.
"""

from __future__ import annotations

import logging
import queue
import threading

from flowprefill.core import Clock
from flowprefill.engine.streams import OutputStream
from flowprefill.executor import ModelRunner, sample
from flowprefill.kvcache import OutOfBlocksError

log = logging.getLogger(__name__)
_STOP = object()


class DecodeEngine:
    def __init__(self, runner: ModelRunner, clock: Clock, max_batch: int = 64) -> None:
        self.runner, self.clock, self.max_batch = runner, clock, max_batch
        self.eos = runner.model_cfg.eos_token_id
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.running: list[tuple[OutputStream, int]] = []  # (stream, last token)
        self.waiting: list[tuple[OutputStream, int]] = []  # over max_batch
        self.steps = 0
        self.thread = threading.Thread(target=self._loop, name="decode-engine", daemon=True)

    def submit(self, stream: OutputStream, last_token: int) -> None:
        """A request whose prefill produced `last_token`; its KV is in the runner's pool."""
        self.inbox.put((stream, last_token))

    def stop(self) -> None:
        self.inbox.put(_STOP)
        self.thread.join()

    def _loop(self) -> None:
        self.runner.use_threads()
        while True:
            if not self.running and not self.waiting:
                item = self.inbox.get()
                if item is _STOP:
                    return
                self.waiting.append(item)
            while not self.inbox.empty():
                item = self.inbox.get_nowait()
                if item is _STOP:
                    return
                self.waiting.append(item)
            self._admit()
            if self.running:
                try:
                    self._step()
                except Exception as e:  # noqa: BLE001 - fail this batch, keep serving
                    log.exception("decode step failed")
                    self._fail_all(f"decode failed: {e}")

    def _admit(self) -> None:
        keep = []
        for stream, tok in self.running + self.waiting:
            if stream.aborted:
                self.runner.free(stream.request.request_id)
            else:
                keep.append((stream, tok))
        self.running, self.waiting = keep[: self.max_batch], keep[self.max_batch:]

    def _fail_all(self, message: str) -> None:
        now = self.clock.now()
        for stream, _ in self.running:
            stream.fail(message, now)
            self.runner.free(stream.request.request_id)
        self.running = []

    def _step(self) -> None:
        streams = [s for s, _ in self.running]
        ids = [s.request.request_id for s in streams]
        try:
            logits = self.runner.decode(ids, [t for _, t in self.running])
        except OutOfBlocksError as e:
            victim = streams[-1]  # fail the newest sequence; the rest retry next step
            victim.fail(f"KV cache full during decode ({e})", self.clock.now())
            self.runner.free(victim.request.request_id)
            self.running.pop()
            return
        tokens = sample(logits, [s.sampling for s in streams], [s.generator for s in streams])
        self.steps += 1
        now = self.clock.now()
        nxt = []
        for stream, token in zip(streams, tokens, strict=True):
            rid = stream.request.request_id
            if stream.aborted:
                self.runner.free(rid)
            elif not stream.token(token, now, self.eos, lambda r=rid: self.runner.free(r)):
                nxt.append((stream, token))
        self.running = nxt
