"""Hydra entry: simulate a scheduling policy on a workload and write the summary JSON.

Converts the composed config once into typed objects and calls `run`, which tests call
directly; everything below this file is Hydra-free.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from flowprefill.config import (  # noqa: E402
    HardwareConfig,
    LoggerConfig,
    ModelConfig,
    PolicyConfig,
    PredictorConfig,
    SimConfig,
    SLOConfig,
    WorkloadConfig,
    from_hydra,
    register_configs,
)
from flowprefill.metrics import make_sink  # noqa: E402
from flowprefill.sim.experiment import SearchConfig, SimSetup, header, replay  # noqa: E402
from flowprefill.sim.experiment import run as run_setup  # noqa: E402


def setup_from(cfg: DictConfig) -> SimSetup:
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
    )


def run(setup: SimSetup, out: str | Path | None = None,
        events_out: str | Path | None = None) -> dict[str, Any]:
    """Simulate; write the summary to `out` (and the event log to `events_out`) if given."""
    if events_out is not None and setup.mode == "replay":
        summary, result = replay(setup)
        summary = header(setup) | summary
        with open(events_out, "w") as f:
            for entry in result.log:
                f.write(json.dumps(entry) + "\n")
    else:
        summary = run_setup(setup)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(summary, indent=2, default=str))
    return summary


register_configs()


@hydra.main(config_path="../conf", config_name="simulate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    out = cfg.out if cfg.out is not None else run_dir / "summary.json"
    summary = run(setup_from(cfg), out, cfg.events_out)
    with make_sink(from_hydra(LoggerConfig, cfg.logger), run_dir) as sink:
        sink.log_config(OmegaConf.to_container(cfg, resolve=True))
        sink.log_metrics(summary)
    keys = ("label", "requests", "ttft_attainment", "goodput_rps", "max_goodput_rps",
            "max_rate_scale")
    print(json.dumps({k: summary[k] for k in keys if k in summary}))


if __name__ == "__main__":
    main()
