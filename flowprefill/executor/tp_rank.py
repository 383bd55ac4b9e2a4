"""A tensor-parallel rank other than 0: `python -m flowprefill.executor.tp_rank FD`.

Started by rank 0 (`tp_group.RankGroup`) with one end of a socket pair as file descriptor FD.
It reads its rank, the store's port and the configs from the channel, joins the process
group, loads its shard, builds an ordinary `ModelRunner` over it and then replays rank 0's
commands in order, on its shard, until `stop`. It decides nothing: no scheduler, no
sampling, no clock. Every unit runs on one stream (the runner's prefill stream on CUDA), in
command order, so nothing here can reorder what rank 0 ordered.

A command that raises here raised on rank 0 too (the same validation over the same state),
before any collective: it is skipped, as rank 0 skipped it. A failed collective or a closed
channel ends the rank with a non-zero status (rank 0 then sees it exit).
"""

from __future__ import annotations

import logging
import socket
import sys
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from flowprefill.executor.memory import check_fits
from flowprefill.executor.prefill_job import PrefillJob
from flowprefill.executor.runner import ModelRunner
from flowprefill.executor.tp import state_digest
from flowprefill.executor.tp_group import (
    CollectiveError,
    all_reduce,
    init_group,
    recv_msg,
    send_msg,
    time_all_reduce,
)
from flowprefill.model.shard import load_shard

log = logging.getLogger("flowprefill.tp_rank")
REPLIES = frozenset({"digest", "ping", "time_all_reduce"})  # rank 0 waits for their answer


class Replayer:
    """Runs rank 0's commands on this rank's runner."""

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self.jobs: dict[int, PrefillJob] = {}  # live jobs (finished ones hold no state)
        self.handlers: dict[str, Callable[..., Any]] = {
            "job": self.job, "step": self.step, "monolithic": self.monolithic,
            "abort": self.abort, "decode": runner.decode, "allocate": runner.allocate,
            "free": runner.free, "digest": self.digest, "ping": self.ping,
            "noop": lambda *_: None, "time_all_reduce": self.time_all_reduce}

    def job(self, job: Any, token_ids: list[list[int]] | None, rider_tokens: list[int]
            ) -> None:
        self.jobs[job.job_id] = self.runner.prefill_job(job, token_ids, rider_tokens)

    def step(self, job_id: int) -> None:
        job = self.jobs[job_id]
        job.step()
        if job.finished:
            del self.jobs[job_id]

    def monolithic(self, job_id: int) -> None:
        self.jobs.pop(job_id).run_monolithic()

    def abort(self, job_id: int, seq_ids: tuple[str, ...]) -> None:
        job = self.jobs.pop(job_id, None)
        if job is not None:
            job.abort()
        else:  # a finished job: its sequences' KV is all there is to free
            for s in seq_ids:
                self.runner.free(s)

    def digest(self) -> tuple:
        return state_digest(self.runner.blocks, self.jobs.values())

    def ping(self, sent: float) -> tuple[float, float]:
        return sent, time.perf_counter()  # perf_counter is CLOCK_MONOTONIC: one system clock

    def time_all_reduce(self, numel: int, dtype: str, repeats: int) -> list[float]:
        return time_all_reduce(numel, dtype, repeats, self.runner.device.type)

    def serve(self, sock: socket.socket, reader: Any) -> int:
        rn = self.runner
        with rn.use_threads(), torch.inference_mode(), rn.on(rn.prefill_stream):
            while True:
                try:
                    cmd = recv_msg(reader)
                except EOFError:
                    log.error("rank 0 closed the channel without stopping this rank")
                    return 1
                op = cmd[0]
                if op == "stop":
                    return 0
                try:
                    out = self.handlers[op](*cmd[1:])
                except CollectiveError:
                    log.exception("collective failed in %r", op)
                    return 1
                except Exception as e:  # noqa: BLE001 - rank 0 raised the same, before any
                    log.debug("%r failed as on rank 0: %s", op, e)  # collective
                    out = None
                if op in REPLIES:
                    send_msg(sock, ("reply", out))


def start(sock: socket.socket, reader: Any) -> ModelRunner:
    _, rank, port, model_cfg, engine_cfg = recv_msg(reader)
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s tp rank {rank} %(levelname)s %(name)s: %(message)s")
    if engine_cfg.device == "cuda":
        torch.cuda.set_device(rank)  # rank r: cuda:r of the visible devices
    send_msg(sock, ("hello",))
    store = dist.TCPStore("127.0.0.1", port, engine_cfg.tp, is_master=False,
                          timeout=timedelta(seconds=engine_cfg.tp_timeout))
    init_group(engine_cfg, store, rank)
    if engine_cfg.device == "cuda":
        check_fits(model_cfg, engine_cfg)  # this rank's GPU (rank 0 checked the CPU's RAM)
    model = load_shard(model_cfg, rank, engine_cfg.tp, all_reduce, engine_cfg.device,
                       engine_cfg.dtype, engine_cfg.compile)
    return ModelRunner(model_cfg, engine_cfg, model=model)


def main(argv: list[str]) -> int:
    sock = socket.socket(fileno=int(argv[1]))
    reader = sock.makefile("rb")
    try:
        runner = start(sock, reader)
    except BaseException as e:  # noqa: BLE001 - reported to rank 0, which raises it
        try:
            send_msg(sock, ("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
        except OSError:
            pass
        return 1
    send_msg(sock, ("ready",))
    code = Replayer(runner).serve(sock, reader)
    if code == 0 and dist.is_initialized():
        dist.destroy_process_group()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
