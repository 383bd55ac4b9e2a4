"""`python runners/experiment.py [overrides]`: one live experiment on the real engine.

Starts `serve.py` (with this run's resolved server-side config, written to the run directory)
in a subprocess on a free port, waits for /health, runs the benchmark (once, or a
maximum-goodput search with `mode=max_goodput`), and shuts the server down cleanly (SIGINT,
then SIGKILL after a grace period). Hydra multirun sweeps policy x rate x SLO scale, and
`experiment=...` runs the same conf/experiment/*.yaml as runners/simulate.py on the real engine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import hydra
from omegaconf import DictConfig, OmegaConf

from flowprefill.config import register_configs
from flowprefill.metrics import max_goodput
from flowprefill.predictor import ORACLE

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import run as run_benchmark  # noqa: E402
from benchmark import spec_from_hydra  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SERVER_GROUPS = ("model", "engine", "policy", "predictor", "hardware", "server", "deploy",
                 "max_decode_batch")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """serve.py in its own process group, logging to `log_path`."""

    def __init__(self, overrides: list[str], log_path: Path, startup_timeout: float) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, str(ROOT / "serve.py"), *overrides,
                f"server.port={self.port}", "server.host=127.0.0.1",
                f"hydra.run.dir={log_path.parent}", "hydra.output_subdir=null"]
        self._log = open(log_path, "w")  # noqa: SIM115
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True, env=env)
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve.py exited ({self.proc.returncode}); see {log_path}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"serve.py not healthy after {startup_timeout} s; see {log_path}")

    def stop(self, grace: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


register_configs()


@hydra.main(version_base=None, config_path="../conf", config_name="live")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.predictor.kind == ORACLE:
        raise ValueError("predictor=oracle plans with the simulator's truth cost model; it "
                         "exists only in runners/simulate.py (the real engine is the truth)")
    server = Server(serve_config_args(cfg, run_dir), run_dir / "server.log",
                    cfg.startup_timeout)
    try:
        summary = run_live(cfg, server.url, run_dir)
    finally:
        code = server.stop()
    summary = {"experiment": cfg.exp.name, "runs_on": cfg.target,
               "arm": hc.runtime.choices.get("arm")} | summary
    summary["server_exit_code"] = code
    out = Path(cfg.out) if cfg.out else run_dir / "summary.json"
    out.write_text(json.dumps(summary, indent=2, default=str))
    print(f"{cfg.policy.name}: ttft attainment {summary.get('ttft_attainment', 0.0):.3f}, "
          f"goodput {summary.get('goodput_rps', 0.0):.3f} req/s -> {out}")


def serve_config_args(cfg: DictConfig, run_dir: Path) -> list[str]:
    """serve.py's config: this run's resolved server-side groups (experiments and arms
    included), written to the run directory and passed as serve.py's primary config."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    path = run_dir / "serve_config.yaml"
    OmegaConf.save(OmegaConf.create({k: resolved[k] for k in SERVER_GROUPS if k in resolved}),
                   path)
    return [f"--config-path={run_dir.resolve()}", f"--config-name={path.stem}"]


def run_live(cfg: DictConfig, url: str, run_dir: Path) -> dict:
    """One replay at workload.rate_scale (mode=replay), or the maximum-goodput search with
    one probe per sub-directory and the best probe's files copied up (mode=max_goodput)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    truth = resolved.get("truth") or {}
    bench = OmegaConf.create({
        **resolved, "url": url, "served_model": None, "label": cfg.policy.name,
        "api_key": cfg.server.api_key,
        # bands SLOs are priced by `truth` when set, so every predictor faces the same SLOs
        "predictor": truth if truth.get("kind") else resolved["predictor"]})
    spec = spec_from_hydra(bench, run_dir)
    if cfg.get("mode", "replay") == "replay":
        return run_benchmark(spec, resolved)
    s = cfg.search
    probes: dict[float, Path] = {}

    def probe(scale: float) -> dict:
        probes[scale] = run_dir / f"probe_{len(probes)}_r{scale:.4g}"
        workload = dataclasses.replace(spec.workload, rate_scale=scale)
        return run_benchmark(dataclasses.replace(spec, workload=workload,
                                                 run_dir=probes[scale]), resolved)

    found = max_goodput(probe, lo=s.lo, hi=s.hi, target=s.target, iters=s.iters,
                        start=s.start, rtol=s.rtol)
    best_dir = probes.get(found["max_rate_scale"])
    if best_dir is not None:
        for name in ("records.jsonl", "tables"):
            if (best_dir / name).is_file():
                shutil.copy(best_dir / name, run_dir / name)
            elif (best_dir / name).is_dir():
                shutil.copytree(best_dir / name, run_dir / name, dirs_exist_ok=True)
    return (found.get("best") or {}) | {
        "mode": "max_goodput", "max_goodput_rps": found["max_goodput_rps"],
        "max_rate_scale": found["max_rate_scale"], "target": s.target,
        "points": found["points"]}


if __name__ == "__main__":
    main()
