"""Schemas of what decides: the policy, the hardware a predictor prices, the predictor."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# --------------------------------------------------------------------------- scheduling


@dataclass(frozen=True)
class PolicyConfig:
    """A scheduling policy: an order, a preemption granularity, and batching/admission rules."""

    name: str = "flowprefill"
    order: str = "sedf"  # fcfs | edf | sedf | priority
    granularity: Literal["none", "chunk", "layer", "operator"] = "operator"
    chunk_size: int = 512  # with granularity=chunk
    batching: bool = True  # SLO-aware batching of short, non-urgent requests
    token_bound: int = 2048
    alpha: float = 0.1
    # what to do with requests predicted to miss
    drop: Literal["demote", "moore_hodgson"] = "demote"
    reject: bool = False  # reject dropped requests instead of ranking them last
    # slack-aware orders: a request predicted to miss runs ahead of feasible work when its cost
    # is at most this share of that work's least slack, times the share of the worker left
    # idle by recent arrivals (what later arrivals will need); 0: it waits until every
    # feasible job is done
    absorb_late: float = 1.0
    # while a prefill runs, the decode step is due at the latest this long after the oldest
    # token of the decode batch (and earlier if a sequence's TBT SLO needs it); None: only as
    # the TBT SLOs need it. The trade of TTFT against TPOT for requests without a TBT SLO:
    # on 2 CPU cores (SmolLM2, 4 x 256-token prompts/s) 0.05 gave 1.7 s / 98 ms, 0.15 gave
    # 0.38 s / 0.20 s (the decode steps no longer starve prefill, and tokens ride jobs)
    decode_pace: float | None = 0.15
    # a new prefill job computes the decode batch's next tokens beside its prompts when it
    # ends before they are due (as above): one pass instead of a prefill and a decode step
    mix_decode: bool = True
    class_priority: dict[str, int] = field(default_factory=dict)  # order=priority: lower first


AUTO_HARDWARE = "auto"  # hardware.name decided by the engine (engine.build.resolve_hardware)


@dataclass(frozen=True)
class HardwareConfig:
    """An accelerator for the roofline cost model (`auto`: the machine the engine runs on)."""

    name: str = "cpu"
    peak_flops: float = 1.0e11  # dense matmul FLOP/s at the run's dtype
    mem_bandwidth: float = 2.0e10  # bytes/s
    bytes_per_param: int = 4
    half_efficiency_tokens: int = 64  # tokens at which matmul efficiency reaches half of peak
    op_overhead: float = 2.0e-5  # fixed seconds per operator launch
    max_efficiency: float = 1.0  # fraction of peak_flops large GEMMs reach
    # tensor parallelism (engine.tp > 1): the link between two ranks that each all-reduce
    # crosses (GPUs: NVLink), its bandwidth each way per rank and the fixed cost of one
    # all-reduce (the roofline prices a ring: latency + 2 (tp-1)/tp x bytes / bandwidth)
    link_bandwidth: float = 6.0e8  # bytes/s (the defaults: the cpu preset's, measured)
    link_latency: float = 2.5e-4  # seconds


@dataclass(frozen=True)
class PredictorConfig:
    kind: str = "roofline"  # roofline | fitted | cubic | oracle (simulator)
    path: str | None = None  # fitted/cubic artifact (file or dir); auto: artifacts/<model>_<hw>/
    on_missing: Literal["error", "roofline"] = "error"  # a fitted/cubic kind without artifact
    correction: float = 0.0  # engine: EW weight of the online correction from op times; 0 = off
