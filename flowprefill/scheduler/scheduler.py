"""The event-driven scheduler: a pure state machine `on_event(event, now) -> Decision`.

Owns waiting requests, the running job and suspended jobs, and every policy rule (order,
preemption granularity, batching, KV admission, dropping). Never reads a clock, never
touches tensors; the engine and the simulator drive it identically and advance each job's
`ops_done` / `tokens_done` themselves. Must not import torch, the model or the executor.

When it may switch jobs: on Completion (always); on Arrival with granularity operator/layer
(the engine applies the decision at the boundary where it saw the arrival); on Boundary (a
chunk ended) with granularity chunk; never otherwise.
"""

from __future__ import annotations

from flowprefill.config import PolicyConfig
from flowprefill.core import (
    Abort,
    Arrival,
    Boundary,
    Completion,
    Decision,
    Event,
    Granularity,
    Job,
    Request,
    RequestState,
)
from flowprefill.predictor import Predictor
from flowprefill.scheduler.batching import MAX_SCAN, form_batch
from flowprefill.scheduler.dropping import moore_hodgson
from flowprefill.scheduler.kv import KVView, blocks_for
from flowprefill.scheduler.orders import get_order
from flowprefill.scheduler.queue import Waiting, WaitQueue

DROPS = ("demote", "moore_hodgson")
Rank = tuple[float, ...]


class Scheduler:
    """Construct with a policy, a predictor and (optionally) a KV view; feed it events.

    `running` is the job the device should be executing; `num_waiting` / `num_suspended`
    count the rest. The engine advances `running.ops_done` / `tokens_done` before each call.
    """

    def __init__(self, policy: PolicyConfig, predictor: Predictor,
                 kv: KVView | None = None) -> None:
        if policy.drop not in DROPS:
            raise ValueError(f"unknown policy.drop {policy.drop!r}; known: {DROPS}")
        self.cfg = policy
        self.predictor = predictor
        self.kv = kv
        self.order = get_order(policy.order)
        self.granularity = Granularity(policy.granularity)
        self.queue = WaitQueue(self.order.slack_aware, reject_late=policy.reject)  # requests
        self.paused = WaitQueue(self.order.slack_aware, reject_late=policy.reject)  # jobs
        self.running: Job | None = None
        self._job_of: dict[str, Job] = {}  # request id -> its running or suspended job
        self._job_rank: dict[int, tuple[Rank, int]] = {}  # job id -> (static key, seq)
        self._demoted_jobs: set[int] = set()  # dropped by Moore-Hodgson, kept (demoted)
        self._next_job_id = 0
        self._next_seq = 0
        self._rejected: list[str] = []  # reported (and cleared) by the next decision
        self._dropped: list[int] = []

    # ------------------------------------------------------------------ events

    def on_event(self, event: Event, now: float) -> Decision:
        if isinstance(event, Arrival):
            self._admit(event.request, now)
            preempts = self.granularity in (Granularity.OPERATOR, Granularity.LAYER)
            return self._decide(now, may_preempt=preempts or self.running is None)
        if isinstance(event, Completion):
            self._finish(event.job_id)
            return self._decide(now, may_preempt=True)
        if isinstance(event, Boundary):
            return self._decide(now, may_preempt=self.granularity == Granularity.CHUNK)
        if isinstance(event, Abort):
            self._abort(event.request_id)
            return self._decide(now, may_preempt=self.running is None)
        raise TypeError(f"unknown event {event!r}")

    @property
    def num_waiting(self) -> int:
        return len(self.queue)

    @property
    def num_suspended(self) -> int:
        return len(self.paused)

    # ------------------------------------------------------------------ state changes

    def _admit(self, r: Request, now: float) -> None:
        if self.kv is not None and self._blocks(r) > self.kv.total_blocks():
            self._rejected.append(r.request_id)  # could never fit
            r.state = RequestState.ABORTED
            return
        chunk = self.cfg.chunk_size if self.granularity == Granularity.CHUNK else None
        cost = self.predictor.request_cost(r.prompt_len, chunk)
        key = self.order.key(r.arrival, r.deadline, r.slo.slo_class, self.cfg)
        self.queue.push(Waiting(r, r.request_id, key, self._next_seq, r.deadline, cost,
                                r.deadline - cost))
        self._next_seq += 1
        r.state = RequestState.WAITING

    def _finish(self, job_id: int) -> None:
        job = self.running
        if job is None or job.job_id != job_id:
            raise RuntimeError(f"completion of job {job_id}, which is not running")
        for r in job.requests:
            if r.state != RequestState.ABORTED:
                r.state = RequestState.DECODING
        self._forget(job)
        self.running = None

    def _forget(self, job: Job) -> None:
        for rid in job.request_ids:
            self._job_of.pop(rid, None)
        self._job_rank.pop(job.job_id, None)
        self._demoted_jobs.discard(job.job_id)
        self.paused.remove(job.job_id)
        if self.running is job:
            self.running = None

    def _drop_job(self, job: Job, state: RequestState) -> None:
        for r in job.requests:
            r.state = state
        self._forget(job)
        self._dropped.append(job.job_id)

    def _reject_job(self, job: Job) -> None:
        self._rejected.extend(job.request_ids)
        self._drop_job(job, RequestState.ABORTED)

    def _abort(self, request_id: str) -> None:
        item = self.queue.remove(request_id)
        if item is not None:
            item.request.state = RequestState.ABORTED
            return
        job = self._job_of.get(request_id)
        if job is None:
            return
        for r in job.requests:
            if r.request_id == request_id:
                r.state = RequestState.ABORTED
        if all(r.state == RequestState.ABORTED for r in job.requests):
            self._drop_job(job, RequestState.ABORTED)

    def _suspend(self, job: Job) -> None:
        key, seq = self._job_rank[job.job_id]
        cost = self.predictor.remaining(job)
        deadline = job.deadline
        self.paused.push(Waiting(job, job.job_id, key, seq, deadline, cost, deadline - cost))
        if job.job_id in self._demoted_jobs:
            self.paused.demote(job.job_id)
        for r in job.requests:
            r.state = RequestState.SUSPENDED

    # ------------------------------------------------------------------ ranking

    def _blocks(self, r: Request) -> int:
        return blocks_for(r.prompt_len, self.kv.block_size) if self.kv else 0

    def _fits(self, r: Request) -> bool:
        return self.kv is None or self._blocks(r) <= self.kv.free_blocks()

    @staticmethod
    def _rank(queue: WaitQueue, item: Waiting) -> Rank:
        return (float(queue.is_demoted(item.ident)), *item.key, item.seq)

    def _rank_running(self, job: Job, now: float) -> Rank:
        key, seq = self._job_rank[job.job_id]
        late = job.job_id in self._demoted_jobs or (
            self.order.slack_aware and now + self.predictor.remaining(job) > job.deadline)
        return (float(late), *key, seq)

    # ------------------------------------------------------------------ deciding

    def _decide(self, now: float, may_preempt: bool) -> Decision:
        suspend: tuple[int, ...] = ()
        if may_preempt:
            if self.cfg.drop == "moore_hodgson":
                self._moore_hodgson(now)
            suspend = self._switch(now)
        self._rejected.extend(r.request_id for r in self.queue.late)
        self.queue.late.clear()
        for job in self.paused.late:
            self._reject_job(job)
        self.paused.late.clear()
        decision = Decision(run=self.running, suspend=suspend, drop=tuple(self._dropped),
                            rejected=tuple(self._rejected))
        self._rejected.clear()
        self._dropped.clear()
        return decision

    def _switch(self, now: float) -> tuple[int, ...]:
        """Run the best of: the running job, the best suspended job, a new batch."""
        current = self.running
        paused = self.paused.ordered(now, 1)
        candidates = self.queue.ordered(now, MAX_SCAN)
        head_at = next((i for i, w in enumerate(candidates) if self._fits(w.request)), None)
        options: list[tuple[Rank, str]] = []
        if current is not None:
            options.append((self._rank_running(current, now), "current"))
        if paused:
            options.append((self._rank(self.paused, paused[0]), "resume"))
        if head_at is not None:
            options.append((self._rank(self.queue, candidates[head_at]), "new"))
        if not options:
            return ()
        choice = min(options)[1]
        if choice == "current":
            return ()
        suspend: tuple[int, ...] = ()
        if current is not None:
            self._suspend(current)
            suspend = (current.job_id,)
        if choice == "resume":
            job = paused[0].obj
            self.paused.remove(job.job_id)
        else:
            rest = [w.request for w in candidates[head_at + 1:]]
            job = self._new_job(candidates[head_at].request, rest, now)
        for r in job.requests:
            r.state = RequestState.PREFILLING
        self.running = job
        return suspend

    def _new_job(self, head: Request, rest: list[Request], now: float) -> Job:
        chunked = self.granularity == Granularity.CHUNK and head.prompt_len > self.cfg.chunk_size
        if chunked:
            batch = [head]
        else:
            free = self.kv.free_blocks() if self.kv else None
            bs = self.kv.block_size if self.kv else 1
            batch = form_batch(head, rest, now, self.cfg, self.predictor, free, bs)
        job = Job(self._next_job_id, tuple(batch), self.cfg.chunk_size if chunked else None)
        self._next_job_id += 1
        items = [self.queue.remove(r.request_id) for r in batch]
        self._job_rank[job.job_id] = (min(w.key for w in items), min(w.seq for w in items))
        for r in batch:
            self._job_of[r.request_id] = job
        return job

    def _moore_hodgson(self, now: float) -> None:
        """Drop (demote, or reject) the work Moore-Hodgson sacrifices to meet most deadlines."""
        items: list[tuple[float, float, tuple[str, object]]] = []
        job = self.running
        if job is not None and job.job_id not in self._demoted_jobs:
            items.append((job.deadline, self.predictor.remaining(job), ("run", job)))
        for w in self.paused.ready():
            items.append((w.deadline, w.cost, ("job", w.obj)))
        for w in self.queue.ready():
            items.append((w.deadline, w.cost, ("req", w.request)))
        for kind, obj in moore_hodgson(items, now):
            if kind == "req":
                if self.cfg.reject:
                    self.queue.remove(obj.request_id)
                    obj.state = RequestState.ABORTED
                    self._rejected.append(obj.request_id)
                else:
                    self.queue.demote(obj.request_id)
            elif self.cfg.reject:
                self._reject_job(obj)
            elif kind == "job":
                self.paused.demote(obj.job_id)
            else:
                self._demoted_jobs.add(obj.job_id)
