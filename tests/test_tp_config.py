"""Tensor parallelism without processes: which models split, how weights split, what the
roofline and the simulator charge per rank, and the settings refused at start."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from hydra import compose, initialize_config_dir

from flowprefill.config import (
    CONF_DIR,
    DeployConfig,
    EngineConfig,
    HardwareConfig,
    ModelConfig,
    NotShardable,
    PredictorConfig,
    check_tp,
    from_hydra,
    load_option,
)
from flowprefill.model.shard import shard_layer
from flowprefill.model.weights import LayerWeights, dense, random_weights
from flowprefill.predictor import RooflinePredictor, make_predictor, save_artifact
from flowprefill.predictor.profile_data import meta_of

QWEN14 = from_hydra(ModelConfig, load_option("model", "qwen2_5_14b"))
A800 = from_hydra(HardwareConfig, load_option("hardware", "a800"))
SMALL = ModelConfig(num_layers=2, hidden_size=64, intermediate_size=96, num_heads=4,
                    num_kv_heads=2, vocab_size=128)


def test_models_split_by_whole_heads_or_are_refused():
    check_tp(QWEN14, 2)  # the paper's second setting: 40 / 8 heads, 13824 MLP columns
    check_tp(QWEN14, 8)
    with pytest.raises(NotShardable, match=r"model.num_kv_heads=8 not divisible by 3"):
        check_tp(QWEN14, 3)
    with pytest.raises(NotShardable, match="num_kv_heads=2"):
        check_tp(SMALL, 4)
    with pytest.raises(NotShardable, match="engine.tp must be an integer >= 1"):
        check_tp(SMALL, 0)


def test_shards_are_slices_of_the_full_weights():
    full = random_weights(SMALL)
    hd, nh, kvh, i = SMALL.dim_head, SMALL.num_heads, SMALL.num_kv_heads, 96
    for layer, lw in enumerate(full.layers):
        parts = [shard_layer(lw, SMALL, r, 2) for r in range(2)]
        q, k, v = lw.qkv_w.split([nh * hd, kvh * hd, kvh * hd])
        for r, p in enumerate(parts):
            pq, pk, pv = p.qkv_w.split([nh * hd // 2, kvh * hd // 2, kvh * hd // 2])
            assert torch.equal(pq, q.view(2, -1, 64)[r])  # rank r: query heads 2r, 2r + 1
            assert torch.equal(pk, k.view(2, -1, 64)[r])  # and KV head r (their GQA group)
            assert torch.equal(pv, v.view(2, -1, 64)[r])
        assert torch.equal(torch.cat([p.o_w for p in parts], 1), lw.o_w)
        gate, up = lw.gate_up_w.split([i, i])
        assert torch.equal(torch.cat([p.gate_up_w[: i // 2] for p in parts]), gate)
        assert torch.equal(torch.cat([p.gate_up_w[i // 2:] for p in parts]), up)
        assert torch.equal(torch.cat([p.down_w for p in parts], 1), lw.down_w)
        # drawn shard by shard (what a rank loads) is the same as slicing the full model
        drawn = random_weights(SMALL, layer_fn=lambda w: shard_layer(w, SMALL, 1, 2))
        for f in LayerWeights.__dataclass_fields__:
            assert torch.equal(getattr(drawn.layers[layer], f), getattr(parts[1], f)), f


def test_roofline_prices_a_ranks_share_plus_two_all_reduces():
    m = dataclasses.replace(QWEN14, head_dim=QWEN14.dim_head)
    one, two = RooflinePredictor(m, A800), RooflinePredictor(m, A800, tp=2)
    half_heads = RooflinePredictor(dataclasses.replace(m, num_heads=20, num_kv_heads=4), A800)
    half_mlp = RooflinePredictor(dataclasses.replace(m, intermediate_size=13824 // 2), A800)
    for shape in (((4096, 0),), ((512, 2048),), ((1, 900),) * 16):
        tokens = sum(n for n, _ in shape)
        ar = A800.link_latency + tokens * m.hidden_size * 2 / A800.link_bandwidth  # 2(2-1)/2
        assert two.all_reduce(tokens * m.hidden_size * 2) == pytest.approx(ar)
        assert two.op_cost("attention", shape, 1) == pytest.approx(
            half_heads.op_cost("attention", shape, 1) + ar)
        assert two.op_cost("mlp", shape, 1) == pytest.approx(half_mlp.op_cost("mlp", shape, 1)
                                                             + ar)
        for kind in ("embed", "final"):  # replicated / rank 0's
            assert two.op_cost(kind, shape, 1) == one.op_cost(kind, shape, 1)
    assert two.isolated_ttft(8192) < 0.6 * one.isolated_ttft(8192)  # compute-bound: ~half
    with pytest.raises(NotShardable):
        RooflinePredictor(QWEN14, A800, tp=3)


def test_predictor_tp_comes_from_the_engine():
    eng = EngineConfig(tp=2)
    p = make_predictor(PredictorConfig(), QWEN14, A800, eng)
    assert isinstance(p, RooflinePredictor) and p.tp == 2
    assert make_predictor(PredictorConfig(), QWEN14, A800).tp == 1
    with pytest.raises(ValueError, match="engine.tp=2"):
        make_predictor(PredictorConfig(), QWEN14, A800, eng, tp=4)


def test_artifact_without_tp_is_tp1_and_auto_checks_tp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ops = {k: {"const": 1e-3} for k in ("embed", "attention", "mlp", "final")}
    d = tmp_path / "artifacts" / "tiny_cpu"
    d.mkdir(parents=True)
    save_artifact(d / "predictor.json", ops, num_layers=4, model="tiny", hardware="cpu",
                  settings={"device": "cpu"})  # written before tp was recorded
    auto = PredictorConfig(kind="fitted", path="auto")
    tiny, hw = ModelConfig(), HardwareConfig()
    make_predictor(auto, tiny, hw, tp=1)
    with pytest.raises(ValueError, match=r"engine.tp=1.*engine.tp=2"):
        make_predictor(auto, tiny, hw, tp=2)
    data = json.loads((d / "predictor.json").read_text())
    data["settings"]["tp"] = 2
    (d / "predictor.json").write_text(json.dumps(data))
    make_predictor(auto, tiny, hw, tp=2)
    # a profile resumed across the change: a meta row without tp is a tp=1 row
    rows = [{"type": "meta", "model": "tiny"}, {"type": "meta", "model": "tiny", "tp": 1}]
    assert meta_of(rows)["tp"] == 1


def test_simulate_composes_engine_tp():
    import sys

    sys.path.insert(0, str(CONF_DIR.parent / "runners"))
    from simulate import setup_from

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        default = setup_from(compose("simulate"))
        tp2 = setup_from(compose("simulate", ["model=qwen2_5_14b", "engine.tp=2"]))
    assert default.tp == 1 and tp2.tp == 2 and tp2.model.name == "qwen2_5_14b"


def test_tp_with_pd_is_refused_at_start():
    from serve import check_deploy

    check_deploy(EngineConfig(tp=2), DeployConfig(mode="colocated"))
    check_deploy(EngineConfig(tp=1), DeployConfig(mode="pd"))
    with pytest.raises(ValueError, match="engine.tp=2 with deploy=pd is not supported"):
        check_deploy(EngineConfig(tp=2), DeployConfig(mode="pd"))


@pytest.mark.parametrize("arch", ["qwen2", "llama"])  # untied head with QKV bias; tied head
def test_checkpoint_shards_are_slices(arch, tmp_path):
    pytest.importorskip("transformers")
    from flowprefill.model.loading import load_model
    from flowprefill.model.shard import load_shard
    from tests.test_model_hf import save_tiny_hf

    save_tiny_hf(arch, tmp_path)
    cfg = ModelConfig(path=str(tmp_path))
    full = load_model(cfg).weights
    for rank in range(2):
        w = load_shard(cfg, rank, 2, lambda t: t).weights
        for got, lw in zip(w.layers, full.layers, strict=True):
            plain = LayerWeights(**{f: dense(getattr(lw, f)) for f in
                                    LayerWeights.__dataclass_fields__})  # as loaded: packed
            want = shard_layer(plain, load_model(cfg).cfg, rank, 2)
            for f in LayerWeights.__dataclass_fields__:
                a, b = getattr(got, f), getattr(want, f)
                assert (a is None and b is None) or torch.equal(dense(a), dense(b)), f
        assert torch.equal(w.embed, full.embed)
        if arch == "llama":  # tied: the head is the (replicated) embedding on every rank
            assert torch.equal(dense(w.lm_head), w.embed)
        else:  # untied: rank 0 alone holds it
            assert (w.lm_head is None) == (rank > 0)
