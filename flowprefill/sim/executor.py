"""The simulated device: where the running prefill is in time, without an event per unit.

The running job's current pass is anchored at (start time, units of the pass done then);
its unit costs come from the truth cost model, so the end of any unit is `start + prefix(k) -
prefix(k0)`, and the first preemption point after a moment is a bisection over those prefix
sums and the plan's point rule (`core.plan`). Must not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from flowprefill.core import Granularity, Job
from flowprefill.predictor import Predictor, UnitCosts


@dataclass
class Running:
    """The job on the simulated device, anchored in time within its current pass."""

    job: Job
    truth: Predictor
    start: float  # time at which unit `start_unit` of the current pass begins
    done: int  # units of the job done at `start`
    costs: UnitCosts = None  # the current pass's unit costs
    first: int = 0  # job-unit index where the current pass begins

    def __post_init__(self) -> None:
        self._anchor_pass()

    def _anchor_pass(self) -> None:
        p, _ = self.job.plan.locate(self.done)
        self.first = self.job.plan.starts[p]
        self.costs = self.truth.units(self.job.plan.passes[p])

    @property
    def stop(self) -> float:
        """When the current pass ends (the job completes, or its chunk ends)."""
        return self.at(self.first + self.costs.num_units)

    def at(self, done: int) -> float:
        """When the job will have `done` units completed (within the current pass)."""
        c = self.costs
        return self.start + c.prefix(done - self.first) - c.prefix(self.done - self.first)

    def next_point(self, t: float, granularity: Granularity) -> int:
        """Units done at the first preemption point at or after time t (within the pass)."""
        u0 = self.done - self.first
        k = self.first + self.costs.units_after(u0, t - self.start)
        end = self.first + self.costs.num_units
        while k < end and not self.job.plan.is_point(k, granularity):
            k += 1
        return k

    def longest(self) -> float:
        return self.costs.longest

    def advance(self, done: int) -> None:
        """Record that `done` units are complete; re-anchor there (keeps floats exact). At a
        pass end the next pass is anchored (the caller checks for the job's end first)."""
        self.start, self.done = self.at(done), done
        if done < self.job.plan.num_units and done == self.first + self.costs.num_units:
            self._anchor_pass()
