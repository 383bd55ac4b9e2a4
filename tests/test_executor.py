"""The resumable prefill job: op-by-op == monolithic, interleaving, chunking, slicing, abort."""

from __future__ import annotations

import random

import pytest
import torch

from flowprefill.config import EngineConfig, ModelConfig
from flowprefill.core import (
    SLO,
    ForwardPlan,
    Granularity,
    Job,
    JobPlan,
    Request,
    even_bounds,
    ops_per_forward,
)
from flowprefill.executor import ModelRunner
from tests.cpu_fp32 import CPU_FP32

CFG = ModelConfig(name="t", vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2,
                  num_heads=4, num_kv_heads=2, max_position=4096, tie_word_embeddings=False,
                  eos_token_id=None, seed=3)
ENG = EngineConfig(**CPU_FP32, num_kv_blocks=256)
NUM_OPS = ops_per_forward(CFG.num_layers)


@pytest.fixture(scope="module")
def model():
    return ModelRunner(CFG, ENG).model


def runner(model) -> ModelRunner:
    """A fresh pool and block manager around the shared (read-only) model."""
    return ModelRunner(CFG, ENG, model=model)


def prompts(lengths, seed=0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, CFG.vocab_size, (n,), generator=g).tolist() for n in lengths]


def make_job(job_id: int, ps: list[list[int]], chunk_size: int | None = None, tag: str = "",
             slices: int = 1) -> Job:
    """A job over prompts `ps`: chunked, or one pass whose attention and MLP operators are
    `slices` even token slices each."""
    reqs = tuple(Request(f"{tag}j{job_id}r{i}", 0.0, len(p), SLO(1.0), prompt_token_ids=tuple(p))
                 for i, p in enumerate(ps))
    plan = JobPlan.unsliced([len(p) for p in ps], CFG.num_layers, chunk_size)
    if slices > 1:
        shape = tuple((len(p), 0) for p in ps)
        rows = even_bounds(sum(len(p) for p in ps), slices)
        plan = JobPlan((ForwardPlan(shape, len(ps), CFG.num_layers, rows, rows),))
    return Job(job_id, reqs, plan, chunk_size if len(plan.passes) > 1 else None)


def kv_of(rn: ModelRunner, seq_id: str) -> list[torch.Tensor]:
    return [t for layer in range(CFG.num_layers) for t in rn.kv(seq_id, layer)]


def test_op_by_op_equals_monolithic_bit_for_bit(model):
    rn = runner(model)
    ps = prompts([45, 3, 70])
    mono = rn.prefill_job(make_job(0, ps))
    ref = mono.run_monolithic()
    job = rn.prefill_job(make_job(1, ps))
    steps = 0
    while not job.finished:
        assert job.done == steps
        job.step()
        steps += 1
    assert steps == NUM_OPS and job.done == NUM_OPS
    assert torch.equal(job.logits, ref)
    for a, b in zip(mono.seq_ids, job.seq_ids, strict=True):
        for ka, kb in zip(kv_of(rn, a), kv_of(rn, b), strict=True):
            assert torch.equal(ka, kb)


def test_interleaved_jobs_match_running_alone(model):
    specs = [  # (prompts, chunk_size, token slices per operator)
        (prompts([60], seed=1), None, 1),
        (prompts([17, 33], seed=2), None, 4),
        (prompts([90], seed=3), 32, 1),
    ]
    alone = runner(model)
    ref = []
    for i, (ps, chunk, n) in enumerate(specs):
        j = alone.prefill_job(make_job(i, ps, chunk, slices=n))
        ref.append((j.run().clone(), [kv_of(alone, s) for s in j.seq_ids]))
    rn = runner(model)
    rng = random.Random(1234)
    jobs = [rn.prefill_job(make_job(i, ps, chunk, tag="x", slices=n))
            for i, (ps, chunk, n) in enumerate(specs)]
    switches = 0
    while not all(j.finished for j in jobs):
        j = rng.choice([j for j in jobs if not j.finished])
        for _ in range(rng.randint(1, 4)):
            if not j.finished:
                j.step()
        switches += 1
    assert switches > 10
    for j, (logits, kvs) in zip(jobs, ref, strict=True):
        assert torch.equal(j.logits, logits)
        for s, kv in zip(j.seq_ids, kvs, strict=True):
            assert all(torch.equal(a, b) for a, b in zip(kv_of(rn, s), kv, strict=True))


@pytest.mark.parametrize("chunk_size", [16, 50, 64, 128])
def test_chunked_prefill_matches_full(model, chunk_size):
    rn = runner(model)
    (p,) = prompts([150], seed=4)
    full = rn.prefill_job(make_job(0, [p]))
    ref = full.run()
    job = rn.prefill_job(make_job(1, [p], chunk_size=chunk_size))
    n_chunks, boundaries = -(-150 // chunk_size), 0
    while not job.finished:
        job.step()
        if job.plan.is_point(job.done, Granularity.CHUNK):  # only at a chunk's end
            boundaries += 1
            assert job.plan.tokens_done(job.done) == min(boundaries * chunk_size, 150)
    assert boundaries == n_chunks == len(job.plan.passes)
    torch.testing.assert_close(job.logits, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(kv_of(rn, full.seq_ids[0]), kv_of(rn, job.seq_ids[0]), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("slices", [2, 3, 10])
def test_sliced_operators_match_unsliced(model, slices):
    rn = runner(model)
    ps = prompts([40, 21, 9], seed=5)  # slices cross sequence boundaries
    ref_job = rn.prefill_job(make_job(0, ps))
    ref = ref_job.run()
    job = rn.prefill_job(make_job(1, ps, slices=slices))
    units = 0
    while not job.finished:
        job.step()
        units += 1
    assert units == 2 + 2 * CFG.num_layers * slices  # attention and MLP sliced
    torch.testing.assert_close(job.logits, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(ref_job.seq_ids, job.seq_ids, strict=True):
        for ka, kb in zip(kv_of(rn, a), kv_of(rn, b), strict=True):
            torch.testing.assert_close(ka, kb, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("granularity", "units_per_call"), [
    ("operator", [1] * NUM_OPS),
    ("layer", [3] + [2] * (CFG.num_layers - 1) + [1]),  # after each layer, then final alone
    ("none", [NUM_OPS]),
])
def test_granularity_sets_preemption_points(model, granularity, units_per_call):
    rn = runner(model)
    job = rn.prefill_job(make_job(0, prompts([20])))
    calls, n = [], 0
    while not job.finished:
        job.step()
        n += 1
        if job.plan.is_point(job.done, Granularity(granularity)):
            calls.append(n)
            n = 0
    assert calls == units_per_call


def test_abort_frees_all_blocks(model):
    rn = runner(model)
    free0 = rn.blocks.num_free
    job = rn.prefill_job(make_job(0, prompts([40, 17], seed=6)))
    assert rn.blocks.num_free == free0 - 3 - 2
    for _ in range(3):
        job.step()
    job.abort()
    assert job.aborted and rn.blocks.num_free == free0
    assert not rn.blocks.has(job.seq_ids[0])
    with pytest.raises(RuntimeError):
        job.step()


def test_job_from_core_job_uses_request_tokens_and_checks_lengths(model):
    rn = runner(model)
    (p,) = prompts([12])
    req = Request("a", 0.0, 12, SLO(1.0), prompt_token_ids=tuple(p))
    plan12, plan5 = (JobPlan.unsliced((n,), CFG.num_layers) for n in (12, 5))
    assert rn.prefill_job(Job(0, (req,), plan12)).token_ids == [p]
    with pytest.raises(ValueError):
        rn.prefill_job(Job(1, (Request("b", 0.0, 5, SLO(1.0)),), plan5), [p])


def test_decode_over_paged_kv_matches_recompute(model):
    rn = runner(model)
    ps = prompts([30, 5, 16], seed=7)  # block boundaries crossed while decoding
    job = rn.prefill_job(make_job(0, ps))
    first = job.run().argmax(-1).tolist()
    seqs, toks, history = job.seq_ids, first, [list(p) + [t] for p, t in zip(ps, first,
                                                                              strict=True)]
    for _ in range(4):
        logits = rn.decode(seqs, toks)
        check = runner(model)
        ref = check.prefill_job(make_job(9, history)).run()
        torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
        toks = logits.argmax(-1).tolist()
        for h, t in zip(history, toks, strict=True):
            h.append(t)
    assert [rn.blocks.num_tokens(s) for s in seqs] == [34, 9, 20]


def test_prefill_job_rejects_reused_ids_and_overlong_prompts(model):
    rn = runner(model)
    (p,) = prompts([10])
    rn.prefill_job(make_job(0, [p]))
    free = rn.blocks.num_free
    with pytest.raises(ValueError, match="already hold"):
        rn.prefill_job(make_job(0, [p]))  # same request ids
    assert rn.blocks.num_free == free
    long = [0] * (CFG.max_position + 1)
    with pytest.raises(ValueError, match="max_position"):
        rn.prefill_job(make_job(1, [long]))


def rider_job(job_id: int, ps: list[list[int]], riders: tuple[Request, ...],
              contexts: list[int], slices: int = 1) -> Job:
    """A job over prompts `ps` that also computes one new token of each rider (whose KV holds
    `contexts` tokens), its operators in `slices` token slices."""
    reqs = tuple(Request(f"j{job_id}r{i}", 0.0, len(p), SLO(1.0), prompt_token_ids=tuple(p))
                 for i, p in enumerate(ps))
    shape = (*((len(p), 0) for p in ps), *((1, c) for c in contexts))
    rows = even_bounds(sum(n for n, _ in shape), slices)
    return Job(job_id, reqs, JobPlan((ForwardPlan(shape, len(shape), CFG.num_layers, rows,
                                                  rows),)), riders=riders)


@pytest.mark.parametrize("slices", [1, 3])
def test_riders_get_the_tokens_a_decode_step_gives(model, slices):
    """A mixed batch: decoding sequences riding a prefill job get the logits a decode step of
    their own gives, and so do the job's prompts (against a job without riders)."""
    ps = prompts([30, 16, 9], seed=11)
    (new,) = prompts([21], seed=12)
    alone, mixed = runner(model), runner(model)
    firsts = []
    for rn in (alone, mixed):
        firsts.append(rn.prefill_job(make_job(0, ps)).run().argmax(-1).tolist())
    assert firsts[0] == firsts[1]
    ids = [f"j0r{i}" for i in range(len(ps))]
    want = alone.decode(ids, firsts[0])
    want_new = alone.prefill_job(make_job(1, [new])).run()
    riders = tuple(Request(rid, 0.0, len(p), SLO(1.0)) for rid, p in zip(ids, ps, strict=True))
    free = mixed.blocks.num_free
    job = mixed.prefill_job(rider_job(1, [new], riders, [len(p) for p in ps], slices),
                            rider_tokens=firsts[1])
    assert mixed.blocks.num_free == free - 2 - 1  # the prompt's 2 blocks; 16 + 1 needs one
    got = job.run()
    torch.testing.assert_close(got[1:], want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[:1], want_new, atol=1e-5, rtol=1e-5)
    assert [mixed.blocks.num_tokens(r) for r in ids] == [31, 17, 10]
    nxt = want.argmax(-1).tolist()  # and they decode on from there as if they had stepped
    torch.testing.assert_close(mixed.decode(ids, nxt), alone.decode(ids, nxt), atol=1e-5,
                               rtol=1e-5)


def test_aborted_rider_job_gives_back_the_riders_slots(model):
    rn = runner(model)
    ps = prompts([16, 7], seed=13)
    firsts = rn.prefill_job(make_job(0, ps)).run().argmax(-1).tolist()
    ids = ("j0r0", "j0r1")
    riders = tuple(Request(rid, 0.0, len(p), SLO(1.0)) for rid, p in zip(ids, ps, strict=True))
    free = rn.blocks.num_free
    job = rn.prefill_job(rider_job(1, prompts([40], seed=14), riders, [16, 7]),
                         rider_tokens=firsts)
    for _ in range(3):
        job.step()
    job.abort()
    assert rn.blocks.num_free == free
    assert [rn.blocks.num_tokens(r) for r in ids] == [16, 7]
    with pytest.raises(ValueError, match="rider tokens"):
        rn.prefill_job(rider_job(2, prompts([5]), riders, [16, 7]), rider_tokens=firsts[:1])
    assert rn.blocks.num_free == free
