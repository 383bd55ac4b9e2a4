"""The processes of a tensor-parallel group, from rank 0's side, and the channel to them.

Rank 0 is the engine process. It starts ranks 1..N-1 as children
(`python -m flowprefill.executor.tp_rank FD`), each holding one end of a socket pair: its
command channel. Rank 0 hosts the `torch.distributed` store on a free loopback port (the
kernel picks it: no race for a port) and joins the process group with them: gloo on the CPU,
NCCL on CUDA (rank r on `cuda:r` of the visible devices), with `engine.tp_timeout` as the
collective timeout. Commands are small pickles, length-prefixed, written in order; a rank
answers only requests (start-up, `digest`, `ping`). Waiting for the next command has no
timeout (an idle engine is not a broken one); a closed channel means rank 0 is gone.

Failure: children die with rank 0 (PR_SET_PDEATHSIG, SIGKILL), and sit in their own process
group, so a terminal's Ctrl-C reaches rank 0 alone, which stops them. One thread per child
waits for its exit: the moment a rank dies the group is failed, with a message naming it, and
the failure callbacks run once (the engine fails its requests; the server exits). A collective
that fails on rank 0 (`CollectiveError`) fails the group too. Must not know about models,
jobs or engines.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, BinaryIO

import torch
import torch.distributed as dist

from flowprefill.config import EngineConfig, ModelConfig

log = logging.getLogger("flowprefill.tp")
FRAME = struct.Struct("<I")  # payload length


class CollectiveError(RuntimeError):
    """A collective failed: a rank died, hung past `engine.tp_timeout`, or the group broke."""


class TPRankError(RuntimeError):
    """The tensor-parallel group cannot run (a rank died or failed); names the rank."""


def send_msg(sock: socket.socket, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(FRAME.pack(len(data)) + data)


def recv_msg(f: BinaryIO) -> Any:
    """The next message from a buffered reader over the socket; EOFError when closed."""
    head = f.read(FRAME.size)
    if len(head) < FRAME.size:
        raise EOFError("the command channel closed")
    (n,) = FRAME.unpack(head)
    data = f.read(n)
    if len(data) < n:
        raise EOFError("the command channel closed mid-message")
    return pickle.loads(data)  # noqa: S301 - our own child or parent, over a socket pair


def all_reduce(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over the group's ranks, in place; the hook `model.shard` calls."""
    try:
        dist.all_reduce(t)
    except Exception as e:  # noqa: BLE001 - gloo/NCCL raise RuntimeError subclasses
        raise CollectiveError(f"all-reduce failed: {e}") from e
    return t


def time_all_reduce(numel: int, dtype: str, repeats: int, device: str) -> list[float]:
    """Seconds of each of `repeats` all-reduces of `numel` elements (after one warm-up),
    every rank running the same call: the link the engine's collectives cross, measured."""
    t = torch.ones(numel, dtype=getattr(torch, dtype), device=device)
    out = []
    for i in range(repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        all_reduce(t)
        if device == "cuda":
            torch.cuda.synchronize()
        if i:
            out.append(time.perf_counter() - t0)
    return out


def backend_for(device: str) -> str:
    return "nccl" if device == "cuda" else "gloo"


def init_group(engine: EngineConfig, store: dist.Store, rank: int) -> None:
    """Join the process group of `engine.tp` ranks through `store`."""
    kwargs = {}
    if engine.device == "cuda":  # eager NCCL init on this rank's device
        kwargs["device_id"] = torch.device("cuda", rank)
    dist.init_process_group(backend_for(engine.device), store=store, rank=rank,
                            world_size=engine.tp, timeout=timedelta(seconds=engine.tp_timeout),
                            **kwargs)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


@dataclass
class _Rank:
    rank: int
    proc: subprocess.Popen
    sock: socket.socket
    reader: BinaryIO


def _die_with(parent: int) -> Callable[[], None]:
    def preexec() -> None:  # in the child, between fork and exec
        os.setpgid(0, 0)  # no terminal signals: rank 0 stops its ranks itself
        try:  # PR_SET_PDEATHSIG = 1: SIGKILL when the forking thread of rank 0 ends
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
        except OSError:  # not Linux: the channel's EOF still ends the rank when idle
            pass
        if os.getppid() != parent:  # rank 0 died before the signal was armed
            os._exit(1)

    return preexec


class RankGroup:
    """Ranks 1..N-1 of rank 0's group: start, command, watch, stop. Build it on a thread
    that lives as long as the group (the main thread): the children's death signal follows
    the thread that started them."""

    def __init__(self, model: ModelConfig, engine: EngineConfig) -> None:
        if dist.is_initialized():
            raise RuntimeError("this process already belongs to a torch.distributed group: "
                               "one tensor-parallel engine per process")
        self.size, self.timeout = engine.tp, engine.tp_timeout
        self.backend = backend_for(engine.device)
        self.failure: str | None = None
        self._failed = threading.Event()
        self._callbacks: list[Callable[[str], None]] = []
        self._lock = threading.Lock()
        self._closing = False
        self.ranks: list[_Rank] = []
        self._store = dist.TCPStore("127.0.0.1", 0, self.size, is_master=True,
                                    timeout=timedelta(seconds=self.timeout),
                                    wait_for_workers=False)
        try:
            for r in range(1, self.size):
                self.ranks.append(self._spawn(r))
            for rk in self.ranks:
                send_msg(rk.sock, ("init", rk.rank, self._store.port, model, engine))
            self._expect("hello")  # each rank is up and about to join
            init_group(engine, self._store, 0)
        except BaseException:
            self.close()
            raise
        for rk in self.ranks:
            threading.Thread(target=self._watch, args=(rk,), name=f"tp-rank-{rk.rank}",
                             daemon=True).start()

    @property
    def pids(self) -> list[int]:
        return [rk.proc.pid for rk in self.ranks]

    def _spawn(self, rank: int) -> _Rank:
        ours, theirs = socket.socketpair()
        fd = theirs.fileno()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(  # noqa: PLW1509 - preexec_fn only sets up the child
            [sys.executable, "-m", "flowprefill.executor.tp_rank", str(fd)], pass_fds=(fd,),
            preexec_fn=_die_with(os.getpid()), env=env)
        theirs.close()
        log.info("started tensor-parallel rank %d of %d as pid %d", rank, self.size, proc.pid)
        return _Rank(rank, proc, ours, ours.makefile("rb"))

    # ------------------------------------------------------------------ start-up, requests
    def _recv(self, rk: _Rank, timeout: float, what: str) -> Any:
        """The next message of one rank; a clear error if it dies or takes too long."""
        deadline = time.monotonic() + timeout
        while not select.select([rk.sock], [], [], 0.1)[0]:
            if rk.proc.poll() is not None:
                raise TPRankError(f"tensor-parallel rank {rk.rank} (pid {rk.proc.pid}) "
                                  f"{describe_exit(rk.proc.returncode)} {what}")
            if time.monotonic() > deadline:
                raise TPRankError(f"tensor-parallel rank {rk.rank} sent nothing for "
                                  f"{timeout:.0f} s {what} (engine.tp_timeout)")
        try:
            msg = recv_msg(rk.reader)
        except EOFError:
            raise TPRankError(f"tensor-parallel rank {rk.rank} closed its channel {what}"
                              ) from None
        if msg[0] == "error":
            raise TPRankError(f"tensor-parallel rank {rk.rank} failed {what}: {msg[1]}")
        return msg

    def _expect(self, tag: str) -> None:
        for rk in self.ranks:
            msg = self._recv(rk, self.timeout, f"during start-up (waiting for {tag!r})")
            if msg[0] != tag:
                raise TPRankError(f"tensor-parallel rank {rk.rank}: expected {tag!r}, "
                                  f"got {msg[0]!r}")

    def wait_ready(self) -> None:
        """Block until every rank has loaded its shard and built its runner."""
        self._expect("ready")

    def request(self, cmd: tuple) -> list[Any]:
        """Send `cmd` and return each rank's reply (1..N-1, in order)."""
        self.send(cmd)
        return self.replies(cmd[0])

    def replies(self, what: str) -> list[Any]:
        """Each rank's answer to the command `what` sent last (1..N-1, in order)."""
        return [self._recv(rk, self.timeout, f"answering {what!r}")[1] for rk in self.ranks]

    # ------------------------------------------------------------------ commands
    def send(self, cmd: tuple, strict: bool = True) -> None:
        """Send one command to every rank, in order. A failed group raises TPRankError
        (`strict`) or skips it (KV bookkeeping after a failure: nothing runs any more)."""
        if self.failure is not None:
            if strict:
                raise TPRankError(self.failure)
            return
        data = pickle.dumps(cmd, protocol=pickle.HIGHEST_PROTOCOL)
        frame = FRAME.pack(len(data)) + data
        for rk in self.ranks:
            try:
                rk.sock.sendall(frame)
            except OSError as e:
                err = self.broken(f"rank {rk.rank} cannot be reached: {e}")
                if strict:
                    raise err from e
                return

    # ------------------------------------------------------------------ failure
    def on_failure(self, callback: Callable[[str], None]) -> None:
        """Call `callback(message)` once when the group fails (now, if it already has)."""
        with self._lock:
            if self.failure is None:
                self._callbacks.append(callback)
                return
        callback(self.failure)

    def fail(self, message: str) -> None:
        with self._lock:
            if self.failure is not None or self._closing:
                return
            self.failure = message
            callbacks, self._callbacks = self._callbacks, []
        self._failed.set()
        log.error("tensor-parallel group failed: %s", message)
        for cb in callbacks:
            try:
                cb(message)
            except Exception:  # noqa: BLE001 - every callback gets its turn
                log.exception("tensor-parallel failure callback failed")

    def broken(self, reason: str, wait: float = 2.0) -> TPRankError:
        """The group failed on rank 0's side (a collective, a send): the error to raise,
        naming the dead rank when one died (a peer's death reaches the collective first;
        its watcher files the exit a moment later, so wait up to `wait` s for it)."""
        self._failed.wait(wait)
        self.fail(f"tensor-parallel group broken: {reason}")
        return TPRankError(self.failure or reason)

    def _watch(self, rk: _Rank) -> None:
        code = rk.proc.wait()
        self.fail(f"tensor-parallel rank {rk.rank} (pid {rk.proc.pid}) {describe_exit(code)}")

    # ------------------------------------------------------------------ stop
    def close(self, grace: float = 10.0) -> None:
        """Stop every rank (SIGKILL after `grace` s) and leave the process group."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        for rk in self.ranks:
            try:
                send_msg(rk.sock, ("stop",))
            except OSError:
                pass
        deadline = time.monotonic() + grace
        for rk in self.ranks:
            try:
                rk.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("tensor-parallel rank %d ignored stop; killing it", rk.rank)
                rk.proc.kill()
                rk.proc.wait()
            rk.reader.close()
            rk.sock.close()
        # a broken NCCL group may block in teardown; the process is about to exit anyway
        if dist.is_initialized() and not (self.failure and self.backend == "nccl"):
            dist.destroy_process_group()
