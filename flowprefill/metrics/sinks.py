"""Where a run's results go: one `Sink` interface, JSON files, W&B, or nowhere.

Owns the sinks and `make_sink(LoggerConfig, run_dir)`. Callers log the resolved config once,
summaries as metrics, per-class tables and per-request records; each sink decides the format.
`wandb` is imported only inside `WandbSink` (offline by default; tests use `none`/`json`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flowprefill.config import LoggerConfig
from flowprefill.metrics.records import RequestRecord
from flowprefill.metrics.summary import flat_metrics


class Sink:
    """The interface; also the null object (every method does nothing)."""

    def log_config(self, config: dict) -> None:
        pass

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        pass

    def log_table(self, name: str, rows: Sequence[dict]) -> None:
        pass

    def log_records(self, records: Sequence[RequestRecord]) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NullSink(Sink):
    """Logs nothing (`logger=none`)."""


def _jsonable(value: Any) -> Any:
    """numpy scalars/arrays, tuples, paths and non-finite floats -> plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str | int | bool) or value is None:
        return value
    if hasattr(value, "tolist"):  # numpy scalar or array
        return _jsonable(value.tolist())
    return str(value)


def _dump(obj: Any) -> str:
    return json.dumps(_jsonable(obj))


class JsonSink(Sink):
    """Plain files in `run_dir`: config.json, summary.json (latest value of every metric
    logged, nested as given), metrics.jsonl (every log_metrics call), records.jsonl (one
    RequestRecord with derived latencies per line), tables/<name>.jsonl. Non-finite floats
    are written as null so any JSON reader can load the files."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._summary: dict = {}

    def log_config(self, config: dict) -> None:
        (self.run_dir / "config.json").write_text(json.dumps(_jsonable(config), indent=2))

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        with (self.run_dir / "metrics.jsonl").open("a") as f:
            f.write(_dump({"step": step, **metrics}) + "\n")
        self._summary.update(metrics)
        (self.run_dir / "summary.json").write_text(json.dumps(_jsonable(self._summary), indent=2))

    def log_table(self, name: str, rows: Sequence[dict]) -> None:
        path = self.run_dir / "tables" / f"{name}.jsonl"
        path.parent.mkdir(exist_ok=True)
        path.write_text("".join(_dump(row) + "\n" for row in rows))

    def log_records(self, records: Sequence[RequestRecord]) -> None:
        with (self.run_dir / "records.jsonl").open("w") as f:
            for r in records:
                f.write(_dump(r.to_dict()) + "\n")


class MultiSink(Sink):
    """Fans every call out to several sinks (e.g. the run dir and W&B)."""

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self.sinks = list(sinks)

    def log_config(self, config: dict) -> None:
        for s in self.sinks:
            s.log_config(config)

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        for s in self.sinks:
            s.log_metrics(metrics, step)

    def log_table(self, name: str, rows: Sequence[dict]) -> None:
        for s in self.sinks:
            s.log_table(name, rows)

    def log_records(self, records: Sequence[RequestRecord]) -> None:
        for s in self.sinks:
            s.log_records(records)

    def close(self) -> None:
        for s in self.sinks:
            s.close()


class WandbSink(Sink):
    """Weights & Biases, offline unless `mode=online` (WANDB_MODE in the environment, e.g.
    `disabled`, wins). Metrics are logged flat and namespaced (`flat_metrics`); tables and
    records as `wandb.Table`s."""

    def __init__(self, cfg: LoggerConfig, run_dir: str | Path) -> None:
        import os

        try:
            import wandb
        except ImportError as e:  # pragma: no cover - wandb is a declared dependency
            raise ImportError("logger=wandb needs the `wandb` package") from e
        self._wandb = wandb
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(
            project=cfg.project,
            mode=os.environ.get("WANDB_MODE", cfg.mode),
            dir=str(run_dir),
            name=cfg.name,
            group=cfg.group,
        )

    def log_config(self, config: dict) -> None:
        self._run.config.update(_jsonable(config), allow_val_change=True)

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        self._run.log(flat_metrics(metrics), step=step)

    def log_table(self, name: str, rows: Sequence[dict]) -> None:
        if not rows:
            return
        columns = list(rows[0])
        data = [[_jsonable(row.get(c)) for c in columns] for row in rows]
        self._run.log({name: self._wandb.Table(columns=columns, data=data)})

    def log_records(self, records: Sequence[RequestRecord]) -> None:
        scalar = (
            "request_id",
            "slo_class",
            "arrival",
            "prompt_len",
            "output_len",
            "ttft_slo",
            "ttft",
            "e2e",
            "ttft_met",
            "tbt_met",
            "preemptions",
            "rejected",
        )
        rows = [{k: r.to_dict()[k] for k in scalar} for r in records]
        self.log_table("records", rows)

    def close(self) -> None:
        self._run.finish()


def make_sink(cfg: LoggerConfig, run_dir: str | Path) -> Sink:
    """`none` -> NullSink; `json` -> JsonSink(run_dir); `wandb` -> run dir files and W&B."""
    if cfg.kind == "none":
        return NullSink()
    if cfg.kind == "json":
        return JsonSink(run_dir)
    if cfg.kind == "wandb":
        return MultiSink([JsonSink(run_dir), WandbSink(cfg, run_dir)])
    raise ValueError(f"unknown logger.kind {cfg.kind!r}; expected none, json or wandb")
