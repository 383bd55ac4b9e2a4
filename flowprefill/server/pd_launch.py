"""Starting and stopping the worker processes of `deploy=pd` on this machine.

Each worker is `serve.py` again, run on the parent's resolved config (written to a temporary
directory, so it holds whatever composed it: command-line overrides, a runner's config file)
plus its role and port; a worker started here and one started by hand on another machine are
the same program. Workers
die with their parent (Linux `PR_SET_PDEATHSIG`), so even a SIGKILLed parent leaves no
orphans; a normal shutdown sends SIGTERM and escalates to SIGKILL after a grace period.
Must not know about engines or HTTP routes beyond `/health`.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger("flowprefill.pd_launch")
SERVE = Path(__file__).resolve().parents[2] / "serve.py"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux: the parent's shutdown path still stops the workers
        pass


@dataclass
class WorkerProc:
    role: str
    url: str
    proc: subprocess.Popen


class WorkerGroup:
    """The prefill and decode worker processes started by one `serve.py deploy=pd`."""

    def __init__(self, configs: dict[str, Any], max_decode_batch: int) -> None:
        self.procs: list[WorkerProc] = []
        self._dir = tempfile.mkdtemp(prefix="flowprefill-pd-")
        cfg = {name: dataclasses.asdict(c) for name, c in configs.items()}
        cfg["max_decode_batch"] = max_decode_batch
        self._config = Path(self._dir, "worker.yaml")
        # JSON is YAML; Hydra reads the file as serve.py's primary config
        self._config.write_text(json.dumps(cfg, indent=1))

    def spawn(self, role: str, host: str, port: int) -> WorkerProc:
        args = [sys.executable, str(SERVE), f"--config-path={self._dir}",
                "--config-name=worker", f"deploy.role={role}", f"deploy.port={port}",
                f"deploy.worker_host={host}", f"hydra.run.dir={self._dir}",
                "hydra.output_subdir=null"]
        proc = subprocess.Popen(args, preexec_fn=_die_with_parent,  # noqa: PLW1509
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        connect = "127.0.0.1" if host in ("0.0.0.0", "") else host
        w = WorkerProc(role, f"http://{connect}:{port}", proc)
        self.procs.append(w)
        log.info("started %s worker pid %d on %s", role, proc.pid, w.url)
        return w

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(self.procs)
        while pending:
            for w in list(pending):
                if w.proc.poll() is not None:
                    raise RuntimeError(f"{w.role} worker {w.url} exited with "
                                       f"{w.proc.returncode} during startup")
                try:
                    if httpx.get(w.url + "/health", timeout=1.0).status_code == 200:
                        pending.remove(w)
                except httpx.HTTPError:
                    pass
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"workers not healthy after {timeout} s: "
                                   f"{[w.url for w in pending]}")
            time.sleep(0.2)

    def stop(self, grace: float = 15.0) -> None:
        for w in self.procs:
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for w in self.procs:
            try:
                w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s worker pid %d ignored SIGTERM; killing it", w.role, w.proc.pid)
                w.proc.kill()
                w.proc.wait()
        self.procs.clear()
        shutil.rmtree(self._dir, ignore_errors=True)
