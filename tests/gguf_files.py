"""Writing small GGUF files from HF checkpoints the way llama.cpp's converter lays them out
(tensor names, llama Q/K row permutation, metadata keys), for tests.

Written independently of flowprefill.model.gguf, from the format's conventions, so that a test
reading one back through our loader and through transformers checks the loader, not itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, quants
from tokenizers.pre_tokenizers import ByteLevel

F32 = GGMLQuantizationType.F32

# a byte-level BPE vocabulary: the 256 byte symbols, merged pairs, control and user tokens
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "Ġ w", "r e", "a n", "Ġ s",
          "Ġ c", "o r", "e n", "Ġ h", "i s", "Ġw or", "l d", "Ġwor ld", "Ġ is", "Ġc a",
          "Ġca p", "Ġ F", "Ġ P"]
CONTROL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
USER = ["<think>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message['role']) }}{% endif %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are tiny.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def vocabulary(size: int) -> tuple[list[str], list[int]]:
    """`size` tokens and their GGUF types (1 normal, 3 control, 4 user-defined)."""
    tokens = sorted(ByteLevel.alphabet())
    tokens += ["".join(m.split(" ")) for m in MERGES]
    types = [1] * len(tokens) + [3] * len(CONTROL) + [4] * len(USER)
    tokens += CONTROL + USER
    extra = size - len(tokens)
    assert extra >= 0, f"vocab_size {size} < {len(tokens)} test tokens"
    tokens += [f"<|extra_{i}|>" for i in range(extra)]
    return tokens, types + [3] * extra


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's Q/K row order: each head's rotate-half rows as interleaved pairs."""
    return (w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2)
            .reshape(w.shape))


def _gguf_name(hf: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd.weight",
           "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
    if hf in top:
        return top[hf]
    _, _, i, rest = hf.split(".", 3)
    part = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
            "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
            "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
            "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    module, kind = rest.rsplit(".", 1)
    return f"blk.{i}.{part[module]}.{kind}"


def write_gguf(path: Path, model, qtype: GGMLQuantizationType = F32, pre: str | None = None,
               arch: str | None = None) -> Path:
    """`model` (a transformers Llama/Qwen2 model) as a GGUF file: matrices in `qtype`,
    norms and biases F32 (as llama.cpp stores them)."""
    cfg = model.config
    arch = arch or cfg.model_type
    w = GGUFWriter(str(path), arch)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    tokens, types = vocabulary(cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre or ("smollm" if arch == "llama" else "qwen2"))
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(tokens.index("<|im_start|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_pad_token_id(tokens.index("<|endoftext|>"))
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        data = t.detach().float().numpy()
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = cfg.num_attention_heads if "q_proj" in name else cfg.num_key_value_heads
            data = permute(data, heads)
        if data.ndim == 1 or qtype == F32:
            w.add_tensor(_gguf_name(name), np.ascontiguousarray(data, dtype=np.float32))
        else:
            w.add_tensor(_gguf_name(name), quants.quantize(data, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
