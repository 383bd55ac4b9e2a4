"""runners/simulate.py: every policy/hardware/predictor config composes; run() in both modes;
a Hydra multirun from the command line."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from flowprefill.config import register_configs

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")


def _runner():
    spec = importlib.util.spec_from_file_location("simulate_runner", ROOT / "runners/simulate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def runner():
    register_configs()
    return _runner()


def _setup(runner, *overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("simulate", overrides=list(overrides))
    return runner.setup_from(cfg)


@pytest.mark.parametrize("group", ["policy", "hardware", "predictor", "sim"])
def test_every_option_composes(runner, group):
    for path in sorted((ROOT / "conf" / group).glob("*.yaml")):
        setup = _setup(runner, f"{group}={path.stem}")
        assert getattr(setup, group) is not None


def test_orthogonal_overrides(runner):
    s = _setup(runner, "policy=flowprefill", "policy.order=sedf", "policy.granularity=chunk",
               "policy.chunk_size=2048")
    assert (s.policy.order, s.policy.granularity, s.policy.chunk_size) == ("sedf", "chunk", 2048)
    assert s.hardware.peak_flops == 312e12 and s.model.name == "llama3_8b"


def test_replay_and_max_goodput(runner, tmp_path):
    small = ["workload.max_requests=600", "slo=bands"]
    s = _setup(runner, "policy=flowprefill", *small)
    out = tmp_path / "fp.json"
    summary = runner.run(s, out, tmp_path / "events.jsonl")
    on_disk = json.loads(out.read_text())
    for key in ("policy", "requests", "ttft_attainment", "goodput_rps", "by_class"):
        assert key in on_disk
    assert on_disk["requests"] == summary["requests"] == 600 - 32  # warm-up left out
    assert summary["warmup_excluded"] == 32
    assert (tmp_path / "events.jsonl").read_text().count("\n") > 1200
    s = _setup(runner, "policy=fcfs", "mode=max_goodput", "search.iters=3", *small)
    found = runner.run(s)
    assert found["max_rate_scale"] > 0 and found["max_goodput_rps"] > 0
    assert found["ttft_attainment"] >= 0.9 and found["mode"] == "max_goodput"


@pytest.mark.slow
def test_cli_multirun(tmp_path):
    cmd = [sys.executable, "runners/simulate.py", "-m", "policy=fcfs,chunked,flowprefill",
           "workload.max_requests=300", f"out={tmp_path}/" + "${policy.name}.json",
           f"hydra.sweep.dir={tmp_path}/multirun"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("fcfs", "chunked", "flowprefill"):
        assert json.loads((tmp_path / f"{name}.json").read_text())["policy"] == name
