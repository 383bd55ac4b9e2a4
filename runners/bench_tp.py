"""Tensor-parallel benchmark on this machine (one process per rank, gloo on the CPU).

    python runners/bench_tp.py out=bench_tp.json [engine.dtype=float32 tp=2]

- `prefill`: tokens/s of one prompt prefilled unit by unit (as the engine steps a job) by an
  `engine.tp=1` runner and by an `engine.tp=N` runner over the same cores (tp=1 with every
  core's thread, each of N ranks with its share); rounds alternate between the two so load
  from other processes hits both alike; medians. Per-unit seconds are reported too.
- `coordination`: what mirroring costs per unit: rank 0's time to send one command to the
  other ranks (`send_us`), the time until a rank has it (`delivery_us`, both ends read the
  same monotonic clock), and a command's round trip (`round_trip_us`).
- `all_reduce`: seconds of one all-reduce of a given size on the group's backend, every
  rank calling it (the link the roofline's `link_bandwidth`/`link_latency` describe).
Results go to `out` as JSON with the machine, the settings and the load average beside them.
"""

from __future__ import annotations

import dataclasses
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
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowprefill.config import (  # noqa: E402
    EngineConfig,
    ModelConfig,
    from_hydra,
    register_configs,
)
from flowprefill.core import SLO, Job, Request  # noqa: E402
from flowprefill.executor import ModelRunner, make_runner  # noqa: E402
from flowprefill.executor.tp import TPModelRunner  # noqa: E402


def prefill_seconds(runner: ModelRunner, n: int, tag: str) -> tuple[float, int]:
    """(seconds, units) of one n-token prompt, stepped unit by unit; its KV freed after."""
    ids = tuple(range(1, n + 1))
    job = Job.unsliced(0, (Request(tag, 0.0, n, SLO(1.0), prompt_token_ids=ids),),
                       runner.model_cfg.num_layers)
    pj = runner.prefill_job(job)
    t0 = time.perf_counter()
    while not pj.finished:
        pj.step()
    dt = time.perf_counter() - t0
    runner.free(tag)
    return dt, pj.plan.num_units


def bench_prefill(runners: dict[int, ModelRunner], lengths: list[int], repeats: int,
                  warmup: int) -> list[dict]:
    times: dict[tuple[int, int], list[float]] = {}
    units: dict[int, int] = {}
    for rnd in range(warmup + repeats):
        for n in lengths:
            for tp, rn in runners.items():
                dt, units[n] = rn.run_in_thread(prefill_seconds, rn, n, f"r{tp}-{rnd}-{n}")
                if rnd >= warmup:
                    times.setdefault((tp, n), []).append(dt)
    out = []
    for n in lengths:
        row: dict[str, Any] = {"prompt_tokens": n, "units": units[n]}
        for tp in runners:
            med = statistics.median(times[(tp, n)])
            row[f"tp{tp}"] = {"seconds": med, "tokens_per_s": n / med,
                              "unit_us": med / units[n] * 1e6, "runs": times[(tp, n)]}
        row["speedup"] = row[f"tp{max(runners)}"]["tokens_per_s"] / row["tp1"]["tokens_per_s"]
        out.append(row)
    return out


def bench_coordination(rn: TPModelRunner, commands: int) -> dict:
    send, delivery, rtt = [], [], []
    for _ in range(commands):
        t0 = time.perf_counter()
        rn.group.send(("noop",))
        send.append(time.perf_counter() - t0)
    rn.group.request(("ping", 0.0))  # the noops are consumed before the pings are timed
    for _ in range(commands // 4):
        t0 = time.perf_counter()
        ((sent, got),) = rn.group.request(("ping", t0))
        rtt.append(time.perf_counter() - t0)
        delivery.append(got - sent)

    def us(xs: list[float]) -> dict:
        xs = sorted(xs)
        return {"median": statistics.median(xs) * 1e6, "p99": xs[int(0.99 * len(xs))] * 1e6}

    return {"send_us": us(send), "delivery_us": us(delivery), "round_trip_us": us(rtt),
            "commands": commands}


def bench_all_reduce(rn: TPModelRunner, sizes: list[int], repeats: int) -> list[dict]:
    out = []
    for numel in sizes:
        t = statistics.median(rn.time_all_reduce(numel, _dtype(rn), repeats))
        nbytes = numel * rn.pool.kv.element_size()
        out.append({"numel": numel, "bytes": nbytes, "seconds": t,
                    "gb_per_s": nbytes / t / 1e9})
    return out


def _dtype(rn: ModelRunner) -> str:
    return str(rn.pool.kv.dtype).removeprefix("torch.")


def run(model: ModelConfig, engine: EngineConfig, cfg: DictConfig) -> dict:
    tp = int(cfg.tp)
    cores = len(os.sched_getaffinity(0))
    base = ModelRunner(model, dataclasses.replace(engine, tp=1))
    par = make_runner(model, dataclasses.replace(engine, tp=tp))
    load_before = os.getloadavg()
    try:
        prefill = bench_prefill({1: base, tp: par}, list(cfg.prompt_tokens), cfg.repeats,
                                cfg.warmup)
        coordination = bench_coordination(par, int(cfg.commands))
        all_reduce = bench_all_reduce(par, list(cfg.all_reduce_numel),
                                      int(cfg.all_reduce_repeats))
    finally:
        par.close()
    return {
        "bench": "tp", "model": base.model_cfg.name, "tp": tp,
        "engine_tp1": dataclasses.asdict(base.engine_cfg),
        "engine_tpN": dataclasses.asdict(par.engine_cfg),
        "backend": "nccl" if base.engine_cfg.device == "cuda" else "gloo",
        "prefill": prefill, "coordination": coordination, "all_reduce": all_reduce,
        "machine": {"platform": platform.platform(), "cores": cores,
                    "torch": torch.__version__,
                    "load_avg_before_after": [load_before, os.getloadavg()]},
        "time": time.time(),
    }


register_configs()


@hydra.main(config_path="../conf", config_name="bench_tp", version_base="1.3")
def main(cfg: DictConfig) -> None:
    result = run(from_hydra(ModelConfig, cfg.model), from_hydra(EngineConfig, cfg.engine), cfg)
    out = Path(hydra.utils.to_absolute_path(cfg.out))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    n = result["tp"]
    for row in result["prefill"]:
        one, par = row["tp1"], row[f"tp{n}"]
        print(f"{row['prompt_tokens']:>6} tokens: tp1 {one['tokens_per_s']:9.0f} tok/s, "
              f"tp{n} {par['tokens_per_s']:9.0f} tok/s (x{row['speedup']:.2f}); per unit "
              f"{one['unit_us']:.0f} vs {par['unit_us']:.0f} us")
    c = result["coordination"]
    print(f"per command: send {c['send_us']['median']:.1f} us, delivered after "
          f"{c['delivery_us']['median']:.1f} us, round trip {c['round_trip_us']['median']:.1f} us")
    for a in result["all_reduce"]:
        print(f"all-reduce {a['bytes']:>9} B: {a['seconds'] * 1e6:8.1f} us "
              f"({a['gb_per_s']:.2f} GB/s)")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
