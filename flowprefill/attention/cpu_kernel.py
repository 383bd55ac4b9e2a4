"""The CPU decode-attention kernel (`cpu_paged.cpp`): one query row per sequence over its
paged K/V, read in place from the pool.

PyTorch ops need three passes over a sequence's context for this (gather the slots, copy
them to fp32 heads-first, two batched matmuls), which made decode attention, and the rows of
decoding sequences riding a prefill job, the part of a step that grows with the batch. The
kernel reads each cached row once and converts bf16 as it reads.

Built once per machine and source with the system C++ compiler (`$CXX`, else g++ or c++;
`-march=native`, so the build is keyed by this CPU's flags too) into the user cache
(`$XDG_CACHE_HOME` or ~/.cache, under flowprefill/kernels), and loaded with ctypes: a plain
C ABI, so no PyTorch headers, no build tool and the same file for every torch version. Where
it cannot be built, `load()` answers None with the reason logged, and the torch backend
attends with PyTorch ops (the same results up to rounding).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_paged.cpp")
# compiled with -ffast-math (vectorized exp and reductions: 2x here), linked without it: a
# shared object linked with it starts by switching the process to flush-to-zero arithmetic
COMPILE = ("-O3", "-march=native", "-ffast-math", "-fopenmp", "-std=c++17", "-fPIC")
LINK = ("-shared", "-fopenmp")
ABI = 2  # fp_paged_abi() of a build this module can call
MAX_HEAD_DIM = 256
LANES = 16  # head_dim must be a multiple (the kernel's dot-product width)
_FNS = {torch.bfloat16: "fp_paged_bf16", torch.float32: "fp_paged_f32"}


class PagedKernel:
    """`paged(q, k_cache, v_cache, ctx_slots, lens)`: q [B, nh, hd] over each row's first
    lens[b] slots of ctx_slots [B, Lmax] in one layer's K/V [S, kvh, hd] -> [B, nh, hd]."""

    def __init__(self, lib: ctypes.CDLL, path: Path) -> None:
        self.path = path
        self._fns = {}
        for dtype, name in _FNS.items():
            fn = getattr(lib, name)
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 6 + [ctypes.c_float,
                                                                          ctypes.c_int]
            self._fns[dtype] = fn

    @staticmethod
    def supports(q: torch.Tensor, k_cache: torch.Tensor) -> bool:
        hd = q.shape[-1]
        return (q.device.type == "cpu" and q.dtype in _FNS and k_cache.dtype == q.dtype
                and hd % LANES == 0 and hd <= MAX_HEAD_DIM)

    def __call__(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 ctx_slots: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        b, nh, hd = q.shape
        kvh = k_cache.shape[1]
        if not (k_cache.is_contiguous() and v_cache.is_contiguous()
                and ctx_slots.dtype == lens.dtype == torch.int64):
            raise ValueError("paged kernel: K/V must be contiguous [S, kvh, hd], slots int64")
        q, slots, lens = q.contiguous(), ctx_slots.contiguous(), lens.contiguous()
        if lens.shape != (b,) or slots.shape[0] != b or v_cache.shape != k_cache.shape:
            raise ValueError(f"paged kernel: q {tuple(q.shape)}, slots {tuple(slots.shape)}, "
                             f"lens {tuple(lens.shape)}, K {tuple(k_cache.shape)}, "
                             f"V {tuple(v_cache.shape)} do not agree")
        out = torch.empty_like(q)
        bad = self._fns[q.dtype](q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(),
                                 slots.data_ptr(), lens.data_ptr(), out.data_ptr(), b,
                                 slots.shape[1], k_cache.shape[0], nh, kvh, hd, hd ** -0.5,
                                 torch.get_num_threads())
        if bad:  # checked before anything is read: an index error, not a crash
            raise IndexError(f"paged kernel: a length outside 1..{slots.shape[1]} or a slot "
                             f"outside the pool's {k_cache.shape[0]}")
        return out


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "flowprefill" / "kernels"


@functools.cache
def cpu_flags() -> tuple[str, ...]:
    """This CPU's feature flags from /proc/cpuinfo (`flags` on x86, `Features` on ARM); ()
    where there is none (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    return next((tuple(line.split(":", 1)[1].split()) for line in text.splitlines()
                 if line.startswith(("flags", "Features"))), ())


@functools.cache
def load() -> PagedKernel | None:
    """The kernel, built on first use (about a second here) and cached; None where it cannot be
    built or loaded (the reason is logged once)."""
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        log.warning("CPU decode kernel: no C++ compiler (g++/c++, or $CXX); decode attention "
                    "uses PyTorch ops")
        return None
    src = SOURCE.read_bytes()
    machine = " ".join((os.uname().machine, *cpu_flags()))
    key = hashlib.sha256(b"\0".join([src, " ".join(COMPILE + LINK).encode(), cxx.encode(),
                                     machine.encode()])).hexdigest()[:16]
    path = cache_dir() / f"cpu_paged-{key}.so"
    try:
        if not path.exists():
            _build(cxx, path)
        lib = ctypes.CDLL(str(path))
        if lib.fp_paged_abi() != ABI:
            raise OSError(f"{path} has ABI {lib.fp_paged_abi()}, expected {ABI}")
        kernel = PagedKernel(lib, path)
    except (OSError, subprocess.SubprocessError, AttributeError) as e:
        log.warning("CPU decode kernel unavailable (%s); decode attention uses PyTorch ops", e)
        return None
    return kernel


def _build(cxx: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # built in a temporary directory, then renamed: processes building at once each see a
    # whole file or none
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        obj, so = os.path.join(tmp, "k.o"), os.path.join(tmp, "k.so")
        for cmd in ([cxx, *COMPILE, "-c", str(SOURCE), "-o", obj], [cxx, *LINK, obj, "-o", so]):
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if done.returncode:
                raise subprocess.SubprocessError(f"{cxx} failed: {done.stderr.strip()[-800:]}")
        os.replace(so, path)
    log.info("built the CPU decode kernel in %.1f s: %s", time.perf_counter() - t0, path)
