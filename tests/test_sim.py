"""Simulator: exact timings of hand-built scenarios, determinism, and boundary timing."""

from __future__ import annotations

import pytest

from flowprefill.config import SimConfig, SLOConfig, WorkloadConfig
from flowprefill.core import JobPlan
from flowprefill.sim import Simulator
from flowprefill.workload import build_requests
from tests.test_scheduler_helpers import UnitPredictor, cost, policy, req


def scenario():
    """A long relaxed request at 0; an urgent short one at 0.05 (SLO 0.2 s)."""
    return [req("long", 0.0, 1000, 10.0), req("short", 0.05, 100, 0.2)]


WHOLE = SimConfig(max_unit_ms=0)  # operators are never split into token slices


def whole_cost(n: int, chunk: int | None = None) -> float:
    return UnitPredictor().total(JobPlan.unsliced((n,), 2, chunk))


def first_token(res, rid):
    return next(r for r in res.records if r.request_id == rid).first_token_time


# long: embed [0, .001], attn0 [.001, .101], mlp0 [.101, .201], attn1, mlp1, final: ends .402
@pytest.mark.parametrize(
    ("kw", "switch_at"),
    [
        (dict(granularity="operator"), 0.101),  # the end of the operator it arrived in
        (dict(granularity="layer"), 0.201),  # the end of layer 0
        (dict(order="fcfs", granularity="operator"), None),  # FCFS order never switches
        (dict(granularity="none"), None),
        (dict(granularity="chunk", chunk_size=250), 0.102),  # end of the first chunk
        (dict(order="fcfs", granularity="chunk", chunk_size=250), None),
    ],
)
def test_urgent_arrival_switch_time(kw, switch_at):
    res = Simulator(policy(**kw), UnitPredictor(), WHOLE).run(scenario())
    short_done = first_token(res, "short")
    if switch_at is None:
        long_end = whole_cost(1000, kw.get("chunk_size"))
        assert short_done == pytest.approx(long_end + cost(100))
        assert not [e for e in res.log if e[1] == "suspend"]
    else:
        assert short_done == pytest.approx(switch_at + cost(100))
        (suspend,) = [e for e in res.log if e[1] == "suspend"]
        assert suspend[0] == pytest.approx(switch_at)
        rec = next(r for r in res.records if r.request_id == "long")
        assert rec.preemptions == 1
        assert rec.preemption_latencies == [pytest.approx(switch_at - 0.05)]
        # the long job loses no work: it ends exactly one short prefill later
        total = whole_cost(1000, kw.get("chunk_size"))
        assert first_token(res, "long") == pytest.approx(total + cost(100))


def test_overheads_are_charged():
    sim = SimConfig(switch_overhead=0.01, schedule_overhead=0.001, max_unit_ms=0)
    res = Simulator(policy(), UnitPredictor(), sim).run(scenario())
    # long starts after one scheduler call (.001); short arrives in its op 1 (ends .102);
    # one scheduler call and one switch later short starts
    assert first_token(res, "short") == pytest.approx(0.102 + 0.011 + cost(100))


def test_kv_limited_sim_serializes():
    sim = SimConfig(num_kv_blocks=70, block_size=16, max_unit_ms=0)  # 1000 tokens: 63 blocks
    reqs = [req("a", 0.0, 1000, 10.0), req("b", 0.0, 1000, 10.0)]
    res = Simulator(policy(order="fcfs", batching=True, token_bound=4096, alpha=0.0),
                    UnitPredictor(), sim).run(reqs)
    assert first_token(res, "b") == pytest.approx(2 * cost(1000))  # not batched: no blocks


def _workload(n=400, rate=40.0):
    w = WorkloadConfig(name="qwen_like", format="synthetic", num_requests=n, rate=rate, seed=3)
    return w, SLOConfig(mode="bands", seed=1)


@pytest.mark.parametrize("gran", ["operator", "layer", "chunk", "none"])
def test_same_seed_same_log(gran):
    pred = UnitPredictor(num_layers=4)
    w, s = _workload()
    p = policy(granularity=gran, chunk_size=512, batching=True, drop="moore_hodgson")
    a = Simulator(p, pred).run(build_requests(w, s, pred.isolated_ttft))
    b = Simulator(p, pred).run(build_requests(w, s, pred.isolated_ttft))
    assert a.log == b.log and len(a.log) > 800
    assert [r.first_token_time for r in a.records] == [r.first_token_time for r in b.records]


@pytest.mark.parametrize("gran", ["operator", "layer"])
def test_arrivals_are_seen_at_the_next_preemption_point(gran):
    """Every decision on a running job happens at a boundary within one operator (or layer)
    of the arrival, and no switch happens anywhere else."""
    pred = UnitPredictor(num_layers=4)
    w, s = _workload(rate=15.0)
    res = Simulator(policy(granularity=gran, batching=True), pred, WHOLE).run(
        build_requests(w, s, pred.isolated_ttft))
    lat = [x for r in res.records for x in r.preemption_latencies]
    assert lat, "the workload should cause preemptions"
    longest = max(r.prompt_len for r in res.records)
    op = pred.forward(((2048 + longest, 0),)).attention  # > any single operator of a job
    assert all(0 <= x <= (op if gran == "operator" else 2 * op) for x in lat)
    # suspended jobs are resumed at the cursor they stopped at
    suspended_at = {}
    for e in res.log:
        if e[1] == "suspend":
            suspended_at[e[2]] = e[3]
        elif e[1] == "run" and e[2] in suspended_at:
            assert e[4] == suspended_at.pop(e[2])
            if gran == "layer":
                assert e[4] == 0 or e[4] % 2 == 1  # not started, or after embed / a layer


def test_every_request_is_served_once():
    pred = UnitPredictor(num_layers=4)
    w, s = _workload()
    res = Simulator(policy(batching=True), pred).run(build_requests(w, s, pred.isolated_ttft))
    assert all(r.first_token_time is not None and r.first_token_time >= r.arrival
               for r in res.records)
    completes = [e for e in res.log if e[1] == "complete"]
    runs = {e[2]: e[3] for e in res.log if e[1] == "run"}
    served = [rid for e in completes for rid in runs[e[2]]]
    assert sorted(served) == sorted(r.request_id for r in res.records)


def test_operators_longer_than_the_bound_run_as_token_slices():
    """With a 30 ms bound, each 100 ms operator of the long prompt is 4 slices of 25 ms: the
    short request starts at the end of the slice it arrived in, and the long one pays
    nothing for being sliced (the unit predictor is linear in rows)."""
    sim = SimConfig(max_unit_ms=30.0)
    res = Simulator(policy(), UnitPredictor(), sim).run(scenario())
    # long: embed [0, .001], attention slices end .026, .051, ...: short (0.05) waits to .051
    assert first_token(res, "short") == pytest.approx(0.051 + cost(100))
    rec = next(r for r in res.records if r.request_id == "long")
    assert rec.preemption_latencies == [pytest.approx(0.001)]
    assert first_token(res, "long") == pytest.approx(cost(1000) + cost(100))


def test_decode_steps_are_placed_at_points_before_the_tbt_deadline():
    """A decoding request (TBT 0.06 s) keeps its gaps within its SLO while a long prefill
    runs: each decode step is placed at an operator boundary before its deadline."""
    from flowprefill.core import SLO, Request

    dec = Request("dec", 0.0, 10, SLO(ttft=1.0, tbt=0.06), max_tokens=8)
    long = Request("long", 0.001, 2000, SLO(ttft=100.0), max_tokens=1)
    sim = SimConfig(max_unit_ms=20.0, decode=True)
    res = Simulator(policy(), UnitPredictor(), sim).run([dec, long])
    rec = next(r for r in res.records if r.request_id == "dec")
    assert len(rec.token_times) == 7 and rec.finish_time is not None
    assert max(rec.tbt) <= 0.06 + 1e-9
    long_done = first_token(res, "long")
    assert long_done > rec.token_times[-1]  # the decodes ran during the long prefill
