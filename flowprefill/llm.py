"""The offline API: `LLM(model=...).generate(prompts, ...)`, prefill then decode in one process.

Owns turning prompts into requests and driving the executor to completion for a batch of
prompts. Knows nothing of scheduling policies, SLOs or serving; the engine does that online.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowprefill.config import EngineConfig, ModelConfig, from_hydra, load_option
from flowprefill.core import SLO, Job, Request
from flowprefill.executor import SamplingParams, make_generator, make_runner, sample
from flowprefill.model import load_tokenizer

Prompt = str | Sequence[int]


@dataclass
class RequestOutput:
    prompt_token_ids: list[int]
    token_ids: list[int]  # generated tokens (an eos that stopped generation included)
    text: str  # decoded generated tokens, special tokens skipped
    finish_reason: str  # "length" | "stop"


def resolve_configs(model: str, engine: str = "auto", **overrides: Any
                    ) -> tuple[ModelConfig, EngineConfig]:
    """`model`: a conf/model name, an HF directory or a GGUF file (a path, or `pkg:...`, see
    ModelConfig.path); overrides go to whichever config has the key (model fields first); an
    unknown key raises naming it."""
    if Path(model).is_dir() or model.endswith(".gguf"):
        model_cfg = ModelConfig(name=Path(model).name.removesuffix(".gguf"), path=str(model))
    else:
        model_cfg = from_hydra(ModelConfig, load_option("model", model))
    engine_cfg = from_hydra(EngineConfig, load_option("engine", engine))
    m_keys = {f.name for f in dataclasses.fields(ModelConfig)}
    e_keys = {f.name for f in dataclasses.fields(EngineConfig)}
    unknown = set(overrides) - m_keys - e_keys
    if unknown:
        raise TypeError(f"LLM: unknown config key(s) {sorted(unknown)}")
    model_cfg = dataclasses.replace(model_cfg, **{k: v for k, v in overrides.items()
                                                  if k in m_keys})
    engine_cfg = dataclasses.replace(engine_cfg, **{k: v for k, v in overrides.items()
                                                    if k in e_keys and k not in m_keys})
    return model_cfg, engine_cfg


class LLM:
    """`LLM(model="tiny")`, `LLM(model="smollm2_135m")`, `LLM(model="/path/to/hf_dir")`,
    `LLM(model="/path/to/model.gguf")`, `LLM(model="tiny", num_layers=2)`."""

    def __init__(self, model: str = "tiny", engine: str = "auto", **overrides: Any) -> None:
        model_cfg, engine_cfg = resolve_configs(model, engine, **overrides)
        self.runner = make_runner(model_cfg, engine_cfg)  # engine.tp > 1: rank 0 of a group
        self.model_config = self.runner.model_cfg
        self.tokenizer = load_tokenizer(self.model_config)
        self._next_id = 0

    def _requests(self, prompts: list[list[int]]) -> list[Request]:
        reqs = []
        for ids in prompts:
            reqs.append(Request(f"llm-{self._next_id}", 0.0, len(ids), SLO(ttft=float("inf")),
                                prompt_token_ids=tuple(ids)))
            self._next_id += 1
        return reqs

    def _normalize(self, prompts: Prompt | Sequence[Prompt]) -> list[list[int]]:
        if isinstance(prompts, str) or (
                isinstance(prompts, Sequence) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        out = [self.tokenizer.encode(p) if isinstance(p, str) else list(p) for p in prompts]
        if any(not p for p in out):
            raise ValueError("empty prompt")
        return out

    def generate(self, prompts: Prompt | Sequence[Prompt], max_tokens: int = 16,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                 ignore_eos: bool = False) -> list[RequestOutput]:
        """Generate for each prompt (text or token ids); outputs in prompt order."""
        ids = self._normalize(prompts)
        reqs = self._requests(ids)
        params = [SamplingParams(max_tokens, temperature, top_p,
                                 None if seed is None else seed + i, ignore_eos)
                  for i in range(len(reqs))]
        gens = [make_generator(p, self.runner.model.device) for p in params]
        out: list[list[int]] = [[] for _ in reqs]
        try:
            for batch in self._batches(reqs):
                job = self.runner.prefill_job(Job.unsliced(
                    self._next_id, tuple(reqs[i] for i in batch), self.model_config.num_layers))
                firsts = sample(job.run(), [params[i] for i in batch], [gens[i] for i in batch])
                for i, tok in zip(batch, firsts, strict=True):
                    out[i].append(tok)
            active = [i for i in range(len(reqs)) if not self._finished(out[i], params[i])]
            while active:
                logits = self.runner.decode([reqs[i].request_id for i in active],
                                            [out[i][-1] for i in active])
                toks = sample(logits, [params[i] for i in active], [gens[i] for i in active])
                for i, tok in zip(active, toks, strict=True):
                    out[i].append(tok)
                active = [i for i in active if not self._finished(out[i], params[i])]
        finally:
            for r in reqs:
                self.runner.free(r.request_id)
        eos = self.tokenizer.eos_token_id
        return [RequestOutput(ids[i], toks, self.tokenizer.decode(toks),
                              "stop" if toks[-1] == eos and not params[i].ignore_eos
                              else "length")
                for i, toks in enumerate(out)]

    def _finished(self, toks: list[int], p: SamplingParams) -> bool:
        eos = self.tokenizer.eos_token_id
        return len(toks) >= p.max_tokens or (not p.ignore_eos and toks[-1] == eos)

    def _batches(self, reqs: list[Request]) -> list[list[int]]:
        """Greedy packing of prompts into prefill batches of at most max_batch_tokens."""
        limit = self.runner.engine_cfg.max_batch_tokens
        batches: list[list[int]] = []
        size = 0
        for i, r in enumerate(reqs):
            if not batches or size + r.prompt_len > limit:
                batches.append([])
                size = 0
            batches[-1].append(i)
            size += r.prompt_len
        return batches
