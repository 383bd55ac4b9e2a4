"""`python runners/bench_peers.py [overrides]`: FlowPrefill beside its peers on two fixed cases.

The engines start as in runners/compare.py (same HF directory, dtype, compute threads and KV
memory; conf/bench_peers.yaml extends conf/compare.yaml) and stay up together, each idle
while another is measured:

- uniform: vLLM's own benchmark client, `vllm bench serve --dataset-name random`, at a fixed
  Poisson rate, after a warm-up with other prompts (no prefix-cache hits), `repeats` rounds
  over the engines in turn (each metric's median, and the median of the per-round ratios;
  each round new prompts, the same for every engine: `round_seed`). A client nobody here
  wrote.
- hol (head-of-line): a long prompt, then `delay` seconds later a short urgent one; the urgent
  request's client-side TTFT (first streamed chunk), median of `reps`. FlowPrefill gets each
  request's TTFT SLO; a peer started with `--scheduling-policy priority` gets priorities.

Writes <run dir>/bench_peers.json: {"engines": {name: {"uniform": ..., "hol": ...}},
"ratios": {peer: FlowPrefill / peer}, "settings": ...}. A benchmark, not a test: it measures.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import hydra
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "runners"))
sys.path.insert(1, str(ROOT))

from compare import FLOWPREFILL, Comparison  # noqa: E402
from peer_servers import peer_executable, vllm_env  # noqa: E402

from flowprefill.config import register_configs  # noqa: E402

log = logging.getLogger("bench_peers")
UNIFORM_KEYS = ("completed", "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms",
                "median_tpot_ms", "p99_tpot_ms", "request_throughput", "request_goodput",
                "duration")
WARMUP_SEED = 1


def round_seed(i: int) -> int:
    """The prompts of uniform round `i`: the same for every engine in a round, new in each
    round and unlike the warmup's. (With one seed for every round, vLLM's prefix cache served
    the repeated prompts' first 128-token block from the second round on: its prompt hit rate
    rose 0 -> 19% and its mean TTFT at 0.5 req/s fell 112 -> 81 -> 67 ms over three rounds.)"""
    return WARMUP_SEED + 1 + i


def vllm_bench(client: Path, env: dict[str, str], url: str, model: str, tokenizer: Path,
               c: DictConfig, prompts: int, seed: int, out: Path) -> dict:
    """One `vllm bench serve` run (random prompts of `seed`); its headline numbers and seed."""
    cmd = [str(client), "bench", "serve", "--backend", "vllm", "--base-url", url,
           "--endpoint", "/v1/completions", "--model", model, "--tokenizer", str(tokenizer),
           "--dataset-name", "random", "--random-input-len", str(c.input_len),
           "--random-output-len", str(c.output_len), "--num-prompts", str(prompts),
           "--request-rate", str(c.rate), "--ignore-eos", "--seed", str(seed),
           "--percentile-metrics", "ttft,tpot,itl,e2el", "--goodput",
           f"ttft:{c.goodput_ttft_ms}", "--save-result", "--save-detailed",  # per-request ITLs
           "--result-dir", str(out.parent), "--result-filename", out.name]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise RuntimeError(f"vllm bench serve failed ({done.returncode}):\n"
                           f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    result = json.loads(out.read_text())
    return {k: result[k] for k in UNIFORM_KEYS} | {"seed": seed}


async def _ttft(client: httpx.AsyncClient, url: str, body: dict) -> float:
    """Seconds from sending `body` (streamed) to its first chunk; the rest is drained."""
    t0 = time.perf_counter()
    first = None
    async with client.stream("POST", url + "/v1/completions", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status_code}: {(await resp.aread())[:300]}")
        async for line in resp.aiter_lines():
            if first is None and line.startswith("data: ") and line != "data: [DONE]":
                first = time.perf_counter() - t0
    if first is None:
        raise RuntimeError(f"{url}: no token streamed")
    return first


async def head_of_line(url: str, model: str, c: DictConfig, priority: bool, vocab: int,
                       seed: int) -> dict:
    """The urgent request's TTFT behind a long prefill, `reps` times (median)."""
    rng = random.Random(seed)
    urgent, long_ = [], []
    async with httpx.AsyncClient(timeout=600) as client:
        for _ in range(int(c.reps)):
            def body(n: int, slo: float, prio: int) -> dict:
                b = {"model": model, "prompt": [rng.randrange(100, vocab) for _ in range(n)],
                     "max_tokens": 2, "temperature": 0.0, "ignore_eos": True, "stream": True}
                return b | ({"priority": prio} if priority else {"ttft_slo": slo})
            big = asyncio.create_task(_ttft(client, url, body(c.long_len, c.long_ttft_slo, 1)))
            await asyncio.sleep(c.delay)
            urgent.append(await _ttft(client, url, body(c.short_len, c.short_ttft_slo, 0)))
            long_.append(await big)
    return {"urgent_ttft_s": statistics.median(urgent), "urgent_ttft_reps": urgent,
            "long_ttft_s": statistics.median(long_), "long_ttft_reps": long_}


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Every engine is started (and warmed) first and stays up, idle while another is measured;
    the uniform runs then go round the engines `repeats` times (A B A B ...), so a drift in
    this machine's speed during the benchmark falls on every engine alike; then the
    head-of-line case on each."""
    comp = Comparison(cfg, run_dir)
    names = [FLOWPREFILL, *comp.peers]
    if not comp.peers:
        raise ValueError("bench_peers needs a peer (peers=[vllm]): its client is vLLM's")
    peer = next(iter(comp.peers.values()))  # its venv's client, run offline on the CPU
    client, env = peer_executable(peer), vllm_env(peer, comp.shared, os.environ)
    model, u = comp.shared.served_name, cfg.uniform
    engines: dict[str, dict] = {name: {"uniform_runs": []} for name in names}
    servers: dict = {}
    try:
        for name in names:
            log.info("[%s] starting (load average %.2f)", name, os.getloadavg()[0])
            t0 = time.perf_counter()
            servers[name] = comp.start(name)
            engines[name]["startup_s"] = time.perf_counter() - t0
            (run_dir / name).mkdir(parents=True, exist_ok=True)
            vllm_bench(client, env, servers[name].url, model, comp.model_dir, u,
                       u.warmup_prompts, WARMUP_SEED, run_dir / name / "warmup.json")
        for i in range(int(u.repeats)):
            for name in names:
                time.sleep(cfg.settle)
                load = os.getloadavg()[0]
                r = vllm_bench(client, env, servers[name].url, model, comp.model_dir, u,
                               u.prompts, round_seed(i), run_dir / name / f"uniform{i}.json")
                r["load_avg_before"] = load
                engines[name]["uniform_runs"].append(r)
                log.info("[%s] uniform run %d: mean TTFT %.0f ms, TPOT %.0f ms", name, i,
                         r["mean_ttft_ms"], r["mean_tpot_ms"])
        for name in names:
            entry = engines[name]
            entry["uniform"] = {k: statistics.median(r[k] for r in entry["uniform_runs"])
                                for k in UNIFORM_KEYS}
            prio = name != FLOWPREFILL and "priority" in comp.peers[name].args
            time.sleep(cfg.settle)
            entry["hol"] = asyncio.run(head_of_line(servers[name].url, model, cfg.hol, prio,
                                                    int(comp.hf["vocab_size"]), 7))
            log.info("[%s] uniform: mean TTFT %.0f ms, TPOT %.0f ms; urgent TTFT behind %d "
                     "tokens %.3f s", name, entry["uniform"]["mean_ttft_ms"],
                     entry["uniform"]["mean_tpot_ms"], cfg.hol.long_len,
                     entry["hol"]["urgent_ttft_s"])
    finally:
        for name, server in servers.items():
            engines[name]["exit_code"] = server.stop()
    result = {"engines": engines, "ratios": ratios(engines),
              "settings": comp.settings(int(cfg.uniform.prompts)) | {
                  "uniform": dict(cfg.uniform), "hol": dict(cfg.hol),
                  "policy": cfg.policy.name}}
    out = Path(cfg.out) if cfg.out else run_dir / "bench_peers.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    return result


def ratios(engines: dict[str, dict]) -> dict[str, dict]:
    """FlowPrefill / each peer: of the medians, and the median of the per-round ratios (each
    round's runs are minutes apart, so those pairs share the machine's state)."""
    fp = engines[FLOWPREFILL]
    out = {}
    for peer, e in engines.items():
        if peer == FLOWPREFILL:
            continue
        pairs = list(zip(fp["uniform_runs"], e["uniform_runs"], strict=True))
        out[peer] = {"mean_ttft": fp["uniform"]["mean_ttft_ms"] / e["uniform"]["mean_ttft_ms"],
                     "mean_tpot": fp["uniform"]["mean_tpot_ms"] / e["uniform"]["mean_tpot_ms"],
                     "urgent_ttft": fp["hol"]["urgent_ttft_s"] / e["hol"]["urgent_ttft_s"]}
        for key in ("mean_ttft", "mean_tpot"):
            out[peer][f"paired_{key}"] = statistics.median(a[f"{key}_ms"] / b[f"{key}_ms"]
                                                           for a, b in pairs)
    return out


register_configs()


@hydra.main(version_base=None, config_path="../conf", config_name="bench_peers")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    logging.getLogger("httpx").setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers we started
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    result = run(cfg, run_dir)
    for peer, r in result["ratios"].items():
        log.info("FlowPrefill / %s: mean TTFT x%.2f (paired x%.2f), mean TPOT x%.2f (paired "
                 "x%.2f), urgent TTFT x%.3f", peer, r["mean_ttft"], r["paired_mean_ttft"],
                 r["mean_tpot"], r["paired_mean_tpot"], r["urgent_ttft"])
    log.info("-> %s", Path(cfg.out) if cfg.out else run_dir / "bench_peers.json")


if __name__ == "__main__":
    main()
