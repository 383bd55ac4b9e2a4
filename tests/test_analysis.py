"""analysis/: figures and the headline table from a small synthetic sweep directory, and the
boundary: plotting imports neither torch nor flowprefill."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis.plot import main, make_all  # noqa: E402
from analysis.runs import load_runs  # noqa: E402
from analysis.table import headline  # noqa: E402

POLICIES = {  # arm -> (policy config, max goodput req/s)
    "fcfs": ({"name": "fcfs", "order": "fcfs", "granularity": "none"}, 2.0),
    "chunked512_fcfs": ({"name": "chunked", "order": "fcfs", "granularity": "chunk",
                         "chunk_size": 512}, 2.5),
    "chunked2048_sedf": ({"name": "chunked", "order": "sedf", "granularity": "chunk",
                          "chunk_size": 2048}, 4.0),
    "flowprefill_operator": ({"name": "flowprefill", "order": "sedf",
                              "granularity": "operator", "drop": "demote"}, 10.0),
}
FIGS = ("goodput_vs_rate", "attainment_vs_slo_scale", "ttft_cdf", "preemption_latency",
        "granularity_tradeoff", "predicted_vs_measured")


def _records(n: int, preempt: bool) -> list[dict]:
    return [{"request_id": str(i), "slo_class": "urgent" if i % 3 == 0 else "relaxed",
             "ttft": 0.01 * (1 + i % 7), "ttft_slo": 0.05, "prompt_len": 100 + 10 * i,
             "preemption_latencies": [1e-4 * (1 + i % 5)] if preempt and i % 2 else []}
            for i in range(n)]


def _write_run(d: Path, arm: str, policy: dict, best: float, slo_scale: float = 1.0) -> None:
    d.mkdir(parents=True)
    points = [{"rate_scale": s, "offered_rps": best * s, "goodput_rps": best * s * a,
               "ttft_attainment": a} for s, a in ((0.5, 0.99), (1.0, 0.92), (2.0, 0.5))]
    gran = {"compute_inflation": 0.3 if policy["granularity"] == "chunk" else 0.0,
            "blocking_p99": {"none": 1.0, "chunk": 0.05, "operator": 0.001}[
                policy["granularity"]], "blocking_p50": 0.001, "blocking_max": 2.0}
    summary = {"arm": arm, "label": policy["name"], "policy": policy["name"],
               "policy_config": policy, "predictor": "roofline", "model": "llama3_8b",
               "hardware": "a800", "workload": "azure_conv", "runs_on": "sim",
               "slo_scale": slo_scale, "max_goodput_rps": best, "max_rate_scale": 1.0,
               "ttft_attainment": 0.92 * min(1.0, slo_scale), "goodput_rps": best,
               "offered_rps": best, "points": points, "granularity": gran,
               "ttft_p99": 0.07, "preemption_latency_p99": 5e-4,
               "attainment_vs_slo_scale": {"0.4": 0.2, "1.0": 0.92, "2.0": 0.99}}
    (d / "summary.json").write_text(json.dumps(summary))
    (d / "config.json").write_text(json.dumps({"policy": policy, "slo": {"scale": slo_scale}}))
    recs = _records(30, policy["granularity"] == "operator")
    (d / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (d / "tables").mkdir()
    rows = [{"request_id": r["request_id"], "predicted_ttft": 0.011 * (1 + i % 4),
             "isolated_ttft": 0.01 * (1 + i % 4)} for i, r in enumerate(recs)]
    (d / "tables" / "predictions.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows))
    (d / "probe_0").mkdir()  # a run's own sub-directories are not runs
    (d / "probe_0" / "summary.json").write_text(json.dumps({"ttft_attainment": 0.1}))


@pytest.fixture()
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "runs" / "goodput_vs_rate" / "2026-01-01_00-00-00_sim"
    for i, (arm, (policy, best)) in enumerate(POLICIES.items()):
        _write_run(root / f"{i}_arm={arm}", arm, policy, best)
    return root


def test_plot_writes_every_figure_and_the_table(sweep, tmp_path):
    out = tmp_path / "fig"
    main([f"runs={sweep}", f"out={out}"])
    for name in FIGS:
        png = out / f"{name}.png"
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG", name
    table = (out / "headline.md").read_text()
    assert "| flowprefill_operator | 10 |" in table
    assert "**5.00x**" in table  # FlowPrefill / FCFS
    assert "**2.50x**" in table and "chunked2048_sedf" in table  # / best chunked


def test_runs_skip_probe_directories_and_missing_data(sweep, tmp_path):
    runs = load_runs(sweep)
    assert len(runs) == 4 and all("probe" not in r.path.name for r in runs)
    one = load_runs(sweep / "0_arm=fcfs")
    assert len(one) == 1 and one[0].is_fcfs
    for r in runs:  # no records, no tables: only what the summaries hold
        (r.path / "records.jsonl").unlink()
    written = {p.stem for p in make_all(sweep, tmp_path / "bare")}
    assert {"goodput_vs_rate", "granularity_tradeoff", "headline"} <= written
    assert "ttft_cdf" not in written


def test_replay_runs_give_a_replay_table(tmp_path):
    root = tmp_path / "slo"
    for i, scale in enumerate((0.4, 1.0, 2.0)):
        _write_run(root / f"{i}", "fcfs", POLICIES["fcfs"][0], 2.0, scale)
        s = json.loads((root / f"{i}" / "summary.json").read_text())
        for k in ("max_goodput_rps", "points"):
            s.pop(k)
        (root / f"{i}" / "summary.json").write_text(json.dumps(s))
    table = headline(load_runs(root))
    assert "| SLO scale |" in table and table.count("| fcfs |") == 3
    written = {p.name for p in make_all(root, tmp_path / "f")}
    assert "attainment_vs_slo_scale.png" in written and "goodput_vs_rate.png" not in written


def test_analysis_imports_neither_torch_nor_the_engine():
    code = ("import sys; sys.path.insert(0, '.'); import analysis.plot; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'flowprefill')]; "
            "assert not bad, bad")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
