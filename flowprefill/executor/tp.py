"""Tensor parallelism, rank 0's side: a `ModelRunner` whose every state-changing call is
mirrored to the other ranks before (or, for pure bookkeeping, right after) it runs here.

The engine loop, the scheduler and the units are unchanged: they talk to rank 0's runner as
to any runner. What changes the state of a runner is: creating a prefill job, stepping it
one unit, running it whole, aborting it, a decode step with given tokens, allocating and
freeing a sequence's KV. Each is sent to ranks 1..N-1 as a small command (`tp_group`), in
the order rank 0 runs them, and the ranks replay them on their shards (`tp_rank`): block
ids, plans and cursors stay identical with no further coordination, a switch of jobs takes
effect at the same unit boundary on every rank, and no rank runs ahead of rank 0's decisions
(it runs only what it was sent). Sampling happens on rank 0 alone, from rank 0's logits;
the tokens reach the others inside the next decode command. One lock orders the calls of
every thread (a PD worker frees KV from its HTTP thread).

The commands are sent before the work runs here, so every rank meets the work's collectives;
a command that fails the same way everywhere (a job that does not fit, a prompt too long)
fails before any collective, on every rank alike. Must not know about policies or events.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence

import torch

from flowprefill.config import EngineConfig, ModelConfig
from flowprefill.core import Job
from flowprefill.executor import device
from flowprefill.executor.memory import available, check_fits
from flowprefill.executor.prefill_job import PrefillJob
from flowprefill.executor.runner import ModelRunner, T
from flowprefill.executor.tp_group import (
    CollectiveError,
    RankGroup,
    TPRankError,
    all_reduce,
    time_all_reduce,
)
from flowprefill.kvcache import BlockManager
from flowprefill.model.loading import resolve_config
from flowprefill.model.shard import check_shardable, load_shard

__all__ = ["MirroredPrefillJob", "TPModelRunner", "TPRankError", "state_digest"]


def state_digest(blocks: BlockManager, jobs: Iterable[PrefillJob]) -> tuple:
    """What must be equal on every rank: the KV bookkeeping and each live job's cursor."""
    return blocks.snapshot(), tuple(sorted((j.job_id, j.done) for j in jobs))


class MirroredPrefillJob(PrefillJob):
    """Rank 0's prefill job: each step (and a whole run, an abort) is sent to the ranks."""

    runner: TPModelRunner

    def step(self) -> tuple[int, int]:
        return self._mirrored("step", super().step)

    def run_monolithic(self) -> torch.Tensor:
        return self._mirrored("monolithic", super().run_monolithic)

    def _mirrored(self, command: str, run: Callable[[], T]) -> T:
        """`run()` here while every rank runs `command` on this job; a failed collective
        breaks the group."""
        rn = self.runner
        with rn.lock:
            rn.group.send((command, self.job_id))
            try:
                return run()
            except CollectiveError as e:
                raise rn.group.broken(str(e)) from e

    def abort(self) -> None:
        rn = self.runner
        with rn.lock:
            super().abort()
            rn.group.send(("abort", self.job_id, tuple(self.seq_ids)), strict=False)


class TPModelRunner(ModelRunner):
    """Rank 0 of `engine.tp` ranks: starts the others, holds its own shard (its KV pool holds
    its KV heads only: `kv()` returns those), and mirrors its calls to them."""

    job_cls = MirroredPrefillJob

    def __init__(self, model_cfg: ModelConfig, engine_cfg: EngineConfig) -> None:
        engine_cfg = device.resolve(engine_cfg)  # threads: this process's cores per rank
        model_cfg = resolve_config(model_cfg)
        tp = engine_cfg.tp
        check_shardable(model_cfg, tp)
        if engine_cfg.device == "cuda":
            if torch.cuda.device_count() < tp:
                raise ValueError(f"engine.tp={tp} needs {tp} CUDA devices; "
                                 f"{torch.cuda.device_count()} visible")
            torch.cuda.set_device(0)
            check_fits(model_cfg, engine_cfg)  # each rank checks its own GPU
        else:  # the ranks share this machine's memory
            check_fits(model_cfg, engine_cfg, free=available("cpu") // tp)
        self.lock = threading.RLock()
        self.group = RankGroup(model_cfg, engine_cfg)
        try:
            model = load_shard(model_cfg, 0, tp, all_reduce, engine_cfg.device,
                               engine_cfg.dtype, engine_cfg.compile)
            super().__init__(model_cfg, engine_cfg, model=model)
            self.group.wait_ready()
        except BaseException:
            self.group.close()
            raise

    @property
    def failure(self) -> str | None:  # type: ignore[override]
        return self.group.failure

    def on_failure(self, callback: Callable[[str], None]) -> None:
        self.group.on_failure(callback)

    # ------------------------------------------------------------------ mirrored calls
    def prefill_job(self, job: Job, token_ids: Sequence[Sequence[int]] | None = None,
                    rider_tokens: Sequence[int] = ()) -> PrefillJob:
        with self.lock:
            if self.group.failure is not None:
                raise TPRankError(self.group.failure)
            # validates and allocates: no collective
            pj = super().prefill_job(job, token_ids, rider_tokens)
            try:
                self.group.send(("job", job, None if token_ids is None else pj.token_ids,
                                 list(rider_tokens)))
            except TPRankError:
                PrefillJob.abort(pj)  # the ranks never saw it: give its blocks back here only
                raise
            return pj

    def decode(self, seq_ids: Sequence[str], token_ids: Sequence[int]) -> torch.Tensor:
        with self.lock:
            self.group.send(("decode", list(seq_ids), list(token_ids)))
            try:
                return super().decode(seq_ids, token_ids)
            except CollectiveError as e:
                raise self.group.broken(str(e)) from e

    def allocate(self, seq_id: str, num_tokens: int) -> list[int]:
        with self.lock:
            blocks = super().allocate(seq_id, num_tokens)
            self.group.send(("allocate", seq_id, num_tokens), strict=False)
            return blocks

    def free(self, seq_id: str) -> None:
        with self.lock:
            super().free(seq_id)
            self.group.send(("free", seq_id), strict=False)

    # ------------------------------------------------------------------ checks, teardown
    def check_consistent(self, jobs: Iterable[PrefillJob] = ()) -> None:
        """Raise unless every rank holds the same KV bookkeeping and, for `jobs` (the live
        ones: not finished, not aborted), the same cursors as rank 0."""
        jobs = list(jobs)
        with self.lock:
            mine = state_digest(self.blocks, jobs)
            for r, theirs in enumerate(self.group.request(("digest",)), start=1):
                if theirs != mine:
                    raise RuntimeError(f"tensor-parallel rank {r} diverged from rank 0: "
                                       f"{theirs} != {mine}")

    def time_all_reduce(self, numel: int, dtype: str = "float32", repeats: int = 20
                        ) -> list[float]:
        """Rank 0's seconds of each of `repeats` all-reduces of `numel` elements, every rank
        running them (a measurement of the link; nothing else may run meanwhile)."""
        with self.lock:
            self.group.send(("time_all_reduce", numel, dtype, repeats))
            mine = time_all_reduce(numel, dtype, repeats, self.device.type)
            self.group.replies("time_all_reduce")  # read theirs: the channel stays in step
            return mine

    def close(self) -> None:
        with self.lock:
            self.group.close()
