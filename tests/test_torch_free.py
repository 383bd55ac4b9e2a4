"""The scheduler, predictor, simulator, workload, metrics and core import (and run) with torch
absent: a meta-path finder makes every `import torch` fail, in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import sys

    class BlockTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is blocked in this test ({name})")
            return None

    sys.meta_path.insert(0, BlockTorch())
    import flowprefill.core, flowprefill.scheduler, flowprefill.predictor, flowprefill.sim
    import flowprefill.workload, flowprefill.metrics
    from flowprefill.config import HardwareConfig, ModelConfig, PolicyConfig, SLOConfig
    from flowprefill.config import WorkloadConfig
    from flowprefill.metrics import summarize
    from flowprefill.predictor import RooflinePredictor
    from flowprefill.sim import Simulator
    from flowprefill.workload import build_requests

    pred = RooflinePredictor(ModelConfig(), HardwareConfig())
    reqs = build_requests(WorkloadConfig(num_requests=50), SLOConfig(mode="bands"),
                          pred.isolated_ttft)
    summary = summarize(Simulator(PolicyConfig(), pred).run(reqs).records)
    assert summary["requests"] == 50
    assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
    print("ok")
""")


def test_imports_and_simulates_without_torch():
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
