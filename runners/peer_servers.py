"""Peer serving systems for runners/compare.py: vLLM's CPU build, started from `.venv-peers`.

Owns turning a `PeerConfig` (conf/peers/<name>.yaml: extra command-line args and env) into a
running OpenAI-compatible server on a free loopback port, and stopping it with its whole
process tree (vLLM runs an API server, an engine core and a worker process). Settings every
engine of a comparison shares (model directory, served name, dtype, context, KV memory,
compute threads) come from the caller, so a peer file holds only what makes it different.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from flowprefill.config import PeerConfig

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("vllm",)


@dataclass(frozen=True)
class Shared:
    """What every engine of a comparison gets alike."""

    model_dir: Path  # an HF directory (config.json, safetensors, tokenizer.json)
    served_name: str
    dtype: str  # float32 | bfloat16 | float16
    max_model_len: int
    kv_cache_gib: int  # KV cache memory (vLLM: VLLM_CPU_KVCACHE_SPACE)
    threads: int | None  # compute threads; None: the engine's own default
    seed: int = 0


def peer_executable(peer: PeerConfig) -> Path:
    """The peer venv's vllm entry point; a clear error naming `make peers` when absent."""
    if peer.kind not in KINDS:
        raise ValueError(f"peer kind {peer.kind!r} is unknown; known: {KINDS}")
    exe = ROOT / peer.venv / "bin" / "vllm"
    if not exe.is_file():
        raise FileNotFoundError(f"peer {peer.kind!r} needs {exe}, which is not installed: "
                                "run `make peers`")
    return exe


def vllm_command(peer: PeerConfig, shared: Shared, port: int) -> list[str]:
    return [str(peer_executable(peer)), "serve", str(shared.model_dir),
            "--served-model-name", shared.served_name, "--host", "127.0.0.1",
            "--port", str(port), "--dtype", shared.dtype,
            "--max-model-len", str(shared.max_model_len), "--seed", str(shared.seed),
            "--disable-uvicorn-access-log", *peer.args]


def vllm_env(peer: PeerConfig, shared: Shared, base: Mapping[str, str]) -> dict[str, str]:
    """Offline, CPU platform, the shared KV memory and threads; the peer's env wins."""
    env = dict(base, VLLM_TARGET_DEVICE="cpu", VLLM_CPU_KVCACHE_SPACE=str(shared.kv_cache_gib),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1",
               DO_NOT_TRACK="1", PYTHONUNBUFFERED="1")
    if shared.threads is not None:
        # vLLM's default on a small machine binds its worker to all cores but one (on 2
        # cores: one compute thread); `nobind` + OMP_NUM_THREADS gives it the same unbound
        # threads FlowPrefill's engine.threads gives torch
        env.update(VLLM_CPU_OMP_THREADS_BIND="nobind", OMP_NUM_THREADS=str(shared.threads))
    env.update({k: str(v) for k, v in peer.env.items()})
    return env


class PeerServer:
    """A peer in its own process group, logging to `log_path`; `url` once healthy."""

    def __init__(self, peer: PeerConfig, shared: Shared, port: int, log_path: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        args = vllm_command(peer, shared, port)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "w")  # noqa: SIM115
        self._log.write(" ".join(args) + "\n")
        self._log.flush()
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=vllm_env(peer, shared, os.environ),
                                     start_new_session=True)
        deadline = time.monotonic() + peer.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log.close()
                raise RuntimeError(f"{args[0]} serve exited ({self.proc.returncode}); see "
                                   f"{log_path}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"peer not healthy after {peer.startup_timeout} s; see {log_path}")

    def stop(self, grace: float = 30.0) -> int:
        """SIGINT to the group (vLLM shuts its engine processes down), SIGKILL after grace."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        try:  # children that outlived the API server
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode
