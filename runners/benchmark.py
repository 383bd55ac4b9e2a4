"""`python runners/benchmark.py url=... [overrides]`: replay a workload against a live server.

Warm-up requests first, then the timed replay with a progress bar; writes the same summary
JSON as the simulator (plus per-request records) to the run directory and to the logger.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

import httpx
import hydra
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from flowprefill.config import (
    HardwareConfig,
    LoggerConfig,
    MetricsConfig,
    ModelConfig,
    PredictorConfig,
    SLOConfig,
    WorkloadConfig,
    from_hydra,
    register_configs,
)
from flowprefill.metrics import make_sink, summarize
from flowprefill.predictor import make_predictor
from flowprefill.workload import build_requests
from flowprefill.workload.replay import ReplaySettings, replay, warm_up


@dataclass(frozen=True)
class BenchmarkSpec:
    replay: ReplaySettings
    workload: WorkloadConfig
    slo: SLOConfig
    model: ModelConfig
    hardware: HardwareConfig
    predictor: PredictorConfig
    logger: LoggerConfig
    run_dir: Path
    label: str | None = None
    warmup: int = 3  # requests sent (and not recorded) before the replay
    metrics: MetricsConfig = MetricsConfig()


def run(spec: BenchmarkSpec, config: dict | None = None) -> dict:
    """Replay the workload; return the summary (also written to `run_dir`)."""
    predictor = make_predictor(spec.predictor, spec.model, spec.hardware)
    requests = build_requests(spec.workload, spec.slo, predictor.isolated_ttft)
    if not requests:
        raise ValueError("the workload has no requests (check workload.start/end/max_requests)")
    if spec.warmup:
        asyncio.run(warm_up(spec.replay, spec.warmup))
    with tqdm(total=len(requests), desc="replay", unit="req") as bar:
        records = asyncio.run(replay(requests, spec.replay, progress=bar.update))
    summary = summarize(records, warmup=spec.metrics.warmup_requests)
    summary["policy"] = spec.label
    summary["workload"] = spec.workload.name
    summary["rate_scale"] = spec.workload.rate_scale
    summary["slo_scale"] = spec.slo.scale
    summary["server"] = server = _server_stats(spec.replay)
    # the client cannot see preemptions; the server counts them and times their latency
    for key in ("preemptions", "preemption_latency_p50", "preemption_latency_p99"):
        if key in server:
            summary[key] = server[key]
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    with make_sink(spec.logger, spec.run_dir) as sink:
        sink.log_config(config or {})
        sink.log_metrics(summary)
        sink.log_records(records)
    return summary


def _server_stats(s: ReplaySettings) -> dict:
    """The server's own counters after the run (preemption latency is measured there)."""
    headers = {"Authorization": f"Bearer {s.api_key}"} if s.api_key else {}
    try:
        return httpx.get(f"{s.url}/internal/stats", headers=headers, timeout=10).json()
    except (httpx.HTTPError, ValueError):
        return {}


def spec_from_hydra(cfg: DictConfig, run_dir: Path) -> BenchmarkSpec:
    model = from_hydra(ModelConfig, cfg.model)
    return BenchmarkSpec(
        replay=ReplaySettings(url=cfg.url, model=cfg.served_model or model.served_name,
                              max_output_tokens=cfg.max_output_tokens, timeout=cfg.timeout,
                              seed=cfg.workload.seed, api_key=cfg.api_key),
        workload=from_hydra(WorkloadConfig, cfg.workload), slo=from_hydra(SLOConfig, cfg.slo),
        model=model, hardware=from_hydra(HardwareConfig, cfg.hardware),
        predictor=from_hydra(PredictorConfig, cfg.predictor),
        logger=from_hydra(LoggerConfig, cfg.logger), run_dir=run_dir, label=cfg.label,
        warmup=cfg.warmup, metrics=from_hydra(MetricsConfig, cfg.metrics))


register_configs()


@hydra.main(version_base=None, config_path="../conf", config_name="benchmark")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    summary = run(spec_from_hydra(cfg, run_dir), OmegaConf.to_container(cfg, resolve=True))
    out = Path(cfg.out) if cfg.out else run_dir / "summary.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2, default=str))
    print(f"ttft attainment {summary['ttft_attainment']:.3f}  goodput "
          f"{summary['goodput_rps']:.3f} req/s  -> {out}")


if __name__ == "__main__":
    main()
