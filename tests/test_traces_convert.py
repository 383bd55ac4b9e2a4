"""The traces/convert.py CLI, run as a subprocess: window + convert, and a round trip."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flowprefill.workload import TraceRecord, project_root, read_canonical, write_canonical

SCRIPT = project_root() / "traces" / "convert.py"
AZURE_CONV = "../shared/traces/azure_llm_2023_conv.csv"


def _convert(*args: str, cwd: Path) -> str:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_qwen_to_canonical_round_trip(tmp_path: Path) -> None:
    rows = [
        {"chat_id": 7, "parent_chat_id": -1, "timestamp": 50.0, "input_length": 32,
         "output_length": 4, "type": "text", "turn": 1, "hash_ids": [1, 2]},
        {"chat_id": 8, "parent_chat_id": 7, "timestamp": 51.0, "input_length": 64,
         "output_length": 5, "type": "text", "turn": 2, "hash_ids": [1, 2, 3, 4]},
        {"chat_id": 9, "parent_chat_id": -1, "timestamp": 60.0, "input_length": 900,
         "output_length": 6, "type": "file", "turn": 1, "hash_ids": list(range(57))},
    ]  # fmt: skip
    src = tmp_path / "qwen.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    stdout = _convert(f"in={src}", "format=qwen", f"out={out}", "start=0", "end=5", cwd=tmp_path)
    assert "wrote 2 requests" in stdout
    recs = read_canonical(out)
    assert [(r.timestamp, r.input_len, r.req_type, r.request_id) for r in recs] == [
        (0.0, 32, "text", "7"), (1.0, 32, "text", "8")
    ]  # fmt: skip
    # canonical -> canonical (format detected) is the identity
    again = tmp_path / "again.jsonl"
    _convert(f"in={out}", f"out={again}", cwd=tmp_path)
    assert read_canonical(again) == recs


def test_rate_scale_and_limits(tmp_path: Path) -> None:
    src = tmp_path / "c.jsonl"
    write_canonical([TraceRecord(float(2 * i), 10 * (i + 1), 1) for i in range(10)], src)
    out = tmp_path / "o.jsonl"
    _convert(f"in={src}", "format=canonical", f"out={out}", "rate_scale=2", "max_requests=4",
             "max_prompt_len=25", cwd=tmp_path)  # fmt: skip
    recs = read_canonical(out)
    assert [r.timestamp for r in recs] == [0.0, 1.0, 2.0, 3.0]
    assert [r.input_len for r in recs] == [10, 20, 25, 25]


def test_bad_arguments_fail(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "bogus=1"], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)  # fmt: skip
    assert proc.returncode != 0 and "unknown argument" in proc.stderr


@pytest.mark.skipif(not (project_root() / AZURE_CONV).exists(), reason="no shared Azure trace")
def test_azure_window_from_another_cwd(tmp_path: Path) -> None:
    out = tmp_path / "w.jsonl"
    _convert(f"in={AZURE_CONV}", "format=azure", f"out={out}", "start=0", "end=120",
             cwd=tmp_path)  # fmt: skip
    recs = read_canonical(out)
    assert recs[0].timestamp == 0.0 and (recs[0].input_len, recs[0].output_len) == (374, 44)
    assert recs[-1].timestamp < 120 and 300 < len(recs) < 700
