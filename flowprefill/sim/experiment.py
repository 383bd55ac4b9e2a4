"""One simulated experiment from typed configs: replay a workload once, or search for the
maximum goodput over `rate_scale`. What `runners/simulate.py` calls after converting Hydra's
config; tests call it directly. Must not import torch or Hydra.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from flowprefill.config import (
    HardwareConfig,
    ModelConfig,
    PolicyConfig,
    PredictorConfig,
    SimConfig,
    SLOConfig,
    WorkloadConfig,
)
from flowprefill.metrics import max_goodput, summarize
from flowprefill.predictor import Predictor, make_predictor
from flowprefill.sim.simulator import SimResult, Simulator
from flowprefill.workload import build_requests

MODES = ("replay", "max_goodput")


@dataclass(frozen=True)
class SearchConfig:
    """The maximum-goodput search (see metrics.max_goodput)."""

    target: float = 0.9
    lo: float = 1 / 64
    hi: float = 64.0
    start: float = 1.0
    iters: int = 8
    rtol: float = 0.02


@dataclass(frozen=True)
class SimSetup:
    model: ModelConfig
    hardware: HardwareConfig
    policy: PolicyConfig
    predictor: PredictorConfig
    workload: WorkloadConfig
    slo: SLOConfig
    sim: SimConfig = field(default_factory=SimConfig)
    mode: str = "replay"
    search: SearchConfig = field(default_factory=SearchConfig)


def policy_label(p: PolicyConfig) -> str:
    """A name that tells apart the variants a sweep produces from one policy file."""
    parts = [p.name, p.order, p.granularity]
    if p.granularity == "chunk":
        parts.append(str(p.chunk_size))
    if p.drop != "demote":
        parts.append(p.drop)
    if p.reject:
        parts.append("reject")
    return "/".join(parts)


def replay(setup: SimSetup, rate_scale: float | None = None,
           predictor: Predictor | None = None) -> tuple[dict, SimResult]:
    """Simulate the workload once (at `rate_scale`, default the workload's); summary + result."""
    pred = predictor or make_predictor(setup.predictor, setup.model, setup.hardware)
    wcfg = setup.workload
    if rate_scale is not None:
        wcfg = dataclasses.replace(wcfg, rate_scale=rate_scale)
    requests = build_requests(wcfg, setup.slo, pred.isolated_ttft)
    t0 = time.perf_counter()
    result = Simulator(setup.policy, pred, setup.sim).run(requests)
    summary = summarize(result.records)
    summary["rate_scale"] = wcfg.rate_scale
    summary["sim"] = {
        "wall_s": time.perf_counter() - t0,
        "scheduler_calls": result.scheduler_calls,
        "log_events": len(result.log),
        "end_time": result.end_time,
    }
    return summary, result


def header(setup: SimSetup) -> dict:
    """What was simulated: the fields every summary starts with."""
    return {
        "policy": setup.policy.name,
        "label": policy_label(setup.policy),
        "policy_config": dataclasses.asdict(setup.policy),
        "model": setup.model.name,
        "hardware": setup.hardware.name,
        "predictor": setup.predictor.kind,
        "workload": setup.workload.name,
        "slo": setup.slo.mode,
        "mode": setup.mode,
    }


def run(setup: SimSetup) -> dict:
    """The summary dict a simulate run writes (policy, requests, ttft_attainment, ...)."""
    if setup.mode not in MODES:
        raise ValueError(f"unknown mode {setup.mode!r}; known: {MODES}")
    pred = make_predictor(setup.predictor, setup.model, setup.hardware)
    head = header(setup)
    if setup.mode == "replay":
        summary, _ = replay(setup, predictor=pred)
        return head | summary
    s = setup.search
    found = max_goodput(lambda scale: replay(setup, scale, pred)[0], lo=s.lo, hi=s.hi,
                        target=s.target, iters=s.iters, start=s.start, rtol=s.rtol)
    best = found.get("best") or {}
    return head | best | {
        "max_goodput_rps": found["max_goodput_rps"],
        "max_rate_scale": found["max_rate_scale"],
        "target": s.target,
        "points": found["points"],
    }
