"""flashinfer planning on the host: CSR page tables and the per-thread plan cache (CPU)."""

from __future__ import annotations

import random
import threading

import pytest
import torch

from flowprefill.attention import TorchBackend
from flowprefill.attention.base import cdiv
from flowprefill.attention.flashinfer_plan import (
    PerThread,
    PlanCache,
    decode_page_table,
    page_table,
    prefill_page_table,
)
from flowprefill.config import EngineConfig, ModelConfig
from flowprefill.core import SLO, ForwardPlan, Job, JobPlan, Request
from flowprefill.executor import ModelRunner, Piece, build_decode_batch, build_prefill_batch
from tests.cpu_fp32 import CPU_FP32

CFG = ModelConfig(name="t", vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=3,
                  num_heads=4, num_kv_heads=2, max_position=4096, tie_word_embeddings=False,
                  eos_token_id=None, seed=3)


@pytest.fixture(scope="module")
def model():
    return ModelRunner(CFG, EngineConfig(**CPU_FP32, num_kv_blocks=128)).model


def csr_slots(t, i, kv_len, bs) -> torch.Tensor:
    """Slots of positions 0..kv_len-1 of sequence i as flashinfer reads them: page
    kv_indices[kv_indptr[i] + p // bs], entry p % bs (all pages full but the last)."""
    pages = t.kv_indices[t.kv_indptr[i]:t.kv_indptr[i + 1]]
    last = int(t.kv_last_page_len[i])
    assert 1 <= last <= bs and (pages.numel() - 1) * bs + last == kv_len
    p = torch.arange(kv_len)
    return pages[p // bs].long() * bs + p % bs


def test_prefill_page_table_addresses_the_segments_slots(model):
    rng = random.Random(0)
    for bs in (1, 4, 16):
        for _ in range(20):
            pieces = []
            for _ in range(rng.randint(1, 4)):
                start, n = rng.choice([0, rng.randint(1, 40)]), rng.randint(1, 40)
                pieces.append(Piece([1] * n, start, rng.sample(range(300), cdiv(start + n, bs))))
            batch = build_prefill_batch(model, pieces, bs)
            t = batch.num_rows
            for s, e in [(0, t), (0, cdiv(t, 2)), (cdiv(t, 2), t)]:
                if s >= e:
                    continue
                meta = batch.meta(s, e)
                tab = prefill_page_table(meta, bs, pin=False)
                assert all(x.dtype == torch.int32 and x.device.type == "cpu" for x in
                           (tab.qo_indptr, tab.kv_indptr, tab.kv_indices, tab.kv_last_page_len))
                assert tab.qo_indptr.tolist() == [g.row for g in meta.segments] + [e - s]
                for i, g in enumerate(meta.segments):
                    assert torch.equal(csr_slots(tab, i, g.kv_len, bs), g.kv_slots)


def test_decode_page_table_addresses_the_context_slots(model):
    rng = random.Random(1)
    for bs in (1, 4, 16):
        positions = [rng.randint(0, 60) for _ in range(5)]
        tables = [rng.sample(range(300), cdiv(p + 1, bs)) for p in positions]
        m = build_decode_batch(model, [0] * 5, positions, tables, bs).meta
        tab = decode_page_table(m, pin=False)
        assert tab.qo_indptr.tolist() == list(range(6))
        for i, n in enumerate(m.context_lens):
            assert torch.equal(csr_slots(tab, i, n, bs), m.ctx_slots[i, :n])


def test_page_table_rejects_inconsistent_sequences():
    with pytest.raises(ValueError, match="sequence 0 has 1 query rows over 5 tokens in 1 pages"):
        page_table([1], [5], [[3]], 4, pin=False)
    with pytest.raises(ValueError, match="sequence 1 has 4 query rows over 3 tokens"):
        page_table([1, 4], [2, 3], [[3], [4]], 4, pin=False)
    with pytest.raises(ValueError, match="one of each per sequence"):
        page_table([], [], [], 4, pin=False)


class Wrapper:
    def __init__(self, kind):
        self.kind, self.plans = kind, []


class Fence:
    """Reports not done until waited on; records the waits."""

    def __init__(self, log):
        self.log, self.id, self.done = log, len(log["made"]), False
        log["made"].append(self)

    def query(self):
        return self.done

    def synchronize(self):
        self.done = True
        self.log["waited"].append(self.id)


class Meta:  # any weak-referenceable object: plans key on identity
    pass


def make_cache(capacity):
    log = {"made": [], "waited": [], "wrappers": []}

    def make(kind):
        w = Wrapper(kind)
        log["wrappers"].append(w)
        return w

    return PlanCache(make, lambda: Fence(log), capacity), log


def planner(tag):
    def plan(w):
        w.plans.append(tag)
        return ("inputs", tag)
    return plan


def test_plan_cache_plans_each_meta_once_and_reuses_it():
    cache, log = make_cache(4)
    a, b = Meta(), Meta()
    for _ in range(3):  # layers alternate between the two slices
        wa = cache.get("paged", a, planner("a"))
        wb = cache.get("paged", b, planner("b"))
    assert wa is not wb and wa.plans == ["a"] and wb.plans == ["b"]
    assert len(log["wrappers"]) == 2 and log["waited"] == []  # fresh wrappers: nothing to wait
    wd = cache.get("decode", a, planner("d"))  # kinds have their own wrappers
    assert wd.kind == "decode" and wd.plans == ["d"] and wa.plans == ["a"]


def test_plan_cache_reuses_wrappers_of_dead_metas_first():
    cache, log = make_cache(2)
    a = Meta()
    wa = cache.get("ragged", a, planner("a"))
    b = Meta()
    wb = cache.get("ragged", b, planner("b"))
    del a  # its batch is gone
    c = Meta()
    wc = cache.get("ragged", c, planner("c"))
    assert wc is wa and wa.plans == ["a", "c"] and len(log["wrappers"]) == 2
    assert log["waited"] == [0]  # a's plan fence, before overwriting its staging buffer
    assert cache.get("ragged", b, planner("x")) is wb and wb.plans == ["b"]


def test_plan_cache_evicts_least_recently_used_and_replans_it():
    cache, log = make_cache(2)
    a, b, c = Meta(), Meta(), Meta()
    wa = cache.get("paged", a, planner("a"))
    wb = cache.get("paged", b, planner("b"))
    cache.get("paged", a, planner("a"))  # a is now the most recent
    wc = cache.get("paged", c, planner("c"))
    assert wc is wb and wb.plans == ["b", "c"] and log["waited"] == [1]  # b's fence
    log["made"][0].done = True  # a's plan has reached the device: no wait
    again = cache.get("paged", b, planner("b"))  # b was evicted: planned again, on a's wrapper
    assert again is wa and wa.plans == ["a", "b"] and len(log["wrappers"]) == 2
    assert log["waited"] == [1]
    assert cache.wrappers("paged") == [wc, wa]


def test_plan_cache_keeps_plan_inputs_and_survives_a_failing_plan():
    cache, _ = make_cache(1)
    a = Meta()
    cache.get("paged", a, planner("a"))
    assert cache._slots["paged"][0].keep == ("inputs", "a")

    def boom(w):
        raise RuntimeError("plan failed")

    b = Meta()
    with pytest.raises(RuntimeError, match="plan failed"):
        cache.get("paged", b, boom)
    w = cache.get("paged", a, planner("a2"))  # a's plan was overwritten: planned again
    assert w.plans == ["a", "a2"]
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        PlanCache(Wrapper, lambda: None, 0)


def test_per_thread_values_are_never_shared():
    per = PerThread(lambda: object())
    main = per.get()
    assert per.get() is main
    seen = []
    threads = [threading.Thread(target=lambda: seen.append((per.get(), per.get())))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (a1, a2), (b1, b2) = seen
    assert a1 is a2 and b1 is b2 and len({id(main), id(a1), id(b1)}) == 3


class PlanCountingBackend(TorchBackend):
    """The torch backend, asking a PlanCache for a plan per call as the flashinfer backend
    does: counts how often the executor's metadata would be planned."""

    def __init__(self):
        super().__init__()
        self.cache, self.log = make_cache(2)

    def prefill(self, layer, q, k, v, meta, pool):
        self.cache.get("ragged" if meta.fresh else "paged", meta, planner(id(meta)))
        return super().prefill(layer, q, k, v, meta, pool)

    def decode(self, layer, q, k, v, meta, pool):
        self.cache.get("decode", meta, planner(id(meta)))
        return super().decode(layer, q, k, v, meta, pool)


def test_executor_metadata_is_planned_once_per_slice_not_per_layer(model):
    eng = EngineConfig(**CPU_FP32, num_kv_blocks=128)
    rn = ModelRunner(CFG, eng, model=model)
    rn.backend = be = PlanCountingBackend()
    req = Request("r", 0.0, 50, SLO(1.0), prompt_token_ids=tuple(range(50)))
    rows = (0, 20, 40, 50)  # token slices [0,20) [20,40) [40,50)
    sliced = JobPlan((ForwardPlan(((50, 0),), 1, CFG.num_layers, rows, rows),))
    job = rn.prefill_job(Job(0, (req,), sliced))
    ref = ModelRunner(CFG, eng, model=model)
    expect = ref.prefill_job(Job(0, (req,), JobPlan.unsliced((50,), CFG.num_layers))).run()
    torch.testing.assert_close(job.run(), expect)  # same results with the counting backend
    plans = [p for w in be.log["wrappers"] for p in w.plans]
    # 3 slices x 3 layers of attention: the fresh first slice is ragged, the later two read
    # their cached prefix (paged); each is planned once and reused by all layers
    assert sorted(w.kind for w in be.log["wrappers"]) == ["paged", "paged", "ragged"]
    assert len(plans) == 3
    rn.decode(["r"], [7])
    rn.decode(["r"], [8])
    (w,) = be.cache.wrappers("decode")  # the first step's batch is gone: its wrapper reused
    assert len(w.plans) == 2  # one plan per step, shared by its 3 layers
