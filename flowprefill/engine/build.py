"""Assembling an engine from typed configs (used by serve.py, runners and tests)."""

from __future__ import annotations

from typing import Any, TypeVar

from flowprefill.config import (
    EngineConfig,
    HardwareConfig,
    ModelConfig,
    PolicyConfig,
    PredictorConfig,
)
from flowprefill.engine.local import LocalEngine
from flowprefill.executor import ModelRunner
from flowprefill.model.tokenizer import load_tokenizer
from flowprefill.predictor import make_predictor

E = TypeVar("E", bound=LocalEngine)


def build_local_engine(model: ModelConfig, engine: EngineConfig, policy: PolicyConfig,
                       predictor: PredictorConfig, hardware: HardwareConfig,
                       max_decode_batch: int = 64, engine_cls: type[E] = LocalEngine,
                       **kwargs: Any) -> E:
    """A colocated engine (or, via `engine_cls`, a `deploy=pd` prefill-only or decode-only
    one), not yet started. The predictor prices the resolved model (a checkpoint's
    config.json wins over the preset)."""
    runner = ModelRunner(model, engine)
    resolved = runner.model_cfg
    return engine_cls(runner, load_tokenizer(resolved), policy,
                      make_predictor(predictor, resolved, hardware, engine), model.served_name,
                      max_decode_batch, **kwargs)
