"""A model that does not fit is refused before anything is allocated, with the sizes and the
ways out; `auto` engine settings resolve per machine."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flowprefill.config import EngineConfig, ModelConfig, from_hydra, load_option
from flowprefill.executor.device import Machine, hardware_preset, resolve
from flowprefill.executor.memory import GiB, ModelDoesNotFit, check_fits, num_params, plan_memory
from tests.server_proc import ROOT

transformers = pytest.importorskip("transformers")


def model(name: str) -> ModelConfig:
    return from_hydra(ModelConfig, load_option("model", name))


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_parameter_count_is_transformers_count(arch):
    kw = dict(vocab_size=320, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2)
    if arch == "qwen2":
        hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(tie_word_embeddings=False,
                                                                    **kw))
    else:
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(tie_word_embeddings=True,
                                                                    **kw))
    ours = ModelConfig(arch=arch, vocab_size=320, hidden_size=64, intermediate_size=160,
                       num_layers=3, num_heads=4, num_kv_heads=2,
                       tie_word_embeddings=arch == "llama")
    assert num_params(ours) == sum(p.numel() for p in hf.parameters())


def test_published_model_sizes():
    assert num_params(model("qwen2_7b")) / 1e9 == pytest.approx(7.62, abs=0.01)
    assert num_params(model("qwen2_5_14b")) / 1e9 == pytest.approx(14.77, abs=0.01)
    assert num_params(model("llama3_8b")) / 1e9 == pytest.approx(8.03, abs=0.01)


def test_refused_with_sizes_and_options():
    m = model("qwen2_7b")
    e = EngineConfig(device="cpu", dtype="bfloat16", num_kv_blocks=4096)
    plan = plan_memory(m, e)
    assert plan.weights == num_params(m) * 2
    assert plan.kv_pool == 4096 * 16 * m.num_layers * 2 * m.num_kv_heads * m.dim_head * 2
    with pytest.raises(ModelDoesNotFit) as err:
        check_fits(m, e, free=20 * GiB)
    msg = str(err.value)
    assert "weights 14.2 GiB (bfloat16)" in msg and "RAM available: 20.0 GiB" in msg
    assert "engine.num_kv_blocks=" in msg  # the weights fit beside a smaller pool
    with pytest.raises(ModelDoesNotFit, match="engine.dtype=bfloat16"):
        check_fits(m, EngineConfig(device="cpu", dtype="float32"), free=20 * GiB)
    assert check_fits(m, e, free=plan.total) == plan


def test_serving_a_model_too_large_for_this_machine_exits_with_the_message():
    """qwen2_5_14b in bf16 needs ~30 GiB: more than any 24 GiB machine has."""
    proc = subprocess.run([sys.executable, str(ROOT / "serve.py"), "model=qwen2_5_14b",
                           "engine=cpu", "hydra.run.dir=.pytest_cache/servers",
                           "hydra.output_subdir=null"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "model qwen2_5_14b does not fit" in proc.stderr and "GiB" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_auto_settings_per_machine():
    gpu = Machine(cuda=True, cpu_bf16=None, flashinfer=True)
    bf16_cpu = Machine(cuda=False, cpu_bf16="avx512_bf16", flashinfer=False)
    old_cpu = Machine(cuda=False, cpu_bf16=None, flashinfer=False)
    auto = EngineConfig()
    g = resolve(auto, gpu)
    assert (g.device, g.dtype, g.attention, g.compile) == ("cuda", "bfloat16", "flashinfer", True)
    assert g.max_unit_s == pytest.approx(0.002)
    c = resolve(auto, bf16_cpu)
    assert (c.device, c.dtype, c.attention, c.compile) == ("cpu", "bfloat16", "torch", False)
    assert resolve(auto, old_cpu).dtype == "float32"
    assert resolve(EngineConfig(dtype="float32"), gpu).dtype == "float32"  # explicit wins
    assert resolve(EngineConfig(device="cuda"), Machine(True, None, False)).attention == "torch"
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve(EngineConfig(device="cuda"), old_cpu)
    assert hardware_preset(g, "NVIDIA H200") == "h200"
    assert hardware_preset(g, "NVIDIA H100 80GB HBM3") == "h100"
    assert hardware_preset(g, "NVIDIA A800-SXM4-80GB") == "a800"
    assert hardware_preset(c) == "cpu_bf16" and hardware_preset(resolve(auto, old_cpu)) == "cpu"
    with pytest.raises(ValueError, match="no preset for the GPU"):
        hardware_preset(g, "NVIDIA GeForce GTX 1080")
