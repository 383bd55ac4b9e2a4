"""A model's own Jinja chat template (`tokenizer.chat_template` of a GGUF, `chat_template` of a
`tokenizer_config.json`), rendered the way Hugging Face tokenizers render it.

The conventions templates are written against: a sandboxed environment with `trim_blocks` and
`lstrip_blocks`, the `loopcontrols` extension, a `tojson` filter that keeps non-ASCII text,
`raise_exception(msg)` and `strftime_now(fmt)`, and the variables `messages`,
`add_generation_prompt` and the special tokens' text (`bos_token`, `eos_token`, ...).
Must not know about models or tokenization.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any


def _raise(message: str) -> None:
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


class ChatTemplate:
    """`ChatTemplate(source, bos_token="<s>", ...)(messages)` -> the prompt text, ending with
    the assistant turn's opening (add_generation_prompt)."""

    def __init__(self, source: str, **special_tokens: str | None) -> None:
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.source = source
        self._template = env.from_string(source)  # a syntax error surfaces here, at load
        self._tokens = {k: v for k, v in special_tokens.items() if v is not None}

    def __call__(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self._template.render(messages=messages,
                                     add_generation_prompt=add_generation_prompt,
                                     **self._tokens)
