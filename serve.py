"""`python serve.py [overrides]`: start the serving stack the config describes.

Hydra entry point: converts the config once into typed objects and calls `run`.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import hydra
from omegaconf import DictConfig

from flowprefill.config import (
    DeployConfig,
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


def check_deploy(engine: EngineConfig, deploy: DeployConfig | None) -> None:
    """Settings that cannot go together, named before anything starts."""
    if deploy is not None and deploy.mode == "pd" and engine.tp > 1:
        raise ValueError(f"engine.tp={engine.tp} with deploy=pd is not supported: the KV "
                         "transfer moves one pool per worker, not one per tensor-parallel "
                         "rank; use deploy=colocated with engine.tp > 1, or engine.tp=1")


def run(model: ModelConfig, engine: EngineConfig, policy: PolicyConfig,
        predictor: PredictorConfig, hardware: HardwareConfig, server: ServerConfig,
        max_decode_batch: int = 64, deploy: DeployConfig | None = None) -> None:
    check_deploy(engine, deploy)
    if deploy is not None and deploy.mode == "pd":
        from flowprefill.server.pd_serve import run_pd

        run_pd(model, engine, policy, predictor, hardware, server, deploy, max_decode_batch)
        return
    if deploy is not None and deploy.mode != "colocated":
        raise ValueError(f"deploy.mode must be colocated | pd, not {deploy.mode!r}")
    import uvicorn

    from flowprefill.engine.build import build_local_engine
    from flowprefill.server.app import build_app

    local = build_local_engine(model, engine, policy, predictor, hardware, max_decode_batch)
    local.runner.on_failure(lambda message: _stop(message, server.grace_period))
    local.start()
    log.info("serving %s (policy %s) on http://%s:%d", model.served_name, policy.name, server.host,
             server.port)
    try:
        # SIGINT/SIGTERM: stop accepting, give in-flight requests `grace_period` seconds;
        # whatever is still running then is aborted by shutdown(), freeing its KV. uvicorn
        # re-raises the signal it caught once it has stopped: a no-op handler makes that a
        # clean exit (status 0) instead of death by signal.
        signal.signal(signal.SIGTERM, lambda *_: None)
        uvicorn.run(build_app(local, server), host=server.host, port=server.port,
                    log_level="info", timeout_graceful_shutdown=server.grace_period)
    finally:
        local.shutdown()
    if local.runner.failure is not None:  # a tensor-parallel rank died: not a clean exit
        raise SystemExit(f"serve.py: {local.runner.failure}")


def _stop(message: str, grace: float) -> None:
    """The runner cannot run any more (its requests have failed): stop serving as SIGTERM
    does, and exit non-zero; if the shutdown itself hangs (an engine thread stuck in a
    collective), exit anyway after the grace period."""
    log.error("stopping: %s", message)
    timer = threading.Timer(grace + 10.0, os._exit, args=(1,))
    timer.daemon = True
    timer.start()
    os.kill(os.getpid(), signal.SIGTERM)


register_configs()


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from flowprefill.config import NotShardable
    from flowprefill.executor.memory import ModelDoesNotFit
    from flowprefill.executor.tp_group import TPRankError

    try:  # a bad value is one clear line naming the key, not a stack trace
        configs = (from_hydra(ModelConfig, cfg.model), from_hydra(EngineConfig, cfg.engine),
                   from_hydra(PolicyConfig, cfg.policy),
                   from_hydra(PredictorConfig, cfg.predictor),
                   from_hydra(HardwareConfig, cfg.hardware), from_hydra(ServerConfig, cfg.server))
        deploy = from_hydra(DeployConfig, cfg.deploy) if "deploy" in cfg else None
        check_deploy(configs[1], deploy)
    except (KeyError, ValueError) as e:
        raise SystemExit(f"serve.py: {e}") from None
    try:
        run(*configs, cfg.max_decode_batch, deploy)
    except (ModelDoesNotFit, NotShardable, TPRankError) as e:  # refused or failed at start
        raise SystemExit(f"serve.py: {e}") from None


if __name__ == "__main__":
    main()
