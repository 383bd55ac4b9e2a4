"""Runs work on the model: resumable prefill jobs (operator cursor, token slices, chunked
prefill), batched decode steps over paged KV, and sampling.

Owns job execution state (activations, cursors) and KV ownership per request. Must not know
about the scheduler's policies, the predictor, event queues or clocks.
"""

from flowprefill.executor.batch import Piece, PrefillBatch, build_decode_batch, build_prefill_batch
from flowprefill.executor.prefill_job import PrefillJob
from flowprefill.executor.runner import ModelRunner
from flowprefill.executor.sampling import SamplingParams, make_generator, sample

__all__ = [
    "ModelRunner",
    "Piece",
    "PrefillBatch",
    "PrefillJob",
    "SamplingParams",
    "build_decode_batch",
    "build_prefill_batch",
    "make_generator",
    "sample",
]
