"""Workload building: windows, rebasing, rate scaling, limits, clipping; the synthetic
generator; and that the workload/slo config groups compose into typed configs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from flowprefill.config import SLOConfig, WorkloadConfig
from flowprefill.workload import (
    TraceRecord,
    build_requests,
    generate,
    load_workload,
    project_root,
    shape_workload,
    write_canonical,
)

AZURE_CONV = "../shared/traces/azure_llm_2023_conv.csv"
needs_azure = pytest.mark.skipif(
    not (project_root() / AZURE_CONV).exists(), reason="shared Azure trace not present"
)


def _trace() -> list[TraceRecord]:
    # out of order on purpose; trace clock starts at 100 s
    times = [100.0, 101.0, 103.0, 102.0, 106.0, 110.0]
    lens = [10, 20, 30, 40, 50, 60]
    return [
        TraceRecord(t, n, 5, None, str(i)) for i, (t, n) in enumerate(zip(times, lens, strict=True))
    ]


def test_window_rebase_rate_scale_limit_clip() -> None:
    recs = _trace()
    out = shape_workload(recs, WorkloadConfig(format="canonical"))
    assert [r.timestamp for r in out] == [0.0, 1.0, 2.0, 3.0, 6.0, 10.0]
    assert [r.request_id for r in out] == ["0", "1", "3", "2", "4", "5"]

    # window [1, 6) from the first request, rebased so the first kept one arrives at 0
    out = shape_workload(recs, WorkloadConfig(format="canonical", start=1.0, end=6.0))
    assert [r.timestamp for r in out] == [0.0, 1.0, 2.0]
    assert [r.input_len for r in out] == [20, 40, 30]

    # rate_scale divides gaps
    out = shape_workload(recs, WorkloadConfig(format="canonical", rate_scale=2.0))
    assert [r.timestamp for r in out] == [0.0, 0.5, 1.0, 1.5, 3.0, 5.0]
    out = shape_workload(recs, WorkloadConfig(format="canonical", rate_scale=0.5, max_requests=3))
    assert [r.timestamp for r in out] == [0.0, 2.0, 4.0]

    out = shape_workload(recs, WorkloadConfig(format="canonical", max_prompt_len=25))
    assert [r.input_len for r in out] == [10, 20, 25, 25, 25, 25]
    assert shape_workload([], WorkloadConfig()) == []


def test_load_workload_canonical_file(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    write_canonical(_trace(), path)
    wcfg = WorkloadConfig(format="canonical", path=str(path), end=5.0)
    assert [r.timestamp for r in load_workload(wcfg)] == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="needs workload.path"):
        load_workload(WorkloadConfig(format="azure", path=None))


@needs_azure
def test_real_azure_window_and_rate_scale() -> None:
    full = load_workload(WorkloadConfig(format="azure", path=AZURE_CONV))
    assert len(full) == 19_366 and full[0].timestamp == 0.0
    win = load_workload(WorkloadConfig(format="azure", path=AZURE_CONV, start=0, end=120))
    assert 0 < len(win) < 1000
    assert win[-1].timestamp < 120 and (win[0].input_len, win[0].output_len) == (374, 44)
    fast = load_workload(
        WorkloadConfig(format="azure", path=AZURE_CONV, start=0, end=120, rate_scale=4.0)
    )
    assert len(fast) == len(win)
    np.testing.assert_allclose([r.timestamp for r in fast], [r.timestamp / 4 for r in win])
    later = load_workload(WorkloadConfig(format="azure", path=AZURE_CONV, start=600, end=660))
    assert later[0].timestamp == 0.0 and int(later[0].request_id) > int(win[-1].request_id)
    capped = load_workload(WorkloadConfig(format="azure", path=AZURE_CONV, max_requests=50))
    assert len(capped) == 50


def test_synthetic_is_seeded() -> None:
    a = generate("qwen_like", num_requests=200, rate=3.0, seed=7)
    b = generate("qwen_like", num_requests=200, rate=3.0, seed=7)
    c = generate("qwen_like", num_requests=200, rate=3.0, seed=8)
    assert a == b and a != c
    assert a[0].timestamp == 0.0 and all(
        x.timestamp <= y.timestamp for x, y in zip(a, a[1:], strict=False)
    )


def test_qwen_like_shares_and_means() -> None:
    recs = generate("qwen_like", num_requests=40_000, rate=10.0, seed=0)
    expected = {"text": (0.69, 646), "image": (0.07, 393), "search": (0.20, 5055),
                "file": (0.03, 4132)}  # fmt: skip
    for kind, (share, mean) in expected.items():
        lens = np.array([r.input_len for r in recs if r.req_type == kind])
        assert len(lens) / len(recs) == pytest.approx(share, abs=0.01)
        assert lens.mean() == pytest.approx(mean, rel=0.06)
    gaps = np.diff([r.timestamp for r in recs])
    assert gaps.mean() == pytest.approx(0.1, rel=0.03)


def test_gamma_arrivals_cv() -> None:
    recs = generate("short_long", num_requests=20_000, rate=2.0, arrival="gamma", cv=3.0)
    gaps = np.diff([r.timestamp for r in recs])
    assert gaps.mean() == pytest.approx(0.5, rel=0.1)
    assert gaps.std() / gaps.mean() == pytest.approx(3.0, rel=0.15)


def test_synthetic_via_config_and_build_requests() -> None:
    wcfg = WorkloadConfig(format="synthetic", num_requests=100, rate=2.0, rate_scale=2.0)
    recs = load_workload(wcfg)
    raw = generate(num_requests=100, rate=2.0)
    assert [r.timestamp for r in recs] == pytest.approx([r.timestamp / 2 for r in raw])
    reqs = build_requests(wcfg, SLOConfig())
    assert len(reqs) == 100 and reqs[0].request_id == "syn-0"
    assert all(q.slo.slo_class == q.req_type for q in reqs)


def test_config_groups_compose() -> None:
    from hydra import compose, initialize_config_dir

    from flowprefill.config import from_hydra, register_configs

    register_configs()
    conf = project_root() / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        for f in sorted((conf / "workload").glob("*.yaml")):
            cfg = compose(overrides=[f"+workload={f.stem}"])
            wcfg = from_hydra(WorkloadConfig, cfg.workload)
            assert wcfg.name == f.stem
            if wcfg.format == "synthetic":
                assert len(load_workload(dataclasses.replace(wcfg, num_requests=5))) == 5
        for f in sorted((conf / "slo").glob("*.yaml")):
            scfg = from_hydra(SLOConfig, compose(overrides=[f"+slo={f.stem}"]).slo)
            assert scfg.mode == f.stem
        cfg = compose(
            overrides=["+workload=azure_conv", "workload.path=x.jsonl", "workload.format=qwen"]
        )
        wcfg = from_hydra(WorkloadConfig, cfg.workload)
        assert (wcfg.path, wcfg.format) == ("x.jsonl", "qwen")
