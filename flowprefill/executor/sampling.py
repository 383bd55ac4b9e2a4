"""Turning last-position logits into tokens: greedy, temperature, top-p, per-request seeds.

Each request may own a `torch.Generator` (seeded from its `seed`), so its samples do not
depend on which other requests share the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from flowprefill.core import SamplingParams

# Temperatures this small are greedy: dividing logits by them overflows to inf (and NaN
# probabilities), and the distribution is one-hot anyway.
GREEDY_BELOW = 1e-5


def make_generator(params: SamplingParams, device: torch.device | str = "cpu"
                   ) -> torch.Generator | None:
    """A generator seeded from `params.seed` (None: torch's global RNG is used)."""
    if params.seed is None:
        return None
    return torch.Generator(device=device).manual_seed(params.seed)


def _top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero the tail outside the smallest set of tokens whose mass reaches top_p: [V] -> [V]."""
    sorted_p, idx = probs.sort(descending=True)
    drop = sorted_p.cumsum(0) - sorted_p > top_p  # keeps at least the top token
    sorted_p = sorted_p.masked_fill(drop, 0.0)
    return torch.zeros_like(probs).scatter_(0, idx, sorted_p)


def _draw(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """One token from probabilities [V] by inverting their CDF at a uniform draw: exact, and on
    the CPU ~20x cheaper than `torch.multinomial` (43 vs 786 us over SmolLM2's 49,152 tokens).
    A zero-probability token is never drawn (its CDF step is empty)."""
    cdf = probs.cumsum(0)
    u = torch.rand(1, generator=generator, device=probs.device, dtype=cdf.dtype) * cdf[-1]
    return min(int(torch.searchsorted(cdf, u, right=True).item()), probs.shape[0] - 1)


def sample(logits: torch.Tensor, params: Sequence[SamplingParams],
           generators: Sequence[torch.Generator | None]) -> list[int]:
    """logits [B, V] -> one token id per row."""
    out = []
    greedy = None
    for b, p in enumerate(params):
        if p.temperature < GREEDY_BELOW:
            if greedy is None:  # fp32 first: a bf16 argmax on the CPU is ~5x slower
                greedy = logits.float().argmax(dim=-1).tolist()
            out.append(greedy[b])
            continue
        probs = torch.softmax(logits[b].float() / p.temperature, dim=-1)  # [V]
        if p.top_p < 1.0:
            probs = _top_p_filter(probs, p.top_p)
        out.append(_draw(probs, generators[b]))
    return out
