"""`python runners/compare.py [overrides]`: FlowPrefill beside other serving systems.

Runs FlowPrefill (serve.py with this config's server groups) and each peer of `peers`
(conf/peers/: vLLM's CPU build from .venv-peers) one after another on one HF directory
(exported once from the model's GGUF, cached under `hf_cache`), with the same compute
threads, KV memory, workload, SLOs and replay client (flowprefill/workload/replay.py). Each
engine starts once, replays the workload at every rate of `rates`, and is shut down. The SLOs
are fixed before the first replay (scaled_by_type: from isolated TTFTs measured on the first
engine) and shared by every engine; the prompts of one rate are the same bytes for every
engine and differ between rates (so a prefix cache cannot serve a later rate from an earlier).
Writes <run dir>/comparison.json, per engine and rate the records and summary, and
comparison.png (analysis/compare_plot.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import platform
import signal
import statistics
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "runners"))
sys.path.insert(1, str(ROOT))

from benchmark import _server_stats  # noqa: E402
from experiment import Server, _free_port, serve_config_args  # noqa: E402
from peer_servers import PeerServer, Shared, peer_executable  # noqa: E402

from analysis.compare_plot import plot_comparison  # noqa: E402
from flowprefill.config import (  # noqa: E402
    MetricsConfig,
    ModelConfig,
    PeerConfig,
    SLOConfig,
    WorkloadConfig,
    from_hydra,
    register_configs,
)
from flowprefill.core import SLO, Request  # noqa: E402
from flowprefill.metrics import summarize  # noqa: E402
from flowprefill.metrics.sinks import JsonSink  # noqa: E402
from flowprefill.workload import build_requests, class_priority  # noqa: E402
from flowprefill.workload.replay import ReplaySettings, replay, warm_up  # noqa: E402

FLOWPREFILL = "flowprefill"
log = logging.getLogger("compare")


def hf_model_dir(model: ModelConfig, cache: Path) -> Path:
    """The HF directory every engine loads: `model.path` itself, or its GGUF exported once
    into `cache/<file stem>` (kept: later comparisons reuse it)."""
    from flowprefill.model.source import resolve_path

    if model.path is None:
        raise ValueError("compare needs real weights: model.path (an HF directory, a .gguf "
                         "file or pkg:<package>/<file>); random init has nothing to share")
    src = resolve_path(model.path)
    if src.is_dir():
        return src
    if src.suffix != ".gguf":
        raise ValueError(f"model.path {model.path!r}: expected an HF directory or a .gguf file")
    out = cache / src.stem
    if not (out / "config.json").is_file():
        from flowprefill.model.gguf import export_hf_dir

        log.info("exporting %s -> %s", src, out)
        export_hf_dir(src, out)
    return out


def kv_blocks(hf: dict, gib: int, block_size: int, dtype: str) -> int:
    """FlowPrefill's KV pool in blocks for the memory vLLM gets (VLLM_CPU_KVCACHE_SPACE)."""
    head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    kv_heads = hf.get("num_key_value_heads") or hf["num_attention_heads"]
    per_token = 2 * hf["num_hidden_layers"] * kv_heads * head_dim * (4 if dtype == "float32"
                                                                       else 2)
    return int(gib * 2**30 // (block_size * per_token))


def isolated_ttfts(s: ReplaySettings, lengths: list[int], reps: int) -> dict[int, float]:
    """Median client-side TTFT of `reps` single requests per prompt length, one at a time."""
    one = dataclasses.replace(s, max_output_tokens=1, priority=None)
    out = {}
    for n in sorted(set(lengths)):
        ttfts = []
        for k in range(reps):
            req = Request(f"isolated-{n}-{k}", 0.0, n, SLO(ttft=3600.0))
            (rec,) = asyncio.run(replay([req], one))
            if rec.ttft is None:
                raise RuntimeError(f"isolated request of {n} tokens was not served")
            ttfts.append(rec.ttft)
        out[n] = statistics.median(ttfts)
        log.info("isolated TTFT %d tokens: %.3f s (median of %d)", n, out[n], reps)
    return out


class Comparison:
    """One comparison's shared settings and results; `run_engine` per engine, in order."""

    def __init__(self, cfg: DictConfig, run_dir: Path) -> None:
        self.cfg, self.run_dir = cfg, run_dir
        self.model = from_hydra(ModelConfig, cfg.model)
        self.workload = from_hydra(WorkloadConfig, cfg.workload)
        self.slo = from_hydra(SLOConfig, cfg.slo)
        self.metrics = from_hydra(MetricsConfig, cfg.metrics)
        self.peers = {name: from_hydra(PeerConfig, p)
                      for name, p in (cfg.get("peers") or {}).items()}
        for peer in self.peers.values():
            peer_executable(peer)  # fail now, not after FlowPrefill ran
        self.rates = [float(r) for r in (cfg.rates or [self.workload.rate_scale])]
        if any(r <= 0 for r in self.rates):
            raise ValueError(f"rates must be positive, got {self.rates}")
        self.model_dir = hf_model_dir(self.model, ROOT / cfg.hf_cache).resolve()
        self.hf = json.loads((self.model_dir / "config.json").read_text())
        context = int(self.hf.get("max_position_embeddings", self.model.max_position))
        cap = self.workload.max_prompt_len
        if cap is None or cap + cfg.max_output > context:
            raise ValueError(f"workload.max_prompt_len ({cap}) + max_output ({cfg.max_output}) "
                             f"must fit the model's context of {context} tokens")
        # engine `auto` values (dtype: bf16 on CPUs with native bf16) resolved once, so both
        # engines run the same dtype
        from flowprefill.config import EngineConfig
        from flowprefill.executor.device import resolve

        self.engine = resolve(from_hydra(EngineConfig, cfg.engine))
        if self.engine.device != "cpu":
            raise ValueError(f"engine.device={self.engine.device}: the peers are vLLM's CPU "
                             "build; compare on the CPU (engine=cpu)")
        self.shared = Shared(model_dir=self.model_dir, served_name=self.model.served_name,
                             dtype=self.engine.dtype, max_model_len=context,
                             kv_cache_gib=int(cfg.kv_cache_gib), threads=cfg.threads,
                             seed=self.workload.seed)
        pinned = cfg.get("isolated_ttft")
        self.isolated: dict[int, float] | None = (
            {int(k): float(v) for k, v in pinned.items()} if pinned else None)
        self.isolated_on: str | None = "isolated_ttft" if pinned else None  # where measured
        self.engines: dict[str, dict] = {}

    def settings(self, n_requests: int) -> dict:
        c = self.cfg
        return {"model": self.shared.served_name, "model_dir": str(self.model_dir),
                "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} "
                           "cores", "workload": self.workload.name, "requests": n_requests,
                "rates": self.rates, "max_output": c.max_output, "threads": c.threads,
                "kv_cache_gib": c.kv_cache_gib, "dtype": self.shared.dtype,
                "warmup_requests": self.metrics.warmup_requests, "target": c.target,
                "slo": dataclasses.asdict(self.slo), "isolated_ttft": self.isolated,
                "peers": {k: dataclasses.asdict(p) for k, p in self.peers.items()}}

    def start(self, name: str) -> Server | PeerServer:
        log = self.run_dir / name / "server.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        if name != FLOWPREFILL:
            return PeerServer(self.peers[name], self.shared, _free_port(), log)
        c = self.cfg
        blocks = kv_blocks(self.hf, c.kv_cache_gib, self.engine.block_size, self.engine.dtype)
        over = OmegaConf.merge(c, {"model": {"path": str(self.model_dir),
                                             "served_model": self.shared.served_name},
                                   "engine": {"num_kv_blocks": blocks, "dtype": self.engine.dtype,
                                              "threads": c.threads or 0}})
        return Server(serve_config_args(over, log.parent), log, c.startup_timeout)

    def requests(self, rate: float) -> list[Request]:
        wcfg = dataclasses.replace(self.workload, rate_scale=rate)
        iso = None
        if self.slo.mode == "scaled_by_type":
            table = self.isolated or {}

            def iso(n: int) -> float:
                if n not in table:
                    raise KeyError(f"isolated_ttft has no prompt_len {n} (slo.scaled needs "
                                   f"{sorted(table)} and {n})")
                return table[n]
        elif self.slo.mode == "bands":  # per-request lengths: priced by the predictor
            from flowprefill.config import HardwareConfig, PredictorConfig
            from flowprefill.engine.build import resolve_hardware
            from flowprefill.predictor import make_predictor

            hw = resolve_hardware(from_hydra(HardwareConfig, self.cfg.hardware), self.engine)
            iso = make_predictor(from_hydra(PredictorConfig, self.cfg.predictor), self.model,
                                 hw).isolated_ttft
        return build_requests(wcfg, self.slo, iso)

    def run_engine(self, name: str) -> None:
        c = self.cfg
        t0 = time.perf_counter()
        log.info("[%s] starting (load average %.2f)", name, os.getloadavg()[0])
        server = self.start(name)
        startup = time.perf_counter() - t0
        by_rate: dict[str, dict] = {}
        try:
            base = ReplaySettings(url=server.url, model=self.shared.served_name,
                                  max_output_tokens=c.max_output, timeout=c.timeout)
            if c.warmup:
                asyncio.run(warm_up(base, c.warmup))
            if self.isolated is None and self.slo.mode == "scaled_by_type":
                lengths = [int(r["prompt_len"]) for r in self.slo.scaled.values()]
                self.isolated = isolated_ttfts(base, lengths, c.isolated_reps)
                self.isolated_on = name
            for i, rate in enumerate(self.rates):
                by_rate[f"{rate:g}"] = self.replay_once(name, base, rate, i)
        finally:
            code = server.stop()
        self.engines[name] = self.engine_entry(by_rate, startup, code)

    def replay_once(self, name: str, base: ReplaySettings, rate: float, i: int) -> dict:
        reqs = self.requests(rate)
        if not reqs:
            raise ValueError("the workload has no requests (workload.start/end/max_requests)")
        # the same prompts for every engine at this rate, other prompts at another rate
        s = dataclasses.replace(base, seed=self.workload.seed * 1000 + i,
                                priority=class_priority(reqs))
        load = os.getloadavg()
        t0 = time.perf_counter()
        records = asyncio.run(replay(reqs, s))
        wall = time.perf_counter() - t0
        summary = summarize(records, warmup=self.metrics.warmup_requests) | {
            "engine": name, "rate_scale": rate, "replay_wall_s": wall,
            "load_avg_before": list(load), "load_avg_after": list(os.getloadavg()),
            "priority": s.priority}
        if name == FLOWPREFILL:  # its own counters (preemptions), since its start
            summary["server_stats"] = _server_stats(base)
        with JsonSink(self.run_dir / name / f"r{rate:g}") as sink:
            sink.log_metrics(summary)
            sink.log_records(records)
        log.info("[%s] rate x%g (%.3f req/s): TTFT attainment %.3f, TBT %.3f, mean TTFT "
                 "%.0f ms, mean TPOT %.0f ms, load %.2f", name, rate, summary["offered_rps"],
                 summary["ttft_attainment"], summary["tbt_attainment"],
                 summary["mean_ttft_ms"], summary["mean_tpot_ms"], load[0])
        return summary

    def engine_entry(self, by_rate: dict[str, dict], startup: float, code: int) -> dict:
        """The headline summary (the first rate) plus the sweep and the max goodput."""
        target = self.cfg.target
        passed = [s for s in by_rate.values() if s["ttft_attainment"] >= target]
        best = max(passed, key=lambda s: s["rate_scale"]) if passed else None
        head = by_rate[f"{self.rates[0]:g}"]
        return head | {"by_rate": by_rate, "startup_s": startup, "exit_code": code,
                       "max_goodput_rps": best["offered_rps"] if best else 0.0,
                       "max_rate_scale": best["rate_scale"] if best else 0.0,
                       "target": target}


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Every engine in turn; the comparison dict (also written as JSON and a figure)."""
    comp = Comparison(cfg, run_dir)
    names = ([FLOWPREFILL] if cfg.flowprefill else []) + list(comp.peers)
    if not names:
        raise ValueError("nothing to compare: flowprefill=false and no peers")
    for name in names:
        comp.run_engine(name)
    n = len(comp.requests(comp.rates[0]))
    result = {"engines": comp.engines, "settings": comp.settings(n),
              "isolated_on": comp.isolated_on}
    out = Path(cfg.out) if cfg.out else run_dir / "comparison.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    plot_comparison(result, out.with_suffix(".png"), cfg.target)
    return result


register_configs()


@hydra.main(version_base=None, config_path="../conf", config_name="compare")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    # SIGTERM (e.g. `timeout`) unwinds like Ctrl-C, so every started server is stopped: they
    # run in their own process groups and would outlive us
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    result = run(cfg, run_dir)
    for name, e in result["engines"].items():
        log.info("%s: max goodput %.3f req/s at %.0f%% TTFT attainment (rate x%g)", name,
                 e["max_goodput_rps"], 100 * cfg.target, e["max_rate_scale"])
    log.info("-> %s", Path(cfg.out) if cfg.out else run_dir / "comparison.json")


if __name__ == "__main__":
    main()
