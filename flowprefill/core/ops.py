"""The operator table of one forward pass, and where a running prefill may be suspended.

Operator `k` of a forward over `L` layers: 0 = embed; `1 + 2l` = attention block of layer l;
`2 + 2l` = MLP block of layer l; `2L + 1` = final norm + lm_head on the rows that need
logits. The decoder, the executor, the predictor and the simulator all read it from here.
Standard library only.
"""

from __future__ import annotations

from enum import Enum


class OpKind(str, Enum):
    EMBED = "embed"
    ATTENTION = "attention"
    MLP = "mlp"
    FINAL = "final"  # final norm + lm_head


OP_KINDS = tuple(k.value for k in OpKind)


class Granularity(str, Enum):
    """Where a running prefill may be suspended (and where a decode step may be placed)."""

    NONE = "none"  # run to completion
    CHUNK = "chunk"  # between chunks of `chunk_size` prompt tokens
    LAYER = "layer"  # after each decoder layer
    OPERATOR = "operator"  # after any unit: an operator, or one token slice of it


def ops_per_forward(num_layers: int) -> int:
    """Operators in one forward pass: embed, (attention, MLP) per layer, final."""
    return 2 * num_layers + 2


def op_kind(k: int, num_layers: int) -> OpKind:
    """Kind of operator index k of a forward with `num_layers` layers."""
    if k == 0:
        return OpKind.EMBED
    if k == 2 * num_layers + 1:
        return OpKind.FINAL
    if not 0 < k < 2 * num_layers + 1:
        raise IndexError(f"operator {k} of a {num_layers}-layer forward")
    return OpKind.ATTENTION if k % 2 == 1 else OpKind.MLP


def op_layer(k: int, num_layers: int) -> int:
    """Decoder layer of operator k; -1 for embed and final."""
    kind = op_kind(k, num_layers)
    return -1 if kind in (OpKind.EMBED, OpKind.FINAL) else (k - 1) // 2
