"""`python runners/device_check.py out=DIR`: everything that needs a GPU, in one process.

On a CUDA machine (one H100/H200 class GPU, under 8 minutes) it checks and measures:
  equivalence  the device in bf16 against the CPU in fp32 on the same weights (the tiny model
               and a 2-layer slice of the qwen2_7b architecture); flashinfer against SDPA
               where flashinfer is installed;
  bench_ops    operator-by-operator vs monolithic prefill tokens/s at 2k and 8k tokens on the
               qwen2_7b architecture (random bf16 weights), the engine's sliced plan, and
               transformers' forward on the same weights; MFU against a bf16 matmul rate
               measured in the same run;
  preemption   a 16k-token prefill running while 256-token urgent requests arrive at random
               times, flowprefill vs fcfs, for each launch_ahead: preemption latency p50/p99
               read from device events, urgent TTFT;
  decode       decode tokens/s at batch 1 and 32.
It writes DIR/device_check.json (sections device, equivalence, bench_ops, preemption, decode)
and prints a short table last. On a CPU the same steps run on the tiny model at small sizes
(a test runs it), so the script cannot rot while no GPU is at hand; its numbers are then the
CPU's and must never be reported as a GPU's.

It needs only torch, numpy, transformers and the wheels `make device-wheels` builds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from device_steps import (  # noqa: E402
    Sizes,
    bench_ops,
    decode_rates,
    device_info,
    equivalence,
    preemption,
    table,
)

from flowprefill.config import register_configs  # noqa: E402

KEYS = frozenset({"out", "small", "repeats", "seed", "launch_ahead", "policies", "urgent"})


def run(out: Path, small: bool | None = None, repeats: int = 3, seed: int = 0,
        launch_ahead: tuple[int, ...] = (0, 1, 2, 4),
        policies: tuple[str, ...] = ("flowprefill", "fcfs"), urgent: int = 6) -> dict:
    """All sections; `small` None: small sizes on a CPU, full sizes on a GPU."""
    info = device_info()
    sizes = Sizes.for_device(info["device"], small)
    report = {"device": info, "sizes": sizes.__dict__}
    steps = [("equivalence", lambda: equivalence(sizes, seed)),
             ("bench_ops", lambda: bench_ops(sizes, repeats, seed)),
             ("preemption", lambda: preemption(sizes, launch_ahead, policies, urgent, seed)),
             ("decode", lambda: decode_rates(sizes, repeats, seed))]
    out.mkdir(parents=True, exist_ok=True)
    for name, step in steps:
        print(f"device_check: {name} ...", flush=True)
        try:
            report[name] = step()
        except Exception as e:  # noqa: BLE001 - one failed step must not lose the others
            report[name] = {"error": f"{type(e).__name__}: {e}"}
        (out / "device_check.json").write_text(json.dumps(report, indent=2))  # as we go
    print(table(report))
    return report


register_configs()


@hydra.main(config_path="../conf", config_name="device_check", version_base="1.3")
def main(cfg: DictConfig) -> None:
    unknown = set(cfg) - KEYS
    if unknown:
        raise SystemExit(f"device_check: unknown config key(s) {sorted(unknown)}")
    out = Path(hydra.utils.to_absolute_path(cfg.out))
    report = run(out, cfg.small, cfg.repeats, cfg.seed, tuple(cfg.launch_ahead),
                 tuple(cfg.policies), cfg.urgent)
    failed = [k for k in ("equivalence", "bench_ops", "preemption", "decode")
              if "error" in report[k]]
    print(f"wrote {out / 'device_check.json'}")
    if failed:
        raise SystemExit(f"device_check: failed steps {failed}")


if __name__ == "__main__":
    main()
