"""One request of a trace, format-neutral, and the canonical JSONL format that stores it.

Owns `TraceRecord` (what every loader produces) and reading/writing our canonical JSONL. Knows
nothing of SLOs, schedulers or engines: a record is arrival time plus lengths plus identity.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path


@dataclass(frozen=True, slots=True)
class TraceRecord:
    """A request as a trace describes it.

    timestamp: arrival in seconds on the trace's clock (loaders rebase nothing; see
        `load_workload` for windows, rebasing and rate scaling).
    input_len: prompt tokens to prefill (for follow-up turns: only the new tokens).
    output_len: tokens to generate.
    req_type: the trace's request type (text/image/search/file) or None when untyped.
    request_id: a stable id from the trace (or the row index when the format has none).
    """

    timestamp: float
    input_len: int
    output_len: int
    req_type: str | None = None
    request_id: str | None = None
    parent_id: str | None = None
    turn: int | None = None

    def with_time(self, timestamp: float) -> TraceRecord:
        return replace(self, timestamp=timestamp)


# Canonical JSONL: one object per line, keys below; optional keys are omitted when None.
_REQUIRED = ("timestamp", "input_len", "output_len")
_OPTIONAL = ("req_type", "request_id", "parent_id", "turn")


def record_to_dict(r: TraceRecord) -> dict:
    d: dict = {
        "timestamp": round(r.timestamp, 7),
        "input_len": r.input_len,
        "output_len": r.output_len,
    }
    for key in _OPTIONAL:
        value = getattr(r, key)
        if value is not None:
            d[key] = value
    return d


def record_from_dict(d: dict) -> TraceRecord:
    missing = [k for k in _REQUIRED if k not in d]
    if missing:
        raise ValueError(f"canonical record lacks {missing}: {d}")
    return TraceRecord(
        timestamp=float(d["timestamp"]),
        input_len=int(d["input_len"]),
        output_len=int(d["output_len"]),
        req_type=d.get("req_type"),
        request_id=None if d.get("request_id") is None else str(d["request_id"]),
        parent_id=None if d.get("parent_id") is None else str(d["parent_id"]),
        turn=None if d.get("turn") is None else int(d["turn"]),
    )


def write_canonical(records: Iterable[TraceRecord], path: str | Path) -> int:
    """Write records as canonical JSONL; returns the number written. Creates parent dirs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w") as f:
        for r in records:
            f.write(json.dumps(record_to_dict(r)) + "\n")
            n += 1
    return n


def read_canonical(path: str | Path) -> list[TraceRecord]:
    with Path(path).open() as f:
        return [record_from_dict(json.loads(line)) for line in f if line.strip()]
