"""Decoder structure, random init, tokenizers, and per-operator torch.compile."""

from __future__ import annotations

import json

import pytest
import torch

from flowprefill.config import EngineConfig, ModelConfig
from flowprefill.core import SLO, Job, Request, ops_per_forward
from flowprefill.executor import ModelRunner
from flowprefill.model import OpKind, load_model, load_tokenizer, random_weights
from flowprefill.model.tokenizer import ByteTokenizer, QwenTokenizer
from tests.cpu_fp32 import CPU_FP32

SMALL = ModelConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2,
                    num_heads=4, num_kv_heads=2, max_position=4096)


def test_operator_table():
    m = load_model(SMALL)
    assert m.num_ops == ops_per_forward(2) == 6
    kinds = [m.op_kind(i) for i in range(m.num_ops)]
    assert kinds == [(OpKind.EMBED, -1), (OpKind.ATTENTION, 0), (OpKind.MLP, 0),
                     (OpKind.ATTENTION, 1), (OpKind.MLP, 1), (OpKind.FINAL, -1)]


def test_random_init_is_seeded_and_shaped():
    tiny = random_weights(ModelConfig())  # the real tiny config: 151936 x 256 embedding
    assert tiny.lm_head is tiny.embed  # tied
    assert abs(tiny.embed.std().item() - 0.02) < 1e-3
    a, b = random_weights(SMALL), random_weights(SMALL)
    c = random_weights(ModelConfig(**{**SMALL.__dict__, "seed": 1}))
    assert torch.equal(a.layers[1].gate_up_w, b.layers[1].gate_up_w)
    assert not torch.equal(a.layers[1].gate_up_w, c.layers[1].gate_up_w)
    lw = a.layers[0]
    assert lw.qkv_w.shape == ((4 + 2 * 2) * 16, 64) and lw.qkv_b is not None
    assert lw.gate_up_w.shape == (256, 64) and lw.down_w.shape == (64, 128)
    llama = random_weights(ModelConfig(**{**SMALL.__dict__, "arch": "llama"}))
    assert llama.layers[0].qkv_b is None


def test_qwen_tokenizer_is_the_real_vocabulary():
    tok = load_tokenizer(ModelConfig())  # tiny: qwen2 arch, full vocabulary
    assert isinstance(tok, QwenTokenizer)
    ids = tok.encode("hello world")
    assert ids == [14990, 1879]
    assert tok.decode(ids) == "hello world"
    assert tok.eos_token_id == 151643
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]).endswith(
        "<|im_start|>assistant\n")


def test_byte_fallback_and_directory_tokenizer(tmp_path):
    tok = load_tokenizer(ModelConfig(**{**SMALL.__dict__, "arch": "llama"}))
    assert isinstance(tok, ByteTokenizer)
    assert tok.decode(tok.encode("héllo")) == "héllo"
    from tokenizers import Tokenizer, models, pre_tokenizers

    hf_tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]"))
    hf_tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf_tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "config.json").write_text(json.dumps({}))
    tok = load_tokenizer(ModelConfig(**{**SMALL.__dict__, "path": str(tmp_path)}))
    assert tok.encode("a b c") == [1, 2, 0]
    assert tok.decode([2, 1]) == "b a"


@pytest.mark.slow
def test_compiled_operators_match_eager_without_recompiling():
    import torch._dynamo.utils as dynamo_utils

    eager = ModelRunner(SMALL, EngineConfig(**CPU_FP32, num_kv_blocks=64))
    comp = ModelRunner(SMALL, EngineConfig(**CPU_FP32, num_kv_blocks=64, compile=True))
    graphs = []
    for n in (17, 33, 70):
        ids = tuple(torch.randint(0, 512, (n,)).tolist())
        out = []
        for rn in (eager, comp):
            req = Request(f"r{n}", 0.0, n, SLO(1.0), prompt_token_ids=ids)
            out.append(rn.prefill_job(Job.unsliced(n, (req,), SMALL.num_layers)).run())
        torch.testing.assert_close(out[1], out[0], atol=1e-5, rtol=1e-5)
        graphs.append(dynamo_utils.counters["stats"]["unique_graphs"])
    assert graphs[0] == graphs[1] == graphs[2]  # dynamic token dim: no recompile per length
