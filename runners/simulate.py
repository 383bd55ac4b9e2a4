"""Hydra entry: simulate a scheduling policy on a workload and write the summary JSON.

Converts the composed config once into typed objects and calls `run`, which tests call
directly; everything below this file is Hydra-free.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from flowprefill.config import (  # noqa: E402
    EngineConfig,
    HardwareConfig,
    LoggerConfig,
    MetricsConfig,
    ModelConfig,
    PolicyConfig,
    PredictorConfig,
    SimConfig,
    SLOConfig,
    WorkloadConfig,
    from_hydra,
    register_configs,
)
from flowprefill.metrics import Sink, make_sink  # noqa: E402
from flowprefill.sim.experiment import (  # noqa: E402
    SearchConfig,
    SimResult,
    SimSetup,
    cost_models,
    run_with_result,
)


def setup_from(cfg: DictConfig) -> SimSetup:
    truth = cfg.get("truth")
    return SimSetup(
        model=from_hydra(ModelConfig, cfg.model),
        hardware=from_hydra(HardwareConfig, cfg.hardware),
        policy=from_hydra(PolicyConfig, cfg.policy),
        predictor=from_hydra(PredictorConfig, cfg.predictor),
        workload=from_hydra(WorkloadConfig, cfg.workload),
        slo=from_hydra(SLOConfig, cfg.slo),
        sim=from_hydra(SimConfig, cfg.sim),
        mode=cfg.mode,
        search=from_hydra(SearchConfig, cfg.search),
        truth=from_hydra(PredictorConfig, truth) if truth and truth.kind else None,
        metrics=from_hydra(MetricsConfig, cfg.metrics),
        # the engine group says how the simulated worker runs; only its tp prices anything
        tp=from_hydra(EngineConfig, cfg.engine).tp if "engine" in cfg else 1,
    )


def run(setup: SimSetup, out: str | Path | None = None,
        events_out: str | Path | None = None, extra: dict | None = None,
        sink: Sink | None = None) -> dict[str, Any]:
    """Simulate; write the summary (plus `extra` fields) to `out` and the event log to
    `events_out` (replay mode) if given; log summary, tables and records to `sink`."""
    summary, result = run_with_result(setup)
    summary = (extra or {}) | summary
    if events_out is not None and result is not None and setup.mode == "replay":
        with open(events_out, "w") as f:
            for entry in result.log:
                f.write(json.dumps(entry) + "\n")
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(summary, indent=2, default=str))
    if sink is not None:
        log_run(sink, setup, summary, result)
    return summary


def log_run(sink: Sink, setup: SimSetup, summary: dict, result: SimResult | None) -> None:
    """Summary metrics, per-class and search tables, per-request records and predictions."""
    sink.log_metrics(summary)
    by_class = summary.get("by_class") or {}  # absent when no search probe met the target
    sink.log_table("by_class", [{"slo_class": k, **v} for k, v in by_class.items()])
    if summary.get("points"):
        sink.log_table("search_points", summary["points"])
    if result is None:
        return
    sink.log_records(result.records)
    models = cost_models(setup)  # predicted (scheduler's model) vs truth isolated TTFT
    sink.log_table("predictions", [
        {"request_id": r.request_id, "prompt_len": r.prompt_len,
         "predicted_ttft": models.predictor.isolated_ttft(r.prompt_len),
         "isolated_ttft": models.truth.isolated_ttft(r.prompt_len), "ttft": r.ttft}
        for r in result.records])


register_configs()


@hydra.main(config_path="../conf", config_name="simulate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    out = cfg.out if cfg.out is not None else run_dir / "summary.json"
    extra = {"experiment": cfg.exp.name, "runs_on": cfg.target,
             "arm": hc.runtime.choices.get("arm")}
    logger = from_hydra(LoggerConfig, cfg.logger)
    if logger.name is None:  # W&B run name: experiment / arm or job
        logger = dataclasses.replace(logger, name=f"{cfg.exp.name}/{run_dir.name}",
                                     group=logger.group or cfg.exp.name)
    with make_sink(logger, run_dir) as sink:
        sink.log_config(OmegaConf.to_container(cfg, resolve=True))
        summary = run(setup_from(cfg), out, cfg.events_out, extra,
                      sink if cfg.log_records else None)
        if not cfg.log_records:
            sink.log_metrics(summary)
    keys = ("label", "requests", "ttft_attainment", "goodput_rps", "max_goodput_rps",
            "max_rate_scale")
    print(json.dumps({k: summary[k] for k in keys if k in summary}))


if __name__ == "__main__":
    main()
