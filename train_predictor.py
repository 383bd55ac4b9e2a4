"""`python train_predictor.py profile=PATH out=DIR`: fit the TTFT predictor from a profile.

Reads `PATH/profile.jsonl` (written by `runners/profile_ops.py`), fits per-operator cost models and
the paper's cubic baseline (`flowprefill.predictor.training`), and writes into DIR the
artifact `predictor.json`, the baseline `cubic.json`, `report.json` (held-out errors side by
side) and `predicted_vs_measured.png`. The model/engine/hardware groups must describe the
profiled setup (a profile of another model or machine is an error); DIR defaults to the name
serving looks up with `predictor.path=auto`: artifacts/<model>_<hardware>/.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig

from flowprefill.config import register_configs
from flowprefill.predictor.profile_data import (
    meta_of,
    profile_file,
    read_rows,
    samples,
    setting,
)
from flowprefill.predictor.training import SETTINGS_KEYS, Trained, TrainSettings, save, train

COLORS = {"prompt": "tab:blue", "batch": "tab:green", "chunk": "tab:orange"}


def plot(trained: Trained, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5))
    prompts = sorted((p for p in trained.points if p[0] == "prompt"), key=lambda p: p[2])
    for where, marker in (("train", "o"), ("heldout", "s")):
        pts = [p for p in prompts if p[1] == where]
        ax1.scatter([p[2] for p in pts], [p[3] for p in pts], marker=marker, s=25,
                    facecolors="none" if where == "train" else "k", edgecolors="k",
                    label=f"measured ({where})", zorder=3)
    ax1.plot([p[2] for p in prompts], [p[4] for p in prompts], "-", c="tab:blue",
             label="per-operator fit")
    ax1.plot([p[2] for p in prompts], [max(p[5], 1e-6) for p in prompts], "--", c="tab:red",
             label="cubic baseline")
    ax1.set(xscale="log", yscale="log", xlabel="prompt tokens", ylabel="isolated TTFT (s)",
            title="isolated TTFT")
    ax1.legend()
    for case, color in COLORS.items():
        pts = [p for p in trained.points if p[0] == case]
        for where, marker in (("train", "o"), ("heldout", "s")):
            sel = [p for p in pts if p[1] == where]
            if sel:
                ax2.scatter([p[3] for p in sel], [p[4] for p in sel], c=color, marker=marker,
                            s=18, label=f"{case} ({where})")
    lo = min(p[3] for p in trained.points)
    hi = max(p[3] for p in trained.points)
    ax2.plot([lo, hi], [lo, hi], "k:", lw=1)
    ax2.set(xscale="log", yscale="log", xlabel="measured (s)", ylabel="predicted (s)",
            title="per-operator fit: forward time")
    ax2.legend(fontsize=8)
    r = trained.report
    fig.suptitle(f"{title}: held-out MAPE {r['heldout_mape']:.1%} "
                 f"(cubic {r['cubic_heldout_mape']:.1%})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(profile: Path, out: Path, settings: TrainSettings,
        expect: dict | None = None) -> dict:
    """Train from `profile`, write everything into `out`; returns the report."""
    rows = read_rows(profile)
    if not rows:
        raise FileNotFoundError(f"no profile at {profile_file(profile)} "
                                "(write one with runners/profile_ops.py)")
    meta = meta_of(rows)
    for key, want in (expect or {}).items():
        if meta.get(key) != want:
            raise ValueError(f"{profile_file(profile)} profiles {key}={meta.get(key)!r}, the "
                             f"config says {want!r}")
    trained = train(list(samples(rows, settings.stat)), int(meta["num_layers"]), settings)
    artifact = save(trained, out, meta, str(profile_file(profile)))
    report = {"artifact": str(artifact), "model": meta["model"], "hardware": meta["hardware"],
              "stat": settings.stat,
              **{k: setting(meta, k) for k in SETTINGS_KEYS}, **trained.report}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    plot(trained, out / "predicted_vs_measured.png", f"{meta['model']} on {meta['hardware']}")
    return report


def expected_meta(cfg: DictConfig) -> dict:
    """What the profile must record for this config: model, machine, and the engine keys
    the config names (one left `auto` accepts what the profile says it resolved to)."""
    engine = {k: cfg.engine[k] for k in ("device", "dtype") if cfg.engine[k] != "auto"}
    return {"model": cfg.model.name, "num_layers": cfg.model.num_layers,
            "hardware": cfg.hardware.name, **engine}


register_configs()


@hydra.main(config_path="conf", config_name="train_predictor", version_base="1.3")
def main(cfg: DictConfig) -> None:
    out = Path(hydra.utils.to_absolute_path(cfg.out))
    expect = expected_meta(cfg) if cfg.check_config else None
    report = run(Path(hydra.utils.to_absolute_path(cfg.profile)), out,
                 TrainSettings(cfg.heldout_every, cfg.mad_k, cfg.cubic_drop, cfg.stat), expect)
    keys = ("heldout_mape", "cubic_heldout_mape", "chunk_heldout_mape", "batch_heldout_mape",
            "decode_heldout_mape")
    print(json.dumps({k: report[k] for k in keys}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
