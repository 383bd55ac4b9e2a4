"""TTFT predictors: per-operator costs of prefill work, for the scheduler and the simulator.

Kinds: `roofline` (analytic, from model and hardware configs) and `fitted` (an artifact from
`train_predictor.py`). Must not import torch, the model or the engine.
"""

from __future__ import annotations

from flowprefill.config import HardwareConfig, ModelConfig, PredictorConfig
from flowprefill.predictor.base import Predictor, chunk_shape, job_shape
from flowprefill.predictor.cost import OP_KINDS, BatchShape, ForwardCost, op_kind
from flowprefill.predictor.fitted import FittedPredictor, save_artifact
from flowprefill.predictor.roofline import RooflinePredictor


def make_predictor(cfg: PredictorConfig, model: ModelConfig,
                   hardware: HardwareConfig) -> Predictor:
    """The predictor a config names."""
    if cfg.kind == "roofline":
        return RooflinePredictor(model, hardware)
    if cfg.kind == "fitted":
        return FittedPredictor.load(cfg.path, num_layers=model.num_layers)
    raise ValueError(f"unknown predictor kind {cfg.kind!r} (roofline | fitted)")


__all__ = [
    "OP_KINDS",
    "BatchShape",
    "FittedPredictor",
    "ForwardCost",
    "Predictor",
    "RooflinePredictor",
    "chunk_shape",
    "job_shape",
    "make_predictor",
    "op_kind",
    "save_artifact",
]
