"""Metrics: per-request records, run summaries (attainment, goodput, percentiles), the
maximum-goodput search, and the sinks results are logged through.

Must not import torch or the engine: only the standard library, numpy and
`flowprefill.config`. `wandb` is imported lazily, inside `WandbSink` only.
"""

from flowprefill.metrics.goodput import max_goodput
from flowprefill.metrics.records import RequestRecord
from flowprefill.metrics.sinks import JsonSink, MultiSink, NullSink, Sink, WandbSink, make_sink
from flowprefill.metrics.summary import SLO_SCALES, flat_metrics, percentile, summarize

__all__ = [
    "SLO_SCALES",
    "JsonSink",
    "MultiSink",
    "NullSink",
    "RequestRecord",
    "Sink",
    "WandbSink",
    "flat_metrics",
    "make_sink",
    "max_goodput",
    "percentile",
    "summarize",
]
