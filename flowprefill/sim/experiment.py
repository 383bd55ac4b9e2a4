"""One simulated experiment from typed configs: replay a workload once, or search for the
maximum goodput over `rate_scale`. What `runners/simulate.py` calls after converting Hydra's
config; tests call it directly. Must not import torch or Hydra.

Two cost models may take part: the scheduler's `predictor` and the `truth` the simulated
device is charged from (and SLOs are priced with). Without `truth` they are one model;
`predictor.kind=oracle` schedules with the truth itself (the predictor ablation's ceiling).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from flowprefill.config import (
    HardwareConfig,
    MetricsConfig,
    ModelConfig,
    PolicyConfig,
    PredictorConfig,
    SimConfig,
    SLOConfig,
    WorkloadConfig,
)
from flowprefill.metrics import max_goodput, summarize
from flowprefill.predictor import ORACLE, Predictor, make_predictor
from flowprefill.sim.costs import granularity_costs
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
    truth: PredictorConfig | None = None  # None: the device is charged from `predictor`
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    tp: int = 1  # tensor-parallel ranks of the simulated worker (engine.tp): priced per rank


@dataclass(frozen=True)
class CostModels:
    """The scheduler's predictor and the truth the device is charged from (may be one)."""

    predictor: Predictor
    truth: Predictor


def cost_models(setup: SimSetup) -> CostModels:
    """Build the predictor and the truth a setup names (oracle: the truth for both)."""
    truth = (make_predictor(setup.truth, setup.model, setup.hardware, tp=setup.tp)
             if setup.truth is not None else None)
    if setup.predictor.kind == ORACLE:
        if truth is None:
            raise ValueError("predictor=oracle schedules with the truth cost model; name one "
                             "with truth.kind=roofline (or truth.kind=fitted truth.path=...)")
        return CostModels(truth, truth)
    pred = make_predictor(setup.predictor, setup.model, setup.hardware, tp=setup.tp)
    return CostModels(pred, truth or pred)


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
           models: CostModels | None = None) -> tuple[dict, SimResult]:
    """Simulate the workload once (at `rate_scale`, default the workload's); summary + result."""
    models = models or cost_models(setup)
    wcfg = setup.workload
    if rate_scale is not None:
        wcfg = dataclasses.replace(wcfg, rate_scale=rate_scale)
    # SLOs are priced by the truth, so every predictor of an ablation faces the same SLOs.
    requests = build_requests(wcfg, setup.slo, models.truth.isolated_ttft)
    t0 = time.perf_counter()
    result = Simulator(setup.policy, models.predictor, setup.sim, models.truth).run(requests)
    summary = summarize(result.records, warmup=setup.metrics.warmup_requests)
    summary["rate_scale"] = wcfg.rate_scale
    summary["granularity"] = granularity_costs(requests, setup.policy, models.truth)
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
        "tp": setup.tp,
        "predictor": setup.predictor.kind,
        "truth": setup.truth.kind if setup.truth is not None else setup.predictor.kind,
        "workload": setup.workload.name,
        "slo": setup.slo.mode,
        "slo_scale": setup.slo.scale,
        "mode": setup.mode,
    }


def run(setup: SimSetup) -> dict:
    """The summary dict a simulate run writes (policy, requests, ttft_attainment, ...)."""
    return run_with_result(setup)[0]


def run_with_result(setup: SimSetup) -> tuple[dict, SimResult | None]:
    """The summary, and the simulation it describes (max_goodput: the best probe's; None
    when no probe met the target)."""
    if setup.mode not in MODES:
        raise ValueError(f"unknown mode {setup.mode!r}; known: {MODES}")
    models = cost_models(setup)
    head = header(setup)
    if setup.mode == "replay":
        summary, result = replay(setup, models=models)
        return head | summary, result
    s = setup.search
    kept: dict[float, SimResult] = {}  # only the highest passing probe (results are large)

    def probe(scale: float) -> dict:
        summary, result = replay(setup, scale, models)
        if summary["ttft_attainment"] >= s.target and all(scale > k for k in kept):
            kept.clear()
            kept[scale] = result
        return summary

    found = max_goodput(probe, lo=s.lo, hi=s.hi, target=s.target, iters=s.iters,
                        start=s.start, rtol=s.rtol)
    best = found.get("best") or {}
    summary = head | best | {
        "max_goodput_rps": found["max_goodput_rps"],
        "max_rate_scale": found["max_rate_scale"],
        "target": s.target,
        "points": found["points"],
    }
    return summary, kept.get(found["max_rate_scale"])
