"""Tensor-parallel shards of a decoder (Megatron-style) and the decoder that runs one.

Rank r of `tp` holds:
- attention: the fused QKV rows of its query heads and of its KV heads (column-parallel,
  whole heads: rank r has query heads [r nh/tp, (r+1) nh/tp) and KV heads
  [r kvh/tp, (r+1) kvh/tp), which are exactly the KV heads those query heads read under
  GQA), and the matching columns of o_proj (row-parallel);
- MLP: rows [r I/tp, (r+1) I/tp) of gate and of up (column-parallel) and those columns of
  down (row-parallel);
- norms and the embedding replicated (a row gather: splitting it by vocabulary would cost
  one more all-reduce per forward to save 1/tp of one matrix);
- lm_head on rank 0 only: sampling happens there, so logits are needed nowhere else, and
  the other ranks skip the head and its weights (a tied head is the embedding, kept anyway).

Each attention block and MLP block ends in one all-reduce (sum) of its row-parallel output,
an injected callable, so compiled regions never contain the collective. The residual is
added on rank 0 only, inside its unchanged compiled region: the sum over ranks is then
`hidden + sum of the partial projections`, the tp=1 result, with no extra kernel. Every rank
holds the same hidden state after each block. A model whose head counts do not divide by
`tp` is refused (replicating KV heads would store each of them tp/kvh times over).
Must not know about processes, runners or how the all-reduce is carried out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from flowprefill.config import ModelConfig, NotShardable
from flowprefill.config import check_tp as check_shardable
from flowprefill.model import layers
from flowprefill.model.decoder import Attend, Decoder, _compile
from flowprefill.model.loading import DTYPES, checkpoint_weights, resolve_config
from flowprefill.model.weights import LayerWeights, ModelWeights, random_weights

__all__ = ["NotShardable", "ShardedDecoder", "check_shardable", "load_shard", "shard_layer"]

# all_reduce(t [T, H]) sums t over the ranks in place and returns it
AllReduce = Callable[[torch.Tensor], torch.Tensor]


def _rows(t: torch.Tensor | None, parts: list[tuple[int, int]]) -> torch.Tensor | None:
    """Rows [a, b) of each part, concatenated (a copy: the full tensor can be freed)."""
    if t is None:
        return None
    return torch.cat([t[a:b] for a, b in parts]).contiguous()


def shard_layer(lw: LayerWeights, cfg: ModelConfig, rank: int, tp: int) -> LayerWeights:
    """Rank `rank`'s part of one layer's weights (see the module docstring)."""
    hd = cfg.dim_head
    q, kv = cfg.num_heads * hd, cfg.num_kv_heads * hd  # full widths
    ql, kvl, il = q // tp, kv // tp, cfg.intermediate_size // tp  # this rank's
    qkv = [(rank * ql, (rank + 1) * ql), (q + rank * kvl, q + (rank + 1) * kvl),
           (q + kv + rank * kvl, q + kv + (rank + 1) * kvl)]
    i = cfg.intermediate_size
    gate_up = [(rank * il, (rank + 1) * il), (i + rank * il, i + (rank + 1) * il)]
    return LayerWeights(
        input_norm=lw.input_norm,
        qkv_w=_rows(lw.qkv_w, qkv),  # [(nh + 2 kvh) hd / tp, H]
        qkv_b=_rows(lw.qkv_b, qkv),
        o_w=lw.o_w[:, rank * ql:(rank + 1) * ql].contiguous(),  # [H, nh hd / tp]
        post_norm=lw.post_norm,
        gate_up_w=_rows(lw.gate_up_w, gate_up),  # [2 I / tp, H]
        down_w=lw.down_w[:, rank * il:(rank + 1) * il].contiguous(),  # [H, I / tp]
    )


def o_proj_partial(attn: torch.Tensor, o_w: torch.Tensor) -> torch.Tensor:
    """A rank's share of the output projection, no residual: [T, nh hd / tp] -> [T, H]."""
    return layers.linear(attn, o_w)


def mlp_partial(hidden: torch.Tensor, norm_w: torch.Tensor, gate_up_w: torch.Tensor,
                down_w: torch.Tensor, eps: float) -> torch.Tensor:
    """A rank's share of the MLP block, no residual: hidden [T, H] -> [T, H]."""
    gate, up = layers.linear(layers.rms_norm(hidden, norm_w, eps), gate_up_w).chunk(2, dim=-1)
    return layers.linear(F.silu(gate) * up, down_w)


class ShardedDecoder(Decoder):
    """The decoder of rank `rank` of `tp`: the same operators over its shard of the weights,
    each attention and MLP block followed by `all_reduce`. `head` returns None on ranks > 0."""

    def __init__(self, cfg: ModelConfig, weights: ModelWeights, rank: int, tp: int,
                 all_reduce: AllReduce, compile: bool = False) -> None:
        check_shardable(cfg, tp)
        super().__init__(cfg, weights, compile=compile)
        self.rank, self.tp = rank, tp
        self.num_heads = cfg.num_heads // tp
        self._kv_heads = cfg.num_kv_heads // tp
        self.all_reduce = all_reduce
        wrap = _compile if compile else (lambda f: f)
        # rank 0 adds the residual in the regions the base class compiled; the others don't
        if rank > 0:
            self._attn_out = partial(_drop_residual, wrap(o_proj_partial))
            self._mlp = wrap(mlp_partial)

    @property
    def kv_heads(self) -> int:
        return self._kv_heads

    def attention(self, layer: int, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  attend: Attend) -> torch.Tensor:
        w, c = self.weights.layers[layer], self.cfg
        q, k, v = self._attn_in(hidden, w.input_norm, w.qkv_w, w.qkv_b, cos, sin,
                                c.rms_norm_eps, self.num_heads, self._kv_heads)
        o = attend(layer, q, k, v)  # [T, nh / tp, hd]: this rank's heads
        return self.all_reduce(self._attn_out(hidden, o.reshape(hidden.shape[0], -1), w.o_w))

    def mlp(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        return self.all_reduce(super().mlp(layer, hidden))

    def head(self, hidden_last: torch.Tensor) -> torch.Tensor | None:
        return super().head(hidden_last) if self.rank == 0 else None


def _drop_residual(proj: Callable, hidden: torch.Tensor, attn: torch.Tensor,
                   o_w: torch.Tensor) -> torch.Tensor:
    return proj(attn, o_w)


def load_shard(cfg: ModelConfig, rank: int, tp: int, all_reduce: AllReduce,
               device: str | torch.device = "cpu", dtype: str = "float32",
               compile: bool = False) -> ShardedDecoder:
    """Rank `rank`'s decoder: the weights `load_model` would give, sliced layer by layer as
    they are read or drawn (one full layer at a time in host memory, never the whole model
    at the engine dtype; a checkpoint is still read whole, at its stored dtype: an HF
    directory's safetensors, or a GGUF file dequantized)."""
    cfg = resolve_config(cfg)
    check_shardable(cfg, tp)
    fn = partial(shard_layer, cfg=cfg, rank=rank, tp=tp)
    torch_dtype = DTYPES[dtype]
    if cfg.path:
        weights = checkpoint_weights(cfg, layer_fn=fn)
        if rank > 0 and weights.lm_head is not weights.embed:
            weights = dataclasses.replace(weights, lm_head=None)
        weights = weights.to(device, torch_dtype)
    else:
        weights = random_weights(cfg, torch_dtype, device, layer_fn=fn)
        if rank > 0 and weights.lm_head is not weights.embed:
            weights.lm_head = None
    return ShardedDecoder(cfg, weights, rank, tp, all_reduce, compile=compile)
