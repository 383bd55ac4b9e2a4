"""Running one role of `deploy=pd`: a prefill worker, a decode worker, the proxy, or all
of them (`role=all`: spawn the workers here, then serve the proxy until SIGINT/SIGTERM).

Each role builds its objects from typed configs and serves them with uvicorn inside one
asyncio loop, next to its background task (lease expiry on prefill workers, health polling
on the proxy). Must not know about scheduling or model internals.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
from collections.abc import Awaitable, Callable

from flowprefill.config import (
    AUTO_HARDWARE,
    DeployConfig,
    EngineConfig,
    HardwareConfig,
    ModelConfig,
    PolicyConfig,
    PredictorConfig,
    ServerConfig,
    from_hydra,
    load_option,
)
from flowprefill.server.guards import bearer, internal_secret

log = logging.getLogger("flowprefill.pd")
WORKER_MAX_BODY = 64 * 1024 * 1024  # internal bodies carry whole prompts as token ids


async def _serve(app, host: str, port: int, grace: float,
                 background: Callable[[], Awaitable[None]] | None = None) -> None:
    """Serve until SIGINT/SIGTERM; then stop accepting and give open requests `grace` s."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: object) -> None:
            super().handle_exit(sig, frame)
            # uvicorn re-raises the signal after its graceful shutdown, which would kill the
            # process before our own shutdown (engine threads, child workers) runs
            self._captured_signals.clear()

    server = Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                   timeout_graceful_shutdown=grace))
    task = asyncio.ensure_future(background()) if background is not None else None
    try:
        await server.serve()
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def worker_devices(deploy: DeployConfig) -> list[str | None]:
    """Each worker's CUDA_VISIBLE_DEVICES, prefill workers first (None: all, inherited)."""
    out: list[str | None] = []
    for role, n, devs in (("prefill", deploy.prefill_workers, deploy.prefill_devices),
                          ("decode", deploy.decode_workers, deploy.decode_devices)):
        if devs and len(devs) != n:
            raise ValueError(f"deploy.{role}_devices names {len(devs)} device set(s) for "
                             f"deploy.{role}_workers={n} workers")
        out += [str(d) for d in devs] if devs else [None] * n
    return out


def serve_prefill(model: ModelConfig, engine: EngineConfig, policy: PolicyConfig,
                  predictor: PredictorConfig, hardware: HardwareConfig,
                  deploy: DeployConfig, grace: float) -> None:
    from flowprefill.engine.build import build_local_engine
    from flowprefill.engine.disagg import PrefillOnlyEngine
    from flowprefill.kvtransfer import KVAgent
    from flowprefill.server.prefill_worker import build_prefill_app

    eng = build_local_engine(model, engine, policy, predictor, hardware,
                             engine_cls=PrefillOnlyEngine, lease_timeout=deploy.lease_timeout)
    agent = KVAgent(eng.runner.pool.kv, eng.runner.model_cfg.num_layers,
                    engine.num_kv_blocks, role="prefill")
    eng.start()

    async def expire_leases() -> None:
        while True:
            await asyncio.sleep(min(1.0, deploy.lease_timeout / 4))
            eng.expire_leases()

    log.info("prefill worker (policy %s, agent %s) on %s:%d", policy.name, agent.name,
             deploy.worker_host, deploy.port)
    app = guarded(build_prefill_app(eng, agent), deploy)
    try:
        asyncio.run(_serve(app, deploy.worker_host, deploy.port, grace, expire_leases))
    finally:
        eng.shutdown()


def serve_decode(model: ModelConfig, engine: EngineConfig, policy: PolicyConfig,
                 predictor: PredictorConfig, hardware: HardwareConfig, deploy: DeployConfig,
                 max_decode_batch: int, grace: float) -> None:
    from flowprefill.engine.build import build_local_engine
    from flowprefill.engine.disagg import DecodeOnlyEngine
    from flowprefill.kvtransfer import KVAgent
    from flowprefill.server.decode_worker import DecodeWorker, build_decode_app

    eng = build_local_engine(model, engine, policy, predictor, hardware, max_decode_batch,
                             engine_cls=DecodeOnlyEngine)
    agent = KVAgent(eng.runner.pool.kv, eng.runner.model_cfg.num_layers,
                    engine.num_kv_blocks, role="decode")
    eng.start()
    log.info("decode worker (agent %s) on %s:%d", agent.name, deploy.worker_host, deploy.port)

    async def main() -> None:
        worker = DecodeWorker(eng, agent, deploy.transfer_timeout, deploy.on_transfer_failure,
                              headers=bearer(deploy.secret))
        try:
            await _serve(guarded(build_decode_app(worker), deploy), deploy.worker_host,
                         deploy.port, grace)
        finally:
            await worker.close()

    try:
        asyncio.run(main())
    finally:
        eng.shutdown()


def serve_proxy(model: ModelConfig, predictor: PredictorConfig, hardware: HardwareConfig,
                server: ServerConfig, deploy: DeployConfig, prefill_urls: list[str],
                decode_urls: list[str],
                before: Callable[[], None] | None = None) -> None:
    """Serve the public API over the given workers. `before` runs after the proxy's own slow
    setup (imports, tokenizer) and before it talks to a worker: `role=all` waits there for
    the workers it started, so both start-ups overlap."""
    import httpx

    from flowprefill.model.tokenizer import load_tokenizer
    from flowprefill.predictor import make_predictor
    from flowprefill.server.app import build_app
    from flowprefill.server.pd_router import Router
    from flowprefill.server.proxy import ProxyEngine

    tokenizer = load_tokenizer(model)
    if before is not None:
        before()
    # The model as the workers resolved it (a checkpoint's config.json wins over the preset)
    headers = bearer(deploy.secret)
    info = httpx.get(prefill_urls[0].rstrip("/") + "/internal/info", timeout=10.0,
                     headers=headers).json()
    if hardware.name == AUTO_HARDWARE:  # priced as the workers are: their machine's preset
        hardware = from_hydra(HardwareConfig, load_option("hardware", info["hardware"]))
    cost = make_predictor(predictor, model, hardware)
    router = Router(prefill_urls, decode_urls, cost.isolated_ttft)
    proxy = ProxyEngine(router, tokenizer, info["model"], info["max_model_len"],
                        info["vocab_size"], deploy.health_interval, headers)

    async def main() -> None:
        await proxy.start()
        try:
            await _serve(build_app(proxy, server), server.host, server.port,
                         server.grace_period)
        finally:
            await proxy.close()

    log.info("PD proxy on http://%s:%d over prefill %s, decode %s", server.host, server.port,
             prefill_urls, decode_urls)
    asyncio.run(main())


def guarded(app, deploy: DeployConfig):
    """A worker app that answers only callers with the shared secret (/health stays open)."""
    from flowprefill.server.guards import Guards

    app.add_middleware(Guards, max_body_bytes=WORKER_MAX_BODY, api_key=deploy.secret)
    return app


def run_pd(model: ModelConfig, engine: EngineConfig, policy: PolicyConfig,
           predictor: PredictorConfig, hardware: HardwareConfig, server: ServerConfig,
           deploy: DeployConfig, max_decode_batch: int) -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per internal call is noise
    secret = internal_secret(deploy.secret, deploy.worker_host)
    if secret is None and deploy.role == "all":  # workers we start share a fresh secret
        secret = secrets.token_hex(16)
    deploy = dataclasses.replace(deploy, secret=secret)
    if deploy.role == "prefill":
        serve_prefill(model, engine, policy, predictor, hardware, deploy, server.grace_period)
    elif deploy.role == "decode":
        serve_decode(model, engine, policy, predictor, hardware, deploy, max_decode_batch,
                     server.grace_period)
    elif deploy.role == "proxy":
        serve_proxy(model, predictor, hardware, server, deploy, list(deploy.prefill_urls),
                    list(deploy.decode_urls))
    elif deploy.role == "all":
        configs = {"model": model, "engine": engine, "policy": policy, "predictor": predictor,
                   "hardware": hardware, "server": server, "deploy": deploy}
        _run_all(configs, max_decode_batch)
    else:
        raise ValueError(f"deploy.role must be all | proxy | prefill | decode, not "
                         f"{deploy.role!r}")


def _run_all(configs: dict, max_decode_batch: int) -> None:
    from flowprefill.server.pd_launch import WorkerGroup, free_port

    deploy: DeployConfig = configs["deploy"]
    roles = ["prefill"] * deploy.prefill_workers + ["decode"] * deploy.decode_workers
    engine: EngineConfig = configs["engine"]
    if engine.threads == 0:  # on the CPU the workers share its cores (on CUDA: unused)
        from flowprefill.executor.device import cpu_threads

        configs = configs | {"engine": dataclasses.replace(
            engine, threads=cpu_threads(engine.tp, len(roles)))}
    group = WorkerGroup(configs, max_decode_batch, deploy.max_restarts, deploy.restart_delay)
    devices = worker_devices(deploy)
    try:
        for i, role in enumerate(roles):
            port = deploy.base_port + i if deploy.base_port else free_port(deploy.worker_host)
            group.spawn(role, deploy.worker_host, port, devices[i])
        urls = {r: [w.url for w in group.procs if w.role == r] for r in ("prefill", "decode")}

        def ready() -> None:
            group.wait_healthy(deploy.startup_timeout)
            group.supervise()

        serve_proxy(configs["model"], configs["predictor"], configs["hardware"],
                    configs["server"], deploy, urls["prefill"], urls["decode"], before=ready)
    finally:  # the proxy has drained (server.grace_period); the workers have nothing left
        group.stop(grace=configs["server"].grace_period + 5.0)
