"""runners/bench_ops.py on a 1-layer model: every variant runs, computes the monolithic
forward's logits, and the overheads and decode rates are reported."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from flowprefill.config import EngineConfig, ModelConfig
from tests.cpu_fp32 import CPU_FP32
from tests.server_proc import ROOT


@pytest.fixture(scope="module")
def bench_ops():
    sys.path.insert(0, str(ROOT / "runners"))
    spec = importlib.util.spec_from_file_location("bench_ops_runner", ROOT / "runners/bench_ops.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_variants_agree_and_report(bench_ops):
    model = ModelConfig(num_layers=1, max_position=2048, vocab_size=512, tokenizer="bytes")
    out = bench_ops.run(model, EngineConfig(**CPU_FP32, num_kv_blocks=256, max_unit_ms=1.0),
                        [300], ["monolithic", "operator", "sliced", "loop", "chunked_128"],
                        [False], repeats=1, warmup=0, seed=0, decode_batches=(1, 2),
                        decode_context=40)
    assert set(out["results"]) == {"monolithic", "operator", "sliced", "loop", "chunked_128"}
    assert all(r["300"] > 0 for r in out["results"].values())
    for key, diff in out["max_abs_diff_vs_monolithic"].items():
        assert diff < 1e-4, key  # slicing and chunking change no result
    assert "loop/300" not in out["max_abs_diff_vs_monolithic"]  # the loop returns tokens
    assert set(out["unit_overhead_us"]) == {"operator_vs_monolithic", "sliced_vs_monolithic",
                                            "loop_vs_sliced"}
    assert set(out["decode"]["eager"]) == {"1", "2"}
    assert all(r["tok_s"] > 0 for r in out["decode"]["eager"].values())
