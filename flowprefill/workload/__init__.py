"""Workloads: trace loaders, a seeded synthetic generator, windows and rate scaling, SLOs.

Owns everything between a trace file (or a generator preset) and the list of timed
`core.Request`s a run replays. Must not import torch or the engine; only the standard
library, numpy and `flowprefill.core` / `flowprefill.config`.
"""

from flowprefill.workload.build import build_requests, load_workload, shape_workload
from flowprefill.workload.loaders import (
    FORMATS,
    detect_format,
    load_azure,
    load_mooncake,
    load_qwen,
    load_trace,
    project_root,
    resolve_path,
)
from flowprefill.workload.record import TraceRecord, read_canonical, write_canonical
from flowprefill.workload.slo import (
    assign_slos,
    assign_types,
    class_priority,
    exact_mix,
    type_by_length,
    type_tables,
)
from flowprefill.workload.synthetic import PRESETS, ClassSpec, arrival_times, generate

__all__ = [
    "FORMATS",
    "PRESETS",
    "ClassSpec",
    "TraceRecord",
    "arrival_times",
    "assign_slos",
    "assign_types",
    "class_priority",
    "build_requests",
    "detect_format",
    "exact_mix",
    "generate",
    "load_azure",
    "load_mooncake",
    "load_qwen",
    "load_trace",
    "load_workload",
    "project_root",
    "read_canonical",
    "resolve_path",
    "shape_workload",
    "type_by_length",
    "type_tables",
    "write_canonical",
]
