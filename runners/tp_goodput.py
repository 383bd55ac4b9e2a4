"""Simulated maximum goodput of the paper's two settings, side by side: Llama-3-8B on one
A800 (TP1) and Qwen2.5-14B on two A800s (TP2), for fcfs, chunked and flowprefill.

    python runners/tp_goodput.py out=runs/tp_goodput.json [jobs=2]
        [extra=[workload.max_requests=2000]]   # a shorter trace

Each cell is `runners/simulate.py mode=max_goodput` composed from conf/simulate.yaml with the
setting's and the policy's overrides (so `python runners/simulate.py model=qwen2_5_14b
engine.tp=2 hardware=a800 policy=flowprefill mode=max_goodput` reproduces one cell). Writes
the table and every cell's summary as JSON. Arguments are `key=value` (no Hydra: this script
only composes the simulator's config).
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETTINGS = {
    "llama3_8b_tp1_a800": ["model=llama3_8b", "hardware=a800", "engine.tp=1"],
    "qwen2_5_14b_tp2_a800": ["model=qwen2_5_14b", "hardware=a800", "engine.tp=2"],
}
POLICIES = ("fcfs", "chunked", "flowprefill")
KEEP = ("label", "model", "hardware", "tp", "workload", "requests", "max_goodput_rps",
        "max_rate_scale", "ttft_attainment", "target")


def cell(overrides: list[str]) -> dict:
    import simulate
    from hydra import compose, initialize_config_dir

    from flowprefill.config import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("simulate", overrides=["mode=max_goodput", "logger=none", *overrides])
    t0 = time.perf_counter()
    summary = simulate.run(simulate.setup_from(cfg))
    summary["wall_s"] = time.perf_counter() - t0
    summary["overrides"] = overrides
    return summary


def main(argv: list[str]) -> None:
    args = dict(a.split("=", 1) for a in argv)
    out = Path(args.get("out", "runs/tp_goodput.json"))
    extra = [x for x in args.get("extra", "").strip("[]").split(",") if x]
    jobs = int(args.get("jobs", "1"))
    grid = {(s, p): [*o, f"policy={p}", *extra] for s, o in SETTINGS.items() for p in POLICIES}
    with ProcessPoolExecutor(jobs) as pool:
        done = dict(zip(grid, pool.map(cell, grid.values()), strict=True))
    table = {s: {p: done[(s, p)]["max_goodput_rps"] for p in POLICIES} for s in SETTINGS}
    result = {"table_max_goodput_rps": table,
              "cells": {f"{s}/{p}": {k: v for k, v in done[(s, p)].items()
                                      if k in KEEP or k in ("wall_s", "overrides")}
                        for s, p in grid},
              "extra_overrides": extra, "load_avg_after": os.getloadavg()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"{'setting':<24}" + "".join(f"{p:>14}" for p in POLICIES))
    for s, row in table.items():
        print(f"{s:<24}" + "".join(f"{row[p]:>14.3f}" for p in POLICIES))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
