"""The profile: what `runners/profile_ops.py` measures and `train_predictor.py` reads.

Owns the profiling grid (which batch shapes to measure) and the on-disk format, JSON lines in
`<dir>/profile.jsonl`:

    {"type": "meta", "model": ..., "device": ..., "dtype": ..., "settings": {...}, ...}
    {"type": "point", "case": "prompt" | "batch" | "chunk" | "decode",
     "shape": [[new_tokens, context], ...], "logits": k,
     "ops": {"embed": [s, ...], "attention": [...], "mlp": [...], "final": [...]},
     "e2e": [s, ...]}

`ops[kind][i]` is repeat i's mean seconds of one operator of that kind (attention and MLP
averaged over layers); `e2e[i]` is repeat i's whole forward, first operator to logits. Decode
points have `e2e` only (a decode step runs as one call). A point is identified by
(case, shape, logits), which is what makes profiling resumable. Pure standard library.
"""

from __future__ import annotations

import json
import random
import statistics
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowprefill.predictor.cost import BatchShape

PROFILE_FILENAME = "profile.jsonl"
CASES = ("prompt", "batch", "chunk", "decode")
# Settings a profile and the run reading it must agree on (a mixed file is an error).
# engine settings a profile records and `predictor.path=auto` must match (they change the
# costs); the one list, which the identity here and the artifact's settings extend
ENGINE_SETTINGS = ("device", "dtype", "compile", "attention", "threads", "tp")
IDENTITY = ("model", "num_layers", "hardware", *ENGINE_SETTINGS, "clock", "timed_on")
# what a profile or an artifact written before a setting existed was run with
SETTING_DEFAULTS = {"tp": 1}


def setting(meta: Mapping[str, Any], key: str) -> Any:
    """`meta[key]`, or the value every run had before `key` was recorded."""
    return meta.get(key, SETTING_DEFAULTS.get(key))


@dataclass(frozen=True)
class Point:
    """One grid point: a forward of `shape` with `logits` sequences through lm_head."""

    case: str
    shape: BatchShape
    logits: int

    @property
    def key(self) -> str:
        return json.dumps([self.case, [list(s) for s in self.shape], self.logits])

    @property
    def new_tokens(self) -> int:
        return sum(n for n, _ in self.shape)


@dataclass(frozen=True)
class ProfileGrid:
    """Which shapes to measure. Lengths are capped at `max_len` (and the model's limit)."""

    min_len: int = 16
    max_len: int = 16384
    log_points: int = 20  # prompt lengths log-spaced over [min_len, max_len]
    tail_points: int = 6  # plus a linear tail over (max_len / 2, max_len]
    batch_sizes: tuple[int, ...] = (2, 4, 8)
    batch_lens: tuple[int, ...] = (16, 64, 256, 512)  # each request's length in a batch
    mixed_batches: tuple[tuple[int, ...], ...] = ((32, 128, 512, 1024), (16, 1000), (700, 90))
    chunk_sizes: tuple[int, ...] = (128, 512, 2048)
    chunk_prefixes: tuple[int, ...] = (512, 2048, 8192)  # multiples of every chunk size
    decode_batches: tuple[int, ...] = (1, 4, 16)
    decode_contexts: tuple[int, ...] = (128, 1024, 2048)
    seed: int = 0  # the order points are measured in (shuffled: load noise spreads evenly)


def prompt_lengths(grid: ProfileGrid, limit: int) -> list[int]:
    """Log-spaced lengths from min_len to the cap, plus a linear tail near the cap."""
    hi = min(grid.max_len, limit)
    lo = min(grid.min_len, hi)
    out = set()
    for i in range(grid.log_points):
        f = i / max(grid.log_points - 1, 1)
        out.add(round(lo * (hi / lo) ** f))
    for i in range(1, grid.tail_points + 1):
        out.add(round(hi / 2 + i * (hi / 2) / grid.tail_points))
    return sorted(n for n in out if lo <= n <= hi)


def grid_points(grid: ProfileGrid, limit: int) -> list[Point]:
    """Every point of the grid, in a seeded shuffled order."""
    hi = min(grid.max_len, limit)
    pts = [Point("prompt", ((n, 0),), 1) for n in prompt_lengths(grid, limit)]
    for b in grid.batch_sizes:
        for n in grid.batch_lens:
            if b * n <= hi:
                pts.append(Point("batch", ((n, 0),) * b, b))
    for mix in grid.mixed_batches:
        if sum(mix) <= hi:
            pts.append(Point("batch", tuple((n, 0) for n in mix), len(mix)))
    for c in grid.chunk_sizes:
        for p in grid.chunk_prefixes:
            if p % c == 0 and p + c <= hi:
                pts.append(Point("chunk", ((c, p),), 1))
    for b in grid.decode_batches:
        for ctx in grid.decode_contexts:
            if ctx < hi:
                pts.append(Point("decode", ((1, ctx),) * b, b))
    random.Random(grid.seed).shuffle(pts)
    return pts


# --------------------------------------------------------------------------- reading / writing


def profile_file(path: str | Path) -> Path:
    p = Path(path)
    return p / PROFILE_FILENAME if p.suffix != ".jsonl" else p


def read_rows(path: str | Path) -> list[dict]:
    """Every row of a profile (a truncated last line, from an interrupted run, is skipped)."""
    f = profile_file(path)
    if not f.is_file():
        return []
    rows = []
    for line in f.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def append_row(path: str | Path, row: Mapping[str, Any]) -> None:
    f = profile_file(path)
    f.parent.mkdir(parents=True, exist_ok=True)
    torn = False  # an interrupted run may have left half a line: start on a fresh one
    if f.is_file() and f.stat().st_size:
        with f.open("rb") as existing:
            existing.seek(-1, 2)
            torn = existing.read(1) != b"\n"
    with f.open("a") as out:
        out.write(("\n" if torn else "") + json.dumps(row) + "\n")


def point_row(point: Point, ops: Mapping[str, Sequence[float]],
              e2e: Sequence[float]) -> dict:
    return {"type": "point", "case": point.case, "shape": [list(s) for s in point.shape],
            "logits": point.logits, "ops": {k: list(v) for k, v in ops.items()},
            "e2e": list(e2e)}


def row_point(row: Mapping[str, Any]) -> Point:
    return Point(row["case"], tuple((int(n), int(c)) for n, c in row["shape"]),
                 int(row["logits"]))


def meta_of(rows: Iterable[Mapping[str, Any]]) -> dict:
    """The profile's identity; every meta row must agree on it."""
    metas = [r for r in rows if r.get("type") == "meta"]
    if not metas:
        raise ValueError("profile has no meta row")
    first = {k: setting(metas[0], k) for k in IDENTITY}
    for m in metas[1:]:
        other = {k: setting(m, k) for k in IDENTITY}
        if other != first:
            raise ValueError(f"profile mixes settings: {first} vs {other}")
    return dict(metas[-1])


def done_keys(rows: Iterable[Mapping[str, Any]]) -> set[str]:
    return {row_point(r).key for r in rows if r.get("type") == "point"}


@dataclass(frozen=True)
class Sample:
    """One measured point, reduced over its repeats."""

    point: Point
    ops: dict[str, float]  # op kind -> seconds of one such operator (empty for decode)
    e2e: float


STATS = {"median": statistics.median, "min": min}


def samples(rows: Iterable[Mapping[str, Any]], stat: str = "median") -> Iterator[Sample]:
    """Each point reduced over its repeats by `stat`: median (default), or min (the least
    disturbed repeat: another process can only slow a run down, on a shared machine)."""
    reduce = STATS[stat]
    for r in rows:
        if r.get("type") != "point" or not r.get("e2e"):
            continue
        ops = {k: reduce(v) for k, v in r.get("ops", {}).items() if v}
        yield Sample(row_point(r), ops, reduce(r["e2e"]))
