"""Sinks: the JSON run directory, the null sink, make_sink, and the logger config group.
W&B is never started here (WANDB_MODE=disabled in case anything reaches it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flowprefill.config import LoggerConfig
from flowprefill.metrics import (
    JsonSink,
    MultiSink,
    NullSink,
    RequestRecord,
    Sink,
    make_sink,
    summarize,
)


@pytest.fixture(autouse=True)
def _no_wandb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")


def _records() -> list[RequestRecord]:
    return [
        RequestRecord("a", "urgent", 0.0, 10, 2, 1.0, first_token_time=0.5, token_times=[0.6],
                      finish_time=0.6),
        RequestRecord("b", "relaxed", 0.1, 20, 1, 4.0, rejected=True),
    ]  # fmt: skip


def test_json_sink_writes_run_dir(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    records = _records()
    summary = summarize(records)
    with make_sink(LoggerConfig(kind="json"), run_dir) as sink:
        assert isinstance(sink, JsonSink)
        sink.log_config({"policy": {"name": "fcfs"}, "workload": {"rate_scale": 2.0}})
        sink.log_metrics(summary)
        sink.log_metrics({"max_goodput_rps": 3.5}, step=1)
        sink.log_table("by_class", [{"class": k, **v} for k, v in summary["by_class"].items()])
        sink.log_records(records)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["policy"]["name"] == "fcfs"
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["ttft_attainment"] == 0.5 and saved["max_goodput_rps"] == 3.5
    assert saved["by_class"]["urgent"]["requests"] == 1
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1]) == {"step": 1, "max_goodput_rps": 3.5}
    rows = [json.loads(x) for x in (run_dir / "records.jsonl").read_text().splitlines()]
    assert [r["request_id"] for r in rows] == ["a", "b"]
    assert rows[0]["ttft"] == 0.5 and rows[0]["ttft_met"] and rows[1]["rejected"]
    assert rows[0]["tbt_slo"] is None  # inf is written as null: plain JSON everywhere
    table = (run_dir / "tables" / "by_class.jsonl").read_text().splitlines()
    assert {json.loads(x)["class"] for x in table} == {"urgent", "relaxed"}


def test_null_and_multi_sink(tmp_path: Path) -> None:
    sink = make_sink(LoggerConfig(kind="none"), tmp_path / "unused")
    assert isinstance(sink, NullSink) and isinstance(sink, Sink)
    sink.log_config({})
    sink.log_metrics({"x": 1})
    sink.log_table("t", [])
    sink.log_records(_records())
    sink.close()
    assert not (tmp_path / "unused").exists()
    multi = MultiSink([JsonSink(tmp_path / "a"), JsonSink(tmp_path / "b"), NullSink()])
    multi.log_metrics({"x": 1})
    multi.close()
    assert (tmp_path / "a" / "summary.json").exists() and (tmp_path / "b" / "summary.json").exists()
    with pytest.raises(ValueError, match="logger.kind"):
        make_sink(LoggerConfig(kind="csv"), tmp_path)


def test_logger_group_composes() -> None:
    from hydra import compose, initialize_config_dir

    from flowprefill.config import from_hydra, register_configs
    from flowprefill.workload import project_root

    register_configs()
    conf = project_root() / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        kinds = {}
        for f in sorted((conf / "logger").glob("*.yaml")):
            lcfg = from_hydra(LoggerConfig, compose(overrides=[f"+logger={f.stem}"]).logger)
            kinds[f.stem] = (lcfg.kind, lcfg.mode)
    assert kinds == {"json": ("json", "offline"), "none": ("none", "offline"),
                     "wandb": ("wandb", "offline")}  # fmt: skip
