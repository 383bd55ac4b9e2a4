"""Starting a real `serve.py` in a subprocess on a free loopback port, for end-to-end tests.

The test model is `tiny` (random weights, fast): a server starts with `model=tiny` unless the
overrides choose a model group option themselves (serve.py's own default is a real model).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from flowprefill.server.pd_launch import free_port

ROOT = Path(__file__).resolve().parents[1]
LOGS = ROOT / ".pytest_cache" / "servers"


class ServerProcess:
    def __init__(self, *overrides: str, timeout: float = 120.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
        model = [] if any(o.startswith("model=") for o in overrides) else ["model=tiny"]
        args = [sys.executable, str(ROOT / "serve.py"), f"server.port={self.port}",
                f"hydra.run.dir={LOGS}", "hydra.output_subdir=null", *model, *overrides]
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log_path = LOGS / f"serve-{self.port}.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve.py exited with {self.proc.returncode}: {self.logs()}")
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"serve.py did not become healthy: {self.logs()}")

    def logs(self) -> str:
        self.log.flush()
        return self.log_path.read_text()[-4000:]

    def stats(self) -> dict:
        return httpx.get(self.url + "/internal/stats", timeout=5.0).json()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        return self.proc.returncode
