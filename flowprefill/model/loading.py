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
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from flowprefill.config import ModelConfig
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
    rope = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or rope
    if scaling.get("rope_type", scaling.get("type", "default")) not in ("default", None):
        raise ValueError(f"{path}: rope scaling {scaling} is not supported")
    eos = hf.get("eos_token_id")
    gen = Path(path) / "generation_config.json"
    if eos is None and gen.is_file():
        eos = json.loads(gen.read_text()).get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    base = base or ModelConfig()
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
        max_position=hf.get("max_position_embeddings", base.max_position),
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", base.rope_theta))),
        rms_norm_eps=hf.get("rms_norm_eps", base.rms_norm_eps),
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
        path=str(path),
        eos_token_id=eos,  # the checkpoint's own (None: generation never stops early)
    )


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


def hf_weights(cfg: ModelConfig, path: str | Path) -> ModelWeights:
    """Read HF-named tensors and fuse QKV and gate/up (fp32 on CPU; moved later)."""
    return fuse_hf(cfg, _read_safetensors(Path(path)))


def fuse_hf(cfg: ModelConfig, t: Mapping[str, torch.Tensor]) -> ModelWeights:
    """Our weights from HF-named tensors: QKV and gate/up fused, lm_head tied when asked."""

    def get(name: str) -> torch.Tensor:
        return t[name].float()

    layers = []
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        bias = f"{a}q_proj.bias" in t
        layers.append(LayerWeights(
            input_norm=get(p + "input_layernorm.weight"),
            qkv_w=torch.cat([get(f"{a}{x}_proj.weight") for x in "qkv"]),
            qkv_b=torch.cat([get(f"{a}{x}_proj.bias") for x in "qkv"]) if bias else None,
            o_w=get(a + "o_proj.weight"),
            post_norm=get(p + "post_attention_layernorm.weight"),
            gate_up_w=torch.cat([get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight")]),
            down_w=get(p + "mlp.down_proj.weight"),
        ))
    embed = get("model.embed_tokens.weight")
    head = embed if cfg.tie_word_embeddings or "lm_head.weight" not in t else get("lm_head.weight")
    return ModelWeights(embed, layers, get("model.norm.weight"), head)


def is_gguf(path: Path) -> bool:
    return path.is_file() and path.suffix == ".gguf"


def load_model(cfg: ModelConfig, device: str = "cpu", dtype: str = "float32",
               compile: bool = False) -> Decoder:
    """The Decoder for `cfg`: from `cfg.path` when set (an HF directory or a GGUF file), else
    seeded random weights."""
    torch_dtype = DTYPES[dtype]
    if not cfg.path:
        return Decoder(cfg, random_weights(cfg, torch_dtype, device), compile=compile)
    src = resolve_path(cfg.path)
    if is_gguf(src):
        from flowprefill.model.gguf import GGUFFile, config_from_gguf, hf_tensors

        gf = GGUFFile(src)  # parsed once for both the config and the tensors
        resolved = config_from_gguf(gf, cfg)
        weights = fuse_hf(resolved, hf_tensors(resolved, gf))
    else:
        resolved = config_from_hf(src, cfg)
        weights = hf_weights(resolved, src)
    resolved = dataclasses.replace(resolved, path=cfg.path)
    return Decoder(resolved, weights.to(device, torch_dtype), compile=compile)
