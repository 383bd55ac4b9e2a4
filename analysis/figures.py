"""The paper-style figures, one PNG each, from loaded runs (analysis/runs.py).

Owns plotting only: every function takes runs and an output directory, writes one figure and
returns its path, or None when the runs hold no data for it. matplotlib with the Agg backend;
no engine, torch or flowprefill imports.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from analysis.runs import Run, labels  # noqa: E402

TARGET = 0.9  # the attainment that defines maximum goodput
MAX_SCATTER = 3000  # points per series in scatter plots (subsampled, seeded)


def _save(fig: plt.Figure, out: Path, name: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _title(runs: list[Run]) -> str:
    """Model / hardware / workload / target of the runs, for figure titles."""
    s = runs[0].summary
    parts = [s.get("model") or runs[0].config.get("model", {}).get("name"),
             s.get("hardware") or runs[0].config.get("hardware", {}).get("name"),
             s.get("workload"), s.get("runs_on")]
    return ", ".join(str(p) for p in parts if p)


def goodput_vs_rate(runs: list[Run], out: Path) -> Path | None:
    """Goodput and attainment vs offered rate per policy (the search probes, or a rate sweep),
    with the 90% attainment line and each policy's maximum goodput marked."""
    names = labels(runs)
    series: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    best: dict[str, float] = {}
    for r in runs:
        name = names[id(r)]
        if r.slo_scale != 1.0:
            continue
        for p in r.summary.get("points") or []:
            if p.get("offered_rps") is not None:
                series[name].append((p["offered_rps"], p.get("goodput_rps") or 0.0,
                                     p["ttft_attainment"]))
        if not r.summary.get("points") and r.summary.get("offered_rps"):
            s = r.summary
            series[name].append((s["offered_rps"], s["goodput_rps"], s["ttft_attainment"]))
        if r.max_goodput is not None:
            best[name] = r.max_goodput
    series = {k: sorted(set(v)) for k, v in series.items() if len(set(v)) > 1}
    if not series:
        return None
    fig, (ax_g, ax_a) = plt.subplots(2, 1, figsize=(8, 8), sharex=True)
    for name in sorted(series, key=lambda n: -best.get(n, 0.0)):
        rate, good, att = (np.array(c) for c in zip(*series[name], strict=True))
        line, = ax_g.plot(rate, good, marker="o", ms=3, label=name)
        ax_a.plot(rate, att * 100, marker="o", ms=3, color=line.get_color())
        if name in best and best[name] > 0:
            ax_a.axvline(best[name], color=line.get_color(), ls=":", lw=0.8)
    ax_a.axhline(TARGET * 100, color="k", ls="--", lw=1, label=f"{TARGET:.0%} attainment")
    ax_g.set_ylabel("goodput (requests/s meeting TTFT SLO)")
    ax_a.set_ylabel("TTFT SLO attainment (%)")
    ax_a.set_xlabel("offered request rate (requests/s)")
    ax_g.set_xscale("log")
    ax_a.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax_a.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax_a.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax_a.set_ylim(max(0.0, min(a for v in series.values() for *_, a in v) * 100 - 5), 101)
    ax_g.set_title(f"Goodput vs request rate ({_title(runs)})")
    ax_g.legend(fontsize=7, ncol=2)
    ax_a.legend(fontsize=8, loc="lower left")
    for ax in (ax_g, ax_a):
        ax.grid(alpha=0.3)
    return _save(fig, out, "goodput_vs_rate")


def attainment_vs_slo_scale(runs: list[Run], out: Path) -> Path | None:
    """TTFT attainment vs SLO scale per policy: from runs swept over slo.scale (the scheduler
    saw the scaled SLOs); else each run's post-hoc rescaling of its own SLOs."""
    names = labels(runs)
    swept: dict[str, dict[float, float]] = defaultdict(dict)
    for r in runs:
        if not r.summary.get("points"):
            swept[names[id(r)]][r.slo_scale] = r.summary["ttft_attainment"]
    swept = {k: v for k, v in swept.items() if len(v) > 1}
    how = "SLOs scaled before scheduling"
    if not swept:
        how = "each run's SLOs rescaled after the fact"
        for r in runs:
            curve = r.summary.get("attainment_vs_slo_scale") or {}
            if curve and r.slo_scale == 1.0:
                swept[names[id(r)]] = {float(k): v for k, v in curve.items()}
    if not swept:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    for name in sorted(swept, key=lambda n: -sum(swept[n].values())):
        xs = sorted(swept[name])
        ax.plot(xs, [swept[name][x] * 100 for x in xs], marker="o", ms=4, label=name)
    ax.axhline(TARGET * 100, color="k", ls="--", lw=1, label=f"{TARGET:.0%}")
    ax.set_xlabel("SLO scale (x every TTFT SLO)")
    ax.set_ylabel("TTFT SLO attainment (%)")
    ax.set_ylim(0, 102)
    ax.set_title(f"Attainment vs SLO scale ({how})\n{_title(runs)}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out, "attainment_vs_slo_scale")


def _representative(runs: list[Run]) -> dict[str, Run]:
    """One run per label with records: at SLO scale 1 (the max-goodput run when searched)."""
    names = labels(runs)
    chosen: dict[str, Run] = {}
    for r in runs:
        if r.slo_scale == 1.0 and names[id(r)] not in chosen and r.records:
            chosen[names[id(r)]] = r
    return chosen


def ttft_cdf(runs: list[Run], out: Path) -> Path | None:
    """CDF of TTFT per SLO class (one panel each), a line per policy; TTFT in seconds and
    relative to each request's own SLO."""
    chosen = _representative(runs)
    classes = sorted({rec["slo_class"] for r in chosen.values() for rec in r.records})
    if not classes:
        return None
    fig, axes = plt.subplots(len(classes), 2, figsize=(11, 3.2 * len(classes)), squeeze=False)
    for row, cls in enumerate(classes):
        for name, r in chosen.items():
            recs = [x for x in r.records if x["slo_class"] == cls and x.get("ttft") is not None]
            if not recs:
                continue
            ttft = np.sort([x["ttft"] for x in recs])
            rel = np.sort([x["ttft"] / x["ttft_slo"] for x in recs])
            y = np.arange(1, len(ttft) + 1) / len(ttft)
            axes[row][0].plot(ttft, y, label=name)
            axes[row][1].plot(rel, y, label=name)
        axes[row][0].set_xlabel(f"TTFT (s), class {cls}")
        axes[row][1].set_xlabel(f"TTFT / TTFT SLO, class {cls}")
        axes[row][1].axvline(1.0, color="k", ls="--", lw=1)
        for ax in axes[row]:
            ax.set_xscale("log")
            ax.set_ylabel("fraction of requests")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    axes[0][0].set_title(f"TTFT CDF per class ({_title(runs)})", fontsize=10)
    return _save(fig, out, "ttft_cdf")


def preemption_latency(runs: list[Run], out: Path) -> Path | None:
    """Histogram of preemption latency (event asking for a switch -> the new job's first
    operator) per policy that preempts."""
    chosen = _representative(runs)
    data = {}
    for name, r in chosen.items():
        lat = [x for rec in r.records for x in rec.get("preemption_latencies") or []]
        if lat:
            data[name] = np.array(lat) * 1e3
    if not data:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    lo = max(min(v.min() for v in data.values()), 1e-3)
    hi = max(v.max() for v in data.values())
    bins = np.logspace(np.log10(lo), np.log10(max(hi, lo * 10)), 50)
    for name, v in data.items():
        ax.hist(np.clip(v, lo, None), bins=bins, histtype="step", lw=1.5,
                label=f"{name} (p99 {np.percentile(v, 99):.2f} ms, n={len(v)})")
    ax.set_xscale("log")
    ax.set_xlabel("preemption latency (ms)")
    ax.set_ylabel("preemptions")
    ax.set_title(f"Preemption latency ({_title(runs)})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out, "preemption_latency")


def granularity(runs: list[Run], out: Path) -> Path | None:
    """Granularity ablation: compute added (throughput loss) vs the longest non-preemptible
    stretch (blocking latency, p99 over prompts), annotated with maximum goodput."""
    names = labels(runs)
    pts: dict[tuple[float, float], list[str]] = defaultdict(list)  # arms at one point share it
    for r in runs:
        g = r.summary.get("granularity")
        if g and g.get("blocking_p99") is not None and r.slo_scale == 1.0:
            key = (float(f"{g['blocking_p99'] * 1e3:.2g}"),  # 2 significant digits: points
                   round(g["compute_inflation"] * 100, 1))  # closer than that share a label
            mg = f" ({r.max_goodput:.2f} req/s)" if r.max_goodput is not None else ""
            pts[key].append(names[id(r)] + mg)
    if len(pts) < 2:
        return None
    fig, ax = plt.subplots(figsize=(10, 5.5))
    markers = "osD^vP*Xh<>"
    for i, ((x, y), group) in enumerate(sorted(pts.items())):
        ax.scatter([x], [y], s=60, marker=markers[i % len(markers)],
                   label="\n".join(sorted(group)))
    ax.set_xscale("log")
    ax.set_xlabel("blocking latency: longest non-preemptible stretch, p99 over prompts (ms)")
    ax.set_ylabel("throughput loss: extra prefill compute (%)")
    ax.set_title(f"Preemption granularity trade-off, max goodput in brackets ({_title(runs)})",
                 fontsize=10)
    ax.margins(x=0.15, y=0.15)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), labelspacing=1.0)
    return _save(fig, out, "granularity_tradeoff")


def predicted_vs_measured(runs: list[Run], out: Path) -> Path | None:
    """Predicted (the scheduler's model) vs measured (the truth, or the engine) isolated TTFT
    per request, one series per predictor."""
    rng = np.random.default_rng(0)
    series = {}
    for r in runs:
        if r.predictor in series:
            continue
        rows = [x for x in r.table("predictions")
                if x.get("predicted_ttft") and x.get("isolated_ttft")]
        if rows:
            if len(rows) > MAX_SCATTER:
                rows = [rows[i] for i in rng.choice(len(rows), MAX_SCATTER, replace=False)]
            series[r.predictor] = (np.array([x["isolated_ttft"] for x in rows]) * 1e3,
                                   np.array([x["predicted_ttft"] for x in rows]) * 1e3)
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 6))
    lo = min(min(m.min(), p.min()) for m, p in series.values())
    hi = max(max(m.max(), p.max()) for m, p in series.values())
    for name, (m, p) in series.items():
        mape = float(np.mean(np.abs(p - m) / m)) * 100
        ax.scatter(m, p, s=4, alpha=0.5, label=f"{name} (MAPE {mape:.1f}%)")
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="exact")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured isolated TTFT (ms)")
    ax.set_ylabel("predicted isolated TTFT (ms)")
    ax.set_title(f"Predicted vs measured TTFT ({_title(runs)})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, markerscale=3)
    return _save(fig, out, "predicted_vs_measured")


FIGURES = (goodput_vs_rate, attainment_vs_slo_scale, ttft_cdf, preemption_latency,
           granularity, predicted_vs_measured)
