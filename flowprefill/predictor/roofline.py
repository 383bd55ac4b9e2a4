"""Analytic roofline cost model from a `ModelConfig` and a `HardwareConfig`.

Each kernel costs max(FLOPs / (peak x efficiency(tokens)), bytes / bandwidth); an operator
block sums its kernels and pays a fixed launch overhead. What makes chunked prefill cost more
than one forward is all here and nowhere else: the efficiency curve falls for small token
counts, weights are re-read by every forward (memory-bound when few tokens), every chunk pays
the per-operator overheads again, and attention re-reads the prefix's KV. Attention's FLOPs
grow with new x (context + new/2): the quadratic term.

With `tp` tensor-parallel ranks (`model.shard`'s split) a forward costs what one rank does:
its 1/tp of the attention and MLP weights and FLOPs (heads and the MLP width are split; the
activations a block reads and writes whole are not), plus one all-reduce of the block's
[T, H] output after every attention and MLP block, a ring over the ranks:
`link_latency + 2 (tp - 1) / tp x T H bytes / link_bandwidth`. Embedding and lm_head are
replicated (lm_head runs on rank 0 alone), so they cost what they cost at tp=1. Must not
import torch.
"""

from __future__ import annotations

from flowprefill.config import HardwareConfig, ModelConfig, check_tp
from flowprefill.predictor.base import Predictor
from flowprefill.predictor.cost import BatchShape


class RooflinePredictor(Predictor):
    def __init__(self, model: ModelConfig, hardware: HardwareConfig, tp: int = 1) -> None:
        check_tp(model, tp)
        super().__init__(model.num_layers)
        self.model = model
        self.hw = hardware
        self.tp = tp
        h, dh = model.hidden_size, model.dim_head
        # one rank's share (tp divides the heads and the MLP width exactly)
        self._heads = model.num_heads // tp
        self._q = model.num_heads * dh // tp  # query/output width
        self._kv = model.num_kv_heads * dh // tp  # width of K (and of V)
        self._inter = model.intermediate_size // tp
        self._attn_params = h * (self._q + 2 * self._kv) + self._q * h  # QKV + O projections
        self._mlp_params = 3 * h * self._inter  # gate, up, down

    def efficiency(self, tokens: int) -> float:
        """Fraction of peak a matmul over `tokens` rows reaches: rises to max_efficiency."""
        half = self.hw.half_efficiency_tokens
        return self.hw.max_efficiency * tokens / (tokens + half)

    def _kernel(self, flops: float, nbytes: float, tokens: int) -> float:
        compute = flops / (self.hw.peak_flops * self.efficiency(max(tokens, 1)))
        return max(compute, nbytes / self.hw.mem_bandwidth)

    def op_cost(self, kind: str, shape: BatchShape, logits: int) -> float:
        m, b = self.model, self.hw.bytes_per_param
        h = m.hidden_size
        tokens = sum(n for n, _ in shape)
        if kind == "embed":  # gather rows: memory only
            t = 2 * tokens * h * b / self.hw.mem_bandwidth
        elif kind == "attention":
            proj_flops = 2 * tokens * self._attn_params
            proj_bytes = (self._attn_params + tokens * (3 * h + self._q + 2 * self._kv)) * b
            # causal attention: query i of a sequence sees context + i + 1 keys; QK^T and PV
            pairs = sum(n * c + n * (n + 1) / 2 for n, c in shape)
            attn_flops = 4 * self._heads * m.dim_head * pairs
            kv_bytes = sum(c + n for n, c in shape) * 2 * self._kv * b
            t = self._kernel(proj_flops, proj_bytes, tokens)
            t += self._kernel(attn_flops, kv_bytes, tokens)
            if self.tp > 1:
                t += self.all_reduce(tokens * h * b)
        elif kind == "mlp":
            flops = 2 * tokens * self._mlp_params
            nbytes = (self._mlp_params + tokens * (3 * h + 2 * self._inter)) * b
            t = self._kernel(flops, nbytes, tokens)
            if self.tp > 1:
                t += self.all_reduce(tokens * h * b)
        elif kind == "final":  # norm over all positions, lm_head over `logits` of them
            t = 2 * tokens * h * b / self.hw.mem_bandwidth
            if logits:
                t += self._kernel(2 * logits * h * m.vocab_size, m.vocab_size * h * b, logits)
        else:
            raise ValueError(f"unknown operator kind {kind!r}")
        return t + self.hw.op_overhead

    def all_reduce(self, nbytes: float) -> float:
        """Seconds of one ring all-reduce of `nbytes` per rank over the `tp` ranks."""
        ring = 2 * (self.tp - 1) / self.tp * nbytes / self.hw.link_bandwidth
        return self.hw.link_latency + ring
