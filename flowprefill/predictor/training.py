"""From a profile to a predictor artifact and its error report (no torch, no Hydra, no plots).

Owns the held-out split (whole prompt lengths never seen in training; every `heldout_every`-th
batch, chunk and decode point too), the fits (`fit.py` per operator, `cubic.py` the baseline),
and the report: `heldout_mape` is the mean absolute percentage error of the end-to-end
isolated TTFT (one prompt, one forward) on held-out prompt lengths, predicted as the sum of
the per-operator predictions; `cubic_heldout_mape` is the baseline's on the same lengths.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowprefill.predictor.cubic import CubicPredictor, fit_cubic, save_cubic
from flowprefill.predictor.fit import (
    DECODE_FEATURES,
    KIND_FEATURES,
    LinearFit,
    decode_features,
    fit_decode,
    fit_ops,
    mape,
)
from flowprefill.predictor.fitted import FittedPredictor, save_artifact
from flowprefill.predictor.profile_data import ENGINE_SETTINGS, Sample, setting

# what an artifact records of the profiled engine: its settings and how it was timed
SETTINGS_KEYS = (*ENGINE_SETTINGS, "clock")


@dataclass(frozen=True)
class TrainSettings:
    heldout_every: int = 4  # hold out every n-th prompt length (never the shortest/longest)
    mad_k: float = 4.0  # outlier rule of the per-operator fits
    cubic_drop: float = 0.4  # the baseline's rule: drop |residual| > drop x the largest
    stat: str = "median"  # how a point's repeats are reduced: median | min


@dataclass
class Trained:
    ops: dict[str, LinearFit]
    decode: LinearFit | None
    cubic: list[float]
    cubic_dropped: int
    report: dict[str, Any]
    # (case, split, prompt/new tokens, measured, fitted, cubic or None) for plots
    points: list[tuple[str, str, int, float, float, float | None]] = field(default_factory=list)


def split(samples: Sequence[Sample], every: int) -> tuple[list[Sample], list[Sample]]:
    """(train, held-out). Held-out prompt lengths are whole lengths absent from training."""
    prompts = sorted((s for s in samples if s.point.case == "prompt"),
                     key=lambda s: s.point.new_tokens)
    lengths = [s.point.new_tokens for s in prompts]
    held_lengths = set(lengths[2:-1:every]) if every > 0 else set()
    train, held = [], []
    others: dict[str, list[Sample]] = {}
    for s in samples:
        if s.point.case == "prompt":
            (held if s.point.new_tokens in held_lengths else train).append(s)
        else:
            others.setdefault(s.point.case, []).append(s)
    for group in others.values():
        group.sort(key=lambda s: s.point.key)
        for i, s in enumerate(group):
            (held if every > 0 and i % every == 1 else train).append(s)
    return train, held


def _errors(pairs: Sequence[tuple[float, float]]) -> float | None:
    return mape([p for p, _ in pairs], [m for _, m in pairs])


def train(samples: Sequence[Sample], num_layers: int,
          settings: TrainSettings = TrainSettings()) -> Trained:
    train_s, held_s = split(samples, settings.heldout_every)
    fwd = [s for s in train_s if s.point.case != "decode" and s.ops]
    if not fwd:
        raise ValueError("the profile has no prefill points to train on")
    ops = fit_ops([(s.point.shape, s.point.logits, s.ops) for s in fwd],
                  KIND_FEATURES, settings.mad_k)
    dec_train = [(s.point.shape, s.e2e) for s in train_s if s.point.case == "decode"]
    decode = fit_decode(dec_train, settings.mad_k) if len(dec_train) >= len(DECODE_FEATURES) \
        else None
    prompts = [s for s in train_s if s.point.case == "prompt"]
    cubic, dropped = fit_cubic([s.point.new_tokens for s in prompts], [s.e2e for s in prompts],
                               settings.cubic_drop)
    fitted = FittedPredictor({k: f.coefs for k, f in ops.items()}, num_layers)
    base = CubicPredictor(cubic, num_layers)

    out = Trained(ops, decode, cubic, dropped, {})
    err: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    for where, group in (("train", train_s), ("heldout", held_s)):
        for s in group:
            p = s.point
            if p.case == "decode":
                if decode is not None:
                    err.setdefault((p.case, where, "fitted"), []).append(
                        (decode.predict(decode_features(p.shape)), s.e2e))
                continue
            pred = fitted.forward(p.shape, p.logits).total
            cub = base.forward(p.shape, p.logits).total
            err.setdefault((p.case, where, "fitted"), []).append((pred, s.e2e))
            err.setdefault((p.case, where, "cubic"), []).append((cub, s.e2e))
            out.points.append((p.case, where, p.new_tokens, s.e2e, pred, cub))
    e = {k: _errors(v) for k, v in err.items()}
    held_lengths = sorted(s.point.new_tokens for s in held_s if s.point.case == "prompt")
    out.report = {
        "heldout_mape": e.get(("prompt", "heldout", "fitted")),
        "cubic_heldout_mape": e.get(("prompt", "heldout", "cubic")),
        "train_mape": e.get(("prompt", "train", "fitted")),
        "cubic_train_mape": e.get(("prompt", "train", "cubic")),
        "chunk_mape": e.get(("chunk", "train", "fitted")),
        "chunk_heldout_mape": e.get(("chunk", "heldout", "fitted")),
        "cubic_chunk_heldout_mape": e.get(("chunk", "heldout", "cubic")),
        "batch_mape": e.get(("batch", "train", "fitted")),
        "batch_heldout_mape": e.get(("batch", "heldout", "fitted")),
        "cubic_batch_heldout_mape": e.get(("batch", "heldout", "cubic")),
        "decode_mape": e.get(("decode", "train", "fitted")),
        "decode_heldout_mape": e.get(("decode", "heldout", "fitted")),
        "heldout_lengths": held_lengths,
        "points": {"train": len(train_s), "heldout": len(held_s)},
        "ops": {k: {"coefs": f.coefs, "mape": f.mape, "kept": f.kept, "dropped": f.dropped}
                for k, f in ops.items()},
        "cubic": {"coefs": cubic, "dropped": dropped},
        "metric": "mean absolute percentage error (fraction) of end-to-end forward time; "
                  "prompt = isolated TTFT of one prompt in one forward",
    }
    return out


def save(trained: Trained, out_dir: str | Path, meta: Mapping[str, Any],
         profile: str) -> Path:
    """Write predictor.json and cubic.json into `out_dir` (created); the artifact's path."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    r = trained.report
    fit_meta = {k: r[k] for k in ("heldout_mape", "cubic_heldout_mape", "chunk_heldout_mape",
                                  "batch_heldout_mape", "heldout_lengths")}
    common = dict(num_layers=int(meta["num_layers"]), model=str(meta["model"]),
                  hardware=str(meta["hardware"]))
    fit_meta |= {"profile": profile, "machine": meta.get("machine", {})}
    settings = {k: setting(meta, k) for k in SETTINGS_KEYS}
    save_cubic(d, trained.cubic, meta={"cubic_heldout_mape": r["cubic_heldout_mape"],
                                       "dropped": trained.cubic_dropped}, settings=settings,
               **common)
    return save_artifact(
        d / "predictor.json", {k: f.coefs for k, f in trained.ops.items()},
        settings=settings,
        decode=trained.decode.coefs if trained.decode else None, meta=fit_meta, **common)
