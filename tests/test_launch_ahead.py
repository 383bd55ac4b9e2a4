"""The bounded launch-ahead window, on a device model whose completions the test controls
(tests/engine_harness.py: a stand-in for a CUDA stream, not a GPU): the host never runs more
than `launch_ahead` units ahead of the device, a switch waits for at most that many queued
units of the old job, and preemption latency is read from device completions, not from
host launch times."""

from __future__ import annotations

import asyncio

import pytest

from flowprefill.config import EngineConfig, ModelConfig, PolicyConfig
from flowprefill.core import SLO, Arrival, Request, SamplingParams, VirtualClock
from flowprefill.engine.local import BlockManagerView
from flowprefill.engine.loop import EngineLoop
from flowprefill.engine.sources import ScriptedSource
from flowprefill.engine.streams import OutputStream
from flowprefill.executor import ModelRunner
from flowprefill.metrics import RequestRecord
from flowprefill.scheduler import Scheduler
from tests.cpu_fp32 import CPU_FP32
from tests.engine_harness import DeviceModel, ModelTimeline, predicted_cost
from tests.test_scheduler_helpers import UnitPredictor

MODEL = ModelConfig(name="t", vocab_size=256, hidden_size=32, intermediate_size=64,
                    num_layers=2, num_heads=2, num_kv_heads=1, max_position=4096,
                    eos_token_id=None)
UNIT = 0.01  # the long job's units: 100 rows x 1e-4 s per row


def run(launch_ahead: int, urgent_at: float):
    """A 1,000-token job sliced into 10 ms units; a 16-token urgent request arriving at
    `urgent_at`. Returns (loop, device model, timeline, records)."""
    pred = UnitPredictor(num_layers=2)
    runner = ModelRunner(MODEL, EngineConfig(**CPU_FP32, num_kv_blocks=128))
    clock = VirtualClock(0.0)
    device = DeviceModel(clock, predicted_cost(pred))
    timeline = ModelTimeline(device)
    sched = Scheduler(PolicyConfig(batching=False), pred, BlockManagerView(runner.blocks),
                      max_unit_s=UNIT)
    requests = [Request("long", 0.0, 1000, SLO(ttft=100.0), prompt_token_ids=(1,) * 1000),
                Request("urgent", urgent_at, 16, SLO(ttft=0.05), prompt_token_ids=(2,) * 16)]
    aloop = asyncio.new_event_loop()
    streams = {r.request_id: OutputStream(r, SamplingParams(max_tokens=1), aloop,
                                          RequestRecord.for_request(r)) for r in requests}
    source = ScriptedSource(clock, [(r.arrival, Arrival(r)) for r in requests])
    handoff = lambda s, tok: runner.free(s.request.request_id)  # noqa: E731 - prefill only
    loop = EngineLoop(runner, sched, clock, streams, source, on_prefilled=handoff,
                      launch_ahead=launch_ahead, timelines=(timeline, ModelTimeline(device)))
    loop.run()
    aloop.close()
    return loop, device, timeline, {rid: s.record for rid, s in streams.items()}


@pytest.mark.parametrize("launch_ahead", [0, 1, 2, 4])
def test_host_stays_within_the_window_and_switches_within_it(launch_ahead):
    urgent_at = 0.1234  # inside a unit of the long job
    loop, device, timeline, recs = run(launch_ahead, urgent_at)
    assert timeline.outstanding_max == launch_ahead  # exactly the window, never more
    # the switch: the urgent job's first unit starts on the device after at most
    # `launch_ahead` queued units of the long job, plus the one running at the arrival
    (latency,) = loop.preemption_latencies
    assert latency <= (launch_ahead + 1) * UNIT + 1e-9
    assert recs["long"].preemptions == 1
    assert recs["urgent"].ttft <= (launch_ahead + 1) * UNIT + UnitPredictor().isolated_ttft(16)


def test_preemption_latency_is_read_from_device_completions():
    urgent_at = 0.1234
    loop, device, _, recs = run(2, urgent_at)
    (latency,) = loop.preemption_latencies
    # the urgent job's first unit on the device: the first unit launched after the arrival
    # that belongs to it is where the device start jumps to it; find it in the model's log
    starts = [start for launched, start, _ in device.launches if launched >= urgent_at]
    launches = [launched for launched, _, _ in device.launches if launched >= urgent_at]
    device_latency = starts[0] - urgent_at  # queued units of the long job ran first
    host_latency = launches[0] - urgent_at  # when the host launched it: earlier
    assert latency == pytest.approx(device_latency)
    assert host_latency < device_latency - UNIT / 2
    assert recs["long"].preemption_latencies == [pytest.approx(latency)]
