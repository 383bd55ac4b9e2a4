"""Online correction of a predictor from measured operator times.

Owns `OnlineCorrection` (exponentially weighted ratios measured / predicted: a machine-wide
one, times a residual per operator kind and size bucket, log2 of the forward's new tokens)
and `CorrectedPredictor`, which scales a base predictor's per-operator
costs by those ratios, so the scheduler's `remaining()` tracks a machine that became slower
(another process took the CPU) or faster than when it was profiled. The engine feeds
observations (`CorrectedPredictor.observe`), timed with its own clock; the simulator never
does, and then the factors stay 1. Observations are only meaningful where a unit's wall time
is its cost (CPU, or a synchronized device). Must not import torch.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable

from flowprefill.predictor.base import Predictor
from flowprefill.predictor.cost import OP_KINDS, BatchShape


def size_bucket(tokens: int) -> int:
    """Bucket of a forward with `tokens` new tokens: 1, 2-3, 4-7, ... (log2)."""
    return max(tokens, 1).bit_length()


class OnlineCorrection:
    """Measured / predicted seconds as a machine-wide ratio times a per-(op kind, size
    bucket) residual, both exponentially weighted.

    The machine-wide ratio moves with every operator, so a change of load (another process
    starting or stopping) reaches every kind and size within a few operators; the residuals
    keep what is specific to a kind and size (the fitted model's own bias there), and a size
    not seen yet falls back to its kind's residual, then to 1.
    """

    def __init__(self, alpha: float = 0.1, lo: float = 0.2, hi: float = 10.0) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"correction weight must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.resid_alpha = alpha / 4  # slower: a change of load should move the machine ratio
        self.lo, self.hi = lo, hi  # one observation's ratio is clamped (a stray page fault)
        self.machine = 1.0  # machine-wide ratio
        self._resid: dict[tuple[str, int | None], float] = {}
        self.version = 0  # bumped by every observation: memoized sums depend on the ratios
        self.observations = 0

    def _residual(self, kind: str, bucket: int) -> float:
        r = self._resid.get((kind, bucket))
        return self._resid.get((kind, None), 1.0) if r is None else r

    def observe(self, kind: str, tokens: int, measured: float, predicted: float) -> None:
        if measured <= 0.0 or predicted <= 0.0:
            return
        r = min(max(measured / predicted, self.lo), self.hi)
        b, a = size_bucket(tokens), self.alpha
        self.machine += a * (r / self._residual(kind, b) - self.machine)
        for key in ((kind, b), (kind, None)):
            old = self._resid.get(key)
            rel = r / self.machine
            self._resid[key] = rel if old is None else old + self.resid_alpha * (rel - old)
        self.version += 1
        self.observations += 1

    def calibrate(self, ratios: Iterable[tuple[int, float]]) -> None:
        """Set the factors from (new tokens, measured / predicted) of whole forwards, such as
        isolated requests timed end to end: per size bucket the median ratio, for every op
        kind; sizes not measured use the median of all. The machine-wide ratio is reset."""
        by_bucket: dict[int, list[float]] = {}
        for tokens, r in ratios:
            by_bucket.setdefault(size_bucket(tokens), []).append(r)
        if not by_bucket:
            raise ValueError("calibration needs at least one measured ratio")
        overall = statistics.median(r for rs in by_bucket.values() for r in rs)
        self.machine = 1.0
        for kind in OP_KINDS:
            self._resid[(kind, None)] = overall
            for b, rs in by_bucket.items():
                self._resid[(kind, b)] = statistics.median(rs)
        self.version += 1

    def factor(self, kind: str, tokens: int) -> float:
        return self.machine * self._residual(kind, size_bucket(tokens))

    def snapshot(self) -> dict[str, float]:
        """The machine-wide ratio and every residual, keyed "kind/bucket" ("kind/all")."""
        out = {"machine": self.machine}
        out.update({f"{k}/{'all' if b is None else b}": r for (k, b), r in self._resid.items()})
        return out


class CorrectedPredictor(Predictor):
    """`base`'s costs times the correction's current factors; also the engine's observer of
    unit times (`observe`), so an engine built with it feeds it and one without never pays."""

    def __init__(self, base: Predictor, correction: OnlineCorrection) -> None:
        self.base = base
        self.correction = correction
        super().__init__(base.num_layers)

    @property
    def version(self) -> int:
        return self.correction.version

    def op_cost(self, kind: str, shape: BatchShape, logits: int) -> float:
        tokens = sum(n for n, _ in shape)
        return self.base.op_cost(kind, shape, logits) * self.correction.factor(kind, tokens)

    def decode_cost(self, shape: BatchShape) -> float:
        return self.base.decode_cost(shape) * self.correction.factor("decode", len(shape))

    def observe(self, kind: str, shape: BatchShape, logits: int, measured: float) -> None:
        """One unit (an operator of `kind`, or a token slice of one, over `shape`; or a decode
        step, kind "decode") took `measured` seconds on the device."""
        if kind == "decode":  # a decode step's size is its batch
            predicted, tokens = self.base.decode_cost(shape), len(shape)
        else:
            predicted, tokens = self.base.op_cost(kind, shape, logits), sum(n for n, _ in shape)
        self.correction.observe(kind, tokens, measured, predicted)
