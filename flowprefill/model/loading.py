"""Building a Decoder from a ModelConfig: a Hugging Face directory's safetensors, a GGUF file
(dequantized, flowprefill.model.gguf), or random init.

A checkpoint (`cfg.path`: a directory, a `.gguf` file or a `pkg:` reference, see
flowprefill.model.source) is authoritative: its config.json or GGUF metadata defines the
architecture and overrides the matching ModelConfig fields (a new frozen config is returned;
nothing is written back; `path` stays as given). Shards are found through
`model.safetensors.index.json` or `*.safetensors`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from flowprefill.config import ROPE_TYPES, ModelConfig, RopeScaling
from flowprefill.model.decoder import Decoder
from flowprefill.model.source import resolve_path
from flowprefill.model.weights import LayerWeights, ModelWeights, random_weights

_ARCH = MappingProxyType({"qwen2": "qwen2", "llama": "llama"})  # HF model_type -> our arch
DTYPES = MappingProxyType(
    {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16})


def config_from_hf(path: str | Path, base: ModelConfig | None = None) -> ModelConfig:
    """ModelConfig for the HF directory `path` (config.json wins over `base`)."""
    hf: dict[str, Any] = json.loads((Path(path) / "config.json").read_text())
    model_type = hf.get("model_type", "")
    if model_type not in _ARCH:
        raise ValueError(f"{path}: unsupported model_type {model_type!r} (qwen2 or llama)")
    base = base or ModelConfig()
    max_position = hf.get("max_position_embeddings", base.max_position)
    rope, scaling = _rope(path, hf, max_position)
    eos = hf.get("eos_token_id")
    gen = Path(path) / "generation_config.json"
    if eos is None and gen.is_file():
        eos = json.loads(gen.read_text()).get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    return dataclasses.replace(
        base,
        name=base.name if base.path else Path(path).name,
        arch=_ARCH[model_type],
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        head_dim=hf.get("head_dim"),
        max_position=max_position,
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", base.rope_theta))),
        rope_scaling=scaling,
        rms_norm_eps=hf.get("rms_norm_eps", base.rms_norm_eps),
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
        path=str(path),
        eos_token_id=eos,  # the checkpoint's own (None: generation never stops early)
    )


def _rope(path: str | Path, hf: dict[str, Any], max_position: int
          ) -> tuple[dict[str, Any], RopeScaling]:
    """config.json's RoPE parameters and our RopeScaling for them.

    transformers 5 writes one `rope_parameters` dict (rope_theta inside); older files have
    `rope_scaling` (`rope_type`, or the legacy `type`) beside a top-level `rope_theta`. As in
    transformers, `rope_scaling` wins when both are present.
    """
    rope = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    if any(isinstance(v, dict) for v in rope.values()):
        raise ValueError(f"{path}: per-layer-type rope parameters are not supported: {rope}")
    kind = rope.get("rope_type", rope.get("type")) or "default"
    if kind not in ROPE_TYPES:
        raise ValueError(f"{path}: rope_type {kind!r} is not supported "
                         f"(one of {', '.join(ROPE_TYPES)})")
    partial = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise ValueError(f"{path}: partial_rotary_factor {partial} is not supported (only 1.0)")
    if kind == "default":
        return rope, RopeScaling()
    missing = sorted({"factor", "low_freq_factor", "high_freq_factor"} - set(rope))
    if missing:
        raise ValueError(f"{path}: rope_type {kind!r} needs {missing}")
    # transformers: a top-level original_max_position_embeddings wins, else the dict's, else
    # max_position_embeddings
    original = hf.get("original_max_position_embeddings",
                      rope.get("original_max_position_embeddings", max_position))
    try:
        return rope, RopeScaling(rope_type=kind, factor=float(rope["factor"]),
                                 low_freq_factor=float(rope["low_freq_factor"]),
                                 high_freq_factor=float(rope["high_freq_factor"]),
                                 original_max_position=int(original))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors files")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        tensors.update(load_file(str(path / f)))
    return tensors


LayerFn = Callable[[LayerWeights], LayerWeights]  # e.g. a tensor-parallel rank's slicing


def hf_weights(cfg: ModelConfig, path: str | Path, layer_fn: LayerFn | None = None
               ) -> ModelWeights:
    """Read HF-named tensors and fuse QKV and gate/up (fp32 on CPU; moved later)."""
    return fuse_hf(cfg, _read_safetensors(Path(path)), layer_fn)


def fuse_hf(cfg: ModelConfig, t: Mapping[str, torch.Tensor], layer_fn: LayerFn | None = None
            ) -> ModelWeights:
    """Our weights from HF-named tensors: QKV and gate/up fused, lm_head tied when asked.
    `layer_fn` maps each fused layer as it is built (a tensor-parallel shard keeps only its
    slices, so one full layer at a time exists in fp32)."""

    def get(name: str) -> torch.Tensor:
        return t[name].float()

    layers = []
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        bias = f"{a}q_proj.bias" in t
        lw = LayerWeights(
            input_norm=get(p + "input_layernorm.weight"),
            qkv_w=torch.cat([get(f"{a}{x}_proj.weight") for x in "qkv"]),
            qkv_b=torch.cat([get(f"{a}{x}_proj.bias") for x in "qkv"]) if bias else None,
            o_w=get(a + "o_proj.weight"),
            post_norm=get(p + "post_attention_layernorm.weight"),
            gate_up_w=torch.cat([get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight")]),
            down_w=get(p + "mlp.down_proj.weight"),
        )
        layers.append(lw if layer_fn is None else layer_fn(lw))
    embed = get("model.embed_tokens.weight")
    head = embed if cfg.tie_word_embeddings or "lm_head.weight" not in t else get("lm_head.weight")
    return ModelWeights(embed, layers, get("model.norm.weight"), head)


def is_gguf(path: Path) -> bool:
    return path.is_file() and path.suffix == ".gguf"


def resolve_config(cfg: ModelConfig) -> ModelConfig:
    """The architecture `cfg` loads as: a checkpoint's own config (config.json or GGUF
    metadata) wins over the preset; `path` stays as given. Idempotent."""
    if not cfg.path:
        return cfg
    src = resolve_path(cfg.path)
    if is_gguf(src):
        from flowprefill.model.gguf import config_from_gguf, open_gguf

        resolved = config_from_gguf(open_gguf(src), cfg)
    else:
        resolved = config_from_hf(src, cfg)
    return dataclasses.replace(resolved, path=cfg.path)


def load_model(cfg: ModelConfig, device: str = "cpu", dtype: str = "float32",
               compile: bool = False) -> Decoder:
    """The Decoder for `cfg`: from `cfg.path` when set (an HF directory or a GGUF file), else
    seeded random weights."""
    torch_dtype = DTYPES[dtype]
    cfg = resolve_config(cfg)
    if not cfg.path:
        return Decoder(cfg, random_weights(cfg, torch_dtype, device), compile=compile)
    return Decoder(cfg, checkpoint_weights(cfg).to(device, torch_dtype), compile=compile)


def checkpoint_weights(cfg: ModelConfig, layer_fn: LayerFn | None = None) -> ModelWeights:
    """The weights of a resolved config's checkpoint (`cfg.path`: an HF directory or a GGUF
    file), fp32 on the CPU, each layer through `layer_fn` when given."""
    src = resolve_path(cfg.path)
    if is_gguf(src):
        from flowprefill.model.gguf import hf_tensors, open_gguf

        return fuse_hf(cfg, hf_tensors(cfg, open_gguf(src)), layer_fn)
    return hf_weights(cfg, src, layer_fn)
