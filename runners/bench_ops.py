"""Operator benchmark: prefill tokens/s of monolithic, preemptible and chunked execution, and
of transformers' forward on the same weights, eager and compiled.

    python runners/bench_ops.py model=tiny out=bench_ops.json

Variants: `monolithic` (the whole forward in one call), `operator` (a job stepped one operator
at a time, with a preemption check, an event-deque emptiness test, between operators),
`sliced` (the plan the engine runs: operators predicted longer than `engine.max_unit_ms`
split into token slices, by the configured predictor, the check after every unit), `layer`
(the check between layers), `chunked_<n>` (chunks of n tokens, the check between chunks),
`loop` (one request through the engine's device loop: scheduler call, the sliced plan,
the loop's checks and the device timeline around every unit, sampling), `hf` (transformers'
`ForCausalLM` forward, logits of the last position only). `unit_overhead_us` is what each
unit costs beyond the variant below it (operator and sliced vs monolithic, loop vs sliced);
`decode` is decode tokens/s at `decode_batches`.
Rounds are interleaved (each timed round runs every variant once) so that noise from other
processes on the machine hits all variants alike; results are medians.
"""

from __future__ import annotations

import asyncio
import collections
import functools
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

from flowprefill.config import (  # noqa: E402
    EngineConfig,
    HardwareConfig,
    ModelConfig,
    PolicyConfig,
    PredictorConfig,
    from_hydra,
    register_configs,
)
from flowprefill.core import (  # noqa: E402
    SLO,
    Arrival,
    Granularity,
    Job,
    JobPlan,
    Request,
    SamplingParams,
    WallClock,
)
from flowprefill.engine.local import BlockManagerView  # noqa: E402
from flowprefill.engine.loop import EngineLoop  # noqa: E402
from flowprefill.engine.sources import ScriptedSource  # noqa: E402
from flowprefill.engine.streams import OutputStream  # noqa: E402
from flowprefill.executor import ModelRunner  # noqa: E402
from flowprefill.metrics import RequestRecord  # noqa: E402
from flowprefill.model import Decoder  # noqa: E402
from flowprefill.model.weights import dense  # noqa: E402
from flowprefill.predictor import make_predictor  # noqa: E402
from flowprefill.predictor.plan import Planner  # noqa: E402
from flowprefill.scheduler import Scheduler  # noqa: E402

KEYS = frozenset({"model", "engine", "predictor", "hardware", "out", "prompt_tokens", "variants",
                  "compile", "repeats", "warmup", "seed", "decode_batches", "decode_context"})


def hf_model(model: Decoder) -> torch.nn.Module:
    """transformers' model of the same architecture over `model`'s weights (the same tensors,
    shared: a 7B model is not copied). Built on the model's device in its dtype, so its own
    initialization of a 7B model runs there (seconds on a GPU), not on the host in fp32."""
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
    cls, cfg_cls = ((transformers.Qwen2ForCausalLM, transformers.Qwen2Config) if c.arch == "qwen2"
                    else (transformers.LlamaForCausalLM, transformers.LlamaConfig))
    default = torch.get_default_dtype()
    torch.set_default_dtype(model.dtype)
    try:
        with torch.device(model.device):
            hf = cls(cfg_cls(**kw))
    finally:
        torch.set_default_dtype(default)
    w, hd = model.weights, c.dim_head
    sd = {"model.embed_tokens.weight": w.embed, "model.norm.weight": w.norm,
          "lm_head.weight": dense(w.lm_head)}
    for i, lw in enumerate(w.layers):
        p = f"model.layers.{i}."
        sizes = [c.num_heads * hd, c.num_kv_heads * hd, c.num_kv_heads * hd]
        for name, t in zip("qkv", dense(lw.qkv_w).split(sizes), strict=True):
            sd[f"{p}self_attn.{name}_proj.weight"] = t
        if lw.qkv_b is not None:
            for name, t in zip("qkv", lw.qkv_b.split(sizes), strict=True):
                sd[f"{p}self_attn.{name}_proj.bias"] = t
        gate, up = dense(lw.gate_up_w).chunk(2)
        sd.update({f"{p}self_attn.o_proj.weight": dense(lw.o_w), f"{p}input_layernorm.weight":
                   lw.input_norm, f"{p}post_attention_layernorm.weight": lw.post_norm,
                   f"{p}mlp.gate_proj.weight": gate, f"{p}mlp.up_proj.weight": up,
                   f"{p}mlp.down_proj.weight": dense(lw.down_w)})
    if c.tie_word_embeddings:
        del sd["lm_head.weight"]  # tied to embed_tokens by transformers itself
    hf.load_state_dict(sd, strict=not c.tie_word_embeddings, assign=True)
    if c.tie_word_embeddings:
        hf.tie_weights()
    return hf.eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Bench:
    """One model runner (eager or compiled) plus the transformers twin; runs one variant."""

    def __init__(self, model_cfg: ModelConfig, engine_cfg: EngineConfig, compiled: bool,
                 planner: Planner | None = None, model: Decoder | None = None) -> None:
        if model is not None:
            model = Decoder(model.cfg, model.weights, compile=compiled)
        self.runner = ModelRunner(model_cfg, engine_cfg, model=model)
        self.planner = planner
        self.compiled = compiled
        self.events: collections.deque = collections.deque()  # stays empty: the check's cost
        self._n = 0

    def _job(self, ids: list[int], plan: JobPlan, chunk: int | None = None) -> Job:
        self._n += 1
        req = Request(f"b{self._n}", 0.0, len(ids), SLO(1.0), prompt_token_ids=tuple(ids))
        return Job(self._n, (req,), plan, chunk if len(plan.passes) > 1 else None)

    @functools.cached_property
    def hf_fwd(self) -> torch.nn.Module:
        """transformers' twin, built on first use (the `hf` variant)."""
        hf = hf_model(self.runner.model)
        return torch.compile(hf, dynamic=True) if self.compiled else hf

    def run(self, variant: str, ids: list[int]) -> torch.Tensor | None:
        rn = self.runner
        if variant == "loop":
            return self.through_loop(ids)
        if variant == "hf":
            return self.hf_fwd(torch.tensor([ids], device=rn.model.device), use_cache=False,
                               logits_to_keep=1).logits[0]
        L = rn.model_cfg.num_layers
        chunk = int(variant.split("_")[1]) if variant.startswith("chunked_") else None
        if variant == "sliced":  # the plan the engine runs: operators split by predicted time
            plan, gran = self.planner.plan((len(ids),)), Granularity.OPERATOR
        else:
            plan = JobPlan.unsliced((len(ids),), L, chunk)
            gran = {"layer": Granularity.LAYER}.get(variant, Granularity.OPERATOR if
                                                     chunk is None else Granularity.CHUNK)
        job = rn.prefill_job(self._job(ids, plan, chunk))
        try:
            if variant == "monolithic":
                return job.run_monolithic()
            while not job.finished:
                job.step()
                if plan.is_point(job.done, gran) and self.events:  # the engine loop's check
                    break
            return job.logits
        finally:
            for s in job.seq_ids:
                rn.free(s)


    def through_loop(self, ids: list[int]) -> None:
        """One request through the engine's device loop: a scheduler call, the sliced plan,
        every unit recorded on the device timeline with the loop's checks between units,
        the first token sampled. What `loop` costs beyond `sliced` is the loop's overhead."""
        rn = self.runner
        sched = Scheduler(PolicyConfig(batching=False), self.planner.predictor,
                          BlockManagerView(rn.blocks), max_unit_s=self.planner.max_unit_s)
        self._n += 1
        req = Request(f"b{self._n}", 0.0, len(ids), SLO(100.0), prompt_token_ids=tuple(ids))
        aloop = asyncio.new_event_loop()  # never run: nobody reads the output
        stream = OutputStream(req, SamplingParams(max_tokens=1), aloop,
                              RequestRecord.for_request(req))
        clock = WallClock()
        EngineLoop(rn, sched, clock, {req.request_id: stream},
                   ScriptedSource(clock, [(0.0, Arrival(req))]),
                   launch_ahead=rn.engine_cfg.launch_ahead).run()
        aloop.close()
        return None


def decode_rates(bench: Bench, batches: list[int], context: int, steps: int, repeats: int,
                 g: torch.Generator) -> dict[str, dict[str, float]]:
    """Decode tokens/s of batched steps over sequences holding `context` tokens each."""
    rn, out = bench.runner, {}
    for b in batches:
        rates = []
        for rep in range(repeats + 1):  # the first is a warm-up
            ids = [f"d{b}_{rep}_{i}" for i in range(b)]
            rn.blocks.allocate_all(ids, [context] * b)  # KV contents do not change the time
            tokens = torch.randint(0, rn.model_cfg.vocab_size, (b,), generator=g).tolist()
            try:
                _sync(rn.model.device)
                t0 = time.perf_counter()
                for _ in range(steps):
                    tokens = rn.decode(ids, tokens).argmax(-1).tolist()
                _sync(rn.model.device)
                if rep:
                    rates.append(b * steps / (time.perf_counter() - t0))
            finally:
                for i in ids:
                    rn.free(i)
        med = statistics.median(rates)
        out[str(b)] = {"tok_s": med, "step_ms": 1e3 * b / med}
    return out


def run(model_cfg: ModelConfig, engine_cfg: EngineConfig, prompt_tokens: list[int],
        variants: list[str], compile_modes: list[bool], repeats: int, warmup: int,
        seed: int, predictor: PredictorConfig | None = None,
        hardware: HardwareConfig | None = None, decode_batches: tuple[int, ...] = (),
        decode_context: int = 256) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    base: Decoder | None = None
    results: dict[str, dict[str, float]] = {}
    checks: dict[str, float] = {}
    overhead: dict[str, dict[str, float]] = {}  # microseconds per unit beyond the baseline
    decode: dict[str, dict] = {}
    total = len(compile_modes) * len(prompt_tokens) * (warmup + repeats) * len(variants)
    bar = tqdm(total=total, desc="bench_ops", unit="run")
    with torch.inference_mode():
        for compiled in compile_modes:
            bench = Bench(model_cfg, engine_cfg, compiled, model=base)
            base = base or bench.runner.model
            rn = bench.runner  # the `sliced` variant plans as the engine would
            pred = make_predictor(predictor or PredictorConfig(), rn.model_cfg,
                                  hardware or HardwareConfig(), rn.engine_cfg)
            bench.planner = Planner(pred, Granularity.OPERATOR, 0, rn.engine_cfg.max_unit_s)
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
                med = {v: statistics.median(t) for v, t in times.items()}
                for v in variants:
                    results.setdefault(v + sfx, {})[str(n)] = n / med[v]
                units = {"operator": 2 + 2 * rn.model_cfg.num_layers,
                         "sliced": bench.planner.plan((n,)).num_units}
                units["loop"] = units["sliced"]
                for v, base_v in (("operator", "monolithic"), ("sliced", "monolithic"),
                                  ("loop", "sliced")):
                    if v in med and base_v in med:
                        overhead.setdefault(f"{v}{sfx}_vs_{base_v}", {})[str(n)] = (
                            1e6 * (med[v] - med[base_v]) / units[v])
                ref = outs.get("monolithic")
                if ref is not None:  # every variant computes the same logits
                    for v, o in outs.items():
                        if o is not None:
                            key = f"{v}{sfx}/{n}"
                            checks[key] = float((o.reshape(ref.shape).float() - ref).abs().max())
            if decode_batches:
                decode[f"eager{sfx}" if not sfx else sfx[1:]] = decode_rates(
                    bench, list(decode_batches), decode_context, 16, max(1, repeats), g)
    bar.close()
    return {"results": results, "unit_overhead_us": overhead, "decode": decode,
            "max_abs_diff_vs_monolithic": checks}


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
              [bool(c) for c in cfg.compile], cfg.repeats, cfg.warmup, cfg.seed,
              from_hydra(PredictorConfig, cfg.predictor),
              from_hydra(HardwareConfig, cfg.hardware), tuple(cfg.decode_batches),
              cfg.decode_context)
    report = {"machine": machine_before, "load_avg_after": os.getloadavg(),
              "torch_version": torch.__version__, "settings": settings,
              "metric": "prefill tokens/s, median of repeats after warm-up", **out}
    path = Path(hydra.utils.to_absolute_path(cfg.out))
    path.write_text(json.dumps(report, indent=2))
    print(json.dumps(report["results"], indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
