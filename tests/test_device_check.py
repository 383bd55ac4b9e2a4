"""runners/device_check.py end to end on this machine: on a CPU it runs every step on the
tiny model at small sizes, so the script that will first run on a GPU cannot rot here. Its
numbers are the CPU's; nothing here is a GPU result."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from tests.server_proc import ROOT


@pytest.fixture(scope="module")
def device_check():
    sys.path.insert(0, str(ROOT / "runners"))
    spec = importlib.util.spec_from_file_location("device_check_runner",
                                                  ROOT / "runners/device_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_every_section_runs_and_is_written(device_check, tmp_path, capsys):
    report = device_check.run(tmp_path, small=True, repeats=1, launch_ahead=(0, 2),
                              policies=("flowprefill", "fcfs"), urgent=3)
    on_disk = json.loads((tmp_path / "device_check.json").read_text())
    assert set(on_disk) >= {"device", "equivalence", "bench_ops", "preemption", "decode"}
    for section in ("equivalence", "bench_ops", "preemption", "decode"):
        assert "error" not in on_disk[section], on_disk[section]
    assert report["equivalence"]["tiny"]["ok"]
    bench = on_disk["bench_ops"]["tokens"]
    assert set(bench) == {"256", "1024"}
    assert all(r["monolithic_tok_s"] > 0 and r["sliced_units"] >= 10 for r in bench.values())
    runs = on_disk["preemption"]["runs"]
    assert set(runs) == {f"{p}/launch_ahead={la}" for p in ("flowprefill", "fcfs")
                         for la in (0, 2)}
    assert all(runs[f"fcfs/launch_ahead={la}"]["preemptions"] == 0 for la in (0, 2))
    assert any(runs[f"flowprefill/launch_ahead={la}"]["preemptions"] > 0 for la in (0, 2))
    assert set(on_disk["decode"]["batches"]) == {"1", "8"}
    assert "device_check on CPU" in capsys.readouterr().out
