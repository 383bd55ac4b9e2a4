"""What the server sees of an engine: submit a request, stream its tokens, abort it.

Torch-free types only, so the HTTP side and the PD proxy can speak them without the model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from flowprefill.core import Request, SamplingParams

__all__ = ["EngineClient", "SamplingParams", "TokenOutput", "Tokenizer"]


@dataclass(frozen=True)
class TokenOutput:
    """One generated token, or the end of a request.

    finish_reason: None while generating; "length" (max_tokens), "stop" (EOS), "abort",
    or "error" (with `error` set) on the last output of a request.
    """

    token_id: int | None
    finish_reason: str | None = None
    error: str | None = None
    error_code: str | None = None  # "rejected" (refused by the scheduler) or "error"


class Tokenizer(Protocol):
    eos_token_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, token_ids: list[int]) -> str: ...

    def apply_chat_template(self, messages: list[dict]) -> str: ...


class EngineClient(Protocol):
    model_name: str
    max_model_len: int
    vocab_size: int
    tokenizer: Tokenizer

    def now(self) -> float:
        """The engine's clock; the server stamps arrivals with it."""
        ...

    def generate(self, request: Request, sampling: SamplingParams) -> AsyncIterator[TokenOutput]:
        """Queue `request` (arrival already stamped) and stream its outputs."""
        ...

    def abort(self, request_id: str) -> None:
        """Drop the request wherever it is and free its KV blocks and suspended state."""
        ...

    def stats(self) -> dict:
        """Counters and gauges for /metrics and the internal stats endpoint."""
        ...

    def health(self) -> dict:
        """Extra /health fields (an engine made of workers says which are alive)."""
        ...

    def prometheus(self) -> list[str]:
        """Extra Prometheus lines beyond the flat `stats()` gauges."""
        ...
