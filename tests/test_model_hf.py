"""Our decoder against `transformers` on the same random checkpoint (fp32, CPU, no download)."""

from __future__ import annotations

import pytest
import torch

from flowprefill.config import EngineConfig, ModelConfig
from flowprefill.core import SLO, Job, Request
from flowprefill.executor import ModelRunner, Piece, build_prefill_batch
from flowprefill.model import config_from_hf
from flowprefill.model.loading import hf_weights
from tests.cpu_fp32 import CPU_FP32

transformers = pytest.importorskip("transformers")

TOL = 1e-4


def save_tiny_hf(arch: str, path, vocab: int = 320, **kw):
    """A random tiny Qwen2/Llama checkpoint in `path`; norms and biases perturbed off 1/0."""
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  rms_norm_eps=1e-6, **kw)
    if arch == "qwen2":
        cfg = transformers.Qwen2Config(rope_theta=10000.0, tie_word_embeddings=False, **common)
        cls = transformers.Qwen2ForCausalLM
    else:
        cfg = transformers.LlamaConfig(rope_theta=500000.0, tie_word_embeddings=True, **common)
        cls = transformers.LlamaForCausalLM
    torch.manual_seed(0)
    model = cls(cfg).float().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:  # norm weights (ones) and QKV biases (zeros) by default
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def hf(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    model = save_tiny_hf(request.param, path)
    runner = ModelRunner(ModelConfig(path=str(path)), EngineConfig(**CPU_FP32, num_kv_blocks=64))
    return model, runner


def _hf_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]  # [T, V]


def _prompts(lengths, vocab=320, seed=0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def test_config_from_hf_reads_architecture(hf):
    model, runner = hf
    cfg = runner.model_cfg
    assert cfg.arch == model.config.model_type
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads) == (64, 2, 4, 2)
    assert cfg.rope_theta == model.config.rope_parameters["rope_theta"]
    assert cfg.tie_word_embeddings == model.config.tie_word_embeddings
    assert (runner.model.weights.layers[0].qkv_b is not None) == (cfg.arch == "qwen2")


def test_all_positions_match_transformers(hf):
    model, runner = hf
    (ids,) = _prompts([37])
    runner.blocks.allocate("all", len(ids))
    batch = build_prefill_batch(runner.model, [Piece(ids, 0, runner.blocks.block_table("all"))],
                                runner.blocks.block_size)

    def attend(layer, q, k, v):
        return runner.backend.prefill(layer, q, k, v, batch.full, runner.pool)

    ours = runner.model.forward(batch.token_ids, batch.positions, torch.arange(len(ids)), attend)
    runner.free("all")
    ref = _hf_logits(model, ids)
    assert ref.abs().max() > 0.1  # not trivially small
    torch.testing.assert_close(ours, ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("lengths", [[29], [5, 23, 40, 1]])
def test_packed_batch_last_logits_match_transformers(hf, lengths):
    model, runner = hf
    prompts = _prompts(lengths, seed=len(lengths))
    reqs = tuple(Request(f"r{i}", 0.0, len(p), SLO(1.0), prompt_token_ids=tuple(p))
                 for i, p in enumerate(prompts))
    job = runner.prefill_job(Job.unsliced(1, tuple(reqs), runner.model_cfg.num_layers))
    logits = job.run()
    for r in reqs:
        runner.free(r.request_id)
    assert logits.shape == (len(lengths), 320)
    for i, p in enumerate(prompts):
        torch.testing.assert_close(logits[i], _hf_logits(model, p)[-1], atol=TOL, rtol=0)


def test_sharded_checkpoint_loads_same_weights(tmp_path):
    model = save_tiny_hf("qwen2", tmp_path / "one")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    cfg = config_from_hf(tmp_path / "one")
    a, b = hf_weights(cfg, tmp_path / "one"), hf_weights(cfg, tmp_path / "sharded")
    assert torch.equal(a.layers[1].qkv_w, b.layers[1].qkv_w)
    assert torch.equal(a.lm_head, b.lm_head)
    ref = model.model.layers[1].self_attn.k_proj.weight
    torch.testing.assert_close(a.layers[1].qkv_w[64:96], ref.detach())
