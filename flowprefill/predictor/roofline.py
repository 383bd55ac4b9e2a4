"""Analytic roofline cost model from a `ModelConfig` and a `HardwareConfig`.

Each kernel costs max(FLOPs / (peak x efficiency(tokens)), bytes / bandwidth); an operator
block sums its kernels and pays a fixed launch overhead. What makes chunked prefill cost more
than one forward is all here and nowhere else: the efficiency curve falls for small token
counts, weights are re-read by every forward (memory-bound when few tokens), every chunk pays
the per-operator overheads again, and attention re-reads the prefix's KV. Attention's FLOPs
grow with new x (context + new/2): the quadratic term. Must not import torch.
"""

from __future__ import annotations

from flowprefill.config import HardwareConfig, ModelConfig
from flowprefill.predictor.base import Predictor
from flowprefill.predictor.cost import BatchShape


class RooflinePredictor(Predictor):
    def __init__(self, model: ModelConfig, hardware: HardwareConfig) -> None:
        super().__init__(model.num_layers)
        self.model = model
        self.hw = hardware
        h, dh = model.hidden_size, model.dim_head
        self._q = model.num_heads * dh  # query/output width
        self._kv = model.num_kv_heads * dh  # width of K (and of V)
        self._attn_params = h * (self._q + 2 * self._kv) + self._q * h  # QKV + O projections
        self._mlp_params = 3 * h * model.intermediate_size  # gate, up, down

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
            attn_flops = 4 * m.num_heads * m.dim_head * pairs
            kv_bytes = sum(c + n for n, c in shape) * 2 * self._kv * b
            t = self._kernel(proj_flops, proj_bytes, tokens)
            t += self._kernel(attn_flops, kv_bytes, tokens)
        elif kind == "mlp":
            flops = 2 * tokens * self._mlp_params
            nbytes = (self._mlp_params + tokens * (3 * h + 2 * m.intermediate_size)) * b
            t = self._kernel(flops, nbytes, tokens)
        elif kind == "final":  # norm over all positions, lm_head over `logits` of them
            t = 2 * tokens * h * b / self.hw.mem_bandwidth
            if logits:
                t += self._kernel(2 * logits * h * m.vocab_size, m.vocab_size * h * b, logits)
        else:
            raise ValueError(f"unknown operator kind {kind!r}")
        return t + self.hw.op_overhead
