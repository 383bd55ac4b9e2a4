"""`python runners/fidelity.py predictor.path=DIR`: how well simulation and prediction match
the real engine.

`mode=replay` (default): for each policy in `policies`, start `serve.py` (as
runners/experiment.py does), replay the workload window against it, simulate the same
requests (same ids, arrivals and SLOs) with the fitted artifact, and compare: per-request TTFT
relative error (median, p90, signed median), and the differences in TTFT attainment (points)
and goodput. Requests ask for `max_output` tokens at most (default 1: the simulator models
the prefill worker; more: it decodes too, and the TBT error and attainment are compared).
With `calibrate=true` the simulation is repeated with the device charged the artifact's costs
times the serving slowdown measured on the real server just before the replay (isolated
requests of `calibrate_lengths`, sent one at a time; per size bucket the median ratio of their
TTFT to its prediction, `OnlineCorrection.calibrate`): what the profile does not see (the HTTP
path, the server process's threads, a machine others load).

`mode=correction`: prefill a cycle of prompt lengths in-process, first on an idle machine,
then with `burners` CPU-bound processes started beside it, then idle again; each forward is
predicted before it runs by the fitted model alone and by the same model with the online
correction (fed each operator's measured time, as the engine does); reports both errors per
phase.

Results go to `out` (JSON) with the machine's load average before and after; the per-request
records of both sides to `<run dir>/<policy>/{real,sim}/records.jsonl`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from experiment import Server, serve_config_args  # noqa: E402

from flowprefill.config import (  # noqa: E402
    EngineConfig,
    HardwareConfig,
    MetricsConfig,
    ModelConfig,
    PolicyConfig,
    PredictorConfig,
    SimConfig,
    SLOConfig,
    WorkloadConfig,
    from_hydra,
    register_configs,
)
from flowprefill.metrics import RequestRecord, percentile, summarize  # noqa: E402
from flowprefill.metrics.sinks import JsonSink  # noqa: E402

if TYPE_CHECKING:
    from flowprefill.workload.replay import ReplaySettings

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- comparison


def compare(real: Sequence[RequestRecord], sim: Sequence[RequestRecord]) -> dict:
    """Per-request TTFT error of `sim` against `real` (matched by request id) and the
    difference in headline metrics (sim minus real; attainment in points)."""
    by_id = {r.request_id: r for r in sim}
    rel, signed, tbt_rel, tbt_signed = [], [], [], []
    for r in real:
        s = by_id.get(r.request_id)
        if s is None or r.ttft is None or s.ttft is None or r.ttft <= 0:
            continue
        signed.append((s.ttft - r.ttft) / r.ttft)
        rel.append(abs(signed[-1]))
        if r.mean_tbt and s.mean_tbt is not None:  # requests that decoded (max_output > 1)
            tbt_signed.append((s.mean_tbt - r.mean_tbt) / r.mean_tbt)
            tbt_rel.append(abs(tbt_signed[-1]))
    a, b = summarize(real), summarize(sim)
    tbt = {} if not tbt_rel else {
        "tbt_matched": len(tbt_rel),  # per request: its mean gap between tokens
        "tbt_rel_err_median": percentile(tbt_rel, 50),
        "tbt_rel_err_p90": percentile(tbt_rel, 90),
        "tbt_signed_err_median": percentile(tbt_signed, 50),
        "tbt_attainment_real": a["tbt_attainment"], "tbt_attainment_sim": b["tbt_attainment"],
        "tbt_attainment_diff_points": 100 * (b["tbt_attainment"] - a["tbt_attainment"])}
    return tbt | {
        "matched": len(rel),
        "ttft_rel_err_median": percentile(rel, 50),
        "ttft_rel_err_p90": percentile(rel, 90),
        "ttft_signed_err_median": percentile(signed, 50),  # > 0: simulation is slower
        "attainment_real": a["ttft_attainment"],
        "attainment_sim": b["ttft_attainment"],
        "attainment_diff_points": 100 * (b["ttft_attainment"] - a["ttft_attainment"]),
        "goodput_real_rps": a["goodput_rps"],
        "goodput_sim_rps": b["goodput_rps"],
        "goodput_rel_diff": ((b["goodput_rps"] - a["goodput_rps"]) / a["goodput_rps"]
                             if a["goodput_rps"] else None),
        "ttft_p50_real": a.get("ttft_p50"), "ttft_p50_sim": b.get("ttft_p50"),
        "ttft_p90_real": a.get("ttft_p90"), "ttft_p90_sim": b.get("ttft_p90"),
    }


# --------------------------------------------------------------------------- replay mode


def policy_config(name: str) -> PolicyConfig:
    data = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "policy" / f"{name}.yaml"))
    data.pop("defaults", None)
    return from_hydra(PolicyConfig, data)


def _artifact_path(path: str) -> str:
    return path if path == "auto" else hydra.utils.to_absolute_path(path)


def real_run(cfg: DictConfig, policy: PolicyConfig, requests: list,
             run_dir: Path) -> tuple[list, list[tuple[int, float]]]:
    """Client-side records of replaying `requests` against serve.py running `policy`, and
    (with `calibrate`) the isolated TTFTs of `calibrate_lengths` measured on the same server
    just before the replay."""
    from flowprefill.workload.replay import ReplaySettings, replay, warm_up

    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["policy"] = dataclasses.asdict(policy)
    resolved["predictor"]["path"] = _artifact_path(cfg.predictor.path)
    server = Server(serve_config_args(OmegaConf.create(resolved), run_dir),
                    run_dir / "server.log", cfg.startup_timeout)
    try:
        s = ReplaySettings(url=server.url, model=from_hydra(ModelConfig, cfg.model).served_name,
                           max_output_tokens=cfg.max_output, timeout=cfg.timeout,
                           seed=cfg.workload.seed)
        asyncio.run(warm_up(s, cfg.warmup))
        isolated = asyncio.run(isolated_ttfts(s, cfg.calibrate_lengths)) if cfg.calibrate else []
        return asyncio.run(replay(requests, s)), isolated
    finally:
        server.stop()


async def isolated_ttfts(s: ReplaySettings, lengths: Sequence[int]) -> list[tuple[int, float]]:
    """Client-side TTFT of one request at a time per length, measured by the replay client."""
    from flowprefill.core import SLO, Request
    from flowprefill.workload.replay import replay

    out = []
    for i, n in enumerate(lengths):
        (rec,) = await replay([Request(f"calibrate-{i}", 0.0, n, SLO(ttft=3600.0))], s)
        if rec.ttft is None:
            raise RuntimeError(f"calibration request of {n} tokens was not served")
        out.append((n, rec.ttft))
        await asyncio.sleep(0.05)
    return out


def replay_fidelity(cfg: DictConfig, run_dir: Path) -> dict:
    """Real vs simulated replay of the workload window, per policy."""
    from flowprefill.predictor import CorrectedPredictor, OnlineCorrection
    from flowprefill.sim import Simulator
    from flowprefill.sim.experiment import SimSetup, cost_models
    from flowprefill.workload import build_requests

    model, hardware = from_hydra(ModelConfig, cfg.model), from_hydra(HardwareConfig,
                                                                        cfg.hardware)
    pred_cfg = from_hydra(PredictorConfig, cfg.predictor)
    path = _artifact_path(pred_cfg.path)
    sim_pred = PredictorConfig(kind="fitted", path=path)  # the simulator never corrects
    workload, slo = from_hydra(WorkloadConfig, cfg.workload), from_hydra(SLOConfig, cfg.slo)
    out: dict = {"policies": {}}
    for name in cfg.policies:
        policy = policy_config(name)
        # fidelity pairs the same requests one to one: none is warm-up here
        sim_cfg = dataclasses.replace(from_hydra(SimConfig, cfg.sim),
                                      decode=cfg.max_output > 1)
        setup = SimSetup(model=model, hardware=hardware, policy=policy,
                         predictor=sim_pred, workload=workload, slo=slo, sim=sim_cfg,
                         metrics=MetricsConfig(warmup_requests=0),
                         tp=from_hydra(EngineConfig, cfg.engine).tp)
        # each request's output as the replay client caps it (one token: prefill only)
        models = cost_models(setup)
        requests = [dataclasses.replace(r, max_tokens=max(1, min(r.max_tokens, cfg.max_output)))
                    for r in build_requests(workload, slo, models.truth.isolated_ttft)]
        load_before = os.getloadavg()
        real, isolated = real_run(cfg, policy, requests, run_dir / name)
        base = models.predictor
        simulated = Simulator(policy, base, setup.sim).run(requests).records  # the same ones
        JsonSink(run_dir / name / "real").log_records(real)
        JsonSink(run_dir / name / "sim").log_records(simulated)
        res = compare(real, simulated)
        if isolated:  # the device charged the profile's costs x the slowdown as served now
            corr = OnlineCorrection()
            corr.calibrate((n, t / base.isolated_ttft(n)) for n, t in isolated)
            sim = Simulator(policy, base, setup.sim, truth=CorrectedPredictor(base, corr))
            res["calibrated"] = compare(real, sim.run(requests).records)
            res["calibrated"]["factors"] = corr.snapshot()
            res["calibrated"]["isolated"] = [
                {"prompt_len": n, "ttft": t, "predicted": base.isolated_ttft(n)}
                for n, t in isolated]
        res["load_avg_before_after"] = [load_before, os.getloadavg()]
        res["requests"] = len(requests)
        out["policies"][name] = res
        for label, r in (("", res), (" (calibrated)", res.get("calibrated"))):
            if r:
                print(f"{name}{label}: median TTFT err {r['ttft_rel_err_median']:.1%}, p90 "
                      f"{r['ttft_rel_err_p90']:.1%}, attainment real {r['attainment_real']:.3f}"
                      f" sim {r['attainment_sim']:.3f} ({r['attainment_diff_points']:+.1f} pts)")
    return out


# --------------------------------------------------------------------------- correction mode


def correction_under_load(cfg: DictConfig) -> dict:
    import torch

    from flowprefill.core import SLO, Job, Request, op_kind
    from flowprefill.core.clock import WallClock
    from flowprefill.executor import ModelRunner
    from flowprefill.predictor import CorrectedPredictor, OnlineCorrection, make_predictor

    runner = ModelRunner(from_hydra(ModelConfig, cfg.model), from_hydra(EngineConfig, cfg.engine))
    base = make_predictor(PredictorConfig(kind="fitted", path=cfg.predictor.path),
                          runner.model_cfg, from_hydra(HardwareConfig, cfg.hardware))
    corr = CorrectedPredictor(base, OnlineCorrection(cfg.correction.alpha))
    clock, gen = WallClock(), torch.Generator().manual_seed(0)
    lengths, n_jobs = list(cfg.correction.lengths), int(cfg.correction.jobs_per_phase)
    phases: dict[str, dict] = {}
    counter = 0

    def run_phases() -> None:  # on a thread set up as the engine's prefill thread
        nonlocal counter
        for phase in ("idle", "loaded", "idle_again"):
            burners = []
            if phase == "loaded":
                burn = "while True: pass"
                burners = [subprocess.Popen([sys.executable, "-c", burn])
                           for _ in range(cfg.correction.burners)]
                time.sleep(1.0)
            errs: dict[str, list[float]] = {"plain": [], "corrected": []}
            try:
                for i in range(n_jobs):
                    n = lengths[i % len(lengths)]
                    counter += 1
                    ids = torch.randint(0, 1000, (n,), generator=gen).tolist()
                    req = Request(f"c{counter}", 0.0, n, SLO(1.0), prompt_token_ids=tuple(ids))
                    pj = runner.prefill_job(Job.unsliced(counter, (req,), base.num_layers))
                    plan = pj.plan
                    plain, corrected = base.isolated_ttft(n), corr.isolated_ttft(n)
                    t_start = clock.now()
                    while not pj.finished:
                        kind = op_kind(plan.passes[0].unit(pj.done)[0], base.num_layers).value
                        t0 = clock.now()
                        pj.step()
                        corr.observe(kind, ((n, 0),), 1, clock.now() - t0)
                    measured = clock.now() - t_start
                    runner.free(req.request_id)
                    errs["plain"].append(abs(plain - measured) / measured)
                    errs["corrected"].append(abs(corrected - measured) / measured)
            finally:
                for b in burners:
                    b.kill()
                    b.wait()
            phases[phase] = {"mape_plain": statistics.fmean(errs["plain"]),
                             "mape_corrected": statistics.fmean(errs["corrected"]),
                             "jobs": n_jobs, "load_avg_after": os.getloadavg(),
                             "factors": corr.correction.snapshot()}
            print(f"{phase}: MAPE fitted {phases[phase]['mape_plain']:.1%}, with correction "
                  f"{phases[phase]['mape_corrected']:.1%}")

    runner.run_in_thread(run_phases)
    return {"phases": phases, "alpha": cfg.correction.alpha, "burners": cfg.correction.burners,
            "lengths": lengths}


register_configs()


@hydra.main(version_base=None, config_path="../conf", config_name="fidelity")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    load_before = os.getloadavg()
    if cfg.mode == "replay":
        result = replay_fidelity(cfg, run_dir)
    elif cfg.mode == "correction":
        result = correction_under_load(cfg)
    else:
        raise ValueError(f"unknown mode {cfg.mode!r} (replay | correction)")
    result |= {"mode": cfg.mode, "load_avg_before": load_before, "load_avg_after":
               os.getloadavg(), "cpu_count": os.cpu_count(),
               "config": OmegaConf.to_container(cfg, resolve=True)}
    out = Path(cfg.out) if cfg.out else run_dir / "fidelity.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
