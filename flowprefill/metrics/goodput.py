"""Maximum goodput: the highest request rate at which TTFT attainment stays >= a target.

Owns the search over `rate_scale` (exponential bracketing, then geometric bisection). The
caller supplies `run(rate_scale) -> summary dict` (a simulation or a live benchmark); this
module knows nothing of what runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable


def max_goodput(
    run: Callable[[float], dict],
    lo: float = 1 / 64,
    hi: float = 64.0,
    target: float = 0.9,
    iters: int = 8,
    start: float = 1.0,
    rtol: float = 0.02,
    base_rps: float | None = None,
) -> dict:
    """Search `rate_scale` in [lo, hi] for the highest scale whose `ttft_attainment` >= target.

    1. Bracket: from `start`, double while the target is met (up to `hi`), or halve while it
       is not (down to `lo`).
    2. Bisect geometrically between the highest passing and the lowest failing scale above
       it, at most `iters` times or until they are within a factor 1 + rtol.
    Attainment is assumed roughly monotone in rate but not trusted to be: the answer is the
    highest tested scale that met the target.

    The offered rate at a scale is `base_rps * scale` when `base_rps` is given, else the
    run's own `offered_rps`. Returns max_goodput_rps, max_rate_scale (0.0 when no tested
    scale met the target), target, the best run's summary (`best`, None if none), and
    `points`: every probe in order (rate_scale, ttft_attainment, offered_rps, goodput_rps).
    """
    if not 0 < lo <= start <= hi:
        raise ValueError(f"need 0 < lo <= start <= hi, got lo={lo} start={start} hi={hi}")
    results: dict[float, dict] = {}
    points: list[dict] = []

    def probe(scale: float) -> bool:
        if scale not in results:
            summary = run(scale)
            results[scale] = summary
            offered = base_rps * scale if base_rps is not None else summary.get("offered_rps")
            points.append(
                {
                    "rate_scale": scale,
                    "ttft_attainment": summary["ttft_attainment"],
                    "offered_rps": offered,
                    "goodput_rps": summary.get("goodput_rps"),
                }
            )
        return results[scale]["ttft_attainment"] >= target

    passing: float | None = None
    failing: float | None = None
    scale = start
    if probe(scale):
        passing = scale
        while scale < hi:
            scale = min(scale * 2.0, hi)
            if not probe(scale):
                failing = scale
                break
            passing = scale
    else:
        failing = scale
        while scale > lo:
            scale = max(scale / 2.0, lo)
            if probe(scale):
                passing = scale
                break
            failing = scale

    if passing is not None and failing is not None:
        a, b = passing, failing
        for _ in range(iters):
            if b / a <= 1 + rtol:
                break
            mid = math.sqrt(a * b)
            if probe(mid):
                a = mid
            else:
                b = mid

    passed = [p for p in points if p["ttft_attainment"] >= target]
    best = max(passed, key=lambda p: p["rate_scale"]) if passed else None
    return {
        "max_goodput_rps": (best["offered_rps"] or 0.0) if best else 0.0,
        "max_rate_scale": best["rate_scale"] if best else 0.0,
        "target": target,
        "best": results[best["rate_scale"]] if best else None,
        "points": points,
    }
