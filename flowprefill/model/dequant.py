"""Dequantizing GGUF tensor data (ggml block formats) to float32 torch tensors.

Formats, as ggml defines them (ggml-common.h): every block covers 32 consecutive elements of a
row; `d` and `m` are IEEE float16.
  Q8_0: d, int8 q[32]        x[i] = d * q[i]
  Q4_0: d, uint8 qs[16]      x[i] = d * ((qs[i] & 15) - 8),  x[i+16] = d * ((qs[i] >> 4) - 8)
  Q4_1: d, m, uint8 qs[16]   x[i] = d * (qs[i] & 15) + m,    x[i+16] = d * (qs[i] >> 4) + m
F32, F16 and BF16 are plain little-endian arrays. Must not know tensor names or models.
"""

from __future__ import annotations

import math
from types import MappingProxyType

import numpy as np
import torch

# ggml type id -> (name, elements per block, bytes per block)
GGML_TYPES = MappingProxyType({
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    8: ("Q8_0", 32, 34),
    30: ("BF16", 1, 2),
})


def _f16(col: np.ndarray) -> np.ndarray:
    """[nb, 2] uint8 -> [nb, 1] float32 (the little-endian float16 scale of each block)."""
    return np.ascontiguousarray(col).view("<f2").astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """[nb, 16] uint8 -> [nb, 32] float32: low nibbles are elements 0..15, high ones 16..31."""
    return np.concatenate([qs & 15, qs >> 4], axis=1).astype(np.float32)


def dequantize(raw: np.ndarray, ggml_type: int, shape: tuple[int, ...],
               name: str = "tensor") -> torch.Tensor:
    """`raw` (the tensor's bytes, any numpy view of them) as a float32 tensor of `shape`
    (row-major, last dimension innermost: ggml's ne[0]).

    numpy, not torch: these are single-pass elementwise maps, and numpy's single thread does
    not contend with other processes the way torch's intra-op pool does on a busy CPU.
    """
    if ggml_type not in GGML_TYPES:
        names = ", ".join(n for n, _, _ in GGML_TYPES.values())
        raise ValueError(f"{name}: GGUF tensor type {ggml_type} is not supported ({names})")
    kind, block, nbytes = GGML_TYPES[ggml_type]
    n = math.prod(shape)
    if n % block:
        raise ValueError(f"{name}: {n} elements are not whole {kind} blocks of {block}")
    buf = np.ascontiguousarray(raw).view(np.uint8).reshape(-1)
    if buf.size != n // block * nbytes:
        raise ValueError(f"{name}: {buf.size} bytes, expected {n // block * nbytes} for "
                         f"{kind} {list(shape)}")
    if kind == "F32":
        out = buf.view("<f4").copy()  # off the memory map
    elif kind == "F16":
        out = buf.view("<f2").astype(np.float32)
    elif kind == "BF16":  # the high half of a float32
        out = (buf.view("<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        blocks = buf.reshape(-1, nbytes)  # [nb, bytes per block]
        d = _f16(blocks[:, :2])
        if kind == "Q8_0":
            out = np.ascontiguousarray(blocks[:, 2:]).view(np.int8).astype(np.float32) * d
        elif kind == "Q4_0":
            out = (_nibbles(blocks[:, 2:]) - 8) * d
        else:  # Q4_1; multiply and add are separate roundings, as ggml's reference does
            out = _nibbles(blocks[:, 4:]) * d + _f16(blocks[:, 2:4])
    return torch.from_numpy(out.reshape(shape))
