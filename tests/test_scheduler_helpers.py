"""Hand-priced predictor and request builders shared by the scheduler, predictor and sim
tests (no tests here)."""

from __future__ import annotations

from flowprefill.config import PolicyConfig
from flowprefill.core import SLO, Request
from flowprefill.predictor import Predictor
from flowprefill.predictor.cost import BatchShape

PER_TOKEN = 1e-4  # seconds per new token of one attention or MLP operator
FIXED = 1e-3  # seconds of embed and of final


class UnitPredictor(Predictor):
    """2 layers; embed = final = 1 ms; attention = mlp = 0.1 ms per new token.

    A whole prompt of n tokens costs 0.002 + 4 * n * 1e-4 s (1000 tokens: 0.402 s).
    """

    def __init__(self, num_layers: int = 2) -> None:
        super().__init__(num_layers)

    def op_cost(self, kind: str, shape: BatchShape, logits: int) -> float:
        if kind in ("embed", "final"):
            return FIXED
        return PER_TOKEN * sum(n for n, _ in shape)


def cost(tokens: int) -> float:
    return 2 * FIXED + 4 * PER_TOKEN * tokens


def req(rid: str, arrival: float, tokens: int, ttft: float, cls: str = "default") -> Request:
    return Request(rid, arrival, tokens, SLO(ttft=ttft, slo_class=cls))


def policy(**kw) -> PolicyConfig:
    base = dict(name="test", order="sedf", granularity="operator", batching=False, alpha=0.1)
    return PolicyConfig(**(base | kw))
