"""Reading run outputs: a run directory, or a sweep directory of them, into `Run` objects.

Owns the on-disk layout the runners write (summary.json, config.json, records.jsonl,
tables/<name>.jsonl) and nothing else: no engine, no torch, no flowprefill imports, so the
figures can be made anywhere the JSON files are.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


@dataclass
class Run:
    """One run directory: its summary, resolved config, and (lazily) records and tables."""

    path: Path
    summary: dict
    config: dict = field(default_factory=dict)

    @cached_property
    def records(self) -> list[dict]:
        return _jsonl(self.path / "records.jsonl")

    def table(self, name: str) -> list[dict]:
        return _jsonl(self.path / "tables" / f"{name}.jsonl")

    @property
    def policy(self) -> dict:
        """The policy config: the simulator's summary carries it, live runs' config has it."""
        return self.summary.get("policy_config") or self.config.get("policy") or {}

    @property
    def base_label(self) -> str:
        """The arm name when the run came from an experiment sweep, else the policy label."""
        s = self.summary
        return s.get("arm") or s.get("label") or s.get("policy") or self.path.name

    @property
    def predictor(self) -> str:
        return str(self.summary.get("predictor") or self.config.get("predictor", {}).get("kind"))

    @property
    def slo_scale(self) -> float:
        s = self.summary.get("slo_scale")
        if s is None:
            s = self.config.get("slo", {}).get("scale", 1.0)
        return float(s)

    @property
    def max_goodput(self) -> float | None:
        return self.summary.get("max_goodput_rps")

    @property
    def is_flowprefill(self) -> bool:
        p = self.policy
        return (p.get("order") == "sedf" and p.get("granularity") == "operator"
                and p.get("drop", "demote") == "demote" and p.get("batching", True)
                and p.get("name") == "flowprefill")

    @property
    def is_fcfs(self) -> bool:
        p = self.policy
        return p.get("order") == "fcfs" and p.get("granularity") == "none"

    @property
    def is_chunked(self) -> bool:
        return self.policy.get("granularity") == "chunk"


def _is_run(d: Path) -> bool:
    return (d / "summary.json").is_file()


def _run_dirs(root: Path) -> Iterator[Path]:
    """Every directory with a summary.json, not descending into a run (whose sub-directories
    are its own probes)."""
    if _is_run(root):
        yield root
        return
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        yield from _run_dirs(child)


def load_runs(root: str | Path) -> list[Run]:
    """All runs under `root` (a run directory, a sweep directory, or a tree of sweeps)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no run directory at {root}")
    runs = []
    for d in _run_dirs(root):
        summary: dict[str, Any] = json.loads((d / "summary.json").read_text())
        config = json.loads((d / "config.json").read_text()) if (d / "config.json").is_file() \
            else {}
        runs.append(Run(d, summary, config))
    return runs


def labels(runs: list[Run]) -> dict[int, str]:
    """A display name per run (by id): its arm or policy label, plus the predictor where runs
    of one label used several."""
    by_label: dict[str, set[str]] = {}
    for r in runs:
        by_label.setdefault(r.base_label, set()).add(r.predictor)
    out = {}
    for r in runs:
        name = r.base_label
        if len(by_label[name]) > 1:
            name = f"{name} [{r.predictor}]"
        out[id(r)] = name
    return out
