"""KV transfer benchmark: latency and throughput of NIXL pulls of KV blocks between processes.

    python runners/bench_kvtransfer.py [out=bench_kvtransfer.json repeats=15 device=cpu]

For each case (a KV shape) and prompt length, a separate process owns a KV pool registered
with its `KVAgent` (the prefill side); this process pulls that many tokens' blocks into its
own pool exactly as a decode worker does (one prepared descriptor per block per layer per
K/V, one READ). Block ids on the source side are shuffled so the pull is a true block list,
not one contiguous run. Reported per case, as medians over `repeats` after `warmup`:
`nixl` (post + spin on the state: the transfer itself), `served` (`KVAgent.pull` as the
decode worker awaits it, with its polling back-off), and, measured in the same run, `gather`
(an in-process `index_select` of the same bytes: the memory-copy baseline).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowprefill.kvcache import KVPool  # noqa: E402
from flowprefill.kvtransfer import KVAgent  # noqa: E402

torch.set_num_threads(1)  # the gather baseline is a memory copy; a busy thread pool only adds noise
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _pool(case: dict, num_blocks: int, block_size: int, device: str) -> KVPool:
    return KVPool(case["layers"], num_blocks, block_size, case["kv_heads"], case["head_dim"],
                  DTYPES[case["dtype"]], device)


def _source(case: dict, num_blocks: int, block_size: int, device: str, meta_q, done_q) -> None:
    pool = _pool(case, num_blocks, block_size, device)
    pool.kv.normal_()
    agent = KVAgent(pool.kv, case["layers"], num_blocks, role="bench-src")
    meta_q.put(agent.metadata())
    done_q.get()


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _spin(agent: KVAgent, peer: str, src: list[int], dst: list[int]) -> float:
    t0 = time.perf_counter()
    h = agent.start_read(peer, src, dst)
    while (state := agent.poll(h)) == "PROC":
        pass
    agent.release(h)
    if state != "DONE":
        raise RuntimeError(f"transfer ended in {state}")
    return time.perf_counter() - t0


def _timed(fn, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    return [fn() for _ in range(repeats)]


def bench_case(case: dict, tokens: int, cfg: DictConfig) -> dict:
    bs = cfg.block_size
    n = -(-tokens // bs)
    num_blocks = 2 * n  # room to shuffle source block ids
    ctx = mp.get_context("spawn")
    meta_q, done_q = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=_source, args=(case, num_blocks, bs, cfg.device, meta_q, done_q),
                       daemon=True)
    proc.start()
    try:
        info = meta_q.get(timeout=120)
        pool = _pool(case, n, bs, cfg.device)
        agent = KVAgent(pool.kv, case["layers"], n, role="bench-dst")
        peer = agent.add_peer(info)
        src = random.Random(0).sample(range(num_blocks), n)
        dst = list(range(n))
        nixl = _timed(lambda: _spin(agent, peer, src, dst), cfg.warmup, cfg.repeats)
        served = _timed(lambda: asyncio.run(agent.pull(peer, src, dst, 60.0)), cfg.warmup,
                        cfg.repeats)
        local = _pool(case, num_blocks, bs, cfg.device)
        slots = torch.tensor([b * bs + i for b in src for i in range(bs)], device=cfg.device)

        def gather() -> float:
            _sync(cfg.device)
            t0 = time.perf_counter()
            local.kv.index_select(2, slots)
            _sync(cfg.device)
            return time.perf_counter() - t0

        base = _timed(gather, cfg.warmup, cfg.repeats)
        nbytes = agent.bytes_for(n)
        agent.close()
    finally:
        done_q.put(1)
        proc.join(timeout=30)
    med = {k: statistics.median(v) for k, v in
           {"nixl": nixl, "served": served, "gather": base}.items()}
    return {"case": case["name"], "tokens": tokens, "blocks": n, "bytes": nbytes,
            "descriptors": n * 2 * case["layers"],
            "bytes_per_token": nbytes // (n * bs),
            **{f"{k}_median_s": v for k, v in med.items()},
            **{f"{k}_gbps": nbytes / v / 1e9 for k, v in med.items()},
            "nixl_p10_s": sorted(nixl)[len(nixl) // 10],
            "nixl_p90_s": sorted(nixl)[(len(nixl) * 9) // 10]}


def run(cfg: DictConfig) -> dict:
    import importlib.metadata

    results = []
    for case in OmegaConf.to_container(cfg.cases, resolve=True):
        for tokens in case["tokens"]:
            r = bench_case(case, tokens, cfg)
            print(f"{r['case']:>9} {tokens:>5} tok {r['bytes'] / 2**20:8.2f} MiB  nixl "
                  f"{r['nixl_median_s'] * 1e3:8.3f} ms {r['nixl_gbps']:6.2f} GB/s  served "
                  f"{r['served_median_s'] * 1e3:8.3f} ms  gather "
                  f"{r['gather_median_s'] * 1e3:8.3f} ms", flush=True)
            results.append(r)
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(),
               "python": platform.python_version(), "torch": torch.__version__,
               "nixl": importlib.metadata.version("nixl"), "backend": "UCX",
               "ucx_tls": os.environ.get("UCX_TLS", "default"),
               "load_avg": os.getloadavg()}
    return {"machine": machine, "settings": OmegaConf.to_container(cfg, resolve=True),
            "results": results}


@hydra.main(version_base=None, config_path="../conf", config_name="bench_kvtransfer")
def main(cfg: DictConfig) -> None:
    out = run(cfg)
    Path(cfg.out).write_text(json.dumps(out, indent=2))
    print(f"-> {cfg.out}")


if __name__ == "__main__":
    main()
