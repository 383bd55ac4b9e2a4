"""The event-driven scheduler: a pure state machine `on_events(events, now) -> Decision`.

Owns waiting requests, the running prefill job, suspended jobs, the decoding sequences and
every policy rule (order, preemption granularity, unit plans, batching, KV admission,
dropping, late work, when decode steps run). Never reads a clock, never touches tensors, and
its state is its own: progress comes in events, decisions go out. The engine and the
simulator drive it identically. Must not import torch, the model or the executor.

When prefill may switch jobs: on Completion (always); on Arrival or DecodeDone with
granularity operator/layer (the engine applies the decision at the preemption point where it
saw the event); at the end of a chunk with granularity chunk; when nothing runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from flowprefill.config import PolicyConfig
from flowprefill.core import (
    Abort,
    Arrival,
    Completion,
    Decision,
    DecodeDone,
    Event,
    Granularity,
    Handoff,
    Job,
    Progress,
    Rejection,
    Request,
)
from flowprefill.predictor import Predictor
from flowprefill.predictor.plan import Planner
from flowprefill.scheduler.batching import MAX_SCAN, form_batch
from flowprefill.scheduler.decoding import DecodeSet, token_due
from flowprefill.scheduler.dropping import edf_slack, moore_hodgson
from flowprefill.scheduler.kv import KVView, blocks_for
from flowprefill.scheduler.load import Load
from flowprefill.scheduler.orders import get_order
from flowprefill.scheduler.queue import Waiting, WaitQueue
from flowprefill.scheduler.trace import summarize

DROPS = ("demote", "moore_hodgson")
LOAD_WINDOW_S = 10.0  # how far back the load estimate that paces late work looks
Rank = tuple[float, ...]
SLO_MISS = "the scheduler predicts it cannot meet its TTFT SLO"


class Scheduler:
    """Construct with a policy, a predictor and (optionally) a KV view; feed it events.

    `max_unit_s`: operators predicted longer than this are split into token slices (operator
    granularity). `decode`: this worker decodes the requests it prefills (colocated); False
    for a PD prefill worker, whose requests leave after their first token. `trace`: keep
    every call's events and decision (the decision log the engine and the simulator share).
    """

    def __init__(self, policy: PolicyConfig, predictor: Predictor, kv: KVView | None = None,
                 *, max_unit_s: float = 0.0, decode: bool = False, decode_batch: int = 64,
                 trace: bool = False) -> None:
        if policy.drop not in DROPS:
            raise ValueError(f"unknown policy.drop {policy.drop!r}; known: {DROPS}")
        self.cfg = policy
        self.predictor = predictor
        self.kv = kv
        self.order = get_order(policy.order)
        self.granularity = Granularity(policy.granularity)
        self.planner = Planner(predictor, self.granularity, policy.chunk_size, max_unit_s)
        self.queue = WaitQueue(self.order.slack_aware, reject_late=policy.reject)  # requests
        self.paused = WaitQueue(self.order.slack_aware, reject_late=policy.reject)  # jobs
        self.decoding = DecodeSet(decode_batch) if decode else None
        self.running: Job | None = None
        self.trace: list[tuple] | None = [] if trace else None
        self._done: dict[int, int] = {}  # job id -> units completed (as last reported)
        self._job_of: dict[str, Job] = {}  # request id -> its running or suspended job
        self._job_rank: dict[int, tuple[Rank, int]] = {}  # job id -> (static key, seq)
        self._aborted: set[str] = set()  # requests aborted inside a running/suspended job
        self._demoted_jobs: set[int] = set()  # dropped by Moore-Hodgson, kept (demoted)
        self._next_job_id = 0
        self._next_seq = 0
        self._rejected: list[Rejection] = []  # reported (and cleared) by the next decision
        self._dropped: list[int] = []
        self._new_blocks = 0  # blocks of a job started by the decision being made
        self.load = Load(LOAD_WINDOW_S)  # recent prefill work arriving per second

    # ------------------------------------------------------------------ events

    def on_event(self, event: Event, now: float) -> Decision:
        return self.on_events((event,), now)

    def on_events(self, events: Iterable[Event], now: float) -> Decision:
        """Apply everything that happened since the last call, then decide once."""
        events = tuple(events)
        preempts = self.granularity in (Granularity.OPERATOR, Granularity.LAYER)
        may_switch = False
        for e in events:
            if isinstance(e, Arrival):
                self._admit(e.request)
                may_switch |= preempts
            elif isinstance(e, Progress):
                may_switch |= self._progress(e)
            elif isinstance(e, Completion):
                self._finish(e, now)
                may_switch = True
            elif isinstance(e, DecodeDone):
                self._require_decode().stepped(now, e.finished)
                may_switch |= preempts
            elif isinstance(e, Handoff):
                self._require_decode().join(e.request, now)
            elif isinstance(e, Abort):
                self._abort(e.request_id)
            else:
                raise TypeError(f"unknown event {e!r}")
        d = self._decide(now, may_switch or self.running is None)
        if self.trace is not None:
            self.trace.append((now, tuple(summarize(e) for e in events), summarize(d)))
        return d

    @property
    def num_waiting(self) -> int:
        return len(self.queue)

    @property
    def num_suspended(self) -> int:
        return len(self.paused)

    def done(self, job: Job) -> int:
        """Units of `job` completed, as last reported."""
        return self._done.get(job.job_id, 0)

    # ------------------------------------------------------------------ state changes

    def _require_decode(self) -> DecodeSet:
        if self.decoding is None:
            raise RuntimeError("decode events reached a scheduler that does not decode")
        return self.decoding

    def _admit(self, r: Request) -> None:
        if self.kv is not None and self._blocks(r) > self.kv.total_blocks():
            self._rejected.append(Rejection(
                r.request_id, f"the prompt needs {self._blocks(r)} KV blocks; the pool has "
                f"{self.kv.total_blocks()}"))
            return
        cost = self.predictor.total(self.planner.plan((r.prompt_len,)))
        self.load.add(r.arrival, cost)
        key = self.order.key(r.arrival, r.deadline, r.slo.slo_class, self.cfg)
        self.queue.push(Waiting(r, r.request_id, key, self._next_seq, r.deadline, cost,
                                r.deadline - cost))
        self._next_seq += 1

    def _progress(self, e: Progress) -> bool:
        """Record a running job's progress; True at the end of a chunk (a chunk-level point)."""
        job = self.running
        if job is None or job.job_id != e.job_id:
            raise RuntimeError(f"progress of job {e.job_id}, which is not running")
        self._done[e.job_id] = e.done
        return self.granularity is Granularity.CHUNK and job.plan.pass_end(e.done)

    def _finish(self, e: Completion, now: float) -> None:
        job = self.running
        if job is None or job.job_id != e.job_id:
            raise RuntimeError(f"completion of job {e.job_id}, which is not running")
        if self.decoding is not None:
            ended = set(e.finished) | self._aborted
            for r in job.requests:
                if r.request_id not in ended:
                    self.decoding.join(r, now)
            self.decoding.rode(tuple(r.request_id for r in job.riders), now, set(e.finished))
        self._forget(job)

    def _forget(self, job: Job) -> None:
        for rid in job.request_ids:
            self._job_of.pop(rid, None)
            self._aborted.discard(rid)
        self._job_rank.pop(job.job_id, None)
        self._done.pop(job.job_id, None)
        self._demoted_jobs.discard(job.job_id)
        self.paused.remove(job.job_id)
        if self.running is job:
            self.running = None

    def _drop_job(self, job: Job) -> None:
        if self.decoding is not None and job.riders:
            self.decoding.unboard(tuple(r.request_id for r in job.riders))
        self._forget(job)
        self._dropped.append(job.job_id)

    def _reject_job(self, job: Job) -> None:
        self._rejected.extend(Rejection(rid, SLO_MISS) for rid in job.request_ids)
        self._drop_job(job)

    def _abort(self, request_id: str) -> None:
        if self.queue.remove(request_id) is not None:
            return
        if self.decoding is not None and self.decoding.leave(request_id):
            return
        job = self._job_of.get(request_id)
        if job is None:
            return
        self._aborted.add(request_id)
        if all(rid in self._aborted for rid in job.request_ids):
            self._drop_job(job)

    def _suspend(self, job: Job) -> None:
        key, seq = self._job_rank[job.job_id]
        cost = self.predictor.remaining(job.plan, self.done(job))
        deadline = job.deadline
        self.paused.push(Waiting(job, job.job_id, key, seq, deadline, cost, deadline - cost))
        if job.job_id in self._demoted_jobs:
            self.paused.demote(job.job_id)

    # ------------------------------------------------------------------ ranking

    def _blocks(self, r: Request) -> int:
        return blocks_for(r.prompt_len, self.kv.block_size) if self.kv else 0

    def _fits(self, r: Request) -> bool:
        """Its KV fits beside everything held, leaving the next decode step its new blocks."""
        if self.kv is None:
            return True
        growth = self.decoding.growth(self.kv.block_size) if self.decoding else 0
        return self._blocks(r) <= self.kv.free_blocks() - growth

    def _late(self, job: Job, now: float) -> bool:
        return job.job_id in self._demoted_jobs or (
            self.order.slack_aware
            and now + self.predictor.remaining(job.plan, self.done(job)) > job.deadline)

    def _rank_running(self, job: Job, now: float) -> Rank:
        key, seq = self._job_rank[job.job_id]
        return (float(self._late(job, now)), *key, seq)

    @staticmethod
    def _rank(queue: WaitQueue, item: Waiting) -> Rank:
        return (float(queue.is_demoted(item.ident)), *item.key, item.seq)

    # ------------------------------------------------------------------ deciding

    def _decide(self, now: float, may_switch: bool) -> Decision:
        suspend: tuple[int, ...] = ()
        self._new_blocks = 0
        if may_switch:
            if self.cfg.drop == "moore_hodgson":
                self._moore_hodgson(now)
            suspend = self._switch(now)
        self._rejected.extend(Rejection(r.request_id, SLO_MISS) for r in self.queue.late)
        self.queue.late.clear()
        for job in self.paused.late:
            self._reject_job(job)
        self.paused.late.clear()
        decode, decode_at, evict = self._decode_plan(now)
        d = Decision(run=self.running, suspend=suspend, drop=tuple(self._dropped),
                     rejected=tuple(self._rejected), decode=decode, decode_at=decode_at,
                     evict=evict)
        self._rejected.clear()
        self._dropped.clear()
        return d

    def _switch(self, now: float) -> tuple[int, ...]:
        """Run the best of: the running job, the best suspended job, a new batch; a late one
        goes first when the feasible work it would delay has the slack to absorb it."""
        current = self.running
        paused = self.paused.ordered(now, MAX_SCAN)
        waiting = self.queue.ordered(now, MAX_SCAN)
        fitting = [w for w in waiting if self._fits(w.request)]
        # (rank, what, the object, predicted seconds)
        options: list[tuple[Rank, str, object, float]] = []
        if current is not None:
            rem = self.predictor.remaining(current.plan, self.done(current))
            options.append((self._rank_running(current, now), "current", current, rem))
        for w in paused[:1] + [w for w in paused[1:] if self.paused.is_demoted(w.ident)][:1]:
            options.append((self._rank(self.paused, w), "resume", w.obj, w.cost))
        for w in fitting[:1] + [w for w in fitting[1:] if self.queue.is_demoted(w.ident)][:1]:
            options.append((self._rank(self.queue, w), "new", w, w.cost))
        if not options:
            return ()
        options.sort(key=lambda o: o[0])
        choice = options[0]
        share = self.cfg.absorb_late * max(0.0, 1.0 - self.load.at(now))
        if self.order.slack_aware and share > 0 and choice[0][0] == 0.0:
            late = next((o for o in options if o[0][0] == 1.0), None)
            if late is not None and late[3] <= share * self._absorbable(now, current, paused,
                                                                         fitting):
                choice = late
        _, what, obj, _ = choice
        if what == "current":
            return ()
        suspend: tuple[int, ...] = ()
        if current is not None:
            self._suspend(current)
            suspend = (current.job_id,)
        if what == "resume":
            self.paused.remove(obj.job_id)
            self.running = obj
        else:
            head_at = fitting.index(obj)
            self.running = self._new_job(obj.request, [w.request for w in fitting[head_at + 1:]],
                                         now)
        return suspend

    def _absorbable(self, now: float, current: Job | None, paused: list[Waiting],
                    waiting: list[Waiting]) -> float:
        """Seconds the feasible work can be delayed without any of it missing: the least slack
        over it run earliest-deadline-first from now (inf when there is none). Looks at the
        running job and at most MAX_SCAN suspended jobs and waiting requests; with more than
        that feasible, it cannot tell and answers -inf (nothing is absorbed)."""
        if self.queue.num_ready > MAX_SCAN or self.paused.num_ready > MAX_SCAN:
            return -math.inf
        work = [(w.deadline, w.cost) for w in paused if not self.paused.is_demoted(w.ident)]
        work += [(w.deadline, w.cost) for w in waiting if not self.queue.is_demoted(w.ident)]
        if current is not None and not self._late(current, now):
            work.append((current.deadline, self.predictor.remaining(current.plan,
                                                                    self.done(current))))
        return edf_slack(work, now)

    def _new_job(self, head: Request, rest: list[Request], now: float) -> Job:
        # the decode batch's next blocks stay free (they are also what riders need)
        growth = self.decoding.growth(self.kv.block_size) if self.decoding and self.kv else 0
        if self.planner.chunked(head.prompt_len):
            batch = [head]
        else:
            free = None if self.kv is None else self.kv.free_blocks() - growth
            bs = self.kv.block_size if self.kv else 1
            batch = form_batch(head, rest, now, self.cfg, self.predictor, free, bs)
        lens = [r.prompt_len for r in batch]
        plan = self.planner.plan(lens)
        chunk = self.cfg.chunk_size if self.planner.chunked(head.prompt_len) else None
        blocks = sum(self._blocks(r) for r in batch)
        riders: tuple = ()
        if chunk is None and self.decoding is not None and self.cfg.mix_decode:
            seqs = self.decoding.candidates()
            mixed = self.planner.plan(lens, [q.context for q in seqs]) if seqs else plan
            # they ride if the job ends before their next token is due (as the decode step
            # that would otherwise run inside the job: its TBT deadlines and the pace)
            if seqs and now + self.predictor.total(mixed) <= token_due(seqs,
                                                                        self.cfg.decode_pace):
                riders, plan = tuple(q.request for q in seqs), mixed
                self.decoding.board(tuple(r.request_id for r in riders))
                blocks += growth
        job = Job(self._next_job_id, tuple(batch), plan, chunk, riders)
        self._next_job_id += 1
        items = [self.queue.remove(r.request_id) for r in batch]
        self._job_rank[job.job_id] = (min(w.key for w in items), min(w.seq for w in items))
        for r in batch:
            self._job_of[r.request_id] = job
        self._new_blocks = blocks
        return job

    def _decode_plan(self, now: float) -> tuple[tuple[str, ...], float, tuple[str, ...]]:
        """(the next decode step's sequences, when it runs, sequences to evict first)."""
        if self.decoding is None or not self.decoding:
            return (), math.inf, ()
        evict: tuple[str, ...] = ()
        if self.kv is not None:
            free = self.kv.free_blocks() - self._new_blocks
            evict = self.decoding.evict_for(free, self.kv.block_size)
        batch = self.decoding.batch()
        if not batch:
            return (), math.inf, evict
        ids = tuple(s.request.request_id for s in batch)
        job = self.running
        if job is None:
            return ids, now, evict
        # As late as every sequence's next-token deadline allows (the step's own cost and the
        # longest unit of the running job, which a switch waits for, before it), and no later
        # than the pace after the batch's oldest token.
        step = self.predictor.decode_cost(tuple((1, s.context) for s in batch))
        p, _ = job.plan.locate(min(self.done(job), job.plan.num_units - 1))
        guard = self.predictor.units(job.plan.passes[p]).longest
        at = min(min(s.deadline for s in batch) - step - guard,
                 token_due(batch, self.cfg.decode_pace))
        return ids, at, evict

    def _moore_hodgson(self, now: float) -> None:
        """Drop (demote, or reject) the work Moore-Hodgson sacrifices to meet most deadlines."""
        items: list[tuple[float, float, tuple[str, object]]] = []
        job = self.running
        if job is not None and job.job_id not in self._demoted_jobs:
            items.append((job.deadline, self.predictor.remaining(job.plan, self.done(job)),
                          ("run", job)))
        for w in self.paused.ready():
            items.append((w.deadline, w.cost, ("job", w.obj)))
        for w in self.queue.ready():
            items.append((w.deadline, w.cost, ("req", w.request)))
        for kind, obj in moore_hodgson(items, now):
            if kind == "req":
                if self.cfg.reject:
                    self.queue.remove(obj.request_id)
                    self._rejected.append(Rejection(obj.request_id, SLO_MISS))
                else:
                    self.queue.demote(obj.request_id)
            elif self.cfg.reject:
                self._reject_job(obj)
            elif kind == "job":
                self.paused.demote(obj.job_id)
            else:
                self._demoted_jobs.add(obj.job_id)
