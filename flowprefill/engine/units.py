"""Running one unit for the device loop, and what follows from it for the requests.

Owns the device timeline (launch-ahead window, device times for the observer), the tokens
each decoding sequence last produced, and every hand-over to a request's output stream:
first tokens at a prefill's end (or `on_prefilled` on a PD prefill worker), decode tokens,
rejections, failures, evictions. Returns the events the loop must tell the scheduler next;
never calls the scheduler itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from flowprefill.core import (
    Abort,
    Clock,
    Completion,
    DecodeDone,
    Event,
    Job,
    OpKind,
    Request,
    SamplingParams,
    Shape,
    op_kind,
    slice_shape,
)
from flowprefill.engine.streams import OutputStream
from flowprefill.executor import CPUTimeline, ModelRunner, PrefillJob, sample

GREEDY = SamplingParams(max_tokens=1, temperature=0.0)


class UnitRunner:
    def __init__(self, runner: ModelRunner, clock: Clock, streams: dict[str, OutputStream],
                 on_prefilled: Callable[[OutputStream, int], None] | None = None,
                 observer: object | None = None, launch_ahead: int = 2,
                 timelines: tuple[CPUTimeline, CPUTimeline] | None = None) -> None:
        self.runner, self.clock, self.streams = runner, clock, streams
        self.on_prefilled = on_prefilled  # PD prefill worker: park the KV instead of decoding
        self.observer = observer  # an online correction: `observe(kind, shape, logits, s)`
        self.launch_ahead = launch_ahead
        # the prefill stream's timeline and the decode stream's (tests inject a device model)
        self.timeline, self.decode_timeline = timelines or (
            runner.timeline(clock, runner.prefill_stream),
            runner.timeline(clock, runner.decode_stream))
        self.eos = runner.model_cfg.eos_token_id
        self.tokens: dict[str, list[int]] = {}  # decoding sequence -> tokens generated so far
        self.riding: dict[str, int] = {}  # decoding sequence -> the prefill job computing it
        self._gone: set[str] = set()  # aborted while riding: KV freed when its job ends
        self.decode_steps = 0
        self.rider_tokens = 0  # decode tokens computed inside prefill jobs (mixed batches)

    def inference(self) -> contextlib.AbstractContextManager:
        return torch.inference_mode()

    # ------------------------------------------------------------------ prefill
    def start(self, job: Job) -> PrefillJob:
        """The executable job of a decision (its prompts' KV and its riders' new slots
        allocated); raises if they cannot be."""
        riders = [r.request_id for r in job.riders]
        pj = self.runner.prefill_job(job, rider_tokens=[self.tokens[r][-1] for r in riders])
        for rid in riders:
            self.riding[rid] = job.job_id
        return pj

    def prefill_unit(self, job: PrefillJob) -> float:
        """Launch the job's next unit; returns when it was launched (clock time)."""
        launched = self.clock.now()
        if job.done == 0:
            self._mark(job.job, "prefill_start", launched)
        with self.runner.on(self.runner.prefill_stream):
            p, u = job.step()
        k = self.timeline.record((job.plan.passes[p], u), launched)
        self.timeline.wait(k - self.launch_ahead)
        if self.observer is not None:
            self._observe(self.timeline)
        return launched

    def _observe(self, timeline: CPUTimeline) -> None:
        for tag, seconds in timeline.drain():
            self.observer.observe(*unit_info(tag), seconds)

    def complete(self, job: PrefillJob) -> Completion:
        """The job's last unit ran: sample each request's token (and each rider's next one)
        and hand it out."""
        requests = job.job.requests
        streams = [self.streams.get(r.request_id) for r in (*requests, *job.job.riders)]
        self.timeline.wait(self.timeline.last)  # the logits are the last unit's output
        with self.runner.on(self.runner.prefill_stream):
            tokens = job.sample([s.sampling if s else GREEDY for s in streams],
                                [s.generator if s else None for s in streams])
        now = self.clock.now()
        self._mark(job.job, "prefill_end", now)
        n = len(requests)
        finished = self._rode(job.job.riders, streams[n:], tokens[n:], now)
        for r, stream, token in zip(requests, streams[:n], tokens[:n], strict=True):
            rid = r.request_id
            if stream is None or stream.aborted:
                self.runner.free(rid)
                finished.append(rid)
            elif stream.token(token, now, self.eos, lambda rid=rid: self.runner.free(rid)):
                finished.append(rid)
            elif self.on_prefilled is not None:  # decoding continues on another worker
                self.on_prefilled(stream, token)
                finished.append(rid)
            else:  # decoding from here (an evicted sequence: again, with what it had)
                before = r.prompt_token_ids[r.prompt_len - r.generated:] if r.generated else ()
                self.tokens[rid] = [*before, token]
        return Completion(job.job_id, tuple(finished))

    def _rode(self, riders: tuple[Request, ...], streams: list[OutputStream | None],
              tokens: list[int], now: float) -> list[str]:
        """Riders' tokens from a completed job, as a decode step hands them out; the ones
        that finished (or were aborted while riding)."""
        finished = []
        self.rider_tokens += len(riders)
        for r, stream, token in zip(riders, streams, tokens, strict=True):
            rid = r.request_id
            if self._alighted(rid) or stream is None or stream.aborted:
                self._release(rid)
                finished.append(rid)
            elif self._hand(rid, stream, token, now):
                finished.append(rid)
        return finished

    def _hand(self, rid: str, stream: OutputStream, token: int, now: float) -> bool:
        """A decoding sequence's next token to its client; True if that ended it."""
        if stream.token(token, now, self.eos, lambda: self.runner.free(rid)):
            del self.tokens[rid]
            return True
        self.tokens[rid].append(token)
        return False

    # ------------------------------------------------------------------ decode
    def decode_step(self, ids: tuple[str, ...]) -> DecodeDone:
        """One token for each of `ids` (every one of them is decoding, none aborted)."""
        streams = [self.streams[rid] for rid in ids]
        shape = tuple((1, self.runner.blocks.num_tokens(rid)) for rid in ids)
        launched = self.clock.now()
        with self.runner.on(self.runner.decode_stream):
            logits = self.runner.decode(ids, [self.tokens[rid][-1] for rid in ids])
            tokens = sample(logits, [s.sampling for s in streams], [s.generator for s in streams])
        k = self.decode_timeline.record(("decode", shape), launched)
        self.decode_timeline.wait(k)  # sampling read the tokens back: the step is done
        if self.observer is not None:
            self._observe(self.decode_timeline)
        self.decode_steps += 1
        now = self.clock.now()
        finished = [rid for rid, stream, token in zip(ids, streams, tokens, strict=True)
                    if self._hand(rid, stream, token, now)]
        return DecodeDone(tuple(finished))

    def handoff(self, rid: str, token: int) -> None:
        """A request prefilled elsewhere decodes here from `token` (its KV is in place)."""
        self.tokens[rid] = [token]

    def aborted(self, rid: str) -> None:
        """A request was aborted: a decoding sequence gives its KV back now, or, riding a
        prefill job whose units still write it, when that job ends."""
        if rid in self.riding:
            self._gone.add(rid)
        elif rid in self.tokens:
            self._release(rid)

    def evict(self, rid: str) -> Request | None:
        """Free a decoding sequence's KV; the request to prefill again (prompt + generated)."""
        tokens = self.tokens.pop(rid, None)
        stream = self.streams.get(rid)
        self.runner.free(rid)
        if tokens is None or stream is None:
            return None
        r = stream.request
        prompt = r.prompt_token_ids[: r.prompt_len - r.generated]
        ids = (*prompt, *tokens)
        return Request(r.request_id, r.arrival, len(ids), r.slo, max_tokens=r.max_tokens,
                       prompt_token_ids=ids, req_type=r.req_type, generated=len(tokens),
                       meta=r.meta)

    # ------------------------------------------------------------------ failures and stats
    def drop(self, job: PrefillJob) -> None:
        """Free a job's state; on CUDA only after its queued units ran (the blocks may be
        handed to another sequence next)."""
        self.timeline.wait(self.timeline.last)
        job.abort()  # riders give back their new slot and decode as before
        for r in job.job.riders:
            if self._alighted(r.request_id):
                self._release(r.request_id)

    def _alighted(self, rid: str) -> bool:
        """A rider's job has ended; True if it was aborted meanwhile."""
        del self.riding[rid]
        if rid not in self._gone:
            return False
        self._gone.discard(rid)
        return True

    def _release(self, rid: str) -> None:
        """A decoding sequence is gone: its KV back."""
        self.tokens.pop(rid, None)
        self.runner.free(rid)


    def reject(self, rid: str, reason: str) -> None:
        if (s := self.streams.get(rid)) is not None:
            s.fail(reason, self.clock.now(), "rejected")

    def fail(self, job: Job, message: str) -> list[Event]:
        """Fail a job's requests to their clients; the aborts the scheduler must hear."""
        now = self.clock.now()
        for r in job.requests:
            if (s := self.streams.get(r.request_id)) is not None:
                s.fail(message, now)
        return [Abort(rid) for rid in job.request_ids]

    def fail_decode(self, ids: tuple[str, ...], message: str) -> list[Event]:
        """Fail decoding sequences to their clients and free their KV; the aborts the
        scheduler must hear."""
        now = self.clock.now()
        for rid in ids:
            if (s := self.streams.get(rid)) is not None and not s.finished:
                s.fail(message, now)
            self.aborted(rid)
        return [Abort(rid) for rid in ids]

    def suspended(self, jobs: list[PrefillJob]) -> None:
        for job in jobs:
            for r in job.job.requests:
                if (s := self.streams.get(r.request_id)) is not None:
                    s.record.preemptions += 1

    def record_latency(self, rid: str, latency: float) -> None:
        """File a switch's latency once, under the first request of the job it suspended."""
        if (s := self.streams.get(rid)) is not None:
            s.record.preemption_latencies.append(latency)

    def _mark(self, job: Job, field: str, t: float) -> None:
        for r in job.requests:
            if (s := self.streams.get(r.request_id)) is not None and getattr(
                    s.record, field) is None:
                setattr(s.record, field, t)


def unit_info(tag: tuple) -> tuple[str, Shape, int]:
    """(kind, shape, logits) of a timeline tag: a prefill unit (its forward plan and index
    there) or a decode step ("decode", its shape)."""
    if tag[0] == "decode":
        return "decode", tag[1], len(tag[1])
    fplan, u = tag
    op, s, e = fplan.unit(u)
    kind = op_kind(op, fplan.num_layers)
    shape = fplan.shape if kind in (OpKind.EMBED, OpKind.FINAL) else slice_shape(fplan.shape, s, e)
    return kind.value, shape, fplan.logits
