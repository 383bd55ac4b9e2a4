"""The pure tensor functions a decoder layer is made of (no parameters, no state).

Each function is a candidate `torch.compile` region: weights come in as arguments, so one
compiled graph serves every layer (same shapes) without recompiling per layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from flowprefill.config import RopeScaling


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [T, H] -> [T, H]; statistics in fp32 whatever the activation dtype."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def llama3_inv_freq(inv_freq: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    """Llama 3.1's frequency scaling of inv_freq [hd/2] (fp32) -> [hd/2].

    By wavelength 2*pi/f against the pretraining context L = s.original_max_position: shorter
    than L/high_freq_factor kept, longer than L/low_freq_factor divided by `factor`, between
    blended linearly in L/wavelength (Meta's reference `apply_scaling`; transformers' `llama3`).
    """
    wavelen = 2 * math.pi / inv_freq
    low_wavelen = s.original_max_position / s.low_freq_factor
    high_wavelen = s.original_max_position / s.high_freq_factor
    smooth = (s.original_max_position / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor)
    blended = (1 - smooth) * inv_freq / s.factor + smooth * inv_freq
    out = torch.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
    return torch.where((wavelen >= high_wavelen) & (wavelen <= low_wavelen), blended, out)


def rope_tables(
    max_position: int,
    head_dim: int,
    theta: float,
    device: torch.device | str = "cpu",
    scaling: RopeScaling | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables [max_position, head_dim] (fp32), halves duplicated (rotate-half style)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if scaling is not None and scaling.rope_type == "llama3":
        inv_freq = llama3_inv_freq(inv_freq, scaling)
    elif scaling is not None and scaling.rope_type != "default":
        raise ValueError(f"rope scaling type {scaling.rope_type!r} is not supported")
    pos = torch.arange(max_position, dtype=torch.float32)
    freqs = pos[:, None] * inv_freq[None, :]  # [P, hd/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [P, hd]
    return emb.cos().to(device), emb.sin().to(device)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, hd], cos/sin [T, hd] -> [T, heads, hd]."""
    return x * cos[:, None, :] + _rotate_half(x) * sin[:, None, :]


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """x @ w^T + b; `w` may be prepacked for oneDNN (`model.weights.prepacked`, the CPU)."""
    if w.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
    return F.linear(x, w, b)


def attn_in(
    hidden: torch.Tensor,  # [T, H]
    norm_w: torch.Tensor,  # [H]
    qkv_w: torch.Tensor,  # [(nh + 2 kvh) hd, H]
    qkv_b: torch.Tensor | None,  # [(nh + 2 kvh) hd]
    cos: torch.Tensor,  # [T, hd]
    sin: torch.Tensor,  # [T, hd]
    eps: float,
    num_heads: int,
    num_kv_heads: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Norm, fused QKV projection, RoPE -> q [T, nh, hd], k [T, kvh, hd], v [T, kvh, hd]."""
    t = hidden.shape[0]
    hd = cos.shape[-1]
    qkv = linear(rms_norm(hidden, norm_w, eps), qkv_w, qkv_b)
    q, k, v = qkv.split([num_heads * hd, num_kv_heads * hd, num_kv_heads * hd], dim=-1)
    q = apply_rope(q.view(t, num_heads, hd), cos, sin)
    k = apply_rope(k.view(t, num_kv_heads, hd), cos, sin)
    return q, k.contiguous(), v.reshape(t, num_kv_heads, hd).contiguous()


def attn_out(hidden: torch.Tensor, attn: torch.Tensor, o_w: torch.Tensor) -> torch.Tensor:
    """Output projection and residual: hidden [T, H] + attn [T, nh hd] @ o_w^T -> [T, H]."""
    return hidden + linear(attn, o_w)


def mlp_block(
    hidden: torch.Tensor,  # [T, H]
    norm_w: torch.Tensor,  # [H]
    gate_up_w: torch.Tensor,  # [2 I, H]
    down_w: torch.Tensor,  # [H, I]
    eps: float,
) -> torch.Tensor:
    """Norm, fused gate/up projection, SiLU gating, down projection, residual -> [T, H]."""
    gate, up = linear(rms_norm(hidden, norm_w, eps), gate_up_w).chunk(2, dim=-1)
    return hidden + linear(F.silu(gate) * up, down_w)


def lm_head(
    hidden: torch.Tensor, norm_w: torch.Tensor, head_w: torch.Tensor, eps: float
) -> torch.Tensor:
    """Final norm and vocabulary projection of selected rows: [B, H] -> logits [B, V]."""
    return linear(rms_norm(hidden, norm_w, eps), head_w)
