"""The parameter tensors of a decoder, and their seeded random initialization.

Weights are plain tensors in dataclasses (no nn.Module): operators take them as arguments,
which is what lets one compiled graph serve every layer. QKV and gate/up are stored fused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from flowprefill.config import ModelConfig

INIT_STD = 0.02


@dataclass
class LayerWeights:
    input_norm: torch.Tensor  # [H]
    qkv_w: torch.Tensor  # [(nh + 2 kvh) hd, H]
    qkv_b: torch.Tensor | None  # [(nh + 2 kvh) hd], Qwen2 only
    o_w: torch.Tensor  # [H, nh hd]
    post_norm: torch.Tensor  # [H]
    gate_up_w: torch.Tensor  # [2 I, H] (gate rows first, then up)
    down_w: torch.Tensor  # [H, I]


@dataclass
class ModelWeights:
    embed: torch.Tensor  # [V, H]
    layers: list[LayerWeights]
    norm: torch.Tensor  # [H]
    lm_head: torch.Tensor  # [V, H]; the same tensor as `embed` when tied

    def to(self, device: str | torch.device, dtype: torch.dtype) -> ModelWeights:
        def cv(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype)

        embed = cv(self.embed)
        head = embed if self.lm_head is self.embed else cv(self.lm_head)
        layers = [LayerWeights(*(cv(getattr(lw, f)) for f in LayerWeights.__dataclass_fields__))
                  for lw in self.layers]
        return ModelWeights(embed, layers, cv(self.norm), head)


# projection weights `prepacked` reorders for oneDNN (the norms, biases and embedding stay)
PACKED = ("qkv_w", "o_w", "gate_up_w", "down_w")
PACK_ROWS = 16  # the row count oneDNN picks its weight layout for (any count runs)


def prepacked(w: ModelWeights) -> ModelWeights:
    """`w` with every projection weight reordered once into oneDNN's blocked layout, for the
    CPU: measured here (2 threads) a bf16 [M, 576] x [576, 3072] projection ran 2-3x faster
    at M = 1..16 and 1.4x at M = 256, fp32 2-3x throughout, with the same results. A tied
    head gets its own packed copy (the embedding lookup needs the plain table). `dense`
    reads a packed weight back. Returns `w` unchanged where oneDNN cannot pack its dtype."""
    if w.embed.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return w

    def pack(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else torch.ops.mkldnn._reorder_linear_weight(t, PACK_ROWS)

    try:
        pack(w.layers[0].o_w[:1])
    except RuntimeError:  # e.g. fp16 on a CPU without it
        return w
    layers = [dataclasses.replace(lw, **{f: pack(getattr(lw, f)) for f in PACKED})
              for lw in w.layers]
    return ModelWeights(w.embed, layers, w.norm, pack(w.lm_head))


def dense(t: torch.Tensor | None) -> torch.Tensor | None:
    """A weight as a plain tensor (a `prepacked` one read back)."""
    return t.to_dense() if t is not None and t.is_mkldnn else t


def qkv_rows(cfg: ModelConfig) -> int:
    return (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.dim_head


def random_weights(cfg: ModelConfig, dtype: torch.dtype = torch.float32,
                   device: str | torch.device = "cpu", on_device: bool = False,
                   layer_fn: Callable[[LayerWeights], LayerWeights] | None = None
                   ) -> ModelWeights:
    """Normal(0, 0.02) matrices and biases, unit norms; a pure function of `cfg.seed`.

    Tensors are filled in place from one generator in a fixed order (fast: no nn.Linear
    Kaiming init, no per-module overhead) and each is converted to the target device and dtype
    at once, so the fp32 copy of the whole model never exists. The generator is the CPU's,
    so the weights are the same on every device; `on_device` draws them on the target device
    instead (a 7B model in seconds on a GPU; other values than the CPU's, still seeded).
    `layer_fn` maps each layer as drawn (fp32, where drawn) before it is converted, e.g. to
    a tensor-parallel shard: the values are the same as slicing the converted full model.
    """
    where = torch.device(device) if on_device else torch.device("cpu")
    g = torch.Generator(device=where).manual_seed(cfg.seed)
    h, i, hd = cfg.hidden_size, cfg.intermediate_size, cfg.dim_head

    def normal(*shape: int, convert: bool = True) -> torch.Tensor:
        t = torch.empty(*shape, device=where).normal_(0.0, INIT_STD, generator=g)
        return t.to(device=device, dtype=dtype) if convert else t

    def ones(n: int) -> torch.Tensor:
        return torch.ones(n, device=device, dtype=dtype)

    def cv(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(device=device, dtype=dtype)

    embed = normal(cfg.vocab_size, h)
    layers = []
    direct = layer_fn is None  # convert each tensor as drawn; else after layer_fn
    for _ in range(cfg.num_layers):
        lw = LayerWeights(
            input_norm=ones(h),
            qkv_w=normal(qkv_rows(cfg), h, convert=direct),
            qkv_b=normal(qkv_rows(cfg), convert=direct) if cfg.attention_bias else None,
            o_w=normal(h, cfg.num_heads * hd, convert=direct),
            post_norm=ones(h),
            gate_up_w=normal(2 * i, h, convert=direct),
            down_w=normal(h, i, convert=direct),
        )
        if not direct:
            lw = LayerWeights(*(cv(getattr(layer_fn(lw), f))
                                for f in LayerWeights.__dataclass_fields__))
        layers.append(lw)
    head = embed if cfg.tie_word_embeddings else normal(cfg.vocab_size, h)
    return ModelWeights(embed, layers, ones(h), head)
