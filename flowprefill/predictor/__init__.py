"""TTFT predictors: per-operator costs of prefill work, for the scheduler and the simulator.

Kinds: `roofline` (analytic, from model and hardware configs), `fitted` (per-operator linear
models from `train_predictor.py`) and `cubic` (the paper's baseline, from the same artifact
directory); any of them wrapped in an online correction when `correction > 0`. Also owns the
profile format and the fitting code `train_predictor.py` uses. Must not import torch, the
model or the engine.
"""

from __future__ import annotations

from flowprefill.config import (
    AUTO_HARDWARE,
    EngineConfig,
    HardwareConfig,
    ModelConfig,
    PredictorConfig,
)
from flowprefill.predictor.base import Predictor
from flowprefill.predictor.correction import CorrectedPredictor, OnlineCorrection
from flowprefill.predictor.cost import OP_KINDS, BatchShape, ForwardCost, UnitCosts, op_kind
from flowprefill.predictor.cubic import CubicPredictor
from flowprefill.predictor.fitted import AUTO, FittedPredictor, artifact_dir, save_artifact
from flowprefill.predictor.profile_data import ENGINE_SETTINGS
from flowprefill.predictor.roofline import RooflinePredictor

ORACLE = "oracle"  # not a predictor: the simulator schedules with its truth cost model


def _roofline(cfg: PredictorConfig, model: ModelConfig, hardware: HardwareConfig,
              engine: EngineConfig | None, tp: int) -> Predictor:
    return RooflinePredictor(model, hardware, tp)


def _artifact(cls):
    """A loader of an artifact-backed kind (`path: auto` looks it up by model and hardware
    and checks the engine settings it was profiled with; without an engine, as in a
    simulation, the tensor-parallel degree still)."""

    def load(cfg: PredictorConfig, model: ModelConfig, hardware: HardwareConfig,
             engine: EngineConfig | None, tp: int) -> Predictor:
        expect = settings = None
        path = cfg.path
        if path == AUTO:  # by name: it must have been fitted for this model and machine
            path = str(artifact_dir(model.name, hardware.name))
            expect = {"model": model.name, "hardware": hardware.name}
            # ... and profiled with this engine's settings (a simulation has only its tp)
            settings = ({k: getattr(engine, k) for k in ENGINE_SETTINGS}
                        if engine is not None else {"tp": tp})
        try:
            return cls.load(path, num_layers=model.num_layers, expect=expect,
                            settings=settings)
        except FileNotFoundError:
            if cfg.on_missing == "roofline":  # the explicit opt-in to run without one
                return RooflinePredictor(model, hardware, tp)
            raise

    return load


# The registry of predictor kinds (`predictor.kind`): adding one is a class and a line here.
PREDICTORS = {
    "roofline": _roofline,
    "fitted": _artifact(FittedPredictor),
    "cubic": _artifact(CubicPredictor),
}
KINDS = (*PREDICTORS, ORACLE)


def make_predictor(cfg: PredictorConfig, model: ModelConfig, hardware: HardwareConfig,
                   engine: EngineConfig | None = None, tp: int | None = None) -> Predictor:
    """The predictor a config names (`engine`: the engine it will price, when there is one;
    an artifact found by `path: auto` must have been profiled with its settings). `tp`: the
    tensor-parallel ranks priced (default: the engine's, else 1)."""
    tp = tp if tp is not None else (engine.tp if engine is not None else 1)
    if engine is not None and engine.tp != tp:
        raise ValueError(f"make_predictor: tp={tp} but the engine has engine.tp={engine.tp}")
    if hardware.name == AUTO_HARDWARE:
        raise ValueError("hardware=auto is decided by the engine it runs on; without one "
                         "(a simulation) name a preset: hardware=a800 | h100 | h200 | cpu | "
                         "cpu_bf16")
    make = PREDICTORS.get(cfg.kind)
    if make is None:
        hint = " (the simulator's: it has a truth model)" if cfg.kind == ORACLE else ""
        raise ValueError(f"predictor.kind: {cfg.kind!r} is not one of "
                         f"{' | '.join(PREDICTORS)}{hint}")
    pred = make(cfg, model, hardware, engine, tp)
    if cfg.correction > 0.0:
        pred = CorrectedPredictor(pred, OnlineCorrection(cfg.correction))
    return pred


__all__ = [
    "ENGINE_SETTINGS",
    "KINDS",
    "ORACLE",
    "PREDICTORS",
    "OP_KINDS",
    "BatchShape",
    "CorrectedPredictor",
    "CubicPredictor",
    "FittedPredictor",
    "ForwardCost",
    "OnlineCorrection",
    "Predictor",
    "RooflinePredictor",
    "UnitCosts",
    "artifact_dir",
    "make_predictor",
    "op_kind",
    "save_artifact",
]
