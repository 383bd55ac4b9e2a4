"""OpenAI-compatible request and response shapes, with validation.

Owns the wire format only. Knows nothing of the engine: a validated request becomes a
`GenerateParams` (token ids, sampling, SLO) before anything is queued.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class SLOFields(BaseModel):
    """Per-request SLO fields, sent by OpenAI clients through `extra_body`."""

    ttft_slo: float | None = Field(default=None, gt=0, description="seconds to first token")
    tbt_slo: float | None = Field(default=None, gt=0, description="seconds between tokens")
    slo_class: str | None = Field(default=None, min_length=1, max_length=64)


class StreamOptions(BaseModel):
    include_usage: bool = False  # a last chunk with `usage` and no choices (OpenAI, vLLM)


class SamplingFields(BaseModel):
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=10.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    stop: str | list[str] | None = Field(default=None, validate_default=True)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1)
    ignore_eos: bool = False

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 8 or any(not s for s in stops):
            raise ValueError("stop: at most 8 non-empty strings")
        return stops


class CompletionRequest(SamplingFields, SLOFields):
    model_config = ConfigDict(extra="ignore")

    model: str
    prompt: str | list[int] = Field(description="text or a list of token ids")

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, v: str | list[int]) -> str | list[int]:
        if len(v) == 0:
            raise ValueError("prompt must not be empty")
        return v


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class ChatCompletionRequest(SamplingFields, SLOFields):
    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | int | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_body(rid: str, model: str, text: str, finish: str | None, usage_: dict | None,
                    chunk: bool = False) -> dict:
    body = {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
    }
    if usage_ is not None:
        body["usage"] = usage_
    return body


def chat_body(rid: str, model: str, text: str, finish: str | None, usage_: dict | None,
              chunk: bool = False, first: bool = False) -> dict:
    if chunk:
        delta: dict = {"role": "assistant"} if first else {}
        if text:
            delta["content"] = text
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        obj = "chat.completion.chunk"
    else:
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
        obj = "chat.completion"
    body = {"id": rid, "object": obj, "created": int(time.time()), "model": model,
            "choices": [choice]}
    if usage_ is not None:
        body["usage"] = usage_
    return body


def usage_chunk(rid: str, model: str, usage_: dict, chat: bool) -> dict:
    """The last chunk of a stream with `stream_options.include_usage`: usage, no choices."""
    return {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()), "model": model, "choices": [], "usage": usage_}
