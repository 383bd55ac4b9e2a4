"""Scheduler scenarios with exact expected outcomes (no simulator: events fed by hand)."""

from __future__ import annotations

import pytest

from flowprefill.core import Abort, Arrival, Completion, Progress
from flowprefill.scheduler import MAX_SCAN, ORDERS, BlockBudget, Scheduler, moore_hodgson
from tests.test_scheduler_helpers import UnitPredictor, policy, req


def ids(job):
    return None if job is None else job.request_ids


def test_orders_registry():
    assert set(ORDERS) >= {"fcfs", "edf", "sedf", "priority"}
    with pytest.raises(ValueError, match="unknown order"):
        Scheduler(policy(order="nope"), UnitPredictor())


@pytest.mark.parametrize(
    ("gran", "switches"), [("operator", True), ("layer", True), ("none", False), ("chunk", False)]
)
def test_urgent_arrival_preempts_only_at_operator_or_layer(gran, switches):
    s = Scheduler(policy(granularity=gran, chunk_size=4096), UnitPredictor())
    d = s.on_event(Arrival(req("long", 0.0, 1000, 10.0)), 0.0)
    assert ids(d.run) == ("long",)
    long_job = d.run
    # the engine got 3 units in (a layer's end: a point under both operator and layer)
    d = s.on_events([Progress(long_job.job_id, 3), Arrival(req("short", 0.05, 100, 0.2))],
                    0.101)
    if switches:
        assert ids(d.run) == ("short",) and d.suspend == (long_job.job_id,)
        assert s.num_suspended == 1
        d = s.on_event(Completion(d.run.job_id), 0.143)
        assert d.run is long_job and s.done(long_job) == 3  # resumed at its cursor
    else:
        assert d.run is long_job and d.suspend == ()


def test_fcfs_order_never_preempts_for_a_later_arrival():
    s = Scheduler(policy(order="fcfs", granularity="operator"), UnitPredictor())
    first = s.on_event(Arrival(req("long", 0.0, 1000, 10.0)), 0.0).run
    d = s.on_event(Arrival(req("short", 0.05, 100, 0.2)), 0.101)
    assert d.run is first and d.suspend == ()


@pytest.mark.parametrize(("order", "switches"), [("sedf", True), ("fcfs", False)])
def test_chunked_switches_at_a_chunk_boundary(order, switches):
    s = Scheduler(policy(order=order, granularity="chunk", chunk_size=250), UnitPredictor())
    job = s.on_event(Arrival(req("long", 0.0, 1000, 10.0)), 0.0).run
    assert job.chunk_size == 250
    assert s.on_events([Progress(job.job_id, 2), Arrival(req("short", 0.05, 100, 0.2))],
                       0.05).run is job  # mid-chunk
    first_chunk = job.plan.passes[0].num_units
    d = s.on_event(Progress(job.job_id, first_chunk), 0.102)  # the first chunk's end
    if switches:
        assert ids(d.run) == ("short",) and d.suspend == (job.job_id,)
        assert d.run.chunk_size is None  # fits in one chunk: a whole-prompt job
    else:
        assert d.run is job


class GPULike(UnitPredictor):
    """A forward's fixed part dominates (embed = final = 10 ms): batching short prompts pays."""

    def op_cost(self, kind, shape, logits):
        return 0.01 if kind in ("embed", "final") else super().op_cost(kind, shape, logits)


def gpu_cost(tokens: int) -> float:
    return 0.02 + 4 * 1e-4 * tokens


def _scheduler_with_blocker(predictor=None, **kw):
    """A scheduler busy with a non-preemptible job 'x' (granularity none)."""
    s = Scheduler(policy(granularity="none", **kw), predictor or UnitPredictor(),
                  kw.pop("kv", None))
    x = s.on_event(Arrival(req("x", 0.0, 100, 10.0)), 0.0).run
    return s, x


def _five_waiting(s):
    s.on_event(Arrival(req("a", 0.2, 100, 1.0)), 0.2)
    s.on_event(Arrival(req("b", 0.3, 250, 5.0)), 0.3)
    s.on_event(Arrival(req("c", 0.4, 150, 5.0)), 0.4)
    s.on_event(Arrival(req("d", 0.5, 50, 5.0)), 0.5)
    s.on_event(Arrival(req("e", 0.6, 40, 5.0)), 0.6)


def test_slo_aware_batching_forms_exactly_the_allowed_batch():
    s, x = _scheduler_with_blocker(GPULike(), batching=True, token_bound=300, alpha=0.1)
    _five_waiting(s)
    # at now = 1.0 head a has deadline - now = 0.2 >= alpha * SLO = 0.1 (not urgent); b:
    # a+b = 350 > token_bound; c: a+c leaves slack 0.2 - cost(250) < 0.1; d, then e: slack
    # 0.2 - cost(190) >= 0.1, and each pays (10+ ms saved for 3 and 2 waiting behind)
    assert 0.2 - gpu_cost(250) < 0.1 <= 0.2 - gpu_cost(190)
    d = s.on_event(Completion(x.job_id), 1.0)
    assert ids(d.run) == ("a", "d", "e")
    assert s.num_waiting == 2


def test_batching_where_time_grows_with_tokens_pays_only_behind_a_long_queue():
    # UnitPredictor: 2 ms per forward + 0.4 ms per token. d joining a would delay a by 20 ms
    # to save 2 ms for d and each of the 3 behind it: not worth it; so a runs alone
    s, x = _scheduler_with_blocker(batching=True, token_bound=300, alpha=0.1)
    _five_waiting(s)
    assert ids(s.on_event(Completion(x.job_id), 1.0).run) == ("a",)
    # behind 30 others, the 2 ms it saves each of them outweighs the 20 ms it costs a
    s, x = _scheduler_with_blocker(batching=True, token_bound=300, alpha=0.1)
    _five_waiting(s)
    for i in range(30):
        s.on_event(Arrival(req(f"q{i}", 0.7, 200, 50.0)), 0.7)
    assert ids(s.on_event(Completion(x.job_id), 1.0).run)[:2] == ("a", "d")


def test_urgent_head_runs_alone():
    s, x = _scheduler_with_blocker(batching=True, token_bound=2048, alpha=0.1)
    s.on_event(Arrival(req("a", 0.0, 100, 1.05)), 0.1)  # deadline - now = 0.05 < 0.105
    s.on_event(Arrival(req("b", 0.2, 100, 5.0)), 0.2)
    assert ids(s.on_event(Completion(x.job_id), 1.0).run) == ("a",)


def test_alpha_zero_is_plain_token_budget_batching():
    s, x = _scheduler_with_blocker(order="fcfs", batching=True, token_bound=300, alpha=0.0)
    for i, n in enumerate((100, 250, 150, 50, 40)):
        s.on_event(Arrival(req(f"r{i}", 0.1 * i, n, 0.01)), 0.1 * i)  # all hopeless: ignored
    assert ids(s.on_event(Completion(x.job_id), 1.0).run) == ("r0", "r2", "r3")


def test_request_waits_until_its_kv_blocks_are_free():
    kv = BlockBudget(20, block_size=16)
    held = kv.allocate(160)  # 10 blocks pinned by some other job
    s = Scheduler(policy(granularity="none"), UnitPredictor(), kv)
    d = s.on_event(Arrival(req("big", 0.0, 200, 10.0)), 0.0)  # needs 13 blocks
    assert d.run is None and s.num_waiting == 1
    d = s.on_event(Arrival(req("small", 0.1, 100, 10.0)), 0.1)  # 7 blocks: fits, goes first
    assert ids(d.run) == ("small",)
    kv.allocate(100)
    d = s.on_event(Arrival(req("huge", 0.2, 400, 10.0)), 0.2)  # 25 > 20 blocks: never fits
    assert [r.request_id for r in d.rejected] == ["huge"]
    assert "KV blocks" in d.rejected[0].reason
    kv.free(held)
    kv.free(7)
    assert ids(s.on_event(Completion(d.run.job_id), 0.5).run) == ("big",)


def test_hopeless_requests_are_demoted():
    # "ok" has 1.058 s of slack at 0.9 s but the hopeless request costs 0.402 s: it goes
    # first under S-EDF only because ok's slack absorbs it (see the next test); here ok has
    # too little slack (0.2 s) and runs first; plain EDF runs the earlier deadline.
    for order, first in (("sedf", "ok"), ("edf", "hopeless")):
        s, x = _scheduler_with_blocker(order=order)
        s.on_event(Arrival(req("hopeless", 0.0, 1000, 1.1)), 0.0)  # needs 0.402 s by 1.1
        s.on_event(Arrival(req("ok", 0.0, 100, 1.142)), 0.0)
        d = s.on_event(Completion(x.job_id), 0.9)
        assert ids(d.run) == (first,), order
        assert s.queue.is_demoted("hopeless") is (order == "sedf")


def test_late_request_runs_first_when_the_feasible_work_absorbs_it():
    s, x = _scheduler_with_blocker()
    s.on_event(Arrival(req("late", 0.0, 100, 0.5)), 0.0)  # 0.042 s, due at 0.5: missed at 0.9
    s.on_event(Arrival(req("ok", 0.0, 1000, 10.0)), 0.0)  # 0.402 s, 8.7 s of slack
    d = s.on_event(Completion(x.job_id), 0.9)
    assert ids(d.run) == ("late",)
    # without the slack to absorb it, the late one waits: ok due 0.402 + 0.03 s from now
    s, x = _scheduler_with_blocker()
    s.on_event(Arrival(req("late", 0.0, 100, 0.5)), 0.0)
    s.on_event(Arrival(req("ok", 0.0, 1000, 0.9 + 0.432)), 0.0)
    assert ids(s.on_event(Completion(x.job_id), 0.9).run) == ("ok",)


def test_late_arrival_preempts_a_long_job_with_slack():
    s = Scheduler(policy(), UnitPredictor())
    long_job = s.on_event(Arrival(req("long", 0.0, 4000, 100.0)), 0.0).run
    d = s.on_events([Progress(long_job.job_id, 3), Arrival(req("short", 0.5, 32, 0.01))], 0.6)
    assert ids(d.run) == ("short",) and d.suspend == (long_job.job_id,)


def test_moore_hodgson_function():
    # EDF alone meets 1 of 3 (5, 7 > 6, 9 > 7); dropping the longest meets 2.
    items = [(5.0, 5.0, "j1"), (6.0, 2.0, "j2"), (7.0, 2.0, "j3")]
    assert moore_hodgson(items, start=0.0) == ["j1"]
    assert moore_hodgson(items, start=-10.0) == []


@pytest.mark.parametrize("reject", [False, True])
def test_moore_hodgson_drops_the_longest(reject):
    s, x = _scheduler_with_blocker(drop="moore_hodgson", reject=reject)
    now = 1.0
    # costs: j1 0.402, j2 0.042, j3 0.042; each alone feasible, j1 first makes j2/j3 miss
    s.on_event(Arrival(req("j1", 0.5, 1000, now - 0.5 + 0.41)), 0.5)
    s.on_event(Arrival(req("j2", 0.5, 100, now - 0.5 + 0.42)), 0.5)
    s.on_event(Arrival(req("j3", 0.5, 100, now - 0.5 + 0.43)), 0.5)
    d = s.on_event(Completion(x.job_id), now)
    assert ids(d.run) == ("j2",)
    assert [r.request_id for r in d.rejected] == (["j1"] if reject else [])
    assert s.queue.is_demoted("j1") is (not reject)
    # plain S-EDF (demote) runs j1 first: nobody is individually hopeless
    s2, x2 = _scheduler_with_blocker()
    for r in ("j1", "j2", "j3"):
        n = 1000 if r == "j1" else 100
        s2.on_event(Arrival(req(r, 0.5, n, {"j1": 0.91, "j2": 0.92, "j3": 0.93}[r])), 0.5)
    assert ids(s2.on_event(Completion(x2.job_id), now).run) == ("j1",)


def test_abort_waiting_and_running():
    s = Scheduler(policy(), UnitPredictor())
    job = s.on_event(Arrival(req("a", 0.0, 100, 1.0)), 0.0).run
    s.on_event(Arrival(req("b", 0.0, 100, 5.0)), 0.0)
    assert s.on_event(Abort("b"), 0.01).run is job and s.num_waiting == 0
    d = s.on_event(Abort("a"), 0.02)
    assert d.drop == (job.job_id,) and d.run is None


def test_priority_order():
    p = policy(order="priority", granularity="none", class_priority={"urgent": 0, "relaxed": 1})
    s = Scheduler(p, UnitPredictor())
    x = s.on_event(Arrival(req("x", 0.0, 100, 10.0)), 0.0).run
    s.on_event(Arrival(req("r", 0.1, 100, 0.5, "relaxed")), 0.1)
    s.on_event(Arrival(req("o", 0.2, 100, 0.5, "other")), 0.2)
    s.on_event(Arrival(req("u", 0.3, 100, 9.0, "urgent")), 0.3)
    order = []
    d = s.on_event(Completion(x.job_id), 1.0)
    while d.run is not None:
        order.append(d.run.request_ids[0])
        d = s.on_event(Completion(d.run.job_id), 1.0)
    assert order == ["u", "r", "o"]


def test_late_work_is_not_absorbed_when_recent_arrivals_fill_the_worker():
    """The same situation as above, after 12 s of arrivals worth more than the worker can do:
    the slack is kept for what keeps arriving, and the late request waits."""
    s, x = _scheduler_with_blocker()
    for i in range(20):  # 2 s of work every 0.5 s for 10 s: four times what fits
        s.on_event(Arrival(req(f"busy{i}", 0.5 * i, 5000, 1000.0)), 0.5 * i)
    assert s.load.at(12.0) > 1.0 and s.queue.num_ready <= MAX_SCAN
    s.on_event(Arrival(req("late", 11.0, 100, 0.5)), 11.0)
    s.on_event(Arrival(req("ok", 11.0, 1000, 100.0)), 11.0)
    assert ids(s.on_event(Completion(x.job_id), 12.0).run) != ("late",)


def test_load_estimate_decays_with_time():
    from flowprefill.scheduler.load import Load

    load = Load(window=10.0)
    assert load.at(0.0) == 0.0
    for i in range(100):  # one second of work each second
        load.add(float(i), 1.0)
    assert 0.9 < load.at(99.0) < 1.1
    assert load.at(99.0 + 10 * 10.0) < 1e-4 * load.at(99.0)


@pytest.mark.parametrize("blocks", [2, 3])
def test_decode_tokens_ride_a_job_with_the_blocks_admission_kept_for_them(blocks):
    """A decoding sequence whose last block is full needs a new block for its next token.
    Admission keeps it free: with 2 blocks the new prompt waits and the sequence steps; with
    3 the prompt runs and the sequence's token rides its job, its block counted."""
    kv = BlockBudget(blocks, block_size=16)
    s = Scheduler(policy(granularity="none", batching=False), UnitPredictor(), kv, decode=True)
    d = s.on_event(Arrival(req("a", 0.0, 16, 1.0)), 0.0)
    kv.allocate(16)  # as the engine does when it starts the job: one full block
    d = s.on_event(Completion(d.run.job_id), 0.01)  # "a" decodes from here
    assert d.decode == ("a",)
    d = s.on_event(Arrival(req("b", 0.011, 16, 1.0)), 0.011)  # one block for its prompt
    if blocks == 2:
        assert d.run is None and d.decode == ("a",)
    else:
        assert ids(d.run) == ("b",) and [r.request_id for r in d.run.riders] == ["a"]
        assert d.decode == () and s._new_blocks == 2  # the prompt's block and the rider's
