"""The offline LLM API: greedy output equals transformers' greedy generate; prompt forms."""

from __future__ import annotations

import pytest
import torch

from flowprefill import LLM

transformers = pytest.importorskip("transformers")


def _save_hf(path, vocab: int):
    cfg = transformers.Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=512,
                                   rope_theta=10000.0, tie_word_embeddings=False)
    torch.manual_seed(1)
    model = transformers.Qwen2ForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(5.0)  # sharper logits: greedy ties would make the comparison flaky
    model.save_pretrained(path)
    return model


def _hf_greedy(model, ids: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids)),
                             max_new_tokens=n, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
    return out[0, len(ids):].tolist()


def test_greedy_generate_equals_transformers(tmp_path):
    model = _save_hf(tmp_path, vocab=400)
    llm = LLM(model=str(tmp_path), num_kv_blocks=64)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 400, (n,), generator=g).tolist() for n in (7, 20, 33)]
    outs = llm.generate(prompts, max_tokens=12)  # one batch: packed prefill, batched decode
    for p, o in zip(prompts, outs, strict=True):
        assert o.prompt_token_ids == p
        assert o.token_ids == _hf_greedy(model, p, 12)
        assert len(set(o.token_ids)) > 1  # a real sequence, not a constant
    assert llm.runner.blocks.num_free == 64  # everything freed


def test_text_and_token_id_prompts_agree():
    llm = LLM(model="tiny", num_layers=1, num_kv_blocks=64)
    tok = llm.tokenizer
    text = "The quick brown fox"
    (a,) = llm.generate(text, max_tokens=5)
    (b,) = llm.generate(tok.encode(text), max_tokens=5)
    assert a.prompt_token_ids == tok.encode(text) and a.token_ids == b.token_ids
    assert len(a.token_ids) == 5 and a.finish_reason == "length"
    assert a.text == tok.decode(a.token_ids)
    two = llm.generate([text, "hello"], max_tokens=3)
    assert [o.token_ids for o in two][0] == a.token_ids[:3]


def test_sampling_seed_is_reproducible_and_matters():
    llm = LLM(model="tiny", num_layers=1, hidden_size=64, intermediate_size=128,
              num_kv_blocks=64)
    kw = dict(max_tokens=8, temperature=1.0, top_p=0.9, ignore_eos=True)
    a = llm.generate([[1, 2, 3]], seed=7, **kw)[0].token_ids
    b = llm.generate([[1, 2, 3]], seed=7, **kw)[0].token_ids
    c = llm.generate([[1, 2, 3]], seed=8, **kw)[0].token_ids
    assert a == b and a != c


def test_unknown_override_names_the_key():
    with pytest.raises(TypeError, match="num_layerz"):
        LLM(model="tiny", num_layerz=2)
    with pytest.raises(ValueError, match="no model config"):
        LLM(model="no_such_model")
