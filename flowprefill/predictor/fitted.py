"""The `fitted` predictor: per-operator-kind linear models loaded from a JSON artifact.

`train_predictor.py` (another issue) writes the artifact from profiling runs of the real
engine; this module only defines its format and loads it. Format (version 2; version 1 is
the same without `settings`, `decode` and the `ctx_pairs`, `tokens_sq`, `head_gemm`
features, and still loads):

    {"format": "flowprefill-predictor", "version": 2,
     "model": "llama3_8b", "hardware": "a800", "num_layers": 32,
     "settings": {"device": "cuda", "dtype": "bfloat16", "compile": true, ...},
     "features": ["const", "tokens", ...],          # subset of FEATURES
     "ops": {"embed": {"const": 1e-5, "tokens": 2e-9}, "attention": {...}, "mlp": {...},
             "final": {...}},                        # seconds per unit of each feature
     "decode": {"const": ..., "seqs": ..., "context": ...},   # one decode step (optional)
     "meta": {...}}                                  # free-form: fit errors, profile, ...

An operator's cost is max(0, sum(coef[f] * feature[f])) over the batch shape. Artifacts live
at a path, or by name under `artifacts/<model>_<hardware>/` (`path: auto`). Must not import
torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flowprefill.predictor.base import Predictor
from flowprefill.predictor.cost import OP_KINDS, BatchShape
from flowprefill.predictor.profile_data import SETTING_DEFAULTS, setting

ARTIFACT_FORMAT = "flowprefill-predictor"
ARTIFACT_VERSION = 2
READABLE_VERSIONS = (1, 2)
ARTIFACT_FILENAME = "predictor.json"  # looked up when the path is a directory
ARTIFACTS_DIR = "artifacts"
AUTO = "auto"  # predictor.path: the artifact named after the model and the hardware


def features(shape: BatchShape, logits: int) -> dict[str, float]:
    """The feature vector every op kind's linear model is fitted on."""
    return {
        "const": 1.0,
        "tokens": float(sum(n for n, _ in shape)),  # new tokens in the forward
        "seqs": float(len(shape)),
        "attn_pairs": float(sum(n * c + n * (n + 1) / 2 for n, c in shape)),  # causal q-k pairs
        "context": float(sum(c for _, c in shape)),  # prefix tokens already in the KV cache
        # the q-k pairs against the cached prefix (a chunk's, read back from the paged KV
        # cache, not the causal block computed in place): priced apart from the rest
        "ctx_pairs": float(sum(n * c for n, c in shape)),
        "logits": float(logits),
        # the forward's new tokens squared: large activations outgrow the caches, so dense
        # operators get slower per token (small, superlinear)
        "tokens_sq": float(sum(n for n, _ in shape)) ** 2,
        # lm_head over several rows is a matrix product, over one a matrix-vector product:
        # different kernels (on CPU the first GEMM rows cost more than the GEMV)
        "head_gemm": float(logits > 1),
    }


FEATURES = tuple(features(((1, 0),), 1))


def artifact_dir(model: str, hardware: str, root: str | Path = ARTIFACTS_DIR) -> Path:
    """Where train_predictor.py puts, and `path: auto` finds, a model's artifact."""
    return Path(root) / f"{model}_{hardware}"


def resolve_artifact(path: str | Path | None) -> Path:
    if path is None:
        raise FileNotFoundError(
            "predictor=fitted needs predictor.path (an artifact written by train_predictor.py, "
            "or `auto` for artifacts/<model>_<hardware>/); use predictor=roofline when none "
            "exists yet"
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
    if data.get("version") not in READABLE_VERSIONS:
        raise ValueError(f"predictor artifact version {data.get('version')!r}, "
                         f"this code reads {READABLE_VERSIONS}")
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
                  meta: Mapping[str, Any] | None = None,
                  settings: Mapping[str, Any] | None = None,
                  decode: Mapping[str, float] | None = None) -> Path:
    """Write an artifact in the format above (the writer train_predictor.py uses)."""
    data = {
        "format": ARTIFACT_FORMAT, "version": ARTIFACT_VERSION, "model": model,
        "hardware": hardware, "num_layers": num_layers, "features": list(FEATURES),
        "settings": dict(settings or {}), "ops": {k: dict(v) for k, v in ops.items()},
        "meta": dict(meta or {}),
    }
    if decode is not None:
        data["decode"] = dict(decode)
    validate_artifact(data)
    p = Path(path)
    p.write_text(json.dumps(data, indent=2, sort_keys=True))
    return p


def check_identity(path: Path, data: Mapping[str, Any], num_layers: int | None,
                   expect: Mapping[str, Any] | None,
                   settings: Mapping[str, Any] | None = None) -> None:
    """A clear error when an artifact was fitted for another model, machine or engine
    setting (`settings`: engine keys the profile recorded, such as dtype or threads)."""
    if num_layers is not None and data.get("num_layers") != num_layers:
        raise ValueError(f"{path}: fitted for {data.get('num_layers')} layers "
                         f"({data.get('model')}), the model has {num_layers}")
    for key, want in (expect or {}).items():
        if data.get(key) != want:
            raise ValueError(f"{path}: fitted for {key}={data.get(key)!r}, this run has "
                             f"{key}={want!r} (re-profile and train, or pass another path)")
    have = data.get("settings", {})
    for key, want in (settings or {}).items():
        if key not in have and key not in SETTING_DEFAULTS:
            continue  # not recorded by this artifact's version: nothing to compare
        if setting(have, key) != want:
            raise ValueError(f"{path}: profiled with engine.{key}={setting(have, key)!r}, "
                             f"this engine has engine.{key}={want!r} (profile and train with "
                             "these settings, or name the artifact in predictor.path)")


class FittedPredictor(Predictor):
    def __init__(self, ops: Mapping[str, Mapping[str, float]], num_layers: int,
                 meta: Mapping[str, Any] | None = None) -> None:
        super().__init__(num_layers)
        self.ops = {k: dict(v) for k, v in ops.items()}
        self.meta = dict(meta or {})

    @classmethod
    def load(cls, path: str | Path | None, num_layers: int | None = None,
             expect: Mapping[str, Any] | None = None,
             settings: Mapping[str, Any] | None = None) -> FittedPredictor:
        """Load an artifact; `num_layers` (the model being served), each `expect` key
        (model, hardware) and each engine `settings` key must match if given."""
        p = resolve_artifact(path)
        data = json.loads(p.read_text())
        validate_artifact(data)
        check_identity(p, data, num_layers, expect, settings)
        meta = {k: data.get(k) for k in ("model", "hardware")} | dict(data.get("meta", {}))
        meta["settings"] = data.get("settings", {})
        meta["decode"] = data.get("decode")
        return cls(data["ops"], int(data["num_layers"]), meta)

    def op_cost(self, kind: str, shape: BatchShape, logits: int) -> float:
        coefs = self.ops[kind]
        x = features(shape, logits)
        return max(0.0, sum(c * x[f] for f, c in coefs.items()))
