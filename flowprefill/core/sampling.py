"""How a request's tokens are chosen and when its generation stops (token-level)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None  # a per-request generator: samples independent of batch-mates
    ignore_eos: bool = False
