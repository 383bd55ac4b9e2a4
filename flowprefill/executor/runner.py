"""The model runner of one worker: the model, the KV pool, the block manager, the backend,
and on CUDA the streams prefill and decode run on.

Resolves the engine's `auto` settings for this machine and refuses a model that does not fit
before allocating anything. Creates prefill jobs from the scheduler's `core.Job` (allocating
their KV up front: a job that cannot get its blocks raises `OutOfBlocksError` and holds
nothing), runs batched decode steps over paged KV, and frees sequences. Must not know about
policies, events or clocks.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch

from flowprefill.attention import make_backend
from flowprefill.config import EngineConfig, ModelConfig
from flowprefill.core import Clock, Job
from flowprefill.executor import device
from flowprefill.executor.batch import build_decode_batch
from flowprefill.executor.memory import check_fits
from flowprefill.executor.prefill_job import PrefillJob
from flowprefill.executor.timeline import CPUTimeline, make_timeline
from flowprefill.kvcache import BlockManager, KVPool
from flowprefill.model import Decoder, load_model
from flowprefill.model.loading import DTYPES, resolve_config

T = TypeVar("T")


class ModelRunner:
    job_cls = PrefillJob  # what `prefill_job` makes (tensor-parallel rank 0: a mirrored one)
    failure: str | None = None  # why the runner can no longer run (None: it can)

    def __init__(self, model_cfg: ModelConfig, engine_cfg: EngineConfig,
                 model: Decoder | None = None) -> None:
        engine_cfg = self.engine_cfg = device.resolve(engine_cfg)
        if model is None:
            model_cfg = resolve_config(model_cfg)
            check_fits(model_cfg, engine_cfg)
            model = load_model(model_cfg, engine_cfg.device, engine_cfg.dtype,
                               engine_cfg.compile)
        self.model = model
        cfg = self.model_cfg = self.model.cfg  # resolved (a checkpoint's config.json wins)
        self.blocks = BlockManager(engine_cfg.num_kv_blocks, engine_cfg.block_size)
        self.pool = KVPool(cfg.num_layers, engine_cfg.num_kv_blocks, engine_cfg.block_size,
                           self.model.kv_heads, cfg.dim_head, DTYPES[engine_cfg.dtype],
                           engine_cfg.device)
        self.backend = make_backend(engine_cfg.attention, engine_cfg.device,
                                    engine_cfg.cpu_kernel)
        cuda = engine_cfg.device == "cuda"
        # decode on its own stream: a decode step placed at a preemption point does not queue
        # behind the prefill units launched ahead of the device
        self.prefill_stream = torch.cuda.Stream() if cuda else None
        self.decode_stream = torch.cuda.Stream() if cuda else None
        if cuda:  # weights and pool were made on the default stream: done before others read
            torch.cuda.synchronize()

    @property
    def device(self) -> torch.device:
        return self.pool.kv.device

    @contextlib.contextmanager
    def use_threads(self) -> Iterator[None]:
        """The body runs with this runner's intra-op thread count (`engine.threads`, resolved)
        on the calling thread, which gets its own count back after. The engine's thread and
        profiling use it; OpenMP settings are per thread, so the caller's other work (the
        offline API, a test) keeps torch's default."""
        if self.engine_cfg.device != "cpu" or self.engine_cfg.threads <= 0:
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(self.engine_cfg.threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def run_in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on a fresh thread set up as the engine sets up its thread (the
        runner's thread count, inference mode): how profiling times the model. Returns `fn`'s
        result or raises its exception."""
        def body() -> T:
            with self.use_threads(), torch.inference_mode():
                return fn(*args)

        return on_own_thread(body)

    @contextlib.contextmanager
    def on(self, stream: torch.cuda.Stream | None) -> Iterator[None]:
        """Run the body's kernels on `stream` (None: the CPU, nothing to do)."""
        if stream is None:
            yield
        else:
            with torch.cuda.stream(stream):
                yield

    def timeline(self, clock: Clock, stream: torch.cuda.Stream | None) -> CPUTimeline:
        """The device timeline of one of this runner's streams, on `clock`."""
        return make_timeline(clock, stream)

    # ------------------------------------------------------------------ prefill
    def prefill_job(self, job: Job, token_ids: Sequence[Sequence[int]] | None = None,
                    rider_tokens: Sequence[int] = ()) -> PrefillJob:
        """An executable job for `job`; token ids default to each request's prompt_token_ids.
        `rider_tokens`: each rider's last token (the input of its next decode step).

        Allocates KV blocks for every full prompt and each rider's new token now (all or
        nothing).
        """
        if token_ids is None:
            if any(r.prompt_token_ids is None for r in job.requests):
                raise ValueError(f"job {job.job_id}: requests carry no prompt_token_ids")
            token_ids = [r.prompt_token_ids for r in job.requests]
        ids = [list(t) for t in token_ids]
        if len(ids) != len(job.requests) or any(
                len(t) != r.prompt_len for t, r in zip(ids, job.requests, strict=True)):
            raise ValueError(f"job {job.job_id}: token ids do not match the requests' lengths")
        too_long = [r.request_id for r in job.requests
                    if r.prompt_len > self.model_cfg.max_position]
        if too_long:
            raise ValueError(f"prompts longer than max_position "
                             f"{self.model_cfg.max_position}: {too_long}")
        riders = [r.request_id for r in job.riders]
        if len(rider_tokens) != len(riders):
            raise ValueError(f"job {job.job_id}: {len(riders)} riders, {len(rider_tokens)} "
                             "rider tokens")
        self.blocks.allocate_all(job.request_ids, [len(t) for t in ids])
        try:
            self.blocks.append_all(riders, 1)
        except BaseException:
            for rid in job.request_ids:
                self.blocks.free(rid)
            raise
        return self.job_cls(self, job, ids, list(rider_tokens))

    # ------------------------------------------------------------------ decode
    def decode(self, seq_ids: Sequence[str], token_ids: Sequence[int]) -> torch.Tensor:
        """Append one token to each sequence and return next-token logits [B, V].

        Sequence b's new token goes at position `num_tokens(b)`; its KV slot is allocated here.
        """
        bm = self.blocks
        positions = [bm.num_tokens(s) for s in seq_ids]
        if max(positions) >= self.model_cfg.max_position:
            raise ValueError(f"decode past max_position {self.model_cfg.max_position}")
        bm.append_all(seq_ids, 1)  # all or nothing: OutOfBlocksError leaves every table as is
        batch = build_decode_batch(self.model, list(token_ids), positions,
                                   [bm.block_table(s) for s in seq_ids], bm.block_size)

        def attend(layer: int, q, k, v):
            return self.backend.decode(layer, q, k, v, batch.meta, self.pool)

        hidden = self.model.forward(batch.token_ids, batch.positions, None, attend)  # [B, H]
        return self.model.head(hidden)

    # ------------------------------------------------------------------ KV ownership
    def allocate(self, seq_id: str, num_tokens: int) -> list[int]:
        """Blocks for the first `num_tokens` tokens of a new sequence whose KV is filled from
        elsewhere (a KV transfer, a profiler's synthetic context); all or nothing."""
        return self.blocks.allocate(seq_id, num_tokens)

    def free(self, seq_id: str) -> None:
        """Release a sequence's KV blocks (finished, aborted, or handed to another worker)."""
        self.blocks.free(seq_id)

    def kv(self, seq_id: str, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of a sequence's cached K and V of one layer, each [num_tokens, kvh, hd]."""
        n = self.blocks.num_tokens(seq_id)
        table = torch.tensor(self.blocks.block_table(seq_id), dtype=torch.int64)
        pos = torch.arange(n)
        slots = (table[pos // self.blocks.block_size] * self.blocks.block_size
                 + pos % self.blocks.block_size).to(self.pool.kv.device)
        return self.pool.gather(layer, slots)

    def on_failure(self, callback: Callable[[str], None]) -> None:
        """Call `callback(message)` if the runner stops being able to run (a tensor-parallel
        rank died); a runner alone fails by raising from the call that failed, so never."""

    def close(self) -> None:
        """Release what the runner holds beyond memory (tensor-parallel ranks); idempotent."""


def make_runner(model_cfg: ModelConfig, engine_cfg: EngineConfig) -> ModelRunner:
    """The runner an engine config asks for: this process alone (`engine.tp=1`), or rank 0
    of a tensor-parallel group that starts the other ranks (`executor.tp`).

    Built on a thread of its own that ends when it is built, so the OpenMP pool that loading
    the weights starts ends with it: libgomp gives every thread that runs parallel work a
    pool of its own, and with more pool threads alive than cores it stops spinning at
    barriers and sleeps instead. With the constructing thread's pool beside the engine
    thread's, a 256-token SmolLM2 prefill took 237 ms on 2 cores instead of 126-137 ms.
    (A tensor-parallel group is started on the calling thread: its ranks die with the thread
    that forked them.)"""
    if engine_cfg.tp == 1:
        return on_own_thread(lambda: ModelRunner(model_cfg, engine_cfg))
    from flowprefill.executor.tp import TPModelRunner

    return TPModelRunner(model_cfg, engine_cfg)


def on_own_thread(fn: Callable[[], T]) -> T:
    """`fn()` on a fresh thread (its OpenMP pool gone when it returns); result or raise."""
    out: dict[str, Any] = {}

    def body() -> None:
        try:
            out["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            out["error"] = e

    t = threading.Thread(target=body, name="runner-work", daemon=True)  # Ctrl-C exits
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["result"]
