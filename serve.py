"""`python serve.py [overrides]`: start the serving stack the config describes.

Hydra entry point: converts the config once into typed objects and calls `run`.
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from flowprefill.config import (
    EngineConfig,
    HardwareConfig,
    ModelConfig,
    PolicyConfig,
    PredictorConfig,
    ServerConfig,
    from_hydra,
    register_configs,
)

log = logging.getLogger("flowprefill.serve")


def run(model: ModelConfig, engine: EngineConfig, policy: PolicyConfig,
        predictor: PredictorConfig, hardware: HardwareConfig, server: ServerConfig,
        max_decode_batch: int = 64) -> None:
    import uvicorn

    from flowprefill.engine.build import build_local_engine
    from flowprefill.server.app import build_app

    local = build_local_engine(model, engine, policy, predictor, hardware, max_decode_batch)
    local.start()
    log.info("serving %s (policy %s) on http://%s:%d", model.name, policy.name, server.host,
             server.port)
    try:
        uvicorn.run(build_app(local, server), host=server.host, port=server.port,
                    log_level="info")
    finally:
        local.shutdown()


register_configs()


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run(from_hydra(ModelConfig, cfg.model), from_hydra(EngineConfig, cfg.engine),
        from_hydra(PolicyConfig, cfg.policy), from_hydra(PredictorConfig, cfg.predictor),
        from_hydra(HardwareConfig, cfg.hardware), from_hydra(ServerConfig, cfg.server),
        cfg.max_decode_batch)


if __name__ == "__main__":
    main()
