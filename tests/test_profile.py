"""runners/profile_ops.py on a 1-layer model over a mini grid: rows written, resumable, identity
checked; and the grid itself."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from flowprefill.config import EngineConfig, HardwareConfig, ModelConfig
from flowprefill.predictor.profile_data import (
    ProfileGrid,
    grid_points,
    meta_of,
    prompt_lengths,
    read_rows,
    samples,
)
from tests.cpu_fp32 import CPU_FP32

ROOT = Path(__file__).resolve().parents[1]
MODEL = ModelConfig(num_layers=1, hidden_size=64, intermediate_size=128, num_heads=2,
                    num_kv_heads=1, vocab_size=512, max_position=1024)
ENGINE = EngineConfig(**CPU_FP32, num_kv_blocks=256)
MINI = ProfileGrid(min_len=8, max_len=256, log_points=5, tail_points=2, batch_sizes=(2,),
                   batch_lens=(16,), mixed_batches=((8, 24),), chunk_sizes=(32,),
                   chunk_prefixes=(64,), decode_batches=(2,), decode_contexts=(32,))


def load_runner(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_runner", ROOT / f"runners/{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def profile_mod():
    return load_runner("profile_ops")


def test_grid_lengths_span_and_cases():
    lens = prompt_lengths(ProfileGrid(), 32768)
    assert lens[0] == 16 and lens[-1] == 16384 and lens == sorted(set(lens))
    assert len([n for n in lens if n > 8192]) >= 6  # the linear tail
    assert prompt_lengths(ProfileGrid(), 4096)[-1] == 4096  # capped by the model's limit
    cases = {p.case for p in grid_points(MINI, 1024)}
    assert cases == {"prompt", "batch", "chunk", "decode"}
    assert grid_points(MINI, 1024) == grid_points(MINI, 1024)  # seeded order


def test_profile_writes_rows_and_resumes(profile_mod, tmp_path):
    out = tmp_path / "prof"
    f = profile_mod.run(MODEL, ENGINE, HardwareConfig(), MINI, out, warmup=0, repeats=2,
                        warmup_max_tokens=64, progress=False)
    rows = read_rows(out)
    points = [r for r in rows if r["type"] == "point"]
    assert len(points) == len(grid_points(MINI, MODEL.max_position))
    meta = meta_of(rows)
    assert meta["model"] == "tiny" and meta["num_layers"] == 1 and meta["device"] == "cpu"
    assert "torch" in meta["machine"] and meta["settings"]["repeats"] == 2
    assert meta["timed_on"] == "engine_thread"  # timed as the engine's prefill thread runs
    for s in samples(rows):
        assert s.e2e > 0
        if s.point.case != "decode":
            assert set(s.ops) == {"embed", "attention", "mlp", "final"}
            assert sum(s.ops.values()) <= s.e2e * 1.01  # one op of each kind per layer here
    # interrupted: drop the last two points and a half-written line; rerun measures only those
    lines = f.read_text().splitlines()
    f.write_text("\n".join(lines[:-2]) + '\n{"type": "poi')
    profile_mod.run(MODEL, ENGINE, HardwareConfig(), MINI, out, warmup=0, repeats=1,
                    warmup_max_tokens=64, progress=False)
    rows = read_rows(out)
    keys = [json.dumps([r["case"], r["shape"], r["logits"]]) for r in rows
            if r["type"] == "point"]
    assert len(keys) == len(set(keys)) == len(points)
    assert sum(r["type"] == "meta" for r in rows) == 2
    with pytest.raises(ValueError, match="other settings"):
        profile_mod.run(MODEL, EngineConfig(device="cpu", num_kv_blocks=256, dtype="bfloat16"),
                        HardwareConfig(), MINI, out, warmup=0, repeats=1, warmup_max_tokens=0,
                        progress=False)


def test_thread_cpu_clock_needs_a_single_threaded_cpu_engine(profile_mod, tmp_path):
    with pytest.raises(ValueError, match="threads=1"):
        profile_mod.run(MODEL, ENGINE, HardwareConfig(), MINI, tmp_path, warmup=0, repeats=1,
                        warmup_max_tokens=0, progress=False, clock="thread_cpu")
    profile_mod.check_clock("thread_cpu", EngineConfig(**CPU_FP32, threads=1))


def test_run_in_thread_sets_up_the_thread_as_an_engine_thread():
    import threading

    import torch

    from flowprefill.executor import ModelRunner

    before = torch.get_num_threads()
    try:
        runner = ModelRunner(MODEL, EngineConfig(**CPU_FP32, num_kv_blocks=16, threads=1))

        def probe() -> tuple[str, int, bool]:
            return (threading.current_thread().name, torch.get_num_threads(),
                    torch.is_inference_mode_enabled())

        # engine.threads reaches the new thread (OpenMP settings do not carry over)
        assert runner.run_in_thread(probe) == ("runner-work", 1, True)

        def boom() -> None:
            raise KeyError("from the worker thread")

        with pytest.raises(KeyError, match="from the worker thread"):
            runner.run_in_thread(boom)
    finally:
        torch.set_num_threads(before)
