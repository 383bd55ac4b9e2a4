"""Discrete-event simulation of one worker driven by the real scheduler, under the engine's
rules: the same unit plans, the same preemption points, the same decode placement, the same
events per scheduler call, the same meaning of preemption latency.

A virtual clock and a heap of external events (arrivals, aborts; ties broken by time, kind,
then input order). External events are seen at the running job's first preemption point at
or after their time, as the engine sees them between units, and delivered together with the
job's progress in one scheduler call. A decode step runs at the first point at or after the
decision's `decode_at` (at once when no prefill runs); its cost comes from the truth's decode
model. Each decision is applied when it is made, plus the configured scheduling and switch
overheads. The device is charged from `truth` when given (the scheduler still plans with
`predictor`), so prediction error is visible. Must not import torch.
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
    Completion,
    Decision,
    DecodeDone,
    Event,
    Granularity,
    Job,
    Progress,
    Request,
    VirtualClock,
    is_due,
    preemption_latency,
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
    trace: list[tuple] | None = None  # the scheduler's decision log (SimConfig.trace)


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


@dataclass
class _Seq:
    """A request the simulated worker is decoding."""

    prompt_len: int  # the original prompt
    generated: int  # tokens produced so far

    @property
    def context(self) -> int:  # tokens in its KV cache
        return self.prompt_len + self.generated - 1


class _Run:
    """State of one simulation (kept apart so a Simulator can run many workloads)."""

    def __init__(self, sim: Simulator, requests: Sequence[Request],
                 aborts: Sequence[tuple[float, str]]) -> None:
        cfg = self.cfg = sim.cfg
        self.truth = sim.truth
        self.kv = BlockBudget(cfg.num_kv_blocks, cfg.block_size) if cfg.num_kv_blocks else None
        self.scheduler = Scheduler(sim.policy, sim.predictor, self.kv,
                                   max_unit_s=cfg.max_unit_ms / 1e3, decode=cfg.decode,
                                   decode_batch=cfg.decode_batch, trace=cfg.trace)
        self.granularity = Granularity(sim.policy.granularity)
        self.clock = VirtualClock(min((r.arrival for r in requests), default=0.0))
        self.heap: list[tuple[float, int, int, Event]] = []
        for i, r in enumerate(requests):
            self.heap.append((r.arrival, _ARRIVAL, i, Arrival(r)))
        for i, (t, rid) in enumerate(aborts):
            self.heap.append((t, _ABORT, i, Abort(rid)))
        heapq.heapify(self.heap)
        self.requests = {r.request_id: r for r in requests}
        self.records = {r.request_id: RequestRecord.for_request(r) for r in requests}
        self.log: list[tuple] = []
        self.work: Running | None = None
        self.last_point = self.clock.now()  # the running job's previous preemption point
        self.blocks: dict[str, int] = {}  # request id -> KV blocks it holds
        self.seqs: dict[str, _Seq] = {}  # decoding
        self.followups: list[Event] = []  # evicted sequences coming back, next call
        self.decode: tuple[str, ...] = ()
        self.decode_at = math.inf
        self.jobs: dict[int, Job] = {}  # started jobs (running or suspended)
        self.riding: dict[str, int] = {}  # decoding request -> the job computing its token
        self.aborted: set[str] = set()
        self.calls = 0

    # ------------------------------------------------------------------ main loop

    def go(self) -> SimResult:
        while True:
            t_ext = self.heap[0][0] if self.heap else math.inf
            t_dec = self.decode_at if self.decode else math.inf
            if self.work is None:
                t = max(min(t_ext, t_dec), self.clock.now())
                if t == math.inf:
                    break
                self._advance(t)
                ext = self._externals(t)
                if ext:
                    self._call(ext)
                elif is_due(t, t_dec):
                    self._decode_step()
                continue
            work = self.work
            end = work.first + work.costs.num_units
            need = min(t_ext, t_dec)
            k = end if need == math.inf else min(work.next_point(need, self.granularity), end)
            t = self._advance(work.at(k))
            previous = self._previous_point(k)
            work.advance(k)
            news: list[Event] = []
            if k == end:
                if k == work.job.plan.num_units:
                    news.append(self._complete(t))
                else:
                    self.log.append((t, "boundary", work.job.job_id, k))
            ext = self._externals(t)
            if news or ext or k == end:
                self.last_point = previous
                self._call(news + ext)
                self.last_point = t
            else:
                self.last_point = t
                if is_due(t, t_dec):
                    self._decode_step()
        return SimResult(list(self.records.values()), self.log, self.clock.now(), self.calls,
                         self.scheduler.trace)

    def _advance(self, t: float) -> float:
        """Move the clock to t, absorbing float rounding: times computed from re-anchored
        prefix sums may land an ulp before the clock (a real step back still raises)."""
        now = self.clock.now()
        if now - 1e-9 * max(1.0, abs(now)) <= t < now:
            t = now
        self.clock.advance_to(t)
        return t

    def _externals(self, t: float) -> list[Event]:
        """Every external event queued by time t, logged."""
        out: list[Event] = []
        while self.heap and self.heap[0][0] <= t:
            event = heapq.heappop(self.heap)[3]
            if isinstance(event, Arrival):
                self.log.append((t, "arrive", event.request.request_id))
            else:
                self.log.append((t, "abort", event.request_id))
                self._abort(event.request_id)
            out.append(event)
        return out

    def _previous_point(self, k: int) -> float:
        """Time of the running job's last preemption point before unit boundary k."""
        work = self.work
        for j in range(k - 1, work.done - 1, -1):
            if work.job.plan.is_point(j, self.granularity):
                return work.at(j)
        return self.last_point

    def _complete(self, t: float) -> Event:
        """The running job's last unit ended at t: its requests have their tokens."""
        job = self.work.job
        self.log.append((t, "complete", job.job_id))
        self.work = None
        del self.jobs[job.job_id]
        finished = []
        for r in job.requests:
            rec = self.records[r.request_id]
            if r.request_id in self.aborted:
                finished.append(r.request_id)
                self._free(r.request_id)
                continue
            if r.generated == 0:
                rec.first_token_time = t
            else:
                rec.token_times.append(t)
            generated = r.generated + 1
            if not self.cfg.decode or generated >= r.max_tokens:
                finished.append(r.request_id)
                rec.finish_time = t
                self._free(r.request_id)
            else:
                self.seqs[r.request_id] = _Seq(r.prompt_len - r.generated, generated)
        for r in job.riders:  # their decode step was part of the job
            del self.riding[r.request_id]
            if r.request_id in self.seqs:
                finished += self._token(r.request_id, t)
            else:  # aborted while riding: its KV was in use until now
                finished.append(r.request_id)
                self._free(r.request_id)
        return Completion(job.job_id, tuple(finished))

    def _decode_step(self) -> None:
        """Run the decode step the last decision asked for, now."""
        ids = self.decode
        shape = tuple((1, self.seqs[rid].context) for rid in ids)
        for rid in ids:  # the step writes one more token of KV per sequence
            self._grow(rid, self.seqs[rid].context + 1)
        t = self._advance(self.clock.now() + self.truth.decode_cost(shape))
        if self.work is not None:
            self.work.start = t  # the device was busy decoding: the job resumes after it
        self.log.append((t, "decode", ids))
        finished = [rid for r in ids for rid in self._token(r, t)]
        self.decode, self.decode_at = (), math.inf
        self._call([DecodeDone(tuple(finished)), *self._externals(t)])

    def _token(self, rid: str, t: float) -> list[str]:
        """A decoding sequence's next token at t; [rid] if that ends it."""
        seq = self.seqs[rid]
        seq.generated += 1
        rec = self.records[rid]
        rec.token_times.append(t)
        if seq.generated < self.requests[rid].max_tokens:
            return []
        rec.finish_time = t
        del self.seqs[rid]
        self._free(rid)
        return [rid]

    # ------------------------------------------------------------------ scheduler calls

    def _call(self, events: list[Event]) -> None:
        """One scheduler call (the running job's progress first), then its follow-ups."""
        while True:
            t = self.clock.now()
            if self.work is not None:
                events = [Progress(self.work.job.job_id, self.work.done), *events]
            self.calls += 1
            self._apply(self.scheduler.on_events(events, t), t)
            if not self.followups:
                return
            events, self.followups = self.followups, []

    def _apply(self, d: Decision, t: float) -> None:
        """Make the simulated device do what the decision says, from time t."""
        for rej in d.rejected:
            self.records[rej.request_id].rejected = True
            self.log.append((t, "reject", rej.request_id))
        for jid in d.drop:
            self.log.append((t, "drop", jid))
            if self.work is not None and self.work.job.job_id == jid:
                self.work = None
            job = self.jobs.pop(jid)
            for r in job.requests:
                self._free(r.request_id)
            for r in job.riders:  # not computed: back to where they were
                del self.riding[r.request_id]
                seq = self.seqs.get(r.request_id)
                if seq is None:
                    self._free(r.request_id)
                else:
                    self._grow(r.request_id, seq.context, shrink=True)
        for rid in d.evict:
            self._evict(rid, t)
        self.decode, self.decode_at = d.decode, d.decode_at
        overhead = self.cfg.schedule_overhead
        suspended = None
        for jid in d.suspend:
            if self.work is None or self.work.job.job_id != jid:
                raise RuntimeError(f"suspend of job {jid}, which is not running")
            suspended = self.work.job
            self.log.append((t, "suspend", jid, self.work.done))
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
        done = self.scheduler.done(job)
        if suspended is not None or done > 0:
            overhead += self.cfg.switch_overhead
        if done == 0:
            self.jobs[job.job_id] = job
            for r in job.requests:
                self._grow(r.request_id, r.prompt_len)
            for r in job.riders:  # their next token's KV
                self._grow(r.request_id, self.seqs[r.request_id].context + 1)
                self.riding[r.request_id] = job.job_id
        start = t + overhead
        self.work = Running(job, self.truth, start, done)
        self.log.append((t, "run", job.job_id, job.request_ids, done))
        if suspended is not None:
            for r in suspended.requests:
                self.records[r.request_id].preemptions += 1
            lat = preemption_latency(start, self.last_point, job.newest_arrival)
            self.records[suspended.requests[0].request_id].preemption_latencies.append(lat)

    # ------------------------------------------------------------------ KV and requests

    def _abort(self, rid: str) -> None:
        self.aborted.add(rid)
        if self.seqs.pop(rid, None) is not None and rid not in self.riding:
            self._free(rid)  # (a riding one's KV is in use until its job ends)

    def _evict(self, rid: str, t: float) -> None:
        """Free a decoding sequence's KV; it comes back as a prefill of all its tokens."""
        seq = self.seqs.pop(rid)
        self._free(rid)
        r = self.requests[rid]
        self.log.append((t, "evict", rid, seq.generated))
        again = Request(rid, r.arrival, seq.prompt_len + seq.generated, r.slo,
                        max_tokens=r.max_tokens, req_type=r.req_type, generated=seq.generated)
        self.requests[rid] = again
        self.followups.append(Arrival(again))

    def _grow(self, rid: str, tokens: int, shrink: bool = False) -> None:
        """Hold blocks for `tokens` tokens of rid (`shrink`: give back any beyond them)."""
        if self.kv is None:
            return
        need = -(-tokens // self.kv.block_size) - self.blocks.get(rid, 0)
        if need > 0:
            self.kv.allocate(need * self.kv.block_size)
            self.blocks[rid] = self.blocks.get(rid, 0) + need
        elif need < 0 and shrink:
            self.kv.free(-need)
            self.blocks[rid] += need

    def _free(self, rid: str) -> None:
        n = self.blocks.pop(rid, 0)
        if self.kv is not None and n:
            self.kv.free(n)
