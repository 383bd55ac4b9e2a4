"""train_predictor.py: the per-operator fit recovers known coefficients, the cubic baseline's
outlier rule, and a real (tiny) profile -> artifact + report + plot, loaded back by path and
by name."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest

from flowprefill.config import HardwareConfig, ModelConfig, PredictorConfig
from flowprefill.executor.device import resolve
from flowprefill.predictor import (
    CubicPredictor,
    FittedPredictor,
    RooflinePredictor,
    make_predictor,
)
from flowprefill.predictor.cubic import fit_cubic
from flowprefill.predictor.fit import fit_linear, fit_ops
from flowprefill.predictor.fitted import features
from flowprefill.predictor.profile_data import Point, ProfileGrid, Sample
from flowprefill.predictor.training import TrainSettings, split, train
from tests.test_profile import ENGINE, MODEL, load_runner

TRUE = {
    "embed": {"const": 2e-5, "tokens": 1e-7},
    "attention": {"const": 1e-4, "tokens": 3e-6, "attn_pairs": 5e-9},
    "mlp": {"const": 5e-5, "tokens": 6e-6},
    "final": {"const": 3e-3, "logits": 1e-4},
}


def _cost(kind: str, shape, logits: int) -> float:
    x = features(shape, logits)
    return sum(c * x[f] for f, c in TRUE[kind].items())


def _synthetic(noise: float = 0.01, outliers: int = 3) -> list[tuple]:
    rng = random.Random(0)
    shapes = [((n, 0),) for n in (16, 40, 100, 300, 800, 2000, 5000, 9000, 16000)]
    shapes += [((n, c),) for n in (128, 512) for c in (512, 4096)]
    shapes += [((64, 0),) * 4, ((16, 0), (1000, 0))]
    pts = []
    for i, shape in enumerate(shapes):
        logits = len(shape) if shape[0][1] == 0 else 1
        ops = {k: _cost(k, shape, logits) * (1 + rng.gauss(0, noise)) for k in TRUE}
        if i % 5 == 0 and i < 5 * outliers:  # another process took the CPU during these
            ops = {k: 5 * v for k, v in ops.items()}
        pts.append((shape, logits, ops))
    return pts


def test_fit_recovers_known_coefficients():
    fits = fit_ops(_synthetic())
    for kind, coefs in TRUE.items():
        assert fits[kind].dropped == 3, kind  # the slowed points were found and removed
        for f, c in coefs.items():
            assert fits[kind].coefs.get(f, 0.0) == pytest.approx(c, rel=0.1), (kind, f)
        assert fits[kind].mape < 0.03


def test_fit_keeps_coefficients_nonnegative():
    rows = [({"const": 1.0, "tokens": float(n)}, 1e-3 + 0 * n) for n in range(1, 20)]
    fit = fit_linear(rows, ("const", "tokens"))
    assert all(c >= 0 for c in fit.coefs.values())
    assert fit.coefs["const"] == pytest.approx(1e-3)


def test_cubic_baseline_drops_large_residuals_and_refits():
    xs = list(range(100, 4100, 200))
    ys = [1e-3 + 2e-6 * x + 3e-10 * x**2 + 1e-14 * x**3 for x in xs]
    ys[5] *= 3  # one wild point: its residual dominates; others fall under 0.4 of it
    coefs, dropped = fit_cubic(xs, ys)
    assert dropped >= 1
    pred = CubicPredictor(coefs, num_layers=2)
    for x, y in zip(xs, ys, strict=True):
        if x != xs[5]:
            assert pred.ttft(x) == pytest.approx(y, rel=0.02)
    # the Predictor conventions: a whole prompt costs cubic(n), a chunk the increment
    assert pred.forward(((1000, 0),)).total == pytest.approx(pred.ttft(1000))
    assert pred.forward(((500, 1000),)).total == pytest.approx(pred.ttft(1500) - pred.ttft(1000))


def test_split_holds_out_whole_prompt_lengths():
    pts = [Sample(Point("prompt", ((n, 0),), 1), {}, 1.0) for n in range(10, 200, 10)]
    pts += [Sample(Point("batch", ((n, 0),) * 2, 2), {}, 1.0) for n in range(10, 90, 10)]
    tr, held = split(pts, 4)
    held_lens = {s.point.new_tokens for s in held if s.point.case == "prompt"}
    assert held_lens and not held_lens & {s.point.new_tokens for s in tr
                                          if s.point.case == "prompt"}
    assert 10 not in held_lens and 190 not in held_lens  # never the ends
    assert any(s.point.case == "batch" for s in held)


def test_train_synthetic_samples_report_keys():
    samples = [Sample(Point("prompt" if len(s) == 1 and s[0][1] == 0 else
                            "chunk" if s[0][1] else "batch", s, lg), ops,
                      sum(ops[k] * (1 if k in ("embed", "final") else 2) for k in ops))
               for s, lg, ops in _synthetic(outliers=0)]
    t = train(samples, num_layers=2, settings=TrainSettings(heldout_every=3))
    assert t.report["heldout_mape"] < 0.03
    assert t.report["cubic_heldout_mape"] is not None


@pytest.fixture(scope="module")
def tiny_profile(tmp_path_factory):
    out = tmp_path_factory.mktemp("prof")
    grid = ProfileGrid(min_len=16, max_len=1024, log_points=9, tail_points=3,
                       batch_sizes=(2, 4), batch_lens=(16, 64), mixed_batches=((16, 200),),
                       chunk_sizes=(64, 128), chunk_prefixes=(128, 512), decode_batches=(1, 2, 4),
                       decode_contexts=(64, 256), seed=1)
    load_runner("profile_ops").run(MODEL, ENGINE, HardwareConfig(), grid, out, warmup=1,
                               repeats=3, warmup_max_tokens=4096, progress=False)
    return out


def test_train_on_a_real_profile_and_load_by_name(tiny_profile, tmp_path, monkeypatch):
    import train_predictor

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "artifacts" / "tiny_cpu"  # what predictor.path=auto looks up
    report = train_predictor.run(tiny_profile, out, TrainSettings())
    for f in ("predictor.json", "cubic.json", "report.json", "predicted_vs_measured.png"):
        assert (out / f).is_file(), f
    on_disk = json.loads((out / "report.json").read_text())
    for key in ("heldout_mape", "cubic_heldout_mape", "chunk_mape", "batch_mape",
                "chunk_heldout_mape", "batch_heldout_mape", "decode_mape", "heldout_lengths"):
        assert key in on_disk, key
    assert 0 <= report["heldout_mape"] < 1.0  # loose: the test machine is shared
    art = json.loads((out / "predictor.json").read_text())
    assert art["version"] == 2 and art["settings"]["device"] == "cpu" and "decode" in art
    assert art["settings"]["tp"] == 1
    hw = HardwareConfig()
    fitted = make_predictor(PredictorConfig(kind="fitted", path="auto"), MODEL, hw)
    assert isinstance(fitted, FittedPredictor) and fitted.isolated_ttft(512) > 0
    assert isinstance(make_predictor(PredictorConfig(kind="cubic", path="auto"), MODEL, hw),
                      CubicPredictor)
    with pytest.raises(ValueError, match="hardware"):  # another machine's name, same dir
        (tmp_path / "artifacts" / "tiny_a800").symlink_to(out)
        make_predictor(PredictorConfig(kind="fitted", path="auto"), MODEL,
                       HardwareConfig(name="a800"))
    auto = PredictorConfig(kind="fitted", path="auto")
    engine = resolve(ENGINE)  # the engine prices its resolved settings (threads=0 decided)
    assert isinstance(make_predictor(auto, MODEL, hw, engine), FittedPredictor)  # as profiled
    for changed in ({"dtype": "bfloat16"}, {"threads": engine.threads + 1}, {"compile": True},
                    {"tp": 2}):
        key = next(iter(changed))  # an engine the profile did not time: named, not guessed
        with pytest.raises(ValueError, match=f"engine.{key}"):
            make_predictor(auto, MODEL, hw, dataclasses.replace(engine, **changed))
    with pytest.raises(ValueError, match="engine.tp"):  # a simulation of tp=2: no engine
        make_predictor(auto, MODEL, hw, tp=2)
    with pytest.raises(FileNotFoundError, match="train_predictor"):
        make_predictor(PredictorConfig(kind="fitted", path="auto"),
                       ModelConfig(name="other", num_layers=1), hw)
    fallback = PredictorConfig(kind="fitted", path="auto", on_missing="roofline")
    assert isinstance(make_predictor(fallback, ModelConfig(name="other"), hw),
                      RooflinePredictor)
    with pytest.raises(ValueError, match="profiles model"):
        train_predictor.run(tiny_profile, tmp_path / "x", TrainSettings(), {"model": "qwen"})


def test_the_config_check_accepts_what_auto_resolved_to(tiny_profile, tmp_path):
    from omegaconf import OmegaConf

    import train_predictor

    cfg = OmegaConf.create({"model": {"name": MODEL.name, "num_layers": MODEL.num_layers},
                            "hardware": {"name": "cpu"},
                            "engine": {"device": "auto", "dtype": "auto"}})
    expect = train_predictor.expected_meta(cfg)
    assert "device" not in expect and "dtype" not in expect
    train_predictor.run(tiny_profile, tmp_path / "a", TrainSettings(), expect)  # profiled: cpu
    cfg.engine.dtype = "bfloat16"  # the profile ran float32: named, not trained
    with pytest.raises(ValueError, match="dtype"):
        train_predictor.run(tiny_profile, tmp_path / "b", TrainSettings(),
                            train_predictor.expected_meta(cfg))
