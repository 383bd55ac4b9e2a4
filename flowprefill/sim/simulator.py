"""Discrete-event simulation of one prefill worker driven by the real scheduler.

A virtual clock, a heap of external events (arrivals, aborts; ties broken by time, kind, then
input order), and the simulated executor (executor.py). Events that reach a job running at
operator or layer granularity are seen at the next preemption point, as the real engine sees
them between operators; with none or chunk granularity the scheduler cannot switch mid-job, so
they are delivered at once. Each decision is applied at the time it is made, plus the
configured scheduling and switch overheads. Prefill only: the first token is the end of the
prefill, and the request then leaves the worker (its KV blocks are freed).
The device is charged from `truth` when given (the scheduler still plans with `predictor`),
so prediction error is visible; without it both are the same model (an oracle predictor).
Must not import torch.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from flowprefill.config import PolicyConfig, SimConfig
from flowprefill.core import (
    Abort,
    Arrival,
    Boundary,
    Completion,
    Decision,
    Event,
    Granularity,
    Request,
    VirtualClock,
)
from flowprefill.metrics import RequestRecord
from flowprefill.predictor import Predictor
from flowprefill.scheduler import BlockBudget, Scheduler
from flowprefill.sim.executor import Running

_ABORT, _ARRIVAL = 0, 1  # same-time order of external events


@dataclass
class SimResult:
    records: list[RequestRecord]
    log: list[tuple] = field(default_factory=list)  # (time, what, ...) in order; deterministic
    end_time: float = 0.0
    scheduler_calls: int = 0


class Simulator:
    def __init__(self, policy: PolicyConfig, predictor: Predictor,
                 sim: SimConfig | None = None, truth: Predictor | None = None) -> None:
        self.policy = policy
        self.predictor = predictor  # what the scheduler plans with
        self.truth = truth or predictor  # what the simulated device is charged
        self.cfg = sim or SimConfig()

    def run(self, requests: Sequence[Request],
            aborts: Sequence[tuple[float, str]] = ()) -> SimResult:
        """Replay `requests` (arrival times already set) and optional (time, request id) aborts."""
        return _Run(self, requests, aborts).go()


class _Run:
    """State of one simulation (kept apart so a Simulator can run many workloads)."""

    def __init__(self, sim: Simulator, requests: Sequence[Request],
                 aborts: Sequence[tuple[float, str]]) -> None:
        cfg = sim.cfg
        self.truth = sim.truth  # charges the device; the scheduler plans with sim.predictor
        self.cfg = cfg
        self.kv = BlockBudget(cfg.num_kv_blocks, cfg.block_size) if cfg.num_kv_blocks else None
        self.scheduler = Scheduler(sim.policy, sim.predictor, self.kv)
        self.granularity = Granularity(sim.policy.granularity)
        self.clock = VirtualClock(min((r.arrival for r in requests), default=0.0))
        self.heap: list[tuple[float, int, int, Event]] = []
        for i, r in enumerate(requests):
            self.heap.append((r.arrival, _ARRIVAL, i, Arrival(r)))
        for i, (t, rid) in enumerate(aborts):
            self.heap.append((t, _ABORT, i, Abort(rid)))
        heapq.heapify(self.heap)
        self.records = {r.request_id: _record(r) for r in requests}
        self.log: list[tuple] = []
        self.work: Running | None = None
        self.blocks: dict[int, int] = {}  # job id -> KV blocks it holds
        self.calls = 0

    # ------------------------------------------------------------------ main loop

    def go(self) -> SimResult:
        op_level = self.granularity in (Granularity.OPERATOR, Granularity.LAYER)
        while True:
            t_ext = self.heap[0][0] if self.heap else math.inf
            stop = self.work.stop if self.work else math.inf
            if t_ext == math.inf and stop == math.inf:
                break
            if stop <= t_ext:
                self._forward_done(stop)
            elif op_level and self.work is not None:
                t, k = self.work.next_point(t_ext, self.granularity)
                if t >= stop:
                    self._forward_done(stop)
                    continue
                self.work.advance(k)
                t = self._advance(t)
                while self.heap and self.heap[0][0] <= t:  # everything queued by this boundary
                    self._deliver(heapq.heappop(self.heap)[3], t)
            else:
                t, _, _, event = heapq.heappop(self.heap)
                self._deliver(event, max(t, self.clock.now()))
        return SimResult(list(self.records.values()), self.log, self.clock.now(), self.calls)

    def _advance(self, t: float) -> float:
        """Move the clock to t, absorbing float rounding: times computed from re-anchored
        prefix sums may land an ulp before the clock (a real step back still raises)."""
        now = self.clock.now()
        if now - 1e-9 * max(1.0, abs(now)) <= t < now:
            t = now
        self.clock.advance_to(t)
        return t

    def _deliver(self, event: Event, t: float) -> None:
        t = self._advance(t)
        if isinstance(event, Arrival):
            self.log.append((t, "arrive", event.request.request_id))
        else:
            self.log.append((t, "abort", event.request_id))
        trigger = event.request.arrival if isinstance(event, Arrival) else t
        self._apply(self._call(event, t), t, trigger)

    def _forward_done(self, t: float) -> None:
        """The running forward ended at t: the job completed, or one of its chunks did."""
        t = self._advance(t)
        work = self.work
        job = work.job
        chunk_start = work.at(0)
        work.advance(work.cost.num_ops)
        if job.chunk_size is not None:
            job.tokens_done = min(job.tokens_done + job.chunk_size, job.num_tokens)
        if job.chunk_size is None or job.tokens_done >= job.num_tokens:
            self.log.append((t, "complete", job.job_id))
            for r in job.requests:
                self.records[r.request_id].first_token_time = t
                self.records[r.request_id].finish_time = t
            self._free(job.job_id)
            self.work = None
            self._apply(self._call(Completion(job.job_id), t), t, t)
            return
        self.log.append((t, "boundary", job.job_id, job.tokens_done))
        job.ops_done = 0
        self.work = Running(job, self.truth.job_forward(job), t, 0)
        self._apply(self._call(Boundary(job.job_id), t), t, chunk_start)

    def _call(self, event: Event, t: float) -> Decision:
        self.calls += 1
        return self.scheduler.on_event(event, t)

    # ------------------------------------------------------------------ applying decisions

    def _apply(self, d: Decision, t: float, trigger: float) -> None:
        """Make the simulated device do what the decision says, from time t.

        `trigger`: the earliest moment the switch could have been asked for (the arrival that
        caused the event, or the start of the chunk that just ended); preemption latency runs
        from it, or from the newest arrival in the job switched to if that is later.
        """
        for rid in d.rejected:
            self.records[rid].rejected = True
            self.log.append((t, "reject", rid))
        for jid in d.drop:
            self.log.append((t, "drop", jid))
            self._free(jid)
            if self.work is not None and self.work.job.job_id == jid:
                self.work = None
        overhead = self.cfg.schedule_overhead
        suspended = []
        for jid in d.suspend:
            if self.work is None or self.work.job.job_id != jid:
                raise RuntimeError(f"suspend of job {jid}, which is not running")
            job = self.work.job
            self.log.append((t, "suspend", jid, job.ops_done, job.tokens_done))
            suspended.append(job)
            self.work = None
        if d.run is None:
            if self.work is not None:
                raise RuntimeError("decision idles the device but did not suspend the job")
            return
        if self.work is not None and d.run is self.work.job:
            self.work.start += overhead  # the scheduler call stalled the device
            return
        if self.work is not None:
            raise RuntimeError("decision switches jobs without suspending the running one")
        job = d.run
        if suspended or job.started:
            overhead += self.cfg.switch_overhead
        if job.job_id not in self.blocks:
            self.blocks[job.job_id] = self.kv.allocate(job.num_tokens) if self.kv else 0
        start = t + overhead
        self.work = Running(job, self.truth.job_forward(job), start, job.ops_done)
        job.started = True
        self.log.append((t, "run", job.job_id, job.request_ids, job.ops_done, job.tokens_done))
        for old in suspended:
            for r in old.requests:
                rec = self.records[r.request_id]
                rec.preemptions += 1
                since = max(trigger, max(r.arrival for r in job.requests))
                rec.preemption_latencies.append(start - since)

    def _free(self, job_id: int) -> None:
        n = self.blocks.pop(job_id, 0)
        if self.kv is not None and n:
            self.kv.free(n)


def _record(r: Request) -> RequestRecord:
    return RequestRecord(
        request_id=r.request_id, slo_class=r.slo.slo_class, arrival=r.arrival,
        prompt_len=r.prompt_len, output_len=r.max_tokens, ttft_slo=r.slo.ttft,
        tbt_slo=r.slo.tbt,
    )
