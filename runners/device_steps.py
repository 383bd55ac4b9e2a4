"""The steps of runners/device_check.py: each builds what it needs, measures, returns a dict.

Times are read after synchronizing the device (or from its events); warm-up runs (which
include compilation) are excluded; results are medians of repeats.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import os
import platform
import random
import statistics
import time
from dataclasses import dataclass

import torch

from flowprefill.config import (
    EngineConfig,
    HardwareConfig,
    ModelConfig,
    PolicyConfig,
    PredictorConfig,
    from_hydra,
    load_option,
)
from flowprefill.core import SLO, Arrival, Granularity, Job, Request, SamplingParams, WallClock
from flowprefill.engine.local import BlockManagerView
from flowprefill.engine.loop import EngineLoop
from flowprefill.engine.sources import ScriptedSource
from flowprefill.engine.streams import OutputStream
from flowprefill.executor import ModelRunner, device
from flowprefill.executor.memory import num_params
from flowprefill.metrics import RequestRecord, percentile
from flowprefill.model import Decoder
from flowprefill.model.weights import random_weights
from flowprefill.predictor import make_predictor
from flowprefill.predictor.plan import Planner
from flowprefill.scheduler import Scheduler

BLOCKS = 4096


@dataclass(frozen=True)
class Sizes:
    device: str
    model: str  # conf/model option measured by bench_ops, preemption and decode
    slice_of: str | None  # whose 2-layer slice equivalence checks beside tiny
    prompts: tuple[int, ...]
    long: int
    short: int
    decode_batches: tuple[int, ...]
    decode_context: int
    matmul: int  # square bf16 matmul size of the peak-rate measurement

    @classmethod
    def for_device(cls, dev: str, small: bool | None) -> Sizes:
        if small is None:
            small = dev != "cuda"
        if small:
            return cls(dev, "tiny", None, (256, 1024), 2048, 32, (1, 8), 128, 2048)
        return cls(dev, "qwen2_7b", "qwen2_7b", (2048, 8192), 16384, 256, (1, 32), 512, 8192)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _model_cfg(name: str, **kw) -> ModelConfig:
    return dataclasses.replace(from_hydra(ModelConfig, load_option("model", name)), **kw)


def _engine(**kw) -> EngineConfig:
    return device.resolve(EngineConfig(num_kv_blocks=BLOCKS, **kw))


def _runner(name: str, seed: int, **engine_kw) -> ModelRunner:
    """The model with random weights drawn on its device (a 7B model in seconds on a GPU)."""
    eng = _engine(**engine_kw)
    cfg = _model_cfg(name, seed=seed)
    weights = random_weights(cfg, getattr(torch, eng.dtype), eng.device, on_device=True)
    return ModelRunner(cfg, eng, model=Decoder(cfg, weights, compile=eng.compile))


def _ids(n: int, vocab: int, rng: random.Random) -> tuple[int, ...]:
    return tuple(rng.randrange(vocab) for _ in range(n))


def device_info() -> dict:
    cuda = torch.cuda.is_available()
    info = {"device": "cuda" if cuda else "cpu", "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "load_avg": os.getloadavg(),
            "flashinfer": importlib.util.find_spec("flashinfer") is not None}
    if cuda:
        p = torch.cuda.get_device_properties(0)
        info.update(name=p.name, capability=f"{p.major}.{p.minor}", memory_gib=p.total_memory
                    / 2**30, cuda=torch.version.cuda, device_count=torch.cuda.device_count())
    return info


# --------------------------------------------------------------------------- equivalence


def _compare(a: torch.Tensor, b: torch.Tensor) -> dict:
    """`a` against the fp32 reference `b`, both [B, V]."""
    a, b = a.float().cpu(), b.float().cpu()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    return {"max_abs_err": float((a - b).abs().max()), "ref_max_abs": float(b.abs().max()),
            "cosine_min": float(cos.min()), "top1_agree": float(
                (a.argmax(-1) == b.argmax(-1)).float().mean())}


def _prefill_and_decode(runner: ModelRunner, prompts: list[tuple[int, ...]],
                        steps: int, forced: list[list[int]] | None) -> tuple[list, list]:
    """Logits of one packed prefill and of `steps` decode steps fed `forced` tokens (None:
    the greedy tokens of this runner). Frees everything."""
    reqs = tuple(Request(f"e{i}", 0.0, len(p), SLO(1.0), prompt_token_ids=p)
                 for i, p in enumerate(prompts))
    ids = [r.request_id for r in reqs]
    try:
        with torch.inference_mode():
            logits = [runner.prefill_job(Job.unsliced(0, reqs, runner.model_cfg.num_layers))
                      .run()]
            tokens = [logits[0].argmax(-1).tolist()] if forced is None else [forced[0]]
            for s in range(steps):
                logits.append(runner.decode(ids, tokens[-1]))
                nxt = logits[-1].argmax(-1).tolist() if forced is None else forced[s + 1]
                tokens.append(nxt)
        return logits, tokens
    finally:
        for rid in ids:
            runner.free(rid)


def equivalence(sizes: Sizes, seed: int) -> dict:
    """The device in bf16 vs the CPU in fp32, same weights; flashinfer vs SDPA if present."""
    rng = random.Random(seed)
    out = {}
    models = [("tiny", _model_cfg("tiny", seed=seed))]
    if sizes.slice_of:
        models.append((f"{sizes.slice_of}_2layers", _model_cfg(sizes.slice_of, num_layers=2,
                                                                seed=seed)))
    dev = sizes.device
    for name, cfg in models:
        w32 = random_weights(cfg, torch.float32, "cpu")
        ref = ModelRunner(cfg, EngineConfig(device="cpu", dtype="float32", num_kv_blocks=512),
                          model=Decoder(cfg, w32))
        prompts = [_ids(n, cfg.vocab_size, rng) for n in (7, 300, 1000)]
        ref_logits, tokens = _prefill_and_decode(ref, prompts, 4, None)
        res: dict = {}
        by_backend = {}
        backends = ["torch"] + (["flashinfer"] if dev == "cuda" and device.machine().flashinfer
                                else [])
        for backend in backends:
            eng = EngineConfig(device=dev, dtype="bfloat16", attention=backend,
                               num_kv_blocks=512)
            run = ModelRunner(cfg, eng, model=Decoder(cfg, w32.to(dev, torch.bfloat16)))
            logits, _ = _prefill_and_decode(run, prompts, 4, tokens)  # fed the fp32 tokens
            by_backend[backend] = logits
            res[f"{dev}_bf16_{backend}"] = {
                "prefill": _compare(logits[0], ref_logits[0]),
                "decode": [_compare(a, b) for a, b in zip(logits[1:], ref_logits[1:],
                                                          strict=True)]}
        if "flashinfer" in by_backend:
            res["flashinfer_vs_sdpa"] = _compare(by_backend["flashinfer"][0],
                                                 by_backend["torch"][0])
        res["ok"] = min(r["prefill"]["cosine_min"] for r in res.values()
                        if "prefill" in r) >= 0.99
        out[name] = res
    return out


# --------------------------------------------------------------------------- bench_ops


def _prefill_flops(cfg: ModelConfig, n: int) -> float:
    """Matmul FLOPs of one prefill of n tokens (logits of the last row only)."""
    embed = cfg.vocab_size * cfg.hidden_size
    head = 0 if cfg.tie_word_embeddings else embed
    dense = num_params(cfg) - embed - head  # the layers' matrices (and their small vectors)
    attn = 4 * cfg.num_layers * cfg.num_heads * cfg.dim_head * n * (n + 1) / 2
    return 2 * dense * n + attn + 2 * cfg.vocab_size * cfg.hidden_size


def _matmul_rate(n: int, dev: str, repeats: int) -> float:
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    times = []
    for r in range(repeats + 2):
        _sync()
        t0 = time.perf_counter()
        a @ b
        _sync()
        if r >= 2:
            times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def bench_ops(sizes: Sizes, repeats: int, seed: int) -> dict:
    from bench_ops import Bench

    runner = _runner(sizes.model, seed)
    cfg, eng = runner.model_cfg, runner.engine_cfg
    hw = from_hydra(HardwareConfig, load_option("hardware", device.hardware_preset(eng)))
    planner = Planner(make_predictor(PredictorConfig(), cfg, hw, eng), Granularity.OPERATOR,
                      0, eng.max_unit_s)
    bench = Bench(cfg, eng, eng.compile, planner, model=runner.model)
    peak = _matmul_rate(sizes.matmul, sizes.device, repeats)
    variants = ("monolithic", "operator", "sliced", "hf")
    rng = random.Random(seed)
    out: dict = {"model": sizes.model, "compile": eng.compile, "attention": eng.attention,
                 "max_unit_ms": eng.max_unit_s * 1e3, "bf16_matmul_flops": peak, "tokens": {}}
    with torch.inference_mode():
        for n in sizes.prompts:
            ids = list(_ids(n, cfg.vocab_size, rng))
            times: dict[str, list[float]] = {v: [] for v in variants}
            for r in range(repeats + 1):  # round 0: warm-up (and compilation)
                for v in variants:
                    _sync()
                    t0 = time.perf_counter()
                    bench.run(v, ids)
                    _sync()
                    if r:
                        times[v].append(time.perf_counter() - t0)
            med = {v: statistics.median(t) for v, t in times.items()}
            units = planner.plan((n,)).num_units
            out["tokens"][str(n)] = {
                **{f"{v}_tok_s": n / s for v, s in med.items()},
                "operator_vs_monolithic": med["monolithic"] / med["operator"],
                "sliced_vs_monolithic": med["monolithic"] / med["sliced"],
                "hf_vs_monolithic": med["monolithic"] / med["hf"],
                "sliced_units": units,
                "mfu_monolithic": _prefill_flops(cfg, n) / med["monolithic"] / peak,
            }
    return out


# --------------------------------------------------------------------------- preemption


class _UnitTimes:
    """An observer of the loop's units: device seconds per (kind, rows)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, float]] = []

    def observe(self, kind: str, shape, logits: int, seconds: float) -> None:
        self.seen.append((kind, sum(n for n, _ in shape), seconds))


def _streams(requests: list[Request]) -> tuple[dict[str, OutputStream], asyncio.AbstractEventLoop]:
    """Output streams whose records are read after the run (nobody awaits the outputs)."""
    aloop = asyncio.new_event_loop()
    return {r.request_id: OutputStream(r, SamplingParams(max_tokens=1), aloop,
                                       RequestRecord.for_request(r)) for r in requests}, aloop


def _one_run(runner: ModelRunner, policy: PolicyConfig, launch_ahead: int,
             script: list[Request]) -> tuple[EngineLoop, dict[str, RequestRecord], _UnitTimes]:
    cfg, eng = runner.model_cfg, runner.engine_cfg
    hw = from_hydra(HardwareConfig, load_option("hardware", device.hardware_preset(eng)))
    sched = Scheduler(policy, make_predictor(PredictorConfig(), cfg, hw, eng),
                      BlockManagerView(runner.blocks), max_unit_s=eng.max_unit_s)
    clock = WallClock()
    requests = list(script)
    streams, aloop = _streams(requests)
    times = _UnitTimes()
    loop = EngineLoop(runner, sched, clock, streams,
                      ScriptedSource(clock, [(r.arrival, Arrival(r)) for r in requests]),
                      on_prefilled=lambda s, _tok: runner.free(s.request.request_id),
                      observer=times, launch_ahead=launch_ahead)
    loop.run()
    aloop.close()
    return loop, {rid: s.record for rid, s in streams.items()}, times


def preemption(sizes: Sizes, launch_ahead: tuple[int, ...], policies: tuple[str, ...],
               urgent: int, seed: int) -> dict:
    runner = _runner(sizes.model, seed)
    cfg = runner.model_cfg
    rng = random.Random(seed)
    long_ids = _ids(sizes.long, cfg.vocab_size, rng)

    def script(span: float) -> list[Request]:
        reqs = [Request("long", 0.0, sizes.long, SLO(ttft=100.0), prompt_token_ids=long_ids)]
        for i, t in enumerate(sorted(rng.uniform(0.1, 0.8) * span for _ in range(urgent))):
            reqs.append(Request(f"urgent{i}", t, sizes.short, SLO(ttft=0.25),
                                prompt_token_ids=_ids(sizes.short, cfg.vocab_size, rng)))
        return reqs

    fcfs = from_hydra(PolicyConfig, load_option("policy", "fcfs"))
    alone = [Request("long", 0.0, sizes.long, SLO(ttft=100.0), prompt_token_ids=long_ids)]
    for _ in range(2):  # warm-up (compilation), then the long prefill's own duration
        _, recs, _ = _one_run(runner, fcfs, 2, alone)
    span = recs["long"].ttft
    out: dict = {"model": sizes.model, "long_tokens": sizes.long, "urgent_tokens": sizes.short,
                 "long_alone_s": span, "runs": {}}
    for name in policies:
        policy = from_hydra(PolicyConfig, load_option("policy", name))
        for la in launch_ahead:
            loop, recs, times = _one_run(runner, policy, la, script(span))
            lat = list(loop.preemption_latencies)
            urgent_ttft = [r.ttft for rid, r in recs.items() if rid.startswith("urgent")]
            ops = [s for kind, rows, s in times.seen
                   if kind in ("attention", "mlp") and rows > sizes.short]  # the long job's
            op = statistics.median(ops) if ops else None
            p99 = percentile(lat, 99)
            res = {"preemptions": len(lat), "latency_p50_ms": _ms(percentile(lat, 50)),
                   "latency_p99_ms": _ms(p99), "unit_median_ms": _ms(op),
                   "urgent_ttft_p50_ms": _ms(percentile(urgent_ttft, 50)),
                   "urgent_ttft_p99_ms": _ms(percentile(urgent_ttft, 99)),
                   "long_ttft_s": recs["long"].ttft}
            if lat and op:
                res["p99_within_2_units"] = p99 <= 2 * op
                if sizes.device == "cuda":
                    res["p99_within_5ms"] = p99 <= 5e-3
            out["runs"][f"{name}/launch_ahead={la}"] = res
    return out


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1e3, 3)


# --------------------------------------------------------------------------- decode


def decode_rates(sizes: Sizes, repeats: int, seed: int) -> dict:
    runner = _runner(sizes.model, seed)
    cfg = runner.model_cfg
    rng = random.Random(seed)
    steps = 16
    out: dict = {"model": sizes.model, "context": sizes.decode_context, "batches": {}}
    with torch.inference_mode():
        for b in sizes.decode_batches:
            rates = []
            for rep in range(repeats + 1):
                reqs = tuple(Request(f"d{rep}_{i}", 0.0, sizes.decode_context, SLO(1.0),
                                     prompt_token_ids=_ids(sizes.decode_context,
                                                           cfg.vocab_size, rng))
                             for i in range(b))
                ids = [r.request_id for r in reqs]
                try:
                    runner.prefill_job(Job.unsliced(rep, reqs, cfg.num_layers)).run()
                    tokens = [1] * b
                    _sync()
                    t0 = time.perf_counter()
                    for _ in range(steps):
                        tokens = runner.decode(ids, tokens).argmax(-1).tolist()
                    _sync()
                    if rep:
                        rates.append(b * steps / (time.perf_counter() - t0))
                finally:
                    for rid in ids:
                        runner.free(rid)
            out["batches"][str(b)] = {"tok_s": statistics.median(rates),
                                      "step_ms": 1e3 * b / statistics.median(rates)}
    return out


# --------------------------------------------------------------------------- the table


def table(report: dict) -> str:
    d = report["device"]
    lines = [f"device_check on {d.get('name', 'CPU')} ({d['device']}, torch {d['torch']})"]
    for name, res in report.get("equivalence", {}).items():
        if isinstance(res, dict) and "ok" in res:
            cos = {k: v["prefill"]["cosine_min"] for k, v in res.items()
                   if isinstance(v, dict) and "prefill" in v}
            lines.append(f"  equivalence {name}: ok={res['ok']} cosine_min={cos}")
    for n, r in report.get("bench_ops", {}).get("tokens", {}).items():
        lines.append(f"  bench {n} tok: mono {r['monolithic_tok_s']:.0f} tok/s, operator "
                     f"x{r['operator_vs_monolithic']:.3f}, sliced x{r['sliced_vs_monolithic']:.3f}"
                     f" ({r['sliced_units']} units), hf x{r['hf_vs_monolithic']:.3f}, MFU "
                     f"{r['mfu_monolithic']:.1%}")
    for k, r in report.get("preemption", {}).get("runs", {}).items():
        lines.append(f"  preempt {k}: n={r['preemptions']} latency p50 {r['latency_p50_ms']} "
                     f"p99 {r['latency_p99_ms']} ms (a unit {r['unit_median_ms']} ms), urgent "
                     f"TTFT p50 {r['urgent_ttft_p50_ms']} p99 {r['urgent_ttft_p99_ms']} ms")
    for b, r in report.get("decode", {}).get("batches", {}).items():
        lines.append(f"  decode batch {b}: {r['tok_s']:.0f} tok/s ({r['step_ms']:.1f} ms/step)")
    for k in ("equivalence", "bench_ops", "preemption", "decode"):
        if isinstance(report.get(k), dict) and "error" in report[k]:
            lines.append(f"  {k} FAILED: {report[k]['error']}")
    return "\n".join(lines)
