"""Choosing which work to sacrifice when not every deadline can be met.

Moore-Hodgson: walk candidates in earliest-deadline order accumulating predicted completion
times; whenever the running completion passes the current candidate's deadline, drop the
longest candidate taken so far. It maximizes the number of deadlines met for one machine
with all work available now, which is the queue's situation at each scheduling event.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable, Iterable


def moore_hodgson(items: Iterable[tuple[float, float, Hashable]], start: float) -> list[Hashable]:
    """Items (deadline, cost, ident) runnable from time `start`; returns the idents to drop.

    Ties: equal deadlines keep the input order; among equally long jobs the later one in
    deadline order is dropped.
    """
    order = sorted(enumerate(items), key=lambda e: (e[1][0], e[0]))
    t = start
    taken: list[tuple[float, int, Hashable]] = []  # max-heap on cost via negation
    dropped: list[Hashable] = []
    for pos, (deadline, cost, ident) in order:
        t += cost
        heapq.heappush(taken, (-cost, -pos, ident))
        if t > deadline:
            neg_cost, _, victim = heapq.heappop(taken)
            t += neg_cost
            dropped.append(victim)
    return dropped


def edf_slack(work: Iterable[tuple[float, float]], start: float) -> float:
    """The least slack of (deadline, cost) work run earliest-deadline-first from `start`
    (inf for none)."""
    slack, t = math.inf, start
    for deadline, cost in sorted(work):
        t += cost
        slack = min(slack, deadline - t)
    return slack
