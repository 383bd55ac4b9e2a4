"""`python runners/experiment.py [overrides]`: one live experiment on the real engine.

Starts `serve.py` (with this run's server-side overrides) in a subprocess on a free port,
waits for /health, runs the benchmark, and shuts the server down cleanly (SIGINT, then
SIGKILL after a grace period). Hydra multirun sweeps policy x rate x SLO scale.
"""

from __future__ import annotations

import json
import os
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import run as run_benchmark  # noqa: E402
from benchmark import spec_from_hydra  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SERVER_GROUPS = ("model", "engine", "policy", "predictor", "hardware", "server",
                 "max_decode_batch")


def server_overrides(task_overrides: list[str]) -> list[str]:
    """The command-line overrides that concern serve.py (group choices and their keys)."""
    out = []
    for o in task_overrides:
        key = o.lstrip("+~").split("=", 1)[0]
        if key.split(".", 1)[0] in SERVER_GROUPS:
            out.append(o)
    return out


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
    overrides = server_overrides(list(hc.overrides.task))
    server = Server(overrides, run_dir / "server.log", cfg.startup_timeout)
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
        bench = OmegaConf.create({**resolved, "url": server.url, "served_model": None,
                                  "label": cfg.policy.name, "api_key": cfg.server.api_key})
        summary = run_benchmark(spec_from_hydra(bench, run_dir), resolved)
    finally:
        code = server.stop()
    summary["server_exit_code"] = code
    out = Path(cfg.out) if cfg.out else run_dir / "summary.json"
    out.write_text(json.dumps(summary, indent=2, default=str))
    print(f"{cfg.policy.name}: ttft attainment {summary['ttft_attainment']:.3f}, goodput "
          f"{summary['goodput_rps']:.3f} req/s -> {out}")


if __name__ == "__main__":
    main()
