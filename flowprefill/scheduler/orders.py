"""Request orders by name: the one registry a policy's `order` field looks up.

An order is a static sort key over (arrival, deadline, SLO class), plus whether it is
slack-aware. Slack-aware orders rank candidates predicted to miss their deadline
(slack = time to deadline - predicted remaining prefill < 0) below every feasible one; that
split is applied by the scheduler, so the key itself never needs the clock.
Adding an order: write its key function and add one line to ORDERS.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from flowprefill.config import PolicyConfig

Key = tuple[float, ...]


@dataclass(frozen=True)
class Order:
    key: Callable[[float, float, str, PolicyConfig], Key]  # (arrival, deadline, class, cfg)
    slack_aware: bool = False


def _fcfs(arrival: float, deadline: float, slo_class: str, cfg: PolicyConfig) -> Key:
    return (arrival,)


def _edf(arrival: float, deadline: float, slo_class: str, cfg: PolicyConfig) -> Key:
    return (deadline, arrival)


def _priority(arrival: float, deadline: float, slo_class: str, cfg: PolicyConfig) -> Key:
    # Classes without a configured priority go after every configured one, FCFS among them.
    return (float(cfg.class_priority.get(slo_class, math.inf)), arrival)


ORDERS: Mapping[str, Order] = MappingProxyType({
    "fcfs": Order(_fcfs),
    "edf": Order(_edf),
    "sedf": Order(_edf, slack_aware=True),  # FlowPrefill's S-EDF
    "priority": Order(_priority),
})


def get_order(name: str) -> Order:
    try:
        return ORDERS[name]
    except KeyError:
        raise ValueError(f"unknown order {name!r}; known: {sorted(ORDERS)}") from None
