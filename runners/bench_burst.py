"""Overload benchmark: does the server stay bounded under repeated bursts?

    python runners/bench_burst.py [bursts=8 size=500 "serve=['deploy=pd']" out=bench_burst.json]

Starts `serve.py` (with the `serve` overrides) and fires `bursts` bursts of `size` concurrent
completions at it, one after the other. After each burst it waits for the server to settle
(nothing in flight, KV pool full) and records the status codes (served 200, refused 429,
anything else), the settle state and the resident memory (VmRSS summed over the server's
process tree, workers included under deploy=pd). Writes JSON with the memory before the first
burst and after each one, so growth across bursts (not just after one) is visible.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import platform
import sys
import time
from pathlib import Path

import httpx
import hydra
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from experiment import Server  # noqa: E402


def tree_rss_mb(pid: int) -> float:
    """VmRSS of `pid` and all its descendants, in MiB (Linux /proc)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children[ppid].append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, ()))
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


async def burst(url: str, model: str, cfg: DictConfig) -> collections.Counter:
    lo, hi = cfg.prompt_tokens
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=None)) as c:
        async def one(i: int) -> str:
            body = {"model": model, "prompt": [100 + i % 50] * (lo + i % (hi - lo)),
                    "max_tokens": cfg.max_tokens}
            try:
                r = await c.post(url + "/v1/completions", json=body)
            except httpx.HTTPError as e:
                return type(e).__name__
            return str(r.status_code)
        return collections.Counter(await asyncio.gather(*(one(i) for i in range(cfg.size))))


def settle(url: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = httpx.get(url + "/internal/stats", timeout=10).json()
        idle = st["requests_in_flight"] == 0 and st["kv_blocks_free"] == st["kv_blocks_total"]
        if idle or time.monotonic() > deadline:
            return {"idle": idle, "requests_in_flight": st["requests_in_flight"],
                    "kv_blocks_free": st["kv_blocks_free"],
                    "kv_blocks_total": st["kv_blocks_total"]}
        time.sleep(0.2)


@hydra.main(version_base=None, config_path="../conf", config_name="bench_burst")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    server = Server(list(cfg.serve), run_dir / "server.log", cfg.startup_timeout)
    try:
        model = httpx.get(server.url + "/v1/models", timeout=10).json()["data"][0]["id"]
        warm = httpx.post(server.url + "/v1/completions", timeout=120,
                          json={"model": model, "prompt": "warm up", "max_tokens": 2})
        warm.raise_for_status()
        rows = [{"burst": 0, "rss_mb": tree_rss_mb(server.proc.pid), **settle(
            server.url, cfg.settle_timeout)}]
        for b in tqdm(range(1, cfg.bursts + 1), desc="bursts", unit="burst"):
            t0 = time.perf_counter()
            codes = asyncio.run(burst(server.url, model, cfg))
            seconds = time.perf_counter() - t0
            state = settle(server.url, cfg.settle_timeout)
            rows.append({"burst": b, "seconds": seconds, "codes": dict(codes),
                         "served": codes.get("200", 0), "refused": codes.get("429", 0),
                         "server_errors": sum(n for k, n in codes.items() if k.startswith("5")),
                         "other": sum(n for k, n in codes.items()
                                      if k not in ("200", "429") and not k.startswith("5")),
                         "rss_mb": tree_rss_mb(server.proc.pid), **state})
            tqdm.write(f"burst {b}: {dict(codes)} rss {rows[-1]['rss_mb']:.0f} MiB "
                       f"idle={state['idle']}")
    finally:
        rc = server.stop()
    rss = [r["rss_mb"] for r in rows]
    result = {"config": OmegaConf.to_container(cfg, resolve=True), "bursts": rows,
              "rss_mb_before": rss[0], "rss_mb_after_first": rss[1] if len(rss) > 1 else None,
              "rss_mb_after_last": rss[-1],
              "rss_mb_growth_after_first": rss[-1] - rss[1] if len(rss) > 1 else None,
              "server_errors": sum(r.get("server_errors", 0) for r in rows),
              "all_settled": all(r["idle"] for r in rows), "server_exit_code": rc,
              "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "load_avg_after": os.getloadavg()}}
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"RSS {rss[0]:.0f} MiB before, {rss[1]:.0f} after burst 1, {rss[-1]:.0f} after burst "
          f"{len(rss) - 1}; 5xx {result['server_errors']}; settled {result['all_settled']}; "
          f"wrote {out}")


if __name__ == "__main__":
    main()
