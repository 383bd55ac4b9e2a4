"""The simulated executor: where the running job is in time, without an event per operator.

A running forward (a whole batch, or one chunk) is anchored at (start time, ops done then);
its per-operator costs come from the predictor, so the time of any operator boundary is
`start + prefix(k) - prefix(k0)`, and the first preemption point after a moment is a bisection
over those prefix sums. Must not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from flowprefill.core import Granularity, Job
from flowprefill.predictor import ForwardCost


def is_preemption_point(k: int, num_ops: int, granularity: Granularity) -> bool:
    """May a job be suspended after k operators? (k = 0 and the end are always points.)"""
    if k in (0, num_ops) or granularity == Granularity.OPERATOR:
        return True
    if granularity == Granularity.LAYER:
        return k % 2 == 1  # after embed, after each layer's MLP
    return False


@dataclass
class Running:
    """The job on the simulated device and its current forward, anchored in time."""

    job: Job
    cost: ForwardCost  # the current forward: the whole batch, or the job's current chunk
    start: float  # time at which operator `start_ops` begins
    start_ops: int

    @property
    def stop(self) -> float:
        """When the current forward ends (the job completes, or its chunk ends)."""
        return self.start + self.cost.total - self.cost.prefix(self.start_ops)

    def next_point(self, t: float, granularity: Granularity) -> tuple[float, int]:
        """(time, ops done) of the first preemption point at or after time t."""
        k = self.cost.ops_after(self.start_ops, t - self.start)
        while not is_preemption_point(k, self.cost.num_ops, granularity):
            k += 1
        return self.at(k), k

    def at(self, k: int) -> float:
        return self.start + self.cost.prefix(k) - self.cost.prefix(self.start_ops)

    def advance(self, k: int) -> None:
        """Record that the first k operators are done; re-anchor there (keeps floats exact)."""
        self.start, self.start_ops = self.at(k), k
        self.job.ops_done = k
