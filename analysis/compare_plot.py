"""The engine comparison figure from a comparison.json (runners/compare.py).

Owns plotting only: per engine against offered request rate, TTFT (mean and p99), TPOT
(mean) and attainment (TTFT and TBT, the target dashed). matplotlib with the Agg backend; no
engine, torch or flowprefill imports.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _series(engine: dict, key: str) -> tuple[list[float], list[float]]:
    runs = sorted(engine["by_rate"].values(), key=lambda s: s["offered_rps"])
    pts = [(s["offered_rps"], s[key]) for s in runs if s.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_comparison(comparison: dict, out: Path, target: float = 0.9) -> Path:
    """Write `out` (a PNG) and return it."""
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    panels = [("mean_ttft_ms", "p99_ttft_ms", "TTFT (ms)", True),
              ("mean_tpot_ms", "p99_tpot_ms", "TPOT (ms)", True),
              ("ttft_attainment", None, "TTFT attainment", False),
              ("tbt_attainment", None, "TBT attainment (paper)", False)]
    for ax, (key, p99, label, log) in zip(axes, panels, strict=True):
        for i, (name, engine) in enumerate(comparison["engines"].items()):
            color = f"C{i}"
            x, y = _series(engine, key)
            ax.plot(x, y, "o-", color=color, label=f"{name} (mean)" if p99 else name)
            if p99:
                x, y = _series(engine, p99)
                ax.plot(x, y, "s--", color=color, alpha=0.6, label=f"{name} (p99)")
        if log:
            ax.set_yscale("log")
        else:
            ax.set_ylim(-0.02, 1.02)
            ax.axhline(target, color="gray", ls=":", lw=1)
        ax.set_xlabel("offered rate (req/s)")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[2].legend(fontsize=7)
    s = comparison.get("settings", {})
    fig.suptitle(f"{s.get('model', '')} on {s.get('machine', '')}: {s.get('workload', '')}, "
                 f"{s.get('requests', '')} requests, max_output {s.get('max_output', '')}",
                 fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
