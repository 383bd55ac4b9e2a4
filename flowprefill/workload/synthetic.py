"""Seeded synthetic workloads: Poisson or Gamma arrivals, per-class lognormal lengths.

Owns the generator and its named presets. Every parameter is declared here, with its source
or marked as our assumption; the same (preset, seed, rate, ...) always gives the same trace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from flowprefill.workload.record import TraceRecord


@dataclass(frozen=True)
class ClassSpec:
    """One request class: its share of requests and lognormal input/output lengths.

    Lognormal with mean `m` and log-space sigma `s` has mu = ln(m) - s^2 / 2.
    """

    share: float
    input_mean: float
    input_sigma: float
    output_mean: float
    output_sigma: float


# Published per-type statistics of the Qwen-Bailian trace (Alibaba, the FlowPrefill paper's
# workload): shares 69/7/20/3 % and mean input tokens 646/393/5,055/4,132. The spreads
# (sigmas) and output means are NOT published: they are our assumptions, chosen so that
# text/image are short and chatty and search/file are long-prompt, short-answer.
PRESETS: MappingProxyType[str, MappingProxyType[str, ClassSpec]] = MappingProxyType(
    {
        "qwen_like": MappingProxyType(
            {
                "text": ClassSpec(0.69, 646, 1.0, 256, 0.8),
                "image": ClassSpec(0.07, 393, 0.6, 128, 0.8),
                "search": ClassSpec(0.20, 5055, 0.7, 384, 0.8),
                "file": ClassSpec(0.03, 4132, 0.8, 256, 0.8),
            }
        ),
        # A head-of-line-blocking stress mix (our assumption): many short, a few very long.
        "short_long": MappingProxyType(
            {
                "text": ClassSpec(0.9, 256, 0.5, 128, 0.5),
                "file": ClassSpec(0.1, 8192, 0.3, 64, 0.5),
            }
        ),
    }
)


def _lognormal(rng: np.random.Generator, mean: float, sigma: float, n: int) -> np.ndarray:
    mu = math.log(mean) - sigma * sigma / 2.0
    return np.maximum(1, np.rint(rng.lognormal(mu, sigma, n))).astype(np.int64)


def arrival_times(
    rng: np.random.Generator, n: int, rate: float, arrival: str = "poisson", cv: float = 1.0
) -> np.ndarray:
    """`n` arrival times starting at 0 with mean rate `rate` req/s.

    poisson: exponential gaps. gamma: gaps with coefficient of variation `cv` (shape 1/cv^2;
    cv > 1 is burstier than Poisson, cv = 1 is Poisson).
    """
    if rate <= 0:
        raise ValueError("rate must be positive")
    if arrival == "poisson":
        gaps = rng.exponential(1.0 / rate, n)
    elif arrival == "gamma":
        if cv <= 0:
            raise ValueError("gamma arrivals need cv > 0")
        shape = 1.0 / (cv * cv)
        gaps = rng.gamma(shape, 1.0 / (rate * shape), n)
    else:
        raise ValueError(f"unknown arrival process {arrival!r}; expected poisson or gamma")
    gaps[0] = 0.0
    return np.cumsum(gaps)


def generate(
    preset: str | dict[str, ClassSpec] = "qwen_like",
    num_requests: int = 1000,
    rate: float = 5.0,
    arrival: str = "poisson",
    cv: float = 1.0,
    seed: int = 0,
) -> list[TraceRecord]:
    """A synthetic trace; each request's class drawn by share, lengths from its class."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
        classes = dict(PRESETS[preset])
    else:
        classes = dict(preset)
    rng = np.random.default_rng(seed)
    times = arrival_times(rng, num_requests, rate, arrival, cv)
    names = list(classes)
    shares = np.array([classes[c].share for c in names], dtype=float)
    kinds = rng.choice(len(names), size=num_requests, p=shares / shares.sum())
    inputs = np.empty(num_requests, dtype=np.int64)
    outputs = np.empty(num_requests, dtype=np.int64)
    for k, name in enumerate(names):
        idx = np.flatnonzero(kinds == k)
        spec = classes[name]
        inputs[idx] = _lognormal(rng, spec.input_mean, spec.input_sigma, idx.size)
        outputs[idx] = _lognormal(rng, spec.output_mean, spec.output_sigma, idx.size)
    return [
        TraceRecord(float(times[i]), int(inputs[i]), int(outputs[i]), names[kinds[i]], f"syn-{i}")
        for i in range(num_requests)
    ]
