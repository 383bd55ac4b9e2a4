"""Per-request state shared by an engine thread and the asyncio (HTTP) side.

The engine threads put `TokenOutput`s; the asyncio side awaits them. `aborted` is the one
flag both sides read: set by the HTTP side (client gone, stop string hit), checked by the
decode loop every step and by the prefill loop when a prefill completes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flowprefill.core import Request
from flowprefill.engine.api import SamplingParams, TokenOutput
from flowprefill.metrics import RequestRecord


@dataclass(eq=False)
class OutputStream:
    request: Request
    sampling: SamplingParams
    loop: asyncio.AbstractEventLoop
    record: RequestRecord
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    aborted: bool = False
    finished: bool = False
    num_generated: int = 0
    generator: Any = None  # torch.Generator when the request has a seed

    def put(self, out: TokenOutput) -> None:
        """Thread-safe: hand one output to the asyncio side."""
        if out.finish_reason is not None:
            self.finished = True
        self.loop.call_soon_threadsafe(self.queue.put_nowait, out)

    def token(self, token_id: int, now: float, eos: int | None,
              release: Callable[[], None] | None = None) -> bool:
        """Emit a generated token stamped `now`; True if it ends the request.

        `release` (freeing the request's KV) runs before the last output is handed over, so a
        client that has its last token never sees the blocks still held.
        """
        if self.num_generated == 0:
            self.record.first_token_time = now
        else:
            self.record.token_times.append(now)
        self.num_generated += 1
        finish = None
        if eos is not None and token_id == eos and not self.sampling.ignore_eos:
            finish = "stop"
        elif self.num_generated >= self.sampling.max_tokens:
            finish = "length"
        if finish is not None:
            self.record.finish_time = now
            if release is not None:
                release()
        self.put(TokenOutput(token_id, finish))
        return finish is not None

    def fail(self, message: str, now: float, reason: str = "error") -> None:
        self.record.finish_time = now
        self.record.rejected = reason == "rejected"
        self.put(TokenOutput(None, "error", f"{reason}: {message}", reason))
