"""Requests and their service-level objectives."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SLO:
    """Latency targets of one request, in seconds."""

    ttft: float  # time to first token
    tbt: float = math.inf  # time between tokens (decode)
    slo_class: str = "default"  # e.g. "urgent"/"relaxed" or a trace type ("text", "search")


@dataclass(eq=False)
class Request:
    """One inference request as the scheduler sees it.

    `arrival` is stamped by whoever owns the clock (the server or the simulator), never
    taken from a client. `prompt_token_ids` is None in the simulator, which only needs lengths.
    `generated` > 0 marks a request that comes back to prefill after decoding that many tokens
    (its KV was evicted under memory pressure): its prompt is the original prompt plus them,
    and the token its prefill produces is its next decode token, not a first token.
    Identity semantics (eq=False): two requests are the same only if they are the same object.
    """

    request_id: str
    arrival: float
    prompt_len: int
    slo: SLO
    max_tokens: int = 1
    prompt_token_ids: tuple[int, ...] | None = None
    req_type: str | None = None  # workload type when the trace has one (text/image/search/file)
    generated: int = 0
    meta: dict = field(default_factory=dict)  # free-form, e.g. sampling params for the engine

    def __post_init__(self) -> None:
        if self.prompt_len <= 0:
            raise ValueError(f"request {self.request_id}: prompt_len must be positive")
        if self.prompt_token_ids is not None and len(self.prompt_token_ids) != self.prompt_len:
            raise ValueError(f"request {self.request_id}: prompt_len != len(prompt_token_ids)")

    @property
    def deadline(self) -> float:
        """Absolute time by which the first token is due."""
        return self.arrival + self.slo.ttft
