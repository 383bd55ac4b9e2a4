"""The prefill engine loop: the only place where scheduler, executor and clock meet.

One thread owns the model runner's prefill side and the scheduler. Between two units of the
running job it checks an event queue, but only where the policy's granularity allows a switch
(every operator, every layer, every chunk, or at completion); empty means keep going. An
event, or the completion of the running job, calls the scheduler; its decision may suspend
the running job (its state just stays in its `PrefillJob`), start a new one or resume one.
No timers, no polling, no per-unit scheduler call. Policy logic lives in the scheduler.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable

from flowprefill.core import (
    Abort,
    Boundary,
    Clock,
    Completion,
    Decision,
    Granularity,
    Request,
)
from flowprefill.core import Event as SchedulerEvent
from flowprefill.engine.api import SamplingParams
from flowprefill.engine.streams import OutputStream
from flowprefill.executor import ModelRunner, PrefillJob
from flowprefill.predictor import CorrectedPredictor, job_shape, op_kind
from flowprefill.scheduler import Scheduler

log = logging.getLogger(__name__)
_STOP = object()
GREEDY = SamplingParams(max_tokens=1, temperature=0.0)


class PrefillEngine:
    def __init__(self, runner: ModelRunner, scheduler: Scheduler, clock: Clock,
                 streams: dict[str, OutputStream],
                 on_prefilled: Callable[[OutputStream, int], None]) -> None:
        self.runner, self.scheduler, self.clock = runner, scheduler, clock
        self.granularity = scheduler.granularity
        self.streams = streams
        self.on_prefilled = on_prefilled  # (stream, first token) -> hand to decode
        self.eos = runner.model_cfg.eos_token_id
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.jobs: dict[int, PrefillJob] = {}  # running and suspended jobs
        self._firsts: dict[int, list[int]] = {}  # job id -> sampled first tokens
        self.current: PrefillJob | None = None
        self._switch_since: float | None = None  # event time that asked for a switch
        self.preemption_latencies: deque[float] = deque(maxlen=10_000)
        self.preemptions = 0
        self.scheduler_calls = 0
        pred = scheduler.predictor  # with an online correction, the loop times each operator
        self.corrected = pred if isinstance(pred, CorrectedPredictor) else None
        self.thread = threading.Thread(target=self._loop, name="prefill-engine", daemon=True)

    # ------------------------------------------------------------------ other threads
    def submit(self, event: SchedulerEvent) -> None:
        self.events.put((event, self.clock.now()))

    def stop(self) -> None:
        self.events.put((_STOP, 0.0))
        self.thread.join()

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        self.runner.use_threads()
        while True:
            if self.current is None:  # idle: sleep until something happens
                if not self._handle(*self.events.get()):
                    return
            while not self.events.empty():  # between two units: one cheap check
                if not self._handle(*self.events.get_nowait()):
                    return
            job = self.current
            if job is None:
                continue
            if not job.job.started:
                self._mark(job, "prefill_start")
            if self._switch_since is not None:
                self._started_after_switch(job)
            try:
                self._run_to_point(job)
                if job.done:
                    self._sample_first_tokens(job)
            except Exception as e:  # noqa: BLE001 - one bad job must not stop the engine
                self._fail(job, e)
                continue
            if job.done:
                self._complete(job)
            elif job.chunked:
                self._handle(Boundary(job.job_id), self.clock.now())

    def _run_to_point(self, job: PrefillJob) -> None:
        """Run units until the next point where this policy may switch jobs."""
        if self.corrected is not None:
            self._run_observed(job)
        elif self.granularity is Granularity.NONE:
            job.run()
        else:
            job.run_until_preemption_point()

    def _run_observed(self, job: PrefillJob) -> None:
        """As `_run_to_point`, feeding each whole operator's time to the online correction
        (a token slice of an operator is not observed: its prediction is the whole op's)."""
        pred, core = self.corrected, job.job
        while True:
            shape, logits = job_shape(core)
            kind, whole = op_kind(core.ops_done, pred.num_layers), job.cursor[2] == 0
            t0 = self.clock.now()
            job.step()
            if whole and job.cursor[2] == 0:
                pred.observe(kind, shape, logits, self.clock.now() - t0)
            if job.at_preemption_point and (job.done or self.granularity is not Granularity.NONE):
                return

    # ------------------------------------------------------------------ events
    def _handle(self, event: object, at: float) -> bool:
        if event is _STOP:
            return False
        self.scheduler_calls += 1
        self._apply(self.scheduler.on_event(event, self.clock.now()), at)
        return True

    def _apply(self, d: Decision, at: float) -> None:
        now = self.clock.now()
        for job_id in d.drop:
            job = self.jobs.get(job_id)
            if job is not None:  # stats (read from other threads) never see a freed job
                if job is self.current:  # running, nor a running job missing from `jobs`
                    self.current = None
                del self.jobs[job_id]
                job.abort()  # frees every KV block of the job
        for rid in d.rejected:
            if (s := self.streams.get(rid)) is not None:
                s.fail(self._why_rejected(s.request), now, "rejected")
        for job_id in d.suspend:
            self.preemptions += 1
            for r in self.jobs[job_id].job.requests:
                if (s := self.streams.get(r.request_id)) is not None:
                    s.record.preemptions += 1
        previous = self.current
        if d.run is None:
            self.current = None
        elif d.run.job_id in self.jobs:
            self.current = self.jobs[d.run.job_id]
        else:
            self.current = self._start(d, now)
        if previous is not None and self.current is not previous and not previous.done:
            self._switch_since = at

    def _why_rejected(self, r: Request) -> str:
        blocks = self.runner.blocks
        need = blocks.blocks_needed(r.prompt_len)
        if need > blocks.num_blocks:
            return f"the prompt needs {need} KV blocks; the pool has {blocks.num_blocks}"
        return "the scheduler predicts it cannot meet its TTFT SLO"

    def _start(self, d: Decision, now: float) -> PrefillJob | None:
        try:
            job = self.runner.prefill_job(d.run, granularity=self.granularity)
        except Exception as e:  # noqa: BLE001 - e.g. the decode side took the blocks meanwhile
            for r in d.run.requests:
                if (s := self.streams.get(r.request_id)) is not None:
                    s.fail(f"prefill could not start: {e}", now)
            for r in d.run.requests:
                self._apply(self.scheduler.on_event(Abort(r.request_id), now), now)
            return self.current
        self.jobs[job.job_id] = job
        return job

    def _started_after_switch(self, job: PrefillJob) -> None:
        latency = self.clock.now() - self._switch_since
        self._switch_since = None
        self.preemption_latencies.append(latency)
        for r in job.job.requests:
            if (s := self.streams.get(r.request_id)) is not None:
                s.record.preemption_latencies.append(latency)

    def _mark(self, job: PrefillJob, field: str) -> None:
        now = self.clock.now()
        for r in job.job.requests:
            if (s := self.streams.get(r.request_id)) is not None:
                setattr(s.record, field, now)

    def _fail(self, job: PrefillJob, error: Exception) -> None:
        """The job raised: fail its requests to their clients, free its state, go on."""
        log.exception("prefill job %d failed", job.job_id)
        self.current = None  # in this order, as in _apply: stats stay consistent
        self.jobs.pop(job.job_id, None)
        job.abort()
        now = self.clock.now()
        for r in job.job.requests:
            if (s := self.streams.get(r.request_id)) is not None:
                s.fail(f"prefill failed: {error}", now)
            self._handle(Abort(r.request_id), now)

    def _sample_first_tokens(self, job: PrefillJob) -> None:
        streams = [self.streams.get(r.request_id) for r in job.job.requests]
        params = [s.sampling if s else GREEDY for s in streams]
        self._firsts[job.job_id] = job.sample(params, [s.generator if s else None
                                                       for s in streams])

    def _complete(self, job: PrefillJob) -> None:
        """Sample each request's first token; finished ones free their KV, others go on."""
        self.current = None
        del self.jobs[job.job_id]
        self._mark(job, "prefill_end")
        streams = [self.streams.get(r.request_id) for r in job.job.requests]
        firsts = self._firsts.pop(job.job_id)
        now = self.clock.now()
        for r, stream, token in zip(job.job.requests, streams, firsts, strict=True):
            rid = r.request_id
            if stream is None or stream.aborted:
                self.runner.free(rid)
            elif not stream.token(token, now, self.eos, lambda rid=rid: self.runner.free(rid)):
                self.on_prefilled(stream, token)
        self._handle(Completion(job.job_id), now)

    # ------------------------------------------------------------------ stats
    @property
    def num_suspended(self) -> int:
        """Read from other threads: `current` is cleared before its job leaves `jobs` and
        `jobs` is read first here, so this is never negative."""
        return len(self.jobs) - (self.current is not None)

