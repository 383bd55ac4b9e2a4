"""Discrete-event simulator: the real scheduler, a simulated executor charged from the
predictor, a virtual clock. Must not import torch or the model."""

from flowprefill.sim.executor import Running
from flowprefill.sim.simulator import SimResult, Simulator

__all__ = ["Running", "SimResult", "Simulator"]
