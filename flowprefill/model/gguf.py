"""GGUF files (llama.cpp's format) as a model source: the architecture from the metadata,
tensors dequantized and renamed to Hugging Face's names, and export to an HF directory.

GGUF names tensors `blk.{i}.attn_q.weight` etc. and stores a llama model's Q and K rows
permuted for ggml's interleaved rotary layout (pairs (0,1), (2,3), ... of a head rotate
together); our RoPE rotates halves ((0, hd/2), ...), as HF's checkpoints do, so those rows are
permuted back. Qwen2 files keep HF's row order (ggml runs them with its NEOX rotary mode).
Reading goes through the `gguf` package's reader; dequantization is flowprefill.model.dequant.

    python -m flowprefill.model.gguf export IN.gguf OUT_DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from flowprefill.config import ModelConfig, RopeScaling
from flowprefill.model.dequant import dequantize

ARCHS = ("llama", "qwen2")  # general.architecture values we run
HF_CLASSES = MappingProxyType({"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"})
# GGUF per-layer tensor -> HF per-layer tensor (both under their layer prefix)
_LAYER = MappingProxyType({"attn_norm.weight": "input_layernorm.weight",
          "attn_q.weight": "self_attn.q_proj.weight", "attn_q.bias": "self_attn.q_proj.bias",
          "attn_k.weight": "self_attn.k_proj.weight", "attn_k.bias": "self_attn.k_proj.bias",
          "attn_v.weight": "self_attn.v_proj.weight", "attn_v.bias": "self_attn.v_proj.bias",
          "attn_output.weight": "self_attn.o_proj.weight",
          "ffn_norm.weight": "post_attention_layernorm.weight",
          "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
          "ffn_down.weight": "mlp.down_proj.weight"})
_GLOBAL = MappingProxyType({"token_embd.weight": "model.embed_tokens.weight",
                            "output_norm.weight": "model.norm.weight",
                            "output.weight": "lm_head.weight"})
_IGNORED = ("rope_freqs.weight",)  # checked in config_from_gguf (rope scaling is refused)


@dataclass(frozen=True)
class TensorInfo:
    ggml_type: int
    shape: tuple[int, ...]  # as HF stores it, rows first (ggml lists ne[0], innermost, first)
    offset: int  # of its bytes from the start of the file
    nbytes: int


def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


class GGUFFile:
    """One GGUF file's metadata values and tensor table, parsed once; a tensor's bytes are
    read from the file when it is asked for (no memory map outlives the call)."""

    def __init__(self, path: str | Path) -> None:
        from gguf import GGUFReader

        self.path = Path(path)
        reader = GGUFReader(str(self.path))
        self._meta = MappingProxyType({k: _frozen(f.contents()) for k, f in reader.fields.items()})
        self.tensors = MappingProxyType({
            t.name: TensorInfo(int(t.tensor_type), tuple(int(n) for n in reversed(t.shape)),
                               int(t.data_offset), int(t.n_bytes))
            for t in reader.tensors})

    def get(self, key: str, default: Any = None) -> Any:
        """A metadata value (scalars and strings as Python values, arrays as tuples)."""
        return self._meta.get(key, default)

    def require(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise ValueError(f"{self.path}: GGUF metadata has no {key!r}")
        return value

    def tensor(self, name: str) -> torch.Tensor:
        """Tensor `name` dequantized to float32, shaped as HF stores it."""
        t = self.tensors[name]
        raw = np.memmap(self.path, dtype=np.uint8, mode="r", offset=t.offset, shape=(t.nbytes,))
        return dequantize(raw, t.ggml_type, t.shape, name)


@functools.lru_cache(maxsize=2)
def _parsed(path: str, mtime_ns: int, size: int) -> GGUFFile:
    return GGUFFile(path)


def open_gguf(path: str | Path) -> GGUFFile:
    """The file at `path`, parsed once per version of it: resolving the config, loading the
    weights and building the tokenizer share one parse (the gguf reader takes seconds over a
    49k-token vocabulary; what is kept is the metadata, a few MB)."""
    p = Path(path).resolve()
    st = p.stat()
    return _parsed(str(p), st.st_mtime_ns, st.st_size)


def _f32(value: Any) -> float:
    """A float32 metadata value as the shortest decimal that is the same float32 (1e-05, not
    9.999999747378752e-06)."""
    return float(str(np.float32(value)))


def _open(src: str | Path | GGUFFile) -> GGUFFile:
    return src if isinstance(src, GGUFFile) else open_gguf(src)


def config_from_gguf(src: str | Path | GGUFFile, base: ModelConfig | None = None) -> ModelConfig:
    """ModelConfig for a GGUF file (its metadata wins over `base`, as config.json does)."""
    gf = _open(src)
    arch = gf.require("general.architecture")
    if arch not in ARCHS:
        raise ValueError(f"{gf.path}: GGUF architecture {arch!r} is not supported ({ARCHS})")

    def meta(key: str, default: Any = None) -> Any:
        value = gf.get(f"{arch}.{key}", default)
        if value is None:
            raise ValueError(f"{gf.path}: GGUF metadata has no {arch}.{key!r}")
        return value

    scaling = gf.get(f"{arch}.rope.scaling.type", "none")
    if scaling not in ("none", "") or "rope_freqs.weight" in gf.tensors:
        raise ValueError(f"{gf.path}: rope scaling ({scaling!r}, rope_freqs) is not supported")
    heads = int(meta("attention.head_count"))
    hidden = int(meta("embedding_length"))
    head_dim = int(meta("attention.key_length", hidden // heads))
    if int(meta("attention.value_length", head_dim)) != head_dim:
        raise ValueError(f"{gf.path}: key and value head sizes differ")
    if int(meta("rope.dimension_count", head_dim)) != head_dim:
        raise ValueError(f"{gf.path}: partial rotary embeddings are not supported")
    tokens = gf.get("tokenizer.ggml.tokens")
    vocab = gf.get(f"{arch}.vocab_size") or (len(tokens) if tokens else None)
    vocab = vocab or gf.tensors["token_embd.weight"].shape[0]
    base = base or ModelConfig()
    return dataclasses.replace(
        base,
        name=base.name if base.path else gf.path.stem,
        arch=arch,
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(meta("feed_forward_length")),
        num_layers=int(meta("block_count")),
        num_heads=heads,
        num_kv_heads=int(meta("attention.head_count_kv", heads)),
        head_dim=head_dim if head_dim != hidden // heads else None,
        max_position=int(meta("context_length", base.max_position)),
        rope_theta=_f32(meta("rope.freq_base", 10000.0)),
        rope_scaling=RopeScaling(),  # scaled files are refused above; not the base's
        rms_norm_eps=_f32(meta("attention.layer_norm_rms_epsilon")),
        tie_word_embeddings="output.weight" not in gf.tensors,
        path=str(gf.path),
        eos_token_id=gf.get("tokenizer.ggml.eos_token_id"),
    )


def _unpermute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row permutation: [heads * hd, H], within each head the rows
    (0, hd/2, 1, hd/2 + 1, ...) back to (0, 1, ..., hd - 1)."""
    rows = w.shape[0]
    return (w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).transpose(1, 2)
            .reshape(w.shape).contiguous())


def hf_tensors(cfg: ModelConfig, src: str | Path | GGUFFile) -> dict[str, torch.Tensor]:
    """Every tensor of the file, dequantized to float32, under its HF name, in HF's layout."""
    gf = _open(src)
    out = {}
    for name in gf.tensors:
        if name in _IGNORED:
            continue
        if name in _GLOBAL:
            out[_GLOBAL[name]] = gf.tensor(name)
            continue
        blk, _, rest = name.partition(".")
        layer, _, suffix = rest.partition(".")
        if blk != "blk" or suffix not in _LAYER or not layer.isdigit():
            raise ValueError(f"{gf.path}: unexpected GGUF tensor {name!r}")
        t = gf.tensor(name)
        if cfg.arch == "llama" and suffix in ("attn_q.weight", "attn_k.weight"):
            t = _unpermute(t, cfg.num_heads if suffix == "attn_q.weight" else cfg.num_kv_heads)
        out[f"model.layers.{layer}.{_LAYER[suffix]}"] = t
    return out


def _hf_config(cfg: ModelConfig, gf: GGUFFile) -> dict[str, Any]:
    special = {k: gf.get(f"tokenizer.ggml.{k}") for k in
               ("bos_token_id", "eos_token_id", "padding_token_id")}
    hf: dict[str, Any] = {
        "architectures": [HF_CLASSES[cfg.arch]], "model_type": cfg.arch,
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.dim_head, "max_position_embeddings": cfg.max_position,
        "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_theta, "rope_scaling": None,
        "hidden_act": "silu", "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": special["bos_token_id"], "eos_token_id": special["eos_token_id"],
        "pad_token_id": special["padding_token_id"], "torch_dtype": "float32", "dtype": "float32",
        "initializer_range": 0.02, "use_cache": True,
    }
    if cfg.arch == "llama":
        hf.update(attention_bias=False, mlp_bias=False)
    else:
        hf.update(use_sliding_window=False, sliding_window=None)
    return hf


def export_hf_dir(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Write the GGUF model as an HF directory (config.json, model.safetensors in float32,
    tokenizer.json, tokenizer_config.json with the chat template, generation_config.json)
    that transformers, vLLM and our loader read. `out_dir` must not exist or be empty; it is
    written beside itself first and renamed, so a half-written directory never appears."""
    from safetensors.torch import save_file

    from flowprefill.model.gguf_tokenizer import build_tokenizer, special_tokens

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: exists and is not an empty directory")
    gf = open_gguf(gguf_path)
    cfg = config_from_gguf(gf)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tensors = hf_tensors(cfg, gf)
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        hf = _hf_config(cfg, gf)
        (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
        gen = {k: hf[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
               if hf[k] is not None}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        build_tokenizer(gf).save(str(tmp / "tokenizer.json"))
        tok_cfg: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast", **special_tokens(gf),
            "add_bos_token": bool(gf.get("tokenizer.ggml.add_bos_token", False)),
            "add_eos_token": bool(gf.get("tokenizer.ggml.add_eos_token", False)),
            "model_max_length": cfg.max_position, "clean_up_tokenization_spaces": False}
        if gf.get("tokenizer.chat_template"):
            tok_cfg["chat_template"] = gf.get("tokenizer.chat_template")
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flowprefill.model.gguf")
    sub = parser.add_subparsers(dest="cmd", required=True)
    exp = sub.add_parser("export", help="write a GGUF file as a Hugging Face directory")
    exp.add_argument("gguf", help="a .gguf file, or pkg:<package>/<file>")
    exp.add_argument("out", help="the directory to create")
    args = parser.parse_args(argv)
    from flowprefill.model.source import resolve_path

    print(export_hf_dir(resolve_path(args.gguf), args.out))


if __name__ == "__main__":
    main()
