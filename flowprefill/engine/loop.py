"""The device loop: the one thread that owns the device, where scheduler, executor and clock
meet.

Each turn: gather what happened (the last unit's news, follow-ups, and, at a preemption
point, the events other threads queued); if anything did, call the scheduler once and apply
its decision; then run one unit: a decode step when the decision's `decode_at` has come,
else the next unit of the running prefill job, else sleep until an event. On CUDA the host
stays at most `launch_ahead` units ahead of the device (`executor.timeline`). No polling,
no timers, no per-unit scheduler call. Policy lives in the scheduler; running a unit and
handing out tokens live in `engine.units`. A colocated worker, a PD prefill worker and a PD
decode worker run this same loop (they differ in their scheduler and `on_prefilled`).
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable

from flowprefill.core import (
    Abort,
    Arrival,
    Clock,
    Decision,
    Event,
    Granularity,
    Handoff,
    Progress,
    is_due,
    preemption_latency,
)
from flowprefill.engine.sources import STOP, QueueSource, ScriptedSource
from flowprefill.engine.streams import OutputStream
from flowprefill.engine.units import UnitRunner
from flowprefill.executor import CPUTimeline, ModelRunner, PrefillJob
from flowprefill.scheduler import Scheduler

log = logging.getLogger(__name__)


class EngineLoop:
    def __init__(self, runner: ModelRunner, scheduler: Scheduler, clock: Clock,
                 streams: dict[str, OutputStream],
                 source: QueueSource | ScriptedSource | None = None,
                 on_prefilled: Callable[[OutputStream, int], None] | None = None,
                 observer: object | None = None, launch_ahead: int = 2,
                 timelines: tuple[CPUTimeline, CPUTimeline] | None = None) -> None:
        self.runner, self.scheduler, self.clock = runner, scheduler, clock
        self.granularity: Granularity = scheduler.granularity
        self.source = source or QueueSource()
        self.units = UnitRunner(runner, clock, streams, on_prefilled, observer, launch_ahead,
                                timelines)
        self.jobs: dict[int, PrefillJob] = {}  # running and suspended jobs
        self.current: PrefillJob | None = None
        self.decision = Decision(run=None)
        self._news: list[Event] = []  # the last unit's news and follow-ups, for the next call
        self._boundary = False  # the running job ended a chunk: the scheduler must hear it
        self._points = (-math.inf, -math.inf)  # (previous, latest) preemption point times
        # a switch whose latency is not known yet: (asked at, the old job's last unit, its
        # first request, the new job's first launch or None)
        self._switch: tuple[float, int, str, float | None] | None = None
        self.preemption_latencies: deque[float] = deque(maxlen=10_000)
        self.preemptions = 0
        self.evictions = 0  # decoding sequences whose KV went back under memory pressure
        self.scheduler_calls = 0
        self.thread = threading.Thread(target=self.run, name="engine-loop", daemon=True)

    # ------------------------------------------------------------------ other threads
    def submit(self, event: Event) -> None:
        self.source.put(event)

    def stop(self) -> None:
        self.source.put(STOP)
        self.thread.join()

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        with self.runner.use_threads(), self.units.inference():
            while True:
                events = self._gather()
                if events is None:
                    return
                if events or self._boundary:
                    self._decide(events)
                    if self._news:  # follow-ups reach the scheduler before any unit runs
                        continue
                if self._decode_due():
                    self._decode_step(self.decision.decode)
                elif self.current is not None:
                    self._prefill_unit(self.current)

    def _gather(self) -> list[Event] | None:
        """News and follow-ups, plus queued events at a point (blocking when idle); None: stop."""
        events, self._news = self._news, []
        if not self._at_point():
            return events
        now = self.clock.now()
        if now > self._points[1]:  # a new point (not the same one seen again)
            self._points = (self._points[1], now)
        idle = self.current is None and not self.decision.decode and not events
        if idle:
            self.units.timeline.idle()
        queued = self.source.wait() if idle and not self._boundary else self.source.drain()
        if any(e is STOP for e in queued):
            return None
        for e in queued:
            if isinstance(e, Abort):
                self.units.aborted(e.request_id)  # frees a decoding sequence's KV now
            elif isinstance(e, Handoff):
                self.units.handoff(e.request.request_id, e.token)
        return events + queued

    def _at_point(self) -> bool:
        job = self.current
        return job is None or job.plan.is_point(job.done, self.granularity)

    def _decode_due(self) -> bool:
        d = self.decision
        return bool(d.decode) and self._at_point() and is_due(self.clock.now(), d.decode_at)

    def _decide(self, events: list[Event]) -> None:
        job = self.current
        if job is not None:
            events = [Progress(job.job_id, job.done), *events]
        self._boundary = False
        self.scheduler_calls += 1
        self._apply(self.scheduler.on_events(events, self.clock.now()))

    def _apply(self, d: Decision) -> None:
        self.decision = d
        for job_id in d.drop:
            job = self.jobs.pop(job_id, None)
            if job is not None:  # stats (read from other threads) never see a freed job
                if job is self.current:  # running, nor a running job missing from `jobs`
                    self.current = None
                self.units.drop(job)
        for rej in d.rejected:
            self.units.reject(rej.request_id, rej.reason)
        for rid in d.evict:
            self.evictions += 1
            if (again := self.units.evict(rid)) is not None:
                self._news.append(Arrival(again))  # comes back as a prefill, next call
        if d.suspend:
            if self._switch is not None and self._switch[3] is not None:
                self._switched(self._switch[3], force=True)  # the previous one, first
            self.preemptions += len(d.suspend)
            self.units.suspended([self.jobs[j] for j in d.suspend])
            old = self.jobs[d.suspend[0]].job.request_ids[0]
            asked = max(self._points[0], d.run.newest_arrival)
            self._switch = (asked, self.units.timeline.last, old, None)
        if d.run is None:
            self.current = None
        elif d.run.job_id in self.jobs:
            self.current = self.jobs[d.run.job_id]
        else:
            self.current = self._start(d)

    def _decode_step(self, ids: tuple[str, ...]) -> None:
        self.decision = Decision(run=self.decision.run)  # the step is taken
        try:
            self._news.append(self.units.decode_step(ids))
        except Exception as e:  # noqa: BLE001 - one bad step must not stop the engine
            log.exception("decode step of %d sequences failed", len(ids))
            self._news += self.units.fail_decode(ids, f"decode failed: {e}")

    def _start(self, d: Decision) -> PrefillJob | None:
        try:
            job = self.units.start(d.run)
        except Exception as e:  # noqa: BLE001 - e.g. a worker reserved the blocks meanwhile
            log.warning("prefill job %d could not start: %s", d.run.job_id, e)
            self._news += self.units.fail(d.run, f"prefill could not start: {e}")
            return None
        self.jobs[job.job_id] = job
        return job

    def _prefill_unit(self, job: PrefillJob) -> None:
        try:
            launched = self.units.prefill_unit(job)
        except Exception as e:  # noqa: BLE001 - one bad job must not stop the engine
            log.exception("prefill job %d failed", job.job_id)
            self.current = None  # in this order, as in _apply: stats stay consistent
            self.jobs.pop(job.job_id, None)
            self.units.drop(job)
            self._news += self.units.fail(job.job, f"prefill failed: {e}")
            return
        if self._switch is not None:
            self._switched(launched)
        if job.finished:
            self.current = None
            del self.jobs[job.job_id]
            self._news.append(self.units.complete(job))
        elif self.granularity is Granularity.CHUNK and job.plan.pass_end(job.done):
            self._boundary = True

    def _switched(self, launched: float, force: bool = False) -> None:
        """A unit of the new job was launched: the switch's latency, from the new job's first
        launch and the completion of the old job's last unit, once that is known (on CUDA
        possibly a few units later)."""
        asked, last_old, old, first = self._switch
        first = launched if first is None else first
        tl = self.units.timeline
        if last_old >= 0 and not force and not tl.is_done(last_old):
            self._switch = (asked, last_old, old, first)
            return
        start = first if last_old < 0 else max(first, tl.completed_at(last_old))
        latency = preemption_latency(start, asked, -math.inf)
        self.preemption_latencies.append(latency)
        self.units.record_latency(old, latency)
        self._switch = None

    # ------------------------------------------------------------------ stats
    @property
    def num_suspended(self) -> int:
        """Read from other threads: `current` is cleared before its job leaves `jobs` and
        `jobs` is read first here, so this is never negative."""
        return len(self.jobs) - (self.current is not None)
