"""Schemas of what is served and run: workloads, SLOs, server, deploy, logging, peers,
metrics, simulation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from flowprefill.config.model import MAX_UNIT_MS

# --------------------------------------------------------------------------- workload / SLOs


@dataclass(frozen=True)
class WorkloadConfig:
    name: str = "qwen_like"
    format: Literal["qwen", "azure", "mooncake", "canonical", "auto", "synthetic"] = "synthetic"
    path: str | None = None
    rate_scale: float = 1.0  # divides inter-arrival gaps
    start: float | None = None  # window start, seconds from the trace's first request
    end: float | None = None
    max_requests: int | None = None
    max_prompt_len: int | None = None  # clip longer prompts (e.g. to the model's context)
    seed: int = 0
    # synthetic generator
    preset: str = "qwen_like"
    rate: float = 5.0  # requests/s
    arrival: Literal["poisson", "gamma"] = "poisson"
    cv: float = 1.0  # gamma arrivals: coefficient of variation of gaps
    num_requests: int = 1000


@dataclass(frozen=True)
class SLOConfig:
    mode: Literal["by_type", "paper", "scaled_by_type", "bands"] = "by_type"
    scale: float = 1.0  # multiplies every SLO
    seed: int = 0
    # by_type: TTFT and TBT seconds per type; untyped traces are typed by `type_rule`
    ttft: dict[str, float] = field(
        default_factory=lambda: {"text": 0.25, "image": 0.5, "search": 4.0, "file": 6.0}
    )
    tbt: dict[str, float] = field(
        default_factory=lambda: {"text": 0.1, "image": 0.1, "search": 0.2, "file": 0.2}
    )
    type_rule: Literal["by_length", "mix"] = "by_length"
    # by_length: each type's inclusive upper bound on prompt tokens (longer: the largest bound's)
    length_types: dict[str, int] = field(
        default_factory=lambda: {"text": 1024, "search": 4096, "file": 16384}
    )
    # mix: an exact, seeded share per type (Qwen-Bailian's published type mix)
    type_mix: dict[str, float] = field(
        default_factory=lambda: {"text": 0.69, "image": 0.07, "search": 0.20, "file": 0.03}
    )
    # bands: class -> share of requests and the [lo, hi] multiple of the isolated TTFT
    bands: dict[str, Any] = field(
        default_factory=lambda: {
            "urgent": {"share": 0.3, "lo": 1.2, "hi": 2.0},
            "relaxed": {"share": 0.7, "lo": 3.0, "hi": 10.0},
        }
    )
    tbt_default: float = 0.2
    # paper: `tables[table]` holds {ttft: {type: s}, tbt: {type: s}} (the paper's Table 2
    # rows, one per model); typed like by_type
    table: str | None = None
    tables: dict[str, Any] = field(default_factory=dict)
    # scaled_by_type: type -> {multiple, prompt_len}: the type's TTFT SLO is `multiple` x the
    # isolated TTFT of a `prompt_len`-token prompt on the machine served; TBT from `tbt`
    scaled: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- serving / runs


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    default_slo_class: str = "default"
    class_ttft: dict[str, float] = field(
        default_factory=lambda: {"default": 10.0, "urgent": 0.25, "relaxed": 4.0}
    )
    # Bounded admission: beyond these, new requests get 429 with Retry-After.
    max_waiting: int = 256  # requests admitted but without their first token yet
    max_queued_tokens: int = 1_048_576  # prompt tokens of those requests
    max_body_bytes: int = 4 * 1024 * 1024  # larger request bodies get 413
    grace_period: float = 10.0  # seconds in-flight requests get after SIGTERM/SIGINT
    # a chat request without max_tokens generates at most this many (OpenAI would allow the
    # whole remaining context, which on a random-weight model means until the context ends)
    chat_max_tokens: int = 512


@dataclass(frozen=True)
class DeployConfig:
    """How the serving stack is laid out in processes (`serve.py deploy=colocated|pd`).

    `pd`: `role=all` starts `prefill_workers` + `decode_workers` worker processes on
    `worker_host` and serves the proxy on `server.port`; `role=prefill|decode` runs one worker
    on `port` (another machine's proxy names it in `prefill_urls` / `decode_urls`);
    `role=proxy` serves the public API over workers given by those URL lists.
    """

    mode: Literal["colocated", "pd"] = "colocated"
    role: Literal["all", "proxy", "prefill", "decode"] = "all"
    prefill_workers: int = 1
    decode_workers: int = 1
    worker_host: str = "127.0.0.1"
    base_port: int = 0  # first worker port (prefill then decode); 0 = free ports
    port: int = 0  # this worker's internal API port (role=prefill|decode)
    prefill_urls: list[str] = field(default_factory=list)  # role=proxy
    decode_urls: list[str] = field(default_factory=list)
    # role=all on a GPU machine: the CUDA device(s) of each worker, one entry per worker, as
    # CUDA_VISIBLE_DEVICES ("0", or "0,1" for a tensor-parallel worker); empty: all of them
    prefill_devices: list[str] = field(default_factory=list)
    decode_devices: list[str] = field(default_factory=list)
    lease_timeout: float = 30.0  # seconds a prefilled request's KV waits to be pulled
    transfer_timeout: float = 10.0  # seconds one NIXL pull may take before it fails
    # fail | recompute (prefill again on the decode side)
    on_transfer_failure: Literal["fail", "recompute"] = "fail"
    health_interval: float = 0.5  # seconds between the proxy's polls of worker stats
    startup_timeout: float = 300.0  # seconds workers get to become healthy
    # role=all restarts a worker that dies (same role and port; the proxy's health poll picks
    # it up again) after restart_delay seconds, doubling with each restart; at most
    # max_restarts times per worker (0 = never restart)
    max_restarts: int = 5
    restart_delay: float = 1.0
    # shared secret of the internal worker APIs (else FLOWPREFILL_INTERNAL_SECRET); required
    # when workers bind beyond loopback; role=all makes a fresh one when none is given
    secret: str | None = None


@dataclass(frozen=True)
class LoggerConfig:
    kind: Literal["json", "wandb", "none"] = "json"
    project: str = "flowprefill"
    mode: str = "offline"  # wandb mode
    name: str | None = None  # wandb run name; None: wandb's default
    group: str | None = None  # wandb group, e.g. an experiment's name


@dataclass(frozen=True)
class PeerConfig:
    """Another serving system `runners/compare.py` runs beside FlowPrefill: one file per
    peer in conf/peers/ (not a schema group: a comparison selects several at once)."""

    kind: str = "vllm"  # how it is started (runners/peer_servers.py)
    args: list[str] = field(default_factory=list)  # its own command-line arguments
    env: dict[str, str] = field(default_factory=dict)  # its own environment variables
    venv: str = ".venv-peers"  # where it is installed (`make peers`), from the project root
    startup_timeout: float = 900.0  # seconds to become healthy (vLLM compiles at start)


@dataclass(frozen=True)
class MetricsConfig:
    """How a run's per-request records become its summary (flowprefill.metrics.summarize)."""

    # the first N requests by arrival warm the system up and are left out of every metric
    # (the FlowPrefill paper's 32); they are still sent, so the load they add is real
    warmup_requests: int = 32


@dataclass(frozen=True)
class SimConfig:
    switch_overhead: float = 0.0  # seconds charged when the running job changes
    schedule_overhead: float = 0.0  # seconds charged per scheduler call
    num_kv_blocks: int = 0  # KV pool of the simulated worker; 0 = unlimited
    block_size: int = 16  # tokens per KV block
    max_unit_ms: float = MAX_UNIT_MS["cuda"]  # the simulated engine's unit bound (0 = none)
    decode: bool = False  # decode on the simulated worker (colocated); False: prefill only
    decode_batch: int = 64  # most sequences in one decode step
    trace: bool = False  # keep the scheduler's decision log in the result
