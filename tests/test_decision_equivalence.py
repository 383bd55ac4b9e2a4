"""One set of rules for the engine and the simulator: the same scripted arrivals through (a)
the real device loop running the tiny model, its virtual clock advanced by the predictor's
cost of each unit it launches, and (b) the simulator charging the same predictor, give the
same decision log, call by call: which events each scheduler call saw (with the running
job's progress, in units), which job runs, which is suspended, which request is rejected,
which decode step runs when and which sequence is evicted. For every policy and granularity.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from flowprefill.config import EngineConfig, ModelConfig, PolicyConfig, SimConfig
from flowprefill.core import SLO, Abort, Arrival, Request, SamplingParams, VirtualClock
from flowprefill.engine.local import BlockManagerView
from flowprefill.engine.loop import EngineLoop
from flowprefill.engine.sources import ScriptedSource
from flowprefill.engine.streams import OutputStream
from flowprefill.executor import ModelRunner
from flowprefill.metrics import RequestRecord
from flowprefill.scheduler import Scheduler
from flowprefill.sim import Simulator
from tests.engine_harness import DeviceModel, ModelTimeline, predicted_cost
from tests.test_scheduler_helpers import UnitPredictor

MODEL = ModelConfig(name="t", vocab_size=512, hidden_size=32, intermediate_size=64,
                    num_layers=2, num_heads=2, num_kv_heads=1, max_position=4096,
                    tie_word_embeddings=True, eos_token_id=None)
BLOCKS = 160  # 2,560 tokens of KV: admission waits for blocks at times
PRESSURE_BLOCKS = 40  # 640 tokens: decoding outgrows it


def script(seed: int, n: int = 30, pressure: bool = False) -> list[Request]:
    """Mixed lengths and SLOs; short urgent requests arriving inside long prefills; one
    prompt larger than the KV pool (rejected). `pressure`: outputs that outgrow the smaller
    pool `PRESSURE_BLOCKS` while decoding (sequences are evicted and prefilled again)."""
    rng = random.Random(seed)
    out, t = [], 0.0
    huge = (PRESSURE_BLOCKS if pressure else BLOCKS) * 16 + 1
    out.append(Request("huge", 0.05, huge, SLO(ttft=50.0), max_tokens=1,
                       prompt_token_ids=tuple(rng.randrange(512) for _ in range(huge))))
    for i in range(n):
        t += rng.expovariate(1 / 0.08)
        long = rng.random() < 0.25
        n_tok = rng.randint(150, 300 if pressure else 900) if long else rng.randint(4, 120)
        ttft = rng.uniform(1.0, 6.0) if long else rng.uniform(0.02, 0.5)
        out.append(Request(f"r{i}", t, n_tok, SLO(ttft=ttft, tbt=rng.uniform(0.05, 0.3)),
                           max_tokens=rng.choice([40, 80]) if pressure else rng.choice(
                               [1, 1, 3, 8]),
                           prompt_token_ids=tuple(rng.randrange(512) for _ in range(n_tok))))
    return out


def engine_trace(policy: PolicyConfig, requests: list[Request], max_unit_s: float,
                 decode: bool, blocks: int, aborts: list[tuple[float, str]] = ()
                 ) -> tuple[list[tuple], dict[str, RequestRecord]]:
    """The scheduler's decision log and the request records of a real engine run (which
    must end with every KV block free)."""
    pred = UnitPredictor(num_layers=MODEL.num_layers)
    runner = ModelRunner(MODEL, EngineConfig(device="cpu", dtype="float32",
                                             num_kv_blocks=blocks))
    clock = VirtualClock(0.0)
    device = DeviceModel(clock, predicted_cost(pred))
    sched = Scheduler(policy, pred, BlockManagerView(runner.blocks), max_unit_s=max_unit_s,
                      decode=decode, trace=True)
    aloop = asyncio.new_event_loop()  # never run: outputs are not read here, records are
    streams = {r.request_id: OutputStream(
        r, SamplingParams(max_tokens=r.max_tokens, temperature=0.0, ignore_eos=True), aloop,
        RequestRecord.for_request(r)) for r in requests}
    source = ScriptedSource(clock, [(r.arrival, Arrival(r)) for r in requests]
                            + [(t, Abort(rid)) for t, rid in aborts])
    # without decode: a PD prefill worker, whose requests leave after their first token
    handoff = None if decode else (lambda s, tok: runner.free(s.request.request_id))
    loop = EngineLoop(runner, sched, clock, streams, source, on_prefilled=handoff,
                      launch_ahead=0, timelines=(ModelTimeline(device), ModelTimeline(device)))
    loop.run()
    aloop.close()
    assert runner.blocks.num_free == blocks and not loop.units.riding
    return sched.trace, {rid: s.record for rid, s in streams.items()}


def sim_trace(policy: PolicyConfig, requests: list[Request], max_unit_s: float, decode: bool,
              blocks: int, aborts: list[tuple[float, str]] = ()):
    """The same from the simulator."""
    pred = UnitPredictor(num_layers=MODEL.num_layers)
    cfg = SimConfig(num_kv_blocks=blocks, max_unit_ms=max_unit_s * 1e3, decode=decode,
                    trace=True)
    res = Simulator(policy, pred, cfg).run(requests, aborts)
    return res.trace, {r.request_id: r for r in res.records}


def same(a: object, b: object) -> bool:
    """Equal, floats within 1e-9 (the two sum the same costs in different orders)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


POLICIES = {
    "fcfs": dict(order="fcfs", granularity="none", batching=False),
    "chunked": dict(order="fcfs", granularity="chunk", chunk_size=128, batching=False),
    "chunked_sedf": dict(order="sedf", granularity="chunk", chunk_size=128, batching=True),
    "edf": dict(order="edf", granularity="none", batching=False),
    "flowprefill": dict(order="sedf", granularity="operator", batching=True),
    "flowprefill_layer": dict(order="sedf", granularity="layer", batching=True),
    "flowprefill_mh": dict(order="sedf", granularity="operator", batching=True,
                           drop="moore_hodgson"),
    "priority": dict(order="priority", granularity="operator", batching=False,
                     class_priority={"default": 0}),
}


def compare(policy: PolicyConfig, requests: list[Request], max_unit_s: float,
            decode: bool, blocks: int = BLOCKS, aborts: list[tuple[float, str]] = ()
            ) -> list[tuple]:
    eng, eng_recs = engine_trace(policy, requests, max_unit_s, decode, blocks, aborts)
    sim, sim_recs = sim_trace(policy, requests, max_unit_s, decode, blocks, aborts)
    assert len(eng) > len(requests)  # at least one call per arrival
    for i, (e, s) in enumerate(zip(eng, sim, strict=False)):
        assert same(e, s), f"call {i} differs:\n engine {e}\n    sim {s}"
    assert len(eng) == len(sim)
    for rid, e in eng_recs.items():  # and so the same request outcomes
        s = sim_recs[rid]
        assert e.rejected == s.rejected, rid
        assert same(e.first_token_time, s.first_token_time), rid
        assert len(e.token_times) == len(s.token_times), rid
        assert all(same(a, b) for a, b in zip(e.token_times, s.token_times, strict=True))
    assert eng_recs["huge"].rejected
    return eng


@pytest.mark.parametrize("name", sorted(POLICIES))
@pytest.mark.parametrize(("max_unit_s", "decode"), [(0.0, False), (0.02, True)])
def test_engine_and_simulator_make_the_same_decisions(name, max_unit_s, decode):
    policy = PolicyConfig(name=name, **POLICIES[name])
    log = compare(policy, script(seed=len(name)), max_unit_s, decode)
    if policy.granularity in ("operator", "layer") and policy.order == "sedf":
        assert any(d[2] for _, _, d in log), "the script should make S-EDF preempt"
    if decode:
        assert any(e[0] == "decoded" for _, events, _ in log for e in events)
        assert any(d[1] and d[1][2] for _, _, d in log), "decode tokens should ride a job"


def test_same_decisions_without_mixed_batches():
    policy = PolicyConfig(name="flowprefill", mix_decode=False, **POLICIES["flowprefill"])
    log = compare(policy, script(seed=3), 0.02, True)
    assert not any(d[1] and d[1][2] for _, _, d in log)


@pytest.mark.parametrize("name", ["fcfs", "flowprefill"])
def test_same_decisions_when_decoding_outgrows_the_pool(name):
    policy = PolicyConfig(name=name, **POLICIES[name])
    log = compare(policy, script(seed=7, n=12, pressure=True), 0.02, True, PRESSURE_BLOCKS)
    evicted = [rid for _, _, d in log for rid in d[7]]
    assert evicted, "long outputs should outgrow the pool"
    assert any(d[1] and d[1][2] for _, _, d in log), "decode tokens should ride a job"


def riders_aborted(log: list[tuple]) -> int:
    """Aborts that reached the scheduler while their sequence rode a job in flight."""
    riding: dict[int, tuple[str, ...]] = {}
    hits = 0
    for _, events, d in log:
        for e in events:
            if e[0] == "completion":
                riding.pop(e[1], None)
            elif e[0] == "abort" and any(e[1] in ids for ids in riding.values()):
                hits += 1
        for jid in d[3]:  # dropped
            riding.pop(jid, None)
        if d[1] and d[1][2]:
            riding[d[1][0]] = d[1][2]
    return hits


@pytest.mark.parametrize("name", ["fcfs", "flowprefill"])
def test_same_decisions_when_clients_go_away(name):
    """Aborts at random times (queued, prefilling, suspended, decoding, riding a job): the
    same decisions, and every block back in the engine's pool at the end."""
    policy = PolicyConfig(name=name, **POLICIES[name])
    requests = script(seed=11, n=30, pressure=True)
    rng = random.Random(2)
    aborts = [(r.arrival + rng.uniform(0.0, 3.0), r.request_id)
              for r in requests if rng.random() < 0.5]
    log = compare(policy, requests, 0.02, True, PRESSURE_BLOCKS, aborts)
    if policy.granularity == "operator":  # (others see an abort only when a job has ended)
        assert riders_aborted(log) >= 1, "some abort should hit a sequence riding a job"


def test_decoding_goes_on_at_its_pace_through_a_long_prefill():
    """One device loop: a sequence decoding while a 4,000-token prefill runs gets a token at
    least every `decode_pace` plus one unit (a step runs at the next preemption point), not
    one per prefill, and the prefill still completes."""
    policy = PolicyConfig(name="flowprefill", **POLICIES["flowprefill"])
    rng = random.Random(1)
    short = Request("short", 0.0, 16, SLO(ttft=1.0), max_tokens=60,
                    prompt_token_ids=tuple(rng.randrange(512) for _ in range(16)))
    long = Request("long", 0.05, 4000, SLO(ttft=100.0), max_tokens=1,
                   prompt_token_ids=tuple(rng.randrange(512) for _ in range(4000)))
    max_unit = 0.02
    _, recs = engine_trace(policy, [short, long], max_unit, True, 400)
    lo, hi = recs["long"].prefill_start, recs["long"].prefill_end
    assert hi - lo > 5 * policy.decode_pace  # UnitPredictor: 1.6 s of prefill
    times = [recs["short"].first_token_time, *recs["short"].token_times]
    during = [t for t in times if lo <= t <= hi]
    assert len(during) >= (hi - lo) / (policy.decode_pace + max_unit) - 1
    gaps = [b - a for a, b in zip(times, times[1:], strict=False) if lo <= a and b <= hi]
    assert gaps and max(gaps) <= policy.decode_pace + 2 * max_unit
