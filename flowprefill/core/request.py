"""Requests and their service-level objectives."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum


@dataclass(frozen=True)
class SLO:
    """Latency targets of one request, in seconds."""

    ttft: float  # time to first token
    tbt: float = math.inf  # time between tokens (decode)
    slo_class: str = "default"  # e.g. "urgent"/"relaxed" or a trace type ("text", "search")


class RequestState(str, Enum):
    WAITING = "waiting"  # arrived, no prefill work done yet
    PREFILLING = "prefilling"  # part of the running prefill job
    SUSPENDED = "suspended"  # part of a preempted job; its KV and activations are kept
    DECODING = "decoding"  # first token produced
    FINISHED = "finished"
    ABORTED = "aborted"


@dataclass(eq=False)
class Request:
    """One inference request as the scheduler sees it.

    `arrival` is stamped by whoever owns the clock (the server or the simulator), never
    taken from a client. `prompt_token_ids` is None in the simulator, which only needs lengths.
    Identity semantics (eq=False): two requests are the same only if they are the same object.
    """

    request_id: str
    arrival: float
    prompt_len: int
    slo: SLO
    max_tokens: int = 1
    prompt_token_ids: tuple[int, ...] | None = None
    req_type: str | None = None  # workload type when the trace has one (text/image/search/file)
    state: RequestState = RequestState.WAITING
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
