"""The `fitted` predictor: per-operator-kind linear models loaded from a JSON artifact.

`train_predictor.py` (another issue) writes the artifact from profiling runs of the real
engine; this module only defines its format and loads it. Format (version 1):

    {"format": "flowprefill-predictor", "version": 1,
     "model": "llama3_8b", "hardware": "a800", "num_layers": 32,
     "features": ["const", "tokens", ...],          # subset of FEATURES
     "ops": {"embed": {"const": 1e-5, "tokens": 2e-9}, "attention": {...}, "mlp": {...},
             "final": {...}},                        # seconds per unit of each feature
     "meta": {...}}                                  # free-form: settings, held-out error

An operator's cost is max(0, sum(coef[f] * feature[f])) over the batch shape. Must not import
torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flowprefill.predictor.base import Predictor
from flowprefill.predictor.cost import OP_KINDS, BatchShape

ARTIFACT_FORMAT = "flowprefill-predictor"
ARTIFACT_VERSION = 1
ARTIFACT_FILENAME = "predictor.json"  # looked up when the path is a directory


def features(shape: BatchShape, logits: int) -> dict[str, float]:
    """The feature vector every op kind's linear model is fitted on."""
    return {
        "const": 1.0,
        "tokens": float(sum(n for n, _ in shape)),  # new tokens in the forward
        "seqs": float(len(shape)),
        "attn_pairs": float(sum(n * c + n * (n + 1) / 2 for n, c in shape)),  # causal q-k pairs
        "context": float(sum(c for _, c in shape)),  # prefix tokens already in the KV cache
        "logits": float(logits),
    }


FEATURES = tuple(features(((1, 0),), 1))


def resolve_artifact(path: str | Path | None) -> Path:
    if path is None:
        raise FileNotFoundError(
            "predictor=fitted needs predictor.path (an artifact written by train_predictor.py); "
            "use predictor=roofline when none exists yet"
        )
    p = Path(path)
    if p.is_dir():
        p = p / ARTIFACT_FILENAME
    if not p.is_file():
        raise FileNotFoundError(
            f"fitted predictor artifact not found: {p} (write one with train_predictor.py, "
            "or use predictor=roofline)"
        )
    return p


def validate_artifact(data: Mapping[str, Any]) -> None:
    if data.get("format") != ARTIFACT_FORMAT:
        raise ValueError(f"not a predictor artifact (format={data.get('format')!r})")
    if data.get("version") != ARTIFACT_VERSION:
        raise ValueError(f"predictor artifact version {data.get('version')!r}, "
                         f"this code reads {ARTIFACT_VERSION}")
    ops = data.get("ops", {})
    missing = [k for k in OP_KINDS if k not in ops]
    if missing:
        raise ValueError(f"predictor artifact lacks op kinds {missing}")
    for kind, coefs in ops.items():
        unknown = set(coefs) - set(FEATURES)
        if unknown:
            raise ValueError(f"predictor artifact: op {kind!r} uses unknown features "
                             f"{sorted(unknown)}; known: {list(FEATURES)}")


def save_artifact(path: str | Path, ops: Mapping[str, Mapping[str, float]], *,
                  num_layers: int, model: str, hardware: str,
                  meta: Mapping[str, Any] | None = None) -> Path:
    """Write an artifact in the format above (the writer train_predictor.py should use)."""
    data = {
        "format": ARTIFACT_FORMAT, "version": ARTIFACT_VERSION, "model": model,
        "hardware": hardware, "num_layers": num_layers, "features": list(FEATURES),
        "ops": {k: dict(v) for k, v in ops.items()}, "meta": dict(meta or {}),
    }
    validate_artifact(data)
    p = Path(path)
    p.write_text(json.dumps(data, indent=2, sort_keys=True))
    return p


class FittedPredictor(Predictor):
    def __init__(self, ops: Mapping[str, Mapping[str, float]], num_layers: int,
                 meta: Mapping[str, Any] | None = None) -> None:
        super().__init__(num_layers)
        self.ops = {k: dict(v) for k, v in ops.items()}
        self.meta = dict(meta or {})

    @classmethod
    def load(cls, path: str | Path | None, num_layers: int | None = None) -> FittedPredictor:
        """Load an artifact; `num_layers` (the model being served) must match if given."""
        p = resolve_artifact(path)
        data = json.loads(p.read_text())
        validate_artifact(data)
        if num_layers is not None and data.get("num_layers") != num_layers:
            raise ValueError(f"{p}: fitted for {data.get('num_layers')} layers "
                             f"({data.get('model')}), the model has {num_layers}")
        meta = {k: data.get(k) for k in ("model", "hardware")} | dict(data.get("meta", {}))
        return cls(data["ops"], int(data["num_layers"]), meta)

    def op_cost(self, kind: str, shape: BatchShape, logits: int) -> float:
        coefs = self.ops[kind]
        x = features(shape, logits)
        return max(0.0, sum(c * x[f] for f, c in coefs.items()))
