"""Attention backends behind one small interface (`AttentionBackend`), chosen by name.

Owns the attention kernels over packed prefill rows and paged KV. Must not know about the
scheduler or the engine; it sees only q/k/v, the KV pool and per-call metadata.
"""

from __future__ import annotations

from flowprefill.attention.base import AttentionBackend, DecodeMeta, PrefillMeta, Segment
from flowprefill.attention.torch_backend import TorchBackend


def make_backend(name: str) -> AttentionBackend:
    """`torch` (SDPA; CPU and CUDA) or `flashinfer` (CUDA; needs the `gpu` extra)."""
    if name == "torch":
        return TorchBackend()
    if name == "flashinfer":
        from flowprefill.attention.flashinfer_backend import FlashInferBackend

        return FlashInferBackend()
    raise ValueError(f"unknown attention backend {name!r} (torch | flashinfer)")


__all__ = ["AttentionBackend", "DecodeMeta", "PrefillMeta", "Segment", "TorchBackend",
           "make_backend"]
