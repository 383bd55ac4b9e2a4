"""runners/bench_peers.py's ratios: of the medians, and paired per round (the same round's
runs share the machine's state, so a drift between rounds cancels in each pair)."""

import sys

import pytest

from tests.server_proc import ROOT

sys.path.insert(0, str(ROOT / "runners"))
bench_peers = pytest.importorskip("bench_peers")


def _engine(ttfts, tpots, urgent):
    runs = [{"mean_ttft_ms": a, "mean_tpot_ms": b} for a, b in zip(ttfts, tpots, strict=True)]
    return {"uniform_runs": runs, "hol": {"urgent_ttft_s": urgent},
            "uniform": {"mean_ttft_ms": sorted(ttfts)[1], "mean_tpot_ms": sorted(tpots)[1]}}


def test_paired_ratios_are_per_round_the_plain_ones_of_the_medians():
    # FlowPrefill is 1.2x the peer in rounds 0 and 1 (the machine 3x slower in round 1); in
    # round 2 the peer alone was slowed: the medians of the runs come from different rounds
    fp = _engine([120, 360, 130], [30, 90, 32], 0.05)
    peer = _engine([100, 300, 300], [25, 75, 80], 2.5)
    r = bench_peers.ratios({"flowprefill": fp, "vllm": peer})["vllm"]
    assert r["paired_mean_ttft"] == pytest.approx(1.2)
    assert r["paired_mean_tpot"] == pytest.approx(1.2)
    assert r["mean_ttft"] == pytest.approx(130 / 300)
    assert r["mean_tpot"] == pytest.approx(32 / 75)
    assert r["urgent_ttft"] == pytest.approx(0.02)


def test_every_round_sends_new_prompts():
    # a peer with a prefix cache must not find a round's prompts cached from an earlier one
    seeds = [bench_peers.round_seed(i) for i in range(5)]
    assert len(set(seeds)) == 5 and bench_peers.WARMUP_SEED not in seeds
