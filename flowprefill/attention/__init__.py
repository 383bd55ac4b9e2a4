"""Attention backends behind one small interface (`AttentionBackend`), chosen by name.

Owns the attention kernels over packed prefill rows and paged KV. Must not know about the
scheduler or the engine; it sees only q/k/v, the KV pool and per-call metadata.
"""

from __future__ import annotations

import logging

from flowprefill.attention.base import AttentionBackend, DecodeMeta, PrefillMeta, Segment
from flowprefill.attention.cpu_kernel import load as load_cpu_kernel
from flowprefill.attention.torch_backend import TorchBackend

log = logging.getLogger(__name__)


def make_backend(name: str, device: str = "cpu", cpu_kernel: bool = True) -> AttentionBackend:
    """`torch` (SDPA; CPU and CUDA) or `flashinfer` (CUDA; needs the `gpu` extra). On the CPU
    the torch backend takes the compiled decode kernel (`attention.cpu_kernel`) unless
    `cpu_kernel` is False or it cannot be built."""
    if name == "torch":
        kernel = load_cpu_kernel() if device == "cpu" and cpu_kernel else None
        if kernel is not None:
            log.info("decode attention: the compiled CPU kernel %s", kernel.path)
        elif device == "cpu" and not cpu_kernel:
            log.info("decode attention: PyTorch ops (engine.cpu_kernel=false)")
        return TorchBackend(kernel)
    if name == "flashinfer":
        from flowprefill.attention.flashinfer_backend import FlashInferBackend

        return FlashInferBackend()
    raise ValueError(f"unknown attention backend {name!r} (torch | flashinfer)")


__all__ = ["AttentionBackend", "DecodeMeta", "PrefillMeta", "Segment", "TorchBackend",
           "make_backend"]
