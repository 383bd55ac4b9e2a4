"""Operator benchmark: prefill tokens/s of monolithic, preemptible and chunked execution, and
of transformers' forward on the same weights, eager and compiled.

    python runners/bench_ops.py model=tiny out=bench_ops.json

Variants: `monolithic` (the whole forward in one call), `operator` (a job stepped one operator
at a time, with a preemption check, an event-deque emptiness test, between operators),
`layer` (the check between layers), `chunked_<n>` (chunks of n tokens, the check between
chunks), `hf` (transformers' `ForCausalLM` forward, logits of the last position only).
Rounds are interleaved (each timed round runs every variant once) so that noise from other
processes on the machine hits all variants alike; results are medians.
"""

from __future__ import annotations

import collections
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowprefill.config import EngineConfig, ModelConfig, from_hydra, register_configs  # noqa: E402
from flowprefill.core import SLO, Job, Request  # noqa: E402
from flowprefill.executor import ModelRunner  # noqa: E402
from flowprefill.model import Decoder  # noqa: E402

KEYS = frozenset({"model", "engine", "out", "prompt_tokens", "variants", "compile", "repeats",
                  "warmup", "seed"})


def hf_model(model: Decoder) -> torch.nn.Module:
    """transformers' model of the same architecture holding a copy of `model`'s weights."""
    import transformers

    c = model.cfg
    kw = dict(vocab_size=c.vocab_size, hidden_size=c.hidden_size,
              intermediate_size=c.intermediate_size, num_hidden_layers=c.num_layers,
              num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads,
              head_dim=c.dim_head, max_position_embeddings=c.max_position,
              rope_theta=c.rope_theta, rms_norm_eps=c.rms_norm_eps,
              tie_word_embeddings=c.tie_word_embeddings)
    s = c.rope_scaling
    if s.rope_type != "default":
        kw["rope_scaling"] = dict(rope_type=s.rope_type, factor=s.factor,
                                  low_freq_factor=s.low_freq_factor,
                                  high_freq_factor=s.high_freq_factor,
                                  original_max_position_embeddings=s.original_max_position)
    if c.arch == "qwen2":
        hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**kw))
    else:
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw))
    w, hd = model.weights, c.dim_head
    sd = {"model.embed_tokens.weight": w.embed, "model.norm.weight": w.norm,
          "lm_head.weight": w.lm_head}
    for i, lw in enumerate(w.layers):
        p = f"model.layers.{i}."
        sizes = [c.num_heads * hd, c.num_kv_heads * hd, c.num_kv_heads * hd]
        for name, t in zip("qkv", lw.qkv_w.split(sizes), strict=True):
            sd[f"{p}self_attn.{name}_proj.weight"] = t
        if lw.qkv_b is not None:
            for name, t in zip("qkv", lw.qkv_b.split(sizes), strict=True):
                sd[f"{p}self_attn.{name}_proj.bias"] = t
        gate, up = lw.gate_up_w.chunk(2)
        sd.update({f"{p}self_attn.o_proj.weight": lw.o_w, f"{p}input_layernorm.weight":
                   lw.input_norm, f"{p}post_attention_layernorm.weight": lw.post_norm,
                   f"{p}mlp.gate_proj.weight": gate, f"{p}mlp.up_proj.weight": up,
                   f"{p}mlp.down_proj.weight": lw.down_w})
    hf.load_state_dict(sd, strict=True)
    return hf.to(device=model.device, dtype=model.dtype).eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Bench:
    """One model runner (eager or compiled) plus the transformers twin; runs one variant."""

    def __init__(self, model_cfg: ModelConfig, engine_cfg: EngineConfig, compiled: bool,
                 model: Decoder | None = None) -> None:
        if model is not None:
            model = Decoder(model.cfg, model.weights, compile=compiled)
        self.runner = ModelRunner(model_cfg, engine_cfg, model=model)
        self.hf = hf_model(self.runner.model)
        self.hf_fwd = torch.compile(self.hf, dynamic=True) if compiled else self.hf
        self.events: collections.deque = collections.deque()  # stays empty: the check's cost
        self._n = 0

    def _job(self, ids: list[int], chunk: int | None = None) -> Job:
        self._n += 1
        req = Request(f"b{self._n}", 0.0, len(ids), SLO(1.0), prompt_token_ids=tuple(ids))
        return Job(self._n, (req,), chunk_size=chunk)

    def run(self, variant: str, ids: list[int]) -> torch.Tensor:
        rn = self.runner
        if variant == "hf":
            return self.hf_fwd(torch.tensor([ids], device=rn.model.device), use_cache=False,
                               logits_to_keep=1).logits[0]
        chunk = int(variant.split("_")[1]) if variant.startswith("chunked_") else None
        gran = {"monolithic": None, "operator": "operator", "layer": "layer"}.get(variant)
        job = rn.prefill_job(self._job(ids, chunk), granularity=gran)
        try:
            if variant == "monolithic":
                return job.run_monolithic()
            step = job.step if variant == "operator" else job.run_until_preemption_point
            while not job.done:
                step()
                if self.events:  # the preemption check of the engine loop
                    break
            return job.logits
        finally:
            for s in job.seq_ids:
                rn.free(s)


def run(model_cfg: ModelConfig, engine_cfg: EngineConfig, prompt_tokens: list[int],
        variants: list[str], compile_modes: list[bool], repeats: int, warmup: int,
        seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    base: Decoder | None = None
    results: dict[str, dict[str, float]] = {}
    checks: dict[str, float] = {}
    total = len(compile_modes) * len(prompt_tokens) * (warmup + repeats) * len(variants)
    bar = tqdm(total=total, desc="bench_ops", unit="run")
    with torch.inference_mode():
        for compiled in compile_modes:
            bench = Bench(model_cfg, engine_cfg, compiled, model=base)
            base = base or bench.runner.model
            sfx = "_compiled" if compiled else ""
            for n in prompt_tokens:
                ids = torch.randint(0, bench.runner.model_cfg.vocab_size, (n,),
                                    generator=g).tolist()
                times: dict[str, list[float]] = {v: [] for v in variants}
                outs: dict[str, torch.Tensor] = {}
                for r in range(warmup + repeats):
                    for v in variants:
                        bar.set_postfix_str(f"{v}{sfx} n={n}")
                        _sync(bench.runner.model.device)
                        t0 = time.perf_counter()
                        outs[v] = bench.run(v, ids)
                        _sync(bench.runner.model.device)
                        if r >= warmup:
                            times[v].append(time.perf_counter() - t0)
                        bar.update()
                for v in variants:
                    results.setdefault(v + sfx, {})[str(n)] = n / statistics.median(times[v])
                ref = outs.get("monolithic")
                if ref is not None:  # every variant computes the same logits
                    for v, o in outs.items():
                        key = f"{v}{sfx}/{n}"
                        checks[key] = float((o.reshape(ref.shape).float() - ref).abs().max())
    bar.close()
    return {"results": results, "max_abs_diff_vs_monolithic": checks}


def _machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_avg_1_5_15min": os.getloadavg(),  # other processes make CPU numbers noisy
            "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


register_configs()


@hydra.main(config_path="../conf", config_name="bench_ops", version_base="1.3")
def main(cfg: DictConfig) -> None:
    unknown = set(cfg) - KEYS
    if unknown:
        raise KeyError(f"bench_ops: unknown config key(s) {sorted(unknown)}")
    model_cfg = from_hydra(ModelConfig, cfg.model)
    engine_cfg = from_hydra(EngineConfig, cfg.engine)
    settings = OmegaConf.to_container(cfg, resolve=True)
    machine_before = _machine()
    out = run(model_cfg, engine_cfg, list(cfg.prompt_tokens), list(cfg.variants),
              [bool(c) for c in cfg.compile], cfg.repeats, cfg.warmup, cfg.seed)
    report = {"machine": machine_before, "load_avg_after": os.getloadavg(),
              "torch_version": torch.__version__, "settings": settings,
              "metric": "prefill tokens/s, median of repeats after warm-up", **out}
    path = Path(hydra.utils.to_absolute_path(cfg.out))
    path.write_text(json.dumps(report, indent=2))
    print(json.dumps(report["results"], indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
