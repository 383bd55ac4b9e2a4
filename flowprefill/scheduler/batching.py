"""Forming the job that starts next from a chosen waiting request (SLO-aware batching).

Rule (ARCHITECTURE.md): a new, short (<= budget tokens), non-urgent head (time to deadline
>= alpha x its TTFT SLO) takes further waiting requests in rank order, skipping any that
would break one of: the batch stays within the token budget, their KV blocks are free, the
head's predicted completion of the whole batch keeps >= alpha x SLO of slack, and joining
pays: it lowers the predicted sum of the waiting requests' completion times. A joiner
delays each member by what it adds to the batch and saves itself and everyone waiting
behind what batching saves over running it next, alone:
    len(batch) * (t(batch + r) - t(batch)) < (t(batch) + t(r) - t(batch + r)) * (1 + behind)
On a GPU short prompts cost little more together than alone, so they batch; on a CPU a
forward's time grows with its tokens, so a batch pays only behind a long queue (SmolLM2 on
2 cores: two 256-token prompts together 226 ms vs 118 ms alone, so batching them doubled
the first one's TTFT to save ~10 ms). At most `MAX_SCAN` candidates are looked at.
alpha <= 0 turns the SLO and payoff conditions off (plain token-budget batching, as a
DistServe- or vLLM-style baseline does).
The budget is `token_bound`, or `chunk_size` under chunked granularity; there a head longer
than the chunk runs alone, chunk by chunk.
"""

from __future__ import annotations

from collections.abc import Sequence

from flowprefill.config import PolicyConfig
from flowprefill.core import Request
from flowprefill.predictor import Predictor
from flowprefill.scheduler.kv import blocks_for

MAX_SCAN = 64


def batch_budget(cfg: PolicyConfig) -> int:
    return cfg.chunk_size if cfg.granularity == "chunk" else cfg.token_bound


def form_batch(head: Request, candidates: Sequence[Request], now: float, cfg: PolicyConfig,
               predictor: Predictor, free_blocks: int | None, block_size: int) -> list[Request]:
    """The requests of the next new job: `head` first, then those the rule admits.

    `candidates`: other waiting requests in rank order. `free_blocks`: None = unlimited; the
    head's own blocks must already be known to fit.
    """
    budget = batch_budget(cfg)
    if not cfg.batching or head.prompt_len > budget:
        return [head]
    slo_aware = cfg.alpha > 0
    margin = cfg.alpha * head.slo.ttft
    if slo_aware and head.deadline - now < margin:
        return [head]  # urgent: run it alone, as fast as possible
    batch, tokens = [head], head.prompt_len
    free = None if free_blocks is None else free_blocks - blocks_for(head.prompt_len, block_size)
    t_batch = predictor.isolated_ttft(head.prompt_len) if slo_aware else 0.0
    for r in candidates[:MAX_SCAN]:
        if tokens == budget:
            break
        if r.prompt_len > budget - tokens:
            continue
        need = blocks_for(r.prompt_len, block_size)
        if free is not None and need > free:
            continue
        if slo_aware:
            shape = tuple((q.prompt_len, 0) for q in batch) + ((r.prompt_len, 0),)
            together = predictor.forward(shape).total
            if head.deadline - (now + together) < margin:
                continue
            saved = t_batch + predictor.isolated_ttft(r.prompt_len) - together
            behind = len(candidates) - len(batch)  # waiting after r joins
            if len(batch) * (together - t_batch) >= saved * (1 + behind):
                continue
            t_batch = together
        batch.append(r)
        tokens += r.prompt_len
        if free is not None:
            free -= need
    return batch
