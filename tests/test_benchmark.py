"""The replay benchmark against a live server, and the experiment runner end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.server_proc import ROOT, ServerProcess

pytestmark = pytest.mark.slow
SUMMARY_KEYS = {"policy", "requests", "ttft_attainment", "goodput_rps", "by_class"}


def test_benchmark_replays_a_trace_window_against_a_live_server(tmp_path):
    sys.path.insert(0, str(ROOT / "runners"))
    from benchmark import run as run_benchmark
    from benchmark import spec_from_hydra
    from hydra import compose, initialize_config_dir

    from flowprefill.config import register_configs

    server = ServerProcess("model.num_layers=2")
    try:
        register_configs()
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
            cfg = compose(config_name="benchmark", overrides=[
                f"url={server.url}", "workload.max_requests=6", "max_output_tokens=3",
                "warmup=1", "logger=json", "label=flowprefill", "model.num_layers=2",
                "metrics.warmup_requests=0"])
        summary = run_benchmark(spec_from_hydra(cfg, tmp_path))
    finally:
        server.stop()
    assert SUMMARY_KEYS <= set(summary)
    assert summary["requests"] == 6 and summary["completed"] == 6
    records = [json.loads(x) for x in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert len(records) == 6
    for r in records:
        assert r["first_token_time"] > r["arrival"] >= 0
        assert len(r["token_times"]) >= 1  # 3 tokens: at least 2 chunks after the first
    assert json.loads((tmp_path / "summary.json").read_text())["requests"] == 6
    assert summary["preemptions"] == summary["server"]["preemptions"]  # counted by the server


def test_experiment_multirun_starts_and_stops_a_server_per_run(tmp_path):
    env = dict(os.environ, WANDB_MODE="disabled")
    out = subprocess.run(
        [sys.executable, str(ROOT / "runners" / "experiment.py"), "-m",
         "policy=fcfs,flowprefill", "model.num_layers=2", "workload.max_requests=4",
         "max_output_tokens=2", "warmup=1", "metrics.warmup_requests=0",
         f"hydra.sweep.dir={tmp_path}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summaries = sorted(tmp_path.glob("*/summary.json"))
    assert len(summaries) == 2
    policies = set()
    for path in summaries:
        s = json.loads(path.read_text())
        assert s["requests"] == 4 and s["server_exit_code"] == 0
        policies.add(s["policy"])
        assert (path.parent / "server.log").exists()
    assert policies == {"fcfs", "flowprefill"}


def test_burst_benchmark_records_outcomes_and_memory_per_burst(tmp_path):
    out = tmp_path / "burst.json"
    env = dict(os.environ, WANDB_MODE="disabled")
    subprocess.run(
        [sys.executable, str(ROOT / "runners" / "bench_burst.py"), "bursts=2", "size=60",
         "serve=['model=tiny','model.num_layers=1','server.max_waiting=8']", f"out={out}",
         f"hydra.run.dir={tmp_path}/run"], cwd=ROOT, env=env, check=True, timeout=300)
    result = json.loads(out.read_text())
    rows = result["bursts"]
    assert [r["burst"] for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        assert r["served"] + r["refused"] == 60 and r["server_errors"] == 0
        assert r["refused"] >= 1  # max_waiting=8 cannot hold a burst of 60
        assert r["idle"] and r["kv_blocks_free"] == r["kv_blocks_total"]
    assert all(r["rss_mb"] > 50 for r in rows)  # the server's process tree, measured
    assert result["server_exit_code"] == 0 and result["all_settled"]
