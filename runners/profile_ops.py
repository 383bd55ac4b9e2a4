"""`python runners/profile_ops.py model=tiny out=PATH`: profile the real executor for the predictor.

(Not `runners/profile.py`: a script directory is first on sys.path, so that name would shadow
the standard library's `profile` module for every runner, and torch.compile imports cProfile.)

Runs the model runner of the engine group (any model, device, dtype, compile setting,
attention backend) over the grid of `predictor.profile_data.ProfileGrid`: whole prompts,
packed batches of short requests, chunks attending to prefixes, decode steps. Each prefill
point is run as the engine runs it, one `PrefillJob.step()` (one operator) at a time, each
timed with the device synchronized before reading the clock; a decode point times
`ModelRunner.decode`. Everything runs on a thread set up as the engine sets up its prefill
thread (`ModelRunner.run_in_thread`), so the times are the serving engine's.
Untimed warm-up first (once globally, and per point up to `warmup_max_tokens`), then
`repeats` timed runs. Rows are appended to `PATH/profile.jsonl`
as each point finishes, so an interrupted run resumes where it stopped (points already in the
file are skipped; a file written with other settings is an error). `clock=thread_cpu`
(single-threaded CPU engine only) reads CPU time instead of wall time, so the load of other
processes on a shared machine does not enter the profile.
"""

from __future__ import annotations

import dataclasses
import os
import platform
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
    from_hydra,
    register_configs,
)
from flowprefill.core import OP_KINDS, SLO, ForwardPlan, Job, JobPlan, Request, op_kind  # noqa: E402
from flowprefill.executor import ModelRunner, make_runner  # noqa: E402
from flowprefill.predictor.profile_data import (  # noqa: E402
    ENGINE_SETTINGS,
    IDENTITY,
    Point,
    ProfileGrid,
    append_row,
    done_keys,
    grid_points,
    meta_of,
    point_row,
    profile_file,
    read_rows,
    setting,
)

CLOCKS = {"wall": time.perf_counter, "thread_cpu": time.thread_time}


def check_clock(clock: str, engine: EngineConfig) -> None:
    """`thread_cpu` times the calling thread's CPU: the cost on an idle machine, robust to
    other processes, but only for a single-threaded CPU engine (other threads' work and
    device time would go unseen)."""
    if clock not in CLOCKS:
        raise ValueError(f"unknown clock {clock!r} ({' | '.join(CLOCKS)})")
    if clock == "thread_cpu" and (engine.device != "cpu" or engine.threads != 1):
        raise ValueError("clock=thread_cpu needs engine.device=cpu and engine.threads=1")


class Profiler:
    """Times grid points on one model runner (its KV pool is reused point after point)."""

    def __init__(self, runner: ModelRunner, seed: int = 0, clock: str = "wall") -> None:
        self.runner = runner
        self.device = runner.model.device
        self.gen = torch.Generator().manual_seed(seed)
        self.now = CLOCKS[clock]
        self._n = 0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def _ids(self, n: int) -> tuple[int, ...]:
        return tuple(torch.randint(0, self.runner.model_cfg.vocab_size, (n,),
                                   generator=self.gen).tolist())

    def _job(self, point: Point) -> Job:
        """A job of one forward over the point's shape, operators whole. A chunk point is
        one request of `prefix + n` tokens whose plan is only its last chunk: its cost depends
        on the prefix's length, not on the values in its KV slots, so earlier chunks need not
        run."""
        chunked = point.case == "chunk"
        lens = [n + c for n, c in point.shape] if chunked else [n for n, _ in point.shape]
        reqs = []
        for n in lens:
            self._n += 1
            reqs.append(Request(f"p{self._n}", 0.0, n, SLO(1.0), prompt_token_ids=self._ids(n)))
        plan = JobPlan((ForwardPlan.whole(point.shape, point.logits,
                                          self.runner.model_cfg.num_layers),))
        return Job(self._n, tuple(reqs), plan, point.shape[0][0] if chunked else None)

    def prefill_once(self, point: Point) -> tuple[dict[str, float], float]:
        """One timed forward: (op kind -> mean seconds per operator of it, total seconds)."""
        job = self._job(point)
        pj = self.runner.prefill_job(job)
        sums: dict[str, float] = dict.fromkeys(OP_KINDS, 0.0)
        counts: dict[str, int] = dict.fromkeys(OP_KINDS, 0)
        model = self.runner.model
        try:
            self._sync()
            start = self.now()
            while not pj.finished:
                kind = op_kind(pj.plan.passes[0].unit(pj.done)[0], model.num_layers).value
                t0 = self.now()
                pj.step()
                self._sync()
                sums[kind] += self.now() - t0
                counts[kind] += 1
            total = self.now() - start
        finally:
            for s in job.request_ids:
                self.runner.free(s)
        return {k: sums[k] / counts[k] for k in sums if counts[k]}, total

    def decode_times(self, point: Point, runs: int) -> list[float]:
        """`runs` timed decode steps over sequences holding `context` tokens each."""
        seqs = []
        for _, ctx in point.shape:
            self._n += 1
            seqs.append(f"d{self._n}")
            self.runner.allocate(seqs[-1], ctx)  # (mirrored to tensor-parallel ranks)
        tokens = list(self._ids(len(seqs)))
        out = []
        try:
            for _ in range(runs):
                self._sync()
                t0 = self.now()
                self.runner.decode(seqs, tokens)
                self._sync()
                out.append(self.now() - t0)
        finally:
            for s in seqs:
                self.runner.free(s)
        return out

    def measure(self, point: Point, warmup: int, repeats: int) -> dict:
        if point.case == "decode":
            e2e = self.decode_times(point, warmup + repeats)[warmup:]
            return point_row(point, {}, e2e)
        for _ in range(warmup):
            self.prefill_once(point)
        ops: dict[str, list[float]] = {}
        e2e = []
        for _ in range(repeats):
            per_op, total = self.prefill_once(point)
            for k, v in per_op.items():
                ops.setdefault(k, []).append(v)
            e2e.append(total)
        return point_row(point, ops, e2e)


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "load_avg_1_5_15min": os.getloadavg(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def run(model_cfg: ModelConfig, engine_cfg: EngineConfig, hardware: HardwareConfig,
        grid: ProfileGrid, out: Path, warmup: int, repeats: int, warmup_max_tokens: int,
        progress: bool = True, clock: str = "wall") -> Path:
    """Measure every grid point not yet in `out`; return the profile file."""
    check_clock(clock, engine_cfg)
    runner = make_runner(model_cfg, engine_cfg)  # engine.tp > 1: every rank runs each point
    cfg = runner.model_cfg
    resolved = runner.engine_cfg  # every `auto` decided, as the engine serving it will be
    meta = {"type": "meta", "model": cfg.name, "num_layers": cfg.num_layers,
            **{k: getattr(resolved, k) for k in ENGINE_SETTINGS},
            "hardware": hardware.name, "clock": clock, "timed_on": "engine_thread",
            "torch_threads": runner.engine_cfg.threads or torch.get_num_threads(),
            "max_position": cfg.max_position,
            "machine": machine(), "time": time.time(),
            "settings": {"grid": dataclasses.asdict(grid), "warmup": warmup,
                         "repeats": repeats, "warmup_max_tokens": warmup_max_tokens,
                         "engine": dataclasses.asdict(engine_cfg)}}
    rows = read_rows(out)
    if rows:
        old = meta_of(rows)
        if any(setting(old, k) != meta[k] for k in IDENTITY):
            raise ValueError(f"{profile_file(out)} was written with other settings: "
                             f"{ {k: setting(old, k) for k in IDENTITY} }")
    append_row(out, meta)
    todo = [p for p in grid_points(grid, cfg.max_position) if p.key not in done_keys(rows)]
    profiler = Profiler(runner, grid.seed, clock)

    def measure_all() -> None:
        if todo:  # global warm-up: allocator, thread pool, compilation of the dynamic graphs
            for n in (16, 256, 1024):
                profiler.prefill_once(Point("prompt", ((n, 0),), 1))
        for point in tqdm(todo, desc="profile", unit="pt", disable=not progress):
            size = point.new_tokens + max(c for _, c in point.shape)
            w = warmup if point.case == "decode" or size <= warmup_max_tokens else 0
            append_row(out, profiler.measure(point, w, repeats))

    try:
        runner.run_in_thread(measure_all)  # a thread set up as the engine's prefill thread
    finally:
        runner.close()
    return profile_file(out)


register_configs()


@hydra.main(config_path="../conf", config_name="profile", version_base="1.3")
def main(cfg: DictConfig) -> None:
    grid = ProfileGrid(**{k: (tuple(tuple(x) if isinstance(x, list) else x for x in v)
                              if isinstance(v, list) else v)
                          for k, v in OmegaConf.to_container(cfg.grid).items()})
    out = Path(hydra.utils.to_absolute_path(cfg.out))
    path = run(from_hydra(ModelConfig, cfg.model), from_hydra(EngineConfig, cfg.engine),
               from_hydra(HardwareConfig, cfg.hardware), grid, out, cfg.warmup, cfg.repeats,
               cfg.warmup_max_tokens, clock=cfg.clock)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
