"""A GGUF file's tokenizer (`tokenizer.ggml.*` metadata) as a `tokenizers` byte-level BPE
tokenizer, and its chat template.

GGUF stores a byte-level BPE vocabulary (`tokenizer.ggml.model = gpt2`) as the tokens in their
byte-to-unicode spelling, the merges as "a b" strings, and a type per token (1 normal,
3 control, 4 user-defined, 6 byte). How text is split before BPE is named by
`tokenizer.ggml.pre`; the splits below are the ones llama.cpp (llama-vocab.cpp) and the
models' own tokenizer.json files use for those names. Must not know about weights or serving.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from flowprefill.model.chat_template import ChatTemplate

if TYPE_CHECKING:
    import tokenizers

    from flowprefill.model.gguf import GGUFFile

CONTROL, USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values

_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# pre name -> (split each digit on its own first, regex split or None for GPT-2's own, NFC)
_PRE = MappingProxyType({
    "default": (False, None, False),
    "gpt2": (False, None, False),
    "smollm": (True, None, False),  # SmolLM/StarCoder: digits one by one, then GPT-2's split
    "starcoder": (True, None, False),
    "llama-bpe": (False, _LLAMA3, False),
    "llama3": (False, _LLAMA3, False),
    "qwen2": (False, _QWEN2, True),
})
SPECIAL_KEYS = MappingProxyType({"bos_token": "bos_token_id", "eos_token": "eos_token_id",
                                 "unk_token": "unknown_token_id",
                                 "pad_token": "padding_token_id"})


def _pre_tokenizer(pre: str) -> tuple[Any, Any]:
    from tokenizers import Regex, normalizers, pre_tokenizers

    if pre not in _PRE:
        raise ValueError(f"GGUF tokenizer.ggml.pre {pre!r} is not supported "
                         f"({', '.join(sorted(_PRE))}); set model.tokenizer to a tokenizer.json")
    digits, split, nfc = _PRE[pre]
    if split is None:
        steps = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    else:
        steps = [pre_tokenizers.Split(Regex(split), behavior="isolated"),
                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    if digits:
        steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
    return pre_tokenizers.Sequence(steps), normalizers.NFC() if nfc else None


def build_tokenizer(gf: GGUFFile) -> tokenizers.Tokenizer:
    """The file's vocabulary, merges, split rule and special tokens as a `tokenizers` object."""
    from tokenizers import AddedToken, Tokenizer, decoders, models

    kind = gf.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"{gf.path}: GGUF tokenizer.ggml.model {kind!r} is not supported "
                         "(gpt2: byte-level BPE); set model.tokenizer to a tokenizer.json")
    tokens: tuple[str, ...] = gf.get("tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in gf.get("tokenizer.ggml.merges", [])]
    types: tuple[int, ...] = gf.get("tokenizer.ggml.token_type") or (1,) * len(tokens)
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                               fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer, normalizer = _pre_tokenizer(gf.get("tokenizer.ggml.pre", "default"))
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.decoder = decoders.ByteLevel()
    # control tokens (<|im_end|>) are matched whole in text and skipped when decoding with
    # skip_special_tokens; user-defined ones (<think>) are matched whole but kept
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, k in zip(tokens, types, strict=True) if k == CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, k in zip(tokens, types, strict=True) if k == USER_DEFINED])
    return tok


def special_tokens(gf: GGUFFile) -> dict[str, str | None]:
    """{"bos_token": "<|im_start|>", ...}: the text of each special token the file names."""
    tokens = gf.get("tokenizer.ggml.tokens")
    out = {}
    for name, key in SPECIAL_KEYS.items():
        i = gf.get(f"tokenizer.ggml.{key}")
        out[name] = tokens[i] if i is not None and 0 <= i < len(tokens) else None
    return out


def chat_template(gf: GGUFFile) -> Callable[[list[dict[str, str]]], str] | None:
    """The file's own chat template, or None when it has none."""
    source = gf.get("tokenizer.chat_template")
    return ChatTemplate(source, **special_tokens(gf)) if source else None
