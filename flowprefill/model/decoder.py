"""A decoder forward pass as a flat, explicit list of operators.

Operator `i` of a forward over `L` layers (the table is `core.ops`'): 0 = embed; `1 + 2l` =
attention block of layer l; `2 + 2l` = MLP block of layer l; `2L + 1` = final norm + lm_head
on each sequence's last row.
Every operator maps an activation tensor `hidden [T, H]` to the next one (the residual add is
inside each block, so there is no separate residual stream to carry), so a caller can stop
after any operator and resume later with nothing but `hidden`. The attention kernel is an
injected callable (`Attend`): this module does not know about KV blocks or backends.

With `compile=True` the dense parts of each operator (norm+QKV+RoPE, o_proj+residual, the MLP
block, the head) are separate `torch.compile` regions with a dynamic token dimension; the
attention call and the loop over operators stay in Python.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from flowprefill.config import ModelConfig
from flowprefill.core.ops import OpKind, op_kind, op_layer, ops_per_forward
from flowprefill.model import layers
from flowprefill.model.weights import ModelWeights, prepacked

# attend(layer, q [T, nh, hd], k [T, kvh, hd], v [T, kvh, hd]) -> out [T, nh, hd]; the callee
# stores k/v in its KV cache and attends over whatever context the caller's metadata says.
Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class Decoder:
    """Qwen2/2.5 (QKV bias) or Llama 3 decoder over `ModelWeights`; stateless between calls."""

    def __init__(self, cfg: ModelConfig, weights: ModelWeights, compile: bool = False) -> None:
        self.cfg = cfg
        # eager on the CPU: projections through oneDNN's prepacked weights (2-3x at decode)
        self.weights = weights if compile else prepacked(weights)
        self.device = weights.embed.device
        self.dtype = weights.embed.dtype
        cos, sin = layers.rope_tables(cfg.max_position, cfg.dim_head, cfg.rope_theta, self.device,
                                      cfg.rope_scaling)
        self._cos, self._sin = cos.to(self.dtype), sin.to(self.dtype)  # [P, hd]
        self.compiled = compile
        wrap = _compile if compile else (lambda f: f)
        self._attn_in = wrap(layers.attn_in)
        self._attn_out = wrap(layers.attn_out)
        self._mlp = wrap(layers.mlp_block)
        self._head = wrap(layers.lm_head)

    # ------------------------------------------------------------------ operator table
    @property
    def num_layers(self) -> int:
        return self.cfg.num_layers

    @property
    def num_ops(self) -> int:
        return ops_per_forward(self.cfg.num_layers)

    @property
    def kv_heads(self) -> int:
        """KV heads this decoder's attention writes (a tensor-parallel shard: its share)."""
        return self.cfg.num_kv_heads

    def op_kind(self, op: int) -> tuple[OpKind, int]:
        """(kind, layer) of operator `op` (the table is `core.ops`'); layer -1 for embed/final."""
        return op_kind(op, self.num_layers), op_layer(op, self.num_layers)

    # ------------------------------------------------------------------ operators
    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [T] -> cos, sin [T, hd]."""
        return self._cos[positions], self._sin[positions]

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """token_ids [T] -> hidden [T, H]."""
        return F.embedding(token_ids, self.weights.embed)

    def attention(self, layer: int, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  attend: Attend) -> torch.Tensor:
        """Attention block of `layer`: hidden [T, H] -> [T, H] (writes this layer's KV)."""
        w, c = self.weights.layers[layer], self.cfg
        q, k, v = self._attn_in(hidden, w.input_norm, w.qkv_w, w.qkv_b, cos, sin,
                                c.rms_norm_eps, c.num_heads, c.num_kv_heads)
        o = attend(layer, q, k, v)  # [T, nh, hd]
        return self._attn_out(hidden, o.reshape(hidden.shape[0], -1), w.o_w)

    def mlp(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """MLP block of `layer`: hidden [T, H] -> [T, H]."""
        w = self.weights.layers[layer]
        return self._mlp(hidden, w.post_norm, w.gate_up_w, w.down_w, self.cfg.rms_norm_eps)

    def head(self, hidden_last: torch.Tensor) -> torch.Tensor:
        """Final norm + lm_head on the last row of each sequence: [B, H] -> logits [B, V]."""
        w = self.weights
        return self._head(hidden_last, w.norm, w.lm_head, self.cfg.rms_norm_eps)

    def run_op(self, op: int, hidden: torch.Tensor | None, token_ids: torch.Tensor,
               cos: torch.Tensor, sin: torch.Tensor, attend: Attend) -> torch.Tensor:
        """Run operator `op` (embed..MLP) on one row range; the head is called separately."""
        kind, layer = self.op_kind(op)
        if kind is OpKind.EMBED:
            return self.embed(token_ids)
        if kind is OpKind.ATTENTION:
            return self.attention(layer, hidden, cos, sin, attend)
        if kind is OpKind.MLP:
            return self.mlp(layer, hidden)
        raise ValueError("the final operator runs on last rows only: call head()")

    # ------------------------------------------------------------------ whole forward
    def forward(self, token_ids: torch.Tensor, positions: torch.Tensor,
                last_rows: torch.Tensor | None, attend: Attend) -> torch.Tensor:
        """The uninterrupted forward: token_ids/positions [T] -> logits [B, V] at `last_rows`.

        `last_rows` None returns the final hidden state [T, H] instead (no head).
        """
        cos, sin = self.rope(positions)
        hidden = None
        for op in range(self.num_ops - 1):
            hidden = self.run_op(op, hidden, token_ids, cos, sin, attend)
        return hidden if last_rows is None else self.head(hidden[last_rows])


def _compile(fn: Callable) -> Callable:
    """One compile region per dense function; dynamic in the token dimension."""
    return torch.compile(fn, dynamic=True, fullgraph=True)
