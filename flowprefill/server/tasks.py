"""Two asyncio patterns every server role needs, written once.

`until_disconnect`: run a request's work unless the client goes first (then the work is
cancelled, which aborts the request, and the caller answers 499). `BackgroundTasks`:
fire-and-forget calls (aborts, KV releases) kept referenced until done, and drained before
the HTTP client they use is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

from fastapi import Request as HTTPRequest

T = TypeVar("T")
GONE = object()  # what until_disconnect returns when the client left first


async def _disconnected(raw: HTTPRequest) -> None:
    """Returns when the client closes the connection (the body is already read)."""
    while (await raw.receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(raw: HTTPRequest, work: Awaitable[T]) -> T | object:
    """`work`'s result, or GONE (with `work` cancelled and awaited) if the client left."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(raw))
    done, _ = await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    if task not in done:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(task, return_exceptions=True)
        return GONE
    gone.cancel()
    return task.result()


class BackgroundTasks:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait (at most `timeout` s) for the tasks on their way: call before closing the
        client they use."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
