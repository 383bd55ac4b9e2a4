"""The paper's baseline predictor: one cubic polynomial of end-to-end TTFT in prompt length.

Owns its fit (least squares; drop every point whose absolute residual exceeds 0.4 of the
largest, refit), its artifact (`cubic.json` beside `predictor.json`), and the `cubic`
predictor kind, so the predictor ablation can schedule with it. It only knows whole prompts,
so the `Predictor` interface is served by these conventions:

- a forward of `shape` costs `cubic(new + context) - cubic(context)` over the batch's summed
  new tokens and summed context (a whole prompt: `cubic(n)`; a chunk: the increment of its
  prefix; a batch: one prompt of the batch's total length, as the paper prices a batch);
- that cost is spread evenly over the forward's operators (the model has no per-op view).

Must not import torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flowprefill.predictor.base import Predictor
from flowprefill.predictor.cost import BatchShape
from flowprefill.predictor.fitted import check_identity

CUBIC_FORMAT = "flowprefill-cubic"
CUBIC_VERSION = 1
CUBIC_FILENAME = "cubic.json"


def fit_cubic(lengths: Sequence[float], seconds: Sequence[float],
              drop: float = 0.4) -> tuple[list[float], int]:
    """(coefficients, highest power first; number of points dropped) of the baseline fit."""
    x = np.asarray(lengths, dtype=float)
    y = np.asarray(seconds, dtype=float)
    if len(x) < 4:
        raise ValueError(f"a cubic needs at least 4 points, got {len(x)}")
    coefs = np.polyfit(x, y, 3)
    resid = np.abs(np.polyval(coefs, x) - y)
    keep = resid <= drop * resid.max()
    if keep.sum() >= 4 and not keep.all():
        coefs = np.polyfit(x[keep], y[keep], 3)
    return [float(c) for c in coefs], int((~keep).sum()) if keep.sum() >= 4 else 0


def save_cubic(directory: str | Path, coefs: Sequence[float], *, num_layers: int, model: str,
               hardware: str, meta: dict | None = None,
               settings: Mapping[str, Any] | None = None) -> Path:
    p = Path(directory) / CUBIC_FILENAME
    p.write_text(json.dumps({"format": CUBIC_FORMAT, "version": CUBIC_VERSION, "model": model,
                             "hardware": hardware, "num_layers": num_layers,
                             "settings": dict(settings or {}),
                             "coefs": list(coefs), "meta": meta or {}}, indent=2))
    return p


class CubicPredictor(Predictor):
    def __init__(self, coefs: Sequence[float], num_layers: int) -> None:
        super().__init__(num_layers)
        self.coefs = [float(c) for c in coefs]

    @classmethod
    def load(cls, path: str | Path | None, num_layers: int | None = None,
             expect: Mapping[str, Any] | None = None,
             settings: Mapping[str, Any] | None = None) -> CubicPredictor:
        """As `FittedPredictor.load`: the layers, `expect` (model, hardware) and the engine
        `settings` (when the file records them) must match."""
        if path is None:
            raise FileNotFoundError("predictor=cubic needs predictor.path (the directory "
                                    "train_predictor.py wrote, or `auto`)")
        p = Path(path)
        if p.is_dir() or p.name != CUBIC_FILENAME:
            p = (p if p.is_dir() else p.parent) / CUBIC_FILENAME
        if not p.is_file():
            raise FileNotFoundError(f"cubic baseline not found: {p} (train_predictor.py writes "
                                    "it beside predictor.json)")
        data = json.loads(p.read_text())
        if data.get("format") != CUBIC_FORMAT or data.get("version") != CUBIC_VERSION:
            raise ValueError(f"{p}: not a version-{CUBIC_VERSION} cubic baseline")
        check_identity(p, data, num_layers, expect, settings)
        return cls(data["coefs"], int(data["num_layers"]))

    def ttft(self, prompt_len: float) -> float:
        return float(np.polyval(self.coefs, prompt_len))

    def op_cost(self, kind: str, shape: BatchShape, logits: int) -> float:
        new = sum(n for n, _ in shape)
        ctx = sum(c for _, c in shape)
        total = self.ttft(new + ctx) - (self.ttft(ctx) if ctx else 0.0)
        return max(total, 0.0) / (2 * self.num_layers + 2)
