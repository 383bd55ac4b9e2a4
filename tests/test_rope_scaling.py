"""Llama 3.1 `llama3` RoPE scaling against transformers, past the pretraining context.

Tiny random Llama checkpoints (fp32, CPU, no download) with `original_max_position_embeddings`
of 64 are run at 200+ tokens, well past the context the scaling is anchored to.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from flowprefill import LLM
from flowprefill.config import EngineConfig, ModelConfig, RopeScaling
from flowprefill.core import SLO, Job, Request
from flowprefill.executor import ModelRunner, Piece, build_prefill_batch
from flowprefill.model import Decoder, config_from_hf
from flowprefill.model.layers import rope_tables
from flowprefill.model.loading import hf_weights
from tests.cpu_fp32 import CPU_FP32

transformers = pytest.importorskip("transformers")

TOL = 1e-4
VOCAB = 320
ORIGINAL = 64  # original_max_position_embeddings: every test prompt is longer
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": ORIGINAL}


def save_tiny_llama31(path, sharpen: float = 1.0, **rope):
    """A random tiny Llama checkpoint with llama3 rope scaling; norms perturbed off 1; 2-D
    weights scaled by `sharpen` (sharper logits: no near-ties for greedy comparisons)."""
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        rms_norm_eps=1e-6, rope_theta=500000.0, tie_word_embeddings=False,
        rope_scaling={**LLAMA3, **rope})
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
            else:
                p.mul_(sharpen)
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama31")
    model = save_tiny_llama31(path, sharpen=3.0)  # attention sharp enough for RoPE to matter
    runner = ModelRunner(ModelConfig(path=str(path)), EngineConfig(**CPU_FP32, num_kv_blocks=64))
    return model, runner, path


def _prompts(lengths, seed=0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in lengths]


def _hf_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]  # [T, V]


def _all_logits(runner: ModelRunner, ids: list[int], model: Decoder | None = None
                ) -> torch.Tensor:
    """Logits at every position of one prompt [T, V]: runner's model, or `model` over the
    runner's KV pool and attention backend."""
    model = model or runner.model
    runner.blocks.allocate("all", len(ids))
    batch = build_prefill_batch(model, [Piece(ids, 0, runner.blocks.block_table("all"))],
                                runner.blocks.block_size)

    def attend(layer, q, k, v):
        return runner.backend.prefill(layer, q, k, v, batch.full, runner.pool)

    try:
        return model.forward(batch.token_ids, batch.positions, torch.arange(len(ids)), attend)
    finally:
        runner.free("all")


def test_config_reads_llama3_scaling(hf):
    _, runner, _ = hf
    cfg = runner.model_cfg
    assert cfg.rope_scaling == RopeScaling("llama3", 8.0, 1.0, 4.0, ORIGINAL)
    assert (cfg.rope_theta, cfg.max_position) == (500000.0, 1024)


def test_tables_match_transformers_in_every_band(hf):
    """inv_freq bit for bit, cos/sin at positions past the original context; the tiny head
    (hd 16, theta 5e5, L 64) has kept, blended and divided frequencies alike."""
    model, runner, _ = hf
    ref_inv = model.model.rotary_emb.inv_freq  # [hd/2]
    cfg = runner.model_cfg
    plain = 1.0 / (cfg.rope_theta ** (torch.arange(0, 16, 2).float() / 16))
    ratio = plain / ref_inv
    assert (ratio == 1).any() and (ratio == 8).any() and ((ratio > 1) & (ratio < 8)).any()
    cos, sin = rope_tables(cfg.max_position, cfg.dim_head, cfg.rope_theta,
                           scaling=cfg.rope_scaling)
    pos = torch.arange(0, 1024, 7)
    x = torch.zeros(1, len(pos), 16)
    ref_cos, ref_sin = model.model.rotary_emb(x, pos[None])
    torch.testing.assert_close(cos[pos], ref_cos[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(sin[pos], ref_sin[0], atol=1e-6, rtol=0)


def test_all_positions_match_transformers_past_original_context(hf):
    model, runner, _ = hf
    (ids,) = _prompts([230])
    ours, ref = _all_logits(runner, ids), _hf_logits(model, ids)
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(ours, ref, atol=TOL, rtol=0)


def test_without_scaling_the_logits_differ(hf):
    """The comparisons here can fail: the same weights with plain RoPE give other logits."""
    model, runner, path = hf
    cfg = dataclasses.replace(runner.model_cfg, rope_scaling=RopeScaling())
    plain = Decoder(cfg, hf_weights(cfg, path))
    (ids,) = _prompts([230])
    diff = (_all_logits(runner, ids, plain) - _hf_logits(model, ids)).abs().max()
    assert diff > 100 * TOL


@pytest.mark.parametrize("lengths", [[257], [200, 13, 231]])
def test_packed_batch_last_logits_match_transformers(hf, lengths):
    model, runner, _ = hf
    prompts = _prompts(lengths, seed=len(lengths))
    reqs = tuple(Request(f"r{i}", 0.0, len(p), SLO(1.0), prompt_token_ids=tuple(p))
                 for i, p in enumerate(prompts))
    logits = runner.prefill_job(Job.unsliced(1, tuple(reqs), runner.model_cfg.num_layers)).run()
    for r in reqs:
        runner.free(r.request_id)
    for i, p in enumerate(prompts):
        torch.testing.assert_close(logits[i], _hf_logits(model, p)[-1], atol=TOL, rtol=0)


def test_greedy_decode_equals_transformers(tmp_path):
    model = save_tiny_llama31(tmp_path, sharpen=5.0)
    llm = LLM(model=str(tmp_path), num_kv_blocks=64, **CPU_FP32)  # transformers' fp32
    assert llm.runner.model_cfg.rope_scaling.rope_type == "llama3"
    prompts = _prompts([210, 250], seed=3)
    outs = llm.generate(prompts, max_tokens=10)  # packed prefill, batched decode past 200
    for p, o in zip(prompts, outs, strict=True):
        with torch.no_grad():
            ref = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p)),
                                 max_new_tokens=10, do_sample=False, eos_token_id=None,
                                 pad_token_id=0)[0, len(p):].tolist()
        assert o.token_ids == ref
        assert len(set(o.token_ids)) > 1
    assert llm.runner.blocks.num_free == 64


def _write_config(path, **fields) -> None:
    cfg = {"model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
           "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 512,
           **fields}
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg))


def test_published_llama31_config_layout(tmp_path):
    """Meta's config.json: `rope_scaling` beside a top-level `rope_theta`."""
    _write_config(tmp_path, rope_theta=500000.0, rope_scaling={
        "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192, "rope_type": "llama3"})
    cfg = config_from_hf(tmp_path)
    assert cfg.rope_theta == 500000.0
    assert cfg.rope_scaling == RopeScaling("llama3", 8.0, 1.0, 4.0, 8192)


def test_legacy_type_key_and_default_original(tmp_path):
    """`type` instead of `rope_type`; no original length: max_position_embeddings, as in HF."""
    _write_config(tmp_path, rope_scaling={"type": "llama3", "factor": 4, "low_freq_factor": 1,
                                          "high_freq_factor": 2})
    assert config_from_hf(tmp_path).rope_scaling == RopeScaling("llama3", 4.0, 1.0, 2.0, 512)


def test_default_rope_parameters_mean_no_scaling(tmp_path):
    _write_config(tmp_path, rope_parameters={"rope_type": "default", "rope_theta": 1e4})
    cfg = config_from_hf(tmp_path)
    assert cfg.rope_scaling == RopeScaling() and cfg.rope_theta == 1e4


@pytest.mark.parametrize("rope,match", [
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}, "'yarn'"),
    ({"type": "dynamic", "factor": 2.0}, "'dynamic'"),
    ({"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}, "'linear'"),
    ({"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0}, "low_freq_factor"),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0},
     "low_freq_factor < high_freq_factor"),
    ({"rope_type": "default", "partial_rotary_factor": 0.5}, "partial_rotary_factor"),
])
def test_unsupported_rope_is_a_clear_error(tmp_path, rope, match):
    _write_config(tmp_path, rope_scaling=rope)
    with pytest.raises(ValueError, match=match) as e:
        config_from_hf(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_config_rejects_unknown_rope_type_naming_it():
    with pytest.raises(ValueError, match=r"model\.rope_scaling\.rope_type.*'longrope'"):
        RopeScaling(rope_type="longrope")
    with pytest.raises(ValueError, match="factor"):
        RopeScaling(rope_type="llama3", factor=0.5)
