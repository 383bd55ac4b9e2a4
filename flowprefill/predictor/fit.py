"""Fitting per-operator cost models from profile samples (numpy; no torch, no engine).

Owns the least-squares machinery that turns measured operator times into the coefficients of
the `fitted` artifact: for each op kind, a linear model over that kind's feature subset
(`KIND_FEATURES`, a subset of `fitted.FEATURES`), fitted on *relative* error (each row scaled
by 1 / measured, so a 16-token prompt weighs as much as a 16k one), with coefficients kept
non-negative (a cost never shrinks when work grows), and outliers (load spikes from other
processes) removed by a median-absolute-deviation rule around a robust (L1) start before a
least-squares refit. Knows nothing of the
profile's file format beyond `Sample`, nor of held-out splits or reports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from flowprefill.predictor.cost import OP_KINDS, BatchShape
from flowprefill.predictor.fitted import features

# What each operator's time can depend on. embed also builds the batch's metadata (slot ids
# over each sequence's prefix: `context`); final runs lm_head on `logits` rows.
KIND_FEATURES: dict[str, tuple[str, ...]] = {
    "embed": ("const", "tokens", "seqs", "context"),
    "attention": ("const", "tokens", "seqs", "attn_pairs", "ctx_pairs", "context"),
    "mlp": ("const", "tokens", "tokens_sq"),
    "final": ("const", "tokens", "logits", "head_gemm"),
}
DECODE_FEATURES = ("const", "seqs", "context")  # one decode step: B sequences, their contexts


@dataclass(frozen=True)
class LinearFit:
    coefs: dict[str, float]
    kept: int  # rows used in the final fit
    dropped: int  # rows removed as outliers
    mape: float  # on the kept rows

    def predict(self, x: Mapping[str, float]) -> float:
        return max(0.0, sum(c * x[f] for f, c in self.coefs.items()))


def _nonneg_relative_lstsq(x: np.ndarray, y: np.ndarray,
                           w: np.ndarray | None = None) -> np.ndarray:
    """argmin_b sum(w ((x b - y) / y)^2) subject to b >= 0 (active set: drop negatives,
    refit)."""
    sw = np.ones_like(y) if w is None else np.sqrt(w)
    a = x / y[:, None] * sw[:, None]  # rows scaled by 1 / y: relative residuals
    ones = sw
    active = np.ones(x.shape[1], dtype=bool)
    b = np.zeros(x.shape[1])
    # Columns differ by orders of magnitude (const vs attn_pairs ~1e8): normalize for lstsq.
    scale = np.abs(a).max(axis=0)
    scale[scale == 0] = 1.0
    while active.any():
        sol, *_ = np.linalg.lstsq(a[:, active] / scale[active], ones, rcond=None)
        sol = sol / scale[active]
        if (sol >= 0).all():
            b[:] = 0.0
            b[active] = sol
            return b
        idx = np.flatnonzero(active)
        active[idx[np.argmin(sol)]] = False  # drop the most negative feature, refit
    return b


def _robust_start(x: np.ndarray, y: np.ndarray, iters: int = 20) -> np.ndarray:
    """Least absolute relative deviation by iteratively reweighted least squares: a start
    that a minority of slowed points cannot drag (squared error would)."""
    b = _nonneg_relative_lstsq(x, y)
    for _ in range(iters):
        r = np.abs(x @ b - y) / y
        b = _nonneg_relative_lstsq(x, y, 1.0 / np.maximum(r, 1e-4))
    return b


def fit_linear(rows: Sequence[tuple[Mapping[str, float], float]], names: Sequence[str],
               mad_k: float = 4.0, rounds: int = 2) -> LinearFit:
    """Fit y ~ sum(coef[f] x[f]) on (features, y) rows; drop outliers and refit `rounds` times.

    An outlier's relative residual is more than `mad_k` robust standard deviations
    (1.4826 x MAD) from the median residual; only slow outliers are expected (another process
    took the CPU), but the rule is symmetric.
    """
    x = np.array([[r[0][f] for f in names] for r in rows], dtype=float)
    y = np.array([r[1] for r in rows], dtype=float)
    if len(y) == 0:
        raise ValueError("no rows to fit")
    keep = y > 0
    b = _robust_start(x[keep], y[keep])
    for _ in range(rounds):
        rel = (x @ b - y) / y
        med = np.median(rel[keep])
        mad = 1.4826 * np.median(np.abs(rel[keep] - med))
        new = keep & (np.abs(rel - med) <= mad_k * max(mad, 1e-3))
        if new.sum() < len(names) + 2 or (new == keep).all():
            break
        keep = new
        b = _nonneg_relative_lstsq(x[keep], y[keep])
    rel = np.abs(x[keep] @ b - y[keep]) / y[keep]
    coefs = {f: float(c) for f, c in zip(names, b, strict=True) if c != 0.0}
    return LinearFit(coefs, int(keep.sum()), int(len(y) - keep.sum()), float(rel.mean()))


def fit_ops(points: Sequence[tuple[BatchShape, int, Mapping[str, float]]],
            kind_features: Mapping[str, Sequence[str]] = KIND_FEATURES,
            mad_k: float = 4.0) -> dict[str, LinearFit]:
    """Per-op-kind fits from (shape, logits, {kind: seconds of one such operator}) points."""
    fits = {}
    for kind in OP_KINDS:
        rows = [(features(shape, logits), ops[kind]) for shape, logits, ops in points
                if kind in ops]
        fits[kind] = fit_linear(rows, kind_features[kind], mad_k)
    return fits


def decode_features(shape: BatchShape) -> dict[str, float]:
    return {"const": 1.0, "seqs": float(len(shape)),
            "context": float(sum(c for _, c in shape))}


def fit_decode(points: Sequence[tuple[BatchShape, float]], mad_k: float = 4.0) -> LinearFit:
    """One decode step's seconds as a linear function of batch size and total context."""
    return fit_linear([(decode_features(s), t) for s, t in points], DECODE_FEATURES, mad_k)


def mape(pred: Sequence[float], meas: Sequence[float]) -> float | None:
    """Mean absolute percentage error (a fraction); None for no points."""
    if not meas:
        return None
    return float(np.mean([abs(p - m) / m for p, m in zip(pred, meas, strict=True)]))
