"""Runs work on the model: resumable prefill jobs (a cursor into the scheduler's unit plan),
batched decode steps over paged KV, sampling, the device timeline, and the machine checks
(`auto` settings, will the model fit).

Owns job execution state (activations, cursors) and KV ownership per request. Must not know
about the scheduler's policies, the predictor, event queues or clocks.
"""

from flowprefill.executor.batch import Piece, PrefillBatch, build_decode_batch, build_prefill_batch
from flowprefill.executor.memory import ModelDoesNotFit, check_fits, plan_memory
from flowprefill.executor.prefill_job import PrefillJob
from flowprefill.executor.runner import ModelRunner, make_runner
from flowprefill.executor.sampling import SamplingParams, make_generator, sample
from flowprefill.executor.timeline import CPUTimeline, CUDATimeline, make_timeline

__all__ = [
    "CPUTimeline",
    "CUDATimeline",
    "ModelDoesNotFit",
    "ModelRunner",
    "Piece",
    "PrefillBatch",
    "PrefillJob",
    "SamplingParams",
    "build_decode_batch",
    "build_prefill_batch",
    "check_fits",
    "make_generator",
    "make_runner",
    "make_timeline",
    "plan_memory",
    "sample",
]
