"""Assembling an engine from typed configs (used by serve.py, runners and tests)."""

from __future__ import annotations

from typing import Any, TypeVar

from flowprefill.config import (
    AUTO_HARDWARE,
    EngineConfig,
    HardwareConfig,
    ModelConfig,
    PolicyConfig,
    PredictorConfig,
    from_hydra,
    load_option,
)
from flowprefill.engine.local import LocalEngine
from flowprefill.executor import make_runner
from flowprefill.executor.device import hardware_preset
from flowprefill.model.tokenizer import load_tokenizer
from flowprefill.predictor import make_predictor

E = TypeVar("E", bound=LocalEngine)


def resolve_hardware(hardware: HardwareConfig, engine: EngineConfig) -> HardwareConfig:
    """`hardware=auto`: the preset of the machine a resolved engine runs on."""
    if hardware.name != AUTO_HARDWARE:
        return hardware
    return from_hydra(HardwareConfig, load_option("hardware", hardware_preset(engine)))


def build_local_engine(model: ModelConfig, engine: EngineConfig, policy: PolicyConfig,
                       predictor: PredictorConfig, hardware: HardwareConfig,
                       max_decode_batch: int = 64, engine_cls: type[E] = LocalEngine,
                       **kwargs: Any) -> E:
    """A colocated engine (or, via `engine_cls`, a `deploy=pd` prefill-only or decode-only
    one), not yet started. The predictor prices the resolved model (a checkpoint's
    config.json wins over the preset). With `engine.tp > 1` the runner is rank 0 of a
    tensor-parallel group; if a rank dies, every request in flight fails with its message."""
    runner = make_runner(model, engine)
    try:
        resolved, engine = runner.model_cfg, runner.engine_cfg
        hardware = resolve_hardware(hardware, engine)
        eng = engine_cls(runner, load_tokenizer(resolved), policy,
                         make_predictor(predictor, resolved, hardware, engine),
                         model.served_name, max_decode_batch, hardware=hardware.name, **kwargs)
    except BaseException:
        runner.close()
        raise
    runner.on_failure(eng.fail_all)
    return eng
