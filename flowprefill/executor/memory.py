"""Will a model fit? Its weights, KV pool and working memory against what the device has,
computed from configs before anything is allocated, so a model too large is refused within
seconds with the sizes and the ways out, never killed by the kernel.

The estimate: weights (every parameter at the engine dtype, split over tensor-parallel
ranks), the KV pool as configured, the activations of the largest prefill the engine accepts
(`max_batch_tokens` rows through the MLP: its [T, 2I] gate/up output and [T, I] product,
and the hidden states around it), the RoPE tables, and a fixed allowance for the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from flowprefill.config import EngineConfig, ModelConfig
from flowprefill.model.loading import DTYPES

GiB = 1 << 30
RUNTIME_BYTES = {"cpu": 1 * GiB, "cuda": 2 * GiB}  # interpreter, libraries, CUDA context, ...


class ModelDoesNotFit(ValueError):
    """The model and its minimal working set do not fit the device (raised before loading)."""


@dataclass(frozen=True)
class MemoryPlan:
    weights: int
    kv_pool: int
    activations: int
    runtime: int
    kv_block: int  # bytes of one KV block (all layers, K and V)

    @property
    def total(self) -> int:
        return self.weights + self.kv_pool + self.activations + self.runtime


def num_params(m: ModelConfig) -> int:
    h, hd, i = m.hidden_size, m.dim_head, m.intermediate_size
    qkv = (m.num_heads + 2 * m.num_kv_heads) * hd
    layer = h * qkv + (qkv if m.attention_bias else 0) + m.num_heads * hd * h + 3 * h * i + 2 * h
    head = 0 if m.tie_word_embeddings else m.vocab_size * h
    return m.vocab_size * h + m.num_layers * layer + h + head


def plan_memory(m: ModelConfig, e: EngineConfig) -> MemoryPlan:
    """The estimate for model `m` on a resolved engine `e` (per tensor-parallel rank)."""
    b = DTYPES[e.dtype].itemsize
    kv_heads = max(1, m.num_kv_heads // e.tp)
    kv_block = m.num_layers * 2 * e.block_size * kv_heads * m.dim_head * b
    t, h, i = e.max_batch_tokens, m.hidden_size, m.intermediate_size // e.tp
    acts = t * (3 * i + 4 * h) * b + t * h * 4  # MLP temporaries, hidden states, fp32 norm
    rope = 2 * m.max_position * m.dim_head * (4 + b)
    return MemoryPlan(weights=num_params(m) * b // e.tp, kv_pool=e.num_kv_blocks * kv_block,
                      activations=acts + rope, runtime=RUNTIME_BYTES[e.device],
                      kv_block=kv_block)


def available(device: str) -> int:
    """Bytes the device can still give: free GPU memory, or the kernel's MemAvailable."""
    if device == "cuda":
        return torch.cuda.mem_get_info()[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def check_fits(m: ModelConfig, e: EngineConfig, free: int | None = None) -> MemoryPlan:
    """The plan if it fits in `free` bytes (default: what the device has now); else
    ModelDoesNotFit naming the sizes and the options."""
    plan = plan_memory(m, e)
    free = available(e.device) if free is None else free
    if plan.total <= free:
        return plan
    where = "GPU memory free" if e.device == "cuda" else "RAM available"
    sizes = (f"weights {plan.weights / GiB:.1f} GiB ({e.dtype}) + KV pool "
             f"{plan.kv_pool / GiB:.1f} GiB ({e.num_kv_blocks} blocks) + activations "
             f"{plan.activations / GiB:.1f} GiB + runtime {plan.runtime / GiB:.1f} GiB = "
             f"{plan.total / GiB:.1f} GiB, {where}: {free / GiB:.1f} GiB")
    rest = free - plan.weights - plan.activations - plan.runtime
    blocks_needed = -(-e.max_batch_tokens // e.block_size)  # one largest prefill
    options = []
    if rest >= blocks_needed * plan.kv_block:
        options.append(f"a smaller KV pool: engine.num_kv_blocks={rest // plan.kv_block}")
    if e.dtype == "float32":
        options.append("engine.dtype=bfloat16")
    if e.device == "cpu" and torch.cuda.is_available():
        options.append("engine=cuda")
    options += [f"fewer rows per prefill: engine.max_batch_tokens={e.max_batch_tokens // 2}",
                "a smaller model"]
    if e.device == "cuda":
        options.append(f"tensor parallelism over more GPUs: engine.tp={2 * e.tp}")
    raise ModelDoesNotFit(f"model {m.name} does not fit: {sizes}. Options: "
                          + "; ".join(options))
