"""The sampler draws from exactly the distribution it is given (greedy, temperature, top-p)."""

import torch

from flowprefill.core import SamplingParams
from flowprefill.executor.sampling import make_generator, sample


def _draws(logits: torch.Tensor, params: SamplingParams, n: int) -> torch.Tensor:
    gen = make_generator(SamplingParams(seed=7))
    return torch.tensor([sample(logits[None], [params], [gen])[0] for _ in range(n)])


def test_frequencies_match_the_softmax_and_zero_mass_is_never_drawn():
    probs = torch.tensor([0.5, 0.0, 0.3, 0.0, 0.2])
    logits = probs.clamp_min(1e-30).log().to(torch.bfloat16)
    n = 4000
    counts = torch.bincount(_draws(logits, SamplingParams(temperature=1.0), n), minlength=5)
    assert counts[1] == 0 and counts[3] == 0
    freq = counts.float() / n
    # 4000 draws: a standard error of <= 0.008 per token; 0.04 is five of them
    assert torch.allclose(freq, probs, atol=0.04), freq


def test_top_p_keeps_the_smallest_head_reaching_the_mass():
    logits = torch.tensor([0.4, 0.35, 0.15, 0.1]).log()
    drawn = set(_draws(logits, SamplingParams(temperature=1.0, top_p=0.7), 500).tolist())
    assert drawn == {0, 1}  # 0.4 + 0.35 >= 0.7: tokens 2 and 3 are cut


def test_greedy_rows_take_the_argmax_beside_sampled_rows():
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, 0.0, 0.0]], dtype=torch.bfloat16)
    greedy = SamplingParams(temperature=0.0)
    hot = SamplingParams(temperature=1e-3, seed=1)  # sampled, but all mass on the max
    assert sample(logits, [greedy, hot], [None, make_generator(hot)]) == [1, 0]


def test_a_seed_gives_the_same_tokens_whatever_the_batch():
    logits = torch.randn(3, 1000)
    p, others = SamplingParams(temperature=1.0, seed=3), SamplingParams(temperature=1.0)
    g = make_generator(p)
    alone = [sample(logits[1:2], [p], [g])[0] for _ in range(5)]
    g = make_generator(p)
    mixed = [sample(logits, [others, p, others], [None, g, None])[1] for _ in range(5)]
    assert alone == mixed and len(set(alone)) > 1
