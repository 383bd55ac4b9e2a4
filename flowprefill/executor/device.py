"""Resolving `auto` engine settings against the machine, once, when a runner is built.

Owns the facts about this machine that pick a setting (a CUDA device is present; the CPU has
native bf16; flashinfer is installed) and the rule that turns them into a concrete
`EngineConfig` (see its docstring). A new frozen config is returned; nothing is written back.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
from dataclasses import dataclass
from functools import cache

import torch

from flowprefill.attention.cpu_kernel import cpu_flags
from flowprefill.config import EngineConfig

log = logging.getLogger(__name__)
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bf16 matmul


@dataclass(frozen=True)
class Machine:
    cuda: bool
    cpu_bf16: str | None  # the CPU flag that gives native bf16, if any
    flashinfer: bool


@cache
def machine() -> Machine:
    return Machine(cuda=torch.cuda.is_available(), cpu_bf16=_cpu_bf16_flag(),
                   flashinfer=importlib.util.find_spec("flashinfer") is not None)


def _cpu_bf16_flag() -> str | None:
    """None where no flag says so (not Linux included: fp32 is the safe default)."""
    flags = cpu_flags()
    return next((f for f in BF16_CPU_FLAGS if f in flags), None)


# GPU name fragments (torch.cuda.get_device_name) -> conf/hardware preset; A800 is A100's
# compute and memory with less NVLink
GPU_PRESETS = (("H200", "h200"), ("H100", "h100"), ("A100", "a800"), ("A800", "a800"))


def hardware_preset(engine: EngineConfig, gpu_name: str | None = None) -> str:
    """The conf/hardware preset that prices a resolved engine: its GPU's, or the CPU's at
    the engine's dtype."""
    if engine.device == "cuda":
        name = gpu_name or torch.cuda.get_device_name()
        preset = next((p for key, p in GPU_PRESETS if key in name.upper()), None)
        if preset is None:
            raise ValueError(f"hardware=auto: no preset for the GPU {name!r}; name one "
                             "(hardware=h100, h200, a800) or add conf/hardware/<name>.yaml")
        return preset
    return "cpu_bf16" if engine.dtype == "bfloat16" else "cpu"


def cpu_threads(tp: int = 1, processes: int = 1) -> int:
    """`engine.threads=0` on the CPU: the cores this process may use, split over the
    tensor-parallel ranks and over the worker `processes` sharing the machine (a `deploy=pd`
    launch), one OpenMP pool each. On a 2-core machine under load (SmolLM2, 4 x 256-token
    prompts/s through the server) two threads gave a mean TTFT of 0.71 s where one, leaving a
    core to the server's event loop, gave 1.76 s; alone, 266 vs 307 ms. More pool threads
    than cores make libgomp sleep at every barrier (see executor.runner.make_runner)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    return max(1, cores // (tp * processes))


def resolve(cfg: EngineConfig, m: Machine | None = None) -> EngineConfig:
    """`cfg` with every `auto` setting decided for machine `m` (default: this one)."""
    m = m or machine()
    device = cfg.device if cfg.device != "auto" else ("cuda" if m.cuda else "cpu")
    if device == "cuda" and not m.cuda:
        raise ValueError("engine.device=cuda, but torch sees no CUDA device "
                         "(use engine.device=cpu or auto)")
    why = []
    dtype = cfg.dtype
    if dtype == "auto":
        if device == "cuda":
            dtype = "bfloat16"
        elif m.cpu_bf16:
            dtype, why = "bfloat16", [f"the CPU has native bf16: {m.cpu_bf16}"]
        else:
            dtype, why = "float32", ["the CPU has no native bf16"]
    attention = cfg.attention
    if attention == "auto":
        attention = "flashinfer" if device == "cuda" and m.flashinfer else "torch"
    elif attention == "flashinfer" and device != "cuda":
        raise ValueError("engine.attention=flashinfer needs engine.device=cuda")
    compile_ = (device == "cuda") if cfg.compile is None else cfg.compile
    threads = cfg.threads
    if device == "cpu" and threads == 0:
        threads = cpu_threads(cfg.tp)
    out = dataclasses.replace(cfg, device=device, dtype=dtype, attention=attention,
                              compile=compile_, threads=threads)
    if cfg != out:
        log.info("engine: device %s, dtype %s%s, attention %s, compile %s, units <= %.1f ms%s",
                 device, dtype, f" ({'; '.join(why)})" if why else "", attention, compile_,
                 out.max_unit_s * 1e3, f", {threads} threads" if device == "cpu" else "")
    return out
