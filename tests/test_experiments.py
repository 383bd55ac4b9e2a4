"""conf/experiment/*.yaml: every experiment composes on both targets (the simulator's root
and the real engine's), every swept arm composes, and each smoke-runs in the simulator with
tiny overrides; the run directory gets the logged files; a CLI multirun lands in the
documented layout (runs/<experiment>/<timestamp>_<target>/<job>/summary.json)."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException

from flowprefill.config import (
    HardwareConfig,
    ModelConfig,
    PolicyConfig,
    PredictorConfig,
    from_hydra,
    register_configs,
)
from flowprefill.metrics import JsonSink
from flowprefill.predictor import OP_KINDS, make_predictor, save_artifact
from flowprefill.sim.experiment import cost_models, run_with_result

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
ROOTS = {"sim": "simulate", "real": "live"}
# a small synthetic workload (no trace parsing per probe) and a short, bounded search
TINY = ["workload=qwen_like", "workload.num_requests=60", "search.iters=1", "search.lo=0.0625",
        "search.hi=4", "logger=json"]
ARMS = sorted(p.stem for p in (ROOT / "conf" / "arm").glob("*.yaml"))


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def sim():
    register_configs()
    return _load("simulate_runner", ROOT / "runners/simulate.py")


@functools.cache
def _compose(root: str, *overrides: str, hydra_cfg: bool = False):
    """Composed once per argument tuple (callers only read the result)."""
    register_configs()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(root, overrides=list(overrides), return_hydra_config=hydra_cfg)


def _sweep(exp: str) -> dict[str, list[str]]:
    params = _compose("simulate", f"experiment={exp}", hydra_cfg=True).hydra.sweeper.params
    return {k: str(v).split(",") for k, v in params.items()}


def test_the_required_experiments_exist():
    assert {"goodput_vs_rate", "slo_scale", "granularity_ablation", "batching_ablation",
            "predictor_ablation"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("target", ROOTS)
@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_experiment_composes_on_both_targets(exp, target):
    register_configs()
    cfg = _compose(ROOTS[target], f"experiment={exp}")
    assert cfg.exp.name == exp and cfg.target == target
    assert cfg.model.name == ("llama3_8b" if target == "sim" else "tiny")
    for key, values in _sweep(exp).items():
        assert key != "arm" or set(values) <= set(ARMS)  # arms compose in their own test
        for value in [] if key == "arm" else values[:: max(1, len(values) - 1)]:
            try:
                c = _compose(ROOTS[target], f"experiment={exp}", f"{key}={value}")
            except MissingConfigException as e:  # a kind another issue has not added yet
                assert key == "predictor" and value in str(e), e
                continue
            from_hydra(PolicyConfig, c.policy)
            from_hydra(PredictorConfig, c.predictor)
            assert c.workload.rate_scale > 0 and c.search.iters >= 1


@pytest.mark.parametrize("target", ROOTS)
def test_every_arm_composes(target):
    # arms are root-independent overrides: all on the simulator's root, a few on the live one
    for arm in ARMS if target == "sim" else ARMS[::6]:
        c = _compose(ROOTS[target], f"arm={arm}")
        assert from_hydra(PolicyConfig, c.policy).name in ("fcfs", "chunked", "flowprefill")


def test_granularity_arms_share_the_order():
    register_configs()
    arms = _sweep("granularity_ablation")["arm"]
    policies = [from_hydra(PolicyConfig, _compose("simulate", f"arm={a}").policy) for a in arms]
    assert {p.order for p in policies} == {"sedf"}
    assert [p.granularity for p in policies] == ["none", "chunk", "chunk", "chunk", "layer",
                                                 "operator"]
    assert [p.chunk_size for p in policies if p.granularity == "chunk"] == [512, 2048, 8192]


@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_experiment_smoke_runs_in_the_simulator(sim, exp, tmp_path):
    sweep = _sweep(exp)
    key, values = next(iter(sweep.items()))
    runnable = [v for v in values if v not in ("fitted", "cubic")][:2]  # need artifacts
    for value in runnable:
        cfg = _compose("simulate", f"experiment={exp}", f"{key}={value}", *TINY)
        run_dir = tmp_path / value
        with JsonSink(run_dir) as sink:
            summary = sim.run(sim.setup_from(cfg), run_dir / "summary.json", sink=sink)
        # the first 32 requests are warm-up, outside the summary (metrics.warmup_requests)
        assert summary["requests"] == 60 - 32 and summary["warmup_excluded"] == 32
        assert 0.0 <= summary["ttft_attainment"] <= 1.0
        if cfg.mode == "max_goodput":
            assert summary["points"] and "max_goodput_rps" in summary
        for name in ("summary.json", "records.jsonl", "tables/by_class.jsonl"):
            assert (run_dir / name).is_file(), name


def test_predictor_ablation_oracle_and_missing_kinds(sim):
    base = ["experiment=predictor_ablation", *TINY, "mode=replay"]
    oracle = sim.run(sim.setup_from(_compose("simulate", *base, "predictor=oracle")))
    roof = sim.run(sim.setup_from(_compose("simulate", *base, "predictor=roofline")))
    # the truth is roofline here, so the roofline predictor is the oracle
    assert oracle["truth"] == "roofline" and oracle["ttft_attainment"] == roof["ttft_attainment"]
    no_truth = sim.setup_from(_compose("simulate", *TINY, "predictor=oracle"))
    with pytest.raises(ValueError, match="truth.kind"):
        sim.run(no_truth)
    fitted = sim.setup_from(_compose("simulate", *base, "predictor=fitted"))
    with pytest.raises(FileNotFoundError, match="predictor.path"):
        sim.run(fitted)
    cfg = _compose("simulate")
    with pytest.raises((ValueError, FileNotFoundError)) as err:  # cubic: issue 6's kind
        make_predictor(PredictorConfig(kind="cubic"), from_hydra(ModelConfig, cfg.model),
                       from_hydra(HardwareConfig, cfg.hardware))
    assert "cubic" in str(err.value) or "path" in str(err.value)


def test_truth_charges_the_device_and_prices_slos(sim, tmp_path):
    """A scheduler planning with a wrong model (a fitted artifact that prices every operator
    at 1 ms) faces the truth's SLOs, and the device is charged the truth's costs."""
    art = save_artifact(tmp_path / "predictor.json",
                        {k: {"const": 1e-3} for k in OP_KINDS}, num_layers=32,
                        model="llama3_8b", hardware="a800")
    base = ["workload=qwen_like", "workload.num_requests=1", "mode=replay",
            "truth.kind=roofline", "metrics.warmup_requests=0"]
    setup = sim.setup_from(_compose("simulate", *base, "predictor=fitted",
                                    f"predictor.path={art}"))
    oracle = sim.setup_from(_compose("simulate", *base, "predictor=oracle"))
    models = cost_models(setup)
    assert models.predictor is not models.truth
    for s in (setup, oracle):
        summary, result = run_with_result(s)
        (rec,) = result.records
        assert rec.ttft == pytest.approx(models.truth.isolated_ttft(rec.prompt_len))
    assert models.predictor.isolated_ttft(rec.prompt_len) == pytest.approx(66e-3)
    assert summary["truth"] == "roofline" and summary["predictor"] == "oracle"


def test_wandb_logger_writes_the_run_directory(tmp_path):
    env = dict(os.environ, WANDB_MODE="disabled")
    cmd = [sys.executable, "runners/simulate.py", "experiment=slo_scale", "arm=fcfs",
           "workload=qwen_like", "workload.num_requests=60", f"hydra.run.dir={tmp_path}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["experiment"], summary["runs_on"], summary["arm"]) == (
        "slo_scale", "sim", "fcfs")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["logger"]["kind"] == "wandb" and config["policy"]["name"] == "fcfs"
    assert (tmp_path / "records.jsonl").read_text().count("\n") == 60
    for table in ("by_class", "predictions"):
        assert (tmp_path / "tables" / f"{table}.jsonl").is_file()


@pytest.mark.slow
def test_cli_multirun_layout_and_plots(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "runners/simulate.py", "-m", "experiment=granularity_ablation",
           "arm=sedf_none,sedf_chunk512,sedf_operator", *TINY, f"hydra.sweep.dir={sweep}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    jobs = sorted(p.parent.name for p in sweep.glob("*/summary.json"))
    assert len(jobs) == 3 and jobs[0].startswith("0_arm-sedf_none__")
    plot = [sys.executable, "analysis/plot.py", f"runs={sweep}", f"out={tmp_path / 'fig'}"]
    done = subprocess.run(plot, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "fig" / "granularity_tradeoff.png").is_file()
    assert "sedf_operator" in (tmp_path / "fig" / "headline.md").read_text()


def test_real_target_passes_the_resolved_policy_to_serve(tmp_path):
    register_configs()
    live = _load("experiment_runner", ROOT / "runners/experiment.py")
    cfg = _compose("live", "experiment=granularity_ablation", "arm=sedf_chunk512")
    args = live.serve_config_args(cfg, tmp_path)
    assert args[1] == "--config-name=serve_config"
    from omegaconf import OmegaConf

    written = OmegaConf.load(tmp_path / "serve_config.yaml")
    policy = from_hydra(PolicyConfig, written.policy)
    assert (policy.order, policy.granularity, policy.chunk_size) == ("sedf", "chunk", 512)
    assert written.model.name == "tiny" and cfg.mode == "max_goodput" and cfg.search.iters == 3
