"""Trace loaders on small files written here in each format, and on the real Azure trace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flowprefill.workload import (
    TraceRecord,
    detect_format,
    load_trace,
    project_root,
    read_canonical,
    resolve_path,
    write_canonical,
)

AZURE_CONV = "../shared/traces/azure_llm_2023_conv.csv"
needs_azure = pytest.mark.skipif(
    not (project_root() / AZURE_CONV).exists(), reason="shared Azure trace not present"
)


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_qwen_follow_up_turns_count_only_new_tokens(tmp_path: Path) -> None:
    rows = [
        {"chat_id": 1, "parent_chat_id": -1, "timestamp": 10.0, "input_length": 40,
         "output_length": 7, "type": "text", "turn": 1, "hash_ids": [1, 2, 3]},
        {"chat_id": 2, "parent_chat_id": -1, "timestamp": 10.5, "input_length": 5000,
         "output_length": 9, "type": "search", "turn": 1, "hash_ids": list(range(313))},
        # follow-up of chat 1: 3 -> 8 blocks, so 16 x 5 = 80 new tokens (not 130)
        {"chat_id": 3, "parent_chat_id": 1, "timestamp": 12.0, "input_length": 130,
         "output_length": 11, "type": "text", "turn": 2, "hash_ids": [1, 2, 3, 4, 5, 6, 7, 8]},
        # parent not in the file: keeps its full input_length
        {"chat_id": 4, "parent_chat_id": 99, "timestamp": 13.0, "input_length": 77,
         "output_length": 3, "type": "image", "turn": 2, "hash_ids": [9, 10, 11, 12, 13]},
        # no new blocks: at least one token
        {"chat_id": 5, "parent_chat_id": 3, "timestamp": 14.0, "input_length": 128,
         "output_length": 3, "type": "file", "turn": 3, "hash_ids": [1, 2, 3, 4, 5, 6, 7, 8]},
    ]  # fmt: skip
    path = _jsonl(tmp_path / "qwen.jsonl", rows)
    recs = load_trace(path, "qwen")
    assert [r.input_len for r in recs] == [40, 5000, 80, 77, 1]
    assert [r.output_len for r in recs] == [7, 9, 11, 3, 3]
    assert [r.req_type for r in recs] == ["text", "search", "text", "image", "file"]
    assert [r.request_id for r in recs] == ["1", "2", "3", "4", "5"]
    assert recs[0].parent_id is None and recs[2].parent_id == "1" and recs[2].turn == 2
    assert recs[1].timestamp == 10.5
    assert detect_format(path) == "qwen"


def test_azure_timestamp_parsing(tmp_path: Path) -> None:
    path = tmp_path / "azure.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 23:59:59.5000000,100,10\n"
        "2023-11-17 00:00:00.2500001,200,20\n"
        "2023-11-17 00:01:02.0000000,300,30\n"
    )
    recs = load_trace(path, "azure")
    times = [r.timestamp for r in recs]
    base = 23 * 3600 + 59 * 60 + 59.5
    assert times[0] == pytest.approx(base, abs=1e-9)
    assert times[1] - times[0] == pytest.approx(0.7500001, abs=1e-9)  # across midnight
    assert times[2] - times[0] == pytest.approx(62.5, abs=1e-9)
    assert [(r.input_len, r.output_len) for r in recs] == [(100, 10), (200, 20), (300, 30)]
    assert [r.request_id for r in recs] == ["0", "1", "2"]
    assert all(r.req_type is None for r in recs)
    assert detect_format(path) == "azure"


def test_mooncake_milliseconds(tmp_path: Path) -> None:
    rows = [
        {"timestamp": 0, "input_length": 6755, "output_length": 500, "hash_ids": [0, 1]},
        {"timestamp": 1500, "input_length": 512, "output_length": 20, "hash_ids": [0]},
        {"timestamp": 27482, "input_length": 9, "output_length": 1, "hash_ids": []},
    ]
    path = _jsonl(tmp_path / "mooncake.jsonl", rows)
    recs = load_trace(path, "mooncake")
    assert [r.timestamp for r in recs] == [0.0, 1.5, 27.482]
    assert [r.input_len for r in recs] == [6755, 512, 9]
    assert [r.request_id for r in recs] == ["0", "1", "2"]
    assert detect_format(path) == "mooncake"


def test_canonical_round_trip(tmp_path: Path) -> None:
    recs = [
        TraceRecord(0.0, 10, 2, "text", "a"),
        TraceRecord(1.25, 2000, 64, None, "b", parent_id="a", turn=2),
        TraceRecord(3.5, 7, 1),
    ]
    path = tmp_path / "sub" / "c.jsonl"
    assert write_canonical(recs, path) == 3
    assert read_canonical(path) == recs
    assert load_trace(path, "auto") == recs
    assert "req_type" not in path.read_text().splitlines()[2]  # None fields omitted


def test_unknown_format_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown trace format"):
        load_trace(tmp_path / "x.jsonl", "parquet")
    with pytest.raises(FileNotFoundError):
        load_trace(tmp_path / "missing.csv", "azure")


def test_relative_paths_resolve_against_project_root(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_path("pyproject.toml") == project_root() / "pyproject.toml"
    (tmp_path / "local.txt").write_text("x")
    assert resolve_path("local.txt") == Path("local.txt")  # found from cwd first


@needs_azure
def test_real_azure_conv_trace_loads() -> None:
    recs = load_trace(AZURE_CONV, "azure")
    assert len(recs) == 19_366
    assert (recs[0].input_len, recs[0].output_len) == (374, 44)
    assert recs[1].timestamp - recs[0].timestamp == pytest.approx(4.314579, abs=1e-6)
    span = recs[-1].timestamp - recs[0].timestamp
    assert 55 * 60 < span < 60 * 60  # 58 minutes
