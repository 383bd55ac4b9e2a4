"""Starting and stopping the worker processes of `deploy=pd` on this machine.

Each worker is `serve.py` again, run on the parent's resolved config (written to a temporary
directory, so it holds whatever composed it: command-line overrides, a runner's config file)
plus its role and port; a worker started here and one started by hand on another machine are
the same program. Workers
die with their parent (Linux `PR_SET_PDEATHSIG`), so even a SIGKILLed parent leaves no
orphans; they run in their own process group, so a terminal's Ctrl-C reaches only the parent,
which drains the proxy first and then stops them (SIGTERM, SIGKILL after a grace period).
A worker that dies while serving is restarted on the same port by a supervisor thread (the
proxy's health poll routes to it again once it answers). Must not know about engines or HTTP
routes beyond `/health`.
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
import threading
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
    os.setpgid(0, 0)  # no terminal signals (same session: same scheduler autogroup)
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux: the parent's shutdown path still stops the workers
        pass


@dataclass
class WorkerProc:
    role: str
    host: str
    port: int
    proc: subprocess.Popen
    devices: str | None = None  # its CUDA_VISIBLE_DEVICES (None: inherited)
    restarts: int = 0

    @property
    def url(self) -> str:
        connect = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{connect}:{self.port}"


class WorkerGroup:
    """The prefill and decode worker processes started by one `serve.py deploy=pd`."""

    def __init__(self, configs: dict[str, Any], max_decode_batch: int, max_restarts: int = 0,
                 restart_delay: float = 1.0) -> None:
        if max_restarts < 0:
            raise ValueError(f"deploy.max_restarts must be >= 0, not {max_restarts}")
        if restart_delay < 0:
            raise ValueError(f"deploy.restart_delay must be >= 0, not {restart_delay}")
        self.procs: list[WorkerProc] = []
        self.max_restarts, self.restart_delay = max_restarts, restart_delay
        self._dir = tempfile.mkdtemp(prefix="flowprefill-pd-")
        cfg = {name: dataclasses.asdict(c) for name, c in configs.items()}
        cfg["max_decode_batch"] = max_decode_batch
        self._config = Path(self._dir, "worker.yaml")
        # JSON is YAML; Hydra reads the file as serve.py's primary config
        self._config.write_text(json.dumps(cfg, indent=1))
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # spawning vs stopping
        self._supervisor: threading.Thread | None = None

    def _popen(self, role: str, host: str, port: int, devices: str | None) -> subprocess.Popen:
        args = [sys.executable, str(SERVE), f"--config-path={self._dir}",
                "--config-name=worker", f"deploy.role={role}", f"deploy.port={port}",
                f"deploy.worker_host={host}", f"hydra.run.dir={self._dir}",
                "hydra.output_subdir=null"]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if devices is not None:  # the worker sees only its own GPU(s), as device 0 (1, ...)
            env["CUDA_VISIBLE_DEVICES"] = devices
        return subprocess.Popen(args, preexec_fn=_die_with_parent,  # noqa: PLW1509
                                env=env)

    def spawn(self, role: str, host: str, port: int, devices: str | None = None) -> WorkerProc:
        w = WorkerProc(role, host, port, self._popen(role, host, port, devices), devices)
        self.procs.append(w)
        log.info("started %s worker pid %d on %s", role, w.proc.pid, w.url)
        return w

    def supervise(self, interval: float = 0.2) -> None:
        """Restart workers that die from now on (in a daemon thread) until `stop()`."""
        if self.max_restarts > 0 and self._supervisor is None:
            self._supervisor = threading.Thread(target=self._watch, args=(interval,),
                                                name="pd-supervisor", daemon=True)
            self._supervisor.start()

    def _watch(self, interval: float) -> None:
        due: dict[int, float] = {}  # index in procs -> when its restart is due
        given_up: set[int] = set()
        while not self._stopping.wait(interval):
            for i, w in enumerate(self.procs):
                if i in given_up or w.proc.poll() is None:
                    continue
                if i not in due:
                    if w.restarts >= self.max_restarts:
                        log.error("%s worker %s exited with %s; not restarting it "
                                  "(deploy.max_restarts=%d reached)", w.role, w.url,
                                  w.proc.returncode, self.max_restarts)
                        given_up.add(i)
                        continue
                    delay = self.restart_delay * 2 ** w.restarts
                    log.warning("%s worker %s (pid %d) exited with %s; restarting it in "
                                "%.1f s", w.role, w.url, w.proc.pid, w.proc.returncode, delay)
                    due[i] = time.monotonic() + delay
                elif time.monotonic() >= due[i]:
                    del due[i]
                    with self._lock:  # (its death signal follows this thread: it lives
                        if self._stopping.is_set():  # until stop(), which stops it anyway)
                            return
                        w.proc = self._popen(w.role, w.host, w.port, w.devices)
                    w.restarts += 1
                    log.warning("restarted %s worker on %s as pid %d (restart %d of %d)",
                                w.role, w.url, w.proc.pid, w.restarts, self.max_restarts)

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
        with self._lock:
            self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join()
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
